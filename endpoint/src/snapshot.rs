//! Device snapshots: what a device root held at one moment, as a manifest of every directory,
//! file and symlink, with the file bytes kept as chunks in the endpoint's chunk store
//! (`STATE_DIR/cache`, the same store layer fetches fill, so a file that is also a layer file
//! costs nothing extra, and an unchanged device costs one small snapshot file).
//!
//! Layout: `STATE_DIR/snapshots/<id as 8 digits>.snap`, each
//! `"OSN1" | BLAKE3(body) (32) | body (postcard Snapshot)`. Ids count up from 1 and are never
//! reused. A snapshot file is written (temp, fsync, rename) only after every chunk it names is
//! in the store and the store is synced, so a snapshot on disk is always complete.
//!
//! The entries reuse the layer manifest's [`Entry`] (path, mode, owner, mtime, extended
//! attributes, node; hard links as [`Node::Hardlink`] to the first path of their inode), so a
//! snapshot's tree is a valid `LayerManifest` body ([`Snapshot::as_manifest`]) and the same
//! code writes either.
//!
//! A snapshot stays on the filesystems it was told to: the root's, and those mounted at the
//! configured `snapshot_mounts`. Other mount points (`/proc`, `/sys`, `/dev`, `/run`, a tmpfs)
//! are listed as directories in [`Snapshot::other_filesystems`] with nothing below them, and
//! nothing ever writes into, replaces or removes them.

use oasis_core::chunk::ChunkParams;
use oasis_core::manifest::{ChunkRef, Entry, LayerKind, LayerManifest, Node, MANIFEST_FORMAT};
use oasis_core::ChunkId;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Version of the snapshot body encoding. Bump on any change to the types below (2: entries
/// carry owner, mtime, extended attributes and hard links; mount points are listed).
pub const SNAPSHOT_FORMAT: u16 = 2;
/// First bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"OSN1";
/// Largest snapshot file read (a few million entries).
pub const MAX_SNAPSHOT_BYTES: usize = 1 << 30;

/// One IT layer applied on the device when the snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLayer {
    pub name: String,
    pub version: String,
    pub kind: LayerKind,
    /// BLAKE3 of the signed manifest's body (the layer digest).
    pub digest: [u8; 32],
}

impl AppliedLayer {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Who a path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Owner {
    /// Not named by any applied layer: the user's.
    User,
    /// Named by `Snapshot::layers[i]` (the topmost layer naming it). The content may still
    /// differ from the layer's if the user changed it; compare with the layer manifest.
    Layer(u16),
}

/// One path of the device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapEntry {
    /// Path (relative, '/'-separated), mode, owner, mtime and extended attributes (restored by
    /// revert), and what it is (for files: size and chunk list in the snapshot's chunking).
    pub entry: Entry,
    /// Inode number when the snapshot was taken (informational; the change check uses the
    /// stamp cache).
    pub ino: u64,
    pub owner: Owner,
}

/// A whole device at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u16,
    pub id: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Why it was taken: "manual", "before apply base@2", "before revert 3", ...
    pub reason: String,
    /// The endpoint's enrolled name (the device), as in its node certificate.
    pub device: String,
    /// How file contents were cut into chunks.
    pub chunking: ChunkParams,
    /// The IT layers applied at the time, base first.
    pub layers: Vec<AppliedLayer>,
    /// Sorted by path (byte order), parents before children; the root itself is not listed.
    pub entries: Vec<SnapEntry>,
    /// Directories where another filesystem is mounted that the snapshot did not descend into
    /// (listed as entries, with nothing below them). Never written into, replaced or removed.
    pub other_filesystems: Vec<String>,
    /// Mount points of other filesystems the snapshot did include (`snapshot_mounts`): never
    /// replaced or removed; a transaction stages what it writes below them on their own
    /// filesystem.
    pub included_filesystems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("snapshot {0} does not exist (see `oasis-endpoint snapshots`)")]
    NotFound(String),
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

impl Snapshot {
    /// Canonical body encoding (postcard): deterministic for a given value.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("snapshot types always serialize")
    }

    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// The file as written: magic, digest of the body, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = self.encode();
        let mut out = Vec::with_capacity(36 + body.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses and checks a snapshot file: magic, digest, canonical body, format, tree shape.
    /// `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Snapshot, SnapshotError> {
        let bad = |problem: String| SnapshotError::Corrupt { path: path.to_path_buf(), problem };
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(bad(format!("{} bytes exceed the limit", bytes.len())));
        }
        if bytes.len() < 36 || &bytes[..4] != SNAPSHOT_MAGIC {
            return Err(bad("truncated, or not an Oasis snapshot (bad magic)".into()));
        }
        let body = &bytes[36..];
        if blake3::hash(body).as_bytes() != &bytes[4..36] {
            return Err(bad("content does not match its digest (damaged file)".into()));
        }
        // The format comes first: an older snapshot is named as such, not as undecodable.
        let format: u16 = postcard::take_from_bytes(body)
            .map(|(f, _)| f)
            .map_err(|e| bad(format!("body does not decode: {e}")))?;
        if format != SNAPSHOT_FORMAT {
            return Err(bad(format!(
                "format {format} is not supported (this build reads {SNAPSHOT_FORMAT})"
            )));
        }
        let s: Snapshot =
            postcard::from_bytes(body).map_err(|e| bad(format!("body does not decode: {e}")))?;
        if s.encode() != body {
            return Err(bad("body is not in canonical form".into()));
        }
        s.validate().map_err(bad)?;
        Ok(s)
    }

    /// The tree invariants of a layer manifest (safe relative paths, sorted, parents listed as
    /// directories, sizes adding up, hard links to earlier files) plus owners pointing at listed
    /// layers and mount points listed as directories.
    pub fn validate(&self) -> Result<(), String> {
        self.as_manifest().validate().map_err(|e| e.to_string())?;
        for m in self.other_filesystems.iter().chain(&self.included_filesystems) {
            if !self.get(m).is_some_and(|e| e.entry.node == Node::Dir) {
                return Err(format!("mount point {m:?} is not listed as a directory"));
            }
        }
        for e in &self.entries {
            if let Owner::Layer(i) = e.owner {
                if i as usize >= self.layers.len() {
                    return Err(format!(
                        "entry {:?} names layer #{i}, which is not listed",
                        e.entry.path
                    ));
                }
            }
        }
        Ok(())
    }

    /// The tree as a (user-kind, unsigned) layer manifest named `snapshot@<id>`: lets the code
    /// that checks and writes layer trees work on snapshots too.
    pub fn as_manifest(&self) -> LayerManifest {
        LayerManifest {
            format: MANIFEST_FORMAT,
            name: "snapshot".into(),
            version: self.id.to_string(),
            kind: LayerKind::User,
            chunking: self.chunking,
            created: self.created,
            entries: self.entries.iter().map(|e| e.entry.clone()).collect(),
        }
    }

    /// Entry for a path, by binary search (entries are sorted).
    pub fn get(&self, path: &str) -> Option<&SnapEntry> {
        self.entries
            .binary_search_by(|e| e.entry.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// `path` itself and everything below it, in order.
    pub fn subtree<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a SnapEntry> + 'a {
        self.entries.iter().filter(move |e| {
            e.entry.path == path
                || (e.entry.path.starts_with(path)
                    && e.entry.path.as_bytes().get(path.len()) == Some(&b'/'))
        })
    }

    /// Every distinct chunk the snapshot's files use.
    pub fn chunk_ids(&self) -> HashSet<ChunkId> {
        self.files().flat_map(|(_, _, c)| c.iter().map(|r| r.id)).collect()
    }

    /// Distinct chunks with their plain lengths, in first-use order (for uploads).
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        self.files().flat_map(|(_, _, c)| c.iter()).filter(|c| seen.insert(c.id)).copied().collect()
    }

    pub fn files(&self) -> impl Iterator<Item = (&SnapEntry, u64, &[ChunkRef])> {
        self.entries.iter().filter_map(|e| match &e.entry.node {
            Node::File { size, chunks } => Some((e, *size, chunks.as_slice())),
            _ => None,
        })
    }

    /// Plain bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, s, _)| s).sum()
    }

    /// Entries the user owns (not named by any applied layer).
    pub fn user_entries(&self) -> impl Iterator<Item = &SnapEntry> {
        self.entries.iter().filter(|e| e.owner == Owner::User)
    }
}

/// One line of `oasis-endpoint snapshots`.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotInfo {
    pub id: u64,
    pub created: u64,
    pub reason: String,
    pub layers: Vec<String>,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// BLAKE3 of the body (hex).
    pub digest: String,
}

impl SnapshotInfo {
    pub fn of(s: &Snapshot) -> SnapshotInfo {
        SnapshotInfo {
            id: s.id,
            created: s.created,
            reason: s.reason.clone(),
            layers: s.layers.iter().map(|l| l.label()).collect(),
            entries: s.entries.len() as u64,
            files: s.files().count() as u64,
            bytes: s.total_bytes(),
            digest: hex::encode(s.digest()),
        }
    }
}

/// The snapshot files of one endpoint (`STATE_DIR/snapshots`). Chunks live in the chunk store;
/// this only keeps the manifests.
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn new(state_dir: &Path) -> SnapshotDir {
        SnapshotDir { dir: state_dir.join("snapshots") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:08}.snap"))
    }

    /// Ids of the stored snapshots, oldest first.
    pub fn ids(&self) -> Result<Vec<u64>, SnapshotError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut ids = Vec::new();
        for de in rd {
            let de = de.map_err(io_err(&self.dir))?;
            let name = de.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".snap").and_then(|n| n.parse::<u64>().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    pub fn latest_id(&self) -> Result<Option<u64>, SnapshotError> {
        Ok(self.ids()?.last().copied())
    }

    /// The id the next snapshot gets: one past the highest ever used (remembered in `last-id`
    /// so ids are not reused after pruning).
    pub fn next_id(&self) -> Result<u64, SnapshotError> {
        let recorded = std::fs::read_to_string(self.dir.join("last-id"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Ok(recorded.max(self.latest_id()?.unwrap_or(0)) + 1)
    }

    pub fn load(&self, id: u64) -> Result<Snapshot, SnapshotError> {
        let path = self.path_of(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let s = Snapshot::from_bytes(&bytes, &path)?;
        if s.id != id {
            return Err(SnapshotError::Corrupt {
                path,
                problem: format!("holds snapshot {} (file renamed?)", s.id),
            });
        }
        Ok(s)
    }

    /// Parses a user's SNAPSHOT argument: an id, or "latest".
    pub fn resolve(&self, arg: &str) -> Result<u64, SnapshotError> {
        let arg = arg.trim();
        if arg == "latest" {
            return self.latest_id()?.ok_or_else(|| SnapshotError::NotFound("latest".into()));
        }
        let id: u64 = arg.trim_start_matches('#').parse().map_err(|_| {
            SnapshotError::NotFound(format!("{arg:?} (expected a snapshot id or \"latest\")"))
        })?;
        if !self.path_of(id).exists() {
            return Err(SnapshotError::NotFound(id.to_string()));
        }
        Ok(id)
    }

    /// Writes a snapshot durably (temp file, fsync, rename, fsync of the directory). The
    /// caller has already stored and synced every chunk it names.
    pub fn save(&self, s: &Snapshot) -> Result<PathBuf, SnapshotError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.path_of(s.id);
        write_durably(&path, &s.to_bytes()).map_err(io_err(&path))?;
        let last = self.dir.join("last-id");
        write_durably(&last, format!("{}\n", s.id).as_bytes()).map_err(io_err(&last))?;
        Ok(path)
    }

    /// Deletes a snapshot file (its chunks are collected by the caller; see `retention`).
    pub fn remove(&self, id: u64) -> Result<(), SnapshotError> {
        let path = self.path_of(id);
        std::fs::remove_file(&path).map_err(io_err(&path))
    }
}

pub use oasis_core::durable::write_durably;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let data = b"hello";
        Snapshot {
            format: SNAPSHOT_FORMAT,
            id: 3,
            created: 1_700_000_000,
            reason: "manual".into(),
            device: "pc-1".into(),
            chunking: ChunkParams::default(),
            layers: vec![AppliedLayer {
                name: "base".into(),
                version: "1".into(),
                kind: LayerKind::Base,
                digest: [1; 32],
            }],
            entries: vec![
                SnapEntry {
                    entry: Entry::new("etc", 0o755, Node::Dir),
                    ino: 2,
                    owner: Owner::Layer(0),
                },
                SnapEntry {
                    entry: Entry {
                        path: "etc/motd".into(),
                        mode: 0o4644,
                        meta: oasis_core::manifest::Meta {
                            uid: 1000,
                            gid: 100,
                            mtime: -5,
                            mtime_nsec: 999_999_999,
                            xattrs: vec![oasis_core::manifest::Xattr {
                                name: "user.x".into(),
                                value: b"1".to_vec(),
                            }],
                        },
                        node: Node::File {
                            size: 5,
                            chunks: vec![ChunkRef { id: ChunkId::of(data), len: 5 }],
                        },
                    },
                    ino: 3,
                    owner: Owner::User,
                },
                SnapEntry {
                    entry: Entry::new(
                        "etc/motd.link",
                        0o4644,
                        Node::Hardlink { target: "etc/motd".into() },
                    ),
                    ino: 3,
                    owner: Owner::User,
                },
            ],
            other_filesystems: vec![],
            included_filesystems: vec![],
        }
    }

    #[test]
    fn roundtrip_and_damage_detected() {
        let s = sample();
        let bytes = s.to_bytes();
        assert_eq!(Snapshot::from_bytes(&bytes, Path::new("x")).unwrap(), s);
        for i in [0, 10, 40, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(Snapshot::from_bytes(&b, Path::new("x")).is_err(), "flip at {i}");
        }
        assert!(Snapshot::from_bytes(&bytes[..30], Path::new("x")).is_err());
    }

    #[test]
    fn bad_tree_and_owner_refused() {
        let mut s = sample();
        s.entries[1].owner = Owner::Layer(4);
        assert!(s.validate().unwrap_err().contains("layer #4"));
        let mut s = sample();
        s.entries.swap(0, 1);
        assert!(s.validate().is_err());
        let mut s = sample();
        s.other_filesystems.push("etc/motd".into());
        assert!(s.validate().unwrap_err().contains("mount point"));
    }

    #[test]
    fn an_older_format_is_named() {
        let mut s = sample();
        s.format = 1;
        let err = Snapshot::from_bytes(&s.to_bytes(), Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("format 1 is not supported"), "{err}");
    }

    #[test]
    fn dir_store_ids_resolve_and_never_reuse() {
        let d = tempfile::tempdir().unwrap();
        let sd = SnapshotDir::new(d.path());
        assert_eq!(sd.next_id().unwrap(), 1);
        let mut s = sample();
        s.id = sd.next_id().unwrap();
        sd.save(&s).unwrap();
        s.id = sd.next_id().unwrap();
        sd.save(&s).unwrap();
        assert_eq!(sd.ids().unwrap(), vec![1, 2]);
        assert_eq!(sd.resolve("latest").unwrap(), 2);
        assert_eq!(sd.load(1).unwrap().id, 1);
        sd.remove(2).unwrap();
        assert_eq!(sd.next_id().unwrap(), 3, "a pruned id is not handed out again");
        assert!(matches!(sd.resolve("7"), Err(SnapshotError::NotFound(_))));
        assert!(sd.resolve("abc").is_err());
    }

    #[test]
    fn subtree_and_get() {
        let s = sample();
        assert!(s.get("etc/motd").is_some());
        assert!(s.get("etc/nope").is_none());
        assert_eq!(s.subtree("etc").count(), 3);
        assert_eq!(s.subtree("et").count(), 0);
    }
}
