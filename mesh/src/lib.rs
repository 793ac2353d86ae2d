//! Oasis reflector mesh: libp2p discovery and chunk-availability gossip between reflectors.
//!
//! One task owns the libp2p [`Swarm`](libp2p::Swarm) (identify, gossipsub, Kademlia, mDNS over
//! TCP+noise+yamux and QUIC); the rest of the program holds a cloneable [`MeshHandle`] that
//! sends commands over a channel and gets answers on oneshots. No lock guards the swarm.
//!
//! What is gossiped, and how peers prove they are enrolled nodes, is described in
//! docs/protocol.md (section 12) and in [`binding`]; the pure data model (encoding, validation, the view of
//! the mesh, rendezvous hashing, WAN shares) is [`oasis_core::gossip`].
//!
//! ```ignore
//! let (mesh, task) = Mesh::start(config, &identity, &state_dir)?;
//! mesh.metrics().register(&mut registry);
//! mesh.learn_layer(digest, manifest.unique_chunks().len() as u32);
//! mesh.announce_layer(digest, chunk_count, Holding::Partial(bitmap));
//! mesh.update_load(load);
//! let holders = mesh.holders(digest, chunk_index).await?;
//! ```

pub mod binding;
pub mod scoring;
mod task;
pub use task::{
    HELLOS_PER_ADDRESS, HELLOS_PER_NEIGHBOUR, HELLO_RATE_WINDOW, HELLO_RECHECK,
    MAX_BINDINGS_PER_NODE, MAX_CONNECTIONS_PER_PEER, MAX_ESTABLISHED_INCOMING, MAX_HELD_PER_CHECK,
    MAX_HELLO_CHECKS, MAX_PENDING_INCOMING, MAX_VERIFIED_PEERS, VIEW_PUBLISH,
};

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tracing::Instrument;

use anyhow::{anyhow, Context, Result};
pub use binding::{peer_id_of_state, P2P_KEY_FILE};
pub use libp2p;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use oasis_core::gossip::{GossipView, InventoryRecord, LayerDigest, Load, PeerRef};
use oasis_core::pki::NodeIdentity;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Default libp2p port (TCP and UDP/QUIC).
pub const DEFAULT_P2P_PORT: u16 = 7411;
/// The gossipsub topic of the mesh.
pub const TOPIC: &str = "oasis/mesh/1";
/// Kademlia protocol name (a private DHT, not the public IPFS one).
pub const KAD_PROTOCOL: &str = "/oasis/kad/1.0.0";
/// Identify protocol version.
pub const IDENTIFY_PROTOCOL: &str = "/oasis/mesh/1.0.0";
/// Prefix of a site's inventory topic; the site name follows (`oasis/inventory/1/lyon`).
pub const INVENTORY_TOPIC_PREFIX: &str = "oasis/inventory/1/";
/// Device records waiting to be published are kept up to this many (one per device name).
pub const MAX_PENDING_DEVICES: usize = 4096;
/// Inventory batches waiting for the application; further ones are dropped (`backlog`).
pub const DEVICE_BATCH_BACKLOG: usize = 64;

/// The gossipsub topic on which the reflectors of `site` share its device inventory.
pub fn inventory_topic(site: &str) -> String {
    format!("{INVENTORY_TOPIC_PREFIX}{site}")
}

/// Device records received from a verified reflector of this node's site, each checked
/// ([`oasis_core::gossip::inventory::admit_inventory`]): for the application to merge.
#[derive(Clone, Debug)]
pub struct DeviceBatch {
    pub from: PeerId,
    /// Node name of the sender (from its certificate).
    pub sender: String,
    pub records: Vec<InventoryRecord>,
}

/// A `--p2p-listen` / `--bootstrap` multiaddr: `/ip4|ip6|dns.../tcp/PORT` or
/// `/.../udp/PORT/quic-v1`, optionally ending in `/p2p/PEER_ID`.
pub fn parse_multiaddr(text: &str) -> Result<Multiaddr, String> {
    let addr: Multiaddr = text.trim().parse().map_err(|e| {
        format!(
            "{text:?} is not a multiaddr ({e}); write e.g. \"/ip4/10.0.0.5/tcp/7411\" or \
             \"/ip4/10.0.0.5/udp/7411/quic-v1/p2p/12D3Koo...\""
        )
    })?;
    let parts: Vec<Protocol> = addr.iter().collect();
    let host = matches!(
        parts.first(),
        Some(
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
        )
    );
    let rest: Vec<&Protocol> =
        parts.iter().skip(1).filter(|p| !matches!(p, Protocol::P2p(_))).collect();
    let transport = matches!(rest.as_slice(), [Protocol::Tcp(_)])
        || matches!(rest.as_slice(), [Protocol::Udp(_), Protocol::QuicV1]);
    let p2p_last = parts.iter().position(|p| matches!(p, Protocol::P2p(_)));
    if !host || !transport || p2p_last.is_some_and(|i| i != parts.len() - 1) {
        return Err(format!(
            "{text:?} is not a TCP or QUIC address: expected /ip4/ADDR/tcp/PORT or \
             /ip4/ADDR/udp/PORT/quic-v1, optionally followed by /p2p/PEER_ID"
        ));
    }
    Ok(addr)
}

/// How long a new neighbour has to prove its certificate (`MeshConfig::stranger_timeout`).
pub const DEFAULT_STRANGER_TIMEOUT: Duration = Duration::from_secs(10);

/// Mesh configuration; the reflector and the seed map their flags onto it.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// `--p2p-listen MULTIADDR` (repeatable). Default: TCP and QUIC on port 7411, all IPv4.
    pub listen: Vec<Multiaddr>,
    /// `--bootstrap MULTIADDR` (repeatable), with or without a trailing `/p2p/PEER_ID`.
    pub bootstrap: Vec<Multiaddr>,
    /// `!--no-mdns`.
    pub mdns: bool,
    /// Heartbeat (liveness + load) interval; silent peers expire after 3 of them.
    pub heartbeat: Duration,
    /// Availability updates are batched and sent at most this often.
    pub batch_interval: Duration,
    /// Full availability state is re-sent every this many heartbeats (late joiners, lost
    /// messages).
    pub reannounce_heartbeats: u32,
    /// Where this node serves the Oasis QUIC protocol (gossiped to siblings).
    pub serving_addr: Option<SocketAddr>,
    /// The mesh dials peers it learns of (Kademlia, mDNS) while it has fewer connections.
    pub target_connections: usize,
    /// The node's revocation list: hellos of revoked certificates are refused, verified peers
    /// it revokes are dropped, newer lists are passed on to and taken from the mesh.
    pub revocations: oasis_core::pki::Revocations,
    /// A neighbour whose hello has not verified this long after it connected is disconnected
    /// (until then it is sent no gossip).
    pub stranger_timeout: Duration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}").parse().expect("valid multiaddr"),
                format!("/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1")
                    .parse()
                    .expect("valid multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            heartbeat: oasis_core::gossip::DEFAULT_HEARTBEAT,
            batch_interval: Duration::from_millis(250),
            reannounce_heartbeats: 10,
            serving_addr: None,
            target_connections: 8,
            revocations: oasis_core::pki::Revocations::default(),
            stranger_timeout: DEFAULT_STRANGER_TIMEOUT,
        }
    }
}

/// Which chunks of a layer the local node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    Complete,
    /// LSB-first bitmap over `unique_chunks()`, `ceil(chunk_count / 8)` bytes.
    Partial(Vec<u8>),
    /// Nothing any more (evicted); announced once, then forgotten.
    Evicted,
}

/// A live mesh peer as the reflector needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPeer {
    pub peer_id: PeerId,
    pub site: Option<String>,
    pub serving_addr: Option<SocketAddr>,
    pub load: Load,
}

/// Metric handles. Register them with [`MeshMetrics::register`].
#[derive(Clone, Debug, Default)]
pub struct MeshMetrics {
    /// `oasis_peers`: verified, live mesh peers.
    pub peers: Gauge,
    /// `oasis_gossip_messages_total{kind, direction}`.
    pub messages: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// `oasis_gossip_dropped_total{reason}`.
    pub dropped: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl MeshMetrics {
    /// Registers the metrics. Names are given without the `oasis_` prefix, which the registry of
    /// `oasis_core::metrics::NodeMetrics` (`Registry::with_prefix("oasis")`) adds.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("peers", "Verified live mesh peers", self.peers.clone());
        registry.register(
            "gossip_messages",
            "Gossip messages by kind (hello, heartbeat, availability) and direction (in, out)",
            self.messages.clone(),
        );
        registry.register(
            "gossip_dropped",
            "Gossip messages dropped, by reason",
            self.dropped.clone(),
        );
    }

    /// Messages dropped for `reason` so far.
    pub fn dropped(&self, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&vec![("reason", reason)]).get()
    }

    /// Messages of `kind` received (accepted) so far.
    pub fn received(&self, kind: &'static str) -> u64 {
        self.messages.get_or_create(&vec![("kind", kind), ("direction", "in")]).get()
    }

    pub(crate) fn count_drop(&self, reason: &'static str) {
        self.dropped.get_or_create(&vec![("reason", reason)]).inc();
    }

    pub(crate) fn count(&self, kind: &'static str, direction: &'static str) {
        self.messages.get_or_create(&vec![("kind", kind), ("direction", direction)]).inc();
    }
}

pub(crate) enum Command {
    Announce { layer: LayerDigest, chunk_count: u32, holding: Holding },
    SetChunk { layer: LayerDigest, chunk_index: u32 },
    ClearChunk { layer: LayerDigest, chunk_index: u32 },
    LearnLayer { layer: LayerDigest, chunk_count: u32 },
    UpdateLoad(Load),
    View(oneshot::Sender<std::sync::Arc<GossipView>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    FindProviders { layer: LayerDigest, reply: oneshot::Sender<Vec<PeerId>> },
    Dial(Multiaddr),
    SetHello(oasis_core::gossip::Hello),
    AnnounceDevices(Vec<InventoryRecord>),
    SubscribeDevices(mpsc::Sender<DeviceBatch>),
    Shutdown,
}

/// Entry point.
pub struct Mesh;

impl Mesh {
    /// Loads or creates `state_dir/p2p.key`, signs its binding with the node certificate, starts
    /// listening and spawns the task owning the swarm. Must be called inside a tokio runtime.
    /// The task ends (Ok) after [`MeshHandle::shutdown`] or when every handle is dropped.
    pub fn start(
        config: MeshConfig,
        identity: &NodeIdentity,
        state_dir: &Path,
    ) -> Result<(MeshHandle, JoinHandle<Result<()>>)> {
        let keypair = binding::load_or_create_keypair(state_dir)?;
        let peer_id = keypair.public().to_peer_id();
        let hello = binding::sign_binding(identity, &peer_id)
            .context("binding the p2p key to the node certificate")?;
        let metrics = MeshMetrics::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let (view_tx, view) =
            tokio::sync::watch::channel(std::sync::Arc::new(GossipView::new(config.heartbeat)));
        let task =
            task::MeshTask::new(config, keypair, hello, identity, metrics.clone(), rx, view_tx)?;
        let join = tokio::spawn(task.run().instrument(tracing::info_span!("task", task = "mesh")));
        Ok((MeshHandle { tx, view, peer_id, site: identity.info().site.clone(), metrics }, join))
    }
}

/// Cloneable handle to the mesh task.
#[derive(Clone)]
pub struct MeshHandle {
    tx: mpsc::UnboundedSender<Command>,
    /// The view the mesh task publishes (see [`MeshHandle::watch_view`]).
    view: tokio::sync::watch::Receiver<std::sync::Arc<GossipView>>,
    peer_id: PeerId,
    site: Option<String>,
    metrics: MeshMetrics,
}

fn gone() -> anyhow::Error {
    anyhow!("the mesh task has stopped")
}

/// Converts a gossip peer reference back to a libp2p peer id.
pub fn peer_id_of(r: &PeerRef) -> Option<PeerId> {
    PeerId::from_bytes(&r.0).ok()
}

/// The gossip peer reference of a libp2p peer id.
pub fn peer_ref(p: &PeerId) -> PeerRef {
    PeerRef(p.to_bytes())
}

impl MeshHandle {
    fn send(&self, c: Command) {
        // A stopped task has nothing to update; queries report it.
        let _ = self.tx.send(c);
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's site (from its certificate).
    pub fn site(&self) -> Option<&str> {
        self.site.as_deref()
    }

    pub fn metrics(&self) -> &MeshMetrics {
        &self.metrics
    }

    /// Announces (or updates) which chunks of a layer this node holds; also call it while the
    /// layer is still arriving. Sent in the next batch and re-sent periodically.
    pub fn announce_layer(&self, layer: LayerDigest, chunk_count: u32, holding: Holding) {
        self.send(Command::Announce { layer, chunk_count, holding });
    }

    /// Marks one chunk of an announced layer as held (cheap; batched).
    pub fn set_chunk(&self, layer: LayerDigest, chunk_index: u32) {
        self.send(Command::SetChunk { layer, chunk_index });
    }

    /// Marks one chunk of an announced layer as no longer held (evicted, dropped as corrupt).
    pub fn clear_chunk(&self, layer: LayerDigest, chunk_index: u32) {
        self.send(Command::ClearChunk { layer, chunk_index });
    }

    /// Tells the mesh the verified chunk count of a layer whose manifest this node knows, so
    /// sibling claims about it can be checked and trusted.
    pub fn learn_layer(&self, layer: LayerDigest, chunk_count: u32) {
        self.send(Command::LearnLayer { layer, chunk_count });
    }

    /// Updates the load published in the next heartbeats.
    pub fn update_load(&self, load: Load) {
        self.send(Command::UpdateLoad(load));
    }

    /// The gossip view after every command sent so far (such as a `learn_layer`): the mesh
    /// task publishes it now and answers with it.
    pub async fn view(&self) -> Result<std::sync::Arc<GossipView>> {
        self.ask(Command::View).await
    }

    /// The view as the mesh task last published it (at most [`VIEW_PUBLISH`] behind a
    /// change), and a receiver that wakes on the next: reading costs an `Arc` clone.
    pub fn watch_view(&self) -> tokio::sync::watch::Receiver<std::sync::Arc<GossipView>> {
        self.view.clone()
    }

    /// Live peers holding chunk `chunk_index` of `layer`, least loaded first.
    pub async fn holders(&self, layer: LayerDigest, chunk_index: u32) -> Result<Vec<MeshPeer>> {
        let view = self.view().await?;
        Ok(view.holders(&layer, chunk_index).iter().filter_map(|r| mesh_peer(&view, r)).collect())
    }

    /// Live verified peers of `site`.
    pub async fn live_peers(&self, site: &str) -> Result<Vec<MeshPeer>> {
        let view = self.view().await?;
        Ok(view.live_peers(site).iter().filter_map(|r| mesh_peer(&view, r)).collect())
    }

    /// Addresses the swarm listens on (resolved ports).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>> {
        self.ask(Command::ListenAddrs).await
    }

    /// Peers with an open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Kademlia providers of a layer (reflectors of any site that announced it).
    pub async fn find_providers(&self, layer: LayerDigest) -> Result<Vec<PeerId>> {
        self.ask(|reply| Command::FindProviders { layer, reply }).await
    }

    /// Dials an address (like a bootstrap address added at run time).
    pub fn dial(&self, addr: Multiaddr) {
        self.send(Command::Dial(addr));
    }

    /// Binds this node's peer id with `identity` (a renewed certificate) and says hello with
    /// it from now on, so that siblings keep verifying this node once the old one expires.
    pub fn set_identity(&self, identity: &NodeIdentity) -> Result<()> {
        self.send(Command::SetHello(binding::sign_binding(identity, &self.peer_id)?));
        Ok(())
    }

    /// Publishes device records on this site's inventory topic (batched with the next
    /// availability batch; kept until a sibling is subscribed). Without a site, nothing is sent.
    pub fn announce_devices(&self, records: Vec<InventoryRecord>) {
        self.send(Command::AnnounceDevices(records));
    }

    /// Device records gossiped by verified reflectors of this site, from now on.
    pub fn subscribe_devices(&self) -> mpsc::Receiver<DeviceBatch> {
        let (tx, rx) = mpsc::channel(DEVICE_BATCH_BACKLOG);
        self.send(Command::SubscribeDevices(tx));
        rx
    }

    /// Stops the mesh task (its connections close; siblings expire it after 3 heartbeats).
    pub fn shutdown(&self) {
        self.send(Command::Shutdown);
    }
}

fn mesh_peer(view: &GossipView, r: &PeerRef) -> Option<MeshPeer> {
    let rec = view.peer(r)?;
    Some(MeshPeer {
        peer_id: peer_id_of(r)?,
        site: rec.site.clone(),
        serving_addr: rec.serving_addr.as_deref().and_then(|a| a.parse().ok()),
        load: rec.load,
    })
}
