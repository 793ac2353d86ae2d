//! Who a peer is: role, name and site from its certificate.

use super::*;

pub use oasis_proto::names::{
    validate_node_name, NameError, PeerInfo, Role, MAX_NAME_LEN, NODE_URI_PREFIX,
};

/// Read role/name/site from a peer's (already CA-verified) end-entity certificate.
///
/// The certificate must carry exactly one `urn:oasis:node:...` URI SAN.
pub fn peer_info_from_cert(cert: &CertificateDer<'_>) -> Result<PeerInfo, IdentityError> {
    let what = "peer certificate";
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| invalid(what, format!("cannot parse X.509: {e}")))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| invalid(what, format!("bad subjectAltName extension: {e}")))?
        .ok_or_else(|| invalid(what, "has no subjectAltName (not an Oasis node certificate)"))?;
    let mut found: Option<PeerInfo> = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(parsed) = PeerInfo::from_uri(uri) {
                let info = parsed.map_err(|e| invalid(what, e))?;
                if found.is_some() {
                    return Err(invalid(what, "carries more than one Oasis node URI"));
                }
                found = Some(info);
            }
        }
    }
    found.ok_or_else(|| {
        invalid(
            what,
            format!(
                "has no {NODE_URI_PREFIX}<role>:<name> URI SAN (not an Oasis node certificate)"
            ),
        )
    })
}

/// Convenience for quinn: `peer_identity()` of a connection -> [`PeerInfo`].
///
/// The certificate was verified against the CA during the handshake (both sides require it), so
/// this only decodes it.
pub fn peer_info(conn: &quinn::Connection) -> Result<PeerInfo, IdentityError> {
    peer_info_from_cert(&peer_cert(conn)?)
}

/// The end-entity certificate a connection's peer presented (verified during the handshake).
pub fn peer_cert(conn: &quinn::Connection) -> Result<CertificateDer<'static>, IdentityError> {
    let no_cert = || IdentityError::NoPeerCertificate { remote: conn.remote_address().to_string() };
    let identity = conn.peer_identity().ok_or_else(no_cert)?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| no_cert())?;
    certs.first().cloned().ok_or_else(no_cert)
}
