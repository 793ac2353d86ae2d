//! The generated OS-shaped trees: names, sizes, depth, shared content, links and metadata.

use super::*;

/// What [`generate_tree`] or [`generate_entries`] wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GenReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Extra names of files (the files themselves are counted once in `files`).
    pub hardlinks: u64,
    pub empty_files: u64,
    /// Files with the same content as another.
    pub duplicate_files: u64,
    pub setid_files: u64,
    pub xattr_files: u64,
    pub bytes: u64,
    pub largest_file: u64,
    pub median_file: u64,
    pub max_depth: u32,
    pub mean_path_bytes: f64,
    pub seconds: f64,
}

impl GenReport {
    pub fn entries(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.hardlinks
    }
}

pub(super) fn below(r: &mut SplitMix, n: usize) -> usize {
    (r.next_u64() % n.max(1) as u64) as usize
}

pub(super) fn unit(r: &mut SplitMix) -> f64 {
    (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal deviate (Box-Muller).
pub(super) fn normal(r: &mut SplitMix) -> f64 {
    let u1 = unit(r).max(1e-300);
    let u2 = unit(r);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Directory and file name parts as they occur under / on a Linux system.
pub(super) const WORDS: &[&str] = &[
    "lib",
    "share",
    "doc",
    "man",
    "locale",
    "icons",
    "hicolor",
    "scalable",
    "apps",
    "python3",
    "dist-packages",
    "site-packages",
    "x86_64-linux-gnu",
    "modules",
    "kernel",
    "drivers",
    "net",
    "firmware",
    "include",
    "linux",
    "gnome",
    "perl5",
    "fonts",
    "truetype",
    "zoneinfo",
    "America",
    "Europe",
    "systemd",
    "system",
    "udev",
    "rules.d",
    "cron.d",
    "default",
    "init.d",
    "alternatives",
    "ssl",
    "certs",
    "mime",
    "packages",
    "texmf",
    "vim",
    "syntax",
    "autoload",
    "plugin",
    "themes",
    "Adwaita",
    "cursors",
    "sounds",
    "backgrounds",
    "applications",
    "dbus-1",
    "services",
    "polkit-1",
    "actions",
    "gtk-3.0",
    "qt5",
    "plugins",
    "translations",
    "help",
    "C",
    "de",
    "fr",
    "ja",
    "zh_CN",
    "LC_MESSAGES",
    "bash-completion",
    "completions",
    "info",
    "common-licenses",
    "xml",
    "sgml",
    "pixmaps",
    "javascript",
    "node_modules",
    "src",
    "test",
    "tests",
    "data",
    "config",
    "util",
    "core",
    "base",
    "misc",
    "tools",
    "bin",
    "sbin",
    "etc",
    "var",
    "cache",
    "log",
    "spool",
    "opt",
    "usr",
    "local",
    "games",
    "cmake",
    "pkgconfig",
    "aclocal",
    "gir-1.0",
    "glib-2.0",
    "schemas",
    "emacs",
    "site-lisp",
    "ruby",
    "gems",
    "go",
    "rustlib",
    "java",
    "jvm",
    "openjdk",
    "security",
    "crypto",
    "sound",
    "video",
    "media",
    "gpu",
    "drm",
    "usb",
    "hid",
    "input",
    "fs",
    "ext4",
    "nfs",
    "block",
    "scsi",
    "arch",
    "x86",
    "boot",
    "efi",
    "grub",
];

pub(super) const SYLLABLES: &[&str] = &[
    "ar", "be", "co", "da", "el", "fi", "go", "ha", "in", "jo", "ka", "lu", "mo", "ne", "or", "pa",
    "qu", "ri", "so", "tu", "ul", "ve", "wi", "xy", "ze", "gtk", "lib", "net", "kde", "sys", "xml",
    "dev", "img", "cfg", "std", "io", "rt", "ssl", "z", "bz",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Source, configuration, documentation: words from a vocabulary, some licence text.
    Text,
    /// Executables and libraries: random code, shared extents, tables.
    Binary,
    /// Already compressed (images, archives): incompressible.
    Packed,
}

pub(super) const EXTS: &[(&str, Kind)] = &[
    (".so", Kind::Binary),
    (".h", Kind::Text),
    (".py", Kind::Text),
    (".txt", Kind::Text),
    ("", Kind::Binary),
    (".gz", Kind::Packed),
    (".png", Kind::Packed),
    (".svg", Kind::Text),
    (".conf", Kind::Text),
    (".mo", Kind::Binary),
    (".html", Kind::Text),
    (".json", Kind::Text),
    (".xml", Kind::Text),
    (".desktop", Kind::Text),
    (".pc", Kind::Text),
    (".a", Kind::Binary),
    (".ko", Kind::Binary),
    (".jar", Kind::Packed),
    (".pyc", Kind::Binary),
    (".md", Kind::Text),
    ("", Kind::Text),
];

pub(super) const BIG_EXTS: &[(&str, Kind)] = &[
    (".so", Kind::Binary),
    ("", Kind::Binary),
    (".ko", Kind::Binary),
    (".a", Kind::Binary),
    (".jar", Kind::Packed),
    (".pack", Kind::Packed),
    (".dat", Kind::Binary),
];

pub(super) fn syllables(r: &mut SplitMix, max: usize) -> String {
    (0..1 + below(r, max)).map(|_| SYLLABLES[below(r, SYLLABLES.len())]).collect()
}

pub(super) fn dir_name(r: &mut SplitMix) -> String {
    let w = WORDS[below(r, WORDS.len())];
    match below(r, 10) {
        0..=5 => w.to_string(),
        6..=7 => format!("{w}-{}", syllables(r, 2)),
        _ => format!("{w}{}.{}", below(r, 10), below(r, 20)),
    }
}

pub(super) fn file_stem(r: &mut SplitMix) -> String {
    match below(r, 10) {
        0..=3 => format!("{}{}", WORDS[below(r, WORDS.len())], syllables(r, 2)),
        4..=6 => format!("{}-{}", syllables(r, 3), syllables(r, 2)),
        _ => format!("{}_{}", WORDS[below(r, WORDS.len())], below(r, 1000)),
    }
}

pub(super) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `dir/name`, or `dir/name.N` for the first N that no earlier entry took.
pub(super) fn unique(taken: &mut HashSet<String>, dir: &str, name: &str) -> String {
    let mut p = join(dir, name);
    let mut i = 1;
    while !taken.insert(p.clone()) {
        p = join(dir, &format!("{name}.{i}"));
        i += 1;
    }
    p
}

/// `n` directories under a root (index 0, ""), each below a uniformly chosen earlier one no
/// deeper than `max_depth - 1`: a random recursive tree, whose depth grows with ln(n) as real
/// file systems' do (~9 levels for 8,000 directories). Parents come before their children.
pub(super) fn build_dirs(
    r: &mut SplitMix,
    n: usize,
    max_depth: u32,
    taken: &mut HashSet<String>,
) -> (Vec<String>, Vec<u32>) {
    let mut paths = vec![String::new()];
    let mut depth = vec![0u32];
    for top in ["bin", "boot", "etc", "lib", "opt", "sbin", "srv", "usr", "var"] {
        if paths.len() > n {
            break;
        }
        paths.push(unique(taken, "", top));
        depth.push(1);
    }
    while paths.len() < n + 1 {
        let p = below(r, paths.len());
        if depth[p] >= max_depth {
            continue;
        }
        let name = dir_name(r);
        let path = unique(taken, &paths[p], &name);
        paths.push(path);
        depth.push(depth[p] + 1);
    }
    (paths, depth)
}

/// A directory for a new file: the deeper of two random ones (files gather in leaves).
pub(super) fn pick_dir(r: &mut SplitMix, depth: &[u32]) -> usize {
    let (a, b) = (below(r, depth.len()), below(r, depth.len()));
    if depth[a] >= depth[b] {
        a
    } else {
        b
    }
}

/// The relative path from directory `from` to `to` (both relative to the tree's root).
pub(super) fn relative(from: &str, to: &str) -> String {
    let a: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let b: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let k = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<&str> = vec![".."; a.len() - k];
    parts.extend(&b[k..]);
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

pub(super) fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Shared material for file contents: a vocabulary, licence-like boilerplate, and a pool
/// of "library code" that binaries embed extents of (so chunks recur across files).
pub(super) struct Pools {
    pub(super) words: Vec<Vec<u8>>,
    pub(super) boiler: Vec<u8>,
    pub(super) shared: Vec<u8>,
}

impl Pools {
    fn new(seed: u64) -> Pools {
        let mut r = SplitMix(seed ^ 0x9e37_79b9);
        let words: Vec<Vec<u8>> = (0..4096)
            .map(|_| {
                let n = 2 + below(&mut r, 9);
                (0..n).map(|_| b"etaoinshrdlucmfwypvb"[below(&mut r, 20)]).collect()
            })
            .collect();
        let mut p = Pools { words, boiler: Vec::new(), shared: vec![0u8; 16 << 20] };
        let mut boiler = Vec::with_capacity(96 << 10);
        while boiler.len() < 64 << 10 {
            p.line(&mut r, &mut boiler);
        }
        p.boiler = boiler;
        let mut shared = std::mem::take(&mut p.shared);
        for block in shared.chunks_mut(64 << 10) {
            if below(&mut r, 3) == 0 {
                // Tables and padding: compressible.
                let mut t = Vec::with_capacity(block.len());
                while t.len() < block.len() {
                    p.line(&mut r, &mut t);
                    t.extend(std::iter::repeat_n(0u8, below(&mut r, 256)));
                }
                block.copy_from_slice(&t[..block.len()]);
            } else {
                r.fill(block);
            }
        }
        p.shared = shared;
        p
    }

    /// One line of 4-12 words; frequent words are likelier (roughly Zipf).
    fn line(&self, r: &mut SplitMix, out: &mut Vec<u8>) {
        let n = self.words.len();
        for i in 0..4 + below(r, 9) {
            if i > 0 {
                out.push(b' ');
            }
            let w = below(r, n) * below(r, n) / n;
            out.extend_from_slice(&self.words[w]);
        }
        out.push(b'\n');
    }

    /// The content of a file: a function of (kind, seed, size) alone, so duplicates are
    /// the same triple.
    fn content(&self, kind: Kind, seed: u64, size: usize) -> Vec<u8> {
        let mut r = SplitMix(seed);
        let mut out = Vec::with_capacity(size + (256 << 10));
        match kind {
            Kind::Packed => {
                out.resize(size, 0);
                r.fill(&mut out);
            }
            Kind::Text => {
                while out.len() < size {
                    if below(&mut r, 40) == 0 {
                        let len = 512 + below(&mut r, 3584);
                        let at = below(&mut r, self.boiler.len() - len);
                        out.extend_from_slice(&self.boiler[at..at + len]);
                    } else {
                        self.line(&mut r, &mut out);
                    }
                }
            }
            Kind::Binary => {
                while out.len() < size {
                    match below(&mut r, 10) {
                        0..=3 => {
                            let at = out.len();
                            out.resize(at + 4096 + below(&mut r, 60 << 10), 0);
                            r.fill(&mut out[at..]);
                        }
                        4..=6 => {
                            let len = (16 << 10) + below(&mut r, 240 << 10);
                            let at = below(&mut r, self.shared.len() - len);
                            out.extend_from_slice(&self.shared[at..at + len]);
                        }
                        _ => {
                            let end = out.len() + 2048 + below(&mut r, 30 << 10);
                            while out.len() < end {
                                self.line(&mut r, &mut out);
                                out.extend(std::iter::repeat_n(0u8, below(&mut r, 64)));
                            }
                        }
                    }
                }
            }
        }
        out.truncate(size);
        out
    }
}

/// Owner, time and (if asked) user xattrs of an entry: mostly root's, some a user's or a
/// service's; mtimes spread over 2015-2024 with nanoseconds.
pub(super) fn gen_meta(r: &mut SplitMix, xattrs: bool) -> Meta {
    const OWNERS: [(u32, u32); 5] = [(1000, 1000), (33, 33), (65534, 65534), (0, 4), (0, 50)];
    let (uid, gid) = if below(r, 100) < 95 { (0, 0) } else { OWNERS[below(r, OWNERS.len())] };
    let mut x = Vec::new();
    if xattrs {
        // Pushed in name order, as Meta wants them.
        let origin = format!("pkg-{}", below(r, 500)).into_bytes();
        if below(r, 2) == 0 {
            let mut v = vec![0u8; 32];
            r.fill(&mut v);
            x.push(Xattr { name: "user.checksum".into(), value: v });
        }
        x.push(Xattr { name: "user.comment".into(), value: b"oasis tree benchmark".to_vec() });
        x.push(Xattr { name: "user.origin".into(), value: origin });
    }
    Meta {
        uid,
        gid,
        mtime: 1_420_070_400 + below(r, 10 * 365 * 86_400) as i64,
        mtime_nsec: below(r, 1_000_000_000) as u32,
        xattrs: x,
    }
}

pub(super) struct PlannedFile {
    pub(super) path: String,
    pub(super) size: u64,
    pub(super) kind: Kind,
    pub(super) content_seed: u64,
    pub(super) mode: u32,
    pub(super) meta: Meta,
    pub(super) duplicate: bool,
}

/// Writes a deterministic OS-shaped tree of `files` regular files totalling about `total`
/// bytes under `root` (which must not exist yet):
/// - sizes log-normal around 3 KiB (sigma 1.6), 3% empty, and a long tail of one file in
///   2,000 (at least 4) log-uniform between 1 and 48 MiB, all scaled so the total is `total`;
/// - one directory per 12 files, a random recursive tree at most 12 deep (~10 typical);
/// - text, binary and already-compressed contents; 5% of the files duplicate an earlier one
///   (same name elsewhere, as licence files and copied headers do), binaries share extents
///   of a 16 MiB pool, texts share licence-like paragraphs;
/// - 4% symlinks (relative to files and directories, some absolute, some dangling), one hard
///   link per 5,000 files (at least 3), one setuid/setgid file per 10,000 (at least 3), user
///   xattrs on one file in 2,000 (at least 5), 5% of entries not owned by root, mtimes
///   spread over ten years with nanoseconds, a few 0700 and sticky directories.
pub fn generate_tree(
    root: &Path,
    files: usize,
    total: u64,
    seed: u64,
) -> anyhow::Result<GenReport> {
    let t0 = Instant::now();
    anyhow::ensure!(!root.exists(), "{} exists already", root.display());
    let mut r = SplitMix(seed);
    let mut taken = HashSet::new();
    let (dirs, depth) = build_dirs(&mut r, (files / 12).max(10), 12, &mut taken);

    // Sizes, scaled to the total.
    let mut raw: Vec<f64> = (0..files)
        .map(|_| {
            if below(&mut r, 100) < 3 {
                0.0
            } else {
                ((3072f64).ln() + 1.6 * normal(&mut r)).exp().min(4.0 * MIB)
            }
        })
        .collect();
    for _ in 0..(files / 2000).max(4).min(files) {
        let i = below(&mut r, files);
        raw[i] = (MIB.ln() + unit(&mut r) * 48f64.ln()).exp();
    }
    let scale = total as f64 / raw.iter().sum::<f64>().max(1.0);

    let mut plan: Vec<PlannedFile> = Vec::with_capacity(files);
    let n_setid = (files / 10_000).max(3);
    let n_xattr = (files / 2000).max(5);
    for (i, raw_size) in raw.iter().enumerate() {
        let size = if *raw_size == 0.0 { 0 } else { (raw_size * scale).round().max(1.0) as u64 };
        let d = pick_dir(&mut r, &depth);
        // Duplicates: an earlier non-empty file below 1 MiB, under its own name, elsewhere.
        if i > 10 && below(&mut r, 100) < 5 {
            let j = below(&mut r, i);
            let o = &plan[j];
            if o.size > 0 && o.size < 1 << 20 && !o.duplicate {
                let name = o.path.rsplit('/').next().unwrap_or("dup").to_string();
                let (size, kind, content_seed, mode) = (o.size, o.kind, o.content_seed, o.mode);
                let path = unique(&mut taken, &dirs[d], &name);
                let meta = gen_meta(&mut r, false);
                plan.push(PlannedFile {
                    path,
                    size,
                    kind,
                    content_seed,
                    mode,
                    meta,
                    duplicate: true,
                });
                continue;
            }
        }
        let (ext, kind) = if size > 512 << 10 {
            BIG_EXTS[below(&mut r, BIG_EXTS.len())]
        } else {
            EXTS[below(&mut r, EXTS.len())]
        };
        let name = format!("{}{ext}", file_stem(&mut r));
        let path = unique(&mut taken, &dirs[d], &name);
        let mode = match (kind, below(&mut r, 100)) {
            (_, 0) => 0o600,
            (_, 1) => 0o444,
            (Kind::Binary, x) if x < 60 => 0o755,
            (Kind::Text, x) if x < 8 => 0o755,
            _ => 0o644,
        };
        let meta = gen_meta(&mut r, i % (files / n_xattr).max(1) == 0);
        plan.push(PlannedFile {
            path,
            size,
            kind,
            content_seed: r.next_u64(),
            mode,
            meta,
            duplicate: false,
        });
    }
    // setuid and setgid executables, spread through the tree.
    let mut rep = GenReport::default();
    for k in 0..n_setid.min(files) {
        let i = (k * files / n_setid.max(1) + 7) % files;
        plan[i].mode = if k % 3 == 2 { 0o2755 } else { 0o4755 };
        rep.setid_files += 1;
    }

    // Write: directories, files, hard links, symlinks, then directory metadata bottom-up.
    let who = Writer::current();
    let mut mr = MetaReport::default();
    std::fs::create_dir_all(root)?;
    for d in &dirs[1..] {
        std::fs::create_dir(root.join(d)).with_context(|| format!("creating {d}"))?;
    }
    let pools = Pools::new(seed);
    let mut sizes = Vec::with_capacity(files);
    let mut path_bytes = 0u64;
    for f in &plan {
        let p = root.join(&f.path);
        let data = pools.content(f.kind, f.content_seed, f.size as usize);
        std::fs::write(&p, &data).with_context(|| format!("writing {}", p.display()))?;
        apply_meta(&p, false, f.mode, &f.meta, who, &mut mr)?;
        rep.files += 1;
        rep.bytes += f.size;
        rep.empty_files += u64::from(f.size == 0);
        rep.duplicate_files += u64::from(f.duplicate);
        rep.xattr_files += u64::from(!f.meta.xattrs.is_empty());
        sizes.push(f.size);
        path_bytes += f.path.len() as u64;
    }
    for _ in 0..(files / 5000).max(3).min(files) {
        let f = &plan[below(&mut r, plan.len())];
        let d = pick_dir(&mut r, &depth);
        let name = f.path.rsplit('/').next().unwrap_or("link").to_string();
        let path = unique(&mut taken, &dirs[d], &name);
        std::fs::hard_link(root.join(&f.path), root.join(&path))
            .with_context(|| format!("linking {path} to {}", f.path))?;
        rep.hardlinks += 1;
        path_bytes += path.len() as u64;
    }
    for _ in 0..(files * 4 / 100).max(3) {
        let d = pick_dir(&mut r, &depth);
        let from = dirs[d].clone();
        let (name, target) = match below(&mut r, 10) {
            0..=5 => {
                let f = &plan[below(&mut r, plan.len())];
                let base = f.path.rsplit('/').next().unwrap_or("f");
                (base.to_string(), relative(&from, &f.path))
            }
            6..=7 => {
                let t = &dirs[1 + below(&mut r, dirs.len() - 1)];
                (dir_name(&mut r), relative(&from, t))
            }
            8 => {
                let f = &plan[below(&mut r, plan.len())];
                (file_stem(&mut r), format!("/{}", f.path))
            }
            _ => (file_stem(&mut r), format!("missing-{}", syllables(&mut r, 3))),
        };
        let path = unique(&mut taken, &from, &name);
        let p = root.join(&path);
        std::os::unix::fs::symlink(&target, &p)
            .with_context(|| format!("creating symlink {path}"))?;
        let mut meta = gen_meta(&mut r, false);
        (meta.uid, meta.gid) = (0, 0);
        apply_meta(&p, true, 0o777, &meta, who, &mut mr)?;
        rep.symlinks += 1;
        path_bytes += path.len() as u64;
    }
    let sticky = [dirs.len() / 3, 2 * dirs.len() / 3];
    for (i, d) in dirs.iter().enumerate().skip(1).rev() {
        let mode = if sticky.contains(&i) {
            0o1777
        } else if below(&mut r, 100) == 0 {
            0o700
        } else {
            0o755
        };
        let meta = gen_meta(&mut r, false);
        apply_meta(&root.join(d), false, mode, &meta, who, &mut mr)?;
        path_bytes += d.len() as u64;
    }
    if let Some(s) = mr.summary() {
        tracing::warn!("generated tree: metadata not applied: {s}");
    }
    sizes.sort_unstable();
    rep.dirs = (dirs.len() - 1) as u64;
    rep.largest_file = sizes.last().copied().unwrap_or(0);
    rep.median_file = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
    rep.max_depth = depth.iter().copied().max().unwrap_or(0);
    rep.mean_path_bytes = path_bytes as f64 / rep.entries().max(1) as f64;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// Writes a layer of `entries` entries under `root` (which must not exist yet): 7%
/// directories at most 8 deep, 3% symlinks to siblings, the rest files, 70% of them empty and
/// the others 1 to 400 bytes of text; paths of 60-80 bytes on average.
pub fn generate_entries(root: &Path, entries: usize, seed: u64) -> anyhow::Result<GenReport> {
    let t0 = Instant::now();
    anyhow::ensure!(!root.exists(), "{} exists already", root.display());
    let mut r = SplitMix(seed ^ 0x1e6);
    let mut taken = HashSet::with_capacity(entries);
    let n_dirs = (entries * 7 / 100).max(10);
    let n_sym = entries * 3 / 100;
    let n_files = entries.saturating_sub(n_dirs + n_sym);
    let (dirs, depth) = build_dirs(&mut r, n_dirs, 8, &mut taken);
    std::fs::create_dir_all(root)?;
    for d in &dirs[1..] {
        std::fs::create_dir(root.join(d)).with_context(|| format!("creating {d}"))?;
    }
    let pools_words: Vec<Vec<u8>> = (0..512)
        .map(|_| (0..2 + below(&mut r, 8)).map(|_| b"etaoinshrdlucm"[below(&mut r, 14)]).collect())
        .collect();
    let mut rep = GenReport::default();
    let mut path_bytes = 0u64;
    let mut files: Vec<String> = Vec::with_capacity(n_files);
    let mut buf = Vec::with_capacity(512);
    for _ in 0..n_files {
        let d = pick_dir(&mut r, &depth);
        let (ext, _) = EXTS[below(&mut r, EXTS.len())];
        let name = format!("{}{ext}", file_stem(&mut r));
        let path = unique(&mut taken, &dirs[d], &name);
        buf.clear();
        if below(&mut r, 100) >= 70 {
            let len = 1 + below(&mut r, 400);
            while buf.len() < len {
                buf.extend_from_slice(&pools_words[below(&mut r, pools_words.len())]);
                buf.push(b' ');
            }
            buf.truncate(len);
        } else {
            rep.empty_files += 1;
        }
        let mut f =
            std::fs::File::create(root.join(&path)).with_context(|| format!("creating {path}"))?;
        f.write_all(&buf)?;
        rep.files += 1;
        rep.bytes += buf.len() as u64;
        path_bytes += path.len() as u64;
        files.push(path);
    }
    for _ in 0..n_sym {
        let Some(t) = files.get(below(&mut r, files.len())) else { break };
        let dir = parent_of(t).to_string();
        let target = t.rsplit('/').next().unwrap_or("x").to_string();
        let path = unique(&mut taken, &dir, &format!("{target}.link"));
        std::os::unix::fs::symlink(&target, root.join(&path))
            .with_context(|| format!("creating symlink {path}"))?;
        rep.symlinks += 1;
        path_bytes += path.len() as u64;
    }
    for d in &dirs[1..] {
        path_bytes += d.len() as u64;
    }
    rep.dirs = (dirs.len() - 1) as u64;
    rep.max_depth = depth.iter().copied().max().unwrap_or(0);
    rep.mean_path_bytes = path_bytes as f64 / rep.entries().max(1) as f64;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_lead_to_the_target() {
        assert_eq!(relative("usr/lib", "usr/share/doc/x"), "../share/doc/x");
        assert_eq!(relative("", "etc/passwd"), "etc/passwd");
        assert_eq!(relative("a/b", "a/b/c"), "c");
        assert_eq!(relative("a/b", "a"), "..");
    }

    #[test]
    fn the_same_seed_gives_the_same_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let ra = generate_tree(&a, 300, 4 << 20, 7).unwrap();
        let rb = generate_tree(&b, 300, 4 << 20, 7).unwrap();
        assert_eq!(
            (ra.files, ra.dirs, ra.symlinks, ra.bytes),
            (rb.files, rb.dirs, rb.symlinks, rb.bytes)
        );
        let (ca, cb) = (count_tree(&a).unwrap(), count_tree(&b).unwrap());
        assert_eq!(ca, cb);
        assert_eq!(ca.entries, ra.entries());
        assert_eq!(ca.files, ra.files + ra.hardlinks, "hard links are regular files on disk");
        assert!(ca.multi_linked >= 2, "no hard links on disk");
        let ratio = ra.bytes as f64 / (4u64 << 20) as f64;
        assert!((0.95..1.05).contains(&ratio), "total {} B for 4 MiB asked", ra.bytes);
    }
}
