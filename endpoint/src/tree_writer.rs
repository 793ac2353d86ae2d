//! Writing a layer's tree into a directory.
//!
//! 1. [`inspect`] checks every manifest entry against what is on disk before anything is
//!    written: a symlink where the layer has a directory (writing below it would follow the
//!    link), or a directory where the layer has a file or symlink (or the reverse), is refused
//!    with an error naming the path.
//! 2. [`TreeWriter::prepare`] creates missing directories (mode 0700 while being filled) and
//!    stages every file and symlink under a temporary name (`.oasis-tmp.<name>.<random>`) in
//!    its final directory.
//! 3. Chunks are written into the staged files at every place they occur: by
//!    [`TreeWriter::put_chunk`] as they arrive from the network, and by
//!    [`TreeWriter::write_files`] from local files and the cache, on all cores. Chunks that are
//!    not available are reported back (the caller fetches them and calls again).
//! 4. [`TreeWriter::commit`] gives the staged files and symlinks their metadata
//!    ([`oasis_core::fsmeta::apply_meta`]: owner when root, the whole mode with set-id and
//!    sticky bits, extended attributes, mtime to the nanosecond, in that order), stages each
//!    hard link as a link to its file's temporary (or to the file in place when it was kept),
//!    renames the staged entries over their targets, gives files that were already right their
//!    metadata, then the directories theirs, deepest first (a directory's time is right only
//!    once nothing below it changes any more). What a writer that is not root cannot apply is
//!    counted in [`WriteStats::not_applied`].
//!
//! Nothing is renamed before every file is staged, so local data that is being reused is read
//! while it is still intact, and a failure before the commit leaves every target path as it was.
//! Dropping a writer that was not committed removes its temporary files, the directories it
//! created (when empty) and restores the directory modes it widened. Entries on disk that the
//! manifest does not list are left alone, unless [`TreeWriter::commit_exact`] removes them.
//! Existing files are never written in place: they are replaced by rename, so hard links to
//! them that the manifest does not list keep their old content.
//!
//! The check and the writes are separate steps: a concurrent process that swaps a directory for
//! a symlink in between is not defended against (the tree is assumed to be ours while we write).

use bytes::Bytes;
use oasis_core::fsmeta::{self, MetaReport, Writer};
use oasis_core::manifest::{ChunkRef, Entry, LayerManifest, Node};
use oasis_core::ChunkId;
use rayon::prelude::*;
use std::collections::HashMap;
use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Prefix of temporary names; `.oasis-tmp.<name>.<16 hex digits>`.
pub const TEMP_PREFIX: &str = ".oasis-tmp.";
/// Chunks per segment when one large file is written by several threads at once.
const SEGMENT_CHUNKS: usize = 16;

/// Identifies a version of a regular file: if any of these change, its content may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    /// Nanoseconds since the epoch (saturating: i64 spans the years 1678 to 2262, and a stamp
    /// is only compared for equality).
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    pub fn of(md: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec()),
        }
    }
}

/// What a manifest path is on disk (without following a final symlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDisk {
    Absent,
    Dir {
        mode: u32,
    },
    File {
        stamp: FileStamp,
        mode: u32,
    },
    Symlink,
    /// A fifo, socket or device node.
    Other,
}

impl OnDisk {
    fn of(md: &fs::Metadata) -> OnDisk {
        let ft = md.file_type();
        let mode = md.mode() & 0o7777;
        if ft.is_symlink() {
            OnDisk::Symlink
        } else if ft.is_dir() {
            OnDisk::Dir { mode }
        } else if ft.is_file() {
            OnDisk::File { stamp: FileStamp::of(md), mode }
        } else {
            OnDisk::Other
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            OnDisk::Absent => "absent",
            OnDisk::Dir { .. } => "a directory",
            OnDisk::File { .. } => "a regular file",
            OnDisk::Symlink => "a symlink",
            OnDisk::Other => "a special file (fifo, socket or device)",
        }
    }
}

fn describe_node(node: &Node) -> &'static str {
    match node {
        Node::Dir => "a directory",
        Node::File { .. } => "a regular file",
        Node::Symlink { .. } => "a symlink",
        Node::Hardlink { .. } => "a hard link",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "refusing to write the layer: {} is a symlink on disk where the layer has a directory \
         (would write through a symlink); nothing was written",
        path.display()
    )]
    ThroughSymlink { path: PathBuf },
    #[error(
        "refusing to write the layer: {} is {on_disk} on disk but {in_layer} in the layer; \
         nothing was written (move it away and fetch again)",
        path.display()
    )]
    Conflict { path: PathBuf, on_disk: &'static str, in_layer: &'static str },
    #[error("{}: {problem}", path.display())]
    Root { path: PathBuf, problem: &'static str },
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading chunk {id} for {}: {source}", path.display())]
    Read {
        id: ChunkId,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("chunk {id} for {}: got {got} bytes, the manifest says {want}", path.display())]
    ChunkLength { id: ChunkId, path: PathBuf, got: usize, want: u32 },
    #[error("writing the layer was cancelled; temporary files removed")]
    Cancelled,
    #[error("{}: a hard link to {target:?}, which is not a file of the layer", path.display())]
    BadLink { path: PathBuf, target: String },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io { path: path.to_path_buf(), what, source }
}

/// Where the plain bytes of chunks come from while files are written.
pub trait ChunkReader: Sync {
    /// The plain bytes of `chunk`, verified against its id; `Ok(None)` when not available here.
    fn read(&self, chunk: &ChunkRef) -> io::Result<Option<Bytes>>;
}

/// In-memory chunks (tests, small tools). Values are trusted to match their ids.
impl ChunkReader for HashMap<ChunkId, Bytes> {
    fn read(&self, chunk: &ChunkRef) -> io::Result<Option<Bytes>> {
        Ok(self.get(&chunk.id).cloned())
    }
}

/// Checks every entry of `m` against what is under `root` and returns what each entry is on
/// disk now, in manifest order. Writes nothing.
///
/// `root` itself may be a symlink to a directory (the user named it); below it, no existing
/// ancestor of an entry may be a symlink, and directories and non-directories must agree.
pub fn inspect(root: &Path, m: &LayerManifest) -> Result<Vec<OnDisk>, WriteError> {
    match fs::metadata(root) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(WriteError::Root {
                path: root.to_path_buf(),
                problem: "exists and is not a directory",
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(vec![OnDisk::Absent; m.entries.len()])
        }
        Err(e) => return Err(io_err(root, "inspecting the target directory")(e)),
    }
    let mut states = Vec::with_capacity(m.entries.len());
    // Directories of the layer that do not exist yet: nothing below them exists either, so a
    // fresh fetch costs one lstat per top-level entry.
    let mut absent_dirs: HashSet<&str> = HashSet::new();
    for e in &m.entries {
        let parent_absent =
            e.path.rsplit_once('/').is_some_and(|(parent, _)| absent_dirs.contains(parent));
        let state = if parent_absent {
            OnDisk::Absent
        } else {
            let path = root.join(&e.path);
            match fs::symlink_metadata(&path) {
                Ok(md) => OnDisk::of(&md),
                Err(err) if err.kind() == io::ErrorKind::NotFound => OnDisk::Absent,
                Err(err) => return Err(io_err(&path, "inspecting")(err)),
            }
        };
        check_entry(root, e, &state)?;
        if state == OnDisk::Absent && e.node == Node::Dir {
            absent_dirs.insert(&e.path);
        }
        states.push(state);
    }
    Ok(states)
}

fn check_entry(root: &Path, e: &Entry, state: &OnDisk) -> Result<(), WriteError> {
    let conflict = || WriteError::Conflict {
        path: root.join(&e.path),
        on_disk: state.describe(),
        in_layer: describe_node(&e.node),
    };
    match (&e.node, state) {
        (_, OnDisk::Absent) => Ok(()),
        (Node::Dir, OnDisk::Dir { .. }) => Ok(()),
        (Node::Dir, OnDisk::Symlink) => {
            Err(WriteError::ThroughSymlink { path: root.join(&e.path) })
        }
        (Node::Dir, _) => Err(conflict()),
        (_, OnDisk::Dir { .. }) => Err(conflict()),
        // A file, symlink or special file is replaced by rename, which never follows it.
        _ => Ok(()),
    }
}

/// What a write did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    pub files_written: u64,
    /// Files whose content on disk already matched (only their metadata was set).
    pub files_unchanged: u64,
    pub symlinks_written: u64,
    pub hardlinks_written: u64,
    pub dirs_created: u64,
    pub bytes_written: u64,
    /// Metadata the manifest asks for that this writer could not apply (owners, set-id bits
    /// and security attributes need root; attributes the filesystem refused).
    pub not_applied: MetaReport,
    /// What [`TreeWriter::commit_exact`] removed: entries that are not directories, and
    /// directories (each counted once, with what was inside).
    pub deleted_files: u64,
    pub deleted_dirs: u64,
}

/// One entry being staged under a temporary name (see [`temp_path`]; only its random part is
/// kept: a million staged entries would otherwise hold a million paths).
struct Staged {
    entry: usize,
    token: u64,
    /// Renamed over its target (commit); a staged entry not placed is removed on drop.
    placed: AtomicBool,
    /// For files: where each chunk goes and which are written.
    parts: Option<Parts>,
}

struct Parts {
    offsets: Vec<u64>,
    filled: Vec<AtomicBool>,
}

impl Parts {
    fn complete(&self) -> bool {
        self.filled.iter().all(|f| f.load(Ordering::Relaxed))
    }
}

/// Where a chunk goes: (index into `staged`, chunk index in that file).
enum Places {
    One([(u32, u32); 1]),
    Many(Vec<(u32, u32)>),
}

impl Places {
    fn push(&mut self, p: (u32, u32)) {
        match self {
            Places::One([first]) => *self = Places::Many(vec![*first, p]),
            Places::Many(v) => v.push(p),
        }
    }

    fn as_slice(&self) -> &[(u32, u32)] {
        match self {
            Places::One(a) => a,
            Places::Many(v) => v,
        }
    }
}

/// Stages a layer's tree in a directory and commits it; see the module docs.
///
/// Chunks reach the staged files in two ways, in any order and from several threads:
/// [`put_chunk`](Self::put_chunk) writes a chunk at every place it occurs as soon as it is
/// available (the download does this with each verified chunk, so fetched data is written
/// once and never read back), and [`write_files`](Self::write_files) fills every place still
/// empty from a [`ChunkReader`] (local files, the cache).
pub struct TreeWriter {
    root: PathBuf,
    manifest: Arc<LayerManifest>,
    disk: Vec<OnDisk>,
    /// Entries whose file on disk already has the manifest's content.
    unchanged: Vec<bool>,
    /// Hard links to stage at commit: (entry, entry of its file).
    links: Vec<(usize, usize)>,
    staged: Vec<Staged>,
    places: HashMap<ChunkId, Places>,
    created_root: bool,
    created_dirs: Vec<PathBuf>,
    widened_dirs: Vec<(PathBuf, u32)>,
    dirs_created: u64,
    committed: bool,
    cancel: Arc<AtomicBool>,
}

impl TreeWriter {
    /// Checks the tree against the disk ([`inspect`]), creates missing directories and an empty
    /// temporary file (or the temporary symlink) for every entry to write.
    ///
    /// `unchanged` lists file entries (by manifest index) whose file on disk was found to have
    /// exactly the manifest's content, with the stamp it had then; such a file is kept (only
    /// its mode is set) if its stamp has not changed since.
    pub fn prepare(
        root: &Path,
        manifest: Arc<LayerManifest>,
        unchanged: &HashMap<usize, FileStamp>,
    ) -> Result<TreeWriter, WriteError> {
        let disk = inspect(root, &manifest)?;
        let keep: Vec<bool> = disk
            .iter()
            .enumerate()
            .map(|(i, d)| match (d, &manifest.entries[i].node) {
                (OnDisk::File { stamp, .. }, Node::File { .. }) => unchanged.get(&i) == Some(stamp),
                _ => false,
            })
            .collect();
        // A hard link already naming the inode of its kept file stays; others are staged.
        let files: HashMap<&str, usize> = manifest
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e.node, Node::File { .. }))
            .map(|(i, e)| (e.path.as_str(), i))
            .collect();
        let mut links = Vec::new();
        for (i, e) in manifest.entries.iter().enumerate() {
            let Node::Hardlink { target } = &e.node else { continue };
            let Some(&t) = files.get(target.as_str()) else {
                return Err(WriteError::BadLink {
                    path: root.join(&e.path),
                    target: target.clone(),
                });
            };
            let same_inode = match (&disk[i], &disk[t]) {
                (OnDisk::File { stamp: a, .. }, OnDisk::File { stamp: b, .. }) => {
                    (a.dev, a.ino) == (b.dev, b.ino)
                }
                _ => false,
            };
            if !(keep[t] && same_inode) {
                links.push((i, t));
            }
        }
        drop(files);
        let mut w = TreeWriter {
            root: root.to_path_buf(),
            manifest,
            disk,
            unchanged: keep,
            links,
            staged: Vec::new(),
            places: HashMap::new(),
            created_root: false,
            created_dirs: Vec::new(),
            widened_dirs: Vec::new(),
            dirs_created: 0,
            committed: false,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        // On an error below, dropping `w` undoes what was done so far.
        w.make_dirs()?;
        w.make_temps()?;
        Ok(w)
    }

    /// Setting this flag makes running and later calls fail soon with
    /// [`WriteError::Cancelled`] (dropping the writer then cleans up).
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    fn stopped(&self, abort: &AtomicBool) -> bool {
        abort.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }

    /// What each entry was on disk when the writer was prepared.
    pub fn disk(&self) -> &[OnDisk] {
        &self.disk
    }

    fn make_dirs(&mut self) -> Result<(), WriteError> {
        if !self.root.exists() {
            fs::create_dir_all(&self.root)
                .map_err(io_err(&self.root, "creating the target directory"))?;
            self.created_root = true;
        }
        let mut builder = fs::DirBuilder::new();
        builder.mode(0o700);
        for (e, state) in self.manifest.entries.iter().zip(&self.disk) {
            if e.node != Node::Dir {
                continue;
            }
            let path = self.root.join(&e.path);
            match state {
                OnDisk::Absent => {
                    builder.create(&path).map_err(io_err(&path, "creating directory"))?;
                    self.created_dirs.push(path);
                    self.dirs_created += 1;
                }
                OnDisk::Dir { mode } if mode & 0o700 != 0o700 => {
                    // We must be able to create entries in it until its mode is set at the end.
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o700))
                        .map_err(io_err(&path, "making directory writable"))?;
                    self.widened_dirs.push((path, *mode));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Creates the temporary files and symlinks, on all cores.
    fn make_temps(&mut self) -> Result<(), WriteError> {
        let todo: Vec<usize> = (0..self.manifest.entries.len())
            .filter(|&i| {
                let node = &self.manifest.entries[i].node;
                matches!(node, Node::File { .. } | Node::Symlink { .. }) && !self.unchanged[i]
            })
            .collect();
        let (root, manifest) = (&self.root, &self.manifest);
        let made: Vec<(usize, Result<u64, WriteError>)> = todo
            .par_iter()
            .map(|&i| {
                let e = &manifest.entries[i];
                let tmp = match &e.node {
                    Node::Symlink { target: link } => {
                        create_temp(root, &e.path, |tmp| std::os::unix::fs::symlink(link, tmp))
                    }
                    _ => create_temp(root, &e.path, |tmp| {
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .custom_flags(libc::O_NOFOLLOW)
                            .open(tmp)
                            .map(drop)
                    }),
                };
                (i, tmp)
            })
            .collect();
        let mut first_err = None;
        for (i, r) in made {
            let token = match r {
                Ok(token) => token,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let parts = match &self.manifest.entries[i].node {
                Node::File { chunks, .. } => {
                    let s = self.staged.len() as u32;
                    let mut offsets = Vec::with_capacity(chunks.len());
                    let mut off = 0u64;
                    for (k, c) in chunks.iter().enumerate() {
                        offsets.push(off);
                        off += c.len as u64;
                        match self.places.entry(c.id) {
                            std::collections::hash_map::Entry::Occupied(mut o) => {
                                o.get_mut().push((s, k as u32))
                            }
                            std::collections::hash_map::Entry::Vacant(v) => {
                                v.insert(Places::One([(s, k as u32)]));
                            }
                        }
                    }
                    let filled = chunks.iter().map(|_| AtomicBool::new(false)).collect();
                    Some(Parts { offsets, filled })
                }
                _ => None,
            };
            self.staged.push(Staged { entry: i, token, placed: AtomicBool::new(false), parts });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Plain bytes still to be written into staged files.
    pub fn pending_bytes(&self) -> u64 {
        self.staged
            .iter()
            .filter_map(|st| {
                let parts = st.parts.as_ref()?;
                let Node::File { chunks, .. } = &self.manifest.entries[st.entry].node else {
                    return None;
                };
                Some(
                    chunks
                        .iter()
                        .zip(&parts.filled)
                        .filter(|(_, f)| !f.load(Ordering::Relaxed))
                        .map(|(c, _)| c.len as u64)
                        .sum::<u64>(),
                )
            })
            .sum()
    }

    /// True when some staged file contains chunk `id` (written or not).
    pub fn uses(&self, id: &ChunkId) -> bool {
        self.places.contains_key(id)
    }

    /// True when some staged file still lacks chunk `id`.
    pub fn needs(&self, id: &ChunkId) -> bool {
        self.places.get(id).is_some_and(|p| {
            p.as_slice().iter().any(|&(s, k)| !self.filled(s, k).load(Ordering::Relaxed))
        })
    }

    fn tmp(&self, st: &Staged) -> PathBuf {
        temp_path(&self.root, &self.manifest.entries[st.entry].path, st.token)
    }

    fn filled(&self, s: u32, k: u32) -> &AtomicBool {
        &self.staged[s as usize].parts.as_ref().expect("places point at files").filled[k as usize]
    }

    /// Writes `plain` (the verified bytes of chunk `id`) at every place still lacking it.
    /// Returns the bytes written. Safe to call from several threads at once.
    pub fn put_chunk(&self, id: &ChunkId, plain: &[u8]) -> Result<u64, WriteError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(WriteError::Cancelled);
        }
        let Some(places) = self.places.get(id) else { return Ok(0) };
        let mut written = 0;
        for &(s, k) in places.as_slice() {
            let st = &self.staged[s as usize];
            let parts = st.parts.as_ref().expect("places point at files");
            if parts.filled[k as usize].swap(true, Ordering::AcqRel) {
                continue;
            }
            let f = open_temp(&self.tmp(st))?;
            f.write_all_at(plain, parts.offsets[k as usize]).map_err(io_err(
                &self.root.join(&self.manifest.entries[st.entry].path),
                "writing",
            ))?;
            written += plain.len() as u64;
        }
        Ok(written)
    }

    /// Fills every place still empty from `reader`, on all cores. Returns the ids of chunks
    /// `reader` did not have (their places stay empty: get them, then [`put_chunk`] them or call
    /// this again).
    ///
    /// [`put_chunk`]: Self::put_chunk
    pub fn write_files(
        &self,
        reader: &dyn ChunkReader,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<Vec<ChunkId>, WriteError> {
        let todo: Vec<&Staged> = self
            .staged
            .iter()
            .filter(|st| st.parts.as_ref().is_some_and(|p| !p.complete()))
            .collect();
        let abort = AtomicBool::new(false);
        let mut missing = todo
            .par_iter()
            .map(|st| {
                if self.stopped(&abort) {
                    return Ok(Vec::new());
                }
                let r = self.fill(st, reader, progress, &abort);
                if r.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                r
            })
            .try_reduce(Vec::new, |mut a, b| {
                a.extend(b);
                Ok(a)
            })?;
        if self.cancel.load(Ordering::Relaxed) {
            return Err(WriteError::Cancelled);
        }
        missing.sort();
        missing.dedup();
        Ok(missing)
    }

    /// Fills the empty places of one staged file; big files by several threads at once.
    fn fill(
        &self,
        st: &Staged,
        reader: &dyn ChunkReader,
        progress: Option<&indicatif::ProgressBar>,
        abort: &AtomicBool,
    ) -> Result<Vec<ChunkId>, WriteError> {
        let e = &self.manifest.entries[st.entry];
        let (Node::File { chunks, .. }, Some(parts)) = (&e.node, &st.parts) else {
            return Ok(Vec::new());
        };
        let target = self.root.join(&e.path);
        let file = open_temp(&self.tmp(st))?;
        let segment = |idx: std::ops::Range<usize>| -> Result<Vec<ChunkId>, WriteError> {
            let mut missing = Vec::new();
            for k in idx {
                if self.stopped(abort) {
                    break;
                }
                if parts.filled[k].load(Ordering::Acquire) {
                    continue;
                }
                let c = &chunks[k];
                let data = reader.read(c).map_err(|source| WriteError::Read {
                    id: c.id,
                    path: target.clone(),
                    source,
                })?;
                let Some(data) = data else {
                    missing.push(c.id);
                    continue;
                };
                if data.len() != c.len as usize {
                    return Err(WriteError::ChunkLength {
                        id: c.id,
                        path: target.clone(),
                        got: data.len(),
                        want: c.len,
                    });
                }
                if parts.filled[k].swap(true, Ordering::AcqRel) {
                    continue;
                }
                file.write_all_at(&data, parts.offsets[k]).map_err(io_err(&target, "writing"))?;
                if let Some(p) = progress {
                    p.inc(data.len() as u64);
                }
            }
            Ok(missing)
        };
        if chunks.len() <= SEGMENT_CHUNKS {
            return segment(0..chunks.len());
        }
        let ranges: Vec<_> = (0..chunks.len())
            .step_by(SEGMENT_CHUNKS)
            .map(|s| s..(s + SEGMENT_CHUNKS).min(chunks.len()))
            .collect();
        let parts: Vec<Vec<ChunkId>> =
            ranges.into_par_iter().map(segment).collect::<Result<_, _>>()?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Gives the staged entries their metadata, stages the hard links, renames everything
    /// staged into place, then gives files that were kept and directories (deepest first)
    /// their metadata. Fails before any rename if a file still lacks chunks.
    pub fn commit(self) -> Result<WriteStats, WriteError> {
        self.commit_with(None)
    }

    /// [`commit`](Self::commit), and the root becomes exactly the manifest's tree: every entry
    /// below it that the manifest does not list is removed (as `rsync --delete` does), before
    /// the directories get their times. Symlinks are removed, never followed; another
    /// filesystem mounted below the root is not entered. `keep` (absolute or relative to the
    /// root) are left, with their parent directories: the endpoint's own state directory.
    pub fn commit_exact(self, keep: &[PathBuf]) -> Result<WriteStats, WriteError> {
        self.commit_with(Some(keep))
    }

    fn commit_with(mut self, delete: Option<&[PathBuf]>) -> Result<WriteStats, WriteError> {
        let manifest = self.manifest.clone();
        let entries = &manifest.entries;
        if self.cancel.load(Ordering::Relaxed) {
            return Err(WriteError::Cancelled);
        }
        if let Some(st) =
            self.staged.iter().find(|st| st.parts.as_ref().is_some_and(|p| !p.complete()))
        {
            return Err(WriteError::Io {
                path: self.root.join(&entries[st.entry].path),
                what: "committing",
                source: io::Error::other("chunks of this file were never written"),
            });
        }
        let who = Writer::current();
        // Metadata after the data (writing clears set-id bits), before the rename.
        let mut not_applied = self
            .staged
            .par_iter()
            .map(|st| {
                let e = &entries[st.entry];
                let is_symlink = matches!(e.node, Node::Symlink { .. });
                let mut r = MetaReport::default();
                let tmp = self.tmp(st);
                fsmeta::apply_meta(&tmp, is_symlink, e.mode, &e.meta, who, &mut r)
                    .map_err(io_err(&tmp, "setting metadata"))?;
                Ok(r)
            })
            .try_reduce(MetaReport::default, |mut a, b| {
                a.add(&b);
                Ok(a)
            })?;
        // Hard links share their file's inode and metadata: staged as links to its temporary
        // (or to the file in place when kept), so they too are renamed into place at once.
        let link_targets: HashSet<usize> = self.links.iter().map(|&(_, t)| t).collect();
        let token_of: HashMap<usize, u64> = self
            .staged
            .iter()
            .filter(|st| link_targets.contains(&st.entry))
            .map(|st| (st.entry, st.token))
            .collect();
        drop(link_targets);
        for &(i, t) in &self.links.clone() {
            let from = match token_of.get(&t) {
                Some(&token) => temp_path(&self.root, &entries[t].path, token),
                None => self.root.join(&entries[t].path),
            };
            let e = &entries[i];
            let token = create_temp(&self.root, &e.path, |tmp| fs::hard_link(&from, tmp))?;
            self.staged.push(Staged {
                entry: i,
                token,
                placed: AtomicBool::new(false),
                parts: None,
            });
        }
        drop(token_of);
        let root = &self.root;
        self.staged.par_iter().try_for_each(|st| {
            let path = &entries[st.entry].path;
            let target = root.join(path);
            fs::rename(temp_path(root, path, st.token), &target)
                .map_err(io_err(&target, "renaming into place"))?;
            st.placed.store(true, Ordering::Relaxed);
            Ok::<_, WriteError>(())
        })?;
        // From here on the tree is in place: nothing is undone any more.
        self.committed = true;
        let mut stats = WriteStats { dirs_created: self.dirs_created, ..WriteStats::default() };
        for st in &self.staged {
            match entries[st.entry].node {
                Node::File { size, .. } => {
                    stats.files_written += 1;
                    stats.bytes_written += size;
                }
                Node::Symlink { .. } => stats.symlinks_written += 1,
                Node::Hardlink { .. } => stats.hardlinks_written += 1,
                Node::Dir => {}
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if !self.unchanged[i] {
                continue;
            }
            stats.files_unchanged += 1;
            set_existing_meta(&self.root.join(&e.path), e, who, &mut not_applied)?;
        }
        if let Some(keep) = delete {
            let (files, dirs) = delete_extraneous(&self.root, &manifest, keep)?;
            stats.deleted_files = files;
            stats.deleted_dirs = dirs;
        }
        for e in entries.iter().rev().filter(|e| e.node == Node::Dir) {
            set_existing_meta(&self.root.join(&e.path), e, who, &mut not_applied)?;
        }
        stats.not_applied = not_applied;
        Ok(stats)
    }
}

/// Gives an entry that was already on disk (a kept file, a directory) the metadata of `e`,
/// unless it has it already (as far as `who` can make it so): an entry that is right is not
/// touched, whoever owns it. What `who` cannot apply is counted either way.
fn set_existing_meta(
    path: &Path,
    e: &Entry,
    who: Writer,
    report: &mut MetaReport,
) -> Result<(), WriteError> {
    let md = fs::symlink_metadata(path).map_err(io_err(path, "inspecting"))?;
    let have = fsmeta::read_meta(path, &md).map_err(io_err(path, "reading metadata"))?;
    if crate::meta::matches(false, md.mode(), &have, e.mode, &e.meta, who) {
        report.add(&crate::meta::unachievable(false, e.mode, &e.meta, who));
        return Ok(());
    }
    crate::meta::restore_existing(path, false, e.mode, &e.meta, who, report)
        .map_err(io_err(path, "setting metadata"))
}

/// Removes every entry below `root` that `m` does not list, except `keep` and the directories
/// leading to them; never follows a symlink and never enters another filesystem (a mount
/// point is left, with what is on it). Returns (non-directories, directories) removed.
pub fn delete_extraneous(
    root: &Path,
    m: &LayerManifest,
    keep: &[PathBuf],
) -> Result<(u64, u64), WriteError> {
    let listed: HashMap<&str, bool> =
        m.entries.iter().map(|e| (e.path.as_str(), e.node == Node::Dir)).collect();
    let canon_root = fs::canonicalize(root).map_err(io_err(root, "resolving the target"))?;
    let mut kept: HashSet<String> = HashSet::new();
    let mut on_the_way: HashSet<String> = HashSet::new();
    for k in keep {
        let abs = if k.is_absolute() { k.clone() } else { canon_root.join(k) };
        let abs = fs::canonicalize(&abs).unwrap_or(abs);
        let Ok(rel) = abs.strip_prefix(&canon_root) else { continue };
        let Some(rel) = rel.to_str().filter(|r| !r.is_empty()) else { continue };
        let mut p = rel;
        while let Some((up, _)) = p.rsplit_once('/') {
            on_the_way.insert(up.to_string());
            p = up;
        }
        kept.insert(rel.to_string());
    }
    let dev = fs::metadata(root).map_err(io_err(root, "inspecting the target"))?.dev();
    let mut counts = (0u64, 0u64);
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(io_err(&dir, "listing"))?;
        for de in rd {
            let de = de.map_err(io_err(&dir, "listing"))?;
            let path = de.path();
            let md = match fs::symlink_metadata(&path) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path, "inspecting")(e)),
            };
            let child = de.file_name().to_str().map(|n| {
                if rel.is_empty() {
                    n.to_string()
                } else {
                    format!("{rel}/{n}")
                }
            });
            let same_fs_dir = md.is_dir() && md.dev() == dev;
            if let Some(child) = child {
                if let Some(&is_dir) = listed.get(child.as_str()) {
                    if is_dir && same_fs_dir {
                        stack.push((path, child));
                    }
                    continue;
                }
                if kept.contains(&child) {
                    continue;
                }
                if on_the_way.contains(&child) && same_fs_dir {
                    stack.push((path, child));
                    continue;
                }
            }
            if md.is_dir() {
                remove_tree(&path, dev, &mut counts)?;
            } else {
                fs::remove_file(&path).map_err(io_err(&path, "removing"))?;
                counts.0 += 1;
            }
        }
    }
    Ok(counts)
}

/// Removes a directory and everything in it without following symlinks; a filesystem mounted
/// inside is left (and so are the directories holding it).
fn remove_tree(dir: &Path, dev: u64, counts: &mut (u64, u64)) -> Result<(), WriteError> {
    let md = fs::symlink_metadata(dir).map_err(io_err(dir, "inspecting"))?;
    if md.dev() != dev {
        tracing::warn!(path = %dir.display(), "another filesystem is mounted here; not removed");
        return Ok(());
    }
    for de in fs::read_dir(dir).map_err(io_err(dir, "listing"))? {
        let de = de.map_err(io_err(dir, "listing"))?;
        let path = de.path();
        let md = fs::symlink_metadata(&path).map_err(io_err(&path, "inspecting"))?;
        if md.is_dir() {
            remove_tree(&path, dev, counts)?;
        } else {
            fs::remove_file(&path).map_err(io_err(&path, "removing"))?;
            counts.0 += 1;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => {
            counts.1 += 1;
            Ok(())
        }
        // A mount point below kept it from emptying.
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(()),
        Err(e) => Err(io_err(dir, "removing")(e)),
    }
}

impl Drop for TreeWriter {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for st in &self.staged {
            if st.placed.load(Ordering::Relaxed) {
                continue;
            }
            let tmp = self.tmp(st);
            if let Err(e) = fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot remove temporary file");
            }
        }
        for (path, mode) in self.widened_dirs.iter().rev() {
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(*mode));
        }
        // Deepest first; a directory that got other content meanwhile stays.
        for dir in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
        if self.created_root {
            let _ = fs::remove_dir(&self.root);
        }
    }
}

/// Opens one of our temporary files for writing (never through a symlink).
fn open_temp(tmp: &Path) -> Result<fs::File, WriteError> {
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .map_err(io_err(tmp, "opening temporary file"))
}

/// The temporary name of the entry at `path` (relative to `root`) with random part `token`:
/// in the entry's own directory, so the commit's rename stays within one directory.
fn temp_path(root: &Path, path: &str, token: u64) -> PathBuf {
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (root.join(dir), name),
        None => (root.to_path_buf(), path),
    };
    // Keep the temporary name within NAME_MAX whatever the target's name length.
    let mut end = name.len().min(100);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    dir.join(format!("{TEMP_PREFIX}{}.{token:016x}", &name[..end]))
}

/// Creates a fresh temporary name for the entry at `path` with `create` (which must fail with
/// AlreadyExists when the name is taken); returns the random part of the name.
fn create_temp(
    root: &Path,
    path: &str,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> Result<u64, WriteError> {
    for _ in 0..16 {
        let token = rand::random::<u64>();
        let tmp = temp_path(root, path, token);
        match create(&tmp) {
            Ok(()) => return Ok(token),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&tmp, "creating temporary file")(e)),
        }
    }
    Err(WriteError::Io {
        path: root.join(path),
        what: "creating temporary file",
        source: io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary name"),
    })
}

/// Writes a whole tree in one go from `reader`: prepare, fill, commit. Fails (leaving every
/// target path as it was) if any chunk is unavailable.
pub fn write_tree(
    root: &Path,
    manifest: &LayerManifest,
    reader: &dyn ChunkReader,
) -> Result<WriteStats, WriteError> {
    let w = TreeWriter::prepare(root, Arc::new(manifest.clone()), &HashMap::new())?;
    let missing = w.write_files(reader, None)?;
    if let Some(id) = missing.first() {
        return Err(WriteError::Io {
            path: root.to_path_buf(),
            what: "writing the layer",
            source: io::Error::other(format!("{} chunks unavailable (first: {id})", missing.len())),
        });
    }
    w.commit()
}
