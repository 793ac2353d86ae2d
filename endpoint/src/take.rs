//! Taking a snapshot of a device root: walk the tree, chunk and store the files that changed,
//! reuse the chunk lists of files whose stamp (device, inode, size, mtime, ctime) did not
//! change since they were last hashed (as restic and borg do), and write the snapshot file.
//!
//! The stamp cache (`STATE_DIR/snapshots/stamps.bin`) remembers, per path, the stamp and chunk
//! list last seen; apply adds the files it wrote (it knows their chunks from the manifest), so
//! the snapshot after an apply does not rehash the layer either. `full_verify` ignores the
//! cache and rehashes everything.

use crate::snapshot::SNAPSHOT_FORMAT;
use crate::snapshot::{write_durably, AppliedLayer, Owner, SnapEntry, Snapshot, SnapshotDir};
use anyhow::Context;
use indicatif::ProgressBar;
use oasis_core::chunk::{self, ChunkParams};
use oasis_core::compress::StoredChunk;
use oasis_core::manifest::{ChunkRef, Entry, Node};
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

/// Every directory, file and symlink under `root` (not `root` itself), sorted by path bytes.
fn walk(root: &Path, exclude: &[String], skipped: &mut Vec<String>) -> anyhow::Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
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
                stack.push((de.path(), path.clone()));
            } else if !ft.is_file() && !ft.is_symlink() {
                skipped.push(format!("{path}: not a file, directory or symlink"));
                continue;
            }
            out.push(Found { path, md });
        }
    }
    out.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
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
    let found = walk(&opts.root, &opts.exclude, &mut report.skipped)?;
    let mut stamps = StampCache::load(state_dir);
    if stamps.chunking != Some(opts.chunking) {
        stamps = StampCache { chunking: Some(opts.chunking), files: HashMap::new() };
    }

    // Which files need reading.
    let mut reuse: HashMap<usize, Vec<ChunkRef>> = HashMap::new();
    let mut todo: Vec<usize> = Vec::new();
    for (i, f) in found.iter().enumerate() {
        if !f.md.is_file() {
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

    let mut entries = Vec::with_capacity(found.len());
    let mut listed: std::collections::HashSet<&str> = Default::default();
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
        if matches!(node, Node::Dir) {
            listed.insert(&f.path);
        }
        let owner = opts.owners.get(&f.path).map_or(Owner::User, |&l| Owner::Layer(l));
        let mtime_ns = f.md.mtime().saturating_mul(1_000_000_000).saturating_add(f.md.mtime_nsec());
        entries.push(SnapEntry {
            entry: Entry { path: f.path.clone(), mode, node },
            mtime_ns,
            ino: f.md.ino(),
            owner,
        });
    }
    report.entries = entries.len() as u64;
    // Paths that are gone do not need stamps any more.
    let present: std::collections::HashSet<&str> =
        entries.iter().map(|e| e.entry.path.as_str()).collect();
    stamps.files.retain(|p, _| present.contains(p.as_str()));

    let dir = SnapshotDir::new(state_dir);
    if opts.reuse_identical {
        if let Some(prev) = dir.latest_id()?.and_then(|id| dir.load(id).ok()) {
            if prev.entries == entries && prev.layers == opts.layers {
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
