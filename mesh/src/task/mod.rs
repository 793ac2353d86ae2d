//! The task that owns the swarm.

// Event handlers read better as one arm per event with the conditions inside.
#![allow(clippy::collapsible_match)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use futures::StreamExt;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore, GetProvidersOk, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, noise, tcp, yamux, PeerId, StreamProtocol, Swarm};
use oasis_core::gossip::{
    pack_availability, set_bit, Body, GossipMsg, GossipReject, GossipView, Heartbeat, Held, Hello,
    InventoryRecord, LayerAvailability, LayerDigest, Load, MAX_MESSAGE_BYTES,
};
use oasis_core::pki::{NodeIdentity, PeerInfo, RevocationList, Revocations, Role, TrustRoot};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

mod direct;
mod hello;
use hello::{HeldMessage, HelloCheck, Origin};
pub use hello::{
    HELLOS_PER_ADDRESS, HELLOS_PER_NEIGHBOUR, HELLO_RATE_WINDOW, HELLO_RECHECK, MAX_HELD_PER_CHECK,
    MAX_HELLO_CHECKS,
};

use crate::{binding, peer_ref, Command, DeviceBatch, Holding, MeshConfig, MeshMetrics};

/// How often a changed view is published at most: readers see a change within this, and a
/// busy mesh copies its view at most this often.
pub const VIEW_PUBLISH: Duration = Duration::from_millis(50);
/// Most peers whose hello verified that the mesh task keeps; hellos beyond are refused
/// (`too_many_peers`) until silent ones are pruned.
pub const MAX_VERIFIED_PEERS: usize = 4096;
/// Most peer ids one certificate (one node name) may bind at once: a node keeps its peer id
/// across restarts, so more means one key is being used to fill the mesh
/// (`too_many_bindings`).
pub const MAX_BINDINGS_PER_NODE: usize = 4;
/// Inbound connections still in their handshake at once; more are refused.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Inbound connections held at once, as many as there may be verified peers: a seed in the
/// mesh is dialled by every site's reflectors.
pub const MAX_ESTABLISHED_INCOMING: u32 = MAX_VERIFIED_PEERS as u32;
/// Connections with one peer id at once, both ways: two nodes that find each other by mDNS
/// dial each other at the same moment, so two are normal; more are refused.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// A gossip message's id: the first 20 bytes of BLAKE3 over the author's peer id (its
/// multihash bytes) followed by the message data. Content-based, so that nodes of any
/// implementation name a message alike in IHAVE and IWANT.
fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    let mut h = blake3::Hasher::new();
    if let Some(source) = &m.source {
        h.update(&source.to_bytes());
    }
    h.update(&m.data);
    gossipsub::MessageId::new(&h.finalize().as_bytes()[..20])
}

/// A peer whose hello verified, and when it was last heard from.
struct Verified {
    info: PeerInfo,
    /// The hello that verified: the same one again (a node signs its binding once) is taken
    /// without a second check until [`HELLO_RECHECK`] after `checked`.
    hello: Hello,
    checked: Instant,
    last: Duration,
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    hello: libp2p::request_response::Behaviour<direct::HelloCodec>,
}

struct LocalLayer {
    chunk_count: u32,
    complete: bool,
    bits: Vec<u8>,
    dirty: bool,
    evicted: bool,
}

pub(crate) struct MeshTask {
    /// Where the view is published: readers take an `Arc` of the latest one, nothing is
    /// copied for them per read.
    view_tx: watch::Sender<Arc<GossipView>>,
    /// The view changed since it was last published.
    view_dirty: bool,
    config: MeshConfig,
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    hello: Hello,
    trust: TrustRoot,
    my_site: Option<String>,
    metrics: MeshMetrics,
    rx: mpsc::UnboundedReceiver<Command>,
    started: Instant,
    seq: u64,
    view: GossipView,
    /// Peers whose hello verified; pruned once silent for two hello periods.
    verified: HashMap<PeerId, Verified>,
    /// Hello verifications in progress, off the task.
    hello_checks: tokio::task::JoinSet<HelloCheck>,
    /// Authors whose hello is being checked: the checks in flight and the messages of theirs
    /// that came meanwhile.
    held: HashMap<PeerId, (u32, Vec<HeldMessage>)>,
    /// Per neighbour: when its current rate window began and the verifications it started.
    hello_rate: HashMap<PeerId, (Instant, u32)>,
    /// The same per source address, over all the neighbours connected from it: a stranger
    /// cannot buy more checks by coming back under new peer ids.
    hello_rate_by_address: HashMap<std::net::IpAddr, (Instant, u32)>,
    /// Each neighbour's address (of its first connection), for the limit above.
    neighbour_address: HashMap<PeerId, std::net::IpAddr>,
    local: HashMap<LayerDigest, LocalLayer>,
    load: Load,
    hello_due: bool,
    heartbeats: u64,
    provider_queries: HashMap<kad::QueryId, (oneshot::Sender<Vec<PeerId>>, HashSet<PeerId>)>,
    /// This site's inventory topic (None without a site).
    inventory_topic: Option<IdentTopic>,
    pending_devices: BTreeMap<String, InventoryRecord>,
    device_subscribers: Vec<mpsc::Sender<DeviceBatch>>,
    revocations: Revocations,
    /// Woken when `revocations` holds a newer list.
    revocations_rx: watch::Receiver<Option<Arc<RevocationList>>>,
    /// The number of the last list this node published, or took from the mesh (which passes
    /// it on by itself); a newer held list is published.
    revocations_sent: u64,
    /// A new neighbour came: the held list is published again.
    revocations_due: bool,
    /// Neighbours whose hello has not verified yet, and since when (`direct`).
    unverified: HashMap<PeerId, Instant>,
    /// Neighbours' direct hellos waiting for their check before they are answered.
    hello_replies: HashMap<PeerId, libp2p::request_response::ResponseChannel<Vec<u8>>>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl MeshTask {
    pub(crate) fn new(
        config: MeshConfig,
        keypair: Keypair,
        hello: Hello,
        identity: &NodeIdentity,
        metrics: MeshMetrics,
        rx: mpsc::UnboundedReceiver<Command>,
        view_tx: watch::Sender<Arc<GossipView>>,
    ) -> Result<MeshTask> {
        let mdns_enabled = config.mdns;
        let revocations = config.revocations.clone();
        let agent = match identity.info().role {
            Role::Seed => "oasis-seed",
            _ => "oasis-reflector",
        };
        let gossip_heartbeat = (config.heartbeat / 5).max(Duration::from_millis(50));
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_quic()
            .with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer_id = key.public().to_peer_id();
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(gossip_heartbeat)
                    .validation_mode(ValidationMode::Strict)
                    .validate_messages()
                    .message_id_fn(message_id)
                    // Above our own 64 KiB limit so that oversized messages reach the
                    // application and are counted there.
                    .max_transmit_size(4 * MAX_MESSAGE_BYTES)
                    .build()
                    .map_err(|e| format!("gossipsub config: {e}"))?;
                let gossipsub = gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let identify = identify::Behaviour::new(
                    identify::Config::new(crate::IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!("{agent}/{}", env!("CARGO_PKG_VERSION"))),
                );
                let mut kad_config = kad::Config::new(StreamProtocol::new(crate::KAD_PROTOCOL));
                kad_config.set_query_timeout(Duration::from_secs(30));
                let mut kad =
                    kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);
                kad.set_mode(Some(kad::Mode::Server));
                let mdns = if mdns_enabled {
                    let cfg = mdns::Config {
                        query_interval: Duration::from_secs(10),
                        ..Default::default()
                    };
                    match mdns::tokio::Behaviour::new(cfg, peer_id) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            warn!("mDNS disabled: {e}");
                            None
                        }
                    }
                } else {
                    None
                };
                let limits = connection_limits::Behaviour::new(
                    ConnectionLimits::default()
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
                );
                Ok(Behaviour {
                    limits,
                    identify,
                    gossipsub,
                    kad,
                    mdns: Toggle::from(mdns),
                    hello: direct::behaviour(),
                })
            })
            .map_err(|e| anyhow!("building the mesh behaviour: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let topic = IdentTopic::new(crate::TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        let inventory_topic =
            identity.info().site.as_deref().map(|s| IdentTopic::new(crate::inventory_topic(s)));
        if let Some(t) = &inventory_topic {
            swarm.behaviour_mut().gossipsub.subscribe(t)?;
        }
        let mut scored = vec![topic.hash()];
        scored.extend(inventory_topic.iter().map(|t| t.hash()));
        let (params, thresholds) = crate::scoring::peer_score(&scored);
        swarm
            .behaviour_mut()
            .gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|e| anyhow!("gossipsub peer scoring: {e}"))?;
        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| anyhow!("listening on {addr}: {e}"))?;
        }
        let mut task = MeshTask {
            view_tx,
            view_dirty: false,
            view: GossipView::new(config.heartbeat),
            config,
            swarm,
            topic,
            hello,
            trust: identity.trust().clone(),
            my_site: identity.info().site.clone(),
            metrics,
            rx,
            started: Instant::now(),
            seq: unix_ms() << 10,
            verified: HashMap::new(),
            hello_checks: tokio::task::JoinSet::new(),
            held: HashMap::new(),
            hello_rate: HashMap::new(),
            hello_rate_by_address: HashMap::new(),
            neighbour_address: HashMap::new(),
            local: HashMap::new(),
            load: Load::default(),
            hello_due: true,
            heartbeats: 0,
            provider_queries: HashMap::new(),
            inventory_topic,
            pending_devices: BTreeMap::new(),
            device_subscribers: Vec::new(),
            revocations_rx: revocations.subscribe(),
            revocations,
            revocations_sent: 0,
            revocations_due: false,
            unverified: HashMap::new(),
            hello_replies: HashMap::new(),
        };
        task.dial_bootstrap(true);
        Ok(task)
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn dial_bootstrap(&mut self, all: bool) {
        let connected = self.swarm.connected_peers().count();
        for addr in self.config.bootstrap.clone() {
            let peer = match addr.iter().last() {
                Some(Protocol::P2p(p)) => Some(p),
                _ => None,
            };
            if let Some(p) = peer {
                if p == *self.swarm.local_peer_id() || self.swarm.is_connected(&p) {
                    continue;
                }
                let mut bare = addr.clone();
                bare.pop();
                self.swarm.behaviour_mut().kad.add_address(&p, bare);
            } else if !all && connected > 0 {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                debug!("dialing bootstrap {addr}: {e}");
            }
        }
    }

    pub(crate) async fn run(mut self) -> Result<()> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = tokio::time::interval(self.config.batch_interval);
        batch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut publish = tokio::time::interval(VIEW_PUBLISH);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = self.rx.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                Some(done) = self.hello_checks.join_next(), if !self.hello_checks.is_empty() => {
                    if let Ok(check) = done {
                        self.on_hello_checked(check);
                    }
                }
                _ = heartbeat.tick() => self.on_heartbeat(),
                _ = batch.tick() => self.on_batch(),
                _ = publish.tick(), if self.view_dirty => self.publish_view(),
                Ok(()) = self.revocations_rx.changed() => self.on_revocations(),
            }
        }
        info!("mesh stopped");
        Ok(())
    }

    /// A newer revocation list is held: the verified peers it revokes are dropped (their
    /// messages are no longer taken, their connections closed, their peer ids ignored by
    /// gossipsub), and the list is passed on.
    fn on_revocations(&mut self) {
        let Some(list) = self.revocations_rx.borrow_and_update().clone() else { return };
        let revoked: Vec<PeerId> = self
            .verified
            .iter()
            .filter(|(_, v)| list.revokes(&v.hello.cert_der))
            .map(|(p, _)| *p)
            .collect();
        for peer in revoked {
            if let Some(v) = self.verified.remove(&peer) {
                warn!(%peer, node = %v.info, "mesh peer's certificate is revoked: dropped");
            }
            self.view.forget(&peer_ref(&peer));
            self.view_dirty = true;
            self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
            self.metrics.count_drop("revoked");
        }
        self.send_revocations(false);
    }

    /// Publishes the held list when it is newer than the one last sent (or, `again`, for a new
    /// neighbour) and fits a message.
    fn send_revocations(&mut self, again: bool) {
        let Some(list) = self.revocations.current() else { return };
        let sent = list.number() <= self.revocations_sent && !again;
        if sent || list.der().len() + 64 > MAX_MESSAGE_BYTES {
            return;
        }
        if self.publish(Body::Revocations(list.der().to_vec()), "revocations") {
            self.revocations_sent = list.number();
        }
    }

    /// Publishes the view as it is now to every [`watch`] reader.
    fn publish_view(&mut self) {
        self.view_tx.send_replace(Arc::new(self.view.clone()));
        self.view_dirty = false;
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = (self.seq + 1).max(unix_ms() << 10);
        self.seq
    }

    fn publish(&mut self, body: Body, kind: &'static str) -> bool {
        let topic = self.topic.clone();
        self.publish_on(topic, body, kind)
    }

    fn publish_on(&mut self, topic: IdentTopic, body: Body, kind: &'static str) -> bool {
        let msg = GossipMsg { seq: self.next_seq(), body };
        let bytes = msg.encode();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => {
                self.metrics.count(kind, "out");
                true
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => false,
            Err(e) => {
                debug!("publishing {kind}: {e}");
                false
            }
        }
    }

    fn on_heartbeat(&mut self) {
        self.heartbeats += 1;
        self.disconnect_strangers();
        let hb = Heartbeat {
            site: self.my_site.clone(),
            serving_addr: self.config.serving_addr.map(|a| a.to_string()),
            load: self.load,
            heartbeat_ms: self.config.heartbeat.as_millis().min(u32::MAX as u128) as u32,
        };
        self.publish(Body::Heartbeat(hb), "heartbeat");
        let every = u64::from(self.config.reannounce_heartbeats.max(1));
        if self.heartbeats.is_multiple_of(every) {
            for l in self.local.values_mut() {
                l.dirty = true;
            }
        }
        if self.heartbeats.is_multiple_of(3 * every) {
            self.hello_due = true;
        }
        if self.heartbeats.is_multiple_of(10) {
            self.dial_bootstrap(false);
        }
        if self.heartbeats.is_multiple_of(60) && self.swarm.connected_peers().next().is_some() {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    fn on_batch(&mut self) {
        // Expiry is checked every batch tick so a silent peer goes within 3 heartbeats plus
        // one batch interval.
        for p in self.view.expire(self.now()) {
            debug!("mesh peer {:?} expired", p);
            self.view_dirty = true;
        }
        // A live peer says hello every hello period; one silent for two is gone.
        let (now, keep) = (self.now(), self.hello_period() * 2);
        self.verified.retain(|_, v| now.saturating_sub(v.last) <= keep);
        self.hello_rate.retain(|_, (since, _)| since.elapsed() < HELLO_RATE_WINDOW);
        self.hello_rate_by_address.retain(|_, (since, _)| since.elapsed() < HELLO_RATE_WINDOW);
        self.metrics.peers.set(self.view.len() as i64);
        if self.hello_due && self.publish(Body::Hello(self.hello.clone()), "hello") {
            self.hello_due = false;
        }
        if std::mem::take(&mut self.revocations_due) {
            // A new neighbour learns the list from whoever holds it; not newer, it goes no
            // further.
            self.send_revocations(true);
        }
        // A list that found no peer to go to when it came.
        self.send_revocations(false);
        self.flush_devices();
        let mut records = Vec::new();
        let mut evicted = Vec::new();
        for (digest, l) in self.local.iter_mut().filter(|(_, l)| l.dirty) {
            if l.evicted {
                records.push(LayerAvailability {
                    layer: *digest,
                    chunk_count: l.chunk_count,
                    held: Held::Nothing,
                });
                evicted.push(*digest);
            } else if l.complete {
                records.push(LayerAvailability {
                    layer: *digest,
                    chunk_count: l.chunk_count,
                    held: Held::Complete,
                });
            } else {
                records.extend(LayerAvailability::from_bitmap(*digest, l.chunk_count, &l.bits));
            }
        }
        if records.is_empty() {
            return;
        }
        let mut all_sent = true;
        for body in pack_availability(records) {
            all_sent &= self.publish(Body::Availability(body), "availability");
        }
        if all_sent {
            for l in self.local.values_mut() {
                l.dirty = false;
            }
            for d in evicted {
                self.local.remove(&d);
            }
        }
    }

    /// Publishes the pending device records on the site's inventory topic; what could not be
    /// sent (no subscribed sibling yet) stays pending for the next batch.
    fn flush_devices(&mut self) {
        let Some(topic) = self.inventory_topic.clone() else {
            self.pending_devices.clear();
            return;
        };
        if self.pending_devices.is_empty() {
            return;
        }
        let records: Vec<InventoryRecord> = self.pending_devices.values().cloned().collect();
        let mut all_sent = true;
        for body in oasis_core::gossip::inventory::pack_inventory(records) {
            all_sent &= self.publish_on(topic.clone(), Body::Inventory(body), "inventory");
        }
        if all_sent {
            self.pending_devices.clear();
        }
    }

    /// Hands checked device records to the application.
    fn deliver_devices(&mut self, from: PeerId, sender: String, records: Vec<InventoryRecord>) {
        let batch = DeviceBatch { from, sender, records };
        self.device_subscribers.retain(|tx| !tx.is_closed());
        for tx in &self.device_subscribers {
            if tx.try_send(batch.clone()).is_err() {
                self.metrics.count_drop("backlog");
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::AnnounceDevices(records) => {
                for r in records {
                    let room = self.pending_devices.len() < crate::MAX_PENDING_DEVICES;
                    if room || self.pending_devices.contains_key(&r.name) {
                        self.pending_devices.insert(r.name.clone(), r);
                    } else {
                        debug!(device = %r.name, "inventory announcement queue full");
                    }
                }
            }
            Command::SubscribeDevices(tx) => self.device_subscribers.push(tx),
            Command::Announce { layer, chunk_count, holding } => {
                let l = self.local.entry(layer).or_insert(LocalLayer {
                    chunk_count,
                    complete: false,
                    bits: Vec::new(),
                    dirty: true,
                    evicted: false,
                });
                l.chunk_count = chunk_count;
                l.dirty = true;
                l.evicted = false;
                match holding {
                    Holding::Complete => {
                        l.complete = true;
                        l.bits.clear();
                    }
                    Holding::Partial(mut bits) => {
                        bits.resize(chunk_count.div_ceil(8) as usize, 0);
                        // Clear padding bits so the record validates.
                        for i in chunk_count..(bits.len() as u32 * 8) {
                            bits[(i / 8) as usize] &= !(1 << (i % 8));
                        }
                        l.complete = false;
                        l.bits = bits;
                    }
                    Holding::Evicted => {
                        l.evicted = true;
                    }
                }
                if !l.evicted {
                    let key = RecordKey::new(&layer);
                    if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                        debug!("kad start_providing: {e}");
                    }
                } else {
                    self.swarm.behaviour_mut().kad.stop_providing(&RecordKey::new(&layer));
                }
            }
            Command::SetChunk { layer, chunk_index } => {
                if let Some(l) = self.local.get_mut(&layer) {
                    if !l.complete && chunk_index < l.chunk_count {
                        set_bit(&mut l.bits, chunk_index);
                        l.dirty = true;
                    }
                }
            }
            Command::ClearChunk { layer, chunk_index } => {
                if let Some(l) = self.local.get_mut(&layer) {
                    if chunk_index < l.chunk_count && !l.evicted {
                        if l.complete {
                            // Expand "complete" to an explicit bitmap, then clear the bit.
                            l.bits = vec![0xff; l.chunk_count.div_ceil(8) as usize];
                            for i in l.chunk_count..(l.bits.len() as u32 * 8) {
                                l.bits[(i / 8) as usize] &= !(1 << (i % 8));
                            }
                            l.complete = false;
                        }
                        if let Some(b) = l.bits.get_mut((chunk_index / 8) as usize) {
                            *b &= !(1 << (chunk_index % 8));
                        }
                        l.dirty = true;
                    }
                }
            }
            Command::LearnLayer { layer, chunk_count } => {
                let dropped = self.view.learn_layer(layer, chunk_count);
                self.view_dirty = true;
                for _ in 0..dropped {
                    self.metrics.count_drop("impossible_chunks");
                }
            }
            Command::UpdateLoad(load) => self.load = load,
            Command::View(reply) => {
                self.publish_view();
                let _ = reply.send(self.view_tx.borrow().clone());
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::FindProviders { layer, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(RecordKey::new(&layer));
                self.provider_queries.insert(id, (reply, HashSet::new()));
            }
            Command::SetHello(hello) => {
                self.hello = hello;
                self.hello_due = true;
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    debug!("dialing {addr}: {e}");
                }
            }
            Command::Shutdown => {}
        }
    }

    fn want_more_connections(&self) -> bool {
        self.swarm.connected_peers().count() < self.config.target_connections
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => info!("mesh listening on {address}"),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.on_gossip(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let kad_proto = StreamProtocol::new(crate::KAD_PROTOCOL);
                if info.protocols.contains(&kad_proto) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(addr.with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Hello(ev)) => self.on_direct_hello(ev),
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                self.on_neighbour_gone(&peer_id);
            }
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                if num_established.get() == 1 {
                    debug!("connected to {peer_id}");
                    if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                        self.neighbour_address.insert(peer_id, ip);
                    }
                    self.on_new_neighbour(peer_id);
                    if self.verified.is_empty() {
                        // First contact: a bootstrap query fills the routing table.
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::RoutingUpdated { peer, addresses, .. } => {
                if !self.swarm.is_connected(&peer) && self.want_more_connections() {
                    if let Some(addr) = addresses.iter().next() {
                        let _ = self.swarm.dial(addr.clone().with_p2p(peer).unwrap_or_else(|a| a));
                    }
                }
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => {
                if let QueryResult::GetProviders(res) = result {
                    let finished =
                        step.last || !matches!(res, Ok(GetProvidersOk::FoundProviders { .. }));
                    if let Some((_, found)) = self.provider_queries.get_mut(&id) {
                        if let Ok(GetProvidersOk::FoundProviders { providers, .. }) = res {
                            found.extend(providers);
                        }
                    }
                    if finished {
                        if let Some((reply, found)) = self.provider_queries.remove(&id) {
                            let mut v: Vec<PeerId> = found.into_iter().collect();
                            v.sort();
                            let _ = reply.send(v);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message { propagation_source, message_id, message } => {
                let Some(acceptance) =
                    self.on_message(message.source, &message.data, &message_id, propagation_source)
                else {
                    // Reported once its hello is checked.
                    return;
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            gossipsub::Event::Subscribed { peer_id, .. } => {
                if !self.verified.contains_key(&peer_id) {
                    // A new neighbour: tell it who we are (and our state) soon.
                    self.hello_due = true;
                    self.revocations_due = true;
                }
            }
            _ => {}
        }
    }

    /// What to report for a gossip message, or None when its hello is being checked off the
    /// task ([`Self::on_hello_checked`] reports it).
    fn on_message(
        &mut self,
        author: Option<PeerId>,
        data: &[u8],
        message_id: &gossipsub::MessageId,
        source: PeerId,
    ) -> Option<MessageAcceptance> {
        let Some(author) = author else {
            self.metrics.count_drop("unverified");
            return Some(MessageAcceptance::Reject);
        };
        let msg = match GossipMsg::decode(data) {
            Ok(m) => m,
            Err(e) => return Some(self.reject(&author, e)),
        };
        if let Body::Hello(hello) = &msg.body {
            let hello = hello.clone();
            return self.on_hello(author, hello, msg, Origin::Gossip(message_id.clone()), source);
        }
        if !self.verified.contains_key(&author) {
            if let Some((_, held)) = self.held.get_mut(&author) {
                if held.len() < MAX_HELD_PER_CHECK {
                    held.push((message_id.clone(), source, msg));
                    return None;
                }
            }
        }
        Some(self.on_state_message(author, msg))
    }

    /// A heartbeat, availability or inventory message from a verified author.
    fn on_state_message(&mut self, author: PeerId, msg: GossipMsg) -> MessageAcceptance {
        let kind = match &msg.body {
            Body::Hello(_) => "hello",
            Body::Heartbeat(_) => "heartbeat",
            Body::Availability(_) => "availability",
            Body::Inventory(_) => "inventory",
            Body::Revocations(_) => "revocations",
        };
        let now = self.now();
        let Some(v) = self.verified.get_mut(&author) else {
            self.metrics.count_drop("unverified");
            // Not forwarded, not penalised: its hello may simply not have reached us yet.
            return MessageAcceptance::Ignore;
        };
        v.last = now;
        let info = &v.info;
        let mut msg = msg;
        if let Body::Revocations(der) = &msg.body {
            return match RevocationList::from_der(der, &self.trust) {
                Ok(list) => {
                    let number = list.number();
                    if !self.revocations.offer(list) {
                        // Not newer: nothing to pass on.
                        return MessageAcceptance::Ignore;
                    }
                    info!(number, from = %info, "revocation list adopted from the mesh");
                    self.revocations_sent = self.revocations_sent.max(number);
                    self.metrics.count(kind, "in");
                    MessageAcceptance::Accept
                }
                Err(e) => self.reject(&author, GossipReject::BadField(e.to_string())),
            };
        }
        if let Body::Inventory(records) = &msg.body {
            let now = unix_ms() / 1000;
            let site = self.my_site.as_deref();
            if let Err(e) = oasis_core::gossip::inventory::admit_inventory(records, info, site, now)
            {
                return self.reject(&author, e);
            }
            let (sender, records) = (info.name.clone(), records.clone());
            let _ = self.view.apply(&msg, &peer_ref(&author), self.now());
            self.view_dirty = true;
            self.metrics.count(kind, "in");
            self.deliver_devices(author, sender, records);
            return MessageAcceptance::Accept;
        }
        if let Body::Heartbeat(hb) = &mut msg.body {
            // The certificate is authoritative for the site. The seed belongs to no site's
            // mesh: it serves every site over the WAN, so it is never a sibling, never a site's
            // WAN fetcher and never counted in a site's WAN shares.
            hb.site = match info.role {
                Role::Seed => None,
                _ => info.site.clone(),
            };
        }
        self.view_dirty = true;
        match self.view.apply(&msg, &peer_ref(&author), self.now()) {
            Ok(()) => {
                self.metrics.count(kind, "in");
                self.metrics.peers.set(self.view.len() as i64);
                MessageAcceptance::Accept
            }
            Err(e) => self.reject(&author, e),
        }
    }

    /// How often this node says hello (and, the mesh being configured alike, its peers do).
    fn hello_period(&self) -> Duration {
        self.config.heartbeat * (3 * self.config.reannounce_heartbeats.max(1))
    }

    fn reject(&mut self, author: &PeerId, e: GossipReject) -> MessageAcceptance {
        debug!("gossip from {author} dropped: {e}");
        self.metrics.count_drop(e.reason());
        MessageAcceptance::Reject
    }
}

/// The IP address a multiaddr starts with, if any.
fn ip_of(addr: &libp2p::Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}
