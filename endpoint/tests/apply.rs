//! `oasis-endpoint apply` against a real seed over QUIC: base and app layers applied in place
//! over a root holding user files, then a new version; conflicts refused before any change.

mod apply_support;

use apply_support::*;
use oasis_core::manifest::LayerKind;
use std::os::unix::fs::PermissionsExt;

fn base_tree(dir: &std::path::Path, v: u32) {
    write(dir, "etc/motd", format!("welcome to version {v}\n").as_bytes());
    write(dir, "etc/hostname", b"it-managed-name\n");
    write(dir, "usr/lib/libbig.so", &noise(1, 400_000 + v as usize * 10));
    write(dir, "usr/bin/tool", &noise(2, 50_000));
    std::fs::set_permissions(dir.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", dir.join("etc/tool-link")).unwrap();
    if v == 1 {
        write(dir, "etc/dropped-in-v2.conf", b"old = 1\n");
        write(dir, "etc/user-edits-this.conf", b"default = 1\n");
        write(dir, "var/old/cache.db", b"v1 cache\n");
    } else {
        write(dir, "etc/new-in-v2.conf", b"new = 2\n");
        // Same path, new content: only changed chunks cross the wire.
        let mut big = noise(1, 400_000 + v as usize * 10);
        big[1000..1100].fill(7);
        write(dir, "usr/lib/libbig.so", &big);
    }
}

fn app_tree(dir: &std::path::Path, name: &str, v: u32) {
    write(
        dir,
        &format!("opt/{name}/bin/{name}"),
        format!("#!/bin/sh\necho {name} {v}\n").as_bytes(),
    );
    write(
        dir,
        &format!("opt/{name}/share/data.bin"),
        &noise(v as u64 * 100 + name.len() as u64, 70_000),
    );
    write(dir, "etc/shared-by-apps.d/.keep", b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_then_v2_with_apps_keeps_user_files() {
    let d = Device::new().await;
    let (b1, b2, a1, a2, n1) =
        (d.tmp("base1"), d.tmp("base2"), d.tmp("app1"), d.tmp("app1v2"), d.tmp("notes"));
    base_tree(&b1, 1);
    base_tree(&b2, 2);
    app_tree(&a1, "editor", 1);
    app_tree(&a2, "editor", 2);
    app_tree(&n1, "notes", 1);
    d.publish("base", "1", LayerKind::Base, &b1);
    d.publish("base", "2", LayerKind::Base, &b2);
    d.publish("editor", "1", LayerKind::App, &a1);
    d.publish("editor", "2", LayerKind::App, &a2);
    d.publish("notes", "1", LayerKind::App, &n1);

    // The user's data, including a file where the base layer puts one of its own.
    let root = &d.root;
    write(root, "home/alice/thesis.txt", b"chapter one\n");
    write(root, "home/alice/photo.raw", &noise(9, 300_000));
    std::os::unix::fs::symlink("thesis.txt", root.join("home/alice/latest")).unwrap();
    write(root, "etc/hostname", b"alices-laptop\n");
    write(root, "etc/user-own.conf", b"mine\n");
    let before = oasis_testkit::snapshot(root);

    let r = d.apply("base@1", &["editor@1", "notes@1"]);
    assert_eq!(r["layers"], serde_json::json!(["base@1", "editor@1", "notes@1"]));
    assert_eq!(r["user_files_replaced"], serde_json::json!(["etc/hostname"]));
    let it1 = expected_it(&[&b1, &a1, &n1]);
    let now = oasis_testkit::snapshot(root);
    let (it_now, user_now) = split(&now, &it1);
    assert_eq!(it_now, it1, "every IT file as the layers say");
    let (_, user_before) = split(&before, &it1);
    assert_eq!(user_now, user_before, "every user file untouched");
    let pre_apply = r["snapshot"].as_u64().unwrap();

    // The user's own hostname is in the snapshot taken before: bring it back elsewhere.
    let listed = d.run_json(&["snapshots"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0]["reason"].as_str().unwrap().contains("before apply"));

    // Between versions the user edits an IT file that v2 drops, and adds data.
    write(root, "etc/user-edits-this.conf", b"default = 1\nmine = 2\n");
    write(root, "home/alice/new.txt", b"written between versions\n");
    let before2 = oasis_testkit::snapshot(root);

    let r = d.apply("base@2", &["editor@2", "notes@1"]);
    assert_eq!(r["previous"], serde_json::json!(["base@1", "editor@1", "notes@1"]));
    assert_eq!(r["kept_user_changed"], serde_json::json!(["etc/user-edits-this.conf"]));
    assert!(
        r["fetch"]["chunks_fetched"].as_u64().unwrap()
            < r["fetch"]["chunks_total"].as_u64().unwrap(),
        "v2 fetches only what the store lacks: {r}"
    );
    let it2 = expected_it(&[&b2, &a2, &n1]);
    let now = oasis_testkit::snapshot(root);
    let (it_now, user_now) = split(&now, &it2);
    assert_eq!(it_now, it2, "every IT file as the v2 layers say");
    for gone in ["etc/dropped-in-v2.conf", "var/old/cache.db", "var/old"] {
        assert!(!now.contains_key(gone), "{gone} dropped by v2 and unchanged: removed");
    }
    let mut want_user = split(&before2, &it1).1;
    want_user
        .insert("etc/user-edits-this.conf".into(), before2["etc/user-edits-this.conf"].clone());
    assert_eq!(user_now, want_user, "user files untouched, the edited dropped file kept");

    // Applying the same versions again changes nothing.
    let r = d.apply("base@2", &["editor@2", "notes@1"]);
    assert_eq!(r["files_written"], 0);
    assert_eq!(r["removed"], 0);
    assert_eq!(r["fetch"]["chunks_fetched"], 0);
    assert_eq!(oasis_testkit::snapshot(root), now);

    // The user's hostname from before the first apply is restorable.
    let out = d.run(&["restore-file", "etc/hostname", "--from", &pre_apply.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"alices-laptop\n");

    let st = d.run_json(&["status"]);
    assert_eq!(st["layers"], serde_json::json!(["base@2", "editor@2", "notes@1"]));

    // Going back to an older version is refused before anything is fetched or written, unless
    // asked for.
    let now = oasis_testkit::snapshot(root);
    let snapshots = d.run_json(&["snapshots"]).as_array().unwrap().len();
    let out = d.apply_cmd("base@2", &["editor@1", "notes@1"]).output().unwrap();
    assert!(!out.status.success(), "a downgrade was applied");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("editor@1 is older than editor@2") && err.contains("--allow-downgrade"),
        "{err}"
    );
    assert_eq!(oasis_testkit::snapshot(root), now, "nothing changed");
    assert_eq!(d.run_json(&["snapshots"]).as_array().unwrap().len(), snapshots);
    let out = d.apply_cmd("base@2", &["editor@1", "notes@1"]).arg("--allow-downgrade").output();
    let r = json_ok(out.unwrap(), "apply --allow-downgrade");
    assert_eq!(r["layers"], serde_json::json!(["base@2", "editor@1", "notes@1"]));
    let it = expected_it(&[&b2, &a1, &n1]);
    assert_eq!(split(&oasis_testkit::snapshot(root), &it).0, it, "editor is at v1 again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_conflict_is_named_before_anything_changes() {
    let d = Device::new().await;
    let (b, x, y) = (d.tmp("base"), d.tmp("x"), d.tmp("y"));
    base_tree(&b, 1);
    write(&x, "opt/shared/config", b"x wants this\n");
    write(&y, "opt/shared/config", b"y wants that\n");
    d.publish("base", "1", LayerKind::Base, &b);
    d.publish("x", "1", LayerKind::App, &x);
    d.publish("y", "1", LayerKind::App, &y);
    write(&d.root, "home/bob/notes.txt", b"bob\n");
    let before = oasis_testkit::snapshot(&d.root);

    let out = d.apply_cmd("base@1", &["x@1", "y@1"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("x@1") && err.contains("y@1") && err.contains("opt/shared/config"),
        "{err}"
    );
    assert_eq!(oasis_testkit::snapshot(&d.root), before, "nothing changed");
    assert_eq!(d.run_json(&["status"])["layers"], serde_json::json!([]));

    // A base layer given as an app, and a malformed NAME@VERSION, are refused by name too.
    let out = d.apply_cmd("x@1", &[]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("base layer"));
    let out = d.apply_cmd("base", &[]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAME@VERSION"));
    assert_eq!(oasis_testkit::snapshot(&d.root), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotted_cache_chunks_are_never_written_and_are_fetched_again() {
    let d = Device::new().await;
    let b = d.tmp("base");
    base_tree(&b, 1);
    d.publish("base", "1", LayerKind::Base, &b);
    d.apply("base@1", &[]);
    let it = expected_it(&[&b]);

    // Every chunk in the endpoint's store rots (one byte flipped in its pack), then two IT
    // files go missing from the root, so the next apply writes them again from the store.
    {
        let store = oasis_core::store::ChunkStore::open(&d.state.join("cache")).unwrap();
        let ids: Vec<_> = store.ids().map(|r| r.unwrap().0).collect();
        assert!(ids.len() > 3, "the layer's chunks are in the store");
        for id in &ids {
            let (pack, offset, len) = store.chunk_location(id).unwrap().unwrap();
            let f = std::fs::OpenOptions::new().read(true).write(true).open(&pack).unwrap();
            use std::os::unix::fs::FileExt;
            let at = offset + len as u64 / 2;
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, at).unwrap();
            f.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
        }
    }
    std::fs::remove_file(d.root.join("usr/lib/libbig.so")).unwrap();
    std::fs::remove_file(d.root.join("usr/bin/tool")).unwrap();

    let r = d.apply("base@1", &[]);
    assert_eq!(r["files_written"], 2, "{r}");
    assert!(r["fetch"]["chunks_fetched"].as_u64().unwrap() > 0, "damaged chunks refetched: {r}");
    let (it_now, _) = split(&oasis_testkit::snapshot(&d.root), &it);
    assert_eq!(it_now, it, "every IT file byte-identical to the layer, none from a rotted chunk");
    let leftovers: Vec<_> = std::fs::read_dir(&d.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".oasis-stage."))
        .collect();
    assert!(leftovers.is_empty(), "the failed staging left nothing behind");
}

/// Runs `cmd` under a shell with the open-descriptor limit lowered to `limit`.
fn with_nofile(limit: u32, cmd: &std::process::Command) -> std::process::Command {
    let mut c = std::process::Command::new("sh");
    c.arg("-c").arg(format!("ulimit -n {limit} && exec \"$@\"")).arg("sh");
    c.arg(cmd.get_program()).args(cmd.get_args());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_of_more_files_than_open_descriptors_applies_and_fetches() {
    // A base image has far more files than a process may hold open (1,024 by default): neither
    // apply nor fetch may keep a descriptor per file until the commit.
    const FILES: usize = 1_500;
    const NOFILE: u32 = 256;
    let d = Device::new().await;
    let src = d.tmp("many");
    for i in 0..FILES {
        write(&src, &format!("usr/share/doc/pkg{:03}/f{i}", i % 97), &noise(i as u64, 600 + i));
    }
    d.publish("many", "1", LayerKind::Base, &src);
    let want = oasis_testkit::snapshot(&src);

    let out = with_nofile(NOFILE, &d.apply_cmd("many@1", &[])).output().unwrap();
    let r = json_ok(out, &format!("apply under ulimit -n {NOFILE}"));
    assert_eq!(r["files_written"], FILES as u64, "{r}");
    let (it_now, _) = split(&oasis_testkit::snapshot(&d.root), &want);
    assert_eq!(it_now, want, "every file of the layer, byte for byte");

    let dir = d.tmp("fetched");
    let mut fetch = std::process::Command::new(BIN);
    fetch
        .args(["fetch", "--layer", "many@1", "--from", &d.seed.seed.addr.to_string(), "--json"])
        .arg("--state")
        .arg(&d.state)
        .arg("--into")
        .arg(&dir);
    json_ok(with_nofile(NOFILE, &fetch).output().unwrap(), "fetch under a low ulimit -n");
    assert_eq!(oasis_testkit::snapshot(&dir), want, "the fetched directory is the layer");
}
