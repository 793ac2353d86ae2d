//! Keeps this crate pure: what it depends on, and what its code calls. The decisions here are
//! the ones the simulator replays on a virtual clock; a socket, a file, a runtime or a clock
//! read would make the daemons and the simulator disagree without anyone noticing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that do I/O, run tasks or speak TLS. None may be in this crate's normal dependencies.
const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "quinn",
    "quinn-udp",
    "sled",
    "rustls",
    "rcgen",
    "ring",
    "aws-lc-rs",
    "axum",
    "hyper",
    "clap",
    "network-interface",
    "tempfile",
    "libp2p",
    "reqwest",
    "indicatif",
    "wol-rs",
    "wol",
    "prometheus-client",
    "tracing-subscriber",
    "filetime",
    "xattr",
    "nix",
];

/// Calls that reach the world from std. Non-test code may not name them.
const FORBIDDEN_CALLS: &[&str] = &[
    "std::fs",
    "fs::",
    "env::",
    "File::",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "Instant::now",
    "SystemTime::now",
    "std::thread",
    "std::env",
    "std::process",
];

#[test]
fn no_dependency_does_io() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", "oasis-proto", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains(&"blake3"), "cargo tree lists the dependencies: {tree}");
    let bad: Vec<&&str> = FORBIDDEN_CRATES.iter().filter(|c| names.contains(c)).collect();
    assert!(bad.is_empty(), "oasis-proto must stay free of I/O, but depends on {bad:?}:\n{tree}");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `text` outside `#[cfg(test)]` modules (a file's unit tests may use the clock and
/// the filesystem), comments cut off, with their 0-based numbers.
fn non_test_lines(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    let (mut after_cfg_test, mut depth) = (false, 0i64);
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap();
        if depth > 0 {
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            continue;
        }
        if code.trim() == "#[cfg(test)]" {
            after_cfg_test = true;
            continue;
        }
        if after_cfg_test && code.contains("mod ") && code.contains('{') {
            depth = code.matches('{').count() as i64 - code.matches('}').count() as i64;
            after_cfg_test = false;
            continue;
        }
        after_cfg_test = false;
        lines.push((n, code));
    }
    lines
}

#[test]
fn no_code_reaches_the_world() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 10, "found the crate's sources: {files:?}");
    let mut found = Vec::new();
    for file in files.iter().filter(|f| f.file_name().unwrap() != "tests.rs") {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in non_test_lines(&text) {
            for call in FORBIDDEN_CALLS.iter().filter(|c| line.contains(*c)) {
                found.push(format!("{}:{}: {call}", file.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "oasis-proto code reaches the world:\n{}", found.join("\n"));
}

#[test]
fn the_simulator_engine_drives_this_crate_only() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../sim/src/engine"), &mut files);
    assert!(files.len() > 3, "found the engine's modules: {files:?}");
    let forbidden =
        ["oasis_core", "oasis_reflector", "oasis_endpoint", "oasis_seed", "oasis_mesh", "tokio"];
    let mut other = Vec::new();
    let mut uses_proto = false;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        uses_proto |= text.contains("oasis_proto::");
        for (n, line) in non_test_lines(&text) {
            if forbidden.iter().any(|c| line.contains(c)) {
                other.push(format!("{}:{}: {line}", file.display(), n + 1));
            }
        }
    }
    assert!(uses_proto, "the engine uses oasis_proto");
    assert!(
        other.is_empty(),
        "the simulator's engine reaches past oasis-proto:\n{}",
        other.join("\n")
    );
}
