//! Reflector mesh gossip: message encoding and the view a reflector keeps of its siblings.
//!
//! Pure: no I/O, no clock. Every function that needs the time takes `now` as a [`Duration`] since
//! an epoch of the caller's choosing (the mesh uses the moment it started, the simulator its
//! virtual clock), so the simulator drives exactly the code the reflectors run.
//!
//! The libp2p side (transports, gossipsub, the certificate binding of peer ids) lives in the
//! `oasis-mesh` crate; it hands every decoded message from a verified peer to
//! [`GossipView::apply`]. docs/protocol.md (section 12) describes topics, encoding and every field.
//!
//! Availability is per layer, not per chunk: a record names the layer digest, the number of
//! unique chunks the sender believes the layer has (`LayerManifest::unique_chunks().len()`), and
//! either `Complete`, `Nothing`, or a bitmap segment over the unique chunk list (bit `i` = chunk
//! `i` of `unique_chunks()`, least significant bit first in each byte).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod inventory;

pub use inventory::{InventoryRecord, MAX_DEVICES_PER_MESSAGE};

/// First byte of every encoded message. Bump on any change to the types below.
pub const GOSSIP_FORMAT: u8 = 1;
/// Hard bound on an encoded message; larger messages are rejected before decoding.
pub const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Largest bitmap segment a sender puts into one record (leaves room for framing).
pub const MAX_SEGMENT_BYTES: usize = 48 << 10;
/// Most layer records in one availability message.
pub const MAX_LAYERS_PER_MESSAGE: usize = 1024;
/// Largest chunk count a layer may claim (a 256 MiB manifest holds about two million chunks).
pub const MAX_CHUNKS_PER_LAYER: u32 = 1 << 22;
/// Most layers tracked per peer; records for further layers are rejected.
pub const MAX_LAYERS_PER_PEER: usize = 4096;
/// Longest site name (same bound as node names).
pub const MAX_SITE_LEN: usize = crate::names::MAX_NAME_LEN;
/// Longest serving address string (`ip:port`).
pub const MAX_ADDR_LEN: usize = 64;
/// Longest certificate / signature in a hello.
pub const MAX_CERT_BYTES: usize = 8 << 10;
pub const MAX_SIGNATURE_BYTES: usize = 512;
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// A peer silent for this many heartbeat intervals is forgotten.
pub const EXPIRY_HEARTBEATS: u32 = 3;

/// BLAKE3 digest of a layer manifest body (`LayerManifest::digest`).
pub type LayerDigest = [u8; 32];

/// Opaque peer reference: the bytes of the libp2p `PeerId` in the mesh, any unique bytes in the
/// simulator. Ordered and hashable so results are deterministic.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerRef(pub Vec<u8>);

impl fmt::Debug for PeerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode(&self.0);
        let tail = &hex[hex.len().saturating_sub(12)..];
        write!(f, "PeerRef(..{tail})")
    }
}

impl From<&[u8]> for PeerRef {
    fn from(b: &[u8]) -> PeerRef {
        PeerRef(b.to_vec())
    }
}

/// A node's load, as gossiped in heartbeats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Chunk transfers currently being served to endpoints or siblings.
    pub active_transfers: u32,
    /// Bytes per second served over the last few seconds.
    pub serving_rate: u64,
    /// Free bytes in the chunk cache.
    pub free_cache: u64,
    /// Bytes per second this node would like to pull over the site's WAN link (its demand).
    pub wan_demand: u64,
}

impl Load {
    /// Sort key: fewest active transfers first, then lowest serving rate.
    fn key(&self) -> (u32, u64) {
        (self.active_transfers, self.serving_rate)
    }
}

/// Liveness and load, published every heartbeat interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Site of the sender. The mesh overwrites it with the site from the sender's certificate.
    pub site: Option<String>,
    /// `ip:port` where the sender serves the Oasis QUIC protocol, if it does.
    pub serving_addr: Option<String>,
    pub load: Load,
    /// The sender's heartbeat interval in milliseconds (informational).
    pub heartbeat_ms: u32,
}

/// Binding of the libp2p peer id to the sender's enrolled certificate. Verified by the mesh,
/// not by [`GossipView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// DER of the sender's node certificate (issued by the seed's CA).
    pub cert_der: Vec<u8>,
    /// TLS `SignatureScheme` code of `signature` (0x0403 = ECDSA P-256 SHA-256).
    pub scheme: u16,
    /// Signature by the certificate's key over [`binding_message`] of the sender's peer id.
    pub signature: Vec<u8>,
}

/// Domain separation of the peer id binding signature.
pub const BINDING_CONTEXT: &[u8] = b"oasis mesh peer binding v1\0";

/// The message a node signs with its certificate key to bind `peer_id` (libp2p `PeerId` bytes).
pub fn binding_message(peer_id: &[u8]) -> Vec<u8> {
    let mut m = BINDING_CONTEXT.to_vec();
    m.extend_from_slice(peer_id);
    m
}

/// Which chunks of a layer the sender holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Held {
    /// Every chunk.
    Complete,
    /// None (the layer was evicted or abandoned).
    Nothing,
    /// Bits for chunks `first .. first + 8 * bits.len()` (`first` a multiple of 8); bit `i` of
    /// byte `j` is chunk `first + 8j + i`. Chunks outside the segment keep their last state.
    Bits { first: u32, bits: Vec<u8> },
}

/// Availability of one layer at the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerAvailability {
    pub layer: LayerDigest,
    /// Number of unique chunks of the layer (`unique_chunks().len()`).
    pub chunk_count: u32,
    pub held: Held,
}

impl LayerAvailability {
    /// Records for a full bitmap (`bitmap.len() == ceil(chunk_count / 8)`), split into segments
    /// of at most [`MAX_SEGMENT_BYTES`]. A bitmap with every bit set becomes `Complete`.
    pub fn from_bitmap(
        layer: LayerDigest,
        chunk_count: u32,
        bitmap: &[u8],
    ) -> Vec<LayerAvailability> {
        if chunk_count > 0 && (0..chunk_count).all(|i| bit(bitmap, i)) {
            return vec![LayerAvailability { layer, chunk_count, held: Held::Complete }];
        }
        if bitmap.iter().all(|b| *b == 0) {
            return vec![LayerAvailability { layer, chunk_count, held: Held::Nothing }];
        }
        bitmap
            .chunks(MAX_SEGMENT_BYTES)
            .enumerate()
            .map(|(i, seg)| LayerAvailability {
                layer,
                chunk_count,
                held: Held::Bits { first: (i * MAX_SEGMENT_BYTES * 8) as u32, bits: seg.to_vec() },
            })
            .collect()
    }

    /// Upper bound of the encoded size of this record.
    pub fn encoded_size_bound(&self) -> usize {
        let bits = match &self.held {
            Held::Bits { bits, .. } => bits.len() + 10,
            _ => 0,
        };
        32 + 5 + 1 + bits
    }
}

/// What a message carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    Hello(Hello),
    Heartbeat(Heartbeat),
    Availability(Vec<LayerAvailability>),
    /// Device inventory records of the sender's site (Wake-on-LAN), published on the site's
    /// inventory topic. Appended last: the variant index is the wire format.
    Inventory(Vec<InventoryRecord>),
    /// The CA-signed revocation list the sender holds (DER X.509 CRL), sent when it adopts a
    /// newer one. The receiver checks the CA's signature; a list that does not fit a message
    /// travels only by `GetRevocations`.
    Revocations(Vec<u8>),
}

/// One gossip message. `seq` increases with every message a sender publishes (it starts from
/// the sender's wall clock in milliseconds, so it keeps increasing across restarts); receivers
/// ignore records older than what they already applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMsg {
    pub seq: u64,
    pub body: Body,
}

/// Why a message was refused. Each variant is counted by the mesh under [`GossipReject::reason`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GossipReject {
    #[error("message of {len} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    Oversized { len: usize },
    #[error("empty message")]
    Empty,
    #[error("gossip format {0} is not supported (this build speaks {GOSSIP_FORMAT})")]
    Format(u8),
    #[error("message does not decode: {0}")]
    Malformed(String),
    #[error("{0}")]
    BadField(String),
    #[error(
        "layer {layer}: sender claims {claimed} chunks but the manifest has {known}: it cannot hold them"
    )]
    ChunkCount { layer: String, claimed: u32, known: u32 },
    #[error("layer {layer}: bitmap segment covers chunks beyond the layer's {chunk_count}")]
    BitsOutOfRange { layer: String, chunk_count: u32 },
    #[error("sender announces more than {MAX_LAYERS_PER_PEER} layers")]
    TooManyLayers,
    #[error("{0}")]
    WrongSite(String),
    #[error("{0}")]
    WrongSender(String),
}

impl GossipReject {
    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GossipReject::Oversized { .. } => "oversized",
            GossipReject::Empty | GossipReject::Format(_) | GossipReject::Malformed(_) => {
                "undecodable"
            }
            GossipReject::BadField(_) => "invalid",
            GossipReject::ChunkCount { .. } | GossipReject::BitsOutOfRange { .. } => {
                "impossible_chunks"
            }
            GossipReject::TooManyLayers => "too_many_layers",
            GossipReject::WrongSite(_) => "wrong_site",
            GossipReject::WrongSender(_) => "wrong_sender",
        }
    }
}

impl GossipMsg {
    /// `GOSSIP_FORMAT` followed by the postcard encoding. Callers keep messages below
    /// [`MAX_MESSAGE_BYTES`] (see [`pack_availability`]); [`GossipMsg::decode`] refuses larger.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![GOSSIP_FORMAT];
        out.extend(postcard::to_stdvec(self).expect("gossip types always serialize"));
        out
    }

    /// Decodes and checks field bounds. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<GossipMsg, GossipReject> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(GossipReject::Oversized { len: bytes.len() });
        }
        let (&format, rest) = bytes.split_first().ok_or(GossipReject::Empty)?;
        if format != GOSSIP_FORMAT {
            return Err(GossipReject::Format(format));
        }
        let (msg, trailing): (GossipMsg, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| GossipReject::Malformed(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(GossipReject::Malformed(format!("{} trailing bytes", trailing.len())));
        }
        msg.check()?;
        Ok(msg)
    }

    /// Checks what can be checked without knowing any manifest.
    pub fn check(&self) -> Result<(), GossipReject> {
        let bad = |s: String| Err(GossipReject::BadField(s));
        match &self.body {
            Body::Hello(h) => {
                if h.cert_der.is_empty() || h.cert_der.len() > MAX_CERT_BYTES {
                    return bad(format!("hello certificate of {} bytes", h.cert_der.len()));
                }
                if h.signature.is_empty() || h.signature.len() > MAX_SIGNATURE_BYTES {
                    return bad(format!("hello signature of {} bytes", h.signature.len()));
                }
            }
            Body::Revocations(crl) => {
                if crl.is_empty() {
                    return bad("empty revocation list".to_string());
                }
            }
            Body::Heartbeat(hb) => {
                if let Some(site) = &hb.site {
                    if crate::names::validate_node_name("site", site).is_err() {
                        return bad(format!("heartbeat site {site:?} is not a valid site name"));
                    }
                }
                if let Some(addr) = &hb.serving_addr {
                    if addr.len() > MAX_ADDR_LEN || addr.parse::<std::net::SocketAddr>().is_err() {
                        return bad(format!("heartbeat serving address {addr:?} is not ip:port"));
                    }
                }
            }
            Body::Availability(records) => {
                if records.is_empty() || records.len() > MAX_LAYERS_PER_MESSAGE {
                    return bad(format!("availability with {} layer records", records.len()));
                }
                for r in records {
                    check_record(r)?;
                }
            }
            Body::Inventory(records) => {
                if records.is_empty() || records.len() > MAX_DEVICES_PER_MESSAGE {
                    return bad(format!("inventory with {} device records", records.len()));
                }
                for r in records {
                    r.check().map_err(GossipReject::BadField)?;
                }
            }
        }
        Ok(())
    }
}

fn check_record(r: &LayerAvailability) -> Result<(), GossipReject> {
    let layer = hex::encode(&r.layer[..8]);
    if r.chunk_count > MAX_CHUNKS_PER_LAYER {
        return Err(GossipReject::BadField(format!(
            "layer {layer}: {} chunks exceeds the {MAX_CHUNKS_PER_LAYER} limit",
            r.chunk_count
        )));
    }
    if let Held::Bits { first, bits } = &r.held {
        let out =
            || GossipReject::BitsOutOfRange { layer: layer.clone(), chunk_count: r.chunk_count };
        if first % 8 != 0 || bits.is_empty() {
            return Err(GossipReject::BadField(format!(
                "layer {layer}: segment start {first} not a multiple of 8, or empty segment"
            )));
        }
        let end = u64::from(*first) + 8 * bits.len() as u64;
        let padded = u64::from(r.chunk_count).div_ceil(8) * 8;
        if end > padded {
            return Err(out());
        }
        // Padding bits past the last chunk must be clear.
        for i in r.chunk_count.max(*first)..end as u32 {
            if bit(bits, i - first) {
                return Err(out());
            }
        }
    }
    Ok(())
}

/// Bit `i` of an LSB-first bitmap (false past the end).
pub fn bit(bitmap: &[u8], i: u32) -> bool {
    bitmap.get((i / 8) as usize).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Sets bit `i` of an LSB-first bitmap, growing it if needed.
pub fn set_bit(bitmap: &mut Vec<u8>, i: u32) {
    let byte = (i / 8) as usize;
    if bitmap.len() <= byte {
        bitmap.resize(byte + 1, 0);
    }
    bitmap[byte] |= 1 << (i % 8);
}

/// Splits layer records into availability bodies whose encoding stays below
/// [`MAX_MESSAGE_BYTES`] and [`MAX_LAYERS_PER_MESSAGE`].
pub fn pack_availability(records: Vec<LayerAvailability>) -> Vec<Vec<LayerAvailability>> {
    pack_bounded(records, LayerAvailability::encoded_size_bound, MAX_LAYERS_PER_MESSAGE)
}

/// Splits records into bodies of at most `max_count` records whose encoded sizes (`size`, an
/// upper bound) add up to less than [`MAX_MESSAGE_BYTES`] with 64 bytes left for the framing
/// (format byte, seq, body tag, list length).
pub fn pack_bounded<T>(
    records: Vec<T>,
    size: impl Fn(&T) -> usize,
    max_count: usize,
) -> Vec<Vec<T>> {
    let budget = MAX_MESSAGE_BYTES - 64;
    let mut out = Vec::new();
    let mut cur: Vec<T> = Vec::new();
    let mut total = 0;
    for r in records {
        let s = size(&r);
        if !cur.is_empty() && (total + s > budget || cur.len() == max_count) {
            out.push(std::mem::take(&mut cur));
            total = 0;
        }
        total += s;
        cur.push(r);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What the view knows about one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    pub site: Option<String>,
    pub serving_addr: Option<String>,
    pub load: Load,
    /// `now` of the last message applied from this peer.
    pub last_seen: Duration,
    heartbeat_seq: u64,
}

#[derive(Clone, Debug)]
struct Avail {
    chunk_count: u32,
    complete: bool,
    bits: Vec<u8>,
    seq: u64,
}

/// The availability and load of the mesh as seen by one node.
#[derive(Clone, Debug)]
pub struct GossipView {
    expiry: Duration,
    peers: HashMap<PeerRef, PeerRecord>,
    /// Chunk counts of layers whose manifest the local node knows.
    known: HashMap<LayerDigest, u32>,
    avail: HashMap<LayerDigest, HashMap<PeerRef, Avail>>,
    layers_per_peer: HashMap<PeerRef, usize>,
}

impl GossipView {
    /// A view whose entries expire after [`EXPIRY_HEARTBEATS`] `heartbeat` intervals of silence.
    pub fn new(heartbeat: Duration) -> GossipView {
        GossipView {
            expiry: heartbeat * EXPIRY_HEARTBEATS,
            peers: HashMap::new(),
            known: HashMap::new(),
            avail: HashMap::new(),
            layers_per_peer: HashMap::new(),
        }
    }

    /// How long a silent peer is kept.
    pub fn expiry(&self) -> Duration {
        self.expiry
    }

    /// Tells the view a layer's true chunk count (from its verified manifest). Records of that
    /// layer claiming another count are dropped; the others become trusted. Returns how many
    /// records were dropped.
    pub fn learn_layer(&mut self, layer: LayerDigest, chunk_count: u32) -> usize {
        self.known.insert(layer, chunk_count);
        let mut dropped = Vec::new();
        if let Some(per_peer) = self.avail.get_mut(&layer) {
            per_peer.retain(|peer, a| {
                let keep = a.chunk_count == chunk_count;
                if !keep {
                    dropped.push(peer.clone());
                }
                keep
            });
        }
        for p in &dropped {
            self.dec_layers(p);
        }
        dropped.len()
    }

    /// The verified chunk count of `layer`, if its manifest is known locally.
    pub fn known_chunk_count(&self, layer: &LayerDigest) -> Option<u32> {
        self.known.get(layer).copied()
    }

    /// Applies a decoded message from `from` (whose identity the caller has verified).
    /// Hello messages are accepted without effect beyond liveness: the caller verifies them.
    pub fn apply(
        &mut self,
        msg: &GossipMsg,
        from: &PeerRef,
        now: Duration,
    ) -> Result<(), GossipReject> {
        msg.check()?;
        match &msg.body {
            Body::Hello(_) | Body::Inventory(_) | Body::Revocations(_) => {
                self.touch(from, now);
            }
            Body::Heartbeat(hb) => {
                let rec = self.touch(from, now);
                if msg.seq >= rec.heartbeat_seq {
                    rec.heartbeat_seq = msg.seq;
                    rec.site = hb.site.clone();
                    rec.serving_addr = hb.serving_addr.clone();
                    rec.load = hb.load;
                }
            }
            Body::Availability(records) => {
                // Validate everything first: a message is applied whole or not at all.
                let mut new_layers = 0;
                for r in records {
                    if let Some(&known) = self.known.get(&r.layer) {
                        if known != r.chunk_count {
                            return Err(GossipReject::ChunkCount {
                                layer: hex::encode(&r.layer[..8]),
                                claimed: r.chunk_count,
                                known,
                            });
                        }
                    }
                    if !self.avail.get(&r.layer).is_some_and(|m| m.contains_key(from)) {
                        new_layers += 1;
                    }
                }
                let have = self.layers_per_peer.get(from).copied().unwrap_or(0);
                if have + new_layers > MAX_LAYERS_PER_PEER {
                    return Err(GossipReject::TooManyLayers);
                }
                self.touch(from, now);
                for r in records {
                    self.apply_record(r, from, msg.seq);
                }
            }
        }
        Ok(())
    }

    fn touch(&mut self, from: &PeerRef, now: Duration) -> &mut PeerRecord {
        let rec = self.peers.entry(from.clone()).or_insert_with(|| PeerRecord {
            site: None,
            serving_addr: None,
            load: Load::default(),
            last_seen: now,
            heartbeat_seq: 0,
        });
        rec.last_seen = rec.last_seen.max(now);
        rec
    }

    fn apply_record(&mut self, r: &LayerAvailability, from: &PeerRef, seq: u64) {
        let per_peer = self.avail.entry(r.layer).or_default();
        let fresh = Avail { chunk_count: r.chunk_count, complete: false, bits: Vec::new(), seq };
        let is_new = !per_peer.contains_key(from);
        let a = per_peer.entry(from.clone()).or_insert_with(|| fresh.clone());
        if seq < a.seq {
            return; // stale (reordered) record
        }
        if a.chunk_count != r.chunk_count {
            *a = fresh;
        }
        a.seq = seq;
        match &r.held {
            Held::Complete => {
                a.complete = true;
                a.bits = Vec::new();
            }
            Held::Nothing => {
                a.complete = false;
                a.bits = Vec::new();
            }
            Held::Bits { first, bits } => {
                if a.complete {
                    // Expand to an explicit bitmap before overwriting a segment.
                    a.bits = vec![0xff; r.chunk_count.div_ceil(8) as usize];
                    a.complete = false;
                }
                let start = (*first / 8) as usize;
                let end = start + bits.len();
                if a.bits.len() < end {
                    a.bits.resize(end, 0);
                }
                a.bits[start..end].copy_from_slice(bits);
            }
        }
        if is_new {
            *self.layers_per_peer.entry(from.clone()).or_default() += 1;
        }
    }

    fn dec_layers(&mut self, p: &PeerRef) {
        if let Some(n) = self.layers_per_peer.get_mut(p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.layers_per_peer.remove(p);
            }
        }
    }

    /// Forgets every peer silent for longer than the expiry (3 heartbeats) and returns them.
    pub fn expire(&mut self, now: Duration) -> Vec<PeerRef> {
        let expiry = self.expiry;
        let mut gone: Vec<PeerRef> = self
            .peers
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.last_seen) > expiry)
            .map(|(p, _)| p.clone())
            .collect();
        gone.sort();
        for p in &gone {
            self.forget(p);
        }
        gone
    }

    /// Forgets one peer and all its availability.
    pub fn forget(&mut self, peer: &PeerRef) {
        self.peers.remove(peer);
        self.layers_per_peer.remove(peer);
        self.avail.retain(|_, per_peer| {
            per_peer.remove(peer);
            !per_peer.is_empty()
        });
    }

    /// Live peers holding chunk `chunk_index` of `layer`, least loaded first. Empty while the
    /// local node does not know the layer's manifest ([`GossipView::learn_layer`]): claims about
    /// unknown layers are kept but not trusted.
    pub fn holders(&self, layer: &LayerDigest, chunk_index: u32) -> Vec<PeerRef> {
        let Some(&count) = self.known.get(layer) else { return Vec::new() };
        if chunk_index >= count {
            return Vec::new();
        }
        let mut out: Vec<(&PeerRef, &PeerRecord)> = self
            .avail
            .get(layer)
            .into_iter()
            .flatten()
            .filter(|(_, a)| a.chunk_count == count && (a.complete || bit(&a.bits, chunk_index)))
            .filter_map(|(p, _)| self.peers.get(p).map(|r| (p, r)))
            .collect();
        out.sort_by(|a, b| a.1.load.key().cmp(&b.1.load.key()).then(a.0.cmp(b.0)));
        out.into_iter().map(|(p, _)| p.clone()).collect()
    }

    /// Live peers that announced `layer` at all, with the number of chunks each holds (trusted
    /// or not), sorted by peer.
    pub fn layer_peers(&self, layer: &LayerDigest) -> Vec<(PeerRef, u32)> {
        let mut out: Vec<(PeerRef, u32)> = self
            .avail
            .get(layer)
            .into_iter()
            .flatten()
            .filter(|(p, _)| self.peers.contains_key(*p))
            .map(|(p, a)| {
                let n = if a.complete {
                    a.chunk_count
                } else {
                    a.bits.iter().map(|b| b.count_ones()).sum()
                };
                (p.clone(), n)
            })
            .collect();
        out.sort();
        out
    }

    /// True when `peer` holds every chunk of `layer`.
    pub fn has_complete(&self, peer: &PeerRef, layer: &LayerDigest) -> bool {
        self.avail.get(layer).and_then(|m| m.get(peer)).is_some_and(|a| {
            a.complete || (a.chunk_count > 0 && (0..a.chunk_count).all(|i| bit(&a.bits, i)))
        })
    }

    /// Live peers of `site`, sorted.
    pub fn live_peers(&self, site: &str) -> Vec<PeerRef> {
        let mut out: Vec<PeerRef> = self
            .peers
            .iter()
            .filter(|(_, r)| r.site.as_deref() == Some(site))
            .map(|(p, _)| p.clone())
            .collect();
        out.sort();
        out
    }

    /// Every live peer with its record, sorted by peer.
    pub fn peers(&self) -> Vec<(PeerRef, PeerRecord)> {
        let mut out: Vec<_> = self.peers.iter().map(|(p, r)| (p.clone(), r.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The record of one live peer.
    pub fn peer(&self, peer: &PeerRef) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }

    /// Number of live peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const L: LayerDigest = [7u8; 32];
    const S: Duration = Duration::from_secs(1);

    fn p(n: u8) -> PeerRef {
        PeerRef(vec![n])
    }

    fn avail(records: Vec<LayerAvailability>, seq: u64) -> GossipMsg {
        GossipMsg { seq, body: Body::Availability(records) }
    }

    fn hb(site: &str, active: u32, seq: u64) -> GossipMsg {
        GossipMsg {
            seq,
            body: Body::Heartbeat(Heartbeat {
                site: Some(site.into()),
                serving_addr: Some("10.0.0.1:4433".into()),
                load: Load { active_transfers: active, ..Load::default() },
                heartbeat_ms: 1000,
            }),
        }
    }

    #[test]
    fn roundtrip_and_bounds() {
        let m = avail(LayerAvailability::from_bitmap(L, 20, &[0b101, 0, 0b1000]), 5);
        assert_eq!(GossipMsg::decode(&m.encode()).unwrap(), m);
        assert_eq!(
            GossipMsg::decode(&vec![GOSSIP_FORMAT; MAX_MESSAGE_BYTES + 1]),
            Err(GossipReject::Oversized { len: MAX_MESSAGE_BYTES + 1 })
        );
        assert_eq!(GossipMsg::decode(&[]), Err(GossipReject::Empty));
        assert_eq!(GossipMsg::decode(&[9, 0]), Err(GossipReject::Format(9)));
        // Padding bit 20 set: beyond a 20-chunk layer.
        let bad = avail(
            vec![LayerAvailability {
                layer: L,
                chunk_count: 20,
                held: Held::Bits { first: 0, bits: vec![0, 0, 0b1_0000] },
            }],
            1,
        );
        assert!(matches!(
            GossipMsg::decode(&bad.encode()),
            Err(GossipReject::BitsOutOfRange { .. })
        ));
        let too_long = avail(
            vec![LayerAvailability {
                layer: L,
                chunk_count: 8,
                held: Held::Bits { first: 0, bits: vec![1, 0] },
            }],
            1,
        );
        assert!(GossipMsg::decode(&too_long.encode()).is_err());
    }

    #[test]
    fn big_bitmaps_are_split_and_packed_below_the_limit() {
        let count = 2_000_000u32;
        let mut bm = vec![0u8; count.div_ceil(8) as usize];
        bm[3] = 1;
        let recs = LayerAvailability::from_bitmap(L, count, &bm);
        assert!(recs.len() > 1);
        for body in pack_availability(recs) {
            let bytes = avail(body, 1).encode();
            assert!(bytes.len() <= MAX_MESSAGE_BYTES, "{}", bytes.len());
            GossipMsg::decode(&bytes).unwrap();
        }
    }

    #[test]
    fn holders_are_trusted_only_with_a_known_manifest_and_sorted_by_load() {
        let mut v = GossipView::new(S);
        let now = Duration::from_secs(10);
        v.apply(&hb("lyon", 5, 1), &p(1), now).unwrap();
        v.apply(&hb("lyon", 1, 1), &p(2), now).unwrap();
        v.apply(&avail(LayerAvailability::from_bitmap(L, 10, &[0b11, 0]), 2), &p(1), now).unwrap();
        v.apply(
            &avail(vec![LayerAvailability { layer: L, chunk_count: 10, held: Held::Complete }], 2),
            &p(2),
            now,
        )
        .unwrap();
        // A liar claims 12 chunks.
        v.apply(
            &avail(vec![LayerAvailability { layer: L, chunk_count: 12, held: Held::Complete }], 2),
            &p(3),
            now,
        )
        .unwrap();
        assert!(v.holders(&L, 0).is_empty(), "untrusted until the manifest is known");
        assert_eq!(v.learn_layer(L, 10), 1);
        assert_eq!(v.holders(&L, 0), vec![p(2), p(1)]);
        assert_eq!(v.holders(&L, 5), vec![p(2)]);
        assert!(v.holders(&L, 10).is_empty());
        // Now a count mismatch is refused outright.
        let lie =
            avail(vec![LayerAvailability { layer: L, chunk_count: 11, held: Held::Complete }], 3);
        assert!(matches!(v.apply(&lie, &p(3), now), Err(GossipReject::ChunkCount { .. })));
        // Stale record ignored; newer segment applied.
        v.apply(&avail(LayerAvailability::from_bitmap(L, 10, &[0, 0b10]), 1), &p(1), now).unwrap();
        assert_eq!(v.holders(&L, 0), vec![p(2), p(1)]);
        v.apply(&avail(LayerAvailability::from_bitmap(L, 10, &[0b1, 0b10]), 9), &p(1), now)
            .unwrap();
        assert_eq!(v.holders(&L, 9), vec![p(2), p(1)]);
        assert_eq!(v.holders(&L, 1), vec![p(2)]);
        assert_eq!(v.live_peers("lyon"), vec![p(1), p(2)]);
        assert!(v.has_complete(&p(2), &L));
        assert!(!v.has_complete(&p(1), &L));
    }

    #[test]
    fn silent_peers_expire_after_three_heartbeats() {
        let mut v = GossipView::new(S);
        v.learn_layer(L, 1);
        v.apply(&hb("a", 0, 1), &p(1), Duration::from_secs(1)).unwrap();
        v.apply(
            &avail(vec![LayerAvailability { layer: L, chunk_count: 1, held: Held::Complete }], 2),
            &p(1),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(v.expire(Duration::from_secs(4)).is_empty());
        assert_eq!(v.expire(Duration::from_millis(4001)), vec![p(1)]);
        assert!(v.holders(&L, 0).is_empty());
        assert!(v.is_empty());
    }

    #[test]
    fn too_many_layers_per_peer() {
        let mut v = GossipView::new(S);
        for batch in 0..(MAX_LAYERS_PER_PEER / MAX_LAYERS_PER_MESSAGE) {
            let recs = (0..MAX_LAYERS_PER_MESSAGE)
                .map(|i| {
                    let mut layer = [0u8; 32];
                    layer[..8].copy_from_slice(
                        &((batch * MAX_LAYERS_PER_MESSAGE + i) as u64).to_le_bytes(),
                    );
                    LayerAvailability { layer, chunk_count: 1, held: Held::Complete }
                })
                .collect();
            v.apply(&avail(recs, 1), &p(1), S).unwrap();
        }
        let more = avail(
            vec![LayerAvailability { layer: [0xee; 32], chunk_count: 1, held: Held::Complete }],
            2,
        );
        assert_eq!(v.apply(&more, &p(1), S), Err(GossipReject::TooManyLayers));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = GossipMsg::decode(&bytes);
            let mut with_format = vec![GOSSIP_FORMAT];
            with_format.extend_from_slice(&bytes);
            if let Ok(m) = GossipMsg::decode(&with_format) {
                let mut v = GossipView::new(S);
                v.learn_layer(L, 17);
                let _ = v.apply(&m, &p(1), S);
                let _ = v.holders(&L, 3);
            }
        }

        #[test]
        fn mutated_valid_messages_never_panic(
            count in 0u32..100,
            bits in proptest::collection::vec(any::<u8>(), 1..16),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        ) {
            let m = avail(vec![LayerAvailability { layer: L, chunk_count: count, held: Held::Bits { first: 0, bits } }], 1);
            let mut bytes = m.encode();
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            if let Ok(m) = GossipMsg::decode(&bytes) {
                let mut v = GossipView::new(S);
                let _ = v.apply(&m, &p(1), S);
                v.learn_layer(L, count);
                for i in 0..count { let _ = v.holders(&L, i); }
            }
        }
    }
}
