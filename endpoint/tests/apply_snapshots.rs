//! Snapshots, revert and restore-file through the real binary: revert returns the exact
//! earlier tree (contents, modes, symlinks, file times, layers); restore-file brings back one
//! file or directory and nothing else; retention keeps the newest N; an unchanged device is
//! not rehashed.

mod apply_support;

use apply_support::*;
use oasis_core::manifest::LayerKind;
use std::os::unix::fs::PermissionsExt;

async fn device_with_layers() -> Device {
    let d = Device::new().await;
    let (b1, b2) = (d.tmp("b1"), d.tmp("b2"));
    for (dir, v) in [(&b1, 1u64), (&b2, 2)] {
        write(dir, "etc/os-release", format!("VERSION={v}\n").as_bytes());
        write(dir, "usr/lib/lib.so", &noise(v, 200_000));
        write(dir, "usr/share/doc/readme", b"same in both\n");
    }
    d.publish("base", "1", LayerKind::Base, &b1);
    d.publish("base", "2", LayerKind::Base, &b2);
    write(&d.root, "home/u/a.txt", b"first\n");
    write(&d.root, "home/u/docs/report.odt", &noise(50, 120_000));
    write(&d.root, "home/u/docs/notes.md", b"# notes\n");
    std::os::unix::fs::symlink("docs/notes.md", d.root.join("home/u/notes")).unwrap();
    std::fs::set_permissions(d.root.join("home/u/a.txt"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    d.apply("base@1", &[]);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_returns_the_exact_earlier_tree() {
    let d = device_with_layers().await;
    let snap = d.run_json(&["snapshot"]);
    let id = snap["id"].as_u64().unwrap();
    let tree = oasis_testkit::snapshot(&d.root);
    let times = mtimes(&d.root);

    // Much changes: a new layer version, user edits, deletions, a type change, new files.
    d.apply("base@2", &[]);
    write(&d.root, "home/u/a.txt", b"overwritten\n");
    std::fs::remove_dir_all(d.root.join("home/u/docs")).unwrap();
    write(&d.root, "home/u/docs", b"now a file where a directory was\n");
    write(&d.root, "home/u/new/deep/file", b"created after\n");
    std::fs::remove_file(d.root.join("home/u/notes")).unwrap();
    std::os::unix::fs::symlink("elsewhere", d.root.join("home/u/notes")).unwrap();
    assert_ne!(oasis_testkit::snapshot(&d.root), tree);

    let r = d.run_json(&["revert", &id.to_string()]);
    assert_eq!(r["from"], id);
    assert_eq!(oasis_testkit::snapshot(&d.root), tree, "contents, modes, symlinks exactly as then");
    assert_eq!(mtimes(&d.root), times, "file times as then");
    assert_eq!(d.run_json(&["status"])["layers"], serde_json::json!(["base@1"]));

    // The state before the revert was snapshotted too: revert can be undone.
    let before = r["snapshot_before"].as_u64().unwrap();
    d.run_json(&["revert", &before.to_string()]);
    assert_eq!(
        std::fs::read(d.root.join("home/u/docs")).unwrap(),
        b"now a file where a directory was\n"
    );
    assert_eq!(d.run_json(&["status"])["layers"], serde_json::json!(["base@2"]));

    let out = d.run(&["revert", "999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("snapshot 999 does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_file_brings_back_one_path_only() {
    let d = device_with_layers().await;
    let id = d.run_json(&["snapshot"])["id"].as_u64().unwrap();
    let tree = oasis_testkit::snapshot(&d.root);

    std::fs::remove_file(d.root.join("home/u/a.txt")).unwrap();
    write(&d.root, "home/u/docs/notes.md", b"# notes\nruined\n");
    std::fs::remove_file(d.root.join("home/u/docs/report.odt")).unwrap();
    write(&d.root, "home/u/docs/todo.txt", b"new since the snapshot\n");
    write(&d.root, "home/u/other.txt", b"unrelated new file\n");

    let r = d.run_json(&["restore-file", "home/u/a.txt", "--from", &id.to_string()]);
    assert_eq!(r["files_written"], 1);
    assert_eq!(std::fs::read(d.root.join("home/u/a.txt")).unwrap(), b"first\n");
    let now = oasis_testkit::snapshot(&d.root);
    assert_eq!(now["home/u/a.txt"], tree["home/u/a.txt"], "mode restored too");
    assert!(now.contains_key("home/u/other.txt"));
    assert_ne!(
        now["home/u/docs/notes.md"], tree["home/u/docs/notes.md"],
        "only the path asked for"
    );

    // A directory, given as an absolute path: its files come back, newer ones stay.
    let abs = d.root.join("home/u/docs");
    let out = d.run(&["restore-file", abs.to_str().unwrap(), "--from", "latest"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let latest = d.run_json(&["snapshots"]);
    assert!(latest.as_array().unwrap().len() >= 2, "restore-file snapshots the device first");
    // "latest" was the snapshot restore-file itself took (the ruined notes): use the id.
    d.run_json(&["restore-file", abs.to_str().unwrap(), "--from", &id.to_string()]);
    let now = oasis_testkit::snapshot(&d.root);
    for p in ["home/u/docs/notes.md", "home/u/docs/report.odt"] {
        assert_eq!(now[p], tree[p], "{p} back");
    }
    assert!(now.contains_key("home/u/docs/todo.txt"), "files created since are kept");

    for (path, want) in [("home/u/never-existed", "not in snapshot"), ("../etc/passwd", "..")] {
        let out = d.run(&["restore-file", path, "--from", &id.to_string()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{path}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_device_is_not_rehashed_and_retention_keeps_newest() {
    let d = device_with_layers().await;
    let first = d.run_json(&["snapshot"]);
    let second = d.run_json(&["snapshot"]);
    assert!(first["files"].as_u64().unwrap() > 0);
    assert_eq!(second["files_hashed"], 0, "nothing changed, nothing read: {second}");
    assert_eq!(second["chunks_new"], 0);
    assert_eq!(second["files"], first["files"]);
    let full = d.run_json(&["snapshot", "--full-verify"]);
    assert_eq!(full["files_hashed"], full["files"], "--full-verify reads every file");
    assert_eq!(full["changed_behind_stamp"], serde_json::json!([]));

    write(&d.root, "home/u/a.txt", b"changed\n");
    let third = d.run_json(&["snapshot"]);
    assert_eq!(third["files_hashed"], 1, "only the changed file is read");

    let r = d.run_json(&["retention", "--keep", "2"]);
    assert_eq!(r["snapshot_keep"], 2);
    let listed = d.run_json(&["snapshots"]);
    let ids: Vec<u64> =
        listed.as_array().unwrap().iter().map(|s| s["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[1], third["id"].as_u64().unwrap(), "the newest are kept");
    for k in ["id", "created", "reason", "layers", "files", "bytes", "digest"] {
        assert!(listed[0].get(k).is_some(), "snapshots --json has {k}");
    }
    // Pruned snapshots' ids are not reused, and the kept ones still revert.
    let next = d.run_json(&["snapshot"]);
    assert!(next["id"].as_u64().unwrap() > ids[1]);
    d.run_json(&["revert", &ids[1].to_string()]);
    assert_eq!(std::fs::read(d.root.join("home/u/a.txt")).unwrap(), b"changed\n");
    let out = d.run(&["retention", "--keep", "0"]);
    assert!(!out.status.success(), "keeping no snapshot is refused");
}
