//! The metadata of a real OS image on a device, through the real binary and a real seed:
//! owners, set-id and sticky bits, nanosecond times, extended attributes and hard links come
//! out of `apply` as the layer has them, are recorded by `snapshot`, and come back exactly with
//! `revert`, `restore-file` and `restore --mode full`. Snapshots stay on the root's filesystem.
//!
//! Owners and `security.capability` need root (CI runs as root); as another user those parts
//! print "SKIPPED" and the test checks that what could not be applied is counted.

mod apply_support;

use apply_support::*;
use oasis_core::manifest::LayerKind;
use oasis_core::pki::{Role, SeedAuthority};
use oasis_endpoint::snapshot::SnapshotDir;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// `security.capability` for cap_net_raw+ep, as `setcap` writes it (VFS_CAP_REVISION_2).
const CAP_NET_RAW: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn is_root() -> bool {
    oasis_core::fsmeta::Writer::current().root
}

fn user_xattrs(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    std::fs::remove_file(&probe).unwrap();
    ok
}

fn set_mtime(p: &Path, s: i64, ns: u32) {
    let t = filetime::FileTime::from_unix_time(s, ns);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An OS-image-like tree: set-uid and set-gid programs, a sticky directory, a file with a
/// capability (root), files of other owners (root), `user.*` attributes (where the
/// filesystem takes them), three names of one inode, and times to the nanosecond.
fn image(dir: &Path, root: bool, xattrs: bool) {
    write(dir, "usr/bin/su", b"\x7fELF pretend setuid binary");
    chmod(&dir.join("usr/bin/su"), 0o4755);
    write(dir, "usr/bin/wall", b"\x7fELF pretend setgid binary");
    chmod(&dir.join("usr/bin/wall"), 0o2755);
    write(dir, "usr/bin/ping", b"\x7fELF pretend ping");
    write(dir, "usr/bin/python3.11", b"\x7fELF pretend python");
    std::fs::hard_link(dir.join("usr/bin/python3.11"), dir.join("usr/bin/python3")).unwrap();
    std::fs::hard_link(dir.join("usr/bin/python3.11"), dir.join("usr/bin/python")).unwrap();
    std::os::unix::fs::symlink("python3", dir.join("usr/bin/py")).unwrap();
    write(dir, "etc/ssl/openssl.cnf", b"[openssl_init]\n");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    chmod(&dir.join("tmp"), 0o1777);
    if root {
        xattr::set(dir.join("usr/bin/ping"), "security.capability", &CAP_NET_RAW).unwrap();
        std::os::unix::fs::chown(dir.join("usr/bin/wall"), Some(0), Some(5)).unwrap();
        chmod(&dir.join("usr/bin/wall"), 0o2755);
        std::os::unix::fs::chown(dir.join("etc/ssl/openssl.cnf"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::lchown(dir.join("usr/bin/py"), Some(1000), Some(1000)).unwrap();
    }
    if xattrs {
        xattr::set(dir.join("etc/ssl/openssl.cnf"), "user.origin", b"debian").unwrap();
    }
    for (i, p) in ["usr/bin/su", "usr/bin/wall", "usr/bin/ping", "usr/bin/python3.11", "usr/bin/py"]
        .iter()
        .chain(&["etc/ssl/openssl.cnf"])
        .enumerate()
    {
        set_mtime(&dir.join(p), 1_600_000_000 + i as i64, 123_456_789 + i as u32);
    }
    // Directories last: writing into them moved their times.
    for (d, s) in [("usr/bin", 1_650_000_000), ("usr", 1_650_000_001), ("tmp", 1_650_000_002)] {
        set_mtime(&dir.join(d), s, 999_999_999);
    }
    for d in ["etc/ssl", "etc"] {
        set_mtime(&dir.join(d), 1_650_000_003, 5);
    }
}

/// User data with metadata: a sticky shared directory, a file with an attribute, a hard link.
fn user_data(root: &Path, as_root: bool, xattrs: bool) {
    write(root, "home/u/a.txt", b"mine\n");
    std::fs::hard_link(root.join("home/u/a.txt"), root.join("home/u/a-too.txt")).unwrap();
    std::fs::create_dir_all(root.join("home/shared")).unwrap();
    chmod(&root.join("home/shared"), 0o1777);
    if xattrs {
        xattr::set(root.join("home/u/a.txt"), "user.tag", b"blue").unwrap();
    }
    if as_root {
        std::os::unix::fs::chown(root.join("home/u/a.txt"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(root.join("home/u"), Some(1000), Some(1000)).unwrap();
    }
    set_mtime(&root.join("home/u/a.txt"), 1_700_000_000, 1);
    for d in ["home/u", "home/shared", "home"] {
        set_mtime(&root.join(d), 1_700_000_001, 2);
    }
}

/// `snapshot_meta` without what a writer that is not root cannot give (the set-id bits of the
/// two programs): those are checked to be counted instead.
fn comparable(mut t: BTreeMap<String, String>, root: bool) -> BTreeMap<String, String> {
    if !root {
        for p in ["usr/bin/su", "usr/bin/wall"] {
            t.remove(p);
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_round_trips_through_apply_snapshot_revert_and_restore() {
    let d = Device::new().await;
    let root = is_root();
    let xattrs = user_xattrs(d.seed.base());
    if !root {
        eprintln!(
            "SKIPPED: owners, set-id bits and security.capability need root (CI runs as root); \
             checking that what cannot be applied is counted"
        );
    }
    if !xattrs {
        eprintln!("SKIPPED part: {} takes no user.* xattrs", d.seed.base().display());
    }
    let img = d.tmp("img");
    image(&img, root, xattrs);
    d.publish("base", "1", LayerKind::Base, &img);

    // apply: the tree exactly as the layer has it.
    let r = d.apply("base@1", &[]);
    assert_eq!(r["hardlinks_written"], 2, "{r}");
    let want = oasis_testkit::snapshot_meta(&img);
    assert_eq!(comparable(oasis_testkit::snapshot_meta(&d.root), root), comparable(want, root));
    if root {
        assert_eq!(r["not_applied"]["owners_not_applied"], 0, "{r}");
        assert_eq!(r["not_applied"]["setid_not_applied"], 0, "{r}");
        assert_eq!(r["not_applied"]["xattrs_not_applied"], 0, "{r}");
    } else {
        assert_eq!(r["not_applied"]["setid_not_applied"], 2, "su and wall: {r}");
        let su = std::fs::metadata(d.root.join("usr/bin/su")).unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o755);
    }
    // The stamps of the files apply wrote were taken after their times and owners were set:
    // the next snapshot reads none of them.
    let s = d.run_json(&["snapshot"]);
    assert_eq!(s["files_hashed"], 0, "{s}");
    assert_eq!(s["hardlinks"], 2, "{s}");

    user_data(&d.root, root, xattrs);
    let snap = d.run_json(&["snapshot"]);
    let id = snap["id"].as_u64().unwrap().to_string();
    assert_eq!(snap["hardlinks"], 3, "{snap}");
    let then = oasis_testkit::snapshot_meta(&d.root);

    // Everything drifts: modes, owners, times, attributes, hard links.
    let p = |rel: &str| d.root.join(rel);
    chmod(&p("usr/bin/su"), 0o755);
    chmod(&p("tmp"), 0o755);
    chmod(&p("home/shared"), 0o755);
    set_mtime(&p("etc/ssl/openssl.cnf"), 5, 5);
    set_mtime(&p("usr/bin/py"), 6, 6);
    std::fs::remove_file(p("usr/bin/python3")).unwrap();
    std::fs::write(p("usr/bin/python3"), b"\x7fELF pretend python").unwrap();
    std::fs::remove_file(p("home/u/a-too.txt")).unwrap();
    if xattrs {
        xattr::remove(p("etc/ssl/openssl.cnf"), "user.origin").unwrap();
        xattr::set(p("home/u/a.txt"), "user.stray", b"x").unwrap();
    }
    if root {
        std::os::unix::fs::chown(p("etc/ssl/openssl.cnf"), Some(0), Some(0)).unwrap();
        std::os::unix::fs::lchown(p("usr/bin/py"), Some(0), Some(0)).unwrap();
        xattr::remove(p("usr/bin/ping"), "security.capability").unwrap();
    }
    assert_ne!(oasis_testkit::snapshot_meta(&d.root), then);

    // revert: every owner, mode, attribute, link and time as then.
    let r = d.run_json(&["revert", &id]);
    assert!(r["not_applied"].is_object(), "{r}");
    assert_eq!(oasis_testkit::snapshot_meta(&d.root), then, "revert gives back the metadata");

    // restore-file of a directory: its entries' metadata and their hard link come back.
    chmod(&p("home/u/a.txt"), 0o600);
    set_mtime(&p("home/u/a.txt"), 9, 9);
    std::fs::remove_file(p("home/u/a-too.txt")).unwrap();
    std::fs::write(p("home/u/a-too.txt"), b"mine\n").unwrap();
    let r = d.run_json(&["restore-file", "home/u", "--from", &id]);
    assert_eq!(r["hardlinks_written"], 1, "{r}");
    assert_eq!(oasis_testkit::snapshot_meta(&d.root), then, "restore-file gives back the metadata");

    // restore --mode full onto a replacement machine (fresh root and state dir).
    let up = d.run(&["upload", "--seed", &d.seed.seed.addr.to_string(), "--snapshot", &id]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let state = d.tmp("replacement-state");
    SeedAuthority::load(&d.seed.data())
        .unwrap()
        .enroll(Role::Endpoint, "pc-1", Some("test"), &state, false)
        .unwrap();
    let new_root = d.tmp("replacement-root");
    let out = std::process::Command::new(BIN)
        .args(["restore", "--from-seed", "pc-1", "--mode", "full", "--json"])
        .args(["--seed", &d.seed.seed.addr.to_string()])
        .arg("--state")
        .arg(&state)
        .arg("--root")
        .arg(&new_root)
        .output()
        .unwrap();
    let r = json_ok(out, "restore --mode full");
    assert_eq!(r["hardlinks"], 3, "{r}");
    assert_eq!(r["not_applied"]["owners_not_applied"], 0, "{r}");
    assert_eq!(
        oasis_testkit::snapshot_meta(&new_root),
        then,
        "restore --mode full gives back the metadata"
    );
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path) -> Option<Mounted> {
    std::fs::create_dir_all(at).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "oasis-test"])
        .arg(at)
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| Mounted(at.to_path_buf()))
}

fn snapshot_paths(d: &Device, id: u64) -> Vec<String> {
    let s = SnapshotDir::new(&d.state).load(id).unwrap();
    s.entries.iter().map(|e| e.entry.path.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_stay_on_the_roots_filesystem_unless_told() {
    let d = Device::new().await;
    write(&d.root, "etc/hostname", b"pc-1\n");
    let Some(_mounted) = (if is_root() { mount_tmpfs(&d.root.join("mnt")) } else { None }) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    write(&d.root, "mnt/inside.txt", b"on another filesystem\n");
    let b = d.tmp("base");
    write(&b, "etc/os-release", b"ID=test\n");
    d.publish("base", "1", LayerKind::Base, &b);
    d.apply("base@1", &[]);

    // By default the snapshot lists the mount point and nothing on it.
    let s = d.run_json(&["snapshot"]);
    assert_eq!(s["other_filesystems"], serde_json::json!(["mnt"]), "{s}");
    let paths = snapshot_paths(&d, s["id"].as_u64().unwrap());
    assert!(paths.contains(&"mnt".to_string()));
    assert!(!paths.iter().any(|p| p.starts_with("mnt/")), "{paths:?}");
    let without = s["id"].as_u64().unwrap().to_string();

    // snapshot_mounts in the config file takes the filesystem in.
    std::fs::write(d.state.join("endpoint.toml"), "snapshot_mounts = [\"/mnt\"]\n").unwrap();
    let s = d.run_json(&["snapshot"]);
    assert_eq!(s["included_filesystems"], serde_json::json!(["mnt"]), "{s}");
    assert!(snapshot_paths(&d, s["id"].as_u64().unwrap()).contains(&"mnt/inside.txt".into()));
    let with = s["id"].as_u64().unwrap().to_string();

    // Reverting writes on that filesystem through a staging directory of its own.
    write(&d.root, "mnt/inside.txt", b"changed\n");
    write(&d.root, "mnt/new.txt", b"new\n");
    d.run_json(&["revert", &with]);
    assert_eq!(std::fs::read(d.root.join("mnt/inside.txt")).unwrap(), b"on another filesystem\n");
    assert!(!d.root.join("mnt/new.txt").exists());

    // Without it, a revert leaves the other filesystem alone (and the mount point in place).
    std::fs::remove_file(d.state.join("endpoint.toml")).unwrap();
    write(&d.root, "mnt/new.txt", b"new\n");
    let r = d.run_json(&["revert", &without]);
    assert!(d.root.join("mnt/new.txt").exists(), "{r}");
    // And one to the snapshot that had the files on it says what it left alone.
    let r = d.run_json(&["revert", &with]);
    let skipped = r["skipped"].as_array().unwrap();
    assert!(skipped.iter().any(|s| s.as_str().unwrap().starts_with("mnt/inside.txt")), "{r}");
    assert_eq!(std::fs::read(d.root.join("mnt/new.txt")).unwrap(), b"new\n");
}
