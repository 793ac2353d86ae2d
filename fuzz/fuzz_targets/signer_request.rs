//! A request line on the signer socket, as a serving seed (or whatever took it over) could send
//! it: decoded and answered with a real root of trust made once in a temporary directory. The
//! answer is always one JSON object, a result or an error, and never a signature over a root
//! that does not check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_core::pki::SeedAuthority;
use std::sync::OnceLock;

fn keys() -> &'static SeedAuthority {
    static KEYS: OnceLock<(tempfile::TempDir, SeedAuthority)> = OnceLock::new();
    &KEYS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let auth = SeedAuthority::init(&dir.path().join("keys")).expect("root of trust");
            (dir, auth)
        })
        .1
}

fuzz_target!(|line: &[u8]| {
    let answer = oasis_seed::keys::daemon::respond(keys(), line, 0, None);
    assert!(answer.result.is_some() != answer.error.is_some(), "one of result and error");
    let encoded = serde_json::to_vec(&answer).expect("an answer encodes");
    assert!(!encoded.contains(&b'\n'), "an answer is one line");
});
