//! The reflector's cache: chunks and signed manifests in a core [`ChunkStore`] under
//! `STATE/cache`, mirrored in a [`CacheLedger`] for LRU eviction under `cache_size`, and pins
//! for the layers assigned to the site.
//!
//! Everything survives a restart: chunks and manifests are in the store, pinned layers in the
//! store's sled database (tree `reflector_pinned`), the last version upstream called "latest" in
//! tree `reflector_latest`. The recency order is not persisted: after a restart every cached
//! chunk counts as used at start-up, in index order.
//!
//! Chunks are verified on every read ([`ChunkStore::get`]); a chunk that fails is dropped from
//! the store and the ledger, so it is fetched again instead of being served.

use crate::metrics::ReflectorMetrics;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use oasis_core::cache::CacheLedger;
use oasis_core::compress::StoredChunk;
use oasis_core::manifest::SignedManifest;
use oasis_core::store::{ChunkStore, StoreError, FLAG_PINNED};
use oasis_core::ChunkId;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const PINNED_TREE: &str = "reflector_pinned";
const LATEST_TREE: &str = "reflector_latest";

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
    key: VerifyingKey,
    /// Wakes the evictor after inserts that took the cache over its cap.
    pub evict_wanted: tokio::sync::Notify,
    /// Pinned bytes exceed the cap (warned once per episode).
    overfull: AtomicBool,
    /// Called with every chunk id stored and every id evicted (the mesh announces them).
    observer: std::sync::OnceLock<Box<dyn CacheObserver>>,
}

/// Told what enters and leaves the cache (the mesh's availability announcements).
pub trait CacheObserver: Send + Sync {
    fn stored(&self, id: &ChunkId);
    fn evicted(&self, id: &ChunkId);
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
            key,
            evict_wanted: tokio::sync::Notify::new(),
            overfull: AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
        };
        // Re-pin the pinned layers from their cached manifests.
        for item in cache.pinned.iter() {
            let (k, _) = item?;
            let label = String::from_utf8_lossy(&k).replace('\0', "@");
            let key = String::from_utf8_lossy(&k).into_owned();
            let (name, version) = key.split_once('\0').unwrap_or((&key, ""));
            match cache.open_cached_manifest(name, Some(version)) {
                Ok(Some(sm)) => {
                    let mut l = cache.lock();
                    for c in sm.manifest.unique_chunks() {
                        l.pin(c.id);
                    }
                }
                Ok(None) => {
                    tracing::warn!(layer = %label, "pinned layer has no cached manifest; its pin is dropped")
                }
                Err(e) => {
                    tracing::warn!(layer = %label, error = %e, "pinned layer's cached manifest is unusable; its pin is dropped")
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

    /// Cached signed manifest bytes (`version` None = the latest known).
    pub fn manifest_bytes(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, StoreError> {
        match version {
            Some(v) => self.store.manifest_bytes(name, Some(v)),
            None => match self.latest.get(name.as_bytes())? {
                Some(v) => {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    match self.store.manifest_bytes(name, Some(&v))? {
                        Some(b) => Ok(Some(b)),
                        None => self.store.manifest_bytes(name, None),
                    }
                }
                None => self.store.manifest_bytes(name, None),
            },
        }
    }

    /// Opens a cached manifest against the trusted key.
    pub fn open_cached_manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> anyhow::Result<Option<SignedManifest>> {
        match self.manifest_bytes(name, version)? {
            None => Ok(None),
            Some(b) => Ok(Some(SignedManifest::open(&b, &self.key)?)),
        }
    }

    /// Caches verified manifest bytes; `is_latest` records them as the layer's latest version
    /// (as upstream said). Blocking.
    pub fn put_manifest(
        &self,
        sm: &SignedManifest,
        bytes: &[u8],
        is_latest: bool,
    ) -> Result<(), StoreError> {
        let m = &sm.manifest;
        if !self.store.has_manifest(&m.name, &m.version)? {
            self.store.put_manifest_bytes(&m.name, &m.version, bytes)?;
        }
        if is_latest {
            self.latest.insert(m.name.as_bytes(), m.version.as_bytes())?;
        }
        Ok(())
    }

    // ---- pins ----

    /// Pins every chunk of `sm` (cached now or later) so that eviction never removes them, and
    /// caches the manifest. Pinning a layer twice does nothing. Blocking.
    pub fn pin_layer(&self, sm: &SignedManifest) -> anyhow::Result<bool> {
        let m = &sm.manifest;
        let key = pin_key(&m.name, &m.version);
        self.put_manifest(sm, &sm.to_bytes(), false)?;
        if self.pinned.insert(&key, &sm.digest[..])?.is_some() {
            return Ok(false);
        }
        let mut present = Vec::new();
        {
            let mut l = self.lock();
            for c in m.unique_chunks() {
                l.pin(c.id);
                if l.contains(&c.id) {
                    present.push(c.id);
                }
            }
        }
        for id in &present {
            self.store.update_entry(id, |e| e.flags |= FLAG_PINNED)?;
        }
        self.store.db().flush()?;
        self.update_gauges();
        tracing::info!(layer = %m.label(), chunks_cached = present.len(), "layer pinned");
        Ok(true)
    }

    /// Removes the pin of `name@version`; its chunks become ordinary (evictable) cache entries
    /// unless another pinned layer holds them. Returns false if the layer was not pinned.
    /// Blocking.
    pub fn unpin_layer(&self, name: &str, version: &str) -> anyhow::Result<bool> {
        let key = pin_key(name, version);
        if !self.pinned.contains_key(&key)? {
            return Ok(false);
        }
        let sm = self.open_cached_manifest(name, Some(version))?.ok_or_else(|| {
            anyhow::anyhow!("pinned layer {name}@{version} has no cached manifest")
        })?;
        let mut released = Vec::new();
        {
            let mut l = self.lock();
            for c in sm.manifest.unique_chunks() {
                if l.unpin(&c.id) && l.contains(&c.id) {
                    released.push(c.id);
                }
            }
        }
        for id in &released {
            self.store.update_entry(id, |e| e.flags &= !FLAG_PINNED)?;
        }
        self.pinned.remove(&key)?;
        self.store.db().flush()?;
        self.update_gauges();
        if self.cap.is_some() {
            self.evict_wanted.notify_one();
        }
        tracing::info!(layer = %format!("{name}@{version}"), "layer unpinned");
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
