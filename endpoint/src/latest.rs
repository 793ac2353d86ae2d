//! Which version "latest" is: the source's signed statement (`manifest::Latest`), checked
//! against the newest one this endpoint saw before for the same layer.
//!
//! The newest statement seen per layer is kept in `STATE_DIR/latest/NAME`, as received. A
//! source whose statement names a lower version is refused: it replays an old answer, or it
//! would move the endpoint back. A statement past its expiry is used (a reflector cut off from
//! the seed still serves what it has) and reported as stale.

use anyhow::{bail, Context};
use oasis_core::manifest::{Freshness, Latest, Succession};
use oasis_core::net::Client;
use oasis_core::pki::TrustRoot;
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
}

impl LatestReport {
    /// One line for people, when there is something to say.
    pub fn warning(&self, name: &str) -> Option<String> {
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
) -> anyhow::Result<(Latest, LatestReport)> {
    let (bytes, note) = match client.latest(name).await {
        Ok(a) => a,
        Err(e) if e.is_not_found() => bail!("{name} not found: {e}"),
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
                    "the source says {} is the latest, but {} was seen as latest before (signed at {}): \
                     a replayed or rolled-back answer, refused",
                    l.label(),
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
    };
    if let Some(w) = report.warning(name) {
        tracing::warn!(layer = %name, "{w}");
    }
    Ok((latest, report))
}
