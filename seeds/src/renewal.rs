//! The seed's own certificate: renewed by its own CA before it expires, at start and while it
//! serves, and installed in its QUIC endpoint and its mesh hello.

use crate::keys::Keys;
use oasis_core::pki::NodeIdentity;
use oasis_mesh::MeshHandle;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How often the certificate is looked at: a tenth of what is left of it, within these bounds.
const CHECK_BOUNDS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(60));

/// Renews `identity` with `keys` when due: written to DATA/node.pem and installed.
pub fn renew_if_due(
    keys: &dyn Keys,
    identity: &NodeIdentity,
    data: &Path,
) -> anyhow::Result<Option<NodeIdentity>> {
    if !identity.renewal_due() {
        return Ok(None);
    }
    let (cert, csr) = identity.renewal_request()?;
    let renewed = identity.renewed(&keys.renew(&cert, &csr)?)?;
    renewed.save_cert(data)?;
    renewed.install()?;
    tracing::info!(expires = renewed.expires_at(), "the seed's certificate renewed");
    Ok(Some(renewed))
}

/// Keeps renewing for as long as the seed runs; the mesh, once joined, says hello with the new
/// certificate.
pub fn spawn(
    keys: Arc<dyn Keys>,
    mut identity: NodeIdentity,
    data: PathBuf,
    mesh: Arc<OnceLock<MeshHandle>>,
    metrics: Arc<oasis_core::metrics::NodeMetrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            metrics.certificate_expiry.set(identity.expires_at());
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let left = Duration::from_secs((identity.expires_at() - now).max(0) as u64);
            tokio::time::sleep((left / 10).clamp(CHECK_BOUNDS.0, CHECK_BOUNDS.1)).await;
            let (k, id, d) = (keys.clone(), identity.clone(), data.clone());
            match tokio::task::spawn_blocking(move || renew_if_due(&*k, &id, &d)).await {
                Ok(Ok(Some(renewed))) => {
                    if let Some(m) = mesh.get() {
                        if let Err(e) = m.set_identity(&renewed) {
                            tracing::warn!(error = %e, "the mesh keeps the hello of the old certificate");
                        }
                    }
                    identity = renewed;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the seed's certificate not renewed"),
                Err(e) => tracing::warn!(error = %e, "renewing the seed's certificate failed"),
            }
        }
    })
}
