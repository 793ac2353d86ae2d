//! The seed's revocation list: `oasis-seed revoke` and `enroll` sign `revoked.crl` beside the CA
//! key (CA steps, run in their own processes); the serving seed follows it through its keys,
//! reading the file itself or asking its signer.

use crate::keys::Keys;
use oasis_core::pki::{RevocationList, Revocations};
use std::sync::Arc;
use std::time::Duration;

/// How often the serving seed looks for a newer list: a revocation reaches the seed's own
/// server within this, and reflectors within this plus their own poll.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Loads the current list into `revocations` now (a broken list is an error: the seed must not
/// serve revoked nodes because its list does not parse), then follows it from a task.
pub async fn follow(
    keys: Arc<dyn Keys>,
    revocations: Revocations,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let k = keys.clone();
    if let Some(der) = tokio::task::spawn_blocking(move || k.revocations(0)).await?? {
        let list = RevocationList::from_der(&der, keys.trust())?;
        tracing::info!(number = list.number(), revoked = list.len(), "revocation list loaded");
        revocations.offer(list);
    }
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One warning per failing spell, not one a second.
        let mut failing = false;
        loop {
            tick.tick().await;
            let (k, known) = (keys.clone(), revocations.number());
            let got = match tokio::task::spawn_blocking(move || k.revocations(known)).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let offered = got.and_then(|der| match der {
                Some(der) => revocations.offer_der(&der, keys.trust()).map_err(|e| e.to_string()),
                None => Ok(false),
            });
            match offered {
                Ok(adopted) => {
                    if adopted {
                        let (number, revoked) =
                            revocations.current().map_or((0, 0), |l| (l.number(), l.len()));
                        tracing::info!(number, revoked, "revocation list adopted");
                    }
                    if std::mem::take(&mut failing) {
                        tracing::info!("revocation list readable again");
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "revocation list not taken; keeping the one held")
                }
                Err(_) => {}
            }
        }
    }))
}
