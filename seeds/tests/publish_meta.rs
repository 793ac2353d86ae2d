//! `oasis-seed publish` records what an OS image needs restored: owners, setuid/setgid/sticky
//! bits, nanosecond mtimes, extended attributes (user.* and security.capability) and hard
//! links; and it refuses what a layer cannot hold (a FIFO) naming the path.

use oasis_core::manifest::{Entry, Node, Xattr};
use oasis_core::pki::SeedAuthority;
use oasis_core::store::ChunkStore;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SEED: &str = env!("CARGO_BIN_EXE_oasis-seed");

fn seed(args: &[&str]) -> std::process::Output {
    Command::new(SEED).args(args).output().expect("run oasis-seed")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn set_mtime(path: &Path, sec: u64, nsec: u32) {
    let t = UNIX_EPOCH + Duration::new(sec, nsec);
    let f = std::fs::File::open(path).unwrap();
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(SystemTime::now())).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// security.capability granting cap_net_raw (13), effective: VFS_CAP_REVISION_2 layout.
fn net_raw_capability() -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

fn entry<'a>(entries: &'a [Entry], path: &str) -> &'a Entry {
    entries.iter().find(|e| e.path == path).unwrap_or_else(|| panic!("no entry {path}"))
}

#[test]
fn publish_records_owners_modes_times_xattrs_and_hard_links() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, src) = (tmp.path().join("data"), tmp.path().join("src"));
    let root = is_root();
    if !root {
        eprintln!(
            "SKIPPED part: not root, so no chown to another owner and no security.capability"
        );
    }
    for d in ["bin", "etc", "data", "tmp"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("bin/su"), b"setuid binary").unwrap();
    chmod(&src.join("bin/su"), 0o4755);
    std::fs::write(src.join("bin/wall"), b"setgid binary").unwrap();
    chmod(&src.join("bin/wall"), 0o2755);
    std::fs::write(src.join("bin/ping"), b"needs cap_net_raw").unwrap();
    chmod(&src.join("bin/ping"), 0o755);
    chmod(&src.join("tmp"), 0o1777);
    std::fs::write(src.join("etc/note"), b"annotated").unwrap();
    std::fs::write(src.join("etc/empty"), b"").unwrap();
    std::fs::write(src.join("data/a"), b"one inode, three names").unwrap();
    std::fs::hard_link(src.join("data/a"), src.join("data/z")).unwrap();
    std::fs::hard_link(src.join("data/a"), src.join("data/m")).unwrap();
    std::os::unix::fs::symlink("su", src.join("bin/sh")).unwrap();

    // user.* attributes where the filesystem takes them.
    let user_xattrs = xattr::set(src.join("etc/note"), "user.b", b"2").is_ok();
    if user_xattrs {
        xattr::set(src.join("etc/note"), "user.a", b"1").unwrap();
    } else {
        eprintln!("SKIPPED part: {} takes no user.* xattrs", src.display());
    }
    let cap = root
        && xattr::set(src.join("bin/ping"), "security.capability", &net_raw_capability()).is_ok();
    if root && !cap {
        eprintln!("SKIPPED part: {} takes no security.capability", src.display());
    }
    if root {
        std::os::unix::fs::chown(src.join("etc/note"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::chown(src.join("data/a"), Some(2000), Some(2001)).unwrap();
        std::os::unix::fs::lchown(src.join("bin/sh"), Some(3000), Some(3001)).unwrap();
        std::os::unix::fs::chown(src.join("tmp"), Some(4000), Some(4001)).unwrap();
        // chown clears setuid/setgid: set them again.
        chmod(&src.join("bin/su"), 0o4755);
    }
    set_mtime(&src.join("etc/note"), 1_600_000_000, 123_456_789);
    set_mtime(&src.join("data/a"), 1_500_000_000, 987_654_321);
    let touched = Command::new("touch")
        .args(["-h", "-d", "@1400000000.000000042"])
        .arg(src.join("bin/sh"))
        .status()
        .is_ok_and(|s| s.success());
    // Directories last: adding entries changes their mtime.
    set_mtime(&src.join("tmp"), 1_300_000_000, 7);

    let d = data.to_str().unwrap();
    assert!(seed(&["init", "--data", d]).status.success());
    let out = seed(&[
        "publish",
        "--data",
        d,
        "--name",
        "os",
        "--version",
        "1",
        "--json",
        src.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Regular files, each inode once: su, wall, ping, note, empty and a (z and m are links).
    assert_eq!(report["files"], 6, "{report}");
    assert_eq!(report["hardlinks"], 2, "{report}");
    assert_eq!(report["symlinks"], 1, "{report}");
    assert_eq!(report["dirs"], 4, "{report}");
    assert!(report["body_bytes"].as_u64().unwrap() > 0, "{report}");
    assert!(report["body_chunks"].as_u64().unwrap() >= 1, "{report}");

    let auth = SeedAuthority::load(&data).unwrap();
    let store = ChunkStore::open(&data.join("store")).unwrap();
    let sm = store.open_manifest("os", Some("1"), auth.trust().manifest_key()).unwrap().unwrap();
    assert_eq!(sm.digest_hex(), report["digest"].as_str().unwrap());
    let m = &sm.manifest.entries;

    let su = entry(m, "bin/su");
    assert_eq!(su.mode, 0o4755, "setuid kept");
    assert_eq!(entry(m, "bin/wall").mode, 0o2755, "setgid kept");
    assert_eq!(entry(m, "tmp").mode, 0o1777, "sticky kept");
    assert!(matches!(entry(m, "tmp").node, Node::Dir));
    assert_eq!((entry(m, "tmp").meta.mtime, entry(m, "tmp").meta.mtime_nsec), (1_300_000_000, 7));

    let note = entry(m, "etc/note");
    assert_eq!((note.meta.mtime, note.meta.mtime_nsec), (1_600_000_000, 123_456_789));
    if user_xattrs {
        assert_eq!(
            note.meta.xattrs,
            vec![
                Xattr { name: "user.a".into(), value: b"1".to_vec() },
                Xattr { name: "user.b".into(), value: b"2".to_vec() },
            ]
        );
    }
    if cap {
        assert_eq!(
            entry(m, "bin/ping").meta.xattrs,
            vec![Xattr { name: "security.capability".into(), value: net_raw_capability() }]
        );
    }
    assert!(
        matches!(&entry(m, "etc/empty").node, Node::File { size: 0, chunks } if chunks.is_empty())
    );

    let a = entry(m, "data/a");
    assert!(matches!(&a.node, Node::File { size: 22, chunks } if chunks.len() == 1), "{a:?}");
    assert_eq!((a.meta.mtime, a.meta.mtime_nsec), (1_500_000_000, 987_654_321));
    for link in ["data/m", "data/z"] {
        let l = entry(m, link);
        assert_eq!(l.node, Node::Hardlink { target: "data/a".into() }, "{link}");
        assert_eq!((l.mode, &l.meta), (a.mode, &a.meta), "{link} has its inode's metadata");
    }

    let sh = entry(m, "bin/sh");
    assert_eq!(sh.node, Node::Symlink { target: "su".into() });
    assert_eq!(sh.mode, 0o777);
    if touched {
        assert_eq!(
            (sh.meta.mtime, sh.meta.mtime_nsec),
            (1_400_000_000, 42),
            "the link's own mtime"
        );
    }

    if root {
        assert_eq!((note.meta.uid, note.meta.gid), (1234, 5678));
        assert_eq!((a.meta.uid, a.meta.gid), (2000, 2001));
        assert_eq!((sh.meta.uid, sh.meta.gid), (3000, 3001), "the link's own owner (lstat)");
        assert_eq!((entry(m, "tmp").meta.uid, entry(m, "tmp").meta.gid), (4000, 4001));
    }

    // `show` gives the same to people.
    drop(store);
    let out = seed(&["show", "--data", d, "os@1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let su_json = shown["entries"].as_array().unwrap().iter().find(|e| e["path"] == "bin/su");
    assert_eq!(su_json.unwrap()["mode"], "4755");
    let z_json = shown["entries"].as_array().unwrap().iter().find(|e| e["path"] == "data/z");
    assert_eq!(z_json.unwrap()["type"], "hardlink");

    // The same tree again as version 2: every file chunk and body chunk is already stored.
    let out = seed(&[
        "publish",
        "--data",
        d,
        "--name",
        "os",
        "--version",
        "2",
        "--json",
        src.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v2: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v2["new_chunks"].as_u64(), v2["new_body_chunks"].as_u64()), (Some(0), Some(0)));
    let out = seed(&["verify", "--data", d, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifests_ok"], 2, "{v}");
}

#[test]
fn a_fifo_is_refused_naming_it_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, src) = (tmp.path().join("data"), tmp.path().join("src"));
    std::fs::create_dir_all(src.join("run")).unwrap();
    std::fs::write(src.join("a"), vec![5u8; 100_000]).unwrap();
    let fifo = src.join("run/initctl");
    if !Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mkfifo is not available");
        return;
    }
    let d = data.to_str().unwrap();
    assert!(seed(&["init", "--data", d]).status.success());
    let out =
        seed(&["publish", "--data", d, "--name", "os", "--version", "1", src.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&fifo.display().to_string()) && err.contains("FIFO"), "{err}");
    let out = seed(&["verify", "--data", d, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["chunks_ok"].as_u64(), v["manifests_ok"].as_u64()), (Some(0), Some(0)), "{v}");
}

/// Files larger than one read are cut exactly where cutting them whole in memory cuts them
/// (an endpoint re-chunking its disk finds the same chunks), small and empty files too.
#[test]
fn chunks_are_those_of_cutting_each_file_whole() {
    use oasis_core::chunk::{cut, ChunkId, ChunkParams};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let files = [("big", bytes(5 << 20)), ("edge", bytes(1 << 20)), ("small", bytes(3000))];
    for (name, data) in &files {
        std::fs::write(src.join(name), data).unwrap();
    }
    std::fs::write(src.join("zero"), b"").unwrap();
    let store = ChunkStore::open(&tmp.path().join("store")).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let opts = oasis_seed::PublishOptions {
        name: "cut".into(),
        version: "1".into(),
        kind: oasis_core::manifest::LayerKind::App,
        chunking: ChunkParams::default(),
        progress: false,
    };
    let (sm, report) = oasis_seed::publish(&store, &key, &src, &opts).unwrap();
    assert_eq!(report.files, 4);
    for (name, data) in &files {
        let want: Vec<(ChunkId, u32)> = cut(data, &opts.chunking)
            .iter()
            .map(|s| {
                let (o, l) = (s.offset as usize, s.len as usize);
                (ChunkId::of(&data[o..o + l]), s.len)
            })
            .collect();
        let Node::File { size, chunks } = &entry(&sm.manifest.entries, name).node else {
            panic!("{name} is not a file")
        };
        assert_eq!(*size, data.len() as u64, "{name}");
        let got: Vec<(ChunkId, u32)> = chunks.iter().map(|c| (c.id, c.len)).collect();
        assert_eq!(got, want, "{name}");
        for c in chunks {
            assert_eq!(store.entry(&c.id).unwrap().unwrap().refs, 1, "{name}: one layer refers");
        }
    }
}
