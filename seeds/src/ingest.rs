//! Publishing a directory tree as a layer: walk, chunk (FastCDC), hash (BLAKE3), compress
//! (zstd), store each chunk once, then sign and record the manifest.
//!
//! Every entry keeps what an OS image needs restored: owner and group (numeric), the whole
//! mode with setuid, setgid and sticky, the mtime to the nanosecond and every extended
//! attribute (`security.capability`, `user.*`, ACLs). Files with several names in the tree
//! (hard links) are read once: the path that sorts first is the file, the others are
//! [`Node::Hardlink`] entries naming it.
//!
//! Nothing half-stored: if the publish fails midway, the chunks it added (file chunks and the
//! manifest's body chunks) are removed again and the references it counted are taken back, so
//! a failed publish leaves the store as it found it. The manifest root is written last, after
//! every chunk is synced.

use indicatif::{ProgressBar, ProgressStyle};
use oasis_core::chunk::{for_each_batch, ChunkId, ChunkParams};
use oasis_core::compress::{compress_if_it_pays, Encoding};
use oasis_core::fsmeta::read_meta;
use oasis_core::manifest::{
    compare_versions, digest_of_signed, validate_label, ChunkRef, Entry, LayerKind, LayerManifest,
    Meta, Node, SignedManifest, SignedRoot, MANIFEST_FORMAT,
};
use oasis_core::store::{ChunkStore, Counted, StoreError, Stored};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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
    #[error(
        "publish {layer}: {name}@{latest} is published already and {layer} does not come after \
         it; a layer's versions only increase (runs of digits compare as numbers: 1.10 comes \
         after 1.9), so that \"latest\" is the newest and endpoints can refuse to go back"
    )]
    NotNewer { layer: String, name: String, latest: String },
    #[error("publish {layer}: the manifest key did not sign: {problem}")]
    Signing { layer: String, problem: String },
    #[error("publish {layer}: {source}")]
    Store {
        layer: String,
        /// Boxed: a store error is large, and this error travels through every file's result.
        #[source]
        source: Box<StoreError>,
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
    /// Entries in the manifest: directories, files, symlinks and hard links.
    pub entries: u64,
    /// Regular files, each inode once (hard links not counted).
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Further names of files in the tree (entries that name an earlier file's inode).
    pub hardlinks: u64,
    /// Entries with setuid, setgid or sticky bits, and extended attributes recorded.
    pub special_modes: u64,
    pub xattrs: u64,
    /// Plain bytes of all files.
    pub bytes: u64,
    pub chunks: u64,
    pub unique_chunks: u64,
    /// Plain bytes of the layer's distinct chunks.
    pub unique_bytes: u64,
    /// The layer's distinct chunks as stored (compressed where that paid).
    pub stored_bytes: u64,
    /// Stored bytes this publish added to the store (file chunks no earlier layer had).
    pub new_bytes: u64,
    pub new_plain_bytes: u64,
    pub new_chunks: u64,
    /// The manifest body (every entry, encoded) and the chunks it is cut into; the signed
    /// root that names them.
    pub body_bytes: u64,
    pub body_chunks: u64,
    /// Body chunks no earlier manifest had.
    pub new_body_chunks: u64,
    pub root_bytes: u64,
    pub seconds: f64,
    /// Of `seconds`: walking the tree and reading metadata.
    pub seconds_walk: f64,
    /// Of `seconds`: walking the tree, then reading, chunking, hashing, compressing and storing
    /// the files.
    pub seconds_chunking: f64,
    /// Of `seconds`: counting references, making the store durable, signing and storing the
    /// manifest.
    pub seconds_commit: f64,
    pub mb_per_s: f64,
}

/// A source entry found by the walk, before chunking.
struct Found {
    rel: String,
    path: PathBuf,
    mode: u32,
    meta: Meta,
    kind: Kind,
}

enum Kind {
    Dir,
    File { size: u64, dev: u64, ino: u64, nlink: u64 },
    Symlink { target: String },
}

/// What the walk of one directory gives: its entries, and its subdirectories to walk.
type Listing = (Vec<Found>, Vec<(String, PathBuf)>);

/// Lists one directory: every entry's lstat, metadata and symlink target.
fn list_dir(rel: &str, dir: &Path, layer: &str) -> Result<Listing, IngestError> {
    let src_err = |path: &Path, problem: String| IngestError::Source {
        layer: layer.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let rd = std::fs::read_dir(dir).map_err(|e| src_err(dir, format!("cannot list: {e}")))?;
    let (mut found, mut subdirs) = (Vec::new(), Vec::new());
    for de in rd {
        let de = de.map_err(|e| src_err(dir, format!("cannot list: {e}")))?;
        let path = de.path();
        let name = de
            .file_name()
            .into_string()
            .map_err(|n| src_err(&path, format!("name {n:?} is not UTF-8")))?;
        let rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        // DirEntry::metadata stats relative to the open directory, without following a
        // symlink and without resolving the whole path again.
        let md = de.metadata().map_err(|e| src_err(&path, e.to_string()))?;
        let ft = md.file_type();
        let kind = if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| src_err(&path, e.to_string()))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|t| src_err(&path, format!("symlink target {t:?} is not UTF-8")))?;
            Kind::Symlink { target }
        } else if ft.is_dir() {
            subdirs.push((rel.clone(), path.clone()));
            Kind::Dir
        } else if ft.is_file() {
            Kind::File { size: md.size(), dev: md.dev(), ino: md.ino(), nlink: md.nlink() }
        } else {
            let what = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_block_device() {
                "a block device"
            } else if ft.is_char_device() {
                "a character device"
            } else {
                "of an unknown file type"
            };
            return Err(src_err(
                &path,
                format!(
                    "is {what}; a layer holds only files, directories, symlinks and hard links"
                ),
            ));
        };
        let meta = read_meta(&path, &md).map_err(|e| src_err(&path, e.to_string()))?;
        let mode = if ft.is_symlink() { 0o777 } else { md.mode() & 0o7777 };
        found.push(Found { rel, path, mode, meta, kind });
    }
    Ok((found, subdirs))
}

/// Walks `root` (directories in parallel: most of a walk is waiting on metadata syscalls),
/// returning every entry below it sorted by path.
fn walk(root: &Path, layer: &str) -> Result<Vec<Found>, IngestError> {
    let md = std::fs::metadata(root).map_err(|e| IngestError::Source {
        layer: layer.to_string(),
        path: root.to_path_buf(),
        problem: e.to_string(),
    })?;
    if !md.is_dir() {
        return Err(IngestError::Source {
            layer: layer.to_string(),
            path: root.to_path_buf(),
            problem: "is not a directory".into(),
        });
    }
    let out: Mutex<Vec<Found>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<IngestError>> = Mutex::new(None);
    fn visit<'s>(
        s: &rayon::Scope<'s>,
        rel: String,
        dir: PathBuf,
        layer: &'s str,
        out: &'s Mutex<Vec<Found>>,
        failed: &'s Mutex<Option<IngestError>>,
    ) {
        if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return;
        }
        match list_dir(&rel, &dir, layer) {
            Ok((found, subdirs)) => {
                out.lock().unwrap_or_else(|e| e.into_inner()).extend(found);
                for (rel, dir) in subdirs {
                    s.spawn(move |s| visit(s, rel, dir, layer, out, failed));
                }
            }
            Err(e) => {
                failed.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
            }
        }
    }
    rayon::scope(|s| visit(s, String::new(), root.to_path_buf(), layer, &out, &failed));
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut found = out.into_inner().unwrap_or_else(|e| e.into_inner());
    found.par_sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    Ok(found)
}

/// For each entry, the index of the earlier entry it is a hard link to: the first path (in
/// sorted order) of every inode with several names in the tree is the file, the others link
/// to it.
fn hard_links(found: &[Found]) -> Vec<Option<usize>> {
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    found
        .iter()
        .enumerate()
        .map(|(i, f)| match f.kind {
            Kind::File { dev, ino, nlink, .. } if nlink > 1 => {
                let primary = *first.entry((dev, ino)).or_insert(i);
                (primary != i).then_some(primary)
            }
            _ => None,
        })
        .collect()
}

/// Counts of the chunk phase.
#[derive(Default)]
struct Tally {
    unique_chunks: AtomicU64,
    unique_plain: AtomicU64,
    /// Stored bytes of the layer's distinct chunks.
    stored: AtomicU64,
    new_chunks: AtomicU64,
    new_stored: AtomicU64,
    new_plain: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What this publish changed in the store, to take back if it fails.
#[derive(Default)]
struct Undo {
    /// Chunks (file and body) this publish stored.
    added: Vec<ChunkId>,
    /// Chunks stored before whose reference count this publish raised, with the count before.
    reffed: Vec<(ChunkId, u32)>,
}

impl Undo {
    fn rollback(&self, store: &ChunkStore) {
        for (id, before) in &self.reffed {
            // Only a count still above what it was: a failure may come before the raise.
            let undo = |e: &mut oasis_core::store::IndexEntry| {
                if e.refs > *before {
                    e.refs -= 1
                }
            };
            if let Err(e) = store.update_entry(id, undo) {
                tracing::warn!(chunk = %id, error = %e, "could not take back a reference of a failed publish");
            }
        }
        for id in &self.added {
            if let Err(e) = store.remove(id) {
                tracing::warn!(chunk = %id, error = %e, "could not roll back a chunk of a failed publish");
            }
        }
    }
}

/// Publishes `src` as a layer. On error the store holds exactly what it held before.
pub fn publish(
    store: &ChunkStore,
    key: &dyn oasis_core::manifest::RootSigner,
    src: &Path,
    opts: &PublishOptions,
) -> Result<(SignedManifest, PublishReport), IngestError> {
    publish_with_bar(store, key, src, opts, None)
}

/// [`publish`] reporting progress (plain bytes read) on `bar` instead of its own terminal bar.
pub fn publish_with_bar(
    store: &ChunkStore,
    key: &dyn oasis_core::manifest::RootSigner,
    src: &Path,
    opts: &PublishOptions,
    bar: Option<ProgressBar>,
) -> Result<(SignedManifest, PublishReport), IngestError> {
    let layer = format!("{}@{}", opts.name, opts.version);
    let invalid = |problem: String| IngestError::Invalid { layer: layer.clone(), problem };
    validate_label("name", &opts.name).map_err(invalid)?;
    validate_label("version", &opts.version).map_err(invalid)?;
    opts.chunking.validate().map_err(|e| invalid(e.to_string()))?;
    let store_err = |source| IngestError::Store { layer: layer.clone(), source: Box::new(source) };
    if let Some(existing) =
        store.manifest_bytes(&opts.name, Some(&opts.version)).map_err(store_err)?
    {
        let digest = hex::encode(digest_of_signed(&existing));
        return Err(IngestError::Exists { layer, digest });
    }
    if let Some(latest) = store.latest_version(&opts.name).map_err(store_err)? {
        if compare_versions(&opts.version, &latest) != std::cmp::Ordering::Greater {
            return Err(IngestError::NotNewer { layer, name: opts.name.clone(), latest });
        }
    }
    let started = Instant::now();
    let found = walk(src, &layer)?;
    let links = hard_links(&found);
    let walked = Instant::now();
    let total: u64 = found
        .iter()
        .zip(&links)
        .map(|(f, l)| match f.kind {
            Kind::File { size, .. } if l.is_none() => size,
            _ => 0,
        })
        .sum();
    let bar = match bar {
        Some(b) => {
            b.set_length(total);
            b
        }
        None => progress_bar(opts.progress, total, &layer),
    };

    let undo: Mutex<Undo> = Mutex::new(Undo::default());
    let tally = Tally::default();
    // Chunks this publish has met: a chunk in several files costs one store lookup, and its
    // reference is counted once.
    let seen: Mutex<HashSet<ChunkId>> = Mutex::new(HashSet::new());
    // Each inode's content once: hard links share their primary's chunks.
    let files: Vec<usize> = (0..found.len())
        .filter(|&i| matches!(found[i].kind, Kind::File { .. }) && links[i].is_none())
        .collect();
    // Stores a chunk unless present and counts this layer's reference to it, the first time
    // the publish meets it; its ref for the manifest.
    let store_chunk = |data: &[u8]| -> Result<ChunkRef, IngestError> {
        let id = ChunkId::of(data);
        let r = ChunkRef { id, len: data.len() as u32 };
        if !lock(&seen).insert(id) {
            return Ok(r);
        }
        // Already stored (by an earlier layer): one index write counts this layer's reference.
        let counted = match store
            .update_entry(&id, |e| e.refs = e.refs.saturating_add(1))
            .map_err(store_err)?
        {
            Some(e) => Counted::Existing(e),
            None => {
                let z = compress_if_it_pays(data);
                let stored = match &z {
                    Some(z) => Stored { encoding: Encoding::Zstd, plain_len: r.len, data: z },
                    None => Stored { encoding: Encoding::Raw, plain_len: r.len, data },
                };
                store.put_counted(&id, stored).map_err(store_err)?
            }
        };
        let e = match counted {
            Counted::Added(e) => {
                lock(&undo).added.push(id);
                tally.new_stored.fetch_add(e.stored_len as u64, Ordering::Relaxed);
                tally.new_plain.fetch_add(data.len() as u64, Ordering::Relaxed);
                tally.new_chunks.fetch_add(1, Ordering::Relaxed);
                e
            }
            Counted::Existing(e) => {
                lock(&undo).reffed.push((id, e.refs.saturating_sub(1)));
                e
            }
        };
        tally.stored.fetch_add(e.stored_len as u64, Ordering::Relaxed);
        tally.unique_plain.fetch_add(data.len() as u64, Ordering::Relaxed);
        tally.unique_chunks.fetch_add(1, Ordering::Relaxed);
        Ok(r)
    };
    // Files in parallel, and each file's chunks in parallel batches, so that one large file
    // keeps both cores busy as well as many small ones.
    let chunked: Result<Vec<(Vec<ChunkRef>, u64)>, IngestError> = files
        .par_iter()
        .map(|&i| {
            let f = &found[i];
            if let Kind::File { size: 0, .. } = f.kind {
                // Empty when listed: nothing to read (most trees hold many).
                return Ok((Vec::new(), 0));
            }
            let src_err = |problem: String| IngestError::Source {
                layer: layer.clone(),
                path: f.path.clone(),
                problem,
            };
            let file =
                std::fs::File::open(&f.path).map_err(|e| src_err(format!("cannot read: {e}")))?;
            let mut refs = Vec::new();
            let mut size = 0u64;
            let mut failure: Option<IngestError> = None;
            for_each_batch(file, &opts.chunking, 16, |batch| {
                let stored: Result<Vec<ChunkRef>, IngestError> = if batch.len() == 1 {
                    // Most files are one chunk: no fork and join for it.
                    store_chunk(batch[0].1).map(|c| vec![c])
                } else {
                    batch.par_iter().map(|(_, data)| store_chunk(data)).collect()
                };
                match stored {
                    Ok(r) => {
                        let n: u64 = r.iter().map(|c| c.len as u64).sum();
                        size += n;
                        bar.inc(n);
                        refs.extend(r);
                        Ok(())
                    }
                    Err(e) => {
                        failure = Some(e);
                        Err(std::io::Error::other("store failed"))
                    }
                }
            })
            .map_err(|e| failure.take().unwrap_or_else(|| src_err(format!("read failed: {e}"))))?;
            Ok((refs, size))
        })
        .collect();
    let mut undo = undo.into_inner().unwrap_or_else(|e| e.into_inner());
    let chunked = match chunked {
        Ok(c) => c,
        Err(e) => {
            undo.rollback(store);
            bar.abandon();
            return Err(e);
        }
    };
    bar.finish_and_clear();
    let chunking_done = Instant::now();

    let mut contents: Vec<Option<(Vec<ChunkRef>, u64)>> = (0..found.len()).map(|_| None).collect();
    for (i, c) in files.into_iter().zip(chunked) {
        contents[i] = Some(c);
    }
    let mut entries = Vec::with_capacity(found.len());
    let (mut n_files, mut n_dirs, mut n_symlinks, mut n_hardlinks) = (0, 0, 0, 0);
    let (mut n_special, mut n_xattrs) = (0, 0);
    for (i, f) in found.into_iter().enumerate() {
        let (mode, meta, node) = match (f.kind, links[i]) {
            (Kind::Dir, _) => {
                n_dirs += 1;
                (f.mode, f.meta, Node::Dir)
            }
            (Kind::Symlink { target }, _) => {
                n_symlinks += 1;
                (0o777, f.meta, Node::Symlink { target })
            }
            (Kind::File { .. }, Some(p)) => {
                n_hardlinks += 1;
                // One inode, one set of metadata: the primary's (an earlier entry), as lstat
                // gave it there.
                let primary: &Entry = &entries[p];
                (
                    primary.mode,
                    primary.meta.clone(),
                    Node::Hardlink { target: primary.path.clone() },
                )
            }
            (Kind::File { .. }, None) => {
                n_files += 1;
                // The size is what was read, not what stat said: a file that grew or shrank
                // during the walk is recorded consistently with its chunks.
                let (chunks, size) = contents[i].take().expect("every primary file was chunked");
                (f.mode, f.meta, Node::File { size, chunks })
            }
        };
        n_special += u64::from(mode & 0o7000 != 0);
        n_xattrs += meta.xattrs.len() as u64;
        entries.push(Entry { path: f.rel, mode, meta, node });
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
    let finish = |undo: &mut Undo| -> Result<(SignedManifest, PublishReport), IngestError> {
        manifest.validate().map_err(|e| invalid(e.to_string()))?;
        let (signed, body) = manifest
            .sign_by(key)
            .map_err(|problem| IngestError::Signing { layer: layer.clone(), problem })?;
        // What every receiver checks of the root (limits on entries and body size, and the
        // signature a separate signer sent back): refuse here a layer nobody could open.
        SignedRoot::open(&signed.to_bytes(), &key.manifest_key())
            .map_err(|e| invalid(e.to_string()))?;
        // The body's chunks first, so that a failure further on knows which to take back;
        // `put_manifest` then finds them stored and counts one reference to each.
        let new_body = store.put_manifest_body(&body).map_err(store_err)?;
        undo.added.extend(&new_body);
        let fresh_body: HashSet<ChunkId> = new_body.iter().copied().collect();
        for c in signed.root.unique_body_chunks() {
            if !fresh_body.contains(&c.id) {
                // Stored before (an earlier manifest shares it): `put_manifest` raises its count.
                if let Some(e) = store.entry(&c.id).map_err(store_err)? {
                    undo.reffed.push((c.id, e.refs));
                }
            }
        }
        store.put_manifest(&signed, &body).map_err(store_err)?;
        // The layer's chunks become readable by the fleet (`readers`) once it is published: a
        // publish that fails before leaves none readable. Should this fail, the layer is
        // published all the same and indexed at the seed's next start.
        if let Err(e) = crate::readers::Readers::open(store).and_then(|r| r.add_layer(&signed)) {
            tracing::warn!(layer = %layer, error = %e,
                "layer published, but its chunks are readable only after the seed restarts");
        }
        let seconds = started.elapsed().as_secs_f64();
        let bytes = manifest.total_bytes();
        let report = PublishReport {
            layer: layer.clone(),
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            kind: manifest.kind.to_string(),
            digest: signed.digest_hex(),
            entries: manifest.entries.len() as u64,
            files: n_files,
            dirs: n_dirs,
            symlinks: n_symlinks,
            hardlinks: n_hardlinks,
            special_modes: n_special,
            xattrs: n_xattrs,
            bytes,
            chunks: manifest.files().map(|f| f.2.len() as u64).sum(),
            unique_chunks: tally.unique_chunks.load(Ordering::Relaxed),
            unique_bytes: tally.unique_plain.load(Ordering::Relaxed),
            stored_bytes: tally.stored.load(Ordering::Relaxed),
            new_bytes: tally.new_stored.load(Ordering::Relaxed),
            new_plain_bytes: tally.new_plain.load(Ordering::Relaxed),
            new_chunks: tally.new_chunks.load(Ordering::Relaxed),
            body_bytes: signed.root.body_len,
            body_chunks: signed.root.body.len() as u64,
            new_body_chunks: new_body.len() as u64,
            root_bytes: signed.to_bytes().len() as u64,
            seconds,
            seconds_walk: (walked - started).as_secs_f64(),
            seconds_chunking: (chunking_done - started).as_secs_f64(),
            seconds_commit: chunking_done.elapsed().as_secs_f64(),
            mb_per_s: bytes as f64 / 1e6 / seconds.max(1e-9),
        };
        Ok((signed, report))
    };
    finish(&mut undo).inspect_err(|_| {
        // A root recorded before a later step failed (the final flush) names these chunks:
        // they stay. Otherwise everything this publish added goes.
        if store.has_manifest(&opts.name, &opts.version).unwrap_or(true) {
            tracing::warn!(%layer, "publish failed after its manifest was recorded; keeping its chunks");
        } else {
            undo.rollback(store);
        }
    })
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
