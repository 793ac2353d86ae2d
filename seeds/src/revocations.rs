//! The seed's revocation list: `oasis-seed revoke` and `enroll` sign `revoked.crl` in DATA
//! (CA steps, run in their own processes); the serving seed follows that file.

use oasis_core::pki::{self, Revocations, TrustRoot};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How often the serving seed looks at `revoked.crl`: a revocation reaches the seed's own
/// server within this, and reflectors within this plus their own poll.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Loads DATA's `revoked.crl` into `revocations` now (a broken file is an error: the seed must
/// not serve revoked nodes because its list does not parse), then follows it from a task.
pub fn watch_file(
    data: &Path,
    trust: TrustRoot,
    revocations: Revocations,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = data.join(pki::REVOKED_FILE);
    if let Some(list) = pki::load_revocation_file(&path, &trust)? {
        tracing::info!(number = list.number(), revoked = list.len(), "revocation list loaded");
        revocations.offer(list);
    }
    let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    let mut seen = stamp(&path);
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match pki::load_revocation_file(&path, &trust) {
                Ok(Some(list)) => {
                    let (number, revoked) = (list.number(), list.len());
                    if revocations.offer(list) {
                        tracing::info!(number, revoked, "revocation list adopted");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "revocation list not taken; keeping the one held")
                }
            }
        }
    }))
}
