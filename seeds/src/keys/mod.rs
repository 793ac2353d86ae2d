//! The seed's private keys as a serving seed reaches them: the CA key (renewals, revocation
//! lists) and the manifest key (manifests, latest statements, seals).
//!
//! By default they sit in DATA and `serve` uses them in its own process ([`SeedAuthority`]).
//! An operator who keeps them off the network-facing host moves them to a directory of their
//! own (`oasis-seed split-keys`) and runs `oasis-seed signer` there; `serve --signer SOCKET`
//! then asks it over a Unix socket ([`SignerClient`]) and holds no private key but its own TLS
//! key. Every request the signer answers is one a serving seed needs, each checked there: it
//! vouches only for roots its manifest key signed, renews only a certificate whose key signed
//! the request, and logs each signature with its caller.

pub mod client;
pub mod daemon;
pub mod socket;

pub use client::SignerClient;

use crate::signer::check_ttl;
use oasis_core::manifest::{Latest, RootSigner, SignedRoot};
use oasis_core::pki::{self, SeedAuthority, TrustRoot};
use oasis_core::seal::{Seal, Sealed};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why the keys did not sign.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The request was refused: a root that does not check, a revoked certificate, ...
    #[error("{0}")]
    Refused(String),
    /// The keys could not be used: the signer is unreachable, a file is broken, ...
    #[error("{0}")]
    Unavailable(String),
}

impl From<KeyError> for oasis_core::net::SourceError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Refused(m) => {
                oasis_core::net::SourceError::Rejected(oasis_core::wire::ErrorCode::Forbidden, m)
            }
            KeyError::Unavailable(m) => oasis_core::net::SourceError::Unavailable(m),
        }
    }
}

/// What a serving seed asks of its private keys. Each call may block (a file, a socket).
pub trait Keys: Send + Sync {
    /// The root of trust these keys belong to.
    fn trust(&self) -> &TrustRoot;
    /// Signs manifest roots at publish.
    fn root_signer(&self) -> &dyn RootSigner;
    /// A latest statement for the published root `signed_root`, valid `ttl` from now. Refused
    /// unless the manifest key signed that root.
    fn latest(&self, signed_root: &[u8], ttl: Duration) -> Result<Vec<u8>, KeyError>;
    /// A seal on `sealed`, issued now.
    fn seal(&self, sealed: &Sealed) -> Result<Vec<u8>, KeyError>;
    /// The renewal of `cert` for the key of `csr` ([`SeedAuthority::renew`]).
    fn renew(&self, cert: &[u8], csr: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// The CA's current revocation list (DER) when its number is above `known`.
    fn revocations(&self, known: u64) -> Result<Option<Vec<u8>>, KeyError>;
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Keys for SeedAuthority {
    fn trust(&self) -> &TrustRoot {
        SeedAuthority::trust(self)
    }

    fn root_signer(&self) -> &dyn RootSigner {
        self.signing_key()
    }

    fn latest(&self, signed_root: &[u8], ttl: Duration) -> Result<Vec<u8>, KeyError> {
        check_ttl(ttl).map_err(KeyError::Refused)?;
        let sr = SignedRoot::open(signed_root, &self.signing_key().verifying_key())
            .map_err(|e| KeyError::Refused(format!("the root to vouch for: {e}")))?;
        let issued = now_s();
        let latest = Latest {
            name: sr.root.name,
            version: sr.root.version,
            digest: sr.digest,
            issued,
            expires: issued.saturating_add(ttl.as_secs()),
        };
        Ok(latest.sign(self.signing_key()))
    }

    fn seal(&self, sealed: &Sealed) -> Result<Vec<u8>, KeyError> {
        Ok(Seal { sealed: sealed.clone(), issued: now_s() }.sign(self.signing_key()))
    }

    fn renew(&self, cert: &[u8], csr: &[u8]) -> Result<Vec<u8>, KeyError> {
        match SeedAuthority::renew(self, cert, csr) {
            Ok(c) => Ok(c.to_vec()),
            Err(e @ pki::IdentityError::Io { .. }) => Err(KeyError::Unavailable(e.to_string())),
            Err(e) => Err(KeyError::Refused(e.to_string())),
        }
    }

    fn revocations(&self, known: u64) -> Result<Option<Vec<u8>>, KeyError> {
        let path = self.data_dir().join(pki::REVOKED_FILE);
        let list = pki::load_revocation_file(&path, SeedAuthority::trust(self))
            .map_err(|e| KeyError::Unavailable(e.to_string()))?;
        Ok(list.filter(|l| l.number() > known).map(|l| l.der().to_vec()))
    }
}

/// A seed data directory whose private keys were split off, used without a signer: it reads
/// (list, show, assign) but signs nothing, and says how to sign.
struct NoKeys {
    trust: TrustRoot,
    data: std::path::PathBuf,
}

impl NoKeys {
    fn refuse(&self) -> KeyError {
        KeyError::Unavailable(format!(
            "{} holds no private keys (they were split off to an `oasis-seed signer`): \
             give --signer SOCKET, or do this through `oasis-seed serve --signer`",
            self.data.display()
        ))
    }
}

impl RootSigner for NoKeys {
    fn manifest_key(&self) -> ed25519_dalek::VerifyingKey {
        *self.trust.manifest_key()
    }

    fn sign_root(&self, _: &[u8]) -> Result<[u8; 64], String> {
        Err(self.refuse().to_string())
    }
}

impl Keys for NoKeys {
    fn trust(&self) -> &TrustRoot {
        &self.trust
    }
    fn root_signer(&self) -> &dyn RootSigner {
        self
    }
    fn latest(&self, _: &[u8], _: Duration) -> Result<Vec<u8>, KeyError> {
        Err(self.refuse())
    }
    fn seal(&self, _: &Sealed) -> Result<Vec<u8>, KeyError> {
        Err(self.refuse())
    }
    fn renew(&self, _: &[u8], _: &[u8]) -> Result<Vec<u8>, KeyError> {
        Err(self.refuse())
    }
    fn revocations(&self, _: u64) -> Result<Option<Vec<u8>>, KeyError> {
        Err(self.refuse())
    }
}

/// Whether DATA still holds either private key.
pub fn holds_private_keys(data: &Path) -> bool {
    [pki::CA_KEY_FILE, pki::MANIFEST_KEY_FILE].iter().any(|f| data.join(f).exists())
}

/// The keys of the seed whose data directory is `data`: the signer at `signer` when given
/// (checked to hold this seed's keys), else DATA's own; a DATA whose keys were split off and
/// no signer reads but signs nothing.
pub fn open(data: &Path, signer: Option<&Path>) -> anyhow::Result<Arc<dyn Keys>> {
    let trust_path = data.join(pki::TRUST_FILE);
    if let Some(socket) = signer {
        let trust = TrustRoot::load(&trust_path)?;
        return Ok(Arc::new(SignerClient::connect(socket, trust)?));
    }
    if holds_private_keys(data) {
        return Ok(Arc::new(SeedAuthority::load(data)?));
    }
    let trust = TrustRoot::load(&trust_path)?;
    Ok(Arc::new(NoKeys { trust, data: data.to_path_buf() }))
}
