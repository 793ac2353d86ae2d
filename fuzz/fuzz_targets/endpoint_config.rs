//! An endpoint config file (`STATE/endpoint.toml` or `--config FILE`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_endpoint::config::EndpointConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = EndpointConfig::parse(std::path::Path::new("/fuzz/endpoint.toml"), text);
});
