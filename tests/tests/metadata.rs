//! The metadata a real OS image has (owners, set-id and sticky bits, nanosecond mtimes,
//! extended attributes, hard links) crosses seed → reflector → endpoint intact.

use oasis_core::pki::Role;
use oasis_endpoint::{fetch, FetchOptions};
use oasis_testkit::{snapshot_meta, TestSeed};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// A small tree with every kind of metadata publish records. Owners other than ours and
/// `security.capability` need root; the caller checks that first.
fn image_like_tree(root: &Path) -> std::io::Result<()> {
    let set_mtime = |p: &Path, s: i64, ns: u32| {
        let t = filetime::FileTime::from_unix_time(s, ns);
        filetime::set_symlink_file_times(p, t, t)
    };
    for d in ["usr/bin", "tmp", "etc/ssl"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let su = root.join("usr/bin/su");
    std::fs::write(&su, b"\x7fELF pretend setuid binary")?;
    std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755))?;
    let wall = root.join("usr/bin/wall");
    std::fs::write(&wall, b"\x7fELF pretend setgid binary")?;
    std::os::unix::fs::chown(&wall, Some(0), Some(5))?;
    std::fs::set_permissions(&wall, std::fs::Permissions::from_mode(0o2755))?;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let ping = root.join("usr/bin/ping");
    std::fs::write(&ping, b"\x7fELF pretend ping")?;
    // cap_net_raw+ep, as `setcap cap_net_raw+ep` writes it (VFS_CAP_REVISION_2).
    let cap: [u8; 20] = [0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    xattr::set(&ping, "security.capability", &cap)?;
    let conf = root.join("etc/ssl/openssl.cnf");
    std::fs::write(&conf, b"[openssl_init]\n")?;
    std::os::unix::fs::chown(&conf, Some(1000), Some(1001))?;
    xattr::set(&conf, "user.origin", b"debian")?;
    // Three names of one inode: the layer must keep them one inode.
    let python = root.join("usr/bin/python3.11");
    std::fs::write(&python, b"\x7fELF pretend python")?;
    std::fs::hard_link(&python, root.join("usr/bin/python3"))?;
    std::fs::hard_link(&python, root.join("usr/bin/python"))?;
    std::os::unix::fs::symlink("python3", root.join("usr/bin/py"))?;
    std::os::unix::fs::lchown(root.join("usr/bin/py"), Some(1000), Some(1000))?;
    for (i, p) in
        ["usr/bin/su", "usr/bin/wall", "usr/bin/ping", "etc/ssl/openssl.cnf", "usr/bin/python3.11"]
            .iter()
            .enumerate()
    {
        set_mtime(&root.join(p), 1_600_000_000 + i as i64, 123_456_789 + i as u32)?;
    }
    set_mtime(&root.join("usr/bin/py"), 1_500_000_000, 42)?;
    // Directories last: writing into them moved their times.
    for (d, s) in [("usr/bin", 1_650_000_000), ("usr", 1_650_000_001), ("tmp", 1_650_000_002)] {
        set_mtime(&root.join(d), s, 999_999_999)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_modes_times_xattrs_and_hard_links_cross_seed_reflector_endpoint(
) -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("SKIPPED: owners and security.capability need root (CI runs as root)");
        return Ok(());
    }
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    std::fs::create_dir_all(&src)?;
    if xattr::set(&src, "user.probe", b"1").is_err() {
        eprintln!("SKIPPED: {} takes no user.* xattrs", src.display());
        return Ok(());
    }
    xattr::remove(&src, "user.probe")?;
    image_like_tree(&src)?;
    let published = seed.publish("img", "1", &src)?;
    assert_eq!(published.files, 5, "hard links are not files of their own");

    let refl = seed.reflector("refl", |_| {}).await?;
    let state = seed.enroll(Role::Endpoint, "ep")?;
    let into = seed.base().join("into");
    let r = fetch(&FetchOptions {
        state_dir: state,
        sources: vec![refl.addr],
        name: "img".into(),
        version: Some("1".into()),
        into: into.clone(),
        streams: 4,
        progress: false,
    })
    .await?;
    assert!(r.not_applied.is_clean(), "as root everything applies: {:?}", r.not_applied);
    let (want, got) = (snapshot_meta(&src), snapshot_meta(&into));
    for (path, w) in &want {
        assert_eq!(got.get(path), Some(w), "{path} differs");
    }
    assert_eq!(want.len(), got.len(), "extra entries: {got:#?}");
    refl.shutdown();
    Ok(())
}
