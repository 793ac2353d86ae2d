//! The reflector's revocation list: asked of the upstream every few seconds while connected,
//! taken from siblings over the mesh, kept in the state directory so that a reflector that
//! restarts cut off from the seed still refuses what was revoked.

use crate::upstream::Upstream;
use oasis_core::net::credentials;
use oasis_core::pki::{Revocations, TrustRoot};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often a connected reflector asks its upstream for a newer list. The question carries the
/// number held, so an unchanged list costs a few bytes each way.
pub const UPSTREAM_POLL: Duration = Duration::from_secs(2);

/// Asks the upstream for newer lists, and saves every list adopted (from the upstream or the
/// mesh) into `state`.
pub async fn run(
    upstream: Arc<Upstream>,
    revocations: Revocations,
    trust: TrustRoot,
    state: PathBuf,
    every: Duration,
) {
    let mut adopted = revocations.subscribe();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(client) = upstream.current() else { continue };
                match credentials::refresh_revocations(&client, &revocations, &trust).await {
                    Ok(true) => tracing::info!(number = revocations.number(), "revocation list adopted from upstream"),
                    Ok(false) => {}
                    Err(e @ credentials::RefreshError::Invalid(_)) => tracing::warn!(error = %e, "upstream"),
                    Err(e) => tracing::debug!(error = %e, "upstream"),
                }
            }
            changed = adopted.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(list) = adopted.borrow_and_update().clone() else { continue };
                credentials::save_revocations(&state, &list).await;
            }
        }
    }
}
