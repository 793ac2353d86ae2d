//! The chunk store: chunk bytes in a fan-out directory, the index in sled.
//!
//! Layout under the store directory:
//! - `index/`                  sled database: trees `chunks`, `manifests`, `latest`
//! - `chunks/<2 hex>/<64 hex>` one file per chunk, holding its stored (maybe zstd) bytes
//!
//! Invariant: an index entry is written only after its file is complete and renamed into
//! place, so a write that dies midway (kill -9, full disk) leaves at most an orphan temp file,
//! never an index entry pointing at partial data. Every read is verified against the chunk id;
//! a chunk that fails (bit rot, tampering) is dropped from the index and reported as missing.
//!
//! One file per chunk (rather than pack files) keeps eviction a single unlink and lets the
//! page cache serve hot chunks; docs/benchmarks.md records the measurement behind that choice.

use crate::chunk::ChunkId;
use crate::compress::{Encoding, StoredChunk};
use crate::manifest::SignedManifest;
use crate::wire::LayerRef;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::Write;
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
    /// BLAKE3 of the stored (possibly compressed) bytes, recorded when the chunk was put.
    /// Reads check it instead of decompressing and rehashing: the chunk id was verified
    /// before `put`, so stored bytes matching this digest are the verified bytes.
    pub stored_digest: [u8; 32],
}

pub const FLAG_PINNED: u8 = 1;

pub struct ChunkStore {
    dir: PathBuf,
    chunks_dir: PathBuf,
    db: sled::Db,
    index: sled::Tree,
    manifests: sled::Tree,
    latest: sled::Tree,
    tmp_counter: AtomicU64,
    corrupt_dropped: AtomicU64,
}

impl ChunkStore {
    pub fn open(dir: &Path) -> Result<ChunkStore, StoreError> {
        std::fs::create_dir_all(dir.join("chunks")).map_err(io_err(dir))?;
        let db = sled::Config::new()
            .path(dir.join("index"))
            .cache_capacity(64 << 20)
            .open()
            .map_err(|source| StoreError::Open { dir: dir.to_path_buf(), source })?;
        Ok(ChunkStore {
            chunks_dir: dir.join("chunks"),
            dir: dir.to_path_buf(),
            index: db.open_tree("chunks")?,
            manifests: db.open_tree("manifests")?,
            latest: db.open_tree("latest")?,
            db,
            tmp_counter: AtomicU64::new(0),
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

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks_dir.join(&hex[..2]).join(hex)
    }

    pub fn entry(&self, id: &ChunkId) -> Result<Option<IndexEntry>, StoreError> {
        match self.index.get(id.as_bytes())? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(|_| StoreError::BadEntry { id: *id }),
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
        let path = self.chunk_path(&chunk.id);
        let parent = path.parent().expect("chunk paths have a fan-out parent");
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".tmp-{}-{}-{n}", chunk.id.to_hex(), std::process::id()));
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut f = match std::fs::File::create(tmp) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(parent)?;
                    std::fs::File::create(tmp)?
                }
                Err(e) => return Err(e),
            };
            f.write_all(&chunk.data)?;
            Ok(())
        };
        if let Err(e) = write(&tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Io { path: tmp, source: e });
        }
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::Io { path: path.clone(), source: e }
        })?;
        let entry = IndexEntry {
            stored_len: chunk.data.len() as u32,
            plain_len: chunk.plain_len,
            encoding: chunk.encoding as u8,
            flags: 0,
            refs: 0,
            stored_digest: *blake3::hash(&chunk.data).as_bytes(),
        };
        let value = postcard::to_stdvec(&entry).expect("index entries serialize");
        // compare_and_swap so two writers of the same chunk do not both count it as new.
        let added = self
            .index
            .compare_and_swap(chunk.id.as_bytes(), None as Option<&[u8]>, Some(value))?
            .is_ok();
        Ok(added)
    }

    /// Reads and verifies a chunk. A chunk that fails verification is dropped (index entry and
    /// file) and reported as absent, so callers refetch it instead of serving bad bytes.
    pub fn get(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError> {
        let Some(entry) = self.entry(id)? else { return Ok(None) };
        let path = self.chunk_path(id);
        let data = match std::fs::read(&path) {
            Ok(d) => Bytes::from(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(chunk = %id, "index entry without chunk file; dropping it");
                self.drop_corrupt(id);
                return Ok(None);
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let Some(encoding) = Encoding::from_u8(entry.encoding) else {
            self.drop_corrupt(id);
            return Ok(None);
        };
        if data.len() != entry.stored_len as usize
            || *blake3::hash(&data).as_bytes() != entry.stored_digest
        {
            tracing::warn!(chunk = %id, "corrupt chunk on disk (stored bytes changed); dropping it");
            self.drop_corrupt(id);
            return Ok(None);
        }
        Ok(Some(StoredChunk { id: *id, encoding, plain_len: entry.plain_len, data }))
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

    /// Removes a chunk: index entry first, so no reader ever finds an entry without its file.
    pub fn remove(&self, id: &ChunkId) -> Result<Option<IndexEntry>, StoreError> {
        let old = self.index.remove(id.as_bytes())?;
        let path = self.chunk_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path, source: e }),
        }
        Ok(old.and_then(|v| postcard::from_bytes(&v).ok()))
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
            let id = ChunkId(k.as_ref().try_into().map_err(|_| StoreError::BadEntry { id: ChunkId([0; 32]) })?);
            let e = postcard::from_bytes(&v).map_err(|_| StoreError::BadEntry { id })?;
            Ok((id, e))
        })
    }

    /// Forces index and chunk files to stable storage (end of a publish).
    pub fn sync(&self) -> Result<(), StoreError> {
        sync_filesystem(&self.chunks_dir).map_err(io_err(&self.chunks_dir))?;
        self.db.flush()?;
        Ok(())
    }

    // ---- manifests ----

    fn manifest_key(name: &str, version: &str) -> Vec<u8> {
        let mut k = name.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(version.as_bytes());
        k
    }

    /// Stores a signed manifest and makes it the latest version of its layer.
    pub fn put_manifest(&self, sm: &SignedManifest) -> Result<(), StoreError> {
        let m = &sm.manifest;
        self.manifests.insert(Self::manifest_key(&m.name, &m.version), sm.to_bytes())?;
        self.latest.insert(m.name.as_bytes(), m.version.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Stores signed manifest bytes as received, without opening them. Readers always open
    /// (verify) what they get, so this is safe for caches of upstream manifests; tests also use
    /// it to plant forged manifests.
    pub fn put_manifest_bytes(&self, name: &str, version: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.manifests.insert(Self::manifest_key(name, version), bytes)?;
        self.latest.insert(name.as_bytes(), version.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn has_manifest(&self, name: &str, version: &str) -> Result<bool, StoreError> {
        Ok(self.manifests.contains_key(Self::manifest_key(name, version))?)
    }

    /// Signed manifest bytes for `name@version` (or the latest version when None).
    pub fn manifest_bytes(&self, name: &str, version: Option<&str>) -> Result<Option<Bytes>, StoreError> {
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
    pub fn manifests(&self) -> impl Iterator<Item = Result<(String, String, Bytes), StoreError>> + '_ {
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

    /// Layers for a `ListLayers` answer: digest of each stored manifest body.
    pub fn layer_refs(&self) -> Result<Vec<LayerRef>, StoreError> {
        self.manifests()
            .map(|r| {
                let (name, version, bytes) = r?;
                let body = bytes.get(68..).unwrap_or_default();
                Ok(LayerRef { name, version, digest: *blake3::hash(body).as_bytes() })
            })
            .collect()
    }
}

/// syncfs(2) on the filesystem holding `dir`: one call instead of an fsync per chunk file.
fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(dir)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is an open file descriptor for the whole call; syncfs only reads it.
        let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path()).unwrap();
        (d, s)
    }

    #[test]
    fn put_get_dedup() {
        let (_d, s) = store();
        let c = StoredChunk::encode(&[1u8; 5000]);
        assert!(s.put(&c).unwrap());
        assert!(!s.put(&c).unwrap(), "second put of the same chunk adds nothing");
        let got = s.get(&c.id).unwrap().unwrap();
        assert_eq!(got, c);
        assert_eq!(s.get_plain(&c.id).unwrap().unwrap().as_ref(), &[1u8; 5000][..]);
        assert_eq!(s.totals().unwrap(), (1, c.data.len() as u64));
    }

    #[test]
    fn corrupt_chunk_is_dropped_not_served() {
        let (_d, s) = store();
        let c = StoredChunk::encode(b"some bytes that will rot on disk");
        s.put(&c).unwrap();
        let path = s.chunk_path(&c.id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(s.get(&c.id).unwrap().is_none());
        assert!(!s.contains(&c.id).unwrap(), "the bad entry is gone so it can be refetched");
        assert_eq!(s.corrupt_dropped(), 1);
        assert!(s.put(&c).unwrap());
        assert!(s.get(&c.id).unwrap().is_some());
    }

    #[test]
    fn missing_file_is_dropped() {
        let (_d, s) = store();
        let c = StoredChunk::encode(b"gone");
        s.put(&c).unwrap();
        std::fs::remove_file(s.chunk_path(&c.id)).unwrap();
        assert!(s.get(&c.id).unwrap().is_none());
        assert!(!s.contains(&c.id).unwrap());
    }

    #[test]
    fn index_survives_reopen_and_refs_update() {
        let d = tempfile::tempdir().unwrap();
        let c = StoredChunk::encode(&[9u8; 300]);
        {
            let s = ChunkStore::open(d.path()).unwrap();
            s.put(&c).unwrap();
            s.update_entry(&c.id, |e| e.refs += 2).unwrap();
            s.sync().unwrap();
        }
        let s = ChunkStore::open(d.path()).unwrap();
        assert_eq!(s.entry(&c.id).unwrap().unwrap().refs, 2);
        assert_eq!(s.get(&c.id).unwrap().unwrap(), c);
    }

    #[test]
    fn failed_write_leaves_no_entry() {
        let (_d, s) = store();
        let c = StoredChunk::encode(b"cannot be written");
        let fan = s.chunk_path(&c.id).parent().unwrap().to_path_buf();
        // A plain file where the fan-out directory should be makes every write fail.
        std::fs::write(&fan, b"in the way").unwrap();
        assert!(s.put(&c).is_err());
        assert!(!s.contains(&c.id).unwrap());
    }
}
