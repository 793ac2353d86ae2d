//! The reflector's own certificate, renewed through its upstream before it expires: the new
//! one is installed in every QUIC endpoint of the process and in the mesh's hello.

use crate::siblings::Siblings;
use crate::upstream::Upstream;
use oasis_core::pki::NodeIdentity;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How often the certificate is looked at: a tenth of its lifetime, within these bounds.
const CHECK_BOUNDS: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(60));

/// Renews `identity` once due, over the upstream connection, again and again for as long as the
/// reflector runs.
pub async fn run(
    upstream: Arc<Upstream>,
    mut identity: NodeIdentity,
    state: PathBuf,
    siblings: Option<Arc<Siblings>>,
    metrics: Arc<oasis_core::metrics::NodeMetrics>,
) {
    loop {
        metrics.certificate_expiry.set(identity.expires_at());
        let left = (identity.expires_at() - unix_now()).max(0) as u64;
        let every = (Duration::from_secs(left) / 10).clamp(CHECK_BOUNDS.0, CHECK_BOUNDS.1);
        tokio::time::sleep(every).await;
        if !identity.renewal_due() {
            continue;
        }
        let Some(client) = upstream.current() else { continue };
        match oasis_core::net::credentials::renew(&client, &identity, &state).await {
            Ok(renewed) => {
                if let Some(s) = &siblings {
                    if let Err(e) = s.mesh.set_identity(&renewed) {
                        tracing::warn!(error = %e, "the mesh keeps the hello of the old certificate");
                    }
                }
                identity = renewed;
            }
            Err(e) => tracing::warn!(error = %e, "certificate not renewed; trying again"),
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
