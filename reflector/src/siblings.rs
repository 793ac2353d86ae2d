//! The reflector's side of the mesh: which chunks of which layers it holds (announced while they
//! arrive), where a miss is fetched before the WAN (siblings of the same site, then reflectors of
//! the sites `peer_sites` allows), which reflector of the site pulls a chunk over the WAN
//! (the site's WAN leader, or under `wan_sharing = "spread"` rendezvous hashing of the chunk id
//! over the site's live reflectors: [`oasis_core::site_wan`]), and this reflector's share of the
//! site's WAN rate.
//!
//! Siblings are asked over the ordinary `oasis/1` QUIC protocol with the reflector's own node
//! certificate. A sibling asked for a chunk answers from its cache; when it lacks the chunk it
//! pulls it over the WAN only if it is the site's fetcher for that chunk in its own view, else
//! it answers `Missing` — so requests never go round in circles. Every chunk from a
//! sibling is verified before it is cached or served; a sibling that sends a bad one is avoided
//! for [`AVOID_FOR`].

use crate::cache::{Cache, CacheObserver};
use crate::metrics::ReflectorMetrics;
use futures::future::{BoxFuture, FutureExt, Shared};
use oasis_core::compress::StoredChunk;
use oasis_core::gossip::{GossipView, LayerDigest};
use oasis_core::manifest::{digest_of_signed, ChunkRef, SignedRoot};
use oasis_core::net::accept;
use oasis_core::net::{ChunkReply, Client};
use oasis_core::policy::TrafficClass;
use oasis_core::site_wan::{SitePlace, WanSharing};
use oasis_core::ChunkId;
use oasis_mesh::libp2p::PeerId;
use oasis_mesh::{peer_id_of, peer_ref, Holding, MeshHandle};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How long a sibling that served a bad chunk (or could not be reached) is left out.
pub const AVOID_FOR: Duration = Duration::from_secs(30);
/// QUIC handshake with a sibling.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A holder has the chunk in its cache: it answers at LAN speed.
const HOLDER_TIMEOUT: Duration = Duration::from_secs(5);
/// Holders tried per chunk before the next step.
const MAX_HOLDERS_TRIED: usize = 3;
/// How long a change takes at most to reach the view misses are served from (the mesh task
/// publishes it). Misses read the published view and never wait for the mesh task, so a busy
/// mesh (a gossip flood) cannot hold up serving.
const VIEW_REFRESH: Duration = oasis_mesh::VIEW_PUBLISH;
/// How often a miss waiting on the site's WAN leader asks it again.
const LEADER_RETRY: Duration = Duration::from_millis(200);

type Flight = Shared<BoxFuture<'static, Option<StoredChunk>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a chunk came from, for the metrics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    SameSite,
    OtherSite,
}

/// How a reflector works with its siblings.
#[derive(Clone, Debug)]
pub struct SiblingSettings {
    /// Other sites whose reflectors may be asked (`peer_sites`).
    pub peer_sites: Vec<String>,
    /// How long a sibling that must pull over the WAN for us may take.
    pub delegate_timeout: Duration,
    /// How the site shares its WAN (`wan_sharing`).
    pub sharing: WanSharing,
    /// The mesh heartbeat (`mesh_heartbeat`): a dead sibling expires after 3.
    pub heartbeat: Duration,
}

pub struct Siblings {
    pub mesh: MeshHandle,
    /// This reflector's site, the site's WAN sharing and its own peer.
    place: SitePlace,
    peer_sites: Vec<String>,
    cache: Weak<Cache>,
    endpoint: quinn::Endpoint,
    metrics: ReflectorMetrics,
    /// How long a sibling that must pull over the WAN for us may take.
    delegate_timeout: Duration,
    /// Under `leader`, how long a miss waits for the site's leader to be reachable again (or
    /// replaced) before this reflector pulls it itself.
    handover_wait: Duration,
    /// One connection per sibling, made by the first ask that needs it: the others wait for
    /// it instead of connecting too (a burst of misses would open dozens, and a sibling holds
    /// each node to its `max_connections_per_peer`).
    conns: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<SiblingConn>>>>,
    /// chunk -> (layer, index in `unique_chunks()`), for every layer whose manifest we know.
    index: Mutex<ChunkIndex>,
    learned: Mutex<HashSet<LayerDigest>>,
    /// The gossip view as the mesh task last published it.
    view: tokio::sync::watch::Receiver<Arc<GossipView>>,
    avoid: Mutex<HashMap<PeerId, Instant>>,
    /// Our requests in flight per sibling (spreads misses between heartbeats).
    in_flight: Mutex<HashMap<PeerId, u32>>,
    /// Per chunk and class: a background flight does not hold up a foreground miss.
    flights: Mutex<HashMap<(ChunkId, TrafficClass), Flight>>,
    /// Sibling fetches in flight; the reflector waits for them when it stops.
    tasks: TaskTracker,
}

/// The mesh's name for the body of the manifest with layer digest `layer`: its body chunks in
/// root order (distinct) are gossiped as a layer of their own, apart from the layer's files
/// (whose chunk count all mesh members, the seed included, take from the entries).
pub fn body_layer(layer: &LayerDigest) -> LayerDigest {
    let mut h = blake3::Hasher::new_derive_key("oasis manifest body chunks v2");
    h.update(layer);
    *h.finalize().as_bytes()
}

/// Marks a packed place that is an index into [`ChunkIndex::many`].
const MANY: u64 = 1 << 63;

/// The connection to one sibling, and when connecting to it last failed.
#[derive(Default)]
struct SiblingConn {
    client: Option<Client>,
    failed: Option<(std::time::Instant, String)>,
}

/// Where each chunk sits in the layers learned: (layer, index in its `unique_chunks()`). Kept
/// compact, since it holds every chunk of every layer known (a million for a large layer): a
/// chunk in one layer costs its key and one packed place (about 40 bytes with the table's
/// slack); chunks shared by several layers (versions) keep their places in a side table.
#[derive(Default)]
struct ChunkIndex {
    /// Layer digests by number, in the order learned.
    layers: Vec<LayerDigest>,
    /// One place packed as `layer number << 32 | index`, or `MANY | slot in many`.
    places: HashMap<ChunkId, u64>,
    many: Vec<Box<[u64]>>,
}

impl ChunkIndex {
    /// Numbers a new layer; `None` once numbers would reach the [`MANY`] bit.
    fn add_layer(&mut self, digest: LayerDigest) -> Option<u32> {
        let n = u32::try_from(self.layers.len()).ok().filter(|n| *n < 1 << 31)?;
        self.layers.push(digest);
        Some(n)
    }

    /// Records chunk `id` at `index` in layer number `layer` (once per layer).
    fn add(&mut self, id: ChunkId, layer: u32, index: u32) {
        let place = (u64::from(layer) << 32) | u64::from(index);
        let same_layer = |p: &u64| *p >> 32 == u64::from(layer);
        match self.places.entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(place);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let cur = *o.get();
                if cur & MANY == 0 {
                    if !same_layer(&cur) {
                        self.many.push(Box::new([cur, place]));
                        *o.get_mut() = MANY | (self.many.len() - 1) as u64;
                    }
                } else {
                    let slot = &mut self.many[(cur & !MANY) as usize];
                    if !slot.iter().any(same_layer) {
                        let mut v = std::mem::take(slot).into_vec();
                        v.push(place);
                        *slot = v.into_boxed_slice();
                    }
                }
            }
        }
    }

    fn places(&self, id: &ChunkId) -> Vec<(LayerDigest, u32)> {
        let unpack = |p: u64| (self.layers[(p >> 32) as usize], p as u32);
        match self.places.get(id) {
            None => Vec::new(),
            Some(&p) if p & MANY == 0 => vec![unpack(p)],
            Some(&p) => self.many[(p & !MANY) as usize].iter().map(|&p| unpack(p)).collect(),
        }
    }
}

/// Forwards cache changes to the mesh announcements.
struct Announcer(Weak<Siblings>);

impl CacheObserver for Announcer {
    fn stored(&self, id: &ChunkId) {
        if let Some(s) = self.0.upgrade() {
            for (layer, i) in s.places(id) {
                s.mesh.set_chunk(layer, i);
            }
        }
    }

    fn evicted(&self, id: &ChunkId) {
        if let Some(s) = self.0.upgrade() {
            for (layer, i) in s.places(id) {
                s.mesh.clear_chunk(layer, i);
            }
        }
    }
}

/// A decrement of the in-flight count when a request ends (or is dropped).
struct InFlight<'a>(&'a Siblings, PeerId);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = lock(&self.0.in_flight);
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A candidate source of a chunk.
struct Candidate {
    peer: PeerId,
    addr: SocketAddr,
    kind: Kind,
}

impl Siblings {
    pub fn new(
        mesh: MeshHandle,
        settings: SiblingSettings,
        cache: &Arc<Cache>,
        endpoint: quinn::Endpoint,
        metrics: ReflectorMetrics,
        tasks: TaskTracker,
    ) -> Arc<Siblings> {
        let SiblingSettings { peer_sites, delegate_timeout, sharing, heartbeat } = settings;
        let view = mesh.watch_view();
        let place = SitePlace::new(mesh.site(), sharing, peer_ref(&mesh.peer_id()));
        let s = Arc::new(Siblings {
            place,
            mesh,
            peer_sites,
            cache: Arc::downgrade(cache),
            endpoint,
            metrics,
            delegate_timeout,
            // A dead leader's entry expires 3 heartbeats after its last one (up to 4 after its
            // death); the rest is slack for a loaded mesh task. Misses end the wait as soon as
            // the view names the next leader.
            handover_wait: heartbeat * 6 + VIEW_REFRESH,
            conns: Mutex::new(HashMap::new()),
            index: Mutex::new(ChunkIndex::default()),
            learned: Mutex::new(HashSet::new()),
            view,
            avoid: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
            tasks,
        });
        cache.observe(Box::new(Announcer(Arc::downgrade(&s))));
        s
    }

    fn places(&self, id: &ChunkId) -> Vec<(LayerDigest, u32)> {
        lock(&self.index).places(id)
    }

    /// Closes sibling connections.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"reflector shutting down");
        self.mesh.shutdown();
    }

    /// Has the layer with this digest (of its signed manifest root) been learned already?
    pub fn knows_layer(&self, digest: &LayerDigest) -> bool {
        lock(&self.learned).contains(digest)
    }

    /// Indexes a manifest's body chunks as a layer of their own ([`body_layer`]), known from the
    /// verified root alone: every reflector that holds the root agrees on the list, so a miss
    /// for a body chunk finds the siblings that hold it, as for a file chunk. Blocking.
    /// Returns false if it was known already.
    pub fn learn_body(&self, root: &SignedRoot) -> bool {
        let digest = body_layer(&root.digest);
        if self.knows_layer(&digest) {
            return false;
        }
        let label = format!("{} (manifest body)", root.label());
        self.learn_layer(digest, &label, &root.root.unique_body_chunks())
    }

    /// Has this manifest (signed root bytes) been learned already?
    pub fn knows_manifest_bytes(&self, bytes: &[u8]) -> bool {
        self.knows_layer(&digest_of_signed(bytes))
    }

    /// Indexes a layer's chunks (`chunks`: its distinct file chunks in first-use order, as
    /// `LayerManifest::unique_chunks` gives them, read from a verified manifest), tells the mesh
    /// the layer's true chunk count (so siblings' claims about it become usable) and announces
    /// what the cache holds of it. Blocking (reads the cache index).
    /// Returns false if the layer was known already.
    pub fn learn_layer(&self, digest: LayerDigest, label: &str, chunks: &[ChunkRef]) -> bool {
        if !lock(&self.learned).insert(digest) {
            return false;
        }
        let count = chunks.len() as u32;
        {
            let mut index = lock(&self.index);
            match index.add_layer(digest) {
                Some(layer) => {
                    // Room for the largest layer at once, rather than doubling (and holding old
                    // and new tables) on the way; later versions mostly share its chunks.
                    let room = index.places.capacity();
                    index.places.reserve(chunks.len().saturating_sub(room));
                    for (i, c) in chunks.iter().enumerate() {
                        index.add(c.id, layer, i as u32);
                    }
                }
                None => {
                    tracing::warn!(layer = %label, "too many layers learned; this one's chunks are not indexed")
                }
            }
        }
        self.mesh.learn_layer(digest, count);
        let Some(cache) = self.cache.upgrade() else { return true };
        let mut bits = vec![0u8; count.div_ceil(8) as usize];
        let mut held = 0u32;
        for (i, c) in chunks.iter().enumerate() {
            if cache.contains(&c.id) {
                bits[i / 8] |= 1 << (i % 8);
                held += 1;
            }
        }
        let holding = if held == count { Holding::Complete } else { Holding::Partial(bits) };
        tracing::debug!(layer = %label, chunks = count, held, "layer announced to the mesh");
        self.mesh.announce_layer(digest, count, holding);
        true
    }

    /// Has the mesh task publish its view now (after every command sent so far, such as a
    /// `learn_layer`). False when the mesh task has stopped.
    pub async fn refresh(&self) -> bool {
        self.mesh.view().await.is_ok()
    }

    fn avoided(&self, peer: &PeerId) -> bool {
        let mut a = lock(&self.avoid);
        match a.get(peer) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                a.remove(peer);
                false
            }
            None => false,
        }
    }

    fn avoid(&self, peer: PeerId, why: &str) {
        tracing::warn!(sibling = %peer, reason = why, secs = AVOID_FOR.as_secs(), "avoiding sibling");
        lock(&self.avoid).insert(peer, Instant::now() + AVOID_FOR);
    }

    /// The reflector of this site that pulls `id` over the WAN in `view` (None: no site).
    fn fetcher_in(&self, view: &GossipView, id: &ChunkId) -> Option<PeerId> {
        self.place.fetcher(view, id).and_then(|p| peer_id_of(&p))
    }

    /// The reflector of this site that pulls `id` over the WAN (possibly this one).
    pub async fn wan_fetcher(&self, id: &ChunkId) -> PeerId {
        let me = self.mesh.peer_id();
        let view = self.current_view();
        self.fetcher_in(&view, id).unwrap_or(me)
    }

    /// Live reflectors that hold `id` (same site first, then allowed sites), least loaded
    /// first (gossiped load plus our own requests in flight to each).
    fn holders(&self, view: &GossipView, id: &ChunkId) -> Vec<Candidate> {
        let me = self.mesh.peer_id();
        let mut seen = HashSet::new();
        let mut out: Vec<(Candidate, (u8, u64, u64))> = Vec::new();
        let in_flight = lock(&self.in_flight).clone();
        for (layer, i) in self.places(id) {
            for r in view.holders(&layer, i) {
                let Some(peer) = peer_id_of(&r) else { continue };
                if peer == me || !seen.insert(peer) || self.avoided(&peer) {
                    continue;
                }
                let Some(rec) = view.peer(&r) else { continue };
                let Some(addr) = rec.serving_addr.as_deref().and_then(|a| a.parse().ok()) else {
                    continue;
                };
                let kind = match (rec.site.as_deref(), self.place.site()) {
                    (Some(a), Some(b)) if a == b => Kind::SameSite,
                    (Some(a), _) if self.peer_sites.iter().any(|s| s == a) => Kind::OtherSite,
                    _ => continue,
                };
                let busy = u64::from(rec.load.active_transfers)
                    + u64::from(in_flight.get(&peer).copied().unwrap_or(0));
                let rank = (u8::from(kind == Kind::OtherSite), busy, rec.load.serving_rate);
                out.push((Candidate { peer, addr, kind }, rank));
            }
        }
        out.sort_by_key(|(_, rank)| *rank);
        out.into_iter().map(|(c, _)| c).collect()
    }

    async fn client(&self, addr: SocketAddr) -> Result<Client, String> {
        let slot = lock(&self.conns).entry(addr).or_default().clone();
        let mut held = slot.lock().await;
        if let Some(c) = held.client.as_ref() {
            if c.connection().close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        // The asks that waited for a connect that failed fail with it, rather than each trying
        // again in turn (a burst of misses to a dead sibling would wait one timeout each).
        if let Some((at, e)) = &held.failed {
            if at.elapsed() < CONNECT_TIMEOUT {
                return Err(e.clone());
            }
        }
        let connected = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Client::connect(&self.endpoint, addr, accept::REFLECTOR),
        )
        .await
        {
            Err(_) => Err(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}")),
            Ok(r) => r.map_err(|e| e.to_string()),
        };
        match connected {
            Ok(c) => {
                *held = SiblingConn { client: Some(c.clone()), failed: None };
                Ok(c)
            }
            Err(e) => {
                held.failed = Some((std::time::Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Asks one sibling for `id`; verifies and caches what it sends. `Ok(None)`: it lacks it.
    async fn ask(
        &self,
        c: &Candidate,
        id: ChunkId,
        class: TrafficClass,
        timeout: Duration,
    ) -> Result<Option<StoredChunk>, String> {
        *lock(&self.in_flight).entry(c.peer).or_insert(0) += 1;
        let _guard = InFlight(self, c.peer);
        let client = match self.client(c.addr).await {
            Ok(client) => client,
            Err(e) => {
                self.avoid(c.peer, &format!("unreachable: {e}"));
                return Err(e);
            }
        };
        let request = async {
            let mut replies = client.chunks_in(vec![id], class).await.map_err(|e| e.to_string())?;
            match replies.next().await.map_err(|e| e.to_string())? {
                Some(ChunkReply::Chunk(chunk)) => Ok(Some(chunk)),
                Some(ChunkReply::Missing(_)) | None => Ok(None),
            }
        };
        let chunk = match tokio::time::timeout(timeout, request).await {
            Err(_) => return Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => {
                if client.connection().close_reason().is_some() {
                    lock(&self.conns).remove(&c.addr);
                    self.avoid(c.peer, &format!("connection lost: {e}"));
                }
                return Err(e);
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(chunk))) => chunk,
        };
        let len = chunk.data.len() as u64;
        let cache = self.cache.upgrade().ok_or("the reflector is shutting down")?;
        let verified = tokio::task::spawn_blocking(move || {
            if chunk.id != id {
                return Err(format!("sent chunk {} when asked for {id}", chunk.id));
            }
            chunk.decode_verified().map_err(|e| e.to_string())?;
            if let Err(e) = cache.put(&chunk) {
                tracing::error!(chunk = %id, error = %e, "cannot store chunk in the cache");
            }
            Ok(chunk)
        })
        .await
        .map_err(|e| e.to_string())?;
        match verified {
            Ok(chunk) => {
                match c.kind {
                    Kind::SameSite => self.metrics.sibling_bytes.inc_by(len),
                    Kind::OtherSite => self.metrics.peer_site_bytes.inc_by(len),
                };
                Ok(Some(chunk))
            }
            Err(problem) => {
                self.metrics.sibling_corrupt.inc();
                self.avoid(c.peer, &format!("sent a bad chunk {id}: {problem}"));
                Err(problem)
            }
        }
    }

    /// Gets `id` from the mesh for a miss of `class` (an endpoint's: foreground; prefetch:
    /// background, which the site's WAN fetcher pulls in its background class): a holder (same
    /// site, then allowed sites), else the site's WAN fetcher. `None`: this reflector should
    /// pull it over the WAN itself. Concurrent calls for one chunk and class share one
    /// attempt.
    pub async fn fetch(self: &Arc<Self>, id: ChunkId, class: TrafficClass) -> Option<StoredChunk> {
        let key = (id, class);
        let flight = {
            let mut flights = lock(&self.flights);
            match flights.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let me = self.clone();
                    let f = self
                        .tasks
                        .spawn(
                            async move {
                                let r = me.fetch_now(id, class).await;
                                lock(&me.flights).remove(&key);
                                r
                            }
                            .in_current_span(),
                        )
                        .map(|r| r.ok().flatten())
                        .boxed()
                        .shared();
                    flights.insert(key, f.clone());
                    f
                }
            }
        };
        flight.await
    }

    async fn fetch_now(&self, id: ChunkId, class: TrafficClass) -> Option<StoredChunk> {
        let me = self.mesh.peer_id();
        // Counted from the first failure: a miss may have queued at the leader for long before.
        let mut give_up: Option<Instant> = None;
        loop {
            let view = self.current_view();
            for c in self.holders(&view, &id).into_iter().take(MAX_HOLDERS_TRIED) {
                match self.ask(&c, id, class, HOLDER_TIMEOUT).await {
                    Ok(Some(chunk)) => return Some(chunk),
                    Ok(None) => {
                        tracing::debug!(chunk = %id, sibling = %c.peer, "holder lacks the chunk")
                    }
                    Err(e) => {
                        tracing::debug!(chunk = %id, sibling = %c.peer, error = %e, "holder failed")
                    }
                }
            }
            let fetcher = self.fetcher_in(&view, &id).filter(|p| *p != me)?;
            let asked = match view
                .peer(&peer_ref(&fetcher))
                .and_then(|r| r.serving_addr.as_deref())
                .and_then(|a| a.parse().ok())
            {
                Some(addr) if !self.avoided(&fetcher) => {
                    let c = Candidate { peer: fetcher, addr, kind: Kind::SameSite };
                    self.ask(&c, id, class, self.delegate_timeout).await
                }
                _ => Err(format!("sibling {fetcher} is not reachable")),
            };
            let why = match asked {
                Ok(Some(chunk)) => {
                    self.metrics.sibling_delegated.inc();
                    return Some(chunk);
                }
                // Its view does not name it the fetcher (the views differ for a moment).
                Ok(None) => "it does not take the chunk".to_string(),
                Err(e) => e,
            };
            // Spread: pull it here. Leader: every other reflector of the site that waits on the
            // leader would pull the same chunks, so wait for the leader to answer again or for
            // its entry to expire and a new leader to be named; pull it here only after that.
            let give_up = *give_up.get_or_insert_with(|| Instant::now() + self.handover_wait);
            if self.place.sharing() == WanSharing::Spread || Instant::now() >= give_up {
                tracing::info!(chunk = %id, sibling = %fetcher, problem = %why, "the site's WAN fetcher did not deliver; pulling it here");
                return None;
            }
            tracing::debug!(chunk = %id, sibling = %fetcher, problem = %why, "waiting for the site's WAN leader");
            tokio::time::sleep(LEADER_RETRY).await;
        }
    }

    /// Where this reflector stands in its site's WAN sharing.
    pub fn place(&self) -> &SitePlace {
        &self.place
    }

    /// The gossip view as the mesh task last published it (at most [`VIEW_REFRESH`] behind a
    /// change while the mesh task keeps up).
    pub fn current_view(&self) -> Arc<GossipView> {
        self.view.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_every_place_of_a_chunk_once_per_layer() {
        let mut x = ChunkIndex::default();
        let (a, b, c) = (ChunkId([1; 32]), ChunkId([2; 32]), ChunkId([3; 32]));
        let (l1, l2, l3) = ([10u8; 32], [20u8; 32], [30u8; 32]);
        let n1 = x.add_layer(l1).unwrap();
        x.add(a, n1, 0);
        x.add(b, n1, 1);
        x.add(a, n1, 5);
        assert_eq!(x.places(&a), vec![(l1, 0)], "one place per layer: the first");
        let n2 = x.add_layer(l2).unwrap();
        x.add(b, n2, 0);
        x.add(c, n2, 1);
        let n3 = x.add_layer(l3).unwrap();
        x.add(b, n3, 7);
        x.add(b, n3, 8);
        assert_eq!(x.places(&b), vec![(l1, 1), (l2, 0), (l3, 7)]);
        assert_eq!(x.places(&c), vec![(l2, 1)]);
        assert_eq!(x.places(&ChunkId([9; 32])), vec![]);
        assert_eq!(x.many.len(), 1, "only the shared chunk has a side entry");
    }
}
