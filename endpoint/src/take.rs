//! Taking a snapshot of a device root: walk the tree, chunk and store the files that changed,
//! reuse the chunk lists of files whose stamp (device, inode, size, mtime, ctime) did not
//! change since they were last hashed (as restic and borg do), and write the snapshot file.
//!
//! The stamp cache (`STATE_DIR/snapshots/stamps.bin`) remembers, per path, the stamp and chunk
//! list last seen; apply adds the files it wrote (it knows their chunks from the manifest), so
//! the snapshot after an apply does not rehash the layer either. `full_verify` ignores the
//! cache and rehashes everything.
//!
//! Every entry records owner, mode, mtime to the nanosecond and extended attributes
//! ([`oasis_core::fsmeta::read_meta`]); a file with several names under the root is read once,
//! its first path (byte order) a file entry and the others [`Node::Hardlink`]s to it.
//!
//! The walk stays on the root's filesystem: a directory where another filesystem is mounted
//! (`/proc`, `/sys`, `/dev`, `/run`, a tmpfs) is listed, but not descended into, unless it is
//! one of [`TakeOptions::include_mounts`].

use crate::snapshot::SNAPSHOT_FORMAT;
use crate::snapshot::{write_durably, AppliedLayer, Owner, SnapEntry, Snapshot, SnapshotDir};
use anyhow::Context;
use indicatif::ProgressBar;
use oasis_core::chunk::{self, ChunkParams};
use oasis_core::compress::StoredChunk;
use oasis_core::fsmeta;
use oasis_core::manifest::{ChunkRef, Entry, Meta, Node};
use oasis_core::store::ChunkStore;
use oasis_core::ChunkId;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Names the agent itself creates inside a root (staging areas, fetch temporaries); never part
/// of a snapshot.
pub fn is_agent_temp(name: &str) -> bool {
    name.starts_with(crate::journal::STAGE_PREFIX)
        || name.starts_with(crate::tree_writer::TEMP_PREFIX)
}

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(md: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stamped {
    pub stamp: Stamp,
    pub chunks: Vec<ChunkRef>,
}

/// Path -> last stamp and chunk list, for the chunking in `chunking`.
#[derive(Default, Debug, Serialize, Deserialize)]
pub struct StampCache {
    pub chunking: Option<ChunkParams>,
    pub files: HashMap<String, Stamped>,
}

impl StampCache {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("snapshots").join("stamps.bin")
    }

    /// The cache, or an empty one when missing or unreadable (it only saves work).
    pub fn load(state_dir: &Path) -> StampCache {
        std::fs::read(Self::path(state_dir))
            .ok()
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(state_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_durably(&path, &postcard::to_stdvec(self).map_err(std::io::Error::other)?)
    }
}

/// What to snapshot and how.
pub struct TakeOptions {
    pub root: PathBuf,
    pub reason: String,
    pub device: String,
    pub layers: Vec<AppliedLayer>,
    /// Paths named by the applied layers -> index into `layers`.
    pub owners: HashMap<String, u16>,
    pub chunking: ChunkParams,
    /// Rehash every file even when its stamp is unchanged.
    pub full_verify: bool,
    /// When the tree and layers equal the latest snapshot's, return that snapshot instead of
    /// storing an identical one (automatic snapshots before apply).
    pub reuse_identical: bool,
    /// Paths (relative to the root) never snapshotted: the agent's own state dir when it lies
    /// inside the root.
    pub exclude: Vec<String>,
    /// Mount points (relative to the root) whose filesystems are snapshotted too; the walk
    /// does not descend into any other filesystem than the root's.
    pub include_mounts: Vec<String>,
    pub progress: ProgressBar,
}

/// What a snapshot cost. Printed by `oasis-endpoint snapshot --json`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TakeReport {
    pub id: u64,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Files read and chunked (new or changed stamp, or --full-verify).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Files whose chunk list came from the stamp cache.
    pub files_unchanged: u64,
    /// Chunks (and their plain bytes) the store did not have yet.
    pub chunks_new: u64,
    pub bytes_new: u64,
    /// With --full-verify: files whose stamp was unchanged but whose content was not.
    pub changed_behind_stamp: Vec<String>,
    /// Paths left out (not UTF-8, sockets, devices, unreadable), with the reason.
    pub skipped: Vec<String>,
    /// Mount points of other filesystems listed but not descended into.
    pub other_filesystems: Vec<String>,
    /// Mount points of other filesystems included (`snapshot_mounts`).
    pub included_filesystems: Vec<String>,
    /// Entries that are further names of a file already listed (hard links).
    pub hardlinks: u64,
    /// True when the device equalled the latest snapshot, which was reused.
    pub reused_latest: bool,
    pub seconds: f64,
}

/// A file's chunks and the stamp it had while read (None: it changed meanwhile).
type Hashed = anyhow::Result<(Vec<ChunkRef>, Option<Stamp>)>;

struct Found {
    path: String,
    md: std::fs::Metadata,
}

/// What the walk found: entries sorted by path bytes, and the mount points it met.
struct Walked {
    found: Vec<Found>,
    other_filesystems: Vec<String>,
    included_filesystems: Vec<String>,
}

/// Every directory, file and symlink under `root` (not `root` itself) on the root's filesystem
/// and on those mounted at `include` (paths relative to the root). A directory on another
/// filesystem is listed but not descended into.
fn walk(
    root: &Path,
    exclude: &[String],
    include: &[String],
    skipped: &mut Vec<String>,
) -> anyhow::Result<Walked> {
    let root_dev = std::fs::metadata(root)
        .with_context(|| format!("reading the device root {}", root.display()))?
        .dev();
    let mut out = Walked {
        found: Vec::new(),
        other_filesystems: Vec::new(),
        included_filesystems: Vec::new(),
    };
    let mut stack: Vec<(PathBuf, String, u64)> =
        vec![(root.to_path_buf(), String::new(), root_dev)];
    while let Some((dir, rel, dev)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if rel.is_empty() => {
                return Err(e).with_context(|| format!("reading the device root {}", dir.display()))
            }
            Err(e) => {
                skipped.push(format!("{rel}: {e}"));
                continue;
            }
        };
        for de in rd {
            let de = de.with_context(|| format!("reading {}", dir.display()))?;
            let name = de.file_name();
            let Some(name) = name.to_str() else {
                skipped.push(format!("{}: name is not UTF-8", de.path().display()));
                continue;
            };
            if is_agent_temp(name) {
                continue;
            }
            let path = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            if exclude.contains(&path) {
                continue;
            }
            if name.contains('\\') {
                skipped.push(format!("{path}: name contains a backslash"));
                continue;
            }
            let md = match std::fs::symlink_metadata(de.path()) {
                Ok(md) => md,
                Err(e) => {
                    skipped.push(format!("{path}: {e}"));
                    continue;
                }
            };
            let ft = md.file_type();
            if ft.is_dir() {
                if md.dev() == dev {
                    stack.push((de.path(), path.clone(), dev));
                } else if include.contains(&path) {
                    stack.push((de.path(), path.clone(), md.dev()));
                    out.included_filesystems.push(path.clone());
                } else {
                    out.other_filesystems.push(path.clone());
                }
            } else if !ft.is_file() && !ft.is_symlink() {
                skipped.push(format!("{path}: not a file, directory or symlink"));
                continue;
            }
            out.found.push(Found { path, md });
        }
    }
    out.found.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    out.other_filesystems.sort_unstable();
    out.included_filesystems.sort_unstable();
    Ok(out)
}

/// Reads, chunks and stores one file; returns its chunks and the stamp seen before reading
/// (None when the file changed while being read: the caller records it, the next snapshot
/// rehashes it).
fn hash_file(
    path: &Path,
    chunking: &ChunkParams,
    store: &ChunkStore,
    new_chunks: &AtomicU64,
    new_bytes: &AtomicU64,
    progress: &ProgressBar,
) -> Hashed {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let before = Stamp::of(&f.metadata()?);
    let mut chunks = Vec::new();
    chunk::for_each_batch(f, chunking, 16, |batch| {
        for (_, data) in batch {
            let id = ChunkId::of(data);
            if !store.contains(&id).map_err(std::io::Error::other)? {
                let c = StoredChunk::encode_with_id(id, data);
                if store.put(&c).map_err(std::io::Error::other)? {
                    new_chunks.fetch_add(1, Ordering::Relaxed);
                    new_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            progress.inc(data.len() as u64);
            chunks.push(ChunkRef { id, len: data.len() as u32 });
        }
        Ok(())
    })
    .with_context(|| format!("reading {}", path.display()))?;
    let after = std::fs::symlink_metadata(path).map(|m| Stamp::of(&m)).ok();
    Ok((chunks, (after == Some(before)).then_some(before)))
}

/// Takes a snapshot of `opts.root` into `store` and `STATE_DIR/snapshots`, returning it.
/// Blocking; hashes changed files on the rayon pool.
pub fn take(
    state_dir: &Path,
    store: &ChunkStore,
    opts: &TakeOptions,
) -> anyhow::Result<(Snapshot, TakeReport)> {
    let t0 = Instant::now();
    let mut report = TakeReport::default();
    let walked = walk(&opts.root, &opts.exclude, &opts.include_mounts, &mut report.skipped)?;
    let found = walked.found;
    let mut stamps = StampCache::load(state_dir);
    if stamps.chunking != Some(opts.chunking) {
        stamps = StampCache { chunking: Some(opts.chunking), files: HashMap::new() };
    }

    // Further names of an inode already found (paths are sorted, so the first name comes
    // first): hard links, not read again.
    let mut first_name: HashMap<(u64, u64), usize> = HashMap::new();
    let mut link_of: HashMap<usize, usize> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        if f.md.is_file() && f.md.nlink() > 1 {
            match first_name.entry((f.md.dev(), f.md.ino())) {
                std::collections::hash_map::Entry::Occupied(o) => {
                    link_of.insert(i, *o.get());
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                }
            }
        }
    }

    // Owner, mtime and extended attributes of every entry, on all cores.
    let metas: Vec<std::io::Result<Meta>> =
        found.par_iter().map(|f| fsmeta::read_meta(&opts.root.join(&f.path), &f.md)).collect();

    // Which files need reading.
    let mut reuse: HashMap<usize, Vec<ChunkRef>> = HashMap::new();
    let mut todo: Vec<usize> = Vec::new();
    for (i, f) in found.iter().enumerate() {
        if !f.md.is_file() || link_of.contains_key(&i) {
            continue;
        }
        let cached = stamps.files.get(&f.path).filter(|s| s.stamp == Stamp::of(&f.md));
        match cached {
            Some(s) if !opts.full_verify && all_present(store, &s.chunks)? => {
                reuse.insert(i, s.chunks.clone());
            }
            _ => todo.push(i),
        }
    }
    let todo_bytes: u64 = todo.iter().map(|&i| found[i].md.len()).sum();
    opts.progress.set_message("snapshot");
    opts.progress.set_length(todo_bytes);
    opts.progress.set_position(0);

    let new_chunks = AtomicU64::new(0);
    let new_bytes = AtomicU64::new(0);
    let hashed: Vec<(usize, Hashed)> = todo
        .par_iter()
        .map(|&i| {
            let p = opts.root.join(&found[i].path);
            let r = hash_file(&p, &opts.chunking, store, &new_chunks, &new_bytes, &opts.progress);
            (i, r)
        })
        .collect();
    let mut hashed_map: HashMap<usize, Vec<ChunkRef>> = HashMap::with_capacity(hashed.len());
    let mut vanished: std::collections::HashSet<usize> = Default::default();
    for (i, r) in hashed {
        let f = &found[i];
        match r {
            Ok((chunks, stamp)) => {
                report.files_hashed += 1;
                report.bytes_hashed += chunks.iter().map(|c| c.len as u64).sum::<u64>();
                if opts.full_verify {
                    if let Some(old) = stamps.files.get(&f.path) {
                        if old.stamp == Stamp::of(&f.md) && old.chunks != chunks {
                            report.changed_behind_stamp.push(f.path.clone());
                        }
                    }
                }
                match stamp {
                    Some(s) => {
                        stamps
                            .files
                            .insert(f.path.clone(), Stamped { stamp: s, chunks: chunks.clone() });
                    }
                    None => {
                        stamps.files.remove(&f.path);
                    }
                }
                hashed_map.insert(i, chunks);
            }
            Err(e) => {
                // Deleted since the walk, or unreadable: leave it out, say so.
                report.skipped.push(format!("{}: {e:#}", f.path));
                vanished.insert(i);
            }
        }
    }
    report.files_unchanged = reuse.len() as u64;

    let mut entries: Vec<SnapEntry> = Vec::with_capacity(found.len());
    let mut listed: std::collections::HashSet<&str> = Default::default();
    // Files listed, by found index -> index into `entries` (the targets of hard links).
    let mut listed_files: HashMap<usize, usize> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        if vanished.contains(&i) {
            continue;
        }
        // A parent left out (unreadable dir) drops its children too, keeping the tree valid.
        if let Some((parent, _)) = f.path.rsplit_once('/') {
            if !listed.contains(parent) {
                continue;
            }
        }
        let owner = opts.owners.get(&f.path).map_or(Owner::User, |&l| Owner::Layer(l));
        if let Some(first) = link_of.get(&i) {
            // Another name of a file listed before: its mode and metadata are that file's.
            let Some(&at) = listed_files.get(first) else {
                report.skipped.push(format!(
                    "{}: a hard link to {}, which was left out",
                    f.path, found[*first].path
                ));
                continue;
            };
            let target = &entries[at].entry;
            let entry = Entry {
                path: f.path.clone(),
                mode: target.mode,
                meta: target.meta.clone(),
                node: Node::Hardlink { target: target.path.clone() },
            };
            report.hardlinks += 1;
            entries.push(SnapEntry { entry, ino: f.md.ino(), owner });
            continue;
        }
        let meta = match &metas[i] {
            Ok(m) => m.clone(),
            Err(e) => {
                report.skipped.push(format!("{}: {e}", f.path));
                continue;
            }
        };
        let mode = f.md.permissions().mode() & 0o7777;
        let node = if f.md.is_dir() {
            Node::Dir
        } else if f.md.file_type().is_symlink() {
            match std::fs::read_link(opts.root.join(&f.path)) {
                Ok(t) => match t.to_str() {
                    Some(t) if !t.is_empty() => Node::Symlink { target: t.to_string() },
                    _ => {
                        report.skipped.push(format!("{}: symlink target is not UTF-8", f.path));
                        continue;
                    }
                },
                Err(e) => {
                    report.skipped.push(format!("{}: {e}", f.path));
                    continue;
                }
            }
        } else {
            let chunks = reuse
                .remove(&i)
                .or_else(|| hashed_map.remove(&i))
                .expect("every file was either reused or hashed");
            let size = chunks.iter().map(|c| c.len as u64).sum();
            report.files += 1;
            report.bytes += size;
            Node::File { size, chunks }
        };
        match node {
            Node::Dir => {
                listed.insert(&f.path);
            }
            Node::File { .. } => {
                listed_files.insert(i, entries.len());
            }
            _ => {}
        }
        entries.push(SnapEntry {
            entry: Entry { path: f.path.clone(), mode, meta, node },
            ino: f.md.ino(),
            owner,
        });
    }
    report.entries = entries.len() as u64;
    // Mount points that were left out themselves (unreadable) are not listed either.
    let present_dir = |p: &String| listed.contains(p.as_str());
    let other_filesystems: Vec<String> =
        walked.other_filesystems.into_iter().filter(present_dir).collect();
    let included_filesystems: Vec<String> =
        walked.included_filesystems.into_iter().filter(present_dir).collect();
    report.other_filesystems = other_filesystems.clone();
    report.included_filesystems = included_filesystems.clone();
    // Paths that are gone do not need stamps any more.
    let present: std::collections::HashSet<&str> =
        entries.iter().map(|e| e.entry.path.as_str()).collect();
    stamps.files.retain(|p, _| present.contains(p.as_str()));

    let dir = SnapshotDir::new(state_dir);
    if opts.reuse_identical {
        if let Some(prev) = dir.latest_id()?.and_then(|id| dir.load(id).ok()) {
            if prev.entries == entries
                && prev.layers == opts.layers
                && prev.other_filesystems == other_filesystems
                && prev.included_filesystems == included_filesystems
            {
                store.sync().context("syncing the chunk store")?;
                let _ = stamps.save(state_dir);
                report.id = prev.id;
                report.reused_latest = true;
                report.seconds = t0.elapsed().as_secs_f64();
                return Ok((prev, report));
            }
        }
    }
    let snapshot = Snapshot {
        format: SNAPSHOT_FORMAT,
        id: dir.next_id()?,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        reason: opts.reason.clone(),
        device: opts.device.clone(),
        chunking: opts.chunking,
        layers: opts.layers.clone(),
        entries,
        other_filesystems,
        included_filesystems,
    };
    snapshot.validate().map_err(|e| anyhow::anyhow!("internal error: snapshot invalid: {e}"))?;
    // Chunks first, then the snapshot naming them.
    store.sync().context("syncing the chunk store")?;
    dir.save(&snapshot)?;
    if let Err(e) = stamps.save(state_dir) {
        tracing::warn!(error = %e, "cannot save the stamp cache; the next snapshot rehashes more");
    }
    report.id = snapshot.id;
    report.chunks_new = new_chunks.load(Ordering::Relaxed);
    report.bytes_new = new_bytes.load(Ordering::Relaxed);
    report.seconds = t0.elapsed().as_secs_f64();
    for s in &report.skipped {
        tracing::warn!(entry = %s, "left out of the snapshot");
    }
    Ok((snapshot, report))
}

fn all_present(store: &ChunkStore, chunks: &[ChunkRef]) -> anyhow::Result<bool> {
    for c in chunks {
        if !store.contains(&c.id)? {
            return Ok(false);
        }
    }
    Ok(true)
}
