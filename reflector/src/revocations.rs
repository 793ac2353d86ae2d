//! The reflector's revocation list: asked of the upstream every few seconds while connected,
//! taken from siblings over the mesh, kept in the state directory so that a reflector that
//! restarts cut off from the seed still refuses what was revoked.

use crate::upstream::Upstream;
use oasis_core::pki::{self, Revocations, TrustRoot};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often a connected reflector asks its upstream for a newer list. The question carries the
/// number held, so an unchanged list costs a few bytes each way.
pub const UPSTREAM_POLL: Duration = Duration::from_secs(2);

/// The list saved in `state` (a damaged file is reported and skipped: the upstream gives the
/// list again).
pub fn load_saved(state: &Path, trust: &TrustRoot) -> Revocations {
    let revocations = Revocations::default();
    match pki::load_revocation_file(&state.join(pki::REVOKED_FILE), trust) {
        Ok(Some(list)) => {
            tracing::info!(number = list.number(), revoked = list.len(), "revocation list loaded");
            revocations.offer(list);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "saved revocation list not taken"),
    }
    revocations
}

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
                match client.revocations(revocations.number()).await {
                    Ok(der) if der.is_empty() => {}
                    Ok(der) => match revocations.offer_der(&der, &trust) {
                        Ok(true) => tracing::info!(number = revocations.number(), "revocation list adopted from upstream"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "upstream sent a revocation list that does not check"),
                    },
                    Err(e) => tracing::debug!(error = %e, "cannot ask upstream for revocations"),
                }
            }
            changed = adopted.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(list) = adopted.borrow_and_update().clone() else { continue };
                save(&state, &list).await;
            }
        }
    }
}

async fn save(state: &Path, list: &pki::RevocationList) {
    let (path, text) = (state.join(pki::REVOKED_FILE), list.to_pem());
    let write = tokio::task::spawn_blocking(move || {
        oasis_core::durable::write_with(
            &path,
            text.as_bytes(),
            oasis_core::durable::Options { mode: 0o644, overwrite: true },
        )
    });
    match write.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the revocation list"),
        Err(e) => tracing::warn!(error = %e, "saving the revocation list failed"),
    }
}
