//! The envelope the seed's online statements share ("latest" statements and seals):
//! `MAGIC (4) | ed25519 signature (64) | body`, the signature over a context string (one per
//! kind, so that one kind never passes for another) followed by the BLAKE3 of the body.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Why an envelope does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    TooLarge,
    /// Shorter than its header, or another magic.
    NotThisKind,
    BadSignature,
}

fn message(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = context.to_vec();
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

pub(crate) fn seal(magic: &[u8; 4], context: &[u8], key: &SigningKey, body: &[u8]) -> Vec<u8> {
    let signature = key.sign(&message(context, body));
    let mut out = Vec::with_capacity(4 + 64 + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&signature.to_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of `bytes`, once its size, magic and signature check; nothing of the body is read
/// before.
pub(crate) fn open<'a>(
    bytes: &'a [u8],
    magic: &[u8; 4],
    context: &[u8],
    key: &VerifyingKey,
    max: usize,
) -> Result<&'a [u8], Refused> {
    if bytes.len() > max {
        return Err(Refused::TooLarge);
    }
    if bytes.len() < 4 + 64 || &bytes[..4] != magic {
        return Err(Refused::NotThisKind);
    }
    let signature: [u8; 64] = bytes[4..68].try_into().expect("length checked");
    let body = &bytes[68..];
    key.verify(&message(context, body), &Signature::from_bytes(&signature))
        .map_err(|_| Refused::BadSignature)?;
    Ok(body)
}
