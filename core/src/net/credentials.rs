//! A node's credentials kept up over the connections it makes anyway: its certificate renewed
//! (see `pki::renewal`) and the revocation list it holds refreshed and kept in its state
//! directory (see `pki::revocation`).

use super::{Client, NetError};
use crate::pki::{self, IdentityError, NodeIdentity, RevocationList, Revocations, TrustRoot};
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

/// The revocation list saved in `state` (`revoked.crl`); a damaged file is reported and
/// skipped: a source gives the list again.
pub fn load_saved_revocations(state: &Path, trust: &TrustRoot) -> Revocations {
    let revocations = Revocations::default();
    match pki::load_revocation_file(&state.join(pki::REVOKED_FILE), trust) {
        Ok(Some(list)) => {
            tracing::debug!(number = list.number(), revoked = list.len(), "revocation list loaded");
            revocations.offer(list);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "saved revocation list not taken"),
    }
    revocations
}

/// Writes `list` to `state/revoked.crl`, replacing the old one whole.
pub async fn save_revocations(state: &Path, list: &RevocationList) {
    let (path, text) = (state.join(pki::REVOKED_FILE), list.to_pem());
    let write = tokio::task::spawn_blocking(move || {
        crate::durable::write_with(
            &path,
            text.as_bytes(),
            crate::durable::Options { mode: 0o644, overwrite: true },
        )
    });
    match write.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the revocation list"),
        Err(e) => tracing::warn!(error = %e, "saving the revocation list failed"),
    }
}

/// Asks `client`'s server for a list newer than the one held, and offers what comes. Ok(true)
/// when a newer list was adopted; an error when asking failed or the list did not check.
pub async fn refresh_revocations(
    client: &Client,
    revocations: &Revocations,
    trust: &TrustRoot,
) -> Result<bool, RefreshError> {
    let der = client.revocations(revocations.number()).await?;
    if der.is_empty() {
        return Ok(false);
    }
    Ok(revocations.offer_der(&der, trust)?)
}

/// Why a revocation list was not refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("asking for the revocation list: {0}")]
    Asking(#[from] NetError),
    #[error("the revocation list sent does not check: {0}")]
    Invalid(#[from] IdentityError),
}
