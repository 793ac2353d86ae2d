//! Root of trust and node identities (the PKI): who a peer is ([`peer`], with the names of
//! `oasis_proto::names`), the trust root ([`trust`]), a node's identity and its TLS configs
//! ([`node`]), the seed's CA ([`authority`]), and how their files are read and written ([`files`]).
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
//! | `issued.jsonl` | seed data dir                    | every certificate issued, and its revocation   |
//! | `revoked.crl`  | seed data dir, reflector state   | the CA-signed revocation list (X.509 CRL)      |
//!
//! `ca.key`, `manifest.key`, `issued.jsonl` and `revoked.crl` move to a keys directory of their
//! own when the seed's keys are split off to a signer (`split`).
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
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

mod authority;
mod files;
mod node;
mod peer;
pub mod renewal;
mod revocation;
mod split;
#[cfg(test)]
mod tests;
mod trust;

pub use authority::*;
use files::*;
pub use node::*;
pub use peer::*;
pub use revocation::*;
pub use trust::*;

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

/// Lifetime of a node certificate unless `enroll --days` says otherwise. Nodes renew theirs
/// over their connections once a third of it is left (see [`renewal`]), so a fleet in use never
/// needs enrolling again; a node silent for the whole lifetime does.
pub const DEFAULT_NODE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
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
