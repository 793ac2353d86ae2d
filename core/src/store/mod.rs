//! The chunk store: chunk bytes in append-only pack files, the index in sled.
//!
//! Layout under the store directory:
//! - `index/`                 sled database: trees `chunks`, `manifests`, `latest`
//! - `packs/<8 digits>.pack`  chunks' stored (maybe zstd) bytes, appended (see `packs`)
//!
//! Invariant: an index entry is written only after its bytes are completely written to a
//! pack, so a write that dies midway (kill -9, full disk) leaves at most unreferenced bytes
//! at a pack's tail, never an index entry pointing at partial data. Every read is checked
//! against the digest recorded at put; a chunk that fails (bit rot, tampering) is dropped from
//! the index and reported as missing, so callers refetch it.
//!
//! Besides its own copies, a store can hold *file references* (tree `file_refs`): where a
//! chunk's plain bytes lie in a file outside the store, with the file's stamp (device, inode,
//! size, mtime) when the reference was recorded. An endpoint records them for the files it has
//! just written instead of keeping a second copy of every chunk (measured: that copy cost about
//! a tenth of a fetch's CPU). They are weaker than stored chunks, since the file's owner may
//! change or delete it, so they are kept apart: [`ChunkStore::contains`] and
//! [`ChunkStore::get`] never answer from them; [`ChunkStore::has_file_ref`] and
//! [`ChunkStore::read_file_ref`] do, checking the stamp, then the bytes against the chunk id,
//! and dropping a reference that fails either.

pub mod chunk_layers;

use crate::chunk::ChunkId;
use crate::compress::{Encoding, StoredChunk};
use crate::manifest::{ManifestBody, ManifestError, SignedManifest};
use crate::packs::PackSet;
use crate::wire::LayerRef;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk store {dir}: cannot open index: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("chunk store index: {0}")]
    Index(#[from] sled::Error),
    #[error("chunk store: {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chunk store: index entry for {id} is unreadable")]
    BadEntry { id: ChunkId },
    #[error("chunk store: manifest {label} is stored but unreadable: {problem}")]
    BadManifest { label: String, problem: String },
    #[error("chunk store: stored manifest {label}: {source}")]
    Manifest {
        label: String,
        #[source]
        source: ManifestError,
    },
}

impl StoreError {
    /// True when another process holds the store open (sled takes an exclusive lock).
    pub fn is_locked(&self) -> bool {
        match self {
            StoreError::Open { source: sled::Error::Io(e), .. } => {
                e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("acquire lock")
            }
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// What the index knows about one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub stored_len: u32,
    pub plain_len: u32,
    pub encoding: u8,
    /// Bit 0: pinned (never evicted).
    pub flags: u8,
    /// How many published layers reference the chunk (seed); 0 for cache entries.
    pub refs: u32,
    /// A digest of the stored (possibly compressed) bytes, recorded when the chunk was put:
    /// XXH3-128 in the first 16 bytes when [`FLAG_XXH3`] is set, else BLAKE3. Reads check it
    /// instead of decompressing and rehashing: the chunk id was verified before `put`, so
    /// stored bytes matching this digest are the verified bytes. See [`stored_digest`].
    pub stored_digest: [u8; 32],
    /// Where the stored bytes are: pack id and byte offset.
    pub pack: u32,
    pub offset: u64,
}

pub const FLAG_PINNED: u8 = 1;

/// A chunk's bytes as they go into the store: `data` decodes (by `encoding`) to `plain_len`
/// plain bytes.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    pub encoding: Encoding,
    pub plain_len: u32,
    pub data: &'a [u8],
}

/// What [`ChunkStore::put_counted`] did: the entry as it now stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Stored by this call, with one reference.
    Added(IndexEntry),
    /// Already stored; its count now includes this reference.
    Existing(IndexEntry),
}
/// `stored_digest` is XXH3-128; entries written before it existed carry BLAKE3.
pub const FLAG_XXH3: u8 = 2;

/// The digest a new index entry records of its stored bytes: XXH3-128.
///
/// Why not BLAKE3: this digest guards against the disk, not against an adversary (whoever can
/// rewrite the packs can rewrite the index beside them, and every receiver checks the chunk
/// id, a BLAKE3 of the plain bytes, itself). It is computed once per put and once per read,
/// on every chunk a seed or reflector serves; XXH3 costs a tenth of BLAKE3 there (measured: a
/// second BLAKE3 pass was 6% of publish CPU).
pub fn stored_digest(stored: &[u8]) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..16].copy_from_slice(&xxhash_rust::xxh3::xxh3_128(stored).to_le_bytes());
    d
}

impl IndexEntry {
    /// Whether `stored` are the bytes this entry recorded, by the digest it was written with.
    pub fn stored_bytes_match(&self, stored: &[u8]) -> bool {
        if stored.len() != self.stored_len as usize {
            return false;
        }
        if self.flags & FLAG_XXH3 != 0 {
            stored_digest(stored) == self.stored_digest
        } else {
            *blake3::hash(stored).as_bytes() == self.stored_digest
        }
    }
}

/// Identifies a version of a file: if any of these changed, its content may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

impl RefStamp {
    pub fn of(md: &std::fs::Metadata) -> RefStamp {
        RefStamp {
            dev: md.dev(),
            ino: md.ino(),
            len: md.len(),
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        }
    }
}

/// Where a chunk's plain bytes lie in a file outside the store (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The file's path as raw bytes (paths need not be UTF-8); absolute.
    pub path: Vec<u8>,
    pub offset: u64,
    pub len: u32,
    /// The file when the reference was recorded.
    pub stamp: RefStamp,
}

impl FileRef {
    pub fn new(path: &Path, offset: u64, len: u32, stamp: RefStamp) -> FileRef {
        FileRef { path: path.as_os_str().as_bytes().to_vec(), offset, len, stamp }
    }

    pub fn path(&self) -> &Path {
        Path::new(std::ffi::OsStr::from_bytes(&self.path))
    }
}

/// Removes the snapshot files sled was still writing when its process died.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating` and renames it to `snap.<lsn>` once it
/// is complete and synced, so a `.generating` file is by construction unfinished and the last
/// renamed snapshot (or the log alone) is the state to recover. Its recovery, though, takes the
/// highest-sorted `snap.*` file, which is the `.generating` one, and a process killed while
/// writing it leaves a database that refuses to open ("empty/corrupt snapshot file found"). An
/// endpoint or reflector is killed at any moment (power loss, `kill -9`, OOM), so the store
/// clears these before sled looks.
fn drop_unfinished_sled_snapshots(index_dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(index_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %entry.path().display(),
                "removing an index snapshot left unfinished by a crash");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// How long an open waits for a lock this process is still letting go of.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Index directories of stores this process closed, and when.
///
/// sled's writer threads keep the database file, and with it the exclusive lock, for a moment
/// after the last handle drops, so a store closed and opened again in one process (a restart
/// within a daemon, a test) can find its own lock still taken. Only those opens wait; a lock
/// held by another process is reported at once, so the seed's CLI can turn to the running
/// seed without a pause.
static CLOSED_HERE: std::sync::Mutex<Vec<(PathBuf, std::time::Instant)>> =
    std::sync::Mutex::new(Vec::new());

fn closed_here_lately(index_dir: &Path) -> bool {
    let mut closed = CLOSED_HERE.lock().unwrap_or_else(|p| p.into_inner());
    closed.retain(|(_, at)| at.elapsed() < LOCK_GRACE);
    closed.iter().any(|(dir, _)| dir == index_dir)
}

/// Opens the sled index, waiting while a lock this process let go of lately is still held.
fn open_index(dir: &Path, index_dir: &Path) -> Result<sled::Db, StoreError> {
    loop {
        let opened = sled::Config::new().path(index_dir).cache_capacity(64 << 20).open();
        match opened.map_err(|source| StoreError::Open { dir: dir.to_path_buf(), source }) {
            Err(e) if e.is_locked() && closed_here_lately(index_dir) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

pub struct ChunkStore {
    dir: PathBuf,
    packs: PackSet,
    db: sled::Db,
    index: sled::Tree,
    manifests: sled::Tree,
    latest: sled::Tree,
    file_refs: sled::Tree,
    corrupt_dropped: AtomicU64,
}

impl Drop for ChunkStore {
    fn drop(&mut self) {
        let mut closed = CLOSED_HERE.lock().unwrap_or_else(|p| p.into_inner());
        closed.retain(|(_, at)| at.elapsed() < LOCK_GRACE);
        closed.push((self.dir.join("index"), std::time::Instant::now()));
    }
}

impl ChunkStore {
    pub fn open(dir: &Path) -> Result<ChunkStore, StoreError> {
        Self::open_with_pack_size(dir, crate::packs::PACK_TARGET_BYTES)
    }

    /// [`ChunkStore::open`] sealing packs at `pack_bytes` (small packs let tests compact).
    pub fn open_with_pack_size(dir: &Path, pack_bytes: u64) -> Result<ChunkStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let index_dir = dir.join("index");
        drop_unfinished_sled_snapshots(&index_dir).map_err(io_err(&index_dir))?;
        let db = open_index(dir, &index_dir)?;
        let index = db.open_tree("chunks")?;
        // Live bytes per pack, so compaction knows what removals left behind.
        let mut live: HashMap<u32, u64> = HashMap::new();
        for kv in index.iter() {
            let (_, v) = kv?;
            if let Ok(e) = postcard::from_bytes::<IndexEntry>(&v) {
                *live.entry(e.pack).or_default() += e.stored_len as u64;
            }
        }
        let packs_dir = dir.join("packs");
        let packs = PackSet::open(&packs_dir, live, pack_bytes).map_err(io_err(&packs_dir))?;
        Ok(ChunkStore {
            packs,
            dir: dir.to_path_buf(),
            index,
            manifests: db.open_tree("manifests")?,
            latest: db.open_tree("latest")?,
            file_refs: db.open_tree("file_refs")?,
            db,
            corrupt_dropped: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sled database, for modules that keep their own trees beside the index.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Where a chunk's stored bytes are on disk: (pack file, offset, length). For tools and
    /// tests that inspect (or deliberately damage) the bytes.
    pub fn chunk_location(&self, id: &ChunkId) -> Result<Option<(PathBuf, u64, u32)>, StoreError> {
        Ok(self.entry(id)?.map(|e| (self.packs.path(e.pack), e.offset, e.stored_len)))
    }

    pub fn entry(&self, id: &ChunkId) -> Result<Option<IndexEntry>, StoreError> {
        match self.index.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => {
                postcard::from_bytes(&v).map(Some).map_err(|_| StoreError::BadEntry { id: *id })
            }
        }
    }

    pub fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.index.contains_key(id.as_bytes())?)
    }

    /// Stores a chunk unless present. Returns true when this call added it.
    ///
    /// The caller vouches that `chunk.data` decodes to bytes hashing to `chunk.id` (it computed
    /// the id itself or ran `decode_verified`). Reads check the stored bytes against the
    /// digest recorded here, so later corruption on disk is always caught.
    pub fn put(&self, chunk: &StoredChunk) -> Result<bool, StoreError> {
        if self.contains(&chunk.id)? {
            return Ok(false);
        }
        let stored =
            Stored { encoding: chunk.encoding, plain_len: chunk.plain_len, data: &chunk.data };
        Ok(self.append(&chunk.id, stored, 0)?.is_some())
    }

    /// Stores a chunk with one reference, or counts one more reference to the copy already
    /// stored: what a publish does with every distinct chunk of a layer, in one index write
    /// for a new chunk. The caller vouches for the bytes as for [`ChunkStore::put`].
    pub fn put_counted(&self, id: &ChunkId, stored: Stored<'_>) -> Result<Counted, StoreError> {
        if let Some(entry) = self.append(id, stored, 1)? {
            return Ok(Counted::Added(entry));
        }
        // Stored meanwhile by another writer: count a reference to its copy.
        match self.update_entry(id, |e| e.refs = e.refs.saturating_add(1))? {
            Some(after) => Ok(Counted::Existing(after)),
            None => Err(StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(format!("chunk {id} was removed while being stored")),
            }),
        }
    }

    /// Appends the bytes to a pack and indexes them with `refs` references, unless an entry
    /// for `id` appeared meanwhile (then `None`; the appended bytes are dead space that
    /// compaction reclaims).
    fn append(
        &self,
        id: &ChunkId,
        stored: Stored<'_>,
        refs: u32,
    ) -> Result<Option<IndexEntry>, StoreError> {
        let mut writer = self.packs.take_writer().map_err(io_err(&self.dir))?;
        let offset = match writer.append(stored.data) {
            Ok(o) => o,
            Err(e) => {
                let path = self.packs.path(writer.id);
                self.packs.discard(writer);
                return Err(StoreError::Io { path, source: e });
            }
        };
        let pack = writer.id;
        self.packs.give_back(writer);
        let entry = IndexEntry {
            stored_len: stored.data.len() as u32,
            plain_len: stored.plain_len,
            encoding: stored.encoding as u8,
            flags: FLAG_XXH3,
            refs,
            stored_digest: stored_digest(stored.data),
            pack,
            offset,
        };
        let value = postcard::to_stdvec(&entry).expect("index entries serialize");
        // compare_and_swap so two writers of the same chunk do not both count it as new.
        let added =
            self.index.compare_and_swap(id.as_bytes(), None as Option<&[u8]>, Some(value))?.is_ok();
        if !added {
            return Ok(None);
        }
        self.packs.add_live(pack, stored.data.len() as u64);
        Ok(Some(entry))
    }

    /// Reads and verifies a chunk. A chunk that fails verification is dropped (index entry and
    /// file) and reported as absent, so callers refetch it instead of serving bad bytes.
    pub fn get(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError> {
        let mut buf = Vec::new();
        Ok(self.get_into(id, &mut buf)?.map(|(encoding, plain_len)| StoredChunk {
            id: *id,
            encoding,
            plain_len,
            data: Bytes::from(buf),
        }))
    }

    /// [`ChunkStore::get`] into the caller's buffer, which a loop reuses (no allocation and no
    /// zeroing per chunk): returns the encoding and plain length of the stored bytes now in
    /// `buf`, checked exactly as `get` checks them. On `Ok(None)` or an error `buf` holds
    /// nothing meaningful.
    pub fn get_into(
        &self,
        id: &ChunkId,
        buf: &mut Vec<u8>,
    ) -> Result<Option<(Encoding, u32)>, StoreError> {
        let mut entry = match self.entry(id)? {
            Some(e) => e,
            None => return Ok(None),
        };
        loop {
            match self.packs.read_into(entry.pack, entry.offset, entry.stored_len, buf) {
                Ok(()) => break,
                Err(e) => {
                    // Compaction may have moved the chunk since we read its entry.
                    match self.entry(id)? {
                        Some(now) if now != entry => {
                            entry = now;
                            continue;
                        }
                        None => return Ok(None),
                        Some(_) => {}
                    }
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                    ) {
                        tracing::warn!(chunk = %id, error = %e, "chunk bytes missing from its pack; dropping it");
                        self.drop_corrupt(id);
                        return Ok(None);
                    }
                    return Err(StoreError::Io { path: self.packs.path(entry.pack), source: e });
                }
            }
        }
        let Some(encoding) = Encoding::from_u8(entry.encoding) else {
            self.drop_corrupt(id);
            return Ok(None);
        };
        if !entry.stored_bytes_match(buf) {
            tracing::warn!(chunk = %id, "corrupt chunk on disk (stored bytes changed); dropping it");
            self.drop_corrupt(id);
            return Ok(None);
        }
        Ok(Some((encoding, entry.plain_len)))
    }

    /// The plain bytes of a chunk, decoded and checked against the chunk id itself.
    pub fn get_plain(&self, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        let Some(c) = self.get(id)? else { return Ok(None) };
        match c.decode_verified() {
            Ok(plain) => Ok(Some(plain)),
            Err(e) => {
                // Only a chunk put with a wrong id gets here: the stored digest matched.
                tracing::warn!(chunk = %id, error = %e, "chunk does not match its id; dropping it");
                self.drop_corrupt(id);
                Ok(None)
            }
        }
    }

    fn drop_corrupt(&self, id: &ChunkId) {
        self.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
        let _ = self.remove(id);
    }

    /// Chunks dropped because they failed verification since the store was opened.
    pub fn corrupt_dropped(&self) -> u64 {
        self.corrupt_dropped.load(Ordering::Relaxed)
    }

    /// Removes a chunk from the index. Its bytes become dead space in their pack; once a sealed
    /// pack is at least half dead, its live chunks are copied to a new pack and it is deleted.
    pub fn remove(&self, id: &ChunkId) -> Result<Option<IndexEntry>, StoreError> {
        let Some(old) = self.index.remove(id.as_bytes())? else { return Ok(None) };
        let Ok(e) = postcard::from_bytes::<IndexEntry>(&old) else { return Ok(None) };
        if self.packs.sub_live(e.pack, e.stored_len as u64) {
            self.compact(e.pack)?;
        }
        Ok(Some(e))
    }

    /// Moves a pack's live chunks into the current packs and deletes it. Safe against
    /// concurrent readers (they retry on the moved entry) and crashes (the old pack is deleted
    /// only after every entry points elsewhere; a crash leaves duplicate bytes, not loss).
    fn compact(&self, pack: u32) -> Result<(), StoreError> {
        let victims: Vec<(ChunkId, IndexEntry)> =
            self.ids().filter_map(|r| r.ok()).filter(|(_, e)| e.pack == pack).collect();
        for (id, e) in victims {
            let data = match self.packs.read_at(e.pack, e.offset, e.stored_len) {
                Ok(d) => d,
                Err(_) => continue,
            };
            if !e.stored_bytes_match(&data) {
                self.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
                let _ = self.index.remove(id.as_bytes());
                continue;
            }
            let mut w = self.packs.take_writer().map_err(io_err(&self.dir))?;
            let offset = match w.append(&data) {
                Ok(o) => o,
                Err(err) => {
                    let path = self.packs.path(w.id);
                    self.packs.discard(w);
                    return Err(StoreError::Io { path, source: err });
                }
            };
            let moved = IndexEntry { pack: w.id, offset, ..e };
            let new_pack = w.id;
            self.packs.give_back(w);
            let old_v = postcard::to_stdvec(&e).expect("index entries serialize");
            let new_v = postcard::to_stdvec(&moved).expect("index entries serialize");
            // Only move an entry nobody changed meanwhile (refs, flags, removal).
            if self.index.compare_and_swap(id.as_bytes(), Some(old_v), Some(new_v))?.is_ok() {
                self.packs.add_live(new_pack, e.stored_len as u64);
            }
        }
        // Entries changed during the copy (e.g. refs bumped) still point here: keep the pack.
        if self.ids().filter_map(|r| r.ok()).any(|(_, e)| e.pack == pack) {
            return Ok(());
        }
        self.db.flush()?;
        self.packs.sync_idle().map_err(io_err(&self.dir))?;
        self.packs.delete(pack).map_err(io_err(&self.dir))
    }

    /// Applies `f` to a chunk's index entry atomically (refs, flags).
    pub fn update_entry(
        &self,
        id: &ChunkId,
        f: impl Fn(&mut IndexEntry),
    ) -> Result<Option<IndexEntry>, StoreError> {
        let out = self.index.update_and_fetch(id.as_bytes(), |old| {
            let mut e: IndexEntry = postcard::from_bytes(old?).ok()?;
            f(&mut e);
            Some(postcard::to_stdvec(&e).expect("index entries serialize"))
        })?;
        Ok(out.and_then(|v| postcard::from_bytes(&v).ok()))
    }

    pub fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, StoreError> {
        ids.iter().map(|id| self.contains(id)).collect()
    }

    /// Number of chunks and their stored bytes, by a scan of the index.
    pub fn totals(&self) -> Result<(u64, u64), StoreError> {
        let mut n = 0;
        let mut bytes = 0;
        for kv in self.index.iter() {
            let (_, v) = kv?;
            if let Ok(e) = postcard::from_bytes::<IndexEntry>(&v) {
                n += 1;
                bytes += e.stored_len as u64;
            }
        }
        Ok((n, bytes))
    }

    /// Every chunk id in the index (for verification and eviction scans).
    pub fn ids(&self) -> impl Iterator<Item = Result<(ChunkId, IndexEntry), StoreError>> + '_ {
        self.index.iter().map(|kv| {
            let (k, v) = kv?;
            let id = ChunkId(
                k.as_ref().try_into().map_err(|_| StoreError::BadEntry { id: ChunkId([0; 32]) })?,
            );
            let e = postcard::from_bytes(&v).map_err(|_| StoreError::BadEntry { id })?;
            Ok((id, e))
        })
    }

    /// Forces packs and index to stable storage (end of a publish).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.packs.sync_idle().map_err(io_err(&self.dir))?;
        self.db.flush()?;
        Ok(())
    }

    // ---- file references ----

    /// Records where chunks lie in files outside the store. Chunks the store holds itself are
    /// skipped (their copy is stronger); an older reference to the same chunk is replaced.
    /// Returns how many were recorded.
    pub fn put_file_refs<'a>(
        &self,
        refs: impl IntoIterator<Item = (&'a ChunkId, &'a FileRef)>,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for (id, r) in refs {
            if self.contains(id)? {
                continue;
            }
            let v = postcard::to_stdvec(r).expect("file references serialize");
            self.file_refs.insert(id.as_bytes(), v)?;
            n += 1;
        }
        Ok(n)
    }

    /// The recorded reference for `id`, unchecked.
    pub fn file_ref(&self, id: &ChunkId) -> Result<Option<FileRef>, StoreError> {
        match self.file_refs.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => match postcard::from_bytes(&v) {
                Ok(r) => Ok(Some(r)),
                Err(_) => {
                    self.file_refs.remove(id.as_bytes())?;
                    Ok(None)
                }
            },
        }
    }

    /// True when a reference for `id` exists and its file still has the recorded stamp (one
    /// `stat`; the bytes are checked when read). A stale reference is dropped.
    pub fn has_file_ref(&self, id: &ChunkId) -> Result<bool, StoreError> {
        let Some(r) = self.file_ref(id)? else { return Ok(false) };
        let fresh = std::fs::symlink_metadata(r.path())
            .is_ok_and(|md| md.is_file() && RefStamp::of(&md) == r.stamp);
        if !fresh {
            self.drop_file_ref(id, &r);
        }
        Ok(fresh)
    }

    /// The plain bytes of `id` read through its file reference, checked against the id. A
    /// reference whose file changed (stamp or bytes) or vanished is dropped and `None` returned.
    pub fn read_file_ref(&self, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        let Some(r) = self.file_ref(id)? else { return Ok(None) };
        let path = r.path();
        let read = || -> std::io::Result<Option<Vec<u8>>> {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)?;
            let md = f.metadata()?;
            if !md.is_file() || RefStamp::of(&md) != r.stamp {
                return Ok(None);
            }
            let mut buf = vec![0u8; r.len as usize];
            f.read_exact_at(&mut buf, r.offset)?;
            Ok(Some(buf))
        };
        match read() {
            Ok(Some(buf)) if id.verify(&buf) => Ok(Some(Bytes::from(buf))),
            Ok(Some(_)) => {
                tracing::warn!(chunk = %id, path = %path.display(), "referenced file no longer holds the chunk; dropping the reference");
                self.drop_file_ref(id, &r);
                Ok(None)
            }
            Ok(None) => {
                self.drop_file_ref(id, &r);
                Ok(None)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                ) || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                self.drop_file_ref(id, &r);
                Ok(None)
            }
            Err(source) => Err(StoreError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Removes the reference for `id` unless it was replaced meanwhile.
    fn drop_file_ref(&self, id: &ChunkId, old: &FileRef) {
        let v = postcard::to_stdvec(old).expect("file references serialize");
        let _ = self.file_refs.compare_and_swap(id.as_bytes(), Some(v), None as Option<&[u8]>);
    }

    /// Number of recorded file references (checked or not).
    pub fn file_ref_count(&self) -> usize {
        self.file_refs.len()
    }

    // ---- manifests ----

    fn manifest_key(name: &str, version: &str) -> Vec<u8> {
        let mut k = name.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(version.as_bytes());
        k
    }

    /// Stores a signed manifest's root and body chunks and makes it the latest version of its
    /// layer. Each distinct body chunk gets one reference, as a layer's file chunks do, so
    /// that whatever counts references keeps a manifest's body as long as its layer. Returns
    /// the body chunks this call added to the store.
    pub fn put_manifest(
        &self,
        sm: &SignedManifest,
        body: &ManifestBody,
    ) -> Result<Vec<ChunkId>, StoreError> {
        let added = self.put_manifest_body(body)?;
        let mut seen = std::collections::HashSet::new();
        for c in &body.chunks {
            if seen.insert(c.id) {
                self.update_entry(&c.id, |e| e.refs = e.refs.saturating_add(1))?;
            }
        }
        self.sync()?;
        let m = &sm.manifest;
        self.manifests.insert(Self::manifest_key(&m.name, &m.version), sm.to_bytes())?;
        self.advance_latest(&m.name, &m.version)?;
        self.db.flush()?;
        Ok(added)
    }

    /// Makes `version` the latest of `name` unless a higher one (by
    /// [`crate::manifest::compare_versions`]) is latest already: "latest" never moves back, so
    /// a cache that is asked for an older version keeps the newer one as its latest.
    fn advance_latest(&self, name: &str, version: &str) -> Result<(), StoreError> {
        self.latest.fetch_and_update(name.as_bytes(), |old| match old {
            Some(v)
                if crate::manifest::compare_versions(&String::from_utf8_lossy(v), version)
                    == std::cmp::Ordering::Greater =>
            {
                Some(v.to_vec())
            }
            _ => Some(version.as_bytes().to_vec()),
        })?;
        Ok(())
    }

    /// Stores a manifest body's chunks (compressed where that pays), without references.
    /// Returns the ones that were not in the store yet.
    pub fn put_manifest_body(&self, body: &ManifestBody) -> Result<Vec<ChunkId>, StoreError> {
        let mut added = Vec::new();
        for (c, data) in body.pieces() {
            if !self.contains(&c.id)? && self.put(&StoredChunk::encode_with_id(c.id, data))? {
                added.push(c.id);
            }
        }
        Ok(added)
    }

    /// Opens `name@version` (the latest when None): verifies the stored root against `key`
    /// and assembles the body from this store's chunks. `None` when no such root is stored.
    pub fn open_manifest(
        &self,
        name: &str,
        version: Option<&str>,
        key: &VerifyingKey,
    ) -> Result<Option<SignedManifest>, StoreError> {
        let Some(bytes) = self.manifest_bytes(name, version)? else { return Ok(None) };
        self.open_manifest_bytes(&bytes, key).map(Some)
    }

    /// Opens signed root bytes, the body coming from this store's chunks.
    pub fn open_manifest_bytes(
        &self,
        bytes: &[u8],
        key: &VerifyingKey,
    ) -> Result<SignedManifest, StoreError> {
        let root = crate::manifest::SignedRoot::open(bytes, key)
            .map_err(|source| StoreError::Manifest { label: "(unopened root)".into(), source })?;
        let label = root.label();
        let mut store_error = None;
        let opened = root.assemble(|c| match self.get_plain(&c.id) {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err("not in the store".into()),
            Err(e) => {
                let msg = e.to_string();
                store_error = Some(e);
                Err(msg)
            }
        });
        match (opened, store_error) {
            (Ok(sm), _) => Ok(sm),
            (Err(_), Some(e)) => Err(e),
            (Err(source), None) => Err(StoreError::Manifest { label, source }),
        }
    }

    /// Stores signed manifest bytes as received, without opening them. Readers always open
    /// (verify) what they get, so this is safe for caches of upstream manifests; tests also use
    /// it to plant forged manifests.
    pub fn put_manifest_bytes(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.manifests.insert(Self::manifest_key(name, version), bytes)?;
        self.advance_latest(name, version)?;
        self.db.flush()?;
        Ok(())
    }

    pub fn has_manifest(&self, name: &str, version: &str) -> Result<bool, StoreError> {
        Ok(self.manifests.contains_key(Self::manifest_key(name, version))?)
    }

    /// Signed manifest bytes for `name@version` (or the latest version when None).
    pub fn manifest_bytes(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, StoreError> {
        let version = match version {
            Some(v) => v.to_string(),
            None => match self.latest.get(name.as_bytes())? {
                Some(v) => String::from_utf8_lossy(&v).into_owned(),
                None => return Ok(None),
            },
        };
        Ok(self.manifests.get(Self::manifest_key(name, &version))?.map(|v| Bytes::from(v.to_vec())))
    }

    /// Every stored manifest as (name, version, signed bytes), ordered by name then version.
    pub fn manifests(
        &self,
    ) -> impl Iterator<Item = Result<(String, String, Bytes), StoreError>> + '_ {
        self.manifests.iter().map(|kv| {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let (name, version) = key.split_once('\0').unwrap_or((&key, ""));
            Ok((name.to_string(), version.to_string(), Bytes::from(v.to_vec())))
        })
    }

    pub fn latest_version(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.latest.get(name.as_bytes())?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Layers for a `ListLayers` answer: the digest of each stored manifest root.
    pub fn layer_refs(&self) -> Result<Vec<LayerRef>, StoreError> {
        self.manifests()
            .map(|r| {
                let (name, version, bytes) = r?;
                let digest = crate::manifest::digest_of_signed(&bytes);
                Ok(LayerRef { name, version, digest })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
