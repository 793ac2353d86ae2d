//! A mesh hello as gossip delivers it: decoded, then its certificate and binding checked
//! against a real trust root (the certificate parser is reached with fuzzed DER).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_core::gossip::{Body, GossipMsg};
use oasis_mesh::binding;
use oasis_mesh::libp2p::PeerId;
use std::sync::OnceLock;

fn trust() -> &'static oasis_core::pki::TrustRoot {
    static TRUST: OnceLock<oasis_core::pki::TrustRoot> = OnceLock::new();
    TRUST.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let auth = oasis_core::pki::SeedAuthority::init(dir.path()).expect("a CA");
        auth.trust().clone()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(GossipMsg { body: Body::Hello(hello), .. }) = GossipMsg::decode(data) {
        let peer = PeerId::from_bytes(&[0, 4, 1, 2, 3, 4]).unwrap_or(PeerId::random());
        let _ = binding::verify_binding(&hello, &peer, trust());
    }
});
