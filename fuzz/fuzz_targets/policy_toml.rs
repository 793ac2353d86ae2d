//! A bandwidth policy file, as network ops write it and the reflector reloads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_proto::policy::BandwidthPolicy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = BandwidthPolicy::from_toml_str(text, "fuzz.toml") {
        let _ = p.default_rate();
    }
});
