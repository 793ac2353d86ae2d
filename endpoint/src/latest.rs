//! Which version "latest" is: the source's signed statement (`manifest::Latest`), checked
//! against the newest one this endpoint saw before for the same layer.
//!
//! The newest statement seen per layer is kept in `STATE_DIR/latest/NAME`, as received. A
//! source whose statement names a lower version is refused: it replays an old answer, or it
//! would move the endpoint back. A statement past its expiry is used (a reflector cut off from
//! the seed still serves what it has) and reported as stale. A source that gives no statement
//! (a reflector that never got one and cannot reach the seed now, or one of an older version)
//! still serves its own latest, which is refused if it is lower than the newest seen and
//! otherwise reported as unconfirmed.

use anyhow::{bail, Context};
use oasis_core::manifest::{compare_versions, Freshness, Latest, Succession};
use oasis_core::net::{Client, NetError};
use oasis_core::pki::TrustRoot;
use oasis_core::wire::ErrorCode;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a fetch of "latest" used, for reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LatestReport {
    pub version: String,
    /// Unix seconds when the seed signed the statement, and when it stops being fresh.
    pub issued: u64,
    pub expires: u64,
    /// Past its expiry: the source has not heard from the seed for longer than the
    /// statement's lifetime, so a newer version may exist.
    pub stale: bool,
    /// Seconds past the expiry (0 when fresh).
    pub stale_for_s: u64,
    /// What the source said about it (a reflector answering from its kept copy says why).
    pub note: String,
    /// False when the source gave no signed statement: the version is the source's own
    /// latest, and whether a newer one exists is unknown (`issued` and `expires` are 0).
    pub signed: bool,
}

/// What [`resolve`] learned from a source.
pub enum Resolved {
    Signed(Latest, LatestReport),
    /// The source gives no statement, for this reason.
    Unsigned(String),
}

impl LatestReport {
    /// One line for people, when there is something to say.
    pub fn warning(&self, name: &str) -> Option<String> {
        if !self.signed {
            return Some(format!(
                "the latest of {name} ({}) is unconfirmed: the source gave no signed statement ({}); a newer version may exist",
                self.version, self.note
            ));
        }
        self.stale.then(|| {
            let mut s = format!(
                "the latest of {name} ({}) is stale: signed {} s before its expiry, which passed {} s ago; a newer version may exist",
                self.version,
                self.expires - self.issued,
                self.stale_for_s
            );
            if !self.note.is_empty() {
                s.push_str(&format!(" ({})", self.note));
            }
            s
        })
    }
}

fn seen_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("latest").join(name)
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The newest statement seen for `name`, if one is kept and still verifies.
fn seen(state_dir: &Path, name: &str, trust: &TrustRoot) -> Option<Latest> {
    let bytes = std::fs::read(seen_path(state_dir, name)).ok()?;
    match Latest::open(&bytes, trust.manifest_key()) {
        Ok(l) if l.name == name => Some(l),
        _ => {
            tracing::warn!(layer = %name, "the kept latest statement does not verify; ignoring it");
            None
        }
    }
}

/// Asks `client` which version of `name` is the latest, verifies the answer, refuses a
/// rollback against the newest statement seen, and keeps the answer when it is newer.
pub async fn resolve(
    client: &Client,
    name: &str,
    trust: &TrustRoot,
    state_dir: &Path,
) -> anyhow::Result<Resolved> {
    let (bytes, note) = match client.latest(name).await {
        Ok(a) => a,
        Err(e) if e.is_not_found() => bail!("{name} not found: {e}"),
        Err(NetError::Remote {
            code: ErrorCode::Unavailable | ErrorCode::Forbidden | ErrorCode::UnknownType,
            message,
            ..
        }) => return Ok(Resolved::Unsigned(message)),
        Err(e) => return Err(e).context(format!("asking for the latest of {name}")),
    };
    let latest = Latest::open(&bytes, trust.manifest_key())
        .and_then(|l| l.check_request(name).map(|()| l))
        .context("latest statement refused")?;
    let (dir, n, t, b) = (state_dir.to_path_buf(), name.to_string(), trust.clone(), bytes.clone());
    let l = latest.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let keep = match seen(&dir, &n, &t) {
            None => true,
            Some(before) => match l.succeeds(&before) {
                Succession::Rollback => bail!(
                    "the source says {} is the latest{}, but {} was seen as latest before (signed at \
                     {}): a replayed, rolled-back or stale answer, refused",
                    l.label(),
                    match l.freshness(now_s()) {
                        Freshness::Stale { .. } => " in a statement past its expiry",
                        Freshness::Fresh => "",
                    },
                    before.label(),
                    before.issued
                ),
                Succession::Older => false,
                Succession::Newer => true,
            },
        };
        if keep {
            let path = seen_path(&dir, &n);
            std::fs::create_dir_all(dir.join("latest"))
                .and_then(|()| oasis_core::durable::write_durably(&path, &b))
                .with_context(|| format!("keeping the latest statement in {}", path.display()))?;
        }
        Ok(())
    })
    .await??;
    let now = now_s();
    let stale_for_s = match latest.freshness(now) {
        Freshness::Fresh => 0,
        Freshness::Stale { for_s } => for_s,
    };
    let report = LatestReport {
        version: latest.version.clone(),
        issued: latest.issued,
        expires: latest.expires,
        stale: stale_for_s > 0,
        stale_for_s,
        note,
        signed: true,
    };
    if let Some(w) = report.warning(name) {
        tracing::warn!(layer = %name, "{w}");
    }
    Ok(Resolved::Signed(latest, report))
}

/// A source's own latest, `version`, taken without a statement (it gave none, for `problem`):
/// refused when lower than the newest statement seen, reported as unconfirmed otherwise.
pub fn unsigned(
    state_dir: &Path,
    name: &str,
    version: &str,
    trust: &TrustRoot,
    problem: String,
) -> anyhow::Result<LatestReport> {
    if let Some(before) = seen(state_dir, name, trust) {
        if compare_versions(version, &before.version) == std::cmp::Ordering::Less {
            bail!(
                "the source's latest of {name} is {version}, without a signed statement ({problem}), \
                 but {} was seen as latest before: refused",
                before.label()
            );
        }
    }
    let report = LatestReport {
        version: version.to_string(),
        issued: 0,
        expires: 0,
        stale: false,
        stale_for_s: 0,
        note: problem,
        signed: false,
    };
    if let Some(w) = report.warning(name) {
        tracing::warn!(layer = %name, "{w}");
    }
    Ok(report)
}
