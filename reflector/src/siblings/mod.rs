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
//!
//! The state (the chunk index of the layers learned, the siblings avoided, the requests and
//! connections to each, the misses in flight) is owned by one task, [`SiblingsTask`];
//! [`Siblings`] is its handle.

mod index;
mod link;
mod task;

pub use task::SiblingsTask;

use crate::cache::{Cache, CacheObserver};
use crate::metrics::ReflectorMetrics;
use link::Link;
use oasis_core::compress::StoredChunk;
use oasis_core::gossip::{GossipView, LayerDigest};
use oasis_core::manifest::{digest_of_signed, ChunkRef, SignedRoot};
use oasis_core::policy::TrafficClass;
use oasis_core::site_wan::{SitePlace, WanSharing};
use oasis_core::ChunkId;
use oasis_mesh::libp2p::PeerId;
use oasis_mesh::{peer_id_of, peer_ref, MeshHandle};
use std::sync::Arc;
use std::time::Duration;
use task::Command;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// How long a sibling that served a bad chunk (or could not be reached) is left out.
pub const AVOID_FOR: Duration = Duration::from_secs(30);
/// QUIC handshake with a sibling.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a change takes at most to reach the view misses are served from (the mesh task
/// publishes it). Misses read the published view and never wait for the mesh task, so a busy
/// mesh (a gossip flood) cannot hold up serving.
const VIEW_REFRESH: Duration = oasis_mesh::VIEW_PUBLISH;

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

/// A handle on the siblings task ([`SiblingsTask`]), which owns the sibling state.
pub struct Siblings {
    pub mesh: MeshHandle,
    /// This reflector's site, the site's WAN sharing and its own peer.
    place: SitePlace,
    endpoint: quinn::Endpoint,
    link: Arc<Link>,
    /// The gossip view as the mesh task last published it.
    view: tokio::sync::watch::Receiver<Arc<GossipView>>,
}

/// The mesh's name for the body of the manifest with layer digest `layer`: its body chunks in
/// root order (distinct) are gossiped as a layer of their own, apart from the layer's files
/// (whose chunk count all mesh members, the seed included, take from the entries).
pub fn body_layer(layer: &LayerDigest) -> LayerDigest {
    let mut h = blake3::Hasher::new_derive_key("oasis manifest body chunks v2");
    h.update(layer);
    *h.finalize().as_bytes()
}

/// Forwards cache changes to the siblings task, which announces them to the mesh.
struct Announcer(mpsc::UnboundedSender<Command>);

impl CacheObserver for Announcer {
    fn stored(&self, id: &ChunkId) {
        let _ = self.0.send(Command::Stored(*id));
    }

    fn evicted(&self, id: &ChunkId) {
        let _ = self.0.send(Command::Evicted(*id));
    }
}

impl Siblings {
    /// The handle and the task that owns the state; the caller spawns [`SiblingsTask::run`].
    pub fn new(
        mesh: MeshHandle,
        settings: SiblingSettings,
        cache: &Arc<Cache>,
        endpoint: quinn::Endpoint,
        metrics: ReflectorMetrics,
        tasks: TaskTracker,
    ) -> (Arc<Siblings>, SiblingsTask) {
        let SiblingSettings { peer_sites, delegate_timeout, sharing, heartbeat } = settings;
        let view = mesh.watch_view();
        let place = SitePlace::new(mesh.site(), sharing, peer_ref(&mesh.peer_id()));
        // Unbounded: the senders are this reflector's own cache and requests, each of which
        // has its own bound (a store's rate, the server's streams); a full queue must not drop
        // a cache event, or the mesh would keep a wrong bitmap.
        let (tx, commands) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            commands: tx.clone(),
            cache: Arc::downgrade(cache),
            metrics,
            delegate_timeout,
            // A dead leader's entry expires 3 heartbeats after its last one (up to 4 after its
            // death); the rest is slack for a loaded mesh task. Misses end the wait as soon as
            // the view names the next leader.
            handover_wait: heartbeat * 6 + VIEW_REFRESH,
            sharing,
            tasks,
        });
        cache.observe(Box::new(Announcer(tx)));
        let task = SiblingsTask::new(
            commands,
            link.clone(),
            mesh.clone(),
            place.clone(),
            peer_sites,
            endpoint.clone(),
        );
        let handle = Siblings { place, mesh, endpoint, link, view };
        (Arc::new(handle), task)
    }

    /// Closes sibling connections.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"reflector shutting down");
        self.mesh.shutdown();
    }

    /// Has the layer with this digest (of its signed manifest root) been learned already?
    pub async fn knows_layer(&self, digest: &LayerDigest) -> bool {
        let layer = *digest;
        self.link.call(|reply| Command::Knows { layer, reply }).await.unwrap_or(false)
    }

    /// Has this manifest (signed root bytes) been learned already?
    pub async fn knows_manifest_bytes(&self, bytes: &[u8]) -> bool {
        self.knows_layer(&digest_of_signed(bytes)).await
    }

    /// Indexes a manifest's body chunks as a layer of their own ([`body_layer`]), known from the
    /// verified root alone: every reflector that holds the root agrees on the list, so a miss
    /// for a body chunk finds the siblings that hold it, as for a file chunk.
    /// Returns false if it was known already.
    pub async fn learn_body(&self, root: &SignedRoot) -> bool {
        let digest = body_layer(&root.digest);
        if self.knows_layer(&digest).await {
            return false;
        }
        let label = format!("{} (manifest body)", root.label());
        self.learn_layer(digest, &label, Arc::new(root.root.unique_body_chunks())).await
    }

    /// Indexes a layer's chunks (`chunks`: its distinct file chunks in first-use order, as
    /// `LayerManifest::unique_chunks` gives them, read from a verified manifest), tells the mesh
    /// the layer's true chunk count (so siblings' claims about it become usable) and announces
    /// what the cache holds of it. Returns false if the layer was known already. The
    /// announcement runs as tracked work of its own: a caller that gives up waiting does not
    /// leave the layer learned but unannounced.
    pub async fn learn_layer(
        &self,
        digest: LayerDigest,
        label: &str,
        chunks: Arc<Vec<ChunkRef>>,
    ) -> bool {
        let (layer, label) = (digest, label.to_string());
        self.link
            .call(|reply| Command::Learn { layer, label, chunks, reply })
            .await
            .unwrap_or(false)
    }

    /// Has the mesh task publish its view now (after every command sent so far, such as a
    /// `learn_layer`). False when the mesh task has stopped.
    pub async fn refresh(&self) -> bool {
        self.mesh.view().await.is_ok()
    }

    /// The reflector of this site that pulls `id` over the WAN (possibly this one).
    pub async fn wan_fetcher(&self, id: &ChunkId) -> PeerId {
        let me = self.mesh.peer_id();
        let view = self.current_view();
        self.place.fetcher(&view, id).and_then(|p| peer_id_of(&p)).unwrap_or(me)
    }

    /// Gets `id` from the mesh for a miss of `class` (an endpoint's: foreground; prefetch:
    /// background, which the site's WAN fetcher pulls in its background class): a holder (same
    /// site, then allowed sites), else the site's WAN fetcher. `None`: this reflector should
    /// pull it over the WAN itself. Concurrent calls for one chunk and class share one
    /// attempt.
    pub async fn fetch(&self, id: ChunkId, class: TrafficClass) -> Option<StoredChunk> {
        let span = tracing::Span::current();
        self.link.call(|reply| Command::Fetch { id, class, span, reply }).await.flatten()
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
