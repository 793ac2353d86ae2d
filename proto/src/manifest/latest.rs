//! "Latest": a signed statement that a version is the newest published of its layer, valid until
//! an expiry.
//!
//! A manifest says what a version holds, and stays valid for ever; by itself it cannot say that
//! no newer version exists. So a cache cut off from the seed, or one that replays an old answer,
//! could hand out an old version as "latest" indefinitely. The seed signs a [`Latest`]
//! statement afresh for every request, with a short lifetime. A client then knows:
//! - which version is the newest the seed had published when it signed (`issued`);
//! - whether the statement is still within its lifetime (`expires`): past it, the answer is
//!   **stale**, typically a reflector's cached copy while its WAN is down, and the client says
//!   so;
//! - whether it is older than a statement it saw before for the same layer: a version lower
//!   than one already seen as latest is a replay or a rollback, and is refused.
//!
//! Encoding: `"OAL1" | ed25519 signature (64) | postcard(Latest)`, the signature over
//! [`LATEST_CONTEXT`] followed by the BLAKE3 of the postcard bytes, with the key that signs
//! manifests (trust.pem's manifest key).

use super::{compare_versions, validate_label, ManifestError};
use crate::envelope::{self, Refused};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// First bytes of an encoded statement.
pub const LATEST_MAGIC: &[u8; 4] = b"OAL1";
/// Domain separation: a manifest signature can never pass for a statement, nor the reverse.
pub const LATEST_CONTEXT: &[u8] = b"oasis latest v1\0";
/// Largest encoded statement: two labels of at most 128 bytes, a digest, two times, the
/// signature and the header.
pub const MAX_LATEST_BYTES: usize = 512;

/// What the seed states about a layer's newest version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest {
    pub name: String,
    pub version: String,
    /// The layer digest of that version's signed manifest root (BLAKE3 of the root).
    pub digest: [u8; 32],
    /// Unix seconds when the seed signed it.
    pub issued: u64,
    /// Unix seconds after which it is stale.
    pub expires: u64,
}

/// How a statement compares with the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Past its expiry by this many seconds.
    Stale {
        for_s: u64,
    },
}

/// How a newly received statement compares with one seen before for the same layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Succession {
    /// A newer version, or the same version signed no earlier: take it.
    Newer,
    /// The same version signed earlier than the one seen (a cached copy): usable, not kept.
    Older,
    /// A lower version than one already seen as latest: a replay or a rollback.
    Rollback,
}

impl Latest {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// The encoded, signed statement.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let body = postcard::to_stdvec(self).expect("a statement always serializes");
        envelope::seal(LATEST_MAGIC, LATEST_CONTEXT, key, &body)
    }

    /// Parses an encoded statement and checks its signature against `key`, then its fields.
    /// Nothing in it is trusted before the signature verifies.
    pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<Latest, ManifestError> {
        let bad = |p: String| ManifestError::Malformed(format!("latest statement: {p}"));
        let body = match envelope::open(bytes, LATEST_MAGIC, LATEST_CONTEXT, key, MAX_LATEST_BYTES)
        {
            Ok(body) => body,
            Err(Refused::TooLarge) => {
                return Err(bad(format!(
                    "{} bytes exceeds the limit of {MAX_LATEST_BYTES}",
                    bytes.len()
                )))
            }
            Err(Refused::NotThisKind) => {
                return Err(bad("truncated, or not a latest statement (bad magic)".into()))
            }
            Err(Refused::BadSignature) => {
                return Err(ManifestError::BadSignature { layer: "latest statement".into() })
            }
        };
        let latest: Latest =
            postcard::from_bytes(body).map_err(|e| bad(format!("does not decode: {e}")))?;
        if postcard::to_stdvec(&latest).ok().as_deref() != Some(body) {
            return Err(bad("not in canonical form".into()));
        }
        let layer = format!("latest of {}", latest.name);
        let invalid = |problem: String| ManifestError::Invalid { layer: layer.clone(), problem };
        validate_label("layer name", &latest.name).map_err(invalid)?;
        validate_label("version", &latest.version).map_err(invalid)?;
        if latest.expires < latest.issued {
            return Err(invalid(format!(
                "expires ({}) before it was issued ({})",
                latest.expires, latest.issued
            )));
        }
        Ok(latest)
    }

    /// Checks that this is a statement about the layer asked for.
    pub fn check_request(&self, name: &str) -> Result<(), ManifestError> {
        if self.name != name {
            return Err(ManifestError::Invalid {
                layer: format!("latest of {}", self.name),
                problem: format!("was sent in answer to a request for the latest of {name}"),
            });
        }
        Ok(())
    }

    /// Fresh or stale at `now` (Unix seconds).
    pub fn freshness(&self, now: u64) -> Freshness {
        if now > self.expires {
            Freshness::Stale { for_s: now - self.expires }
        } else {
            Freshness::Fresh
        }
    }

    /// How this statement stands against `seen`, one received before for the same layer.
    pub fn succeeds(&self, seen: &Latest) -> Succession {
        match compare_versions(&self.version, &seen.version) {
            Ordering::Less => Succession::Rollback,
            Ordering::Greater => Succession::Newer,
            Ordering::Equal if self.issued >= seen.issued => Succession::Newer,
            Ordering::Equal => Succession::Older,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn stmt(version: &str, issued: u64) -> Latest {
        Latest {
            name: "base".into(),
            version: version.into(),
            digest: [7; 32],
            issued,
            expires: issued + 3600,
        }
    }

    #[test]
    fn a_signed_statement_opens_with_its_key_only() {
        let s = stmt("2", 1_000);
        let bytes = s.sign(&key(1));
        assert!(bytes.len() <= MAX_LATEST_BYTES);
        assert_eq!(Latest::open(&bytes, &key(1).verifying_key()).unwrap(), s);
        assert!(matches!(
            Latest::open(&bytes, &key(2).verifying_key()),
            Err(ManifestError::BadSignature { .. })
        ));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(Latest::open(&flipped, &key(1).verifying_key()).is_err());
        assert!(Latest::open(&bytes[..60], &key(1).verifying_key()).is_err());
    }

    #[test]
    fn a_manifest_signature_never_passes_for_a_statement() {
        // The same key signs manifests: a root signature over the same bytes must not open.
        let s = stmt("2", 1_000);
        let body = postcard::to_stdvec(&s).unwrap();
        let digest = *blake3::hash(&body).as_bytes();
        let mut msg = super::super::SIGNATURE_CONTEXT.to_vec();
        msg.extend_from_slice(&digest);
        let sig = key(1).sign(&msg);
        let mut forged = LATEST_MAGIC.to_vec();
        forged.extend_from_slice(&sig.to_bytes());
        forged.extend_from_slice(&body);
        assert!(matches!(
            Latest::open(&forged, &key(1).verifying_key()),
            Err(ManifestError::BadSignature { .. })
        ));
    }

    #[test]
    fn bad_fields_are_refused_even_when_signed() {
        let mut s = stmt("2", 1_000);
        s.expires = 10;
        let e = Latest::open(&s.sign(&key(1)), &key(1).verifying_key()).unwrap_err();
        assert!(e.to_string().contains("before it was issued"), "{e}");
        let mut s = stmt("2", 1_000);
        s.name = "../etc".into();
        assert!(Latest::open(&s.sign(&key(1)), &key(1).verifying_key()).is_err());
        let s = stmt("2", 1_000);
        assert!(s.check_request("base").is_ok());
        let e = s.check_request("apps").unwrap_err().to_string();
        assert!(e.contains("request for the latest of apps"), "{e}");
    }

    #[test]
    fn freshness_and_succession() {
        let s = stmt("2", 1_000);
        assert_eq!(s.freshness(4_600), Freshness::Fresh);
        assert_eq!(s.freshness(4_700), Freshness::Stale { for_s: 100 });
        assert_eq!(stmt("3", 10).succeeds(&s), Succession::Newer, "a newer version");
        assert_eq!(stmt("2", 1_000).succeeds(&s), Succession::Newer, "the same one again");
        assert_eq!(stmt("2", 2_000).succeeds(&s), Succession::Newer, "signed later");
        assert_eq!(stmt("2", 999).succeeds(&s), Succession::Older, "a cached copy");
        assert_eq!(stmt("1.9", 9_999).succeeds(&s), Succession::Rollback);
        assert_eq!(stmt("10", 1).succeeds(&stmt("9", 5)), Succession::Newer, "numeric order");
    }
}
