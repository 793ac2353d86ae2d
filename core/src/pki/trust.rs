//! What every node trusts: the CA certificate and the manifest key (`trust.pem`).

use super::*;

/// What every node trusts: the CA certificate and the manifest verifying key (`trust.pem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustRoot {
    pub(super) ca: CertificateDer<'static>,
    pub(super) manifest_key: VerifyingKey,
}

impl TrustRoot {
    /// Reads `trust.pem`.
    pub fn load(path: &Path) -> Result<TrustRoot, IdentityError> {
        let text = read_text(path, HINT_ENROLL)?;
        TrustRoot::from_pem(&text, &path.display().to_string())
    }

    /// Parses the content of a `trust.pem`; `what` names the source in errors.
    pub fn from_pem(text: &str, what: &str) -> Result<TrustRoot, IdentityError> {
        let blocks = pem::parse_many(text).map_err(|e| invalid(what, format!("bad PEM: {e}")))?;
        let mut ca = None;
        let mut key = None;
        for block in blocks {
            match block.tag() {
                CERT_PEM_TAG if ca.is_none() => ca = Some(block.into_contents()),
                MANIFEST_KEY_PEM_TAG if key.is_none() => key = Some(block.into_contents()),
                CERT_PEM_TAG | MANIFEST_KEY_PEM_TAG => {
                    return Err(invalid(what, format!("more than one {:?} block", block.tag())))
                }
                other => return Err(invalid(what, format!("unexpected PEM block {other:?}"))),
            }
        }
        let ca = ca.ok_or_else(|| invalid(what, "no CERTIFICATE block (the CA)"))?;
        let key = key.ok_or_else(|| invalid(what, "no OASIS MANIFEST KEY block"))?;
        let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
            invalid(what, format!("OASIS MANIFEST KEY is {} bytes, expected 32", key.len()))
        })?;
        let manifest_key = VerifyingKey::from_bytes(&key)
            .map_err(|e| invalid(what, format!("OASIS MANIFEST KEY is not an ed25519 key: {e}")))?;
        let ca = CertificateDer::from(ca);
        check_ca_cert(&ca, what)?;
        Ok(TrustRoot { ca, manifest_key })
    }

    /// The `trust.pem` text.
    pub fn to_pem(&self) -> String {
        pem::encode_many(&[
            pem::Pem::new(CERT_PEM_TAG, self.ca.to_vec()),
            pem::Pem::new(MANIFEST_KEY_PEM_TAG, self.manifest_key.to_bytes().to_vec()),
        ])
    }

    /// The key manifests must be signed with.
    pub fn manifest_key(&self) -> &VerifyingKey {
        &self.manifest_key
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    pub(super) fn root_store(&self) -> Result<Arc<RootCertStore>, IdentityError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls_err("trust root CA certificate"))?;
        Ok(Arc::new(roots))
    }

    pub(super) fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, IdentityError> {
        WebPkiClientVerifier::builder_with_provider(self.root_store()?, provider())
            .build()
            .map_err(|e| invalid("client certificate verifier", e))
    }
}

/// Checks that `der` parses and is a CA certificate.
pub(super) fn check_ca_cert(der: &CertificateDer<'_>, what: &str) -> Result<(), IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| invalid(what, format!("CA certificate does not parse: {e}")))?;
    if !x509.is_ca() {
        return Err(invalid(what, "the CERTIFICATE is not a CA certificate"));
    }
    Ok(())
}

/// The crypto provider of every Oasis TLS config: ring, never the process-global default.
pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
