//! A node's own identity (certificate and key) and the TLS configs it connects and serves with.

use super::*;

/// A node's own certificate and key plus the trust root, as loaded from a state dir (`node.pem`,
/// `node.key`, `trust.pem`).
///
/// Node certificates live [`DEFAULT_NODE_CERT_LIFETIME`] unless enrolled otherwise, and are
/// renewed for the same key before they expire ([`renewal`]).
#[derive(Clone)]
pub struct NodeIdentity {
    pub(super) info: PeerInfo,
    pub(super) cert: CertificateDer<'static>,
    /// PKCS#8 DER of the node's private key.
    pub(super) key: Arc<Vec<u8>>,
    pub(super) trust: TrustRoot,
    /// What the TLS configs built from this identity (and its renewals) present: set when the
    /// first is built, replaced by [`NodeIdentity::install`], read at every handshake.
    pub(super) presented: Presented,
}

/// The certificate and key a node presents in TLS handshakes, shared by every config built from
/// one identity and its renewals, so that installing a renewed certificate reaches every QUIC
/// endpoint of the process at once, serving and connecting.
#[derive(Clone, Debug, Default)]
pub(super) struct Presented(Arc<std::sync::RwLock<Option<Arc<CertifiedKey>>>>);

impl Presented {
    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }
}

impl rustls::client::ResolvesClientCert for Presented {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for Presented {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("info", &self.info)
            .field("key", &"[secret]")
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads `node.pem`, `node.key` and `trust.pem` from `state_dir` and checks that they belong
    /// together: the key matches the certificate, and the certificate was issued by the CA in
    /// `trust.pem`, is currently valid and carries an Oasis node URI. Errors name the file and
    /// the problem.
    pub fn load(state_dir: &Path) -> Result<NodeIdentity, IdentityError> {
        let trust = TrustRoot::load(&state_dir.join(TRUST_FILE))?;

        let cert_path = state_dir.join(NODE_CERT_FILE);
        let cert_what = cert_path.display().to_string();
        let cert = read_single_pem(&cert_path, CERT_PEM_TAG, HINT_ENROLL)?;
        let cert = CertificateDer::from(cert);
        let info = peer_info_from_cert(&cert).map_err(|e| match e {
            IdentityError::Invalid { problem, .. } => invalid(&cert_what, problem),
            other => other,
        })?;

        let key_path = state_dir.join(NODE_KEY_FILE);
        let key = read_single_pem(&key_path, PRIVATE_KEY_PEM_TAG, HINT_ENROLL)?;

        let identity =
            NodeIdentity { info, cert, key: Arc::new(key), trust, presented: Presented::default() };
        identity.check(&cert_what, &key_path.display().to_string())?;
        Ok(identity)
    }

    /// Checks key/cert consistency and that the certificate chains to the trust root.
    pub(super) fn check(&self, cert_what: &str, key_what: &str) -> Result<(), IdentityError> {
        self.certified_key().map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                invalid(key_what, format!("does not match the certificate in {cert_what}"))
            }
            other => invalid(key_what, format!("unusable private key: {other}")),
        })?;
        self.trust
            .client_verifier()?
            .verify_client_cert(&self.cert, &[], UnixTime::now())
            .map_err(|e| {
                invalid(
                    cert_what,
                    format!(
                        "certificate not accepted by the CA in {TRUST_FILE} ({e}); \
                         was this node enrolled by another seed, or has it expired?"
                    ),
                )
            })?;
        Ok(())
    }

    fn certified_key(&self) -> Result<CertifiedKey, rustls::Error> {
        CertifiedKey::from_der(vec![self.cert.clone()], self.private_key(), &provider())
    }

    /// What TLS configs built from this identity present: its own certificate, unless a
    /// renewal was installed since.
    fn presented(&self, what: &str) -> Result<Presented, IdentityError> {
        if self.presented.get().is_none() {
            self.presented.set(Arc::new(self.certified_key().map_err(tls_err(what))?));
        }
        Ok(self.presented.clone())
    }

    /// Presents this identity's certificate from now on in every TLS config built from it or
    /// from the identity it renews (new handshakes only; open connections keep theirs).
    pub fn install(&self) -> Result<(), IdentityError> {
        let key = self.certified_key().map_err(tls_err("installing a renewed certificate"))?;
        self.presented.set(Arc::new(key));
        Ok(())
    }

    /// Who this node is.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// The trust root this node verifies peers and manifests against.
    pub fn trust(&self) -> &TrustRoot {
        &self.trust
    }

    /// This node's certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// This node's certificate as PEM (`node.pem`).
    pub fn cert_pem(&self) -> String {
        pem::encode(&pem::Pem::new(CERT_PEM_TAG, self.cert.to_vec()))
    }

    pub(super) fn key_pem(&self) -> String {
        pem::encode(&pem::Pem::new(PRIVATE_KEY_PEM_TAG, self.key.as_slice()))
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.as_ref().clone()))
    }

    /// Writes `node.pem`, `node.key` (0600) and `trust.pem` into `state_dir` (created, mode 0700,
    /// if missing). Refuses to overwrite an existing `node.key` unless `force`. The key is written
    /// last, so an interrupted save never leaves a key without its certificate.
    pub fn save(&self, state_dir: &Path, force: bool) -> Result<(), IdentityError> {
        create_private_dir(state_dir)?;
        let key_path = state_dir.join(NODE_KEY_FILE);
        if !force && exists(&key_path)? {
            return Err(IdentityError::AlreadyExists {
                path: key_path,
                hint: " (this directory already holds a node identity; use --force to replace it)",
            });
        }
        write_atomic(
            &state_dir.join(NODE_CERT_FILE),
            self.cert_pem().as_bytes(),
            FileKind::Public,
            true,
        )?;
        write_atomic(
            &state_dir.join(TRUST_FILE),
            self.trust.to_pem().as_bytes(),
            FileKind::Public,
            true,
        )?;
        write_atomic(&key_path, self.key_pem().as_bytes(), FileKind::Secret, force)
    }

    /// rustls server config: our cert, client certs REQUIRED and verified against the CA, TLS 1.3
    /// only, ALPN set to [`ALPN`].
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        let what = "TLS server config";
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err(what))?
            .with_client_cert_verifier(self.trust.client_verifier()?)
            .with_cert_resolver(Arc::new(self.presented(what)?));
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    /// rustls client config: server verified against the CA (server name [`NODE_SERVER_NAME`]),
    /// our cert presented, TLS 1.3 only, ALPN set to [`ALPN`].
    pub fn rustls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let what = "TLS client config";
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err(what))?
            .with_root_certificates(self.trust.root_store()?)
            .with_client_cert_resolver(Arc::new(self.presented(what)?));
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}
