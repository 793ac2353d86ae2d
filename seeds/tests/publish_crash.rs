//! kill -9 during `oasis-seed publish` never leaves an index entry pointing at missing or
//! partial data, and the next publish of the same layer succeeds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const SEED: &str = env!("CARGO_BIN_EXE_oasis-seed");

fn seed(args: &[&str]) -> std::process::Output {
    Command::new(SEED).args(args).output().expect("run oasis-seed")
}

fn write_source(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x: u64 = 0x1234_5678;
    for i in 0..24 {
        let data: Vec<u8> = (0..(2 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 200) as u8 // half-compressible bytes
            })
            .collect();
        std::fs::write(dir.join(format!("f{i:02}")), data).unwrap();
    }
}

#[test]
fn kill_dash_nine_mid_publish_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    write_source(&src);
    let d = data.to_str().unwrap();
    assert!(seed(&["init", "--data", d]).status.success());
    // Kill at several moments; after each, every index entry must verify.
    let mut interrupted = 0;
    for (i, delay_ms) in [30u64, 80, 150, 250, 400].iter().enumerate() {
        let mut child = Command::new(SEED)
            .args([
                "publish",
                "--data",
                d,
                "--name",
                "big",
                "--version",
                "1",
                src.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(*delay_ms));
        // SIGKILL, as kill -9 does: no destructors, no flush.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let out = seed(&["verify", "--data", d, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "after kill {i} at {delay_ms} ms (exit {status:?}) verify found bad entries: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !status.success() {
            interrupted += 1;
        }
        if status.success() {
            // Finished before the kill landed: later rounds would only hit "already published".
            break;
        }
    }
    assert!(interrupted >= 1, "no kill landed mid-publish: the test proved nothing");
    let listed = seed(&["list", "--data", d, "--json"]);
    let layers: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    if layers.as_array().unwrap().is_empty() {
        let out = seed(&[
            "publish",
            "--data",
            d,
            "--name",
            "big",
            "--version",
            "1",
            "--json",
            src.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = seed(&["verify", "--data", d, "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["chunks_ok"].as_u64().unwrap() > 100, "{v}");
}

#[test]
fn publish_json_reports_what_was_new() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), vec![7u8; 300_000]).unwrap();
    std::fs::write(
        src.join("b"),
        (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let d = data.to_str().unwrap();
    assert!(seed(&["init", "--data", d]).status.success());
    let run = |ver: &str| -> serde_json::Value {
        let out = seed(&[
            "publish",
            "--data",
            d,
            "--name",
            "l",
            "--version",
            ver,
            "--kind",
            "app",
            "--json",
            src.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v1 = run("1");
    for key in ["digest", "files", "bytes", "unique_bytes", "stored_bytes", "new_bytes"] {
        assert!(v1.get(key).is_some(), "missing {key} in {v1}");
    }
    assert_eq!(v1["bytes"], 600_000);
    assert_eq!(v1["new_bytes"], v1["stored_bytes"]);
    assert!(v1["stored_bytes"].as_u64().unwrap() < v1["unique_bytes"].as_u64().unwrap());
    // The same content again: nothing new.
    let v2 = run("2");
    assert_eq!(v2["new_bytes"], 0);
    // Republishing a version is refused with a clear message.
    let out =
        seed(&["publish", "--data", d, "--name", "l", "--version", "1", src.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already published"));
    // So is a version that does not come after the latest: 10 is after 2 (a number), 1.5 is not.
    let v10 = run("10");
    assert_eq!(v10["new_bytes"], 0);
    let out =
        seed(&["publish", "--data", d, "--name", "l", "--version", "1.5", src.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("l@10 is published already") && err.contains("only increase"), "{err}");
    let layers = seed(&["list", "--data", d, "--json"]);
    let listed = String::from_utf8_lossy(&layers.stdout);
    assert!(!listed.contains("1.5"), "the refused version is not stored: {listed}");
}
