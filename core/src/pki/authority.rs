//! The seed's certificate authority: the CA and manifest keys, and issuing node certificates.

use super::*;

/// The seed's secrets: CA cert+key (to issue node certs) and the manifest signing key.
pub struct SeedAuthority {
    pub(super) data: PathBuf,
    pub(super) trust: TrustRoot,
    pub(super) ca_key: rcgen::KeyPair,
    pub(super) signing_key: SigningKey,
}

impl fmt::Debug for SeedAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedAuthority")
            .field("data", &self.data)
            .field("manifest_key", &hex::encode(self.trust.manifest_key.as_bytes()))
            .field("ca_key", &"[secret]")
            .field("signing_key", &"[secret]")
            .finish()
    }
}

impl SeedAuthority {
    /// Creates the root of trust in `data` (created, mode 0700, if needed); the seed's own node
    /// identity is named [`DEFAULT_SEED_NAME`]. See [`SeedAuthority::init_named`].
    pub fn init(data: &Path) -> Result<SeedAuthority, IdentityError> {
        SeedAuthority::init_named(data, DEFAULT_SEED_NAME, None)
    }

    /// Creates DATA dir if needed; refuses (clear error, nothing overwritten) if DATA already
    /// holds a root of trust. Writes: `trust.pem`, `ca.pem`, `ca.key` (mode 0600),
    /// `manifest.key` (0600), and the seed's own node identity (role Seed, name `seed_name`,
    /// optional site) as `node.pem` / `node.key` (0600) in DATA so the seed can serve.
    pub fn init_named(
        data: &Path,
        seed_name: &str,
        seed_site: Option<&str>,
    ) -> Result<SeedAuthority, IdentityError> {
        // Validate before touching the disk.
        PeerInfo::new(Role::Seed, seed_name, seed_site)?;
        create_private_dir(data)?;
        for file in [
            TRUST_FILE,
            CA_CERT_FILE,
            CA_KEY_FILE,
            MANIFEST_KEY_FILE,
            NODE_CERT_FILE,
            NODE_KEY_FILE,
        ] {
            let path = data.join(file);
            if exists(&path)? {
                return Err(IdentityError::AlreadyInitialized {
                    dir: data.to_path_buf(),
                    file: path,
                });
            }
        }

        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("generating the CA key"))?;
        let ca_cert = ca_params()?
            .self_signed(&ca_key)
            .map_err(rcgen_err("generating the CA certificate"))?;
        let signing_key =
            SigningKey::from_bytes(&random_bytes::<32>("generating the manifest key")?);
        let trust =
            TrustRoot { ca: ca_cert.der().clone(), manifest_key: signing_key.verifying_key() };
        let authority = SeedAuthority { data: data.to_path_buf(), trust, ca_key, signing_key };
        let node = authority.issue(Role::Seed, seed_name, seed_site)?;

        let manifest_der = authority.signing_key.to_pkcs8_der().map_err(|e| {
            invalid("manifest signing key", format!("cannot encode as PKCS#8: {e}"))
        })?;
        let manifest_pem =
            pem::encode(&pem::Pem::new(PRIVATE_KEY_PEM_TAG, manifest_der.as_bytes()));
        // Secrets first, trust.pem last: a crash part way leaves files that make the next `init`
        // refuse (naming the file) rather than a trust.pem without its keys.
        let ca_key_pem = authority.ca_key.serialize_pem();
        let ca_cert_pem = ca_cert.pem();
        let node_key_pem = node.key_pem();
        let node_cert_pem = node.cert_pem();
        let trust_pem = authority.trust.to_pem();
        let writes: [(&str, &[u8], FileKind); 6] = [
            (CA_KEY_FILE, ca_key_pem.as_bytes(), FileKind::Secret),
            (MANIFEST_KEY_FILE, manifest_pem.as_bytes(), FileKind::Secret),
            (CA_CERT_FILE, ca_cert_pem.as_bytes(), FileKind::Public),
            (NODE_KEY_FILE, node_key_pem.as_bytes(), FileKind::Secret),
            (NODE_CERT_FILE, node_cert_pem.as_bytes(), FileKind::Public),
            (TRUST_FILE, trust_pem.as_bytes(), FileKind::Public),
        ];
        for (file, bytes, kind) in writes {
            write_atomic(&data.join(file), bytes, kind, false).map_err(|e| match e {
                IdentityError::AlreadyExists { path, .. } => {
                    IdentityError::AlreadyInitialized { dir: data.to_path_buf(), file: path }
                }
                other => other,
            })?;
        }
        authority.record_issued(&node, false)?;
        Ok(authority)
    }

    /// Loads the root of trust from `data`. Errors name the missing or broken file (a missing
    /// file says to run `oasis-seed init`), and the files are checked against each other.
    pub fn load(data: &Path) -> Result<SeedAuthority, IdentityError> {
        let trust_path = data.join(TRUST_FILE);
        let trust_text = read_text(&trust_path, HINT_SEED_INIT)?;
        let trust = TrustRoot::from_pem(&trust_text, &trust_path.display().to_string())?;

        let ca_path = data.join(CA_CERT_FILE);
        let ca_der = read_single_pem(&ca_path, CERT_PEM_TAG, HINT_SEED_INIT)?;
        if ca_der != trust.ca.as_ref() {
            return Err(invalid(
                ca_path.display(),
                format!("differs from the CA certificate in {}", trust_path.display()),
            ));
        }

        let ca_key_path = data.join(CA_KEY_FILE);
        let ca_key_text = read_text(&ca_key_path, HINT_SEED_INIT)?;
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_text).map_err(|e| {
            invalid(ca_key_path.display(), format!("not a usable private key: {e}"))
        })?;
        let (_, ca_x509) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| invalid(ca_path.display(), format!("cannot parse X.509: {e}")))?;
        if ca_x509.public_key().subject_public_key.data.as_ref() != ca_key.public_key_raw() {
            return Err(invalid(
                ca_key_path.display(),
                format!("does not match the CA certificate in {}", ca_path.display()),
            ));
        }

        let mk_path = data.join(MANIFEST_KEY_FILE);
        let mk_text = read_text(&mk_path, HINT_SEED_INIT)?;
        let signing_key = SigningKey::from_pkcs8_pem(&mk_text).map_err(|e| {
            invalid(mk_path.display(), format!("not an ed25519 PKCS#8 private key: {e}"))
        })?;
        if signing_key.verifying_key() != trust.manifest_key {
            return Err(invalid(
                mk_path.display(),
                format!("does not match the manifest key in {}", trust_path.display()),
            ));
        }

        Ok(SeedAuthority { data: data.to_path_buf(), trust, ca_key, signing_key })
    }

    /// The data directory this authority lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The public root of trust (`trust.pem`).
    pub fn trust(&self) -> &TrustRoot {
        &self.trust
    }

    /// The manifest signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The seed's own node identity (`node.pem` / `node.key` in the data dir).
    pub fn node_identity(&self) -> Result<NodeIdentity, IdentityError> {
        NodeIdentity::load(&self.data)
    }

    /// Issues a certificate (and a fresh ECDSA P-256 key) for a named node.
    ///
    /// The certificate has subject CN = `name`, DNS SAN [`NODE_SERVER_NAME`], URI SAN
    /// `urn:oasis:node:<role>:<name>[:<site>]`, both serverAuth and clientAuth usages, and
    /// lives [`DEFAULT_NODE_CERT_LIFETIME`]. It is not recorded: [`SeedAuthority::enroll`]
    /// records what it hands out.
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        site: Option<&str>,
    ) -> Result<NodeIdentity, IdentityError> {
        self.issue_for(role, name, site, DEFAULT_NODE_CERT_LIFETIME)
    }

    /// [`SeedAuthority::issue`], the certificate living `lifetime`.
    pub fn issue_for(
        &self,
        role: Role,
        name: &str,
        site: Option<&str>,
        lifetime: Duration,
    ) -> Result<NodeIdentity, IdentityError> {
        let info = PeerInfo::new(role, name, site)?;
        let what = format!("issuing a certificate for {info}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err(&what))?;
        let params = node_params(&info, &what, lifetime)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.trust.ca, &self.ca_key)
            .map_err(rcgen_err(&what))?;
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_err(&what))?;
        Ok(NodeIdentity {
            info,
            cert: cert.der().clone(),
            key: Arc::new(key.serialize_der()),
            trust: self.trust.clone(),
            presented: Default::default(),
        })
    }

    /// [`issue`](Self::issue) + write `node.pem`, `node.key` (0600), `trust.pem` into `out_dir`
    /// (created if missing). Refuses to overwrite an existing `node.key` in `out_dir` unless
    /// `force`.
    pub fn enroll(
        &self,
        role: Role,
        name: &str,
        site: Option<&str>,
        out_dir: &Path,
        force: bool,
    ) -> Result<NodeIdentity, IdentityError> {
        self.enroll_for(role, name, site, out_dir, force, DEFAULT_NODE_CERT_LIFETIME)
    }

    /// [`SeedAuthority::enroll`], the certificate living `lifetime` (and each renewal of it
    /// as long).
    pub fn enroll_for(
        &self,
        role: Role,
        name: &str,
        site: Option<&str>,
        out_dir: &Path,
        force: bool,
        lifetime: Duration,
    ) -> Result<NodeIdentity, IdentityError> {
        let key_path = out_dir.join(NODE_KEY_FILE);
        // Check before issuing so a refused enroll does no work; save() checks again.
        if !force && exists(&key_path)? {
            return Err(IdentityError::AlreadyExists {
                path: key_path,
                hint: " (this directory already holds a node identity; use --force to replace it)",
            });
        }
        let node = self.issue_for(role, name, site, lifetime)?;
        node.save(out_dir, force)?;
        // Recorded once saved: a certificate that never reached its node revokes nothing.
        // Enrolling a name again replaces its certificate, so the old one is revoked.
        let replaced = self.record_issued(&node, true)?;
        for c in &replaced {
            tracing::info!(serial = %c.serial, node = %node.info, "revoked the certificate this enrollment replaces");
        }
        Ok(node)
    }
}

/// Valid from [`BACKDATE`] ago for `lifetime` from now, as rcgen's date type (we avoid naming
/// the `time` crate directly).
pub(super) fn set_lifetime(params: &mut rcgen::CertificateParams, lifetime: Duration) {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

pub(super) fn random_serial() -> Result<rcgen::SerialNumber, IdentityError> {
    let mut bytes = random_bytes::<16>("generating a certificate serial number")?;
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

pub(super) fn ca_params() -> Result<rcgen::CertificateParams, IdentityError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Oasis");
    params.distinguished_name.push(rcgen::DnType::CommonName, "Oasis root CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    let years = CA_CERT_VALIDITY_YEARS;
    set_lifetime(&mut params, Duration::from_secs((years * 365 + years / 4) * 86_400));
    Ok(params)
}

pub(super) fn node_params(
    info: &PeerInfo,
    what: &str,
    lifetime: Duration,
) -> Result<rcgen::CertificateParams, IdentityError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Oasis");
    params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, info.role.as_str());
    params.distinguished_name.push(rcgen::DnType::CommonName, info.name.as_str());
    let dns = rcgen::string::Ia5String::try_from(NODE_SERVER_NAME).map_err(rcgen_err(what))?;
    let uri = rcgen::string::Ia5String::try_from(info.to_uri()).map_err(rcgen_err(what))?;
    params.subject_alt_names = vec![rcgen::SanType::DnsName(dns), rcgen::SanType::URI(uri)];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    set_lifetime(&mut params, lifetime);
    Ok(params)
}
