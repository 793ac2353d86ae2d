//! Signing manifest roots: with the manifest key in this process, or through whatever holds it
//! elsewhere (the seed's signer), which may refuse.

use super::{signed_message, ManifestRoot, MAX_MANIFEST_ROOT_BYTES};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

/// What signs manifest roots: the manifest key, here or in another process.
pub trait RootSigner {
    /// The public half, for checking what comes back.
    fn manifest_key(&self) -> VerifyingKey;
    /// The signature over the root whose canonical encoding is `root_body`: what
    /// [`SignedRoot::open`] checks.
    fn sign_root(&self, root_body: &[u8]) -> Result<[u8; 64], String>;
}

impl RootSigner for SigningKey {
    fn manifest_key(&self) -> VerifyingKey {
        self.verifying_key()
    }

    /// Signs only a root that decodes, is canonical and within every limit: a signer that
    /// others send roots to signs nothing that clients would refuse anyway.
    fn sign_root(&self, root_body: &[u8]) -> Result<[u8; 64], String> {
        if root_body.len() + 4 + 64 > MAX_MANIFEST_ROOT_BYTES {
            return Err(format!(
                "a root of {} bytes exceeds the limit of {MAX_MANIFEST_ROOT_BYTES}",
                root_body.len() + 4 + 64
            ));
        }
        ManifestRoot::from_canonical(root_body)?;
        let digest = *blake3::hash(root_body).as_bytes();
        Ok(self.sign(&signed_message(&digest)).to_bytes())
    }
}
