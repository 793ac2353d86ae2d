//! The reflector's configuration: a TOML file (`--config FILE`, documented key by key in
//! `config/reflector.example.toml`) and command-line flags, which override the file.
//!
//! Sizes (`cache_size`) and rates (`wan_rate`) are numbers of bytes or strings with a unit, as in
//! the bandwidth policy: `"200GiB"`, `"10MB/s"`, `"80Mbit/s"`. Durations are strings such as
//! `"10s"`, `"250ms"`, `"2m"`.

use oasis_core::logging::LogFormat;
use oasis_core::net::{ServeLimits, TransportOptions};
pub use oasis_core::site_wan::WanSharing;
use oasis_core::units::parse_amount;
use oasis_mesh::libp2p::Multiaddr;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an endpoint's request for a chunk the cache lacks may wait while the upstream
/// delivers nothing, before it is answered `Error(Unavailable)` (so the endpoint can try its
/// next source).
pub const DEFAULT_MISS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request for the latest version of a layer waits for the upstream's answer before
/// the cached latest version is served instead.
pub const DEFAULT_LATEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Most chunk ids in one upstream GetChunks request.
pub const DEFAULT_BATCH_MAX_CHUNKS: usize = 64;
/// How long misses are collected before a batch leaves (when fewer than a full batch wait).
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(2);
/// Upstream GetChunks requests in flight at once.
pub const DEFAULT_BATCHES_IN_FLIGHT: usize = 8;
/// How often the policy file's modification time is checked.
pub const DEFAULT_POLICY_POLL: Duration = Duration::from_secs(1);

/// The reflector mesh (libp2p): how this reflector finds its siblings and gossips with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// `p2p_listen` / `--p2p-listen` (repeatable). Default: TCP and QUIC on port 7411.
    pub listen: Vec<Multiaddr>,
    /// `bootstrap` / `--bootstrap` (repeatable), with or without a trailing `/p2p/PEER_ID`.
    pub bootstrap: Vec<Multiaddr>,
    /// `mdns` (default true) / `--no-mdns`.
    pub mdns: bool,
    /// `mesh_heartbeat`: liveness and load interval; a silent sibling expires after 3.
    pub heartbeat: Duration,
    /// `advertise`: the `ip:port` siblings reach this reflector's QUIC service at. Default: the
    /// listen address, or when that is unspecified (0.0.0.0) the local address of the route to
    /// the upstream.
    pub advertise: Option<SocketAddr>,
    /// `wan_sharing` / `--wan-sharing`: `leader` (default; one reflector of the site pulls over
    /// the WAN at the site's whole rate) or `spread` (chunks spread over the reflectors, the rate
    /// divided by demand). Every reflector of a site must use the same.
    pub wan_sharing: WanSharing,
}

impl Default for MeshSettings {
    fn default() -> Self {
        let d = oasis_mesh::MeshConfig::default();
        MeshSettings {
            listen: d.listen,
            bootstrap: Vec::new(),
            mdns: true,
            heartbeat: d.heartbeat,
            advertise: None,
            wan_sharing: WanSharing::default(),
        }
    }
}

pub use oasis_mesh::parse_multiaddr;

/// Where the WAN limit comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WanLimit {
    /// No limit.
    Unlimited,
    /// `wan_rate`: one rate at all times, bytes per second.
    Flat(u64),
    /// `policy`: a bandwidth policy file, reloaded when it changes and on SIGHUP.
    PolicyFile(PathBuf),
}

/// Everything a running reflector needs. Build it with [`ReflectorConfig::new`] (in-process use,
/// tests) or [`ConfigArgs::resolve`] (file + flags).
#[derive(Clone, Debug)]
pub struct ReflectorConfig {
    /// State directory from `oasis-seed enroll --role reflector` (node.pem, node.key,
    /// trust.pem); the cache lives in `STATE/cache`.
    pub state: PathBuf,
    /// QUIC address endpoints connect to.
    pub listen: SocketAddr,
    /// The seed (or a reflector further up), `HOST:PORT`.
    pub upstream: String,
    pub wan: WanLimit,
    /// Cache size cap in bytes (chunks as stored); `None` = no cap.
    pub cache_size: Option<u64>,
    /// Prometheus metrics at http://ADDR/metrics.
    pub metrics: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub miss_timeout: Duration,
    pub latest_timeout: Duration,
    pub batch_max_chunks: usize,
    pub batch_delay: Duration,
    pub batches_in_flight: usize,
    /// Zero disables polling (reload on SIGHUP or [`crate::RunningReflector::reload_policy`]).
    pub policy_poll: Duration,
    /// How often to ask the seed which layers are assigned to this reflector's site (they are
    /// pinned and prefetched in the background class). Zero disables it.
    pub assignments_poll: Duration,
    /// QUIC parameters of the serving endpoint (not settable from the file).
    pub transport: TransportOptions,
    /// What each peer may hold of this reflector: `max_connections`, `max_connections_per_peer`,
    /// `write_stall`, `max_streams_per_connection`, `max_answer_bytes_per_connection` and
    /// `source_ban` in the file.
    pub limits: ServeLimits,
    /// Wake-on-LAN: scheduled delivery pacing, packet repeats, inventory sync.
    pub wake: crate::wake::WakeSettings,
    /// The reflector mesh; `None` = off (the default in-process; the command line turns it on
    /// unless `mesh = false` or `--no-mesh`).
    pub mesh: Option<MeshSettings>,
    /// `peer_sites`: other sites whose reflectors this one may fetch chunks from before the
    /// WAN (a fast inter-site link the policy allows). Default: none.
    pub peer_sites: Vec<String>,
}

impl ReflectorConfig {
    /// Defaults for everything but the three required settings.
    pub fn new(state: impl Into<PathBuf>, listen: SocketAddr, upstream: impl Into<String>) -> Self {
        ReflectorConfig {
            state: state.into(),
            listen,
            upstream: upstream.into(),
            wan: WanLimit::Unlimited,
            cache_size: None,
            metrics: None,
            log_format: LogFormat::Human,
            miss_timeout: DEFAULT_MISS_TIMEOUT,
            latest_timeout: DEFAULT_LATEST_TIMEOUT,
            batch_max_chunks: DEFAULT_BATCH_MAX_CHUNKS,
            batch_delay: DEFAULT_BATCH_DELAY,
            batches_in_flight: DEFAULT_BATCHES_IN_FLIGHT,
            policy_poll: DEFAULT_POLICY_POLL,
            assignments_poll: Duration::from_secs(60),
            transport: TransportOptions::default(),
            limits: ServeLimits::default(),
            wake: crate::wake::WakeSettings::default(),
            mesh: None,
            peer_sites: Vec::new(),
        }
    }

    /// The chunk cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.state.join("cache")
    }

    /// Checks the values that do not depend on the file system.
    pub fn validate(&self) -> Result<(), String> {
        check_upstream(&self.upstream)?;
        if self.miss_timeout < Duration::from_millis(100) {
            return Err("miss_timeout must be at least 100ms".into());
        }
        if self.latest_timeout < Duration::from_millis(10) {
            return Err("latest_timeout must be at least 10ms".into());
        }
        if !(1..=oasis_core::wire::MAX_IDS_PER_REQUEST).contains(&self.batch_max_chunks) {
            return Err(format!(
                "batch_max_chunks must be 1 to {}",
                oasis_core::wire::MAX_IDS_PER_REQUEST
            ));
        }
        if self.batch_delay > Duration::from_secs(1) {
            return Err("batch_delay must be at most 1s".into());
        }
        if !(1..=1024).contains(&self.batches_in_flight) {
            return Err("batches_in_flight must be 1 to 1024".into());
        }
        self.limits.validate()?;
        Ok(())
    }
}

/// `HOST:PORT` with a port.
fn check_upstream(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!("upstream {s:?} is not HOST:PORT (e.g. \"seed.example.net:7443\")")),
    }
}

/// The settings shared by `serve` and `check`: `--config FILE` plus flags that override it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// TOML configuration file (see config/reflector.example.toml); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory written by `oasis-seed enroll --role reflector`.
    #[arg(long, value_name = "STATE_DIR")]
    pub state: Option<PathBuf>,
    /// QUIC address to serve endpoints on, e.g. 0.0.0.0:7443.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The seed, HOST:PORT.
    #[arg(long, value_name = "SEED_ADDR")]
    pub upstream: Option<String>,
    /// Bandwidth policy file (rates, schedule windows); reloaded on change and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Flat WAN cap instead of a policy file: bytes per second or e.g. "10MB/s"; 0 = unlimited.
    #[arg(long, value_name = "BYTES_PER_S")]
    pub wan_rate: Option<String>,
    /// Cache size cap, e.g. "200GiB" ("unlimited" for none).
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Mesh listen multiaddr (repeatable), e.g. /ip4/0.0.0.0/tcp/7411 and
    /// /ip4/0.0.0.0/udp/7411/quic-v1 (the default).
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<String>,
    /// Mesh peer to dial at start (repeatable), with or without a trailing /p2p/PEER_ID.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Do not look for sibling reflectors with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Run without the reflector mesh (no siblings, no gossip).
    #[arg(long)]
    pub no_mesh: bool,
    /// How the site's reflectors share its WAN: `leader` (one pulls, at the whole rate) or
    /// `spread` (chunks spread over all, the rate divided by demand).
    #[arg(long = "wan-sharing", value_name = "MODE")]
    pub wan_sharing: Option<String>,
}

/// The file's keys; every one optional here, required ones are checked after merging flags.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state: Option<PathBuf>,
    listen: Option<toml::Spanned<String>>,
    upstream: Option<toml::Spanned<String>>,
    policy: Option<PathBuf>,
    wan_rate: Option<toml::Spanned<Amount>>,
    cache_size: Option<toml::Spanned<Amount>>,
    metrics: Option<toml::Spanned<String>>,
    log_format: Option<toml::Spanned<String>>,
    miss_timeout: Option<toml::Spanned<String>>,
    latest_timeout: Option<toml::Spanned<String>>,
    batch_max_chunks: Option<usize>,
    batch_delay: Option<toml::Spanned<String>>,
    batches_in_flight: Option<usize>,
    policy_poll: Option<toml::Spanned<String>>,
    assignments_poll: Option<toml::Spanned<String>>,
    wake_rate: Option<toml::Spanned<u32>>,
    wake_online_timeout: Option<toml::Spanned<String>>,
    mesh: Option<bool>,
    p2p_listen: Option<toml::Spanned<Vec<String>>>,
    bootstrap: Option<toml::Spanned<Vec<String>>>,
    mdns: Option<bool>,
    mesh_heartbeat: Option<toml::Spanned<String>>,
    advertise: Option<toml::Spanned<String>>,
    peer_sites: Option<toml::Spanned<Vec<String>>>,
    wan_sharing: Option<toml::Spanned<String>>,
    max_connections: Option<u32>,
    max_connections_per_peer: Option<u32>,
    write_stall: Option<toml::Spanned<String>>,
    max_streams_per_connection: Option<u32>,
    max_answer_bytes_per_connection: Option<toml::Spanned<Amount>>,
    source_ban: Option<toml::Spanned<String>>,
}

/// A number or a string with a unit.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Amount {
    Int(u64),
    Text(String),
}

impl Amount {
    fn text(&self) -> String {
        match self {
            Amount::Int(n) => n.to_string(),
            Amount::Text(s) => s.clone(),
        }
    }
}

/// Locates errors in the file: "reflector.toml line 4: cache_size ...".
struct FileCtx<'a> {
    origin: String,
    text: &'a str,
}

impl FileCtx<'_> {
    fn err<T>(
        &self,
        key: &str,
        span: std::ops::Range<usize>,
        problem: String,
    ) -> Result<T, String> {
        Err(oasis_core::file_errors::at_line(&self.origin, self.text, &span, key, &problem))
    }
}

impl ConfigArgs {
    /// Reads the file (if any), applies the flags over it, and checks the result. Errors name
    /// the file, line and key, or the flag.
    pub fn resolve(&self) -> Result<ReflectorConfig, String> {
        let text = match &self.config {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?,
            ),
            None => None,
        };
        self.resolve_text(text.as_deref())
    }

    /// [`ConfigArgs::resolve`] with the text of the file at `config` given, not read: what
    /// the checks of a file's contents run on (and what the fuzzer feeds).
    pub fn resolve_text(&self, text: Option<&str>) -> Result<ReflectorConfig, String> {
        let (file, text, base) = match (&self.config, text) {
            (Some(path), Some(text)) => {
                let text = text.to_string();
                let file: FileConfig = toml::from_str(&text).map_err(|e| {
                    let origin = format!("config file {}", path.display());
                    oasis_core::file_errors::TomlProblem::of(&text, &e).describe(&origin)
                })?;
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (file, text, base)
            }
            _ => (FileConfig::default(), String::new(), PathBuf::new()),
        };
        let ctx = FileCtx {
            origin: self
                .config
                .as_ref()
                .map_or_else(|| "config".to_string(), |p| p.display().to_string()),
            text: &text,
        };
        // Relative paths in the file are relative to the file's directory.
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

        let state = match (&self.state, file.state) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => rel(s),
            (None, None) => {
                return Err("no state directory: give --state STATE_DIR or `state` in the config \
                            file (the directory written by `oasis-seed enroll --role reflector`)"
                    .into())
            }
        };
        let listen = match (&self.listen, &file.listen) {
            (Some(l), _) => parse_addr(l).map_err(|p| format!("--listen {p}"))?,
            (None, Some(l)) => match parse_addr(l.get_ref()) {
                Ok(a) => a,
                Err(p) => return ctx.err("listen", l.span(), p),
            },
            (None, None) => {
                return Err("no listen address: give --listen ADDR or `listen` in the config \
                            file (e.g. 0.0.0.0:7443)"
                    .into())
            }
        };
        let upstream = match (&self.upstream, &file.upstream) {
            (Some(u), _) => {
                check_upstream(u).map_err(|p| format!("--upstream: {p}"))?;
                u.clone()
            }
            (None, Some(u)) => {
                if let Err(p) = check_upstream(u.get_ref()) {
                    return ctx.err("upstream", u.span(), format!("is invalid: {p}"));
                }
                u.get_ref().clone()
            }
            (None, None) => {
                return Err("no upstream: give --upstream SEED_ADDR or `upstream` in the config \
                            file (the seed's HOST:PORT)"
                    .into())
            }
        };
        let mut cfg = ReflectorConfig::new(state, listen, upstream);

        // WAN limit: a flag beats the file; within one layer, policy and wan_rate exclude each
        // other.
        let flag_rate = match &self.wan_rate {
            Some(r) => Some(parse_rate(r).map_err(|p| format!("--wan-rate {r:?} {p}"))?),
            None => None,
        };
        let file_rate = match &file.wan_rate {
            Some(r) => match parse_rate(&r.get_ref().text()) {
                Ok(v) => Some(v),
                Err(p) => {
                    return ctx.err("wan_rate", r.span(), format!("{:?} {p}", r.get_ref().text()))
                }
            },
            None => None,
        };
        cfg.wan = match (&self.policy, flag_rate, file.policy, file_rate) {
            (Some(_), Some(_), _, _) => {
                return Err("--policy and --wan-rate both given: use one (--wan-rate is a flat \
                            cap, --policy a full policy file)"
                    .into())
            }
            (Some(p), None, _, _) => WanLimit::PolicyFile(p.clone()),
            (None, Some(r), _, _) => flat(r),
            (None, None, Some(_), Some(_)) => {
                return Err(format!(
                    "{}: both `policy` and `wan_rate` are set: keep one (wan_rate is a flat \
                     cap, policy a full policy file)",
                    ctx.origin
                ))
            }
            (None, None, Some(p), None) => WanLimit::PolicyFile(rel(p)),
            (None, None, None, Some(r)) => flat(r),
            (None, None, None, None) => WanLimit::Unlimited,
        };

        cfg.cache_size = match (&self.cache_size, &file.cache_size) {
            (Some(s), _) => parse_cache_size(s).map_err(|p| format!("--cache-size {s:?} {p}"))?,
            (None, Some(s)) => match parse_cache_size(&s.get_ref().text()) {
                Ok(v) => v,
                Err(p) => {
                    return ctx.err("cache_size", s.span(), format!("{:?} {p}", s.get_ref().text()))
                }
            },
            (None, None) => None,
        };
        cfg.metrics = match (&self.metrics, &file.metrics) {
            (Some(m), _) => Some(parse_addr(m).map_err(|p| format!("--metrics {p}"))?),
            (None, Some(m)) => match parse_addr(m.get_ref()) {
                Ok(a) => Some(a),
                Err(p) => return ctx.err("metrics", m.span(), p),
            },
            (None, None) => None,
        };
        cfg.log_format = match (self.log_format, &file.log_format) {
            (Some(f), _) => f,
            (None, Some(f)) => match f.get_ref().as_str() {
                "human" => LogFormat::Human,
                "json" => LogFormat::Json,
                other => {
                    return ctx.err(
                        "log_format",
                        f.span(),
                        format!("{other:?} is not a log format (human or json)"),
                    )
                }
            },
            (None, None) => LogFormat::Human,
        };
        let duration = |key: &str, v: &Option<toml::Spanned<String>>, default: Duration| match v {
            None => Ok(default),
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) => Ok(d),
                Err(p) => ctx.err(key, s.span(), format!("{:?} {p}", s.get_ref())),
            },
        };
        cfg.miss_timeout = duration("miss_timeout", &file.miss_timeout, cfg.miss_timeout)?;
        cfg.latest_timeout = duration("latest_timeout", &file.latest_timeout, cfg.latest_timeout)?;
        cfg.batch_delay = duration("batch_delay", &file.batch_delay, cfg.batch_delay)?;
        cfg.policy_poll = duration("policy_poll", &file.policy_poll, cfg.policy_poll)?;
        cfg.assignments_poll =
            duration("assignments_poll", &file.assignments_poll, cfg.assignments_poll)?;
        cfg.limits.write_stall =
            duration("write_stall", &file.write_stall, cfg.limits.write_stall)?;
        cfg.limits.source_ban = duration("source_ban", &file.source_ban, cfg.limits.source_ban)?;
        cfg.limits.max_connections = file.max_connections.unwrap_or(cfg.limits.max_connections);
        cfg.limits.max_connections_per_peer =
            file.max_connections_per_peer.unwrap_or(cfg.limits.max_connections_per_peer);
        cfg.limits.max_streams_per_connection =
            file.max_streams_per_connection.unwrap_or(cfg.limits.max_streams_per_connection);
        if let Some(a) = &file.max_answer_bytes_per_connection {
            let text = a.get_ref().text();
            match oasis_core::units::parse_amount(&text) {
                Ok(v) => cfg.limits.max_answer_bytes_per_connection = v,
                Err(p) => {
                    return ctx.err(
                        "max_answer_bytes_per_connection",
                        a.span(),
                        format!("{text:?} is not a size ({p}; write e.g. \"64MiB\")"),
                    )
                }
            }
        }
        if let Some(r) = &file.wake_rate {
            if *r.get_ref() == 0 {
                return ctx.err(
                    "wake_rate",
                    r.span(),
                    "must be at least 1 machine per minute".into(),
                );
            }
            let paced = oasis_core::wake::schedule::ScheduleConfig::from_rate(*r.get_ref());
            cfg.wake.schedule.batch_size = paced.batch_size;
            cfg.wake.schedule.batch_interval = paced.batch_interval;
        }
        cfg.wake.schedule.online_timeout = duration(
            "wake_online_timeout",
            &file.wake_online_timeout,
            cfg.wake.schedule.online_timeout,
        )?;
        if file.mesh != Some(false) && !self.no_mesh {
            let mut m = MeshSettings {
                heartbeat: duration(
                    "mesh_heartbeat",
                    &file.mesh_heartbeat,
                    MeshSettings::default().heartbeat,
                )?,
                ..MeshSettings::default()
            };
            let addrs = |key: &str,
                         flag: &str,
                         flags: &[String],
                         keyed: &Option<toml::Spanned<Vec<String>>>|
             -> Result<Option<Vec<Multiaddr>>, String> {
                if !flags.is_empty() {
                    return flags
                        .iter()
                        .map(|a| parse_multiaddr(a).map_err(|p| format!("{flag} {p}")))
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some);
                }
                match keyed {
                    None => Ok(None),
                    Some(v) => {
                        let mut out = Vec::new();
                        for a in v.get_ref() {
                            match parse_multiaddr(a) {
                                Ok(m) => out.push(m),
                                Err(p) => return ctx.err(key, v.span(), p),
                            }
                        }
                        Ok(Some(out))
                    }
                }
            };
            if let Some(l) =
                addrs("p2p_listen", "--p2p-listen", &self.p2p_listen, &file.p2p_listen)?
            {
                if l.is_empty() {
                    return Err(format!("{}: p2p_listen is empty: the mesh needs an address to listen on (or set mesh = false)", ctx.origin));
                }
                m.listen = l;
            }
            if let Some(b) = addrs("bootstrap", "--bootstrap", &self.bootstrap, &file.bootstrap)? {
                m.bootstrap = b;
            }
            m.mdns = !self.no_mdns && file.mdns.unwrap_or(true);
            if let Some(flag) = &self.wan_sharing {
                m.wan_sharing = flag.parse().map_err(|p| format!("--wan-sharing {p}"))?;
            } else if let Some(v) = &file.wan_sharing {
                match v.get_ref().parse() {
                    Ok(mode) => m.wan_sharing = mode,
                    Err(p) => return ctx.err("wan_sharing", v.span(), p),
                }
            }
            if let Some(a) = &file.advertise {
                match parse_addr(a.get_ref()) {
                    Ok(addr) if !addr.ip().is_unspecified() && addr.port() != 0 => {
                        m.advertise = Some(addr)
                    }
                    Ok(_) => {
                        return ctx.err(
                            "advertise",
                            a.span(),
                            "must be a concrete IP:PORT siblings can reach (not 0.0.0.0 or port 0)"
                                .into(),
                        )
                    }
                    Err(p) => return ctx.err("advertise", a.span(), p),
                }
            }
            if m.heartbeat < Duration::from_millis(100) || m.heartbeat > Duration::from_secs(60) {
                return Err(format!("{}: mesh_heartbeat must be 100ms to 60s", ctx.origin));
            }
            cfg.mesh = Some(m);
        }
        if let Some(sites) = &file.peer_sites {
            for site in sites.get_ref() {
                if let Err(e) = oasis_core::pki::validate_node_name("site", site) {
                    return ctx.err("peer_sites", sites.span(), format!("entry {site:?}: {e}"));
                }
            }
            cfg.peer_sites = sites.get_ref().clone();
        }
        cfg.batch_max_chunks = file.batch_max_chunks.unwrap_or(cfg.batch_max_chunks);
        cfg.batches_in_flight = file.batches_in_flight.unwrap_or(cfg.batches_in_flight);
        cfg.validate().map_err(|p| format!("{}: {p}", ctx.origin))?;
        Ok(cfg)
    }
}

fn flat(rate: u64) -> WanLimit {
    if rate == 0 {
        WanLimit::Unlimited
    } else {
        WanLimit::Flat(rate)
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP:PORT address (e.g. 0.0.0.0:7443)"))
}

/// A rate: bytes per second, or with a unit and optional "/s"; "unlimited" or 0 = no limit
/// (returned as 0).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let body = t.strip_suffix("/s").unwrap_or(t);
    parse_amount(body).map_err(|p| {
        format!("is not a rate ({p}; write e.g. \"10MB/s\", \"80Mbit/s\", or 0 for no limit)")
    })
}

/// A size in bytes, with an optional unit ("200GiB").
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.ends_with("/s") {
        return Err("is a rate, but a size is wanted (drop the \"/s\")".into());
    }
    parse_amount(t).map_err(|p| format!("is not a size ({p}; write e.g. \"200GiB\")"))
}

/// `cache_size`: a size, or "unlimited" (None). Zero is refused: it would evict everything.
fn parse_cache_size(text: &str) -> Result<Option<u64>, String> {
    if text.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    match parse_size(text)? {
        0 => Err("is zero: the cache could hold nothing (write \"unlimited\" for no cap)".into()),
        n => Ok(Some(n)),
    }
}

/// A duration in the one grammar of `oasis_core::units` (`"10s"`, `"250ms"`, `"2m"`, `"1h30m"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    oasis_core::units::parse_duration(text)
        .map_err(|p| format!("is not a duration ({p}; write e.g. \"10s\", \"250ms\" or \"2m\")"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn units() {
        assert_eq!(parse_size("200GiB").unwrap(), 200 << 30);
        assert_eq!(parse_size("1.5 KiB").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0.1MB").unwrap(), 100_000);
        assert!(parse_size("10MB/s").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("MB").is_err());
        assert_eq!(parse_rate("10MB/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("80Mbit/s").unwrap(), 10_000_000);
        assert_eq!(parse_rate("2000000").unwrap(), 2_000_000);
        assert_eq!(parse_rate("unlimited").unwrap(), 0);
        assert_eq!(parse_cache_size("unlimited").unwrap(), None);
        assert!(parse_cache_size("0").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn file_then_flags() {
        let f = file(
            "state = \"st\"\nlisten = \"0.0.0.0:7443\"\nupstream = \"seed.example:7443\"\n\
             wan_rate = \"10MB/s\"\ncache_size = \"1GiB\"\nmetrics = \"127.0.0.1:9100\"\n\
             miss_timeout = \"5s\"\n",
        );
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        let c = args.resolve().unwrap();
        assert_eq!(c.state, f.path().parent().unwrap().join("st"));
        assert_eq!(c.wan, WanLimit::Flat(10_000_000));
        assert_eq!(c.cache_size, Some(1 << 30));
        assert_eq!(c.miss_timeout, Duration::from_secs(5));
        // A --policy flag replaces the file's wan_rate; other flags override their keys.
        let args = ConfigArgs {
            config: Some(f.path().to_path_buf()),
            policy: Some("/etc/p.toml".into()),
            cache_size: Some("2GiB".into()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.wan, WanLimit::PolicyFile("/etc/p.toml".into()));
        assert_eq!(c.cache_size, Some(2 << 30));
    }

    #[test]
    fn mesh_keys_and_flags() {
        let base = "state = \"s\"\nlisten = \"0.0.0.0:1\"\nupstream = \"x:1\"\n";
        let f = file(&format!(
            "{base}p2p_listen = [\"/ip4/0.0.0.0/tcp/7411\"]\nbootstrap = [\"/ip4/10.0.0.2/udp/7411/quic-v1/p2p/12D3KooWD6Fpb1bkvZG3uXcN834QSk8aekUQu7ht5inToFtTbjqd\", \"/dns4/r.example/tcp/7411\"]\nmdns = false\npeer_sites = [\"annex\"]\nmesh_heartbeat = \"500ms\"\n"
        ));
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        let c = args.resolve().unwrap();
        let m = c.mesh.clone().unwrap();
        assert_eq!((m.listen.len(), m.bootstrap.len(), m.mdns), (1, 2, false));
        assert_eq!(m.heartbeat, Duration::from_millis(500));
        assert_eq!(c.peer_sites, vec!["annex".to_string()]);
        let args = ConfigArgs {
            config: Some(f.path().to_path_buf()),
            bootstrap: vec!["/ip4/10.0.0.3/tcp/7411".into()],
            ..Default::default()
        };
        assert_eq!(args.resolve().unwrap().mesh.unwrap().bootstrap.len(), 1, "flags replace");
        let args = ConfigArgs { no_mesh: true, ..args };
        assert!(args.resolve().unwrap().mesh.is_none());
        // Default: on, TCP and QUIC on 7411, mDNS on.
        let f = file(base);
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        let m = args.resolve().unwrap().mesh.unwrap();
        assert_eq!((m.listen.len(), m.mdns), (2, true));
        let args = ConfigArgs { no_mdns: true, ..args };
        assert!(!args.resolve().unwrap().mesh.unwrap().mdns);
        // Errors name the key and line, or the flag.
        let f = file(&format!("{base}bootstrap = [\"/ip4/10.0.0.2/udp/7411\"]\n"));
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        let e = args.resolve().unwrap_err();
        assert!(e.contains("line 4: bootstrap") && e.contains("quic-v1"), "{e}");
        let f = file(base);
        let args = ConfigArgs {
            config: Some(f.path().to_path_buf()),
            p2p_listen: vec!["tcp://0.0.0.0:7411".into()],
            ..Default::default()
        };
        assert!(args.resolve().unwrap_err().contains("--p2p-listen"));
        let f = file(&format!("{base}mesh = false\n"));
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        assert!(args.resolve().unwrap().mesh.is_none());
        // WAN sharing: leader by default, the key and the flag (the flag wins), errors named.
        let f = file(base);
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        assert_eq!(args.resolve().unwrap().mesh.unwrap().wan_sharing, WanSharing::Leader);
        let f = file(&format!("{base}wan_sharing = \"spread\"\n"));
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        assert_eq!(args.resolve().unwrap().mesh.unwrap().wan_sharing, WanSharing::Spread);
        let args = ConfigArgs { wan_sharing: Some("leader".into()), ..args };
        assert_eq!(args.resolve().unwrap().mesh.unwrap().wan_sharing, WanSharing::Leader);
        let args = ConfigArgs { wan_sharing: Some("fair".into()), ..args };
        let e = args.resolve().unwrap_err();
        assert!(e.contains("--wan-sharing \"fair\" is not a WAN sharing mode"), "{e}");
        let f = file(&format!("{base}wan_sharing = \"half\"\n"));
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        let e = args.resolve().unwrap_err();
        assert!(e.contains("line 4: wan_sharing \"half\""), "{e}");
    }

    #[test]
    fn connection_limits_from_the_file() {
        let base = "state = \"s\"\nlisten = \"0.0.0.0:1\"\nupstream = \"x:1\"\n";
        let resolve = |extra: &str| {
            let f = file(&format!("{base}{extra}"));
            ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() }.resolve()
        };
        assert_eq!(resolve("").unwrap().limits, ServeLimits::default());
        let c = resolve(
            "max_connections = 500\nmax_connections_per_peer = 4\nwrite_stall = \"10s\"\n\
             max_streams_per_connection = 64\nmax_answer_bytes_per_connection = \"8MiB\"\n\
             source_ban = \"0s\"\n",
        )
        .unwrap();
        assert_eq!(
            c.limits,
            ServeLimits {
                max_connections: 500,
                max_connections_per_peer: 4,
                write_stall: Duration::from_secs(10),
                max_streams_per_connection: 64,
                max_answer_bytes_per_connection: 8 << 20,
                source_ban: Duration::ZERO,
            }
        );
        let n = resolve("max_answer_bytes_per_connection = 1048576\n").unwrap();
        assert_eq!(n.limits.max_answer_bytes_per_connection, 1 << 20, "a plain number of bytes");
        let e = resolve("max_answer_bytes_per_connection = \"lots\"\n").unwrap_err();
        assert!(
            e.contains("line 4: max_answer_bytes_per_connection \"lots\" is not a size"),
            "{e}"
        );
        let e = resolve("max_answer_bytes_per_connection = \"16KiB\"\n").unwrap_err();
        assert!(e.contains("between 64 KiB and 1 GiB"), "{e}");
        let e = resolve("max_streams_per_connection = 0\n").unwrap_err();
        assert!(e.contains("max_streams_per_connection must be at least 1"), "{e}");
        let e = resolve("max_connections_per_peer = 0\n").unwrap_err();
        assert!(e.contains("max_connections_per_peer must be at least 1"), "{e}");
        let e = resolve("write_stall = \"a while\"\n").unwrap_err();
        assert!(e.contains("line 4: write_stall"), "{e}");
    }

    #[test]
    fn errors_name_line_and_key() {
        let f = file("state = \"s\"\nlisten = \"0.0.0.0:1\"\nupstream = \"x:1\"\ncache_size = \"12 parsecs\"\n");
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        let e = args.resolve().unwrap_err();
        assert!(e.contains("line 4: cache_size \"12 parsecs\" is not a size"), "{e}");
        let f = file("state = \"s\"\nlisten = \"0.0.0.0:1\"\nupstream = \"x:1\"\ncache_sise = 1\n");
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        let e = args.resolve().unwrap_err();
        assert!(e.contains("cache_sise"), "{e}");
        let f = file("state = \"s\"\nlisten = \"0.0.0.0:1\"\nupstream = \"x\"\n");
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        assert!(args.resolve().unwrap_err().contains("HOST:PORT"));
        let args = ConfigArgs { listen: Some("0.0.0.0:1".into()), ..Default::default() };
        assert!(args.resolve().unwrap_err().contains("--state"));
        let f = file("state = \"s\"\nlisten = \"0.0.0.0:1\"\nupstream = \"x:1\"\npolicy = \"p\"\nwan_rate = 5\n");
        let args = ConfigArgs { config: Some(f.path().to_path_buf()), ..Default::default() };
        assert!(args.resolve().unwrap_err().contains("keep one"));
    }
}
