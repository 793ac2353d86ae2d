//! A reflector config file (`oasis-reflector serve --config FILE`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_reflector::config::ConfigArgs;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let args = ConfigArgs { config: Some("/fuzz/reflector.toml".into()), ..Default::default() };
    let _ = args.resolve_text(Some(text));
});
