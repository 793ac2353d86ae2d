//! The siblings task: it owns what the reflector knows of its siblings (the chunk index of the
//! layers learned, the siblings avoided, the requests in flight to each, the connection to each)
//! and the misses in flight. Handles ([`super::Siblings`], the cache's announcer, the fetch
//! jobs) reach it over one channel; the network work runs in jobs beside its loop.

use super::index::ChunkIndex;
use super::link::{Candidate, Kind, Link, Next, Plan};
use super::{AVOID_FOR, CONNECT_TIMEOUT};
use oasis_core::compress::StoredChunk;
use oasis_core::gossip::{GossipView, LayerDigest};
use oasis_core::manifest::ChunkRef;
use oasis_core::net::{accept, Client};
use oasis_core::policy::TrafficClass;
use oasis_core::site_wan::SitePlace;
use oasis_core::ChunkId;
use oasis_mesh::libp2p::PeerId;
use oasis_mesh::{peer_id_of, peer_ref, Holding, MeshHandle};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{Id, JoinSet};
use tracing::Instrument;

/// What the task is asked to do.
pub(super) enum Command {
    /// The cache stored a chunk: announce it in every layer learned that uses it.
    Stored(ChunkId),
    /// The cache evicted a chunk.
    Evicted(ChunkId),
    /// Has this layer been learned?
    Knows { layer: LayerDigest, reply: oneshot::Sender<bool> },
    /// Index a layer's distinct chunks and tell the mesh its chunk count; answers whether the
    /// layer was new.
    Learn {
        layer: LayerDigest,
        label: String,
        chunks: Arc<Vec<ChunkRef>>,
        reply: oneshot::Sender<bool>,
    },
    /// A miss: get the chunk from the mesh (`None`: pull it over the WAN here). Concurrent
    /// misses for one chunk and class share one job.
    Fetch {
        id: ChunkId,
        class: TrafficClass,
        span: tracing::Span,
        reply: oneshot::Sender<Option<StoredChunk>>,
    },
    /// Where to ask for a chunk now.
    Plan { id: ChunkId, reply: oneshot::Sender<Plan> },
    /// A request to `peer` at `addr` starts: counts it in flight (until [`Command::Done`]) and
    /// answers the connection to use.
    Connect { peer: PeerId, addr: SocketAddr, reply: oneshot::Sender<Result<Client, String>> },
    /// A request to this sibling ended.
    Done(PeerId),
    /// Leave this sibling out for [`AVOID_FOR`].
    Avoid { peer: PeerId, why: String },
    /// The connection to `addr` failed under a request: dropped if closed, and its sibling
    /// avoided.
    Lost { peer: PeerId, addr: SocketAddr, why: String },
}

/// The connection to one sibling.
enum Slot {
    Live(Client),
    /// Being made; these asks wait for it.
    Connecting(Vec<oneshot::Sender<Result<Client, String>>>),
    /// Connecting failed then: asks within [`CONNECT_TIMEOUT`] of it fail with it, rather than
    /// each trying again in turn (a burst of misses to a dead sibling would wait one timeout
    /// each).
    Failed(Instant, String),
}

/// What a job gives back.
enum Job {
    Fetched { key: (ChunkId, TrafficClass), chunk: Option<StoredChunk> },
    Connected { addr: SocketAddr, result: Result<Client, String> },
}

/// What a job was started for, to answer its waiters if it dies.
enum JobFor {
    Fetch((ChunkId, TrafficClass)),
    Connect(SocketAddr),
}

pub struct SiblingsTask {
    commands: mpsc::UnboundedReceiver<Command>,
    /// Handed to the fetch jobs.
    link: Arc<Link>,
    mesh: MeshHandle,
    place: SitePlace,
    peer_sites: Vec<String>,
    view: watch::Receiver<Arc<GossipView>>,
    endpoint: quinn::Endpoint,
    index: ChunkIndex,
    learned: HashSet<LayerDigest>,
    avoid: HashMap<PeerId, Instant>,
    /// Our requests in flight per sibling (spreads misses between heartbeats).
    in_flight: HashMap<PeerId, u32>,
    /// Per chunk and class, the misses waiting: a background flight does not hold up a
    /// foreground miss.
    flights: HashMap<(ChunkId, TrafficClass), Vec<oneshot::Sender<Option<StoredChunk>>>>,
    /// One connection per sibling, made by the first ask that needs it: the others wait for
    /// it instead of connecting too (a burst of misses would open dozens, and a sibling holds
    /// each node to its `max_connections_per_peer`).
    conns: HashMap<SocketAddr, Slot>,
}

impl SiblingsTask {
    pub(super) fn new(
        commands: mpsc::UnboundedReceiver<Command>,
        link: Arc<Link>,
        mesh: MeshHandle,
        place: SitePlace,
        peer_sites: Vec<String>,
        endpoint: quinn::Endpoint,
    ) -> SiblingsTask {
        SiblingsTask {
            commands,
            link,
            view: mesh.watch_view(),
            mesh,
            place,
            peer_sites,
            endpoint,
            index: ChunkIndex::default(),
            learned: HashSet::new(),
            avoid: HashMap::new(),
            in_flight: HashMap::new(),
            flights: HashMap::new(),
            conns: HashMap::new(),
        }
    }

    /// Takes commands until the reflector stops it (the cache's announcer and the jobs hold
    /// senders, so the channel itself stays open). The jobs run in a `JoinSet`, so stopping
    /// the task stops them too.
    pub async fn run(mut self) {
        let mut jobs: JoinSet<Job> = JoinSet::new();
        let mut started: HashMap<Id, JobFor> = HashMap::new();
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(c) => self.handle(c, &mut jobs, &mut started),
                    None => return,
                },
                Some(done) = jobs.join_next_with_id() => match done {
                    Ok((id, job)) => {
                        started.remove(&id);
                        self.finished(job);
                    }
                    Err(e) => match started.remove(&e.id()) {
                        Some(JobFor::Fetch(key)) => {
                            tracing::error!(chunk = %key.0, error = %e, "a sibling fetch failed");
                            self.finished(Job::Fetched { key, chunk: None });
                        }
                        Some(JobFor::Connect(addr)) => {
                            let result = Err(format!("connecting to {addr} failed: {e}"));
                            self.finished(Job::Connected { addr, result });
                        }
                        None => {}
                    },
                },
            }
        }
    }

    fn handle(&mut self, c: Command, jobs: &mut JoinSet<Job>, started: &mut HashMap<Id, JobFor>) {
        match c {
            Command::Stored(id) => {
                for (layer, i) in self.index.places(&id) {
                    self.mesh.set_chunk(layer, i);
                }
            }
            Command::Evicted(id) => {
                for (layer, i) in self.index.places(&id) {
                    self.mesh.clear_chunk(layer, i);
                }
            }
            Command::Knows { layer, reply } => {
                let _ = reply.send(self.learned.contains(&layer));
            }
            Command::Learn { layer, label, chunks, reply } => {
                if !self.learned.insert(layer) {
                    let _ = reply.send(false);
                    return;
                }
                // Inline: a million-chunk layer takes a fraction of a second, once.
                if !self.index.add_chunks_of(layer, &chunks) {
                    tracing::warn!(layer = %label, "too many layers learned; this one's chunks are not indexed");
                }
                self.mesh.learn_layer(layer, chunks.len() as u32);
                self.announce(layer, label, chunks, reply);
            }
            Command::Fetch { id, class, span, reply } => {
                let key = (id, class);
                if let Some(waiting) = self.flights.get_mut(&key) {
                    waiting.push(reply);
                    return;
                }
                self.flights.insert(key, vec![reply]);
                let link = self.link.clone();
                let job = async move {
                    let chunk = link.fetch_now(id, class).await;
                    Job::Fetched { key, chunk }
                };
                let handle = jobs.spawn(job.instrument(span));
                started.insert(handle.id(), JobFor::Fetch(key));
            }
            Command::Plan { id, reply } => {
                let _ = reply.send(self.plan(&id));
            }
            Command::Connect { peer, addr, reply } => {
                *self.in_flight.entry(peer).or_insert(0) += 1;
                self.connect(addr, reply, jobs, started);
            }
            Command::Done(peer) => {
                if let Some(n) = self.in_flight.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                }
            }
            Command::Avoid { peer, why } => self.avoid(peer, &why),
            Command::Lost { peer, addr, why } => {
                let closed = |s: &Slot| match s {
                    Slot::Live(c) => c.connection().close_reason().is_some(),
                    _ => false,
                };
                if self.conns.get(&addr).is_some_and(closed) {
                    self.conns.remove(&addr);
                }
                self.avoid(peer, &format!("connection lost: {why}"));
            }
        }
    }

    /// Announces what the cache holds of a layer just indexed, reading the cache off the
    /// task as tracked work, then answers `reply`. A chunk stored from now on is announced by
    /// the task ([`Command::Stored`]); one stored before is seen by the scan.
    fn announce(
        &self,
        layer: LayerDigest,
        label: String,
        chunks: Arc<Vec<ChunkRef>>,
        reply: oneshot::Sender<bool>,
    ) {
        let (mesh, cache) = (self.mesh.clone(), self.link.cache.clone());
        self.link.tasks.spawn_blocking(move || {
            if let Some(cache) = cache.upgrade() {
                let count = chunks.len() as u32;
                let mut bits = vec![0u8; count.div_ceil(8) as usize];
                let mut held = 0u32;
                for (i, c) in chunks.iter().enumerate() {
                    if cache.contains(&c.id) {
                        bits[i / 8] |= 1 << (i % 8);
                        held += 1;
                    }
                }
                let holding =
                    if held == count { Holding::Complete } else { Holding::Partial(bits) };
                tracing::debug!(layer = %label, chunks = count, held, "layer announced to the mesh");
                mesh.announce_layer(layer, count, holding);
            }
            let _ = reply.send(true);
        });
    }

    fn finished(&mut self, job: Job) {
        match job {
            Job::Fetched { key, chunk } => {
                for waiter in self.flights.remove(&key).unwrap_or_default() {
                    let _ = waiter.send(chunk.clone());
                }
            }
            Job::Connected { addr, result } => {
                let slot = match &result {
                    Ok(c) => Slot::Live(c.clone()),
                    Err(e) => Slot::Failed(Instant::now(), e.clone()),
                };
                if let Some(Slot::Connecting(waiting)) = self.conns.insert(addr, slot) {
                    for waiter in waiting {
                        let _ = waiter.send(result.clone());
                    }
                }
            }
        }
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        reply: oneshot::Sender<Result<Client, String>>,
        jobs: &mut JoinSet<Job>,
        started: &mut HashMap<Id, JobFor>,
    ) {
        match self.conns.get_mut(&addr) {
            Some(Slot::Live(c)) if c.connection().close_reason().is_none() => {
                let _ = reply.send(Ok(c.clone()));
                return;
            }
            Some(Slot::Failed(at, e)) if at.elapsed() < CONNECT_TIMEOUT => {
                let _ = reply.send(Err(e.clone()));
                return;
            }
            Some(Slot::Connecting(waiting)) => {
                waiting.push(reply);
                return;
            }
            _ => {}
        }
        self.conns.insert(addr, Slot::Connecting(vec![reply]));
        let endpoint = self.endpoint.clone();
        let job = async move {
            let result = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                Client::connect(&endpoint, addr, accept::REFLECTOR),
            )
            .await
            {
                Err(_) => Err(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}")),
                Ok(r) => r.map_err(|e| e.to_string()),
            };
            Job::Connected { addr, result }
        };
        let handle = jobs.spawn(job.in_current_span());
        started.insert(handle.id(), JobFor::Connect(addr));
    }

    fn avoided(&mut self, peer: &PeerId) -> bool {
        match self.avoid.get(peer) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                self.avoid.remove(peer);
                false
            }
            None => false,
        }
    }

    fn avoid(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(sibling = %peer, reason = why, secs = AVOID_FOR.as_secs(), "avoiding sibling");
        self.avoid.insert(peer, Instant::now() + AVOID_FOR);
    }

    /// Where to ask for `id` in the view as the mesh task last published it: the live
    /// reflectors that hold it, then the site's WAN fetcher.
    fn plan(&mut self, id: &ChunkId) -> Plan {
        let view = self.view.borrow().clone();
        let holders = self.holders(&view, id);
        let me = self.mesh.peer_id();
        let next = match self.place.fetcher(&view, id).and_then(|p| peer_id_of(&p)) {
            None => Next::PullHere,
            Some(f) if f == me => Next::PullHere,
            Some(fetcher) => match view
                .peer(&peer_ref(&fetcher))
                .and_then(|r| r.serving_addr.as_deref())
                .and_then(|a| a.parse().ok())
            {
                Some(addr) if !self.avoided(&fetcher) => {
                    Next::Ask(Candidate { peer: fetcher, addr, kind: Kind::SameSite })
                }
                _ => Next::Unreachable(fetcher),
            },
        };
        Plan { holders, next }
    }

    /// Live reflectors that hold `id` (same site first, then allowed sites), least loaded
    /// first (gossiped load plus our own requests in flight to each).
    fn holders(&mut self, view: &GossipView, id: &ChunkId) -> Vec<Candidate> {
        let me = self.mesh.peer_id();
        let mut seen = HashSet::new();
        let mut out: Vec<(Candidate, (u8, u64, u64))> = Vec::new();
        for (layer, i) in self.index.places(id) {
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
                    + u64::from(self.in_flight.get(&peer).copied().unwrap_or(0));
                let rank = (u8::from(kind == Kind::OtherSite), busy, rec.load.serving_rate);
                out.push((Candidate { peer, addr, kind }, rank));
            }
        }
        out.sort_by_key(|(_, rank)| *rank);
        out.into_iter().map(|(c, _)| c).collect()
    }
}
