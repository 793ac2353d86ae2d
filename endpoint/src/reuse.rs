//! Reusing data already in the target directory.
//!
//! Every manifest file that already exists under the target as a regular file is chunked with
//! the manifest's FastCDC parameters (the same cut points the publisher found, so unchanged
//! regions give the same chunk ids) and hashed on all cores. Chunks the layer needs are recorded
//! as (file, offset, length); a file whose chunks are exactly the manifest's is recorded as
//! unchanged so the writer can keep it. Reading a recorded chunk later checks its hash again,
//! because the file may have changed in between.

use crate::tree_writer::{FileStamp, OnDisk};
use bytes::Bytes;
use oasis_core::chunk::{self, ChunkId};
use oasis_core::manifest::{LayerManifest, Node};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Chunks hashed together (in parallel) while a file is read.
const HASH_BATCH: usize = 16;
/// Open local files kept for reads; the cache is simply emptied when full.
const MAX_OPEN_FILES: usize = 128;

/// Where a needed chunk lies in a local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalChunk {
    /// Index into [`LocalData::files`].
    pub file: u32,
    pub offset: u64,
    pub len: u32,
}

/// What the scan of the target directory found.
#[derive(Debug, Default)]
pub struct LocalData {
    pub files: Vec<PathBuf>,
    pub chunks: HashMap<ChunkId, LocalChunk>,
    /// File entries (manifest index) whose content on disk already is the manifest's, with the
    /// stamp the file had when it was read.
    pub unchanged: HashMap<usize, FileStamp>,
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    open: Mutex<HashMap<u32, Arc<File>>>,
}

struct Scanned {
    entry: usize,
    path: PathBuf,
    stamp: FileStamp,
    unchanged: bool,
    found: Vec<(ChunkId, u64, u32)>,
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)
}

/// Scans the files of `manifest` that exist under `root` as regular files (`disk` is what
/// [`crate::tree_writer::inspect`] found) and records where the chunks in `wanted` are.
/// Unreadable files are skipped with a warning: reuse is an optimisation.
pub fn scan(
    root: &Path,
    manifest: &LayerManifest,
    disk: &[OnDisk],
    wanted: &HashSet<ChunkId>,
    progress: Option<&indicatif::ProgressBar>,
) -> LocalData {
    let candidates: Vec<(usize, FileStamp)> = manifest
        .entries
        .iter()
        .zip(disk)
        .enumerate()
        .filter_map(|(i, (e, d))| match (&e.node, d) {
            (Node::File { .. }, OnDisk::File { stamp, .. }) => Some((i, *stamp)),
            _ => None,
        })
        .collect();
    let scanned: Vec<Scanned> = candidates
        .par_iter()
        .filter_map(|&(i, stamp)| {
            let path = root.join(&manifest.entries[i].path);
            match scan_file(&path, i, stamp, manifest, wanted, progress) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read local file; not reusing it");
                    None
                }
            }
        })
        .collect();
    let mut out = LocalData::default();
    for s in scanned {
        out.files_scanned += 1;
        out.bytes_scanned += s.stamp.len;
        if s.unchanged {
            out.unchanged.insert(s.entry, s.stamp);
        }
        if s.found.is_empty() {
            continue;
        }
        let file = out.files.len() as u32;
        out.files.push(s.path);
        for (id, offset, len) in s.found {
            out.chunks.entry(id).or_insert(LocalChunk { file, offset, len });
        }
    }
    out
}

fn scan_file(
    path: &Path,
    entry: usize,
    stamp: FileStamp,
    manifest: &LayerManifest,
    wanted: &HashSet<ChunkId>,
    progress: Option<&indicatif::ProgressBar>,
) -> io::Result<Option<Scanned>> {
    let Node::File { size, chunks: expected } = &manifest.entries[entry].node else {
        return Ok(None);
    };
    let file = open_nofollow(path)?;
    if FileStamp::of(&file.metadata()?) != stamp {
        // Replaced or modified since it was inspected; leave it alone.
        return Ok(None);
    }
    let mut unchanged = stamp.len == *size;
    let mut seq = 0usize;
    let mut found = Vec::new();
    chunk::for_each_batch(&file, &manifest.chunking, HASH_BATCH, |batch| {
        let ids: Vec<(ChunkId, u64, u32)> = batch
            .par_iter()
            .map(|(off, data)| (ChunkId::of(data), *off, data.len() as u32))
            .collect();
        for (id, off, len) in ids {
            if unchanged {
                unchanged = expected.get(seq).is_some_and(|c| c.id == id);
            }
            seq += 1;
            if wanted.contains(&id) {
                found.push((id, off, len));
            }
            if let Some(p) = progress {
                p.inc(len as u64);
            }
        }
        Ok(())
    })?;
    unchanged &= seq == expected.len();
    if FileStamp::of(&file.metadata()?) != stamp {
        return Ok(None);
    }
    Ok(Some(Scanned { entry, path: path.to_path_buf(), stamp, unchanged, found }))
}

impl LocalData {
    /// The plain bytes of `id` read from its local file, if it was found there and the bytes
    /// still hash to `id`; `Ok(None)` otherwise (the file changed, or the chunk is not local).
    pub fn read(&self, id: &ChunkId) -> io::Result<Option<Bytes>> {
        let Some(lc) = self.chunks.get(id) else { return Ok(None) };
        let file = self.file(lc.file)?;
        let mut buf = vec![0u8; lc.len as usize];
        match file.read_exact_at(&mut buf, lc.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        if !id.verify(&buf) {
            tracing::debug!(chunk = %id, path = %self.files[lc.file as usize].display(), "local chunk changed on disk");
            return Ok(None);
        }
        Ok(Some(Bytes::from(buf)))
    }

    fn file(&self, idx: u32) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(&idx) {
            return Ok(f.clone());
        }
        if open.len() >= MAX_OPEN_FILES {
            open.clear();
        }
        let f = Arc::new(open_nofollow(&self.files[idx as usize])?);
        open.insert(idx, f.clone());
        Ok(f)
    }
}
