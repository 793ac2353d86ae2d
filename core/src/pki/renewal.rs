//! Renewal: a node asks for a new certificate for the key it already holds before the one it
//! holds expires, over a connection it makes anyway, so that certificates can live weeks or
//! months and a fleet in use never needs enrolling again.
//!
//! The request carries the node's current certificate and a PKCS#10 request signed with its
//! key, so any node can pass it on towards the seed (an endpoint's source is usually a
//! reflector): whoever relays or replays it can only obtain a certificate for a key it does not
//! hold. The seed checks that the certificate is its CA's, valid now and not revoked, that the
//! request's signature verifies and that its key is the certificate's; it then issues a
//! certificate with the same role, name and site for that key, living as long as the one
//! renewed. It refuses a certificate more than half of whose lifetime is left, so a node holding
//! a valid key cannot make it sign again and again.

use super::*;

/// A node renews once less than this part of its certificate's lifetime is left: a third.
pub const RENEW_WHEN_LEFT: (u64, u64) = (1, 3);
/// The shortest lifetime the seed issues.
pub const MIN_NODE_CERT_LIFETIME: Duration = Duration::from_secs(10);

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// (notBefore, notAfter) of a certificate, in Unix seconds.
fn validity_of(cert: &[u8]) -> Result<(i64, i64), IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| invalid("certificate", format!("cannot parse X.509: {e}")))?;
    let v = x509.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// The lifetime a node certificate was issued with: its validity less the backdating of
/// `notBefore`, never below [`MIN_NODE_CERT_LIFETIME`].
fn issued_lifetime(cert: &[u8]) -> Result<Duration, IdentityError> {
    let (from, to) = validity_of(cert)?;
    let secs = (to - from - BACKDATE.as_secs() as i64).max(0) as u64;
    Ok(Duration::from_secs(secs).max(MIN_NODE_CERT_LIFETIME))
}

impl NodeIdentity {
    /// When this node's certificate expires, in Unix seconds.
    pub fn expires_at(&self) -> i64 {
        validity_of(&self.cert).map_or(0, |v| v.1)
    }

    /// Is it time to renew: less than [`RENEW_WHEN_LEFT`] of the certificate's lifetime left?
    pub fn renewal_due(&self) -> bool {
        let Ok(lifetime) = issued_lifetime(&self.cert) else { return true };
        let left = self.expires_at() - unix_now();
        let (num, den) = RENEW_WHEN_LEFT;
        left < (lifetime.as_secs() * num / den) as i64
    }

    /// What a renewal request carries: this node's certificate (DER) and a PKCS#10 request
    /// (DER) for its key, signed with it.
    pub fn renewal_request(&self) -> Result<(Vec<u8>, Vec<u8>), IdentityError> {
        let what = "making a certificate renewal request";
        let key = rcgen::KeyPair::try_from(self.key.as_slice()).map_err(rcgen_err(what))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, self.info.name.as_str());
        let csr = params.serialize_request(&key).map_err(rcgen_err(what))?;
        Ok((self.cert.to_vec(), csr.der().to_vec()))
    }

    /// This identity with `cert`, the answer to its renewal request, once checked: for this
    /// node's key, with the same role, name and site, issued by the CA of `trust.pem` and valid
    /// now.
    pub fn renewed(&self, cert: &[u8]) -> Result<NodeIdentity, IdentityError> {
        let what = "renewed certificate";
        let cert = CertificateDer::from(cert.to_vec());
        let info = peer_info_from_cert(&cert).map_err(|e| invalid(what, e))?;
        if info != self.info {
            return Err(invalid(what, format!("is for {info}, not for this node ({})", self.info)));
        }
        let node = NodeIdentity {
            info,
            cert,
            key: self.key.clone(),
            trust: self.trust.clone(),
            presented: self.presented.clone(),
        };
        node.check(what, "this node's key")?;
        Ok(node)
    }

    /// Writes `node.pem` into `state_dir` (the key does not change with a renewal), replacing
    /// the old one whole.
    pub fn save_cert(&self, state_dir: &Path) -> Result<(), IdentityError> {
        write_atomic(
            &state_dir.join(NODE_CERT_FILE),
            self.cert_pem().as_bytes(),
            FileKind::Public,
            true,
        )
    }
}

impl SeedAuthority {
    /// Issues the renewal of `cert` for the key of `csr` (see the module documentation) and
    /// records it; the certificate renewed stays valid until it expires. Refuses a certificate
    /// the register lists as revoked, and one with more than half of its lifetime left.
    pub fn renew(&self, cert: &[u8], csr: &[u8]) -> Result<CertificateDer<'static>, IdentityError> {
        let what = "certificate renewal";
        let old = CertificateDer::from(cert.to_vec());
        self.trust.client_verifier()?.verify_client_cert(&old, &[], UnixTime::now()).map_err(
            |e| invalid(what, format!("the certificate to renew is not valid here: {e}")),
        )?;
        let info = peer_info_from_cert(&old)?;
        // The seed's own register decides, not only the list a server last loaded: a
        // certificate revoked a moment ago is not renewed in the second before `serve` reloads.
        let serial = cert_serial(&old)?;
        if self.issued()?.iter().any(|c| c.serial == serial && c.revoked_at.is_some()) {
            return Err(invalid(what, "the certificate to renew is revoked"));
        }
        // Every renewal costs a signature and a durable append to the register: a holder of a
        // valid key asking again and again gets nothing before its certificate is half-way
        // through its life (nodes ask with a third left; half leaves room for their clocks).
        let (_, not_after) = validity_of(cert)?;
        let lifetime = issued_lifetime(cert)?.as_secs() as i64;
        let left = not_after - unix_now();
        if left > lifetime / 2 {
            return Err(invalid(
                what,
                format!(
                    "the certificate to renew is not due: {left} s of its {lifetime} s are left, \
                     and renewal opens with half left"
                ),
            ));
        }
        let csr_der = rustls::pki_types::CertificateSigningRequestDer::from(csr);
        let request = rcgen::CertificateSigningRequestParams::from_der(&csr_der)
            .map_err(|e| invalid(what, format!("the signing request does not check: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(cert)
            .map_err(|e| invalid(what, format!("cannot parse X.509: {e}")))?;
        use rcgen::PublicKeyData;
        if request.public_key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(invalid(
                what,
                "the signing request is for another key than the certificate",
            ));
        }
        let params = node_params(&info, what, issued_lifetime(cert)?)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.trust.ca, &self.ca_key)
            .map_err(rcgen_err(what))?;
        let renewed = params.signed_by(&request.public_key, &issuer).map_err(rcgen_err(what))?;
        let node = NodeIdentity {
            info,
            cert: renewed.der().clone(),
            key: Arc::new(Vec::new()),
            trust: self.trust.clone(),
            presented: Default::default(),
        };
        self.record_issued(&node, false)?;
        Ok(node.cert)
    }
}
