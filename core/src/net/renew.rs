//! Renewing this node's certificate over a connection it has anyway (see `pki::renewal`).

use super::{Client, NetError};
use crate::pki::{IdentityError, NodeIdentity};
use bytes::Bytes;
use std::path::Path;

/// Why a renewal did not happen; the node keeps the certificate it has.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("asking {peer} to renew this node's certificate: {source}")]
    Asking {
        peer: String,
        #[source]
        source: NetError,
    },
    #[error("certificate renewal: {0}")]
    Identity(#[from] IdentityError),
    #[error("certificate renewal: saving node.pem failed: {0}")]
    Save(String),
}

/// Asks `client`'s server to renew `identity`'s certificate, checks the answer, writes it to
/// `state_dir/node.pem` and installs it (every TLS config of the process presents it from the
/// next handshake). Returns the renewed identity; on an error the node is as it was.
pub async fn renew(
    client: &Client,
    identity: &NodeIdentity,
    state_dir: &Path,
) -> Result<NodeIdentity, RenewError> {
    let (cert, csr) = identity.renewal_request()?;
    let answer = client
        .renew(Bytes::from(cert), Bytes::from(csr))
        .await
        .map_err(|source| RenewError::Asking { peer: client.peer().to_string(), source })?;
    let renewed = identity.renewed(&answer)?;
    let (state, node) = (state_dir.to_path_buf(), renewed.clone());
    tokio::task::spawn_blocking(move || node.save_cert(&state))
        .await
        .map_err(|e| RenewError::Save(e.to_string()))??;
    renewed.install()?;
    tracing::info!(
        node = %renewed.info(),
        expires = renewed.expires_at(),
        via = %client.peer(),
        "certificate renewed"
    );
    Ok(renewed)
}
