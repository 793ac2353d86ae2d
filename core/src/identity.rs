//! Root of trust and node identities.
//!
//! The seed owns a small private CA (ECDSA P-256, made with rcgen) and the ed25519 key that signs
//! manifests. Every node (the seed itself, reflectors, endpoints) holds a certificate issued by
//! that CA, and every QUIC connection is mutually authenticated against it: a peer with no
//! certificate, or one signed by another CA, is refused during the TLS handshake.
//!
//! A node's role, name and site travel in its certificate as a URI subject alternative name
//! `urn:oasis:node:<role>:<name>[:<site>]`; [`peer_info_from_cert`] reads them back. Every node
//! certificate also carries the DNS name [`NODE_SERVER_NAME`], which clients use as the TLS server
//! name, so any node can verify any other node without knowing its address.
//!
//! Files (all PEM):
//!
//! | file           | where                            | content                                        |
//! |----------------|----------------------------------|------------------------------------------------|
//! | `trust.pem`    | seed data dir, node state dirs   | CA certificate + `OASIS MANIFEST KEY` (public) |
//! | `ca.pem`       | seed data dir                    | CA certificate                                 |
//! | `ca.key`       | seed data dir (0600)             | CA private key (PKCS#8)                        |
//! | `manifest.key` | seed data dir (0600)             | manifest signing key (ed25519, PKCS#8)         |
//! | `node.pem`     | seed data dir, node state dirs   | the node's certificate                         |
//! | `node.key`     | seed data dir, node state dirs (0600) | the node's private key (PKCS#8)           |
//!
//! Secret files are written to a temporary file with mode 0600, synced, then renamed (or linked)
//! into place, so a crash never leaves a half-written key behind.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// ALPN protocol identifier of the Oasis QUIC protocol.
pub const ALPN: &[u8] = b"oasis/1";

/// TLS server name every node certificate carries (as DNS SAN) so clients can verify any node.
pub const NODE_SERVER_NAME: &str = "oasis.node";

/// File name of the trust root (CA certificate + manifest verifying key).
pub const TRUST_FILE: &str = "trust.pem";
/// File name of the CA certificate in the seed's data dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key in the seed's data dir (secret, 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the manifest signing key in the seed's data dir (secret, 0600).
pub const MANIFEST_KEY_FILE: &str = "manifest.key";
/// File name of a node's certificate.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of a node's private key (secret, 0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// Name the seed gives its own node identity unless told otherwise.
pub const DEFAULT_SEED_NAME: &str = "seed";

/// PEM tag of the manifest verifying key in `trust.pem`.
const MANIFEST_KEY_PEM_TAG: &str = "OASIS MANIFEST KEY";
const CERT_PEM_TAG: &str = "CERTIFICATE";
const PRIVATE_KEY_PEM_TAG: &str = "PRIVATE KEY";

/// Validity of node certificates. There is no renewal yet: a node certificate simply stops
/// working after this long and the node has to be enrolled again.
pub const NODE_CERT_VALIDITY_YEARS: u64 = 10;
/// Validity of the CA certificate (and so of the whole root of trust).
pub const CA_CERT_VALIDITY_YEARS: u64 = 20;
/// `not_before` is backdated by this much to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(3600);

const HINT_SEED_INIT: &str =
    "this data directory holds no root of trust; run `oasis-seed init --data DIR` first";
const HINT_ENROLL: &str =
    "not an enrolled node state directory; create it with `oasis-seed enroll ... --out DIR`";

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong with identities. Every variant names the file or object
/// concerned and the problem.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or directory operation failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// A required file is missing.
    #[error("{}: not found: {hint}", path.display())]
    Missing { path: PathBuf, hint: &'static str },
    /// `init` found an existing root of trust.
    #[error(
        "{}: already holds a root of trust ({} exists); refusing to overwrite it",
        dir.display(),
        file.display()
    )]
    AlreadyInitialized { dir: PathBuf, file: PathBuf },
    /// A file we would write already exists and overwriting it was not allowed.
    #[error("{}: already exists; refusing to overwrite it{hint}", path.display())]
    AlreadyExists { path: PathBuf, hint: &'static str },
    /// A file or object has invalid content (bad PEM, bad certificate, mismatched keys, ...).
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
    /// A role, node name, site or node URI is not acceptable.
    #[error(transparent)]
    Name(#[from] NameError),
    /// rcgen failed to generate a key or certificate.
    #[error("{what}: {source}")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// rustls refused a configuration, key or certificate.
    #[error("{what}: {source}")]
    Tls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    /// The connection carries no peer certificate.
    #[error(
        "connection to {remote}: peer presented no certificate (or the handshake is not complete)"
    )]
    NoPeerCertificate { remote: String },
    /// The operating system's random number generator failed.
    #[error("random number generator failed while {what}: {problem}")]
    Random { what: &'static str, problem: String },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io { path: path.to_path_buf(), what, source }
}

fn invalid(what: impl fmt::Display, problem: impl fmt::Display) -> IdentityError {
    IdentityError::Invalid { what: what.to_string(), problem: problem.to_string() }
}

fn rcgen_err(what: impl fmt::Display) -> impl FnOnce(rcgen::Error) -> IdentityError {
    let what = what.to_string();
    move |source| IdentityError::Rcgen { what, source }
}

fn tls_err(what: impl fmt::Display) -> impl FnOnce(rustls::Error) -> IdentityError {
    let what = what.to_string();
    move |source| IdentityError::Tls { what, source }
}

fn random_bytes<const N: usize>(what: &'static str) -> Result<[u8; N], IdentityError> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf)
        .map_err(|e| IdentityError::Random { what, problem: e.to_string() })?;
    Ok(buf)
}

// ---------------------------------------------------------------------------------------------
// Roles, names, peer info: defined with the protocol (`oasis_proto::names`)
// ---------------------------------------------------------------------------------------------

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
    let no_cert = || IdentityError::NoPeerCertificate { remote: conn.remote_address().to_string() };
    let identity = conn.peer_identity().ok_or_else(no_cert)?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| no_cert())?;
    let first = certs.first().ok_or_else(no_cert)?;
    peer_info_from_cert(first)
}

// ---------------------------------------------------------------------------------------------
// Trust root
// ---------------------------------------------------------------------------------------------

/// What every node trusts: the CA certificate and the manifest verifying key (`trust.pem`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustRoot {
    ca: CertificateDer<'static>,
    manifest_key: VerifyingKey,
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

    fn root_store(&self) -> Result<Arc<RootCertStore>, IdentityError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls_err("trust root CA certificate"))?;
        Ok(Arc::new(roots))
    }

    fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, IdentityError> {
        WebPkiClientVerifier::builder_with_provider(self.root_store()?, provider())
            .build()
            .map_err(|e| invalid("client certificate verifier", e))
    }
}

/// Checks that `der` parses and is a CA certificate.
fn check_ca_cert(der: &CertificateDer<'_>, what: &str) -> Result<(), IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| invalid(what, format!("CA certificate does not parse: {e}")))?;
    if !x509.is_ca() {
        return Err(invalid(what, "the CERTIFICATE is not a CA certificate"));
    }
    Ok(())
}

/// The crypto provider of every Oasis TLS config: ring, never the process-global default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Node identity
// ---------------------------------------------------------------------------------------------

/// A node's own certificate and key plus the trust root, as loaded from a state dir (`node.pem`,
/// `node.key`, `trust.pem`).
///
/// Node certificates are valid for [`NODE_CERT_VALIDITY_YEARS`] years. There is no renewal yet:
/// when one expires the node must be enrolled again.
#[derive(Clone)]
pub struct NodeIdentity {
    info: PeerInfo,
    cert: CertificateDer<'static>,
    /// PKCS#8 DER of the node's private key.
    key: Arc<Vec<u8>>,
    trust: TrustRoot,
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

        let identity = NodeIdentity { info, cert, key: Arc::new(key), trust };
        identity.check(&cert_what, &key_path.display().to_string())?;
        Ok(identity)
    }

    /// Checks key/cert consistency and that the certificate chains to the trust root.
    fn check(&self, cert_what: &str, key_what: &str) -> Result<(), IdentityError> {
        rustls::sign::CertifiedKey::from_der(
            vec![self.cert.clone()],
            self.private_key(),
            &provider(),
        )
        .map_err(|e| match e {
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

    fn key_pem(&self) -> String {
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
            .with_single_cert(vec![self.cert.clone()], self.private_key())
            .map_err(tls_err(what))?;
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
            .with_client_auth_cert(vec![self.cert.clone()], self.private_key())
            .map_err(tls_err(what))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

// ---------------------------------------------------------------------------------------------
// Seed authority
// ---------------------------------------------------------------------------------------------

/// The seed's secrets: CA cert+key (to issue node certs) and the manifest signing key.
pub struct SeedAuthority {
    data: PathBuf,
    trust: TrustRoot,
    ca_key: rcgen::KeyPair,
    signing_key: SigningKey,
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
    /// `urn:oasis:node:<role>:<name>[:<site>]`, both serverAuth and clientAuth usages, and is
    /// valid for [`NODE_CERT_VALIDITY_YEARS`] years (no renewal yet: re-enroll on expiry).
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        site: Option<&str>,
    ) -> Result<NodeIdentity, IdentityError> {
        let info = PeerInfo::new(role, name, site)?;
        let what = format!("issuing a certificate for {info}");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err(&what))?;
        let params = node_params(&info, &what)?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&self.trust.ca, &self.ca_key)
            .map_err(rcgen_err(&what))?;
        let cert = params.signed_by(&key, &issuer).map_err(rcgen_err(&what))?;
        Ok(NodeIdentity {
            info,
            cert: cert.der().clone(),
            key: Arc::new(key.serialize_der()),
            trust: self.trust.clone(),
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
        let key_path = out_dir.join(NODE_KEY_FILE);
        // Check before issuing so a refused enroll does no work; save() checks again.
        if !force && exists(&key_path)? {
            return Err(IdentityError::AlreadyExists {
                path: key_path,
                hint: " (this directory already holds a node identity; use --force to replace it)",
            });
        }
        let node = self.issue(role, name, site)?;
        node.save(out_dir, force)?;
        Ok(node)
    }
}

/// Unix time now as rcgen's date type, plus helpers; we avoid naming the `time` crate directly.
fn set_validity(params: &mut rcgen::CertificateParams, years: u64) {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let days = years * 365 + years / 4;
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::from_secs(days * 86_400);
}

fn random_serial() -> Result<rcgen::SerialNumber, IdentityError> {
    let mut bytes = random_bytes::<16>("generating a certificate serial number")?;
    // Positive and of full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

fn ca_params() -> Result<rcgen::CertificateParams, IdentityError> {
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
    set_validity(&mut params, CA_CERT_VALIDITY_YEARS);
    Ok(params)
}

fn node_params(info: &PeerInfo, what: &str) -> Result<rcgen::CertificateParams, IdentityError> {
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
    set_validity(&mut params, NODE_CERT_VALIDITY_YEARS);
    Ok(params)
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    /// Mode 0600.
    Secret,
    /// Mode 0644.
    Public,
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, "checking whether it exists")(e)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir, "creating directory"))
}

fn read_text(path: &Path, hint: &'static str) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            IdentityError::Missing { path: path.to_path_buf(), hint }
        } else {
            io_err(path, "reading")(e)
        }
    })
}

/// Reads a PEM file and returns the contents of its first block, which must have tag `tag`.
fn read_single_pem(path: &Path, tag: &str, hint: &'static str) -> Result<Vec<u8>, IdentityError> {
    let text = read_text(path, hint)?;
    let what = path.display();
    let blocks = pem::parse_many(&text).map_err(|e| invalid(&what, format!("bad PEM: {e}")))?;
    let first = blocks
        .into_iter()
        .next()
        .ok_or_else(|| invalid(&what, format!("no PEM block (expected {tag:?})")))?;
    if first.tag() != tag {
        return Err(invalid(&what, format!("PEM block is {:?}, expected {tag:?}", first.tag())));
    }
    Ok(first.into_contents())
}

/// Writes `data` to `path` durably ([`crate::durable`]: mode 0600 for secrets, 0644 otherwise),
/// so readers and crashes only ever see the old file or the complete new one. Without
/// `overwrite`, an existing `path` is never replaced.
fn write_atomic(
    path: &Path,
    data: &[u8],
    kind: FileKind,
    overwrite: bool,
) -> Result<(), IdentityError> {
    let mode = match kind {
        FileKind::Secret => 0o600,
        FileKind::Public => 0o644,
    };
    crate::durable::write_with(path, data, crate::durable::Options { mode, overwrite }).map_err(
        |e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                IdentityError::AlreadyExists { path: path.to_path_buf(), hint: "" }
            }
            _ => io_err(path, "writing (via a temporary file)")(e),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn role_display_and_parse() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert_eq!("reflector".parse::<Role>().unwrap(), Role::Reflector);
        let err = "router".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("\"router\""), "{err}");
        assert_eq!(serde_json::to_string(&Role::Endpoint).unwrap(), "\"endpoint\"");
    }

    #[test]
    fn init_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let auth = SeedAuthority::init(&data).unwrap();
        for f in [
            TRUST_FILE,
            CA_CERT_FILE,
            CA_KEY_FILE,
            MANIFEST_KEY_FILE,
            NODE_CERT_FILE,
            NODE_KEY_FILE,
        ] {
            assert!(data.join(f).is_file(), "{f} missing");
        }
        #[cfg(unix)]
        for f in [CA_KEY_FILE, MANIFEST_KEY_FILE, NODE_KEY_FILE] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
        // No temp files left behind.
        let leftovers: Vec<_> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let loaded = SeedAuthority::load(&data).unwrap();
        assert_eq!(loaded.trust(), auth.trust());
        assert_eq!(loaded.signing_key().to_bytes(), auth.signing_key().to_bytes());
        assert_eq!(TrustRoot::load(&data.join(TRUST_FILE)).unwrap(), *auth.trust());

        // The manifest key signs what the trust root verifies.
        use ed25519_dalek::{Signer, Verifier};
        let sig = loaded.signing_key().sign(b"manifest");
        auth.trust().manifest_key().verify(b"manifest", &sig).unwrap();

        // The seed's own identity.
        let seed = loaded.node_identity().unwrap();
        assert_eq!(*seed.info(), PeerInfo { role: Role::Seed, name: "seed".into(), site: None });
        assert_eq!(seed.trust(), auth.trust());

        // A loaded authority can issue certificates the trust root accepts.
        let node = loaded.issue(Role::Endpoint, "ep1", None).unwrap();
        node.check("issued cert", "issued key").unwrap();
    }

    #[test]
    fn init_named_uses_given_seed_name() {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init_named(dir.path(), "origin-1", Some("hq")).unwrap();
        let me = auth.node_identity().unwrap();
        assert_eq!(me.info().name, "origin-1");
        assert_eq!(me.info().site.as_deref(), Some("hq"));
        assert_eq!(me.info().role, Role::Seed);
    }

    #[test]
    fn init_twice_refuses_and_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        SeedAuthority::init(dir.path()).unwrap();
        let before: Vec<Vec<u8>> = [TRUST_FILE, CA_KEY_FILE, MANIFEST_KEY_FILE, NODE_KEY_FILE]
            .iter()
            .map(|f| fs::read(dir.path().join(f)).unwrap())
            .collect();
        let err = SeedAuthority::init(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyInitialized { .. }), "{err:?}");
        assert!(err.to_string().contains("already holds a root of trust"), "{err}");
        let after: Vec<Vec<u8>> = [TRUST_FILE, CA_KEY_FILE, MANIFEST_KEY_FILE, NODE_KEY_FILE]
            .iter()
            .map(|f| fs::read(dir.path().join(f)).unwrap())
            .collect();
        assert_eq!(before, after);

        // A single leftover secret also counts as an existing root of trust.
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join(CA_KEY_FILE), b"x").unwrap();
        let err = SeedAuthority::init(other.path()).unwrap_err();
        assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
        assert_eq!(fs::read(other.path().join(CA_KEY_FILE)).unwrap(), b"x");
    }

    #[test]
    fn load_uninitialized_names_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = SeedAuthority::load(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(TRUST_FILE) && msg.contains("oasis-seed init"), "{msg}");

        SeedAuthority::init(dir.path()).unwrap();
        fs::remove_file(dir.path().join(MANIFEST_KEY_FILE)).unwrap();
        let msg = SeedAuthority::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(MANIFEST_KEY_FILE) && msg.contains("oasis-seed init"), "{msg}");

        let msg = NodeIdentity::load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(msg.contains(TRUST_FILE) && msg.contains("enroll"), "{msg}");
    }

    #[test]
    fn load_detects_mismatched_files() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        SeedAuthority::init(a.path()).unwrap();
        SeedAuthority::init(b.path()).unwrap();
        // manifest.key from another seed.
        fs::copy(b.path().join(MANIFEST_KEY_FILE), a.path().join(MANIFEST_KEY_FILE)).unwrap();
        let msg = SeedAuthority::load(a.path()).unwrap_err().to_string();
        assert!(msg.contains(MANIFEST_KEY_FILE) && msg.contains("does not match"), "{msg}");

        // A node state dir whose trust.pem comes from another seed.
        fs::copy(b.path().join(TRUST_FILE), a.path().join(TRUST_FILE)).unwrap();
        let msg = NodeIdentity::load(a.path()).unwrap_err().to_string();
        assert!(msg.contains(NODE_CERT_FILE) && msg.contains("not accepted by the CA"), "{msg}");

        // node.key from another node.
        fs::copy(b.path().join(NODE_CERT_FILE), a.path().join(NODE_CERT_FILE)).unwrap();
        let msg = NodeIdentity::load(a.path()).unwrap_err().to_string();
        assert!(msg.contains(NODE_KEY_FILE) && msg.contains("does not match"), "{msg}");
    }

    #[test]
    fn enroll_writes_files_with_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
        let out = dir.path().join("nodes").join("r1");
        let issued = auth.enroll(Role::Reflector, "r1", Some("paris"), &out, false).unwrap();
        for f in [NODE_CERT_FILE, NODE_KEY_FILE, TRUST_FILE] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        #[cfg(unix)]
        assert_eq!(mode(&out.join(NODE_KEY_FILE)), 0o600);
        assert_eq!(
            fs::read_to_string(out.join(TRUST_FILE)).unwrap(),
            fs::read_to_string(dir.path().join("seed").join(TRUST_FILE)).unwrap()
        );

        let loaded = NodeIdentity::load(&out).unwrap();
        assert_eq!(loaded.info(), issued.info());
        assert_eq!(loaded.cert_der(), issued.cert_der());
        assert_eq!(loaded.trust(), auth.trust());

        // Second enroll into the same dir refuses without force and leaves the key alone.
        let key_before = fs::read(out.join(NODE_KEY_FILE)).unwrap();
        let err = auth.enroll(Role::Reflector, "r1", Some("paris"), &out, false).unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }), "{err:?}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(fs::read(out.join(NODE_KEY_FILE)).unwrap(), key_before);

        // With force it is replaced.
        let again = auth.enroll(Role::Endpoint, "e1", None, &out, true).unwrap();
        assert_ne!(fs::read(out.join(NODE_KEY_FILE)).unwrap(), key_before);
        #[cfg(unix)]
        assert_eq!(mode(&out.join(NODE_KEY_FILE)), 0o600);
        assert_eq!(NodeIdentity::load(&out).unwrap().info(), again.info());
    }

    #[test]
    fn peer_info_from_cert_returns_what_was_issued() {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(dir.path()).unwrap();
        for (role, name, site) in [
            (Role::Reflector, "refl-01", Some("site.a")),
            (Role::Endpoint, "host_7", None),
            (Role::Seed, "S", Some("x")),
        ] {
            let node = auth.issue(role, name, site).unwrap();
            let info = peer_info_from_cert(node.cert_der()).unwrap();
            assert_eq!(info, PeerInfo { role, name: name.into(), site: site.map(Into::into) });
            assert_eq!(node.info(), &info);
        }
        // The CA certificate is not a node certificate.
        let err = peer_info_from_cert(auth.trust().ca_der()).unwrap_err();
        assert!(err.to_string().contains("not an Oasis node certificate"), "{err}");
        // Garbage is refused.
        assert!(peer_info_from_cert(&CertificateDer::from(vec![1u8, 2, 3])).is_err());
    }

    #[test]
    fn peer_info_needs_oasis_uri() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![NODE_SERVER_NAME.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = peer_info_from_cert(cert.der()).unwrap_err();
        assert!(err.to_string().contains("urn:oasis:node:"), "{err}");
    }

    #[test]
    fn bad_names_refused() {
        for good in ["a", "r1", "Paris-2.east_1", &"x".repeat(64)] {
            validate_node_name("node name", good).unwrap();
        }
        for bad in ["", ".hidden", "a:b", "a/b", "a b", "é", &"x".repeat(65), "a\n"] {
            let err = validate_node_name("node name", bad).unwrap_err();
            assert!(matches!(err, NameError::InvalidName { .. }), "{bad:?}: {err:?}");
            assert!(err.to_string().starts_with("invalid node name"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(dir.path()).unwrap();
        assert!(auth.issue(Role::Endpoint, "bad:name", None).is_err());
        let err = auth.issue(Role::Endpoint, "ok", Some("bad site")).unwrap_err();
        assert!(err.to_string().contains("invalid site"), "{err}");
        let out = dir.path().join("out");
        assert!(auth.enroll(Role::Endpoint, "../x", None, &out, false).is_err());
        assert!(!out.join(NODE_KEY_FILE).exists());
        let other = tempfile::tempdir().unwrap();
        assert!(SeedAuthority::init_named(other.path(), ".seed", None).is_err());
        assert!(!other.path().join(TRUST_FILE).exists());
    }

    // --- QUIC handshakes -------------------------------------------------------------------

    fn quinn_server(id: &NodeIdentity) -> quinn::Endpoint {
        let crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(id.rustls_server_config().unwrap())
                .unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
    }

    fn quinn_client_config(crypto: Arc<rustls::ClientConfig>) -> quinn::ClientConfig {
        quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
        ))
    }

    /// Connects with `client` to a server endpoint; returns (client side, server side) results.
    async fn handshake(
        server: &quinn::Endpoint,
        client: quinn::ClientConfig,
    ) -> (
        Result<quinn::Connection, quinn::ConnectionError>,
        Result<quinn::Connection, quinn::ConnectionError>,
    ) {
        let addr: SocketAddr = server.local_addr().unwrap();
        let accept = {
            let server = server.clone();
            tokio::spawn(async move {
                let incoming = server.accept().await.expect("server endpoint closed");
                incoming.await
            })
        };
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let client_side = endpoint.connect_with(client, addr, NODE_SERVER_NAME).unwrap().await;
        // In TLS 1.3 the client finishes before the server has checked its certificate, so a
        // refused client may see its connection closed only afterwards: wait for that.
        let client_side = match client_side {
            Ok(conn) => {
                match tokio::time::timeout(Duration::from_millis(500), conn.closed()).await {
                    Ok(reason) => Err(reason),
                    Err(_) => Ok(conn),
                }
            }
            Err(e) => Err(e),
        };
        let server_side = tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .expect("server handshake timed out")
            .unwrap();
        (client_side, server_side)
    }

    #[tokio::test]
    async fn quic_handshake_between_reflector_and_seed() {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
        let seed = auth.node_identity().unwrap();
        let enrolled = auth
            .enroll(Role::Reflector, "r1", Some("lyon"), &dir.path().join("r1"), false)
            .unwrap();
        // Use the identity as a reflector would: loaded from its state dir.
        let refl = NodeIdentity::load(&dir.path().join("r1")).unwrap();
        assert_eq!(refl.info(), enrolled.info());

        let server = quinn_server(&seed);
        let client = quinn_client_config(refl.rustls_client_config().unwrap());
        let (client_side, server_side) = handshake(&server, client).await;
        let client_conn = client_side.expect("client handshake");
        let server_conn = server_side.expect("server handshake");

        assert_eq!(peer_info(&client_conn).unwrap(), *seed.info());
        assert_eq!(
            peer_info(&server_conn).unwrap(),
            PeerInfo { role: Role::Reflector, name: "r1".into(), site: Some("lyon".into()) }
        );
        let alpn = server_conn
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol;
        assert_eq!(alpn.as_deref(), Some(ALPN));

        // And data flows.
        let (mut send, _recv) = client_conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        let (_s, mut recv) = server_conn.accept_bi().await.unwrap();
        assert_eq!(recv.read_to_end(100).await.unwrap(), b"hello");
        client_conn.close(0u32.into(), b"done");
    }

    #[tokio::test]
    async fn quic_client_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
        let rogue_auth = SeedAuthority::init(&dir.path().join("rogue")).unwrap();
        let seed = auth.node_identity().unwrap();
        // The rogue client trusts the real CA (so it accepts the seed) but its certificate comes
        // from the other CA: the seed must refuse it.
        let mut rogue = rogue_auth.issue(Role::Reflector, "r1", None).unwrap();
        rogue.trust = auth.trust().clone();

        let server = quinn_server(&seed);
        let client = quinn_client_config(rogue.rustls_client_config().unwrap());
        let (client_side, server_side) = handshake(&server, client).await;
        let err = server_side.expect_err("server accepted a client from another CA");
        assert!(
            matches!(err, quinn::ConnectionError::TransportError(_)),
            "unexpected server error: {err:?}"
        );
        client_side.expect_err("client connection survived being refused");
    }

    #[tokio::test]
    async fn quic_client_without_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(dir.path()).unwrap();
        let seed = auth.node_identity().unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(auth.trust().ca_der().clone()).unwrap();
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        crypto.alpn_protocols = vec![ALPN.to_vec()];

        let server = quinn_server(&seed);
        let (client_side, server_side) =
            handshake(&server, quinn_client_config(Arc::new(crypto))).await;
        server_side.expect_err("server accepted a client without certificate");
        client_side.expect_err("client connection survived being refused");
    }

    #[tokio::test]
    async fn quic_server_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
        let rogue_auth = SeedAuthority::init(&dir.path().join("rogue")).unwrap();
        let mut rogue_seed = rogue_auth.node_identity().unwrap();
        // The rogue server trusts our CA for clients but presents a certificate of its own CA.
        rogue_seed.trust = auth.trust().clone();
        let refl = auth.issue(Role::Reflector, "r1", None).unwrap();

        let server = quinn_server(&rogue_seed);
        let client = quinn_client_config(refl.rustls_client_config().unwrap());
        let (client_side, server_side) = handshake(&server, client).await;
        let err = client_side.expect_err("client accepted a server from another CA");
        assert!(
            matches!(err, quinn::ConnectionError::TransportError(_)),
            "unexpected client error: {err:?}"
        );
        server_side.expect_err("server side survived");
    }
}
