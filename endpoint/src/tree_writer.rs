//! Writing a layer's tree into a directory.
//!
//! 1. [`inspect`] checks every manifest entry against what is on disk before anything is
//!    written: a symlink where the layer has a directory (writing below it would follow the
//!    link), or a directory where the layer has a file or symlink (or the reverse), is refused
//!    with an error naming the path.
//! 2. [`TreeWriter::prepare`] creates missing directories (mode 0700 while being filled).
//! 3. [`TreeWriter::write_files`] stages every file and symlink under a temporary name
//!    (`.oasis-tmp.<name>.<random>`) in its final directory, on all cores. Chunks that are not
//!    available are reported back (the caller fetches them and calls again); staged files are
//!    kept across calls.
//! 4. [`TreeWriter::commit`] renames the staged entries over their targets, fixes the modes of
//!    files that were already right, then sets directory modes, deepest first.
//!
//! Nothing is renamed before every file is staged, so local data that is being reused is read
//! while it is still intact, and a failure before the commit leaves every target path as it was.
//! Dropping a writer that was not committed removes its temporary files, the directories it
//! created (when empty) and restores the directory modes it widened. Entries on disk that the
//! manifest does not list are left alone. Existing files are never written in place: they are
//! replaced by rename, so hard links to them keep their old content.
//!
//! The check and the writes are separate steps: a concurrent process that swaps a directory for
//! a symlink in between is not defended against (the tree is assumed to be ours while we write).

use bytes::Bytes;
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
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    pub fn of(md: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
            ctime_ns: md.ctime() as i128 * 1_000_000_000 + md.ctime_nsec() as i128,
        }
    }
}

/// What a manifest path is on disk (without following a final symlink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDisk {
    Absent,
    Dir { mode: u32 },
    File { stamp: FileStamp, mode: u32 },
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
    /// Files whose content on disk already matched (only their mode was set).
    pub files_unchanged: u64,
    pub symlinks_written: u64,
    pub dirs_created: u64,
    pub bytes_written: u64,
}

enum Staged {
    Done(PathBuf),
    Unavailable(Vec<ChunkId>),
    Skipped,
}

/// Stages a layer's tree in a directory and commits it; see the module docs.
pub struct TreeWriter {
    root: PathBuf,
    manifest: Arc<LayerManifest>,
    disk: Vec<OnDisk>,
    /// Entries whose file on disk already has the manifest's content.
    unchanged: Vec<bool>,
    /// Per entry: the staged temporary path, until renamed into place.
    staged: Vec<Option<PathBuf>>,
    created_root: bool,
    created_dirs: Vec<PathBuf>,
    widened_dirs: Vec<(PathBuf, u32)>,
    stats: WriteStats,
    committed: bool,
}

impl TreeWriter {
    /// Checks the tree against the disk ([`inspect`]) and creates missing directories.
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
        let keep = disk
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                OnDisk::File { stamp, .. } => unchanged.get(&i) == Some(stamp),
                _ => false,
            })
            .collect();
        let mut w = TreeWriter {
            root: root.to_path_buf(),
            manifest,
            staged: vec![None; disk.len()],
            disk,
            unchanged: keep,
            created_root: false,
            created_dirs: Vec::new(),
            widened_dirs: Vec::new(),
            stats: WriteStats::default(),
            committed: false,
        };
        w.make_dirs()?;
        Ok(w)
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
                    self.stats.dirs_created += 1;
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

    /// Stages every file and symlink not staged yet, on all cores. Returns the ids of chunks
    /// `reader` did not have (their files stay unstaged; call again once they are available).
    pub fn write_files(
        &mut self,
        reader: &dyn ChunkReader,
        progress: Option<&indicatif::ProgressBar>,
    ) -> Result<Vec<ChunkId>, WriteError> {
        let todo: Vec<usize> = self
            .manifest
            .entries
            .iter()
            .enumerate()
            .filter(|&(i, e)| e.node != Node::Dir && self.staged[i].is_none() && !self.unchanged[i])
            .map(|(i, _)| i)
            .collect();
        let abort = AtomicBool::new(false);
        let results: Vec<(usize, Result<Staged, WriteError>)> = {
            let this = &*self;
            todo.par_iter()
                .map(|&i| {
                    if abort.load(Ordering::Relaxed) {
                        return (i, Ok(Staged::Skipped));
                    }
                    let r = this.stage(i, reader, progress, &abort);
                    if r.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    (i, r)
                })
                .collect()
        };
        // Record every staged temp first, so an error below still leaves them to be cleaned up.
        let mut first_err = None;
        let mut unavailable = Vec::new();
        for (i, r) in results {
            match r {
                Ok(Staged::Done(tmp)) => self.staged[i] = Some(tmp),
                Ok(Staged::Unavailable(ids)) => unavailable.extend(ids),
                Ok(Staged::Skipped) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        unavailable.sort();
        unavailable.dedup();
        Ok(unavailable)
    }

    fn stage(
        &self,
        i: usize,
        reader: &dyn ChunkReader,
        progress: Option<&indicatif::ProgressBar>,
        abort: &AtomicBool,
    ) -> Result<Staged, WriteError> {
        let e = &self.manifest.entries[i];
        let target = self.root.join(&e.path);
        let dir = target.parent().expect("entries lie below the root");
        let name = e.path.rsplit('/').next().unwrap_or(&e.path);
        match &e.node {
            Node::Dir => Ok(Staged::Skipped),
            Node::Symlink { target: link } => {
                let tmp = create_temp(dir, name, |tmp| std::os::unix::fs::symlink(link, tmp))?;
                Ok(Staged::Done(tmp))
            }
            Node::File { chunks, .. } => {
                let mut file = None;
                let tmp = create_temp(dir, name, |tmp| {
                    let f = fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(tmp)?;
                    file = Some(f);
                    Ok(())
                })?;
                let file = file.expect("set when create_temp succeeds");
                let written = self.fill(&file, &target, chunks, reader, progress, abort);
                let done = written.and_then(|missing| {
                    if !missing.is_empty() {
                        return Ok(Staged::Unavailable(missing));
                    }
                    if abort.load(Ordering::Relaxed) {
                        return Ok(Staged::Skipped);
                    }
                    // After the data: writing clears set-id bits.
                    file.set_permissions(fs::Permissions::from_mode(e.mode))
                        .map_err(io_err(&tmp, "setting mode"))?;
                    Ok(Staged::Done(tmp.clone()))
                });
                if !matches!(done, Ok(Staged::Done(_))) {
                    let _ = fs::remove_file(&tmp);
                }
                done
            }
        }
    }

    /// Writes `chunks` into `file`; returns the ids `reader` lacked (nothing is written for
    /// them, and reading continues so that one pass finds all of them).
    fn fill(
        &self,
        file: &fs::File,
        target: &Path,
        chunks: &[ChunkRef],
        reader: &dyn ChunkReader,
        progress: Option<&indicatif::ProgressBar>,
        abort: &AtomicBool,
    ) -> Result<Vec<ChunkId>, WriteError> {
        let mut offsets = Vec::with_capacity(chunks.len());
        let mut off = 0u64;
        for c in chunks {
            offsets.push(off);
            off += c.len as u64;
        }
        let segment = |idx: std::ops::Range<usize>| -> Result<Vec<ChunkId>, WriteError> {
            let mut missing = Vec::new();
            for k in idx {
                if abort.load(Ordering::Relaxed) {
                    break;
                }
                let c = &chunks[k];
                let data = reader.read(c).map_err(|source| WriteError::Read {
                    id: c.id,
                    path: target.to_path_buf(),
                    source,
                })?;
                let Some(data) = data else {
                    missing.push(c.id);
                    continue;
                };
                if data.len() != c.len as usize {
                    return Err(WriteError::ChunkLength {
                        id: c.id,
                        path: target.to_path_buf(),
                        got: data.len(),
                        want: c.len,
                    });
                }
                if missing.is_empty() {
                    file.write_all_at(&data, offsets[k]).map_err(io_err(target, "writing"))?;
                    if let Some(p) = progress {
                        p.inc(data.len() as u64);
                    }
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

    /// Renames staged entries into place, sets the modes of unchanged files and of directories
    /// (deepest first). Entries still unstaged (chunks unavailable) make this fail before any
    /// rename.
    pub fn commit(mut self) -> Result<WriteStats, WriteError> {
        let manifest = self.manifest.clone();
        let entries = &manifest.entries;
        if let Some(i) = (0..entries.len()).find(|&i| {
            entries[i].node != Node::Dir && self.staged[i].is_none() && !self.unchanged[i]
        }) {
            return Err(WriteError::Io {
                path: self.root.join(&entries[i].path),
                what: "committing",
                source: io::Error::other("the file was not staged (chunks unavailable)"),
            });
        }
        let renames: Vec<(usize, PathBuf)> =
            self.staged.iter().enumerate().filter_map(|(i, t)| Some((i, t.clone()?))).collect();
        let root = &self.root;
        let results: Vec<(usize, io::Result<()>)> = renames
            .par_iter()
            .map(|(i, tmp)| (*i, fs::rename(tmp, root.join(&entries[*i].path))))
            .collect();
        let mut first_err = None;
        for (i, r) in results {
            match r {
                Ok(()) => {
                    self.staged[i] = None;
                    match entries[i].node {
                        Node::File { size, .. } => {
                            self.stats.files_written += 1;
                            self.stats.bytes_written += size;
                        }
                        Node::Symlink { .. } => self.stats.symlinks_written += 1,
                        Node::Dir => {}
                    }
                }
                Err(e) => {
                    let path = self.root.join(&entries[i].path);
                    first_err.get_or_insert(io_err(&path, "renaming into place")(e));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // From here on the tree is in place: nothing is undone any more.
        self.committed = true;
        for (i, e) in entries.iter().enumerate() {
            if !self.unchanged[i] {
                continue;
            }
            self.stats.files_unchanged += 1;
            if let OnDisk::File { mode, .. } = self.disk[i] {
                if mode != e.mode {
                    let path = self.root.join(&e.path);
                    fs::set_permissions(&path, fs::Permissions::from_mode(e.mode))
                        .map_err(io_err(&path, "setting mode"))?;
                }
            }
        }
        for e in entries.iter().rev().filter(|e| e.node == Node::Dir) {
            let path = self.root.join(&e.path);
            fs::set_permissions(&path, fs::Permissions::from_mode(e.mode))
                .map_err(io_err(&path, "setting directory mode"))?;
        }
        Ok(std::mem::take(&mut self.stats))
    }
}

impl Drop for TreeWriter {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for tmp in self.staged.iter().flatten() {
            if let Err(e) = fs::remove_file(tmp) {
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

/// Creates a fresh temporary name in `dir` with `create` (which must fail with AlreadyExists
/// when the name is taken).
fn create_temp(
    dir: &Path,
    name: &str,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> Result<PathBuf, WriteError> {
    // Keep the temporary name within NAME_MAX whatever the target's name length.
    let mut end = name.len().min(100);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    for _ in 0..16 {
        let tmp = dir.join(format!("{TEMP_PREFIX}{}.{:016x}", &name[..end], rand::random::<u64>()));
        match create(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&tmp, "creating temporary file")(e)),
        }
    }
    Err(WriteError::Io {
        path: dir.join(name),
        what: "creating temporary file",
        source: io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary name"),
    })
}

/// Writes a whole tree in one go from `reader`: prepare, stage, commit. Fails (leaving every
/// target path as it was) if any chunk is unavailable.
pub fn write_tree(
    root: &Path,
    manifest: &LayerManifest,
    reader: &dyn ChunkReader,
) -> Result<WriteStats, WriteError> {
    let mut w = TreeWriter::prepare(root, Arc::new(manifest.clone()), &HashMap::new())?;
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
