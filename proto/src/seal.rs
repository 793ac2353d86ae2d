//! Seals: the seed's signature on what it tells a device about itself, a snapshot record to
//! restore or the layers an administrator planned for it. A device writes a restored record
//! into its root and applies a plan's layers; the seal lets it check, before writing anything,
//! that the seed vouched for exactly this record or this plan, for this device. A server that
//! merely holds some node's key cannot make one.
//!
//! Encoding: `"OSL1" | ed25519 signature (64) | postcard(Seal)`, the signature over
//! [`SEAL_CONTEXT`] followed by the BLAKE3 of the postcard bytes, with the manifest key.

use crate::backup::{encode_plan, DevicePlan};
use crate::envelope::{self, Refused};
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

pub const SEAL_MAGIC: &[u8; 4] = b"OSL1";
/// Domain separation from manifests and latest statements signed with the same key.
pub const SEAL_CONTEXT: &[u8] = b"oasis seal v1\0";
/// Largest encoded seal: two names of at most 255 bytes, a digest, a time, the signature.
pub const MAX_SEAL_BYTES: usize = 700;

/// What a seal vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sealed {
    /// Snapshot `id` of `device`, whose record bytes have this BLAKE3 digest (`RecordRef`).
    SnapshotRecord { device: String, id: String, digest: [u8; 32] },
    /// `device`'s plan, whose `Plan` encoding has this BLAKE3 digest ([`plan_digest`]).
    DevicePlan { device: String, digest: [u8; 32] },
    /// The entitlement statement of `site` (`entitlement::Entitlements`), whose encoding has
    /// this BLAKE3 digest.
    Entitlements { site: String, digest: [u8; 32] },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub sealed: Sealed,
    /// Unix seconds when the seed sealed it.
    pub issued: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("seal: {0}")]
    Malformed(String),
    #[error("seal: the signature does not verify against the trusted manifest key")]
    BadSignature,
    #[error("seal: it vouches for {got}, not for {want}")]
    Mismatch { got: String, want: String },
}

/// BLAKE3 of a plan's wire encoding: what a plan's seal covers.
pub fn plan_digest(plan: &DevicePlan) -> [u8; 32] {
    let mut b = bytes::BytesMut::new();
    encode_plan(plan, &mut b);
    *blake3::hash(&b).as_bytes()
}

impl Sealed {
    fn describe(&self) -> String {
        match self {
            Sealed::SnapshotRecord { device, id, digest } => {
                format!("snapshot {device}@{id} (record {})", hex::encode(&digest[..8]))
            }
            Sealed::DevicePlan { device, digest } => {
                format!("the plan of {device} ({})", hex::encode(&digest[..8]))
            }
            Sealed::Entitlements { site, digest } => {
                format!("the entitlements of site {site} ({})", hex::encode(&digest[..8]))
            }
        }
    }
}

impl Seal {
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let body = postcard::to_stdvec(self).expect("a seal always serializes");
        envelope::seal(SEAL_MAGIC, SEAL_CONTEXT, key, &body)
    }

    /// Opens `bytes` against `key` and checks that the seal vouches for exactly `want`.
    pub fn check(bytes: &[u8], key: &VerifyingKey, want: &Sealed) -> Result<Seal, SealError> {
        let bad = |p: &str| SealError::Malformed(p.to_string());
        if bytes.is_empty() {
            return Err(bad("none was sent (a seed of this version seals every record and plan)"));
        }
        let body =
            envelope::open(bytes, SEAL_MAGIC, SEAL_CONTEXT, key, MAX_SEAL_BYTES).map_err(|r| {
                match r {
                    Refused::TooLarge => bad("over the size limit"),
                    Refused::NotThisKind => bad("truncated, or not a seal (bad magic)"),
                    Refused::BadSignature => SealError::BadSignature,
                }
            })?;
        let seal: Seal = postcard::from_bytes(body).map_err(|_| bad("does not decode"))?;
        if postcard::to_stdvec(&seal).ok().as_deref() != Some(body) {
            return Err(bad("not in canonical form"));
        }
        if &seal.sealed != want {
            return Err(SealError::Mismatch { got: seal.sealed.describe(), want: want.describe() });
        }
        Ok(seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn record(id: &str) -> Sealed {
        Sealed::SnapshotRecord { device: "pc-1".into(), id: id.into(), digest: [4; 32] }
    }

    #[test]
    fn a_seal_vouches_for_exactly_what_it_names() {
        let bytes = Seal { sealed: record("s1"), issued: 9 }.sign(&key(1));
        assert!(bytes.len() <= MAX_SEAL_BYTES);
        let vk = key(1).verifying_key();
        assert_eq!(Seal::check(&bytes, &vk, &record("s1")).unwrap().issued, 9);
        let e = Seal::check(&bytes, &vk, &record("s2")).unwrap_err();
        assert!(e.to_string().contains("vouches for snapshot pc-1@s1"), "{e}");
        assert_eq!(
            Seal::check(&bytes, &key(2).verifying_key(), &record("s1")),
            Err(SealError::BadSignature)
        );
        assert!(Seal::check(&[], &vk, &record("s1")).unwrap_err().to_string().contains("none"));
        let mut flipped = bytes.clone();
        flipped[70] ^= 1;
        assert_eq!(Seal::check(&flipped, &vk, &record("s1")), Err(SealError::BadSignature));
    }

    #[test]
    fn a_plan_seal_covers_every_layer_of_the_plan() {
        let plan = DevicePlan {
            base: Some(("base".into(), "2".into())),
            apps: vec![("office".into(), "1".into())],
        };
        let mut other = plan.clone();
        other.apps[0].1 = "0".into();
        assert_ne!(plan_digest(&plan), plan_digest(&other));
        let want =
            |p: &DevicePlan| Sealed::DevicePlan { device: "pc-1".into(), digest: plan_digest(p) };
        let bytes = Seal { sealed: want(&plan), issued: 1 }.sign(&key(1));
        let vk = key(1).verifying_key();
        assert!(Seal::check(&bytes, &vk, &want(&plan)).is_ok());
        assert!(matches!(Seal::check(&bytes, &vk, &want(&other)), Err(SealError::Mismatch { .. })));
    }
}
