//! The seed's signed statements as a cache or a rogue source could send them: a "latest"
//! statement, a seal, and an entitlement statement. The fuzzed bytes are the body, signed here with a fixed key so that
//! decoding past the signature check is reached; the same bytes unsigned must be refused.
#![no_main]

use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use oasis_proto::manifest::latest::{Latest, LATEST_CONTEXT, LATEST_MAGIC};
use oasis_proto::entitlement::Entitlements;
use oasis_proto::seal::{Seal, Sealed, SEAL_CONTEXT, SEAL_MAGIC};

fn signed(magic: &[u8], context: &[u8], key: &SigningKey, body: &[u8]) -> Vec<u8> {
    let mut message = context.to_vec();
    message.extend_from_slice(blake3::hash(body).as_bytes());
    let mut out = magic.to_vec();
    out.extend_from_slice(&key.sign(&message).to_bytes());
    out.extend_from_slice(body);
    out
}

fuzz_target!(|body: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let vk = key.verifying_key();
    if let Ok(l) = Latest::open(&signed(LATEST_MAGIC, LATEST_CONTEXT, &key, body), &vk) {
        let _ = l.check_request(&l.name);
        let _ = l.freshness(u64::MAX);
        let _ = l.succeeds(&l);
        assert_eq!(Latest::open(&l.sign(&key), &vk).ok().as_ref(), Some(&l), "round-trips");
    }
    let want = Sealed::DevicePlan { device: "pc-1".into(), digest: [0; 32] };
    let _ = Seal::check(&signed(SEAL_MAGIC, SEAL_CONTEXT, &key, body), &vk, &want);
    // An entitlement statement: only the canonical form decodes, and it encodes back the same.
    if let Ok(e) = Entitlements::decode(body) {
        assert_eq!(e.encode(), body, "canonical");
        let _ = e.device_may_fetch("pc-1", "base");
        let _ = e.site_may_fetch("base");
    }
    // Unsigned: the bytes as a whole statement or seal never pass.
    let _ = Latest::open(body, &vk);
    let _ = Seal::check(body, &vk, &want);
});
