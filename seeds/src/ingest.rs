//! Publishing a directory tree as a layer: walk, chunk (FastCDC), hash (BLAKE3), compress
//! (zstd), store each chunk once, then sign and record the manifest.
//!
//! Nothing half-stored: every file is opened before the first chunk is written, and if the
//! publish fails midway the chunks it added are removed again, so a failed publish leaves the
//! store as it found it. The manifest is written last, after the chunks are synced.

use indicatif::{ProgressBar, ProgressStyle};
use oasis_core::chunk::{for_each_batch, ChunkId, ChunkParams};
use oasis_core::compress::StoredChunk;
use oasis_core::manifest::{
    validate_label, ChunkRef, Entry, LayerKind, LayerManifest, Node, SignedManifest,
    MANIFEST_FORMAT,
};
use oasis_core::store::{ChunkStore, StoreError};
use rayon::prelude::*;
use serde::Serialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("publish {layer}: source directory {path}: {problem}")]
    Source { layer: String, path: PathBuf, problem: String },
    #[error("publish {layer}: {problem}")]
    Invalid { layer: String, problem: String },
    #[error(
        "publish {layer}: {layer} is already published (digest {digest}); publish a new version"
    )]
    Exists { layer: String, digest: String },
    #[error("publish {layer}: {source}")]
    Store {
        layer: String,
        #[source]
        source: StoreError,
    },
}

#[derive(Clone, Debug)]
pub struct PublishOptions {
    pub name: String,
    pub version: String,
    pub kind: LayerKind,
    pub chunking: ChunkParams,
    pub progress: bool,
}

/// What a publish did, as printed by `oasis-seed publish --json`.
#[derive(Clone, Debug, Serialize)]
pub struct PublishReport {
    pub layer: String,
    pub name: String,
    pub version: String,
    pub kind: String,
    pub digest: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Plain bytes of all files.
    pub bytes: u64,
    pub chunks: u64,
    pub unique_chunks: u64,
    /// Plain bytes of the layer's distinct chunks.
    pub unique_bytes: u64,
    /// The layer's distinct chunks as stored (compressed where that paid).
    pub stored_bytes: u64,
    /// Stored bytes this publish added to the store (chunks no earlier layer had).
    pub new_bytes: u64,
    pub new_plain_bytes: u64,
    pub new_chunks: u64,
    pub seconds: f64,
    /// Of `seconds`: walking the tree, then reading, chunking, hashing, compressing and storing
    /// the files.
    pub seconds_chunking: f64,
    /// Of `seconds`: counting references, making the store durable, signing the manifest.
    pub seconds_commit: f64,
    pub mb_per_s: f64,
}

/// A source entry found by the walk, before chunking.
enum Found {
    Dir { mode: u32 },
    File { mode: u32, size: u64 },
    Symlink { target: String },
}

fn walk(root: &Path, layer: &str) -> Result<Vec<(String, PathBuf, Found)>, IngestError> {
    let src_err = |path: &Path, problem: String| IngestError::Source {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(root).map_err(|e| src_err(root, e.to_string()))?;
    if !meta.is_dir() {
        return Err(src_err(root, "is not a directory".into()));
    }
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| src_err(&dir, format!("cannot list: {e}")))?;
        for de in rd {
            let de = de.map_err(|e| src_err(&dir, format!("cannot list: {e}")))?;
            let path = de.path();
            let name = de
                .file_name()
                .into_string()
                .map_err(|n| src_err(&path, format!("name {n:?} is not UTF-8")))?;
            let relpath = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let md = std::fs::symlink_metadata(&path).map_err(|e| src_err(&path, e.to_string()))?;
            let mode = md.permissions().mode() & 0o7777;
            let ft = md.file_type();
            if ft.is_symlink() {
                let target =
                    std::fs::read_link(&path).map_err(|e| src_err(&path, e.to_string()))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|t| src_err(&path, format!("symlink target {t:?} is not UTF-8")))?;
                out.push((relpath, path, Found::Symlink { target }));
            } else if ft.is_dir() {
                stack.push((relpath.clone(), path.clone()));
                out.push((relpath, path, Found::Dir { mode }));
            } else if ft.is_file() {
                // Open now so an unreadable file fails the publish before anything is stored.
                std::fs::File::open(&path)
                    .map_err(|e| src_err(&path, format!("cannot read: {e}")))?;
                out.push((relpath, path, Found::File { mode, size: md.size() }));
            } else {
                return Err(src_err(&path, "is a device, socket or FIFO; a layer holds only files, directories and symlinks".into()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Publishes `src` as a layer. On error the store holds exactly what it held before.
pub fn publish(
    store: &ChunkStore,
    key: &ed25519_dalek::SigningKey,
    src: &Path,
    opts: &PublishOptions,
) -> Result<(SignedManifest, PublishReport), IngestError> {
    publish_with_bar(store, key, src, opts, None)
}

/// [`publish`] reporting progress (plain bytes read) on `bar` instead of its own terminal bar.
pub fn publish_with_bar(
    store: &ChunkStore,
    key: &ed25519_dalek::SigningKey,
    src: &Path,
    opts: &PublishOptions,
    bar: Option<ProgressBar>,
) -> Result<(SignedManifest, PublishReport), IngestError> {
    let layer = format!("{}@{}", opts.name, opts.version);
    let invalid = |problem: String| IngestError::Invalid { layer: layer.clone(), problem };
    validate_label("name", &opts.name).map_err(invalid)?;
    validate_label("version", &opts.version).map_err(invalid)?;
    opts.chunking.validate().map_err(|e| invalid(e.to_string()))?;
    let store_err = |source| IngestError::Store { layer: layer.clone(), source };
    if let Some(existing) =
        store.manifest_bytes(&opts.name, Some(&opts.version)).map_err(store_err)?
    {
        let digest = hex::encode(blake3::hash(existing.get(68..).unwrap_or_default()).as_bytes());
        return Err(IngestError::Exists { layer, digest });
    }
    let started = Instant::now();
    let found = walk(src, &layer)?;
    let total: u64 =
        found.iter().map(|f| if let Found::File { size, .. } = f.2 { size } else { 0 }).sum();
    let bar = match bar {
        Some(b) => {
            b.set_length(total);
            b
        }
        None => progress_bar(opts.progress, total, &layer),
    };

    let added: Mutex<Vec<ChunkId>> = Mutex::new(Vec::new());
    let new_stored = AtomicU64::new(0);
    let new_plain = AtomicU64::new(0);
    let files: Vec<(usize, &PathBuf)> = found
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.2, Found::File { .. }))
        .map(|(i, f)| (i, &f.1))
        .collect();
    // Files in parallel, and each file's chunks in parallel batches, so that one large file
    // keeps both cores busy as well as many small ones.
    let chunked: Result<Vec<(usize, Vec<ChunkRef>, u64)>, IngestError> = files
        .par_iter()
        .map(|&(i, path)| {
            let src_err = |problem: String| IngestError::Source {
                layer: layer.clone(),
                path: path.clone(),
                problem,
            };
            let f = std::fs::File::open(path).map_err(|e| src_err(format!("cannot read: {e}")))?;
            let mut refs = Vec::new();
            let mut size = 0u64;
            let mut failure: Option<IngestError> = None;
            for_each_batch(f, &opts.chunking, 16, |batch| {
                let stored: Result<Vec<ChunkRef>, StoreError> = batch
                    .par_iter()
                    .map(|(_, data)| {
                        let id = ChunkId::of(data);
                        if !store.contains(&id)? {
                            let c = StoredChunk::encode_with_id(id, data);
                            if store.put(&c)? {
                                new_stored.fetch_add(c.data.len() as u64, Ordering::Relaxed);
                                new_plain.fetch_add(data.len() as u64, Ordering::Relaxed);
                                added.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                            }
                        }
                        Ok(ChunkRef { id, len: data.len() as u32 })
                    })
                    .collect();
                match stored {
                    Ok(r) => {
                        let n: u64 = r.iter().map(|c| c.len as u64).sum();
                        size += n;
                        bar.inc(n);
                        refs.extend(r);
                        Ok(())
                    }
                    Err(e) => {
                        failure = Some(IngestError::Store { layer: layer.clone(), source: e });
                        Err(std::io::Error::other("store failed"))
                    }
                }
            })
            .map_err(|e| failure.take().unwrap_or_else(|| src_err(format!("read failed: {e}"))))?;
            Ok((i, refs, size))
        })
        .collect();
    let chunked = match chunked {
        Ok(c) => c,
        Err(e) => {
            rollback(store, &added.into_inner().unwrap_or_else(|e| e.into_inner()));
            bar.abandon();
            return Err(e);
        }
    };
    bar.finish_and_clear();
    let chunking_done = std::time::Instant::now();

    let mut file_chunks: Vec<Option<(Vec<ChunkRef>, u64)>> =
        (0..found.len()).map(|_| None).collect();
    for (i, refs, size) in chunked {
        file_chunks[i] = Some((refs, size));
    }
    let mut entries = Vec::with_capacity(found.len());
    let (mut n_files, mut n_dirs, mut n_links) = (0, 0, 0);
    for (i, (rel, _, f)) in found.iter().enumerate() {
        let (mode, node) = match f {
            Found::Dir { mode } => {
                n_dirs += 1;
                (*mode, Node::Dir)
            }
            Found::Symlink { target } => {
                n_links += 1;
                (0o777, Node::Symlink { target: target.clone() })
            }
            Found::File { mode, .. } => {
                n_files += 1;
                // The size is what was read, not what stat said: a file that grew or shrank
                // during the walk is recorded consistently with its chunks.
                let (chunks, size) = file_chunks[i].take().expect("every file was chunked");
                (*mode, Node::File { size, chunks })
            }
        };
        entries.push(Entry { path: rel.clone(), mode, node });
    }
    let manifest = LayerManifest {
        format: MANIFEST_FORMAT,
        name: opts.name.clone(),
        version: opts.version.clone(),
        kind: opts.kind,
        chunking: opts.chunking,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        entries,
    };
    let finish = || -> Result<(SignedManifest, PublishReport), IngestError> {
        manifest.validate().map_err(|e| invalid(e.to_string()))?;
        let unique = manifest.unique_chunks();
        let mut stored_bytes = 0u64;
        for c in &unique {
            let e = store
                .update_entry(&c.id, |e| e.refs = e.refs.saturating_add(1))
                .map_err(store_err)?
                .ok_or_else(|| {
                    invalid(format!("chunk {} vanished from the store during publish", c.id))
                })?;
            stored_bytes += e.stored_len as u64;
        }
        store.sync().map_err(store_err)?;
        let signed = manifest.sign(key);
        store.put_manifest(&signed).map_err(store_err)?;
        let seconds = started.elapsed().as_secs_f64();
        let bytes = manifest.total_bytes();
        let report = PublishReport {
            layer: layer.clone(),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            kind: manifest.kind.to_string(),
            digest: signed.digest_hex(),
            files: n_files,
            dirs: n_dirs,
            symlinks: n_links,
            bytes,
            chunks: manifest.files().map(|f| f.2.len() as u64).sum(),
            unique_chunks: unique.len() as u64,
            unique_bytes: unique.iter().map(|c| c.len as u64).sum(),
            stored_bytes,
            new_bytes: new_stored.load(Ordering::Relaxed),
            new_plain_bytes: new_plain.load(Ordering::Relaxed),
            new_chunks: added.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
            seconds,
            seconds_chunking: (chunking_done - started).as_secs_f64(),
            seconds_commit: chunking_done.elapsed().as_secs_f64(),
            mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        };
        Ok((signed, report))
    };
    finish().inspect_err(|_| rollback(store, &added.lock().unwrap_or_else(|e| e.into_inner())))
}

fn rollback(store: &ChunkStore, added: &[ChunkId]) {
    for id in added {
        if let Err(e) = store.remove(id) {
            tracing::warn!(chunk = %id, error = %e, "could not roll back a chunk of a failed publish");
        }
    }
}

fn progress_bar(enabled: bool, total: u64, layer: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("publishing {layer}"));
    bar
}
