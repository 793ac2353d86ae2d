//! `oasis-reflector check`: validates the configuration and the policy, and reaches the upstream
//! with the node's identity, saying exactly what is wrong.

use crate::config::{ConfigArgs, ReflectorConfig, WanLimit};
use crate::policy::describe;
use crate::upstream;
use oasis_core::net::TransportOptions;
use oasis_core::pki::{NodeIdentity, Role};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// How long `check` waits for the upstream to answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Worth knowing, not a failure.
    Warning,
    Problem,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// No problem found (warnings allowed).
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl CheckReport {
    fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        if status == Status::Problem {
            self.ok = false;
        }
        self.checks.push(Check { name, status, detail: detail.into() });
    }

    /// One line per check, for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "ok     ",
                Status::Warning => "warning",
                Status::Problem => "PROBLEM",
            };
            out.push_str(&format!("{tag}  {:<10} {}\n", c.name, c.detail));
        }
        out.push_str(if self.ok {
            "reflector configuration OK\n"
        } else {
            "reflector configuration has problems (see PROBLEM lines)\n"
        });
        out
    }
}

/// Runs every check; never fails itself.
pub async fn check(args: &ConfigArgs) -> CheckReport {
    check_with_timeout(args, CHECK_TIMEOUT).await
}

/// [`check`] with another limit on the wait for the upstream.
pub async fn check_with_timeout(args: &ConfigArgs, upstream_timeout: Duration) -> CheckReport {
    let mut r = CheckReport { ok: true, checks: Vec::new() };
    let cfg = match args.resolve() {
        Ok(c) => {
            let from = args
                .config
                .as_ref()
                .map_or_else(|| "flags".to_string(), |p| format!("{} and flags", p.display()));
            r.push("config", Status::Ok, format!("read from {from}"));
            c
        }
        Err(e) => {
            r.push("config", Status::Problem, e);
            return r;
        }
    };
    check_config(&cfg, upstream_timeout, &mut r).await;
    r
}

/// The checks after the configuration parsed.
pub async fn check_config(cfg: &ReflectorConfig, upstream_timeout: Duration, r: &mut CheckReport) {
    // Identity.
    let identity = match NodeIdentity::load(&cfg.state) {
        Ok(id) if id.info().role == Role::Reflector => {
            r.push("identity", Status::Ok, format!("{} from {}", id.info(), cfg.state.display()));
            Some(id)
        }
        Ok(id) => {
            r.push(
                "identity",
                Status::Problem,
                format!(
                    "{} holds the identity of {}, not of a reflector: enroll with `oasis-seed \
                     enroll --role reflector --out {}`",
                    cfg.state.display(),
                    id.info(),
                    cfg.state.display()
                ),
            );
            None
        }
        Err(e) => {
            r.push("identity", Status::Problem, format!("{e}"));
            None
        }
    };

    // Policy.
    match &cfg.wan {
        WanLimit::Unlimited => r.push("policy", Status::Ok, "no WAN limit"),
        WanLimit::Flat(rate) => r.push("policy", Status::Ok, format!("flat WAN cap {rate} B/s")),
        WanLimit::PolicyFile(p) => match oasis_core::policy::load(p) {
            Ok(pol) => r.push("policy", Status::Ok, format!("{}: {}", p.display(), describe(&pol))),
            Err(e) => r.push("policy", Status::Problem, e.to_string()),
        },
    }

    // The mesh: how this reflector finds its siblings and shares the site's WAN with them.
    match &cfg.mesh {
        None => r.push("mesh", Status::Ok, "off (no siblings, no gossip)"),
        Some(m) => r.push(
            "mesh",
            Status::Ok,
            format!(
                "{} listen address(es), {} bootstrap peer(s), mDNS {}, heartbeat {:?}, WAN \
                 sharing {} (every reflector of the site must use the same)",
                m.listen.len(),
                m.bootstrap.len(),
                if m.mdns { "on" } else { "off" },
                m.heartbeat,
                m.wan_sharing
            ),
        ),
    }

    // Cache directory and size.
    check_cache_dir(cfg, r);

    // Listen and metrics addresses.
    match std::net::UdpSocket::bind(cfg.listen) {
        Ok(_) => r.push("listen", Status::Ok, format!("UDP {} is free", cfg.listen)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.push(
            "listen",
            Status::Warning,
            format!("UDP {} is in use (is the reflector already running?)", cfg.listen),
        ),
        Err(e) => r.push("listen", Status::Problem, format!("cannot bind UDP {}: {e}", cfg.listen)),
    }
    if let Some(m) = cfg.metrics {
        match std::net::TcpListener::bind(m) {
            Ok(_) => r.push("metrics", Status::Ok, format!("TCP {m} is free")),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => r.push(
                "metrics",
                Status::Warning,
                format!("TCP {m} is in use (is the reflector already running?)"),
            ),
            Err(e) => r.push("metrics", Status::Problem, format!("cannot bind TCP {m}: {e}")),
        }
    }

    // Upstream.
    let Some(identity) = identity else {
        r.push("upstream", Status::Problem, "not tried: no usable identity");
        return;
    };
    let target = cfg.upstream.clone();
    let attempt = async {
        let addr = upstream::resolve(&target).await?;
        let ep =
            oasis_core::net::client_endpoint_for(addr, &identity, &TransportOptions::default())
                .map_err(|e| e.to_string())?;
        let client = oasis_core::net::Client::connect(&ep, addr, oasis_core::net::accept::CONTENT)
            .await
            .map_err(|e| {
                format!("{e} (is the seed running and UDP {} open on the way?)", addr.port())
            })?;
        let peer = client.peer().clone();
        let layers = client.layers().await.map_err(|e| format!("ListLayers: {e}"))?;
        client.close();
        ep.close(0u32.into(), b"check done");
        Ok::<_, String>((addr, peer, layers.len()))
    };
    match tokio::time::timeout(upstream_timeout, attempt).await {
        Ok(Ok((addr, peer, n))) => {
            let status = if matches!(peer.role, Role::Seed | Role::Reflector) {
                Status::Ok
            } else {
                Status::Problem
            };
            r.push(
                "upstream",
                status,
                format!("{target} ({addr}) is {peer}; it lists {n} layer(s)"),
            );
        }
        Ok(Err(e)) => r.push("upstream", Status::Problem, e),
        Err(_) => r.push(
            "upstream",
            Status::Problem,
            format!(
                "{target}: no answer within {} s (is the seed running, and is UDP open from \
                 here to it?)",
                upstream_timeout.as_secs_f64()
            ),
        ),
    }
}

fn check_cache_dir(cfg: &ReflectorConfig, r: &mut CheckReport) {
    let dir = cfg.cache_dir();
    // The nearest existing ancestor must be a writable directory.
    let mut probe: &Path = &dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => break,
        }
    }
    let test = probe.join(format!(".oasis-check-{}", std::process::id()));
    match std::fs::write(&test, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&test);
        }
        Err(e) => {
            r.push("cache", Status::Problem, format!("cannot write in {}: {e}", probe.display()));
            return;
        }
    }
    let free = free_bytes(probe);
    let detail = match (cfg.cache_size, free) {
        (Some(cap), Some(free)) => {
            format!("{}: cap {cap} B, {free} B free on its disk", dir.display())
        }
        (None, Some(free)) => format!("{}: no cap, {free} B free on its disk", dir.display()),
        (_, None) => format!("{}: writable", dir.display()),
    };
    match (cfg.cache_size, free) {
        (Some(cap), Some(free)) if cap > free && cap > free + used_bytes(&dir) => r.push(
            "cache",
            Status::Warning,
            format!("{detail}: cache_size is larger than the space available"),
        ),
        (None, _) => r.push(
            "cache",
            Status::Warning,
            format!("{detail} (the cache grows without bound; set cache_size)"),
        ),
        _ => r.push("cache", Status::Ok, detail),
    }
}

/// Bytes the cache already uses (its pack files), roughly.
fn used_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else { return 0 };
        rd.filter_map(Result::ok)
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => 0,
            })
            .sum()
    }
    walk(&dir.join("packs"))
}

#[cfg(unix)]
fn free_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    (rc == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_: &Path) -> Option<u64> {
    None
}
