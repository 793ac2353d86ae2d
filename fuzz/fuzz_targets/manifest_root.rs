//! A signed manifest root as a cache or a rogue source could send it: the fuzzed bytes are the
//! root body, signed here with a fixed key so that decoding past the signature check is reached
//! (an unsigned root never gets that far).
#![no_main]

use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use oasis_proto::manifest::{SignedRoot, SIGNATURE_CONTEXT};

fuzz_target!(|body: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let digest = blake3::hash(body);
    let mut message = SIGNATURE_CONTEXT.to_vec();
    message.extend_from_slice(digest.as_bytes());
    let mut signed = b"OAS2".to_vec();
    signed.extend_from_slice(&key.sign(&message).to_bytes());
    signed.extend_from_slice(body);
    if let Ok(root) = SignedRoot::open(&signed, &key.verifying_key()) {
        let _ = root.root.unique_body_chunks();
        let _ = root.check_request(&root.root.name, Some(&root.root.version));
    }
    // And unsigned: the same bytes as a whole root must be refused, never panic.
    let _ = SignedRoot::open(body, &key.verifying_key());
});
