//! `oasis-seed serve` refuses limits it could not run with, naming the limit, before it opens
//! anything.

use std::process::Command;

const SEED: &str = env!("CARGO_BIN_EXE_oasis-seed");

fn serve_fails_with(flag: &str, value: &str, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("seed");
    let out = Command::new(SEED)
        .args(["serve", "--data", data.to_str().unwrap(), "--listen", "127.0.0.1:0", flag, value])
        .output()
        .expect("run oasis-seed");
    assert!(!out.status.success(), "{flag} {value} was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{flag} {value}: {err}");
    assert!(!data.exists(), "nothing is created for a refused command line");
}

#[test]
fn out_of_range_limits_are_refused_by_name() {
    serve_fails_with(
        "--max-record-assembly-bytes",
        "4KiB",
        "max_record_assembly_bytes must be between 1 MiB and 64 GiB (is 4096 bytes)",
    );
    serve_fails_with(
        "--max-answer-bytes-per-connection",
        "2GiB",
        "max_answer_bytes_per_connection must be between 64 KiB and 1 GiB",
    );
    serve_fails_with("--max-connections", "0", "max_connections must be at least 1");
    serve_fails_with("--latest-ttl", "0s", "latest_ttl must be between 1 s and 30 days (is 0 s)");
    serve_fails_with("--latest-ttl", "31d", "latest_ttl must be between 1 s and 30 days");
}
