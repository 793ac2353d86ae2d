//! Trees to publish and compare: random, wide and mutated trees, and what a tree holds.

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Shape of a random tree.
#[derive(Clone, Copy)]
pub struct TreeSpec {
    pub small_files: usize,
    pub large_files: usize,
    pub large_size: usize,
    pub depth: usize,
}

/// Writes a random tree: many small files, a few large ones, empty files, symlinks (relative
/// and absolute, dangling included), and a deep directory chain. Deterministic per seed.
pub fn random_tree(root: &Path, seed: u64, spec: TreeSpec) -> std::io::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root)?;
    let dirs = ["etc", "usr/bin", "usr/lib/x86_64", "var/cache", "opt/app/share"];
    for d in dirs {
        std::fs::create_dir_all(root.join(d))?;
    }
    for i in 0..spec.small_files {
        let d = dirs[i % dirs.len()];
        let len = rng.gen_range(0..6000);
        let data: Vec<u8> = (0..len).map(|_| rng.gen_range(b'a'..=b'z')).collect();
        let p = root.join(d).join(format!("f{i}.txt"));
        std::fs::write(&p, data)?;
        if i % 7 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    for i in 0..spec.large_files {
        let mut data = vec![0u8; spec.large_size];
        // Half random, half repetitive text: realistic compressibility.
        rng.fill(&mut data[..spec.large_size / 2]);
        for (j, b) in data[spec.large_size / 2..].iter_mut().enumerate() {
            *b = b"oasis layer data "[j % 17];
        }
        std::fs::write(root.join(format!("usr/lib/x86_64/big{i}.so")), data)?;
    }
    std::fs::write(root.join("etc/empty"), b"")?;
    std::os::unix::fs::symlink("../usr/bin", root.join("etc/bin-link"))?;
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime"))?;
    std::os::unix::fs::symlink("does-not-exist", root.join("var/dangling"))?;
    let mut deep = root.join("deep");
    for i in 0..spec.depth {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep)?;
    std::fs::write(deep.join("bottom.txt"), b"the bottom of a deep tree\n")?;
    Ok(())
}

/// Flips bytes in a copy of the tree so that a few chunks change (for v2 publishes).
pub fn mutate_tree(root: &Path) -> std::io::Result<()> {
    let big = root.join("usr/lib/x86_64/big0.so");
    if big.exists() {
        let mut data = std::fs::read(&big)?;
        let mid = data.len() / 3;
        data[mid..mid + 100].fill(0x42);
        std::fs::write(&big, data)?;
    }
    std::fs::write(root.join("etc/added-in-v2.conf"), b"new = true\n")?;
    Ok(())
}

/// What a tree holds, for comparison: path -> (kind, mode, content hash or link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for de in std::fs::read_dir(&dir).expect("readable") {
            let de = de.expect("entry");
            let p = de.path();
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            if rel.contains(".oasis-tmp") {
                out.insert(rel, "LEFTOVER TEMP FILE".into());
                continue;
            }
            let md = std::fs::symlink_metadata(&p).expect("stat");
            let mode = md.permissions().mode() & 0o7777;
            let v = if md.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).expect("link").display())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else {
                let data = std::fs::read(&p).expect("read");
                format!("file {mode:o} {} {}", data.len(), blake3::hash(&data).to_hex())
            };
            out.insert(rel, v);
        }
    }
    out
}

/// Everything a tree holds that a restore must give back: [`snapshot`]'s kind, mode, content
/// and link target, plus owner, mtime to the nanosecond, extended attributes, and which paths
/// share an inode (named by the first path of the group).
pub fn snapshot_meta(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = snapshot(root);
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for (rel, v) in out.iter_mut() {
        let p = root.join(rel);
        let md = std::fs::symlink_metadata(&p).expect("stat");
        let xattrs = oasis_core::fsmeta::read_xattrs(&p).expect("xattrs");
        let xattrs: Vec<String> =
            xattrs.iter().map(|x| format!("{}={}", x.name, hex_of(&x.value))).collect();
        let mut extra = format!(
            " owner {}:{} mtime {}.{:09} xattrs [{}]",
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            xattrs.join(" ")
        );
        if md.is_file() && md.nlink() > 1 {
            // Paths come in sorted order, so the first of an inode's names is the group's name.
            let first = inodes.entry((md.dev(), md.ino())).or_insert_with(|| rel.clone());
            extra.push_str(&format!(" inode-of {first}"));
        }
        v.push_str(&extra);
    }
    out
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A wide, shallow tree of `entries` entries shaped like a Linux `/usr/share`: directories of
/// a few hundred small files with realistic path lengths, a third of them empty. Cheap to
/// write and to publish, and its manifest is far larger than its content.
pub fn wide_tree(root: &Path, entries: usize) -> std::io::Result<()> {
    let per_dir = 250;
    let mut made = 0;
    let mut d = 0;
    while made < entries {
        let dir = root.join(format!("usr/share/locale-{d:04}/LC_MESSAGES"));
        std::fs::create_dir_all(&dir)?;
        made += if d == 0 { 4 } else { 2 };
        for i in 0..per_dir.min(entries.saturating_sub(made)) {
            let p = dir.join(format!("package-{i:05}-translations.mo"));
            if i % 3 == 0 {
                std::fs::write(&p, b"")?;
            } else {
                std::fs::write(&p, format!("msgid {d} {i}\n"))?;
            }
            made += 1;
        }
        d += 1;
    }
    Ok(())
}

pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !status.success() {
        return Err(std::io::Error::other("cp -a failed"));
    }
    Ok(())
}
