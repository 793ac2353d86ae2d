//! A running reflector: the serving side (sources over cache + upstream), manifests,
//! pins and prefetch, and [`RunningReflector`] which wires the tasks together.
//!
//! Manifests (format 2) come in two parts. The signed root arrives from upstream in one
//! `Manifest` frame; it is verified against `trust.pem` and checked to be the layer asked for.
//! The body chunks then come through [`Reflector::chunk`], the same path that serves endpoints'
//! `GetChunks`: the cache, else a coalesced miss through the siblings, the site's WAN leader or
//! upstream, paced by the WAN policy in the foreground class. So the body is cached, counted as
//! WAN bytes, and served to endpoints from the cache afterwards. Only once the body is whole is
//! the root recorded in the cache and handed out; from then on the body chunks are pinned for
//! as long as the cache holds the root.

use crate::cache::{Cache, CacheStats};
use crate::config::ReflectorConfig;
use crate::fetcher::{FetchError, Fetcher, Patience};
use crate::metrics::ReflectorMetrics;
use crate::policy::{PolicyControl, CHUNK_FRAME_OVERHEAD};
use crate::siblings::{Siblings, SiblingsTask};
use crate::upstream::{self, Upstream};
use anyhow::{bail, Context};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use oasis_core::chunk::ChunkParams;
use oasis_core::compress::StoredChunk;
use oasis_core::manifest::{ChunkRef, SignedManifest, SignedRoot};
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, SourceError, TransportOptions};
use oasis_core::pki::{NodeIdentity, PeerInfo, Role};
use oasis_core::policy::{BandwidthPolicy, PolicyError, TrafficClass};
use oasis_core::store::{ChunkStore, StoreError};
use oasis_core::wire::LayerRef;
use oasis_core::ChunkId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

mod access;
mod latest;
mod running;
mod source;
pub use access::ReflectorAccess;
pub use running::RunningReflector;
pub use source::ReflectorSource;

/// Longest wait for a manifest answer once the request is on its way upstream.
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the evictor looks even without being woken.
const EVICT_INTERVAL: Duration = Duration::from_secs(30);

/// Body chunks of one manifest asked for at once through the chunk path (enough to fill the
/// fetcher's batches).
const BODY_FETCHES: usize = 1024;

type ManifestResult = Result<Option<Bytes>, String>;
type Flight = Shared<BoxFuture<'static, ManifestResult>>;
type ChunkList = Result<Arc<Vec<ChunkRef>>, String>;
type ChunkListFlight = Shared<BoxFuture<'static, ChunkList>>;

/// A manifest fetch in flight (root, then body), and how far it has got.
#[derive(Clone)]
struct ManifestFlight {
    result: Flight,
    /// The root arriving and each body chunk in place count one: waiters keep waiting while
    /// this moves.
    progress: Arc<AtomicU64>,
}

/// A layer's verified manifest root and the distinct chunks of its files.
pub(crate) struct Layer {
    pub(crate) root: Arc<SignedRoot>,
    pub(crate) chunks: Arc<Vec<ChunkRef>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`RunningReflector::prefetch_layer`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PrefetchReport {
    pub layer: String,
    /// Distinct chunks of the layer.
    pub chunks: u64,
    /// Already cached before the prefetch.
    pub chunks_cached: u64,
    /// Fetched from upstream now.
    pub chunks_fetched: u64,
    /// Bytes (as stored) of the chunks fetched.
    pub bytes_fetched: u64,
    /// Upstream does not have them.
    pub chunks_missing: u64,
    /// Could not be fetched (upstream trouble); the first error is in `error`.
    pub chunks_failed: u64,
    pub error: Option<String>,
    pub seconds: f64,
}

/// Everything the serving side and the API share.
pub(crate) struct Reflector {
    cfg: ReflectorConfig,
    identity: NodeIdentity,
    pub(crate) cache: Arc<Cache>,
    upstream: Arc<Upstream>,
    fetcher: Arc<Fetcher>,
    policy: Arc<PolicyControl>,
    metrics: ReflectorMetrics,
    flights: Mutex<HashMap<(String, Option<String>), ManifestFlight>>,
    /// Upstream `GetLatest`s in flight, by layer name: an endpoint's `GetLatest` and its
    /// `GetManifest` of the latest (and other endpoints asking at once) share one question.
    latest_flights: Mutex<HashMap<String, latest::LatestFlight>>,
    /// Chunk lists being read from cached bodies, by layer digest: concurrent askers (an
    /// endpoint's manifest for the mesh, an assignment's pin) share one read and one list.
    chunk_lists: Mutex<HashMap<[u8; 32], ChunkListFlight>>,
    /// The mesh side (None when the mesh is off).
    siblings: Option<Arc<Siblings>>,
    /// Inventory, wake relay and scheduled delivery.
    wake: crate::wake::WakeNode,
    /// The revocation list peers are refused by.
    pub(crate) revocations: oasis_core::pki::Revocations,
    /// The site's entitlements, as the seed sealed them.
    pub(crate) entitlements: Arc<crate::entitlements::SiteEntitlements>,
    /// Which layer each chunk belongs to, for the entitlement checks.
    pub(crate) index: crate::readers::LayerIndex,
    /// When the upstream's layers were last listed to index what an endpoint asks about
    /// (`index_upstream_layers`); held while listing, so that askers share one listing.
    listed: tokio::sync::Mutex<Option<Instant>>,
    /// Work spawned on behalf of requests (manifest fetches, pulls ahead, chunk-list reads);
    /// stopping waits for it.
    tasks: TaskTracker,
    /// Requests' ids to the pull-ahead task.
    ahead: tokio::sync::mpsc::Sender<crate::pull_ahead::Ahead>,
}

fn label(name: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{name}@{v}"),
        None => format!("{name} (latest)"),
    }
}

impl Reflector {
    fn miss_patience(&self) -> Patience {
        Patience::for_miss(self.policy.limiter.rate_now().is_some(), self.cfg.miss_timeout)
    }

    /// Fetches, verifies and caches a manifest (root and body) from upstream. One fetch per
    /// (name, version) at a time; the work goes on (and its result is cached) even if the asker
    /// stops waiting.
    fn upstream_manifest(self: &Arc<Self>, name: &str, version: Option<&str>) -> ManifestFlight {
        let key = (name.to_string(), version.map(str::to_string));
        let mut flights = locked(&self.flights);
        if let Some(f) = flights.get(&key) {
            return f.clone();
        }
        let me = self.clone();
        let k = key.clone();
        let progress = Arc::new(AtomicU64::new(0));
        let p = progress.clone();
        let work = async move {
            let r = me.fetch_manifest_now(&k.0, k.1.as_deref(), &p).await;
            locked(&me.flights).remove(&k);
            r
        };
        let result = self.spawn_shared(work, "manifest fetch");
        let flight = ManifestFlight { result, progress };
        flights.insert(key, flight.clone());
        flight
    }

    /// Runs `work` among the reflector's tasks, its result shared by everyone who awaits the
    /// returned future (a flight: `work` takes itself out of its table when it ends).
    fn spawn_shared<T: Clone + Send + Sync + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
        what: &'static str,
    ) -> Shared<BoxFuture<'static, Result<T, String>>> {
        self.tasks
            .spawn(work.in_current_span())
            .map(move |r| r.unwrap_or_else(|e| Err(format!("{what} task failed: {e}"))))
            .boxed()
            .shared()
    }

    /// Waits for a manifest fetch: `first` at most, then on as long as it makes progress (the
    /// root or body chunks arriving) within every `miss_timeout`. `seen` is its progress when
    /// the asker started waiting. `None`: it stalled.
    async fn wait_flight(
        &self,
        flight: ManifestFlight,
        first: Duration,
        mut seen: u64,
    ) -> Option<ManifestResult> {
        let ManifestFlight { mut result, progress } = flight;
        let mut slice = first;
        loop {
            match tokio::time::timeout(slice, &mut result).await {
                Ok(r) => return Some(r),
                Err(_) => {
                    let now = progress.load(Ordering::Relaxed);
                    if now == seen {
                        return None;
                    }
                    (seen, slice) = (now, self.cfg.miss_timeout);
                }
            }
        }
    }

    async fn fetch_manifest_now(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
        progress: &AtomicU64,
    ) -> ManifestResult {
        let what = label(name, version);
        let client = self
            .upstream
            .wait(self.cfg.miss_timeout)
            .await
            .ok_or_else(|| self.upstream.trouble())?;
        let bytes =
            match tokio::time::timeout(MANIFEST_TIMEOUT, client.manifest(name, version)).await {
                Err(_) => {
                    return Err(format!(
                        "upstream {} sent no manifest of {what} within {} s",
                        self.upstream.target,
                        MANIFEST_TIMEOUT.as_secs()
                    ))
                }
                Ok(Err(e)) if e.is_not_found() => return Ok(None),
                Ok(Err(e)) => return Err(format!("asking upstream for {what}: {e}")),
                Ok(Ok(b)) => b,
            };
        progress.fetch_add(1, Ordering::Relaxed);
        // The root crossed the WAN: counted, and paid for in the policy's bucket (in the
        // background: it has arrived already, and the body need not wait for the payment).
        let len = bytes.len() as u64;
        self.metrics.upstream_manifest_bytes.inc_by(len);
        let policy = self.policy.clone();
        // Not tracked: it holds only the policy, and under a low rate or a closed window it
        // may wait longer than a stop should.
        tokio::spawn(
            async move {
                policy.limiter.acquire(TrafficClass::Foreground, len + CHUNK_FRAME_OVERHEAD).await
            }
            .in_current_span(),
        );
        // Verify before anything else: a reflector passes on only what the seed signed, and
        // only the layer that was asked for.
        let key = *self.identity.trust().manifest_key();
        let b = bytes.clone();
        let root = tokio::task::spawn_blocking(move || SignedRoot::open(&b, &key))
            .await
            .map_err(|e| e.to_string())?
            .and_then(|root| root.check_request(name, version).map(|()| root))
            .map_err(|e| format!("upstream's manifest of {what} refused: {e}"))?;
        let root = Arc::new(root);
        self.policy.note_chunk_size(u64::from(root.root.chunking.max) + CHUNK_FRAME_OVERHEAD);
        // Body chunks are pinned before they arrive, so that no eviction races the fetch.
        let (cache, r) = (self.cache.clone(), root.clone());
        match tokio::task::spawn_blocking(move || cache.hold_manifest(&r)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(layer = %what, error = %e, "cannot pin manifest body"),
            Err(e) => tracing::error!(layer = %what, error = %e, "cannot pin manifest body"),
        }
        self.learn_body(&root).await;
        self.fill_body(&root, Some(progress)).await?;
        let (cache, r, is_latest) = (self.cache.clone(), root.clone(), version.is_none());
        let index = self.index.clone();
        let put = move || {
            cache.put_manifest(&r, is_latest)?;
            // Its endpoints ask for the body chunks next: readable before the files are indexed.
            index.add_body(&r).map_err(StoreError::from)
        };
        match tokio::task::spawn_blocking(put).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(layer = %what, error = %e, "cannot cache manifest"),
            Err(e) => tracing::error!(layer = %what, error = %e, "cannot cache manifest"),
        }
        tracing::debug!(
            layer = %root.label(),
            root_bytes = len,
            body_bytes = root.root.body_len,
            body_chunks = root.root.body.len(),
            "manifest fetched"
        );
        Ok(Some(bytes))
    }

    /// Brings every body chunk of `root` the cache lacks through the chunk path (cache, else a
    /// coalesced miss via the siblings or upstream, foreground class), counting each one in
    /// `progress`.
    async fn fill_body(
        &self,
        root: &Arc<SignedRoot>,
        progress: Option<&AtomicU64>,
    ) -> Result<(), String> {
        let layer = root.label();
        let (cache, r) = (self.cache.clone(), root.clone());
        let missing = tokio::task::spawn_blocking(move || cache.body_missing(&r))
            .await
            .map_err(|e| format!("manifest {layer}: looking for its body in the cache: {e}"))?
            .map_err(|e| format!("manifest {layer}: looking for its body in the cache: {e}"))?;
        if missing.is_empty() {
            return Ok(());
        }
        let n = missing.len();
        let mut results = futures::stream::iter(missing)
            .map(|id| async move { (id, self.chunk(None, id, TrafficClass::Foreground).await) })
            .buffer_unordered(BODY_FETCHES);
        while let Some((id, r)) = results.next().await {
            match r {
                Ok(Some(_)) => {
                    if let Some(p) = progress {
                        p.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => {
                    return Err(format!("manifest {layer}: body chunk {id} is missing upstream"))
                }
                Err(e) => return Err(format!("manifest {layer}: body chunk {id}: {e}")),
            }
        }
        tracing::debug!(%layer, chunks = n, "manifest body chunks fetched");
        Ok(())
    }

    /// The distinct chunks of `root`'s files, read from the cached body; body chunks gone from
    /// the cache are fetched again first. One read per layer at a time, shared by its askers.
    async fn layer_chunks(self: &Arc<Self>, root: &Arc<SignedRoot>) -> ChunkList {
        let flight = {
            let mut lists = locked(&self.chunk_lists);
            match lists.get(&root.digest) {
                Some(f) => f.clone(),
                None => {
                    let (me, r) = (self.clone(), root.clone());
                    let f = self
                        .tasks
                        .spawn(
                            async move {
                                let list = me.read_layer_chunks(&r).await.map(Arc::new);
                                locked(&me.chunk_lists).remove(&r.digest);
                                list
                            }
                            .in_current_span(),
                        )
                        .map(|r| {
                            r.unwrap_or_else(|e| Err(format!("reading a chunk list failed: {e}")))
                        })
                        .boxed()
                        .shared();
                    lists.insert(root.digest, f.clone());
                    f
                }
            }
        };
        flight.await
    }

    async fn read_layer_chunks(&self, root: &Arc<SignedRoot>) -> Result<Vec<ChunkRef>, String> {
        for _ in 0..2 {
            let (cache, r) = (self.cache.clone(), root.clone());
            match tokio::task::spawn_blocking(move || cache.layer_chunks(&r)).await {
                Ok(Ok(Some(chunks))) => {
                    let (index, r) = (self.index.clone(), root.clone());
                    return tokio::task::spawn_blocking(move || {
                        index.add(&r, &chunks).map(|()| chunks).map_err(|e| {
                            format!("manifest {}: indexing its chunks: {e}", r.label())
                        })
                    })
                    .await
                    .map_err(|e| format!("manifest {}: indexing its chunks: {e}", root.label()))?;
                }
                Ok(Ok(None)) => self.fill_body(root, None).await?,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(e) => return Err(format!("manifest {}: reading its body: {e}", root.label())),
            }
        }
        Err(format!("manifest {}: its body chunks keep leaving the cache", root.label()))
    }

    /// Indexes every cached manifest of a layer in `names` not indexed yet (a cache filled
    /// before the index, or a manifest whose chunk list nobody has read). One that cannot be
    /// read is skipped (its chunks stay unreadable until it is fetched again) and logged.
    pub(crate) async fn index_cached_layers(self: &Arc<Self>, names: &[String]) {
        let (cache, index, wanted) = (self.cache.clone(), self.index.clone(), names.to_vec());
        let roots = tokio::task::spawn_blocking(move || {
            let mut roots = Vec::new();
            for r in cache.layer_refs().unwrap_or_default() {
                if wanted.contains(&r.name) && !index.is_indexed(&r.digest).unwrap_or(true) {
                    match cache.cached_root(&r.name, Some(&r.version)) {
                        Ok(root) => roots.extend(root),
                        Err(e) => tracing::warn!(layer = %format!("{}@{}", r.name, r.version),
                            error = %format!("{e:#}"), "cached manifest not indexed"),
                    }
                }
            }
            roots
        })
        .await
        .unwrap_or_default();
        for root in roots {
            if let Err(e) = self.layer_chunks(&Arc::new(root)).await {
                tracing::warn!(error = %e, "cached manifest not indexed");
            }
        }
    }

    /// Indexes the manifests of the layers in `names` the upstream lists and this reflector
    /// has not indexed: an endpoint may ask for chunks of a layer whose manifest it got
    /// elsewhere (another source, an earlier run), and the reflector learns which layer they
    /// belong to from the manifest. Lists at most once a second (a listing started after the
    /// caller asked answers it too); a manifest that cannot be had is skipped and logged.
    pub(crate) async fn index_upstream_layers(self: &Arc<Self>, names: &[String]) {
        let wanted = Instant::now();
        let mut listed = self.listed.lock().await;
        if listed.is_some_and(|t| t >= wanted || t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *listed = Some(Instant::now());
        let Some(client) = self.upstream.current() else { return };
        let listing = tokio::time::timeout(self.cfg.latest_timeout, client.layers()).await;
        let Ok(Ok(refs)) = listing else { return };
        for r in refs.into_iter().filter(|r| names.contains(&r.name)) {
            if self.index.is_indexed(&r.digest).unwrap_or(true) {
                continue;
            }
            let label = format!("{}@{}", r.name, r.version);
            match self.manifest(&r.name, Some(&r.version)).await {
                Ok(Some(_)) => {}
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(layer = %label, error = %e, "manifest not indexed");
                    continue;
                }
            }
            let (cache, name, version) = (self.cache.clone(), r.name.clone(), r.version.clone());
            let root =
                tokio::task::spawn_blocking(move || cache.cached_root(&name, Some(&version))).await;
            if let Ok(Ok(Some(root))) = root {
                if let Err(e) = self.layer_chunks(&Arc::new(root)).await {
                    tracing::warn!(layer = %label, error = %e, "manifest not indexed");
                }
            }
        }
    }

    fn cached_manifest(&self, name: &str, version: Option<&str>) -> Option<Bytes> {
        match self.cache.manifest_bytes(name, version) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(layer = %label(name, version), error = %e, "cannot read cached manifest");
                None
            }
        }
    }

    /// A layer's signed manifest root: a named version from the cache, else from upstream; the
    /// latest version from upstream when it answers within `latest_timeout`, else the cached
    /// latest. What is handed out is whole in the cache (root and body) at that moment.
    pub(crate) async fn manifest(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, SourceError> {
        let r = self.manifest_inner(name, version).await;
        if let Ok(Some(bytes)) = &r {
            self.learn(bytes).await;
        }
        r
    }

    /// Makes a manifest's layer known to the mesh (once per layer), so that what arrives of it
    /// is announced and siblings' claims about it are usable.
    async fn learn(self: &Arc<Self>, bytes: &Bytes) {
        let Some(s) = &self.siblings else { return };
        if s.knows_manifest_bytes(bytes).await {
            return;
        }
        let learned = async {
            let (b, key) = (bytes.clone(), *self.identity.trust().manifest_key());
            let root = tokio::task::spawn_blocking(move || SignedRoot::open(&b, &key))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let root = Arc::new(root);
            self.learn_body(&root).await;
            let chunks = self.layer_chunks(&root).await?;
            self.learn_layer(&root, chunks).await
        }
        .await;
        match learned {
            // The endpoint asks for chunks next: let the misses see the siblings' claims about
            // this layer at once, not after the next periodic refresh.
            Ok(true) => {
                let _ = tokio::time::timeout(Duration::from_millis(200), s.refresh()).await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "manifest not announced to the mesh"),
        }
    }

    /// Makes a manifest's body known to the mesh ([`Siblings::learn_body`]) before its chunks
    /// are fetched: they are announced as they arrive, and a miss finds the siblings that hold
    /// them instead of going to the WAN.
    async fn learn_body(&self, root: &Arc<SignedRoot>) {
        let Some(s) = &self.siblings else { return };
        if s.learn_body(root).await {
            let _ = tokio::time::timeout(Duration::from_millis(200), s.refresh()).await;
        }
    }

    /// Indexes a layer's chunk list for the mesh. Returns whether the layer was new to the
    /// mesh side.
    async fn learn_layer(
        &self,
        root: &Arc<SignedRoot>,
        chunks: Arc<Vec<ChunkRef>>,
    ) -> Result<bool, String> {
        let Some(s) = &self.siblings else { return Ok(false) };
        Ok(s.learn_layer(root.digest, &root.label(), chunks).await)
    }

    async fn manifest_inner(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, SourceError> {
        let what = label(name, version);
        if version.is_some() {
            if let Some(b) = self.cached_manifest(name, version) {
                return Ok(Some(b));
            }
            let flight = self.upstream_manifest(name, version);
            let seen = flight.progress.load(Ordering::Relaxed);
            return match self.wait_flight(flight, self.cfg.miss_timeout, seen).await {
                Some(Ok(b)) => Ok(b),
                Some(Err(e)) => Err(SourceError::Unavailable(e)),
                None => Err(SourceError::Unavailable(format!(
                    "manifest of {what} not available: {} (no progress for {} s)",
                    self.upstream.trouble(),
                    self.cfg.miss_timeout.as_secs_f64()
                ))),
            };
        }
        // A version of the layer is here: the signed statement (the upstream's, or the kept
        // copy when the upstream is slow) says whether it is the latest, for a few hundred
        // bytes instead of the root. Nothing here: the latest root is needed anyway.
        if self.cached_manifest(name, None).is_some() {
            if let Some(version) = self.latest_version(name).await {
                if let Some(b) = self.cached_manifest(name, Some(&version)) {
                    return Ok(Some(b));
                }
            }
        }
        let flight = self.upstream_manifest(name, None);
        let started = Instant::now();
        let seen = flight.progress.load(Ordering::Relaxed);
        let first = tokio::time::timeout(self.cfg.latest_timeout, flight.result.clone()).await;
        let problem = match first {
            Ok(Ok(b)) => return Ok(b),
            Ok(Err(e)) => e,
            Err(_) => format!(
                "upstream gave no answer within {} s",
                self.cfg.latest_timeout.as_secs_f64()
            ),
        };
        if let Some(b) = self.cached_manifest(name, None) {
            tracing::info!(layer = %name, %problem, "serving the cached latest manifest");
            return Ok(Some(b));
        }
        // Nothing cached to fall back on: keep waiting for upstream while it makes progress.
        let left = self.cfg.miss_timeout.saturating_sub(started.elapsed());
        match self.wait_flight(flight, left, seen).await {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => {
                Err(SourceError::Unavailable(format!("{e}; no cached manifest of {name}")))
            }
            None => Err(SourceError::Unavailable(format!(
                "manifest of {what} not available: {}; no cached manifest of {name}",
                self.upstream.trouble()
            ))),
        }
    }

    /// A chunk for `peer` (None: an in-process caller) in `class` (a sibling's prefetch asks in
    /// the background class, and a miss is then pulled in it).
    pub(crate) async fn chunk(
        &self,
        peer: Option<&PeerInfo>,
        id: ChunkId,
        class: TrafficClass,
    ) -> Result<Option<StoredChunk>, SourceError> {
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.get(&id)).await {
            Ok(Ok(Some(c))) => {
                self.metrics.cache_hits.inc();
                return Ok(Some(c));
            }
            Ok(Ok(None)) => {}
            // An unreadable cache is not the end: upstream can still serve it.
            Ok(Err(e)) => {
                tracing::warn!(chunk = %id, error = %e, "cache read failed; fetching upstream")
            }
            Err(e) => return Err(SourceError::Internal(format!("cache lookup: {e}"))),
        }
        self.metrics.cache_misses.inc();
        match self.pull(peer, id, class).await {
            Ok(c) => Ok(c),
            Err(FetchError::Timeout(m)) => {
                self.metrics.miss_timeouts.inc();
                tracing::warn!(chunk = %id, problem = %m, "miss not served in time");
                Err(SourceError::Unavailable(m))
            }
            Err(FetchError::Failed(m)) => Err(SourceError::Unavailable(m)),
        }
    }

    /// A chunk the cache lacks: through the siblings, else a coalesced miss upstream.
    async fn pull(
        &self,
        peer: Option<&PeerInfo>,
        id: ChunkId,
        class: TrafficClass,
    ) -> Result<Option<StoredChunk>, FetchError> {
        if let Some(s) = &self.siblings {
            let sibling = peer.is_some_and(|p| {
                p.role == Role::Reflector && p.site.is_some() && p.site.as_deref() == s.mesh.site()
            });
            if sibling {
                // A sibling asks: pull it over the WAN only if this reflector is the site's
                // fetcher for it, else say Missing (it goes on elsewhere; no request loops).
                if s.wan_fetcher(&id).await != s.mesh.peer_id() {
                    return Ok(None);
                }
            } else if let Some(c) = s.fetch(id, class).await {
                return Ok(Some(c));
            }
        }
        self.fetcher.fetch(id, class, self.miss_patience()).await
    }

    /// Pulls the chunks of `ids` the cache lacks ahead of the request's lookups, without
    /// waiting for them. The server looks up only a few chunks of a request ahead of what it
    /// has written (memory stays bounded); without this a long link would carry no more than
    /// those few chunks per request at a time, and a lost packet holding one back would idle
    /// it. The pulled chunks land in the cache, where the lookups find them, or join the fetch
    /// in flight. Counted neither as hits nor as misses: the lookups that follow are.
    fn pull_ahead(&self, ids: Vec<ChunkId>, class: TrafficClass) {
        // In a mesh a miss goes to a sibling one chunk per request, and the site's WAN is
        // shared out by the gossip's shares: pulling ahead there multiplies small requests
        // between siblings and under-uses the site's cap (with it, 10 s windows of a site of
        // three ran 4-7% under the cap).
        if self.siblings.is_some() {
            return;
        }
        if self.ahead.try_send((ids, class)).is_err() {
            tracing::debug!("pull-ahead busy: the request's lookups fetch its chunks");
        }
    }

    pub(crate) async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        let ask = async {
            let client = self.upstream.wait(self.cfg.latest_timeout).await?;
            client.layers().await.ok()
        };
        if let Ok(Some(layers)) = tokio::time::timeout(self.cfg.latest_timeout, ask).await {
            return Ok(layers);
        }
        tracing::info!(upstream = %self.upstream.target, "upstream did not list layers; listing cached manifests");
        self.cache.layer_refs().map_err(|e| SourceError::Internal(e.to_string()))
    }

    /// `name@version`'s verified root and the distinct chunks of its files (cache, else
    /// upstream), with the layer made known to the mesh. The chunk list is read from the cached
    /// body one body chunk at a time: the whole manifest is never in memory.
    pub(crate) async fn layer(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> anyhow::Result<Layer> {
        let what = label(name, version);
        let bytes = self
            .manifest_inner(name, version)
            .await
            .map_err(|e| anyhow::anyhow!("manifest of {what}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("layer {what} not found upstream"))?;
        let key = *self.identity.trust().manifest_key();
        let root =
            Arc::new(tokio::task::spawn_blocking(move || SignedRoot::open(&bytes, &key)).await??);
        self.learn_body(&root).await;
        let chunks = self.layer_chunks(&root).await.map_err(anyhow::Error::msg)?;
        self.learn_layer(&root, chunks.clone()).await.map_err(anyhow::Error::msg)?;
        Ok(Layer { root, chunks })
    }

    /// Removes the pin of `name@version`; a body chunk of its cached manifest that has gone
    /// is fetched again first (the chunk list to unpin is read from the body).
    pub(crate) async fn unpin(self: &Arc<Self>, name: &str, version: &str) -> anyhow::Result<bool> {
        if self.cache.pin_applied(name, version) {
            let (cache, n, v) = (self.cache.clone(), name.to_string(), version.to_string());
            let root =
                tokio::task::spawn_blocking(move || cache.cached_root(&n, Some(&v))).await??;
            if let Some(root) = root {
                self.fill_body(&Arc::new(root), None).await.map_err(anyhow::Error::msg)?;
            }
        }
        let (cache, n, v) = (self.cache.clone(), name.to_string(), version.to_string());
        tokio::task::spawn_blocking(move || cache.unpin_layer(&n, &v)).await?
    }

    /// Pins a layer's chunks (see [`Cache::pin_layer`]).
    async fn pin(&self, layer: &Layer) -> anyhow::Result<bool> {
        let (cache, root, chunks) = (self.cache.clone(), layer.root.clone(), layer.chunks.clone());
        tokio::task::spawn_blocking(move || cache.pin_layer(&root, &chunks)).await?
    }

    /// Asks upstream for this site's assignments, pins and prefetches each, and unpins what
    /// an earlier sync pinned and is no longer assigned. Returns how many are assigned.
    async fn sync_assignments(
        self: &Arc<Self>,
        pinned_by_sync: &mut Vec<(String, String)>,
    ) -> anyhow::Result<usize> {
        let client = self
            .upstream
            .wait(self.cfg.latest_timeout)
            .await
            .ok_or_else(|| anyhow::anyhow!("{}", self.upstream.trouble()))?;
        let assigned = client.assignments().await?;
        let now: Vec<(String, String)> =
            assigned.iter().map(|a| (a.name.clone(), a.version.clone())).collect();
        for (name, version) in pinned_by_sync.iter().filter(|p| !now.contains(p)) {
            self.unpin(name, version).await?;
            tracing::info!(layer = %format!("{name}@{version}"), "no longer assigned: unpinned");
        }
        *pinned_by_sync = now.clone();
        for (name, version) in &now {
            let layer = self.layer(name, Some(version)).await?;
            self.pin(&layer).await?;
            let r = self.prefetch_chunks(&layer).await?;
            tracing::info!(layer = %format!("{name}@{version}"), report = ?r, "assigned layer pinned and prefetched");
        }
        Ok(now.len())
    }

    async fn prefetch(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> anyhow::Result<PrefetchReport> {
        let layer = self.layer(name, version).await?;
        self.prefetch_chunks(&layer).await
    }

    /// Pulls every chunk of `layer` the cache lacks, in the background class.
    async fn prefetch_chunks(&self, layer: &Layer) -> anyhow::Result<PrefetchReport> {
        let t0 = Instant::now();
        let chunks = &layer.chunks;
        let mut report = PrefetchReport {
            layer: layer.root.label(),
            chunks: chunks.len() as u64,
            ..Default::default()
        };
        let (cache, list) = (self.cache.clone(), layer.chunks.clone());
        let missing: Vec<ChunkId> = tokio::task::spawn_blocking(move || {
            list.iter().map(|c| c.id).filter(|id| !cache.contains(id)).collect()
        })
        .await?;
        report.chunks_cached = report.chunks - missing.len() as u64;
        let patience = Patience { idle: self.cfg.miss_timeout * 6, max: None };
        let fetcher = &self.fetcher;
        let siblings = &self.siblings;
        let mut results = futures::stream::iter(missing)
            .map(|id| async move {
                if let Some(s) = siblings {
                    if let Some(c) = s.fetch(id, TrafficClass::Background).await {
                        return Ok(Some(c));
                    }
                }
                fetcher.fetch(id, TrafficClass::Background, patience).await
            })
            .buffer_unordered(4096);
        while let Some(r) = results.next().await {
            match r {
                Ok(Some(c)) => {
                    report.chunks_fetched += 1;
                    report.bytes_fetched += c.data.len() as u64;
                }
                Ok(None) => report.chunks_missing += 1,
                Err(e) => {
                    report.chunks_failed += 1;
                    report.error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        report.seconds = t0.elapsed().as_secs_f64();
        tracing::info!(
            layer = %report.layer,
            fetched = report.chunks_fetched,
            bytes = report.bytes_fetched,
            cached = report.chunks_cached,
            missing = report.chunks_missing,
            failed = report.chunks_failed,
            "prefetch done"
        );
        Ok(report)
    }
}
