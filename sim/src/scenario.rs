//! Simulator scenario files (`config/sim/*.toml`): parsing and validation.
//!
//! The file is walked by hand over toml's spanned document tree (as the bandwidth policy parser
//! does), so every error names the file, the line, the full key path and the problem, e.g.
//! `branch-50.toml line 12: sites[0].wan_rate "fast" is not a rate (...)`, and unknown keys
//! are refused. Rates and sizes are read by the bandwidth policy's own parser (same units, same
//! messages); the `policy` is either a path to a policy file or an inline `[policy]` table in
//! the same format, handed to [`BandwidthPolicy::from_toml_str`] unchanged.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use oasis_core::file_errors;
use oasis_core::policy::{time_zone, BandwidthPolicy, PolicyError};
use oasis_core::site_wan::WanSharing;
use oasis_core::wake::schedule::{window_times, ScheduleConfig};
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

type V<'a> = Spanned<DeValue<'a>>;

/// A scenario that cannot be used: the message names file, line, key and problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScenarioError(pub String);

/// A bandwidth policy and where it came from.
#[derive(Clone, Debug)]
pub struct PolicySpec {
    pub policy: BandwidthPolicy,
    /// `file.toml` or `inline [policy] in scenario.toml`.
    pub source: String,
}

/// Simulation granularity knobs (`[model]`).
#[derive(Clone, Debug)]
pub struct Model {
    pub chunk_avg: u64,
    pub pull_bytes: u64,
    pub fetch_concurrency: usize,
    pub lookahead: u64,
    pub bin_s: f64,
    pub failover_s: f64,
}

#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub name: String,
    pub size: u64,
    pub shared_with_previous: f64,
    /// (index of another layer, fraction of this layer's bytes identical to chunks of it)
    pub shared_with: Option<(usize, f64)>,
}

#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub name: String,
    pub count: usize,
    pub endpoints: usize,
    pub reflectors: usize,
    pub wan_rate: f64,
    pub wan_latency_s: f64,
    pub wan_loss: f64,
    pub lan_rate: f64,
    pub endpoint_rate: f64,
    pub cache: u64,
    pub timezone: String,
    pub policy: Option<PolicySpec>,
    pub asleep: f64,
    pub wake_delay_s: f64,
    pub wake_jitter_s: f64,
    /// Probability that a sleeping endpoint never comes online, however often it is woken.
    pub never_wakes: f64,
    /// How the site's reflector paces scheduled wakes (`wake_rate`, `wake_online_timeout`;
    /// rewakes and the delivery timeout at the reflector's defaults).
    pub wake: ScheduleConfig,
    /// Gossip heartbeat between the site's reflectors (`mesh_heartbeat`), seconds.
    pub mesh_heartbeat_s: f64,
    /// How the site's reflectors share the WAN (`wan_sharing`).
    pub wan_sharing: WanSharing,
}

impl GroupSpec {
    /// Name of the `i`-th site (0-based) of the group.
    pub fn site_name(&self, i: usize) -> String {
        if self.count == 1 {
            self.name.clone()
        } else {
            format!("{}-{:04}", self.name, i + 1)
        }
    }
}

#[derive(Clone, Debug)]
pub enum SiteSel {
    All,
    Names(Vec<String>),
}

impl SiteSel {
    pub fn matches(&self, group: &str, site: &str) -> bool {
        match self {
            SiteSel::All => true,
            SiteSel::Names(n) => n.iter().any(|x| x == group || x == site),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AssignSpec {
    pub layer: usize,
    pub sites: SiteSel,
    /// "HH:MM-HH:MM" in the site's time zone, as `oasis-seed assign --window` takes it.
    pub window: Option<String>,
    pub prefetch: bool,
}

#[derive(Clone, Debug)]
pub enum FailureKind {
    ReflectorDown { reflector: usize, at_s: f64 },
    WanDown { from_s: f64, to_s: f64 },
}

#[derive(Clone, Debug)]
pub struct FailureSpec {
    pub sites: SiteSel,
    pub kind: FailureKind,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub origin: String,
    pub start_unix: i64,
    pub duration_s: f64,
    pub seed_egress: f64,
    pub timezone: String,
    pub policy: PolicySpec,
    pub model: Model,
    pub layers: Vec<LayerSpec>,
    pub groups: Vec<GroupSpec>,
    pub assignments: Vec<AssignSpec>,
    pub failures: Vec<FailureSpec>,
    pub chart_sites: Vec<String>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError(format!("cannot read scenario {}: {e}", path.display())))?;
        Scenario::from_toml_str(&text, &path.display().to_string(), path.parent())
    }

    /// Parses scenario text; `origin` names the file in messages, `dir` resolves policy paths.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        dir: Option<&Path>,
    ) -> Result<Scenario, ScenarioError> {
        let doc = Doc { origin, text, dir: dir.map(Path::to_path_buf).unwrap_or_default() };
        let root = DeTable::parse(text).map_err(|e| {
            ScenarioError(oasis_proto::file_errors::TomlProblem::of(text, &e).describe(origin))
        })?;
        let span = root.span();
        let root = Tbl { doc: &doc, path: String::new(), t: root.get_ref(), span };
        parse_root(&root)
    }

    pub fn total_sites(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Replaces the scenario-wide policy and every per-group override (for `compare`).
    pub fn with_policy(&self, p: PolicySpec) -> Scenario {
        let mut s = self.clone();
        s.policy = p;
        for g in &mut s.groups {
            g.policy = None;
        }
        s
    }
}

/// Loads a policy file for `compare` (the same parser the reflector uses).
pub fn load_policy(path: &Path) -> Result<PolicySpec, ScenarioError> {
    let policy = oasis_core::policy::load(path).map_err(|e| ScenarioError(e.to_string()))?;
    Ok(PolicySpec { policy, source: path.display().to_string() })
}

struct Doc<'a> {
    origin: &'a str,
    text: &'a str,
    dir: PathBuf,
}

impl Doc<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        file_errors::line_of(self.text, span.start)
    }

    fn err(&self, span: &Range<usize>, key: &str, problem: impl AsRef<str>) -> ScenarioError {
        ScenarioError(file_errors::at_line(self.origin, self.text, span, key, problem.as_ref()))
    }

    fn raw(&self, v: &V<'_>) -> &str {
        self.text.get(v.span()).unwrap_or("").trim()
    }
}

use oasis_core::policy::shown_toml_value as shown;

struct Tbl<'d, 'a> {
    doc: &'d Doc<'a>,
    path: String,
    t: &'d DeTable<'a>,
    span: Range<usize>,
}

impl<'d, 'a> Tbl<'d, 'a> {
    fn key(&self, k: &str) -> String {
        if self.path.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.path)
        }
    }

    fn check_keys(&self, known: &[&str]) -> Result<(), ScenarioError> {
        for (k, _) in self.t.iter() {
            let name: &str = k.get_ref().as_ref();
            if !known.contains(&name) {
                return Err(self.doc.err(
                    &k.span(),
                    &self.key(name),
                    format!("is not a known key (expected one of: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn get(&self, k: &str) -> Option<&'d V<'a>> {
        self.t.iter().find(|(key, _)| key.get_ref().as_ref() == k).map(|(_, v)| v)
    }

    fn missing(&self, k: &str, what: &str) -> ScenarioError {
        self.doc.err(&self.span, &self.key(k), format!("is missing ({what})"))
    }

    fn bad(&self, v: &V<'_>, k: &str, problem: impl AsRef<str>) -> ScenarioError {
        self.doc.err(&v.span(), &self.key(k), problem)
    }

    fn string(&self, k: &str) -> Result<Option<String>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::String(s) => Ok(Some(s.to_string())),
            other => Err(self.bad(v, k, format!("must be a string, not {}", shown(other)))),
        }
    }

    fn number(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let x = match v.get_ref() {
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            DeValue::Integer(i) => {
                i64::from_str_radix(i.as_str(), i.radix()).ok().map(|n| n as f64)
            }
            _ => None,
        };
        match x {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(self.bad(v, k, format!("{} must be a number", shown(v.get_ref())))),
        }
    }

    fn fraction(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        match self.number(k)? {
            Some(x) if !(0.0..=1.0).contains(&x) => Err(self.bad(
                self.get(k).expect("present"),
                k,
                format!("{x} must be a fraction from 0 to 1"),
            )),
            x => Ok(x),
        }
    }

    fn count(&self, k: &str, min: u64) -> Result<Option<u64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= min as i64 => Ok(Some(n as u64)),
            _ => Err(self.bad(
                v,
                k,
                format!("{} must be a whole number of at least {min}", shown(v.get_ref())),
            )),
        }
    }

    fn boolean(&self, k: &str) -> Result<Option<bool>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(Some(*b)),
            other => Err(self.bad(v, k, format!("must be true or false, not {}", shown(other)))),
        }
    }

    /// A rate in the policy file's units; `f64::INFINITY` for "unlimited".
    fn rate(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        if !matches!(v.get_ref(), DeValue::String(_) | DeValue::Integer(_) | DeValue::Float(_)) {
            return Err(self.bad(
                v,
                k,
                format!("must be a rate like \"100Mbit/s\", not {}", shown(v.get_ref())),
            ));
        }
        let text = format!("[wan]\nrate = {}\n", self.doc.raw(v));
        match BandwidthPolicy::from_toml_str(&text, "-") {
            Ok(p) => Ok(Some(p.default_rate().map_or(f64::INFINITY, |r| r as f64))),
            Err(e) => Err(self.bad(v, k, policy_problem(e))),
        }
    }

    /// A size in the policy file's units (`"4GiB"`); "unlimited" only when `unlimited_ok`.
    fn size(&self, k: &str, unlimited_ok: bool) -> Result<Option<u64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        if let DeValue::String(s) = v.get_ref() {
            if unlimited_ok && s.trim().eq_ignore_ascii_case("unlimited") {
                return Ok(Some(u64::MAX));
            }
        }
        if !matches!(v.get_ref(), DeValue::String(_) | DeValue::Integer(_)) {
            return Err(self.bad(
                v,
                k,
                format!("must be a size like \"4GiB\", not {}", shown(v.get_ref())),
            ));
        }
        let text = format!("[wan]\nrate = 1\nburst = {}\n", self.doc.raw(v));
        match BandwidthPolicy::from_toml_str(&text, "-") {
            Ok(p) => Ok(Some(p.burst_bytes())),
            Err(e) => {
                let p =
                    policy_problem(e).replace("is the token bucket's size in bytes", "is a size");
                Err(self.bad(v, k, p))
            }
        }
    }

    /// A duration: seconds as a number, or "250ms", "30s", "5m", "2h", "1d", "1h30m".
    fn duration(&self, k: &str) -> Result<Option<f64>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        let parsed = match v.get_ref() {
            DeValue::String(s) => {
                oasis_core::units::parse_duration(s).map(|d| d.as_secs_f64()).map_err(|_| ())
            }
            DeValue::Integer(_) | DeValue::Float(_) => {
                self.number(k)?.filter(|x| *x >= 0.0).ok_or(())
            }
            _ => Err(()),
        };
        parsed.map(Some).map_err(|()| {
            self.bad(
                v,
                k,
                format!(
                    "{} is not a duration (write e.g. \"30ms\", \"90s\", \"15m\", \"2h\", \"1d\")",
                    shown(v.get_ref())
                ),
            )
        })
    }

    fn table(&self, k: &str) -> Result<Option<Tbl<'d, 'a>>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::Table(t) => {
                Ok(Some(Tbl { doc: self.doc, path: self.key(k), t, span: v.span() }))
            }
            other => Err(self.bad(v, k, format!("must be a table, not {}", shown(other)))),
        }
    }

    /// An array of tables (`[[k]]`).
    fn tables(&self, k: &str) -> Result<Vec<Tbl<'d, 'a>>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(Vec::new()) };
        let DeValue::Array(items) = v.get_ref() else {
            return Err(self.bad(
                v,
                k,
                format!("must be an array of tables ([[{k}]]), not {}", shown(v.get_ref())),
            ));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.get_ref() {
                DeValue::Table(t) => Ok(Tbl {
                    doc: self.doc,
                    path: format!("{}[{i}]", self.key(k)),
                    t,
                    span: item.span(),
                }),
                other => Err(self.bad(
                    item,
                    &format!("{k}[{i}]"),
                    format!("must be a table, not {}", shown(other)),
                )),
            })
            .collect()
    }

    /// `"all"`, a site or group name, or an array of names.
    fn site_sel(&self, k: &str) -> Result<Option<SiteSel>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::String(s) if s.as_ref() == "all" => Ok(Some(SiteSel::All)),
            DeValue::String(s) => Ok(Some(SiteSel::Names(vec![s.to_string()]))),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => {
                            return Err(self.bad(
                                item,
                                k,
                                format!("{} is not a site or group name", shown(other)),
                            ))
                        }
                    }
                }
                Ok(Some(SiteSel::Names(out)))
            }
            other => Err(self.bad(
                v,
                k,
                format!(
                    "must be \"all\", a site or group name, or an array of names, not {}",
                    shown(other)
                ),
            )),
        }
    }

    /// `policy = "file.toml"` (relative to the scenario) or an inline `[policy]` table.
    fn policy(&self, k: &str) -> Result<Option<PolicySpec>, ScenarioError> {
        let Some(v) = self.get(k) else { return Ok(None) };
        match v.get_ref() {
            DeValue::String(p) => {
                let path = self.doc.dir.join(p.as_ref());
                let policy = oasis_core::policy::load(&path).map_err(|e| {
                    self.bad(v, k, format!("\"{p}\": {e}"))
                })?;
                Ok(Some(PolicySpec { policy, source: path.display().to_string() }))
            }
            DeValue::Table(t) => {
                let mut out = Emit::default();
                emit_table(self.doc, &mut out, "", t);
                let origin = format!("{} ({})", self.doc.origin, self.key(k));
                let policy = BandwidthPolicy::from_toml_str(&out.text, &origin).map_err(|e| {
                    // Map the generated text's line back to the scenario's line.
                    let line = e.line().and_then(|l| out.lines.get(l - 1).copied());
                    let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
                    match e {
                        PolicyError::Invalid { key, problem, .. } => ScenarioError(format!(
                            "{}{at}: {}.{key} {problem}",
                            self.doc.origin,
                            self.key(k)
                        )),
                        other => ScenarioError(format!("{}{at}: {}: {other}", self.doc.origin, self.key(k))),
                    }
                })?;
                Ok(Some(PolicySpec {
                    policy,
                    source: format!("inline [{}] in {}", self.key(k), self.doc.origin),
                }))
            }
            other => Err(self.bad(
                v,
                k,
                format!(
                    "must be a policy file path or a [policy] table in the policy file format, not {}",
                    shown(other)
                ),
            )),
        }
    }
}

fn policy_problem(e: PolicyError) -> String {
    match e {
        PolicyError::Invalid { problem, .. } => problem,
        other => other.to_string(),
    }
}

/// Re-emits an inline table as a standalone TOML document, remembering for every emitted line
/// the scenario line it came from (values are copied verbatim from the scenario text).
#[derive(Default)]
struct Emit {
    text: String,
    lines: Vec<usize>,
}

impl Emit {
    fn line(&mut self, s: &str, src: usize) {
        self.text.push_str(s);
        self.text.push('\n');
        self.lines.push(src);
    }
}

fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn emit_table(doc: &Doc<'_>, out: &mut Emit, prefix: &str, t: &DeTable<'_>) {
    let is_table_array = |v: &DeValue<'_>| match v {
        DeValue::Array(a) => {
            !a.is_empty() && a.iter().all(|i| matches!(i.get_ref(), DeValue::Table(_)))
        }
        _ => false,
    };
    for (k, v) in t.iter() {
        if !matches!(v.get_ref(), DeValue::Table(_)) && !is_table_array(v.get_ref()) {
            let mut s = String::new();
            let _ = write!(s, "{} = {}", toml_key(k.get_ref()), doc.raw(v));
            out.line(&s, doc.line(&v.span()));
        }
    }
    for (k, v) in t.iter() {
        let name = if prefix.is_empty() {
            toml_key(k.get_ref())
        } else {
            format!("{prefix}.{}", toml_key(k.get_ref()))
        };
        match v.get_ref() {
            DeValue::Table(sub) => {
                out.line(&format!("[{name}]"), doc.line(&k.span()));
                emit_table(doc, out, &name, sub);
            }
            DeValue::Array(items) if is_table_array(v.get_ref()) => {
                for item in items.iter() {
                    if let DeValue::Table(sub) = item.get_ref() {
                        out.line(&format!("[[{name}]]"), doc.line(&item.span()));
                        emit_table(doc, out, &name, sub);
                    }
                }
            }
            _ => {}
        }
    }
}

const ROOT_KEYS: &[&str] = &[
    "name",
    "start",
    "duration",
    "timezone",
    "seed_egress",
    "policy",
    "model",
    "layers",
    "sites",
    "assignments",
    "failures",
    "chart_sites",
];
const MODEL_KEYS: &[&str] =
    &["chunk_avg", "pull_bytes", "fetch_concurrency", "lookahead", "bin", "failover_delay"];
const LAYER_KEYS: &[&str] =
    &["name", "size", "shared_with_previous", "shared_with", "shared_fraction"];
const SITE_KEYS: &[&str] = &[
    "name",
    "count",
    "endpoints",
    "reflectors",
    "wan_rate",
    "wan_latency",
    "wan_loss",
    "lan_rate",
    "endpoint_rate",
    "cache",
    "timezone",
    "policy",
    "asleep",
    "wake_delay",
    "wake_jitter",
    "never_wakes",
    "wake_rate",
    "wake_online_timeout",
    "mesh_heartbeat",
    "wan_sharing",
];
const ASSIGN_KEYS: &[&str] = &["layer", "sites", "window", "prefetch"];
const FAILURE_KEYS: &[&str] = &["kind", "sites", "reflector", "at", "from", "to"];

/// The wake schedule of a site group, from the keys the reflector's config uses for it:
/// `wake_rate` (machines per minute, paced in batches as the reflector paces them) and
/// `wake_online_timeout`.
fn wake_schedule(t: &Tbl<'_, '_>) -> Result<ScheduleConfig, ScenarioError> {
    let mut cfg = match t.count("wake_rate", 1)? {
        Some(r) => ScheduleConfig::from_rate(u32::try_from(r).unwrap_or(u32::MAX)),
        None => ScheduleConfig::default(),
    };
    if let Some(s) = t.duration("wake_online_timeout")? {
        if s < 1.0 {
            return Err(t.bad(
                t.get("wake_online_timeout").expect("present"),
                "wake_online_timeout",
                format!("{s}s is too short (at least 1s)"),
            ));
        }
        cfg.online_timeout = Duration::from_secs_f64(s);
    }
    Ok(cfg)
}

fn parse_root(root: &Tbl<'_, '_>) -> Result<Scenario, ScenarioError> {
    let doc = root.doc;
    root.check_keys(ROOT_KEYS)?;
    let name = root.string("name")?.unwrap_or_else(|| {
        Path::new(doc.origin).file_stem().map_or("scenario".into(), |s| s.to_string_lossy().into())
    });
    let start_unix = match root.get("start") {
        None => 1_748_808_000, // 2025-06-01T20:00:00Z
        Some(v) => {
            let text: Cow<'_, str> = match v.get_ref() {
                DeValue::String(s) => s.clone(),
                DeValue::Datetime(d) => Cow::Owned(d.to_string()),
                other => {
                    return Err(root.bad(
                        v,
                        "start",
                        format!("must be a date-time, not {}", shown(other)),
                    ))
                }
            };
            text.parse::<jiff::Timestamp>().map(|t| t.as_second()).map_err(|_| {
                root.bad(
                    v,
                    "start",
                    format!(
                        "\"{text}\" is not a UTC date-time (write e.g. \"2025-06-02T20:00:00Z\")"
                    ),
                )
            })?
        }
    };
    let duration_s = root.duration("duration")?.unwrap_or(7.0 * 86400.0);
    let timezone = root.string("timezone")?.unwrap_or_else(|| "UTC".into());
    if let Some(v) = root.get("timezone") {
        time_zone(&timezone).map_err(|p| root.bad(v, "timezone", p))?;
    }
    let seed_egress = root.rate("seed_egress")?.unwrap_or(f64::INFINITY);
    let policy = root.policy("policy")?.ok_or_else(|| {
        root.missing("policy", "a bandwidth policy file path, or an inline [policy] table")
    })?;

    let model = match root.table("model")? {
        None => Model::default(),
        Some(m) => {
            m.check_keys(MODEL_KEYS)?;
            let d = Model::default();
            let chunk_avg = m.size("chunk_avg", false)?.unwrap_or(d.chunk_avg).max(64);
            Model {
                chunk_avg,
                pull_bytes: m.size("pull_bytes", false)?.unwrap_or(d.pull_bytes),
                fetch_concurrency: m
                    .count("fetch_concurrency", 1)?
                    .map_or(d.fetch_concurrency, |n| n as usize),
                lookahead: m.size("lookahead", false)?.unwrap_or(d.lookahead),
                bin_s: m.duration("bin")?.filter(|b| *b > 0.0).unwrap_or(d.bin_s),
                failover_s: m.duration("failover_delay")?.unwrap_or(d.failover_s),
            }
        }
    };

    let mut layers: Vec<LayerSpec> = Vec::new();
    let layer_tables = root.tables("layers")?;
    if layer_tables.is_empty() {
        return Err(root.missing("layers", "at least one [[layers]] table"));
    }
    let mut pending_shared = Vec::new();
    for t in &layer_tables {
        t.check_keys(LAYER_KEYS)?;
        let name = t.string("name")?.ok_or_else(|| t.missing("name", "e.g. name = \"base\""))?;
        if layers.iter().any(|l| l.name == name) {
            return Err(t.bad(
                t.get("name").expect("present"),
                "name",
                format!("\"{name}\" is used by two layers"),
            ));
        }
        let size =
            t.size("size", false)?.ok_or_else(|| t.missing("size", "e.g. size = \"4GiB\""))?;
        let shared_with_previous = t.fraction("shared_with_previous")?.unwrap_or(0.0);
        let shared_fraction = t.fraction("shared_fraction")?;
        let shared_with = t.string("shared_with")?;
        match (&shared_with, shared_fraction) {
            (Some(_), None) => {
                return Err(t.missing(
                    "shared_fraction",
                    "the fraction of this layer found in `shared_with`",
                ))
            }
            (None, Some(_)) => {
                return Err(t.missing("shared_with", "the layer `shared_fraction` refers to"))
            }
            _ => {}
        }
        if let Some(f) = shared_fraction {
            if f + shared_with_previous > 1.0 {
                return Err(t.bad(
                    t.get("shared_fraction").expect("present"),
                    "shared_fraction",
                    format!("{f} plus shared_with_previous {shared_with_previous} exceeds 1"),
                ));
            }
        }
        pending_shared.push(shared_with.map(|w| (w, shared_fraction.unwrap_or(0.0))));
        layers.push(LayerSpec { name, size, shared_with_previous, shared_with: None });
    }
    for (i, p) in pending_shared.into_iter().enumerate() {
        if let Some((other, f)) = p {
            let t = &layer_tables[i];
            let v = t.get("shared_with").expect("present");
            let j = layers.iter().position(|l| l.name == other).ok_or_else(|| {
                t.bad(v, "shared_with", format!("\"{other}\" is not a layer of this scenario"))
            })?;
            if j >= i {
                return Err(t.bad(
                    v,
                    "shared_with",
                    format!("\"{other}\" must be listed before this layer"),
                ));
            }
            layers[i].shared_with = Some((j, f));
        }
    }

    let mut groups: Vec<GroupSpec> = Vec::new();
    let site_tables = root.tables("sites")?;
    if site_tables.is_empty() {
        return Err(root.missing("sites", "at least one [[sites]] table"));
    }
    for t in &site_tables {
        t.check_keys(SITE_KEYS)?;
        let name = t.string("name")?.ok_or_else(|| t.missing("name", "e.g. name = \"branch\""))?;
        if groups.iter().any(|g| g.name == name) {
            return Err(t.bad(
                t.get("name").expect("present"),
                "name",
                format!("\"{name}\" is used by two site groups"),
            ));
        }
        let tz = t.string("timezone")?.unwrap_or_else(|| timezone.clone());
        if let Some(v) = t.get("timezone") {
            time_zone(&tz).map_err(|p| t.bad(v, "timezone", p))?;
        }
        let wan_rate = t
            .rate("wan_rate")?
            .ok_or_else(|| t.missing("wan_rate", "the WAN link rate, e.g. \"100Mbit/s\""))?;
        let lan_rate = t.rate("lan_rate")?.unwrap_or(125_000_000.0);
        groups.push(GroupSpec {
            name,
            count: t.count("count", 1)?.unwrap_or(1) as usize,
            endpoints: t.count("endpoints", 0)?.unwrap_or(1) as usize,
            reflectors: t.count("reflectors", 1)?.unwrap_or(1) as usize,
            wan_rate,
            wan_latency_s: t.duration("wan_latency")?.unwrap_or(0.02),
            wan_loss: match t.fraction("wan_loss")? {
                Some(l) if l >= 1.0 => {
                    return Err(t.bad(
                        t.get("wan_loss").expect("present"),
                        "wan_loss",
                        "1 would lose every packet",
                    ))
                }
                l => l.unwrap_or(0.0),
            },
            lan_rate,
            endpoint_rate: t.rate("endpoint_rate")?.unwrap_or(f64::INFINITY),
            cache: t.size("cache", true)?.unwrap_or(u64::MAX),
            timezone: tz,
            policy: t.policy("policy")?,
            asleep: t.fraction("asleep")?.unwrap_or(0.0),
            wake_delay_s: t.duration("wake_delay")?.unwrap_or(0.0),
            wake_jitter_s: t.duration("wake_jitter")?.unwrap_or(0.0),
            never_wakes: t.fraction("never_wakes")?.unwrap_or(0.0),
            wake: wake_schedule(t)?,
            mesh_heartbeat_s: match t.duration("mesh_heartbeat")? {
                Some(h) if h < 0.01 => {
                    return Err(t.bad(
                        t.get("mesh_heartbeat").expect("present"),
                        "mesh_heartbeat",
                        format!("{h}s is too short (at least 10ms)"),
                    ))
                }
                h => h.unwrap_or(oasis_core::gossip::DEFAULT_HEARTBEAT.as_secs_f64()),
            },
            wan_sharing: match t.string("wan_sharing")? {
                None => WanSharing::default(),
                Some(m) => m.parse().map_err(|p: String| {
                    t.bad(t.get("wan_sharing").expect("present"), "wan_sharing", p)
                })?,
            },
        });
    }
    let known_name =
        |n: &str| groups.iter().any(|g| g.name == n || (0..g.count).any(|i| g.site_name(i) == n));
    let check_sel = |t: &Tbl<'_, '_>, sel: &SiteSel| -> Result<(), ScenarioError> {
        if let SiteSel::Names(names) = sel {
            for n in names {
                if !known_name(n) {
                    return Err(t.bad(
                        t.get("sites").expect("present"),
                        "sites",
                        format!("\"{n}\" is neither a site nor a site group of this scenario"),
                    ));
                }
            }
        }
        Ok(())
    };

    let mut assignments = Vec::new();
    for t in root.tables("assignments")? {
        t.check_keys(ASSIGN_KEYS)?;
        let lname = t.string("layer")?.ok_or_else(|| t.missing("layer", "the layer's name"))?;
        let layer = layers.iter().position(|l| l.name == lname).ok_or_else(|| {
            t.bad(
                t.get("layer").expect("present"),
                "layer",
                format!("\"{lname}\" is not a layer of this scenario"),
            )
        })?;
        let sites = t.site_sel("sites")?.unwrap_or(SiteSel::All);
        check_sel(&t, &sites)?;
        let window = t.string("window")?;
        if let (Some(w), Some(v)) = (&window, t.get("window")) {
            window_times(w).map_err(|p| t.bad(v, "window", format!("\"{w}\": {p}")))?;
        }
        assignments.push(AssignSpec {
            layer,
            sites,
            window,
            prefetch: t.boolean("prefetch")?.unwrap_or(true),
        });
    }
    if assignments.is_empty() {
        return Err(root.missing("assignments", "at least one [[assignments]] table"));
    }

    let mut failures = Vec::new();
    for t in root.tables("failures")? {
        t.check_keys(FAILURE_KEYS)?;
        let kind_v = t.get("kind");
        let kind_s = t
            .string("kind")?
            .ok_or_else(|| t.missing("kind", "\"reflector_down\" or \"wan_down\""))?;
        let sites =
            t.site_sel("sites")?.ok_or_else(|| t.missing("sites", "the site(s) it happens at"))?;
        check_sel(&t, &sites)?;
        let kind = match kind_s.as_str() {
            "reflector_down" => {
                let at_s = t.duration("at")?.ok_or_else(|| t.missing("at", "when the reflector dies, e.g. \"10m\""))?;
                let reflector = t.count("reflector", 0)?.unwrap_or(0) as usize;
                FailureKind::ReflectorDown { reflector, at_s }
            }
            "wan_down" => {
                let from_s = t.duration("from")?.ok_or_else(|| t.missing("from", "when the link goes down"))?;
                let to_s = t.duration("to")?.ok_or_else(|| t.missing("to", "when the link comes back"))?;
                if to_s <= from_s {
                    return Err(t.bad(t.get("to").expect("present"), "to", "must be after `from`"));
                }
                FailureKind::WanDown { from_s, to_s }
            }
            other => {
                return Err(t.bad(
                    kind_v.expect("present"),
                    "kind",
                    format!("\"{other}\" is not a failure kind (expected \"reflector_down\" or \"wan_down\")"),
                ))
            }
        };
        failures.push(FailureSpec { sites, kind });
    }

    let mut chart_sites = Vec::new();
    if let Some(v) = root.get("chart_sites") {
        let sel = root.site_sel("chart_sites")?;
        if let Some(SiteSel::Names(n)) = sel {
            for name in &n {
                if !known_name(name) {
                    return Err(root.bad(
                        v,
                        "chart_sites",
                        format!("\"{name}\" is not a site of this scenario"),
                    ));
                }
            }
            chart_sites = n;
        }
    }

    Ok(Scenario {
        name,
        origin: doc.origin.to_string(),
        start_unix,
        duration_s,
        seed_egress,
        timezone,
        policy,
        model,
        layers,
        groups,
        assignments,
        failures,
        chart_sites,
    })
}

impl Default for Model {
    fn default() -> Model {
        Model {
            chunk_avg: 64 << 10,
            pull_bytes: 4 << 20,
            fetch_concurrency: 4,
            lookahead: 16 << 20,
            bin_s: 10.0,
            failover_s: 5.0,
        }
    }
}
