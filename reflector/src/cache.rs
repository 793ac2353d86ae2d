//! The reflector's cache: chunks and signed manifest roots in a core [`ChunkStore`] under
//! `STATE/cache`, mirrored in a [`CacheLedger`] for LRU eviction under `cache_size`, and pins
//! for the layers assigned to the site.
//!
//! A manifest is held as its signed root (the store's `manifests` tree) and its body chunks,
//! which are ordinary cached chunks pinned in the ledger for as long as the root is held, so
//! eviction never breaks a manifest the cache serves. Should a body chunk go anyway (dropped
//! as corrupt), the chunk path fetches it again on the next request for it.
//!
//! Everything survives a restart: chunks and roots are in the store, pinned layers in the
//! store's sled database (tree `reflector_pinned`), the last version upstream called "latest" in
//! tree `reflector_latest`. The recency order is not persisted: after a restart every cached
//! chunk counts as used at start-up, in index order.
//!
//! Chunks are verified on every read ([`ChunkStore::get`]); a chunk that fails is dropped from
//! the store and the ledger, so it is fetched again instead of being served.

use crate::body::BodyError;
use crate::metrics::ReflectorMetrics;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use oasis_core::cache::CacheLedger;
use oasis_core::compress::StoredChunk;
use oasis_core::manifest::{digest_of_signed, ChunkRef, ManifestError, SignedManifest, SignedRoot};
use oasis_core::store::{ChunkStore, StoreError, FLAG_PINNED};
use oasis_core::wire::LayerRef;
use oasis_core::ChunkId;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const PINNED_TREE: &str = "reflector_pinned";
const LATEST_TREE: &str = "reflector_latest";
/// The last signed "latest" statement received per layer name (`manifest::Latest`, encoded).
const LATEST_STATEMENTS_TREE: &str = "reflector_latest_statements";

/// Sizes of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub chunks: u64,
    pub bytes: u64,
    pub pinned_bytes: u64,
    /// `cache_size`; None = no cap.
    pub cap: Option<u64>,
}

pub struct Cache {
    pub store: Arc<ChunkStore>,
    ledger: Mutex<CacheLedger>,
    cap: Option<u64>,
    origin: Instant,
    metrics: ReflectorMetrics,
    pinned: sled::Tree,
    latest: sled::Tree,
    statements: sled::Tree,
    key: VerifyingKey,
    /// Wakes the evictor after inserts that took the cache over its cap.
    pub evict_wanted: tokio::sync::Notify,
    /// Pinned bytes exceed the cap (warned once per episode).
    overfull: AtomicBool,
    /// Called with every chunk id stored and every id evicted (the mesh announces them).
    observer: std::sync::OnceLock<Box<dyn CacheObserver>>,
    /// Layer digests of the manifest roots held: verified, body chunks pinned.
    held: Mutex<HashSet<[u8; 32]>>,
    /// Pinned layers (keys of `pinned`) whose chunks are pinned in the ledger now. Held while a
    /// layer is pinned or unpinned, so the two do not interleave.
    applied: Mutex<HashSet<Vec<u8>>>,
}

/// Told what enters and leaves the cache (the mesh's availability announcements).
pub trait CacheObserver: Send + Sync {
    fn stored(&self, id: &ChunkId);
    fn evicted(&self, id: &ChunkId);
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pin_key(name: &str, version: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(version.as_bytes());
    k
}

impl Cache {
    /// Opens (or creates) the store and rebuilds the ledger and pins from it. Blocking.
    pub fn open(
        dir: &Path,
        cap: Option<u64>,
        metrics: ReflectorMetrics,
        key: VerifyingKey,
    ) -> anyhow::Result<Cache> {
        let store = Arc::new(ChunkStore::open(dir)?);
        let pinned = store.db().open_tree(PINNED_TREE)?;
        let latest = store.db().open_tree(LATEST_TREE)?;
        let statements = store.db().open_tree(LATEST_STATEMENTS_TREE)?;
        let mut ledger = CacheLedger::new();
        for item in store.ids() {
            let (id, entry) = item?;
            ledger.insert(id, entry.stored_len as u64, Duration::ZERO);
        }
        let cache = Cache {
            store,
            ledger: Mutex::new(ledger),
            cap,
            origin: Instant::now(),
            metrics,
            pinned,
            latest,
            statements,
            key,
            evict_wanted: tokio::sync::Notify::new(),
            overfull: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
            held: Mutex::new(HashSet::new()),
            applied: Mutex::new(HashSet::new()),
        };
        // Hold every cached root that verifies. One that does not (a format 1 manifest cached by
        // an older build, a root signed with another key) is not served: asked for, it is
        // fetched again and replaced.
        for item in cache.store.manifests() {
            let (name, version, bytes) = item?;
            let label = format!("{name}@{version}");
            match SignedRoot::open(&bytes, &cache.key) {
                Ok(root) if root.root.name == name && root.root.version == version => {
                    cache.hold_manifest(&root)?
                }
                Ok(root) => {
                    tracing::warn!(layer = %label, holds = %root.label(), "cached manifest is filed under another layer; it is fetched again when asked for")
                }
                Err(e) => {
                    tracing::warn!(layer = %label, error = %e, "cached manifest is not usable; it is fetched again when asked for")
                }
            }
        }
        // Re-pin the pinned layers from their cached manifests.
        for item in cache.pinned.iter() {
            let (k, _) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let (name, version) = key.split_once('\0').unwrap_or((&key, ""));
            let label = format!("{name}@{version}");
            let chunks = cache.cached_root(name, Some(version)).and_then(|root| match root {
                Some(root) => Ok(cache.layer_chunks(&root)?),
                None => Ok(None),
            });
            match chunks {
                Ok(Some(chunks)) => {
                    // The store's pinned flags persist; only the ledger needs the pins again.
                    cache.apply_pins(&chunks);
                    locked(&cache.applied).insert(k.to_vec());
                }
                Ok(None) => {
                    tracing::warn!(layer = %label, "pinned layer has no whole cached manifest; its chunks are pinned again when it is next pinned (assignment sync)")
                }
                Err(e) => {
                    tracing::warn!(layer = %label, error = %e, "pinned layer's cached manifest is unusable; its chunks are pinned again when it is next pinned (assignment sync)")
                }
            }
        }
        cache.update_gauges();
        let s = cache.stats();
        tracing::info!(
            dir = %dir.display(),
            chunks = s.chunks,
            bytes = s.bytes,
            pinned_bytes = s.pinned_bytes,
            cap = ?cap,
            "cache opened"
        );
        Ok(cache)
    }

    /// Installs the observer (once; later calls are ignored).
    pub fn observe(&self, observer: Box<dyn CacheObserver>) {
        let _ = self.observer.set(observer);
    }

    fn lock(&self) -> MutexGuard<'_, CacheLedger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub fn cap(&self) -> Option<u64> {
        self.cap
    }

    pub fn stats(&self) -> CacheStats {
        let l = self.lock();
        CacheStats {
            chunks: l.len() as u64,
            bytes: l.total_bytes(),
            pinned_bytes: l.pinned_bytes(),
            cap: self.cap,
        }
    }

    fn update_gauges(&self) {
        let s = self.stats();
        self.metrics.cache_bytes.set(s.bytes as i64);
        self.metrics.cache_chunks.set(s.chunks as i64);
        self.metrics.cache_pinned_bytes.set(s.pinned_bytes as i64);
    }

    /// A cached chunk, verified; records the use. A chunk that fails verification is dropped
    /// (store and ledger) and reported as absent. Blocking.
    pub fn get(&self, id: &ChunkId) -> Result<Option<StoredChunk>, StoreError> {
        match self.store.get(id)? {
            Some(c) => {
                let now = self.now();
                self.lock().touch(id, now);
                Ok(Some(c))
            }
            None => {
                // Gone or dropped as corrupt by the store: forget it here too. Checked under the
                // ledger lock: a concurrent `put` may have stored it since the read (it indexes
                // the chunk before recording it here), and must not lose its ledger entry.
                let removed = {
                    let mut l = self.lock();
                    if self.store.contains(id)? {
                        None
                    } else {
                        l.remove(id)
                    }
                };
                if removed.is_some() {
                    self.update_gauges();
                    if let Some(o) = self.observer.get() {
                        o.evicted(id);
                    }
                }
                Ok(None)
            }
        }
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.store.contains(id).unwrap_or(false)
    }

    /// Stores a chunk the caller has verified. Blocking.
    pub fn put(&self, chunk: &StoredChunk) -> Result<(), StoreError> {
        self.store.put(chunk)?;
        let now = self.now();
        let (pinned, over) = {
            let mut l = self.lock();
            l.insert(chunk.id, chunk.data.len() as u64, now);
            (l.is_pinned(&chunk.id), self.cap.is_some_and(|c| l.total_bytes() > c))
        };
        if pinned {
            self.store.update_entry(&chunk.id, |e| e.flags |= FLAG_PINNED)?;
        }
        self.update_gauges();
        if over {
            self.evict_wanted.notify_one();
        }
        if let Some(o) = self.observer.get() {
            o.stored(&chunk.id);
        }
        Ok(())
    }

    /// Evicts least recently used unpinned chunks until the cache fits its cap. Returns the
    /// chunks and bytes evicted. Blocking.
    pub fn evict(&self) -> (u64, u64) {
        let Some(cap) = self.cap else { return (0, 0) };
        let candidates = self.lock().evict_candidates(cap);
        let (mut n, mut bytes) = (0, 0);
        for id in candidates {
            // The ledger first (checked again under the lock: a pin may have arrived
            // meanwhile), then the store: a concurrent re-insert then leaves a ledger entry
            // without a stored chunk, which the next read drops, rather than an uncounted chunk.
            let removed = {
                let mut l = self.lock();
                if l.is_pinned(&id) {
                    continue;
                }
                l.remove(&id)
            };
            let Some(b) = removed else { continue };
            if let Err(e) = self.store.remove(&id) {
                tracing::warn!(chunk = %id, error = %e, "cannot evict chunk");
                continue;
            }
            if let Some(o) = self.observer.get() {
                o.evicted(&id);
            }
            n += 1;
            bytes += b;
        }
        if n > 0 {
            self.metrics.evictions.inc_by(n);
            self.update_gauges();
            tracing::debug!(chunks = n, bytes, "evicted");
        }
        let s = self.stats();
        let overfull = s.pinned_bytes > cap;
        if overfull != self.overfull.swap(overfull, Ordering::Relaxed) && overfull {
            tracing::warn!(
                pinned_bytes = s.pinned_bytes,
                cap,
                "pinned layers alone exceed cache_size; the cache stays over its cap"
            );
        }
        (n, bytes)
    }

    // ---- manifests ----

    /// Pins the body chunks of a verified manifest root (once per layer digest), so that
    /// eviction never breaks a manifest this cache holds; chunks that arrive later are pinned
    /// from the start. Called before a body is fetched, and for every cached root at start-up.
    /// The hold lasts as long as the process (cached roots are never dropped). Blocking.
    pub fn hold_manifest(&self, root: &SignedRoot) -> Result<(), StoreError> {
        if !locked(&self.held).insert(root.digest) {
            return Ok(());
        }
        let mut present = Vec::new();
        {
            let mut l = self.lock();
            for c in root.root.unique_body_chunks() {
                if l.pin(c.id) && l.contains(&c.id) {
                    present.push(c.id);
                }
            }
        }
        self.mark_pinned(&present, true)?;
        self.update_gauges();
        Ok(())
    }

    /// Does the cache hold (and serve) the manifest root with this layer digest?
    pub fn holds_manifest(&self, digest: &[u8; 32]) -> bool {
        locked(&self.held).contains(digest)
    }

    /// Sets or clears the pinned flag of chunks in the store's index, where it is not so
    /// already (it tells tools which chunks eviction spares; the ledger decides).
    fn mark_pinned(&self, ids: &[ChunkId], on: bool) -> Result<(), StoreError> {
        for id in ids {
            let flagged = self.store.entry(id)?.map(|e| e.flags & FLAG_PINNED != 0);
            if flagged.is_some_and(|f| f != on) {
                self.store.update_entry(id, |e| {
                    if on {
                        e.flags |= FLAG_PINNED
                    } else {
                        e.flags &= !FLAG_PINNED
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Cached signed root bytes (`version` None = the latest known). Only roots this cache
    /// holds (verified against the trusted key, body pinned) count: others, such as format 1
    /// manifests cached by an older build, are fetched again.
    pub fn manifest_bytes(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, StoreError> {
        let bytes = match version {
            Some(v) => self.store.manifest_bytes(name, Some(v))?,
            None => match self.latest.get(name.as_bytes())? {
                Some(v) => {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    match self.store.manifest_bytes(name, Some(&v))? {
                        Some(b) => Some(b),
                        None => self.store.manifest_bytes(name, None)?,
                    }
                }
                None => self.store.manifest_bytes(name, None)?,
            },
        };
        Ok(bytes.filter(|b| self.holds_manifest(&digest_of_signed(b))))
    }

    /// The cached root of `name@version` (None = the latest known), verified.
    pub fn cached_root(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> anyhow::Result<Option<SignedRoot>> {
        match self.manifest_bytes(name, version)? {
            None => Ok(None),
            Some(b) => Ok(Some(SignedRoot::open(&b, &self.key)?)),
        }
    }

    /// Opens a cached manifest whole, its body assembled from the store. `None` when the root
    /// is not cached, or when a body chunk is gone (the manifest then counts as not cached, and
    /// the next request fetches what is missing). Blocking.
    ///
    /// The reflector itself never needs the whole manifest: it reads the chunk list with
    /// [`Cache::layer_chunks`], which does not hold every entry in memory at once.
    pub fn open_cached_manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> anyhow::Result<Option<SignedManifest>> {
        let Some(bytes) = self.manifest_bytes(name, version)? else { return Ok(None) };
        match self.store.open_manifest_bytes(&bytes, &self.key) {
            Ok(sm) => Ok(Some(sm)),
            Err(StoreError::Manifest { source: ManifestError::BodyUnavailable { .. }, .. }) => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The distinct body chunks of `root` the store lacks. Blocking.
    pub fn body_missing(&self, root: &SignedRoot) -> Result<Vec<ChunkId>, StoreError> {
        let mut missing = Vec::new();
        for c in root.root.unique_body_chunks() {
            if !self.store.contains(&c.id)? {
                missing.push(c.id);
            }
        }
        Ok(missing)
    }

    /// The distinct chunks of the layer's files, in first-use order, read from the cached body
    /// ([`crate::body`]). `None` when a body chunk is not in the store. Blocking.
    pub fn layer_chunks(&self, root: &SignedRoot) -> Result<Option<Vec<ChunkRef>>, BodyError> {
        crate::body::unique_file_chunks(&self.store, &root.root)
    }

    /// Caches a verified root (its body chunks held, see [`Cache::hold_manifest`]);
    /// `is_latest` records it as its layer's latest version (as upstream said). The body's
    /// chunks are stored as they arrive, like any other chunk. Blocking.
    pub fn put_manifest(&self, root: &SignedRoot, is_latest: bool) -> Result<(), StoreError> {
        self.hold_manifest(root)?;
        let r = &root.root;
        let bytes = root.to_bytes();
        if self.store.manifest_bytes(&r.name, Some(&r.version))?.as_deref() != Some(&bytes[..]) {
            self.store.put_manifest_bytes(&r.name, &r.version, &bytes)?;
        }
        if is_latest {
            self.latest.insert(r.name.as_bytes(), r.version.as_bytes())?;
        }
        Ok(())
    }

    /// The last latest statement kept for `name`, as received (verified then). Blocking.
    pub fn latest_statement(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.statements.get(name.as_bytes())?.map(|v| Bytes::copy_from_slice(&v)))
    }

    /// Keeps a verified latest statement for its layer, replacing the one kept. Blocking.
    pub fn keep_latest_statement(&self, name: &str, statement: &[u8]) -> Result<(), StoreError> {
        self.statements.insert(name.as_bytes(), statement)?;
        Ok(())
    }

    /// The cached layers for a `ListLayers` answer (upstream unreachable): the roots this cache
    /// holds.
    pub fn layer_refs(&self) -> Result<Vec<LayerRef>, StoreError> {
        let mut refs = self.store.layer_refs()?;
        refs.retain(|r| self.holds_manifest(&r.digest));
        Ok(refs)
    }

    // ---- pins ----

    /// Pins `chunks` (the distinct chunks of `root`'s layer, cached now or later) so that
    /// eviction never removes them, and caches the root. Returns false if the layer was pinned
    /// already; its chunks are pinned again then if they were not (a pin restored at start-up
    /// without its manifest body). Blocking.
    pub fn pin_layer(&self, root: &SignedRoot, chunks: &[ChunkRef]) -> anyhow::Result<bool> {
        let r = &root.root;
        let key = pin_key(&r.name, &r.version);
        self.put_manifest(root, false)?;
        let mut applied = locked(&self.applied);
        let newly = self.pinned.insert(&key, &root.digest[..])?.is_none();
        if applied.contains(&key) {
            return Ok(newly);
        }
        let present = self.apply_pins(chunks);
        self.mark_pinned(&present, true)?;
        applied.insert(key);
        drop(applied);
        self.store.db().flush()?;
        self.update_gauges();
        tracing::info!(layer = %r.label(), chunks = chunks.len(), chunks_cached = present.len(), "layer pinned");
        Ok(newly)
    }

    /// Adds a pin to each of `chunks`; returns those cached that became pinned.
    fn apply_pins(&self, chunks: &[ChunkRef]) -> Vec<ChunkId> {
        let mut present = Vec::new();
        let mut l = self.lock();
        for c in chunks {
            if l.pin(c.id) && l.contains(&c.id) {
                present.push(c.id);
            }
        }
        present
    }

    /// Is `name@version` pinned with its chunks pinned in the ledger (not only recorded)?
    pub fn pin_applied(&self, name: &str, version: &str) -> bool {
        locked(&self.applied).contains(&pin_key(name, version))
    }

    /// Removes the pin of `name@version`; its chunks become ordinary (evictable) cache entries
    /// unless another pinned layer holds them. Returns false if the layer was not pinned. The
    /// chunk list comes from the cached body: with a body chunk missing this fails (fetch it
    /// first). Blocking.
    pub fn unpin_layer(&self, name: &str, version: &str) -> anyhow::Result<bool> {
        let key = pin_key(name, version);
        let label = format!("{name}@{version}");
        let mut applied = locked(&self.applied);
        if !self.pinned.contains_key(&key)? {
            return Ok(false);
        }
        if applied.contains(&key) {
            let root = self.cached_root(name, Some(version))?.ok_or_else(|| {
                anyhow::anyhow!("pinned layer {label} has no usable cached manifest")
            })?;
            let chunks = self.layer_chunks(&root)?.ok_or_else(|| {
                anyhow::anyhow!("pinned layer {label}: its manifest body is not whole in the cache")
            })?;
            let mut released = Vec::new();
            {
                let mut l = self.lock();
                for c in &chunks {
                    if l.unpin(&c.id) && l.contains(&c.id) {
                        released.push(c.id);
                    }
                }
            }
            self.mark_pinned(&released, false)?;
            applied.remove(&key);
        }
        self.pinned.remove(&key)?;
        drop(applied);
        self.store.db().flush()?;
        self.update_gauges();
        if self.cap.is_some() {
            self.evict_wanted.notify_one();
        }
        tracing::info!(layer = %label, "layer unpinned");
        Ok(true)
    }

    /// Pinned layers as (name, version).
    pub fn pinned_layers(&self) -> Vec<(String, String)> {
        self.pinned
            .iter()
            .filter_map(Result::ok)
            .map(|(k, _)| {
                let k = String::from_utf8_lossy(&k).into_owned();
                let (n, v) = k.split_once('\0').unwrap_or((&k, ""));
                (n.to_string(), v.to_string())
            })
            .collect()
    }

    pub fn is_pinned(&self, id: &ChunkId) -> bool {
        self.lock().is_pinned(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use oasis_core::chunk::ChunkParams;
    use oasis_core::manifest::{
        Entry, LayerKind, LayerManifest, ManifestBody, Node, MANIFEST_FORMAT,
    };

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    fn signed(version: &str, files: u32, key: &SigningKey) -> (SignedManifest, ManifestBody) {
        let mut entries = vec![Entry::new("d", 0o755, Node::Dir)];
        for i in 0..files {
            let data = format!("file {i} of {version}");
            let c = ChunkRef { id: ChunkId::of(data.as_bytes()), len: data.len() as u32 };
            entries.push(Entry::new(
                format!("d/{i:06}-with-a-longer-name"),
                0o644,
                Node::File { size: data.len() as u64, chunks: vec![c] },
            ));
        }
        let m = LayerManifest {
            format: MANIFEST_FORMAT,
            name: "base".into(),
            version: version.into(),
            kind: LayerKind::Base,
            chunking: ChunkParams::default(),
            created: 1,
            entries,
        };
        m.sign(key)
    }

    fn open(dir: &Path, cap: Option<u64>) -> Cache {
        Cache::open(dir, cap, ReflectorMetrics::default(), key().verifying_key()).unwrap()
    }

    /// Caches a manifest the way a fetch does: hold, body chunks, then the root.
    fn cache_manifest(cache: &Cache, sm: &SignedManifest, body: &ManifestBody) -> SignedRoot {
        let root = SignedRoot::open(&sm.to_bytes(), &key().verifying_key()).unwrap();
        cache.hold_manifest(&root).unwrap();
        for (c, data) in body.pieces() {
            cache.put(&StoredChunk::encode_with_id(c.id, data)).unwrap();
        }
        cache.put_manifest(&root, true).unwrap();
        root
    }

    #[test]
    fn a_held_manifest_outlives_eviction_and_without_a_body_chunk_is_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let (sm, body) = signed("1", 2000, &key());
        assert!(body.chunks.len() > 5);
        let cap = body.bytes.len() as u64 / 4;
        let cache = open(dir.path(), Some(cap));
        let root = cache_manifest(&cache, &sm, &body);
        let whole = cache.open_cached_manifest("base", Some("1")).unwrap().unwrap();
        assert_eq!(whole.manifest, sm.manifest);
        assert_eq!(cache.open_cached_manifest("base", None).unwrap().unwrap().digest, sm.digest);
        assert_eq!(cache.layer_chunks(&root).unwrap().unwrap(), sm.manifest.unique_chunks());

        // Far over the cap with other chunks: only they go.
        for i in 0..200u32 {
            cache.put(&StoredChunk::encode(&[i.to_le_bytes(); 1000].concat())).unwrap();
        }
        assert!(cache.evict().0 > 0);
        for c in &body.chunks {
            assert!(cache.contains(&c.id), "body chunk {} was evicted", c.id);
        }

        // A body chunk gone anyway: the manifest is not cached whole, and nothing breaks.
        cache.store.remove(&body.chunks[1].id).unwrap();
        assert!(cache.open_cached_manifest("base", Some("1")).unwrap().is_none());
        assert!(cache.layer_chunks(&root).unwrap().is_none());
        assert_eq!(cache.body_missing(&root).unwrap(), vec![body.chunks[1].id]);
        assert!(cache.manifest_bytes("base", Some("1")).unwrap().is_some(), "the root stays");

        // After a restart the root is held again: its body chunks are pinned.
        drop(cache);
        let cache = open(dir.path(), Some(cap));
        assert!(cache.holds_manifest(&sm.digest));
        assert!(body.chunks.iter().all(|c| cache.is_pinned(&c.id)));
        assert_eq!(cache.layer_refs().unwrap().len(), 1);
    }

    #[test]
    fn pins_come_back_from_the_cached_body_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (sm, body) = signed("1", 300, &key());
        let chunks = sm.manifest.unique_chunks();
        {
            let cache = open(dir.path(), None);
            let root = cache_manifest(&cache, &sm, &body);
            assert!(cache.pin_layer(&root, &chunks).unwrap());
            assert!(!cache.pin_layer(&root, &chunks).unwrap(), "pinning twice is a no-op");
            assert!(chunks.iter().all(|c| cache.is_pinned(&c.id)));
        }
        let cache = open(dir.path(), None);
        assert!(cache.pin_applied("base", "1"));
        assert!(chunks.iter().all(|c| cache.is_pinned(&c.id)));
        assert!(cache.unpin_layer("base", "1").unwrap());
        assert!(chunks.iter().all(|c| !cache.is_pinned(&c.id)));
        assert!(body.chunks.iter().all(|c| cache.is_pinned(&c.id)), "the body stays held");
        assert!(!cache.unpin_layer("base", "1").unwrap());
    }

    #[test]
    fn cached_roots_that_do_not_verify_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = ChunkStore::open(dir.path()).unwrap();
            let mut v1 = b"OAS1".to_vec();
            v1.extend_from_slice(&[1; 100]);
            store.put_manifest_bytes("old", "1", &v1).unwrap();
            let (forged, _) = signed("2", 10, &SigningKey::from_bytes(&[6; 32]));
            store.put_manifest_bytes("base", "2", &forged.to_bytes()).unwrap();
            let (sm, _) = signed("3", 10, &key());
            store.put_manifest_bytes("base", "9", &sm.to_bytes()).unwrap();
        }
        let cache = open(dir.path(), None);
        assert!(cache.manifest_bytes("old", Some("1")).unwrap().is_none(), "format 1");
        assert!(cache.manifest_bytes("base", Some("2")).unwrap().is_none(), "another key");
        assert!(cache.manifest_bytes("base", Some("9")).unwrap().is_none(), "filed elsewhere");
        assert!(cache.layer_refs().unwrap().is_empty());
    }
}
