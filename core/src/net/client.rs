//! The client side: one QUIC connection to a seed or reflector, one stream per request.

use super::{close_code, read_frame, NetError, ReadFrameError, CONNECT_TIMEOUT};
use crate::chunk::ChunkId;
use crate::compress::StoredChunk;
use crate::manifest::{ChunkRef, ManifestError, SignedManifest, SignedRoot};
use crate::pki::{self, PeerInfo, Role, NODE_SERVER_NAME};
use crate::policy::TrafficClass;
use crate::wire::{self, Frame, MAX_FRAME_BYTES, MAX_IDS_PER_REQUEST, MAX_NAME_BYTES};
use bytes::Bytes;
use quinn::{RecvStream, VarInt};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// A connection to a seed or reflector. Cheap to clone; every request opens its own stream, so
/// any number of requests may run concurrently (the server's stream limit queues the excess).
#[derive(Clone, Debug)]
pub struct Client {
    conn: quinn::Connection,
    peer: Arc<PeerInfo>,
    addr: SocketAddr,
}

/// One answer of a GetChunks request, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkReply {
    /// The chunk as stored by the server: NOT verified yet (use `StoredChunk::decode_verified`).
    Chunk(StoredChunk),
    /// The server does not hold this chunk.
    Missing(ChunkId),
}

impl ChunkReply {
    pub fn id(&self) -> ChunkId {
        match self {
            ChunkReply::Chunk(c) => c.id,
            ChunkReply::Missing(id) => *id,
        }
    }
}

/// How often [`Client::plain_chunks`] asks for a chunk whose bytes do not match its id.
pub const PLAIN_CHUNK_TRIES: usize = 3;

type PlainBatch = (Vec<(u64, ChunkId, Bytes)>, Vec<ChunkId>);

/// A manifest fetched by [`Client::open_manifest`], and what its fetch moved.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub manifest: SignedManifest,
    /// Bytes of the signed root.
    pub root_bytes: u64,
    /// Body chunk bytes as sent (compressed where the server stores them so).
    pub body_wire_bytes: u64,
    /// The body chunks that were fetched (not given by `local`), with their plain bytes.
    pub fetched: Vec<(ChunkRef, Bytes)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    Done,
    Failed,
}

/// The answers to one GetChunks request, read off its stream as they arrive. Dropping it before
/// the end tells the server to stop sending.
#[derive(Debug)]
pub struct ChunkReplies {
    recv: RecvStream,
    expected: VecDeque<ChunkId>,
    addr: SocketAddr,
    state: State,
}

impl Client {
    /// Connects to the node at `addr` (TLS server name [`NODE_SERVER_NAME`], verified against the
    /// Oasis CA), giving up after [`CONNECT_TIMEOUT`], and accepts it only if its certificate
    /// names one of the roles in `accept` (see [`super::accept`]): an endpoint's key cannot
    /// pose as the seed, nor anything but a reflector as a sibling.
    pub async fn connect(
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
        accept: &[Role],
    ) -> Result<Client, NetError> {
        let connect_err =
            |e: Box<dyn std::error::Error + Send + Sync>| NetError::Connect { addr, source: e };
        let connecting =
            endpoint.connect(addr, NODE_SERVER_NAME).map_err(|e| connect_err(e.into()))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(NetError::Timeout { addr, what: "connecting" }),
            Ok(Err(e)) => return Err(connect_err(e.into())),
            Ok(Ok(conn)) => conn,
        };
        let peer = match pki::peer_info(&conn) {
            Ok(p) => p,
            Err(e) => {
                conn.close(VarInt::from_u32(close_code::FORBIDDEN), b"no Oasis node identity");
                return Err(connect_err(e.into()));
            }
        };
        if !accept.contains(&peer.role) {
            conn.close(VarInt::from_u32(close_code::FORBIDDEN), b"unexpected server role");
            let accepted: Vec<&str> = accept.iter().map(|r| r.as_str()).collect();
            return Err(NetError::Role {
                addr,
                peer: peer.to_string(),
                accepted: accepted.join(" or "),
            });
        }
        tracing::debug!(%addr, %peer, "connected");
        Ok(Client { conn, peer: Arc::new(peer), addr })
    }

    /// Who the server is, from its certificate.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The address this client connected to.
    pub fn remote_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The underlying QUIC connection (for stats or raw streams).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// A layer's signed manifest (`version` None = latest). Unknown layers give
    /// `NetError::Remote { code: NotFound, .. }`.
    pub async fn manifest(&self, name: &str, version: Option<&str>) -> Result<Bytes, NetError> {
        for (what, s) in [("layer name", Some(name)), ("version", version)] {
            if let Some(s) = s {
                if s.is_empty() || s.len() > MAX_NAME_BYTES {
                    return Err(self.bad_request(format!(
                        "{what} must be 1 to {MAX_NAME_BYTES} bytes, not {}",
                        s.len()
                    )));
                }
            }
        }
        let req =
            Frame::GetManifest { name: name.to_string(), version: version.map(str::to_string) };
        match self.request(&req).await? {
            Frame::Manifest { signed } => Ok(signed),
            other => Err(self.unexpected(&other, "Manifest")),
        }
    }

    /// The signed statement of `name`'s newest version, and the server's note (see
    /// `Frame::Latest`). The statement is returned as sent: the caller opens it against the
    /// trusted key (`manifest::Latest::open`).
    pub async fn latest(&self, name: &str) -> Result<(Bytes, String), NetError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(self.bad_request(format!(
                "layer name must be 1 to {MAX_NAME_BYTES} bytes, not {}",
                name.len()
            )));
        }
        match self.request(&Frame::GetLatest { name: name.to_string() }).await? {
            Frame::Latest { statement, note } => Ok((statement, note)),
            other => Err(self.unexpected(&other, "Latest")),
        }
    }

    /// A layer's manifest, whole: the signed root (checked against `key` and against the
    /// request), then the body chunks that `local` does not give, fetched over a few streams and
    /// each verified against its id. What was fetched comes back beside the manifest, so the
    /// caller can keep it: the next version's body then costs only the chunks that changed.
    pub async fn open_manifest(
        &self,
        name: &str,
        version: Option<&str>,
        key: &ed25519_dalek::VerifyingKey,
        local: impl Fn(&ChunkId) -> Option<Bytes>,
    ) -> Result<FetchedManifest, NetError> {
        let signed = self.manifest(name, version).await?;
        self.open_manifest_root(signed, name, version, key, local).await
    }

    /// [`Self::open_manifest`] from a signed root already received for the same request
    /// (`name`, `version`): checked the same way, then its body fetched.
    pub async fn open_manifest_root(
        &self,
        signed: Bytes,
        name: &str,
        version: Option<&str>,
        key: &ed25519_dalek::VerifyingKey,
        local: impl Fn(&ChunkId) -> Option<Bytes>,
    ) -> Result<FetchedManifest, NetError> {
        let addr = self.addr;
        let bad = |source| NetError::Manifest { addr, source };
        let root = SignedRoot::open(&signed, key).map_err(bad)?;
        root.check_request(name, version).map_err(bad)?;
        let mut have: HashMap<ChunkId, Bytes> = HashMap::new();
        let mut want = Vec::new();
        for c in root.root.unique_body_chunks() {
            match local(&c.id) {
                Some(b) if c.id.verify(&b) => {
                    have.insert(c.id, b);
                }
                _ => want.push(c.id),
            }
        }
        let fetched = self.plain_chunks(&want).await.map_err(|e| match e {
            // The source has the root but not one of its body chunks: a broken source, not a
            // missing layer.
            NetError::Missing { id, .. } => bad(ManifestError::BodyUnavailable {
                layer: root.label(),
                id,
                problem: "the source does not hold it".into(),
            }),
            other => other,
        })?;
        let mut wire_bytes = 0u64;
        let mut fetched_refs = Vec::with_capacity(fetched.len());
        for (stored_len, id, plain) in fetched {
            wire_bytes += stored_len;
            fetched_refs.push((ChunkRef { id, len: plain.len() as u32 }, plain.clone()));
            have.insert(id, plain);
        }
        let manifest = root
            .assemble(|c| have.get(&c.id).cloned().ok_or_else(|| "not received".to_string()))
            .map_err(bad)?;
        Ok(FetchedManifest {
            manifest,
            root_bytes: signed.len() as u64,
            body_wire_bytes: wire_bytes,
            fetched: fetched_refs,
        })
    }

    /// Fetches and verifies `ids`, in batches over up to four streams at once. A chunk that
    /// does not match its id is asked for again (corruption in flight or at rest is fixed
    /// by the server's own check); after [`PLAIN_CHUNK_TRIES`] bad copies, or a `Missing`
    /// answer ([`NetError::Missing`]), the whole call fails. Returns (bytes as sent, id, plain
    /// bytes) per chunk.
    pub async fn plain_chunks(
        &self,
        ids: &[ChunkId],
    ) -> Result<Vec<(u64, ChunkId, Bytes)>, NetError> {
        use futures::StreamExt;
        let mut all = Vec::with_capacity(ids.len());
        let mut want = ids.to_vec();
        for _ in 0..PLAIN_CHUNK_TRIES {
            // Owned batches: a future borrowing a slice per batch would tie every batch to one
            // lifetime, which futures spawned by callers cannot name.
            let batches: Vec<Vec<ChunkId>> = want.chunks(1024).map(<[ChunkId]>::to_vec).collect();
            let mut s = futures::stream::iter(batches).map(|b| self.plain_batch(b)).buffered(4);
            let mut bad = Vec::new();
            while let Some(batch) = s.next().await {
                let (good, wrong) = batch?;
                all.extend(good);
                bad.extend(wrong);
            }
            if bad.is_empty() {
                return Ok(all);
            }
            tracing::warn!(peer = %self.addr, chunks = bad.len(), "chunks did not match their ids; asking again");
            want = bad;
        }
        Err(NetError::Protocol {
            addr: self.addr,
            problem: format!(
                "{} chunks (first {}) did not match their ids {PLAIN_CHUNK_TRIES} times",
                want.len(),
                want[0]
            ),
        })
    }

    /// One batch: the verified chunks, and the ids whose bytes did not match.
    async fn plain_batch(&self, batch: Vec<ChunkId>) -> Result<PlainBatch, NetError> {
        let addr = self.addr;
        let (mut out, mut bad) = (Vec::with_capacity(batch.len()), Vec::new());
        let mut replies = self.chunks(batch).await?;
        while let Some(r) = replies.next().await? {
            match r {
                ChunkReply::Chunk(c) => match c.decode_verified() {
                    Ok(plain) => out.push((c.data.len() as u64, c.id, plain)),
                    Err(_) => bad.push(c.id),
                },
                ChunkReply::Missing(id) => return Err(NetError::Missing { addr, id }),
            }
        }
        Ok((out, bad))
    }

    /// Requests `ids` (at most [`MAX_IDS_PER_REQUEST`]) on one stream; the answers arrive in
    /// request order through the returned [`ChunkReplies`].
    pub async fn chunks(&self, ids: Vec<ChunkId>) -> Result<ChunkReplies, NetError> {
        self.chunks_in(ids, TrafficClass::Foreground).await
    }

    /// [`Client::chunks`] in a traffic class: `Background` sends `GetChunksBackground`, which a
    /// reflector serves from its WAN's background class when it must pull a chunk.
    pub async fn chunks_in(
        &self,
        ids: Vec<ChunkId>,
        class: TrafficClass,
    ) -> Result<ChunkReplies, NetError> {
        self.check_ids(ids.len())?;
        let expected = VecDeque::from(ids);
        let ids = Vec::from(expected.clone());
        let req = match class {
            TrafficClass::Foreground => Frame::GetChunks { ids },
            TrafficClass::Background => Frame::GetChunksBackground { ids },
        };
        let recv = self.open(&req).await?;
        Ok(ChunkReplies { recv, expected, addr: self.addr, state: State::Open })
    }

    /// Which of `ids` (at most [`MAX_IDS_PER_REQUEST`]) the server holds, in order.
    pub async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, NetError> {
        self.check_ids(ids.len())?;
        match self.request(&Frame::Have { ids: ids.to_vec() }).await? {
            Frame::HaveReply { count, bitmap } if count as usize == ids.len() => {
                Ok(wire::unpack_bits(&bitmap, ids.len()))
            }
            Frame::HaveReply { count, .. } => Err(NetError::Protocol {
                addr: self.addr,
                problem: format!("HaveReply for {count} ids, asked about {}", ids.len()),
            }),
            other => Err(self.unexpected(&other, "HaveReply")),
        }
    }

    /// The layers the server publishes.
    pub async fn layers(&self) -> Result<Vec<wire::LayerRef>, NetError> {
        match self.request(&Frame::ListLayers).await? {
            Frame::Layers { layers } => Ok(layers),
            other => Err(self.unexpected(&other, "Layers")),
        }
    }

    /// The revocation list the server holds, as sent (DER), when its number is above `known`;
    /// empty otherwise. The caller checks it against the CA (`pki::RevocationList::from_der`).
    pub async fn revocations(&self, known: u64) -> Result<Bytes, NetError> {
        match self.request(&Frame::GetRevocations { known }).await? {
            Frame::Revocations { crl } => Ok(crl),
            other => Err(self.unexpected(&other, "Revocations")),
        }
    }

    /// Asks for the renewal of a certificate (`pki::NodeIdentity::renewal_request`); the answer
    /// is the new certificate as sent, which the caller checks (`NodeIdentity::renewed`).
    pub async fn renew(&self, cert: Bytes, csr: Bytes) -> Result<Bytes, NetError> {
        match self.request(&Frame::Renew { cert, csr }).await? {
            Frame::Renewed { cert } => Ok(cert),
            other => Err(self.unexpected(&other, "Renewed")),
        }
    }

    /// The entitlement statement of `site` (None: this node's own) and its seal, unless its
    /// digest is `known` (then both are empty). The caller opens them
    /// (`entitlement::Entitlements::open`).
    pub async fn entitlements(
        &self,
        site: Option<&str>,
        known: [u8; 32],
    ) -> Result<(Bytes, Bytes), NetError> {
        let site = site.map(str::to_string);
        match self.request(&Frame::GetEntitlements { site, known }).await? {
            Frame::Entitlements { statement, seal } => Ok((statement, seal)),
            other => Err(self.unexpected(&other, "Entitlements")),
        }
    }

    /// Layers the server assigns to this node's site (or to this device).
    pub async fn assignments(&self) -> Result<Vec<wire::Assignment>, NetError> {
        match self.request(&Frame::GetAssignments).await? {
            Frame::Assignments { assignments } => Ok(assignments),
            other => Err(self.unexpected(&other, "Assignments")),
        }
    }

    /// Registers a device in the server's inventory (this node itself, or for a reflector, a
    /// device of its site).
    pub async fn register(&self, device: &crate::wake::DeviceInfo) -> Result<(), NetError> {
        if device.name.is_empty() || device.name.len() > MAX_NAME_BYTES {
            return Err(self.bad_request(format!(
                "device name must be 1 to {MAX_NAME_BYTES} bytes, not {}",
                device.name.len()
            )));
        }
        match self.request(&Frame::Register { device: Box::new(device.clone()) }).await? {
            Frame::Registered => Ok(()),
            other => Err(self.unexpected(&other, "Registered")),
        }
    }

    /// The inventory of this node's site, as the server knows it.
    pub async fn devices(&self) -> Result<Vec<crate::wake::DeviceEntry>, NetError> {
        match self.request(&Frame::GetDevices).await? {
            Frame::Devices { devices } => Ok(devices),
            other => Err(self.unexpected(&other, "Devices")),
        }
    }

    /// Asks the server to send magic packets for `targets` from its own network.
    pub async fn wake(
        &self,
        targets: Vec<crate::wake::WakeTarget>,
    ) -> Result<Vec<crate::wake::WakeSent>, NetError> {
        match self.request(&Frame::Wake { targets }).await? {
            Frame::WakeReport { results } => Ok(results),
            other => Err(self.unexpected(&other, "WakeReport")),
        }
    }

    /// Uploads `chunks` (at most [`crate::backup::MAX_PUT_CHUNKS`]) on one stream, sent as
    /// stored (compressed when that saves bytes). With a `limiter`, each chunk frame waits for
    /// its bytes (frame header included) before it is written. Returns `(received, added)`:
    /// chunks the server stored, and how many of those were new to it.
    pub async fn put_chunks(
        &self,
        chunks: &[StoredChunk],
        limiter: Option<&crate::policy::WanLimiter>,
    ) -> Result<(u32, u32), NetError> {
        let addr = self.addr;
        if chunks.is_empty() || chunks.len() > crate::backup::MAX_PUT_CHUNKS as usize {
            return Err(self.bad_request(format!(
                "{} chunks per upload stream, allowed 1 to {}",
                chunks.len(),
                crate::backup::MAX_PUT_CHUNKS
            )));
        }
        let (mut send, mut recv) =
            self.conn.open_bi().await.map_err(|source| NetError::Connection { addr, source })?;
        let header = Frame::PutChunks { count: chunks.len() as u32 }.to_bytes();
        // Ok(false): the server stopped reading (it refused the upload; its Error frame follows).
        async fn write(
            send: &mut quinn::SendStream,
            bufs: &mut [Bytes],
            addr: SocketAddr,
        ) -> Result<bool, NetError> {
            match send.write_all_chunks(bufs).await {
                Ok(()) => Ok(true),
                Err(quinn::WriteError::Stopped(_)) => Ok(false),
                Err(quinn::WriteError::ConnectionLost(source)) => {
                    Err(NetError::Connection { addr, source })
                }
                Err(e) => Err(NetError::Stream { addr, problem: format!("uploading: {e}") }),
            }
        }
        let mut open = write(&mut send, &mut [header], addr).await?;
        for c in chunks {
            if !open {
                break;
            }
            if let Some(l) = limiter {
                l.acquire(crate::policy::TrafficClass::Foreground, 42 + c.data.len() as u64).await;
            }
            let head = Bytes::copy_from_slice(&Frame::chunk_header(c));
            open = write(&mut send, &mut [head, c.data.clone()], addr).await?;
        }
        let _ = send.finish();
        match read_answer(&mut recv, addr).await? {
            Some(Frame::ChunksStored { received, added }) => Ok((received, added)),
            Some(Frame::Error { code, message }) => Err(NetError::Remote { addr, code, message }),
            Some(other) => Err(self.unexpected(&other, "ChunksStored")),
            None => Err(NetError::Protocol {
                addr,
                problem: "upload stream ended without an answer".into(),
            }),
        }
    }

    /// Files a snapshot record whose chunks the server already holds.
    pub async fn put_snapshot(
        &self,
        req: crate::backup::PutSnapshot,
    ) -> Result<crate::backup::SnapshotInfo, NetError> {
        self.check_names(&[&req.device, &req.id])?;
        if req.record.chunks.len() > crate::backup::MAX_RECORD_CHUNKS {
            return Err(self.bad_request(format!(
                "record of {} chunks exceeds {}",
                req.record.chunks.len(),
                crate::backup::MAX_RECORD_CHUNKS
            )));
        }
        match self.request(&Frame::PutSnapshot(req)).await? {
            Frame::SnapshotStored(info) => Ok(info),
            other => Err(self.unexpected(&other, "SnapshotStored")),
        }
    }

    /// `device`'s snapshots at the server, oldest first.
    pub async fn snapshots(
        &self,
        device: &str,
    ) -> Result<Vec<crate::backup::SnapshotInfo>, NetError> {
        self.check_names(&[device])?;
        match self.request(&Frame::ListSnapshots { device: device.to_string() }).await? {
            Frame::Snapshots { snapshots } => Ok(snapshots),
            other => Err(self.unexpected(&other, "Snapshots")),
        }
    }

    /// One of `device`'s snapshots (`id` None = latest), where its record is, and the seed's
    /// seal on the record (the caller checks it: `seal::Seal::check`).
    pub async fn snapshot(
        &self,
        device: &str,
        id: Option<&str>,
    ) -> Result<(crate::backup::SnapshotInfo, crate::backup::RecordRef, Bytes), NetError> {
        self.check_names(&[device, id.unwrap_or("x")])?;
        let req = Frame::GetSnapshot { device: device.to_string(), id: id.map(str::to_string) };
        match self.request(&req).await? {
            Frame::Snapshot { info, record, seal } => Ok((info, record, seal)),
            other => Err(self.unexpected(&other, "Snapshot")),
        }
    }

    /// The layers assigned to this device (`base` None while it is pending) and the seed's
    /// seal on them (the caller checks it: `seal::Seal::check`).
    pub async fn plan(&self) -> Result<(crate::backup::DevicePlan, Bytes), NetError> {
        match self.request(&Frame::GetPlan).await? {
            Frame::Plan { plan, seal } => Ok((plan, seal)),
            other => Err(self.unexpected(&other, "Plan")),
        }
    }

    fn check_names(&self, names: &[&str]) -> Result<(), NetError> {
        for n in names {
            if n.is_empty() || n.len() > MAX_NAME_BYTES {
                return Err(
                    self.bad_request(format!("name {n:?} must be 1 to {MAX_NAME_BYTES} bytes"))
                );
            }
        }
        Ok(())
    }

    /// Closes the connection (code [`close_code::NORMAL`]); requests in flight fail.
    pub fn close(&self) {
        self.conn.close(VarInt::from_u32(close_code::NORMAL), b"done");
    }

    fn check_ids(&self, n: usize) -> Result<(), NetError> {
        if n > MAX_IDS_PER_REQUEST {
            return Err(self.bad_request(format!(
                "{n} ids exceed the limit of {MAX_IDS_PER_REQUEST} per request"
            )));
        }
        Ok(())
    }

    fn bad_request(&self, problem: String) -> NetError {
        NetError::Request { addr: self.addr, problem }
    }

    fn unexpected(&self, got: &Frame, wanted: &str) -> NetError {
        NetError::Protocol {
            addr: self.addr,
            problem: format!(
                "answered with a frame of type 0x{:02x}, expected {wanted}",
                got.type_byte()
            ),
        }
    }

    /// Opens a stream, sends `req` and finishes the send side.
    async fn open(&self, req: &Frame) -> Result<RecvStream, NetError> {
        let addr = self.addr;
        let (mut send, recv) =
            self.conn.open_bi().await.map_err(|source| NetError::Connection { addr, source })?;
        match send.write_chunk(req.to_bytes()).await {
            Ok(()) => {
                let _ = send.finish();
            }
            // The server refused the request before reading all of it; its Error frame follows.
            Err(quinn::WriteError::Stopped(_)) => {}
            Err(quinn::WriteError::ConnectionLost(source)) => {
                return Err(NetError::Connection { addr, source })
            }
            Err(e) => {
                return Err(NetError::Stream { addr, problem: format!("sending the request: {e}") })
            }
        }
        Ok(recv)
    }

    /// A single-frame request: sends it and reads the one answer frame; an Error frame becomes
    /// `NetError::Remote`.
    async fn request(&self, req: &Frame) -> Result<Frame, NetError> {
        let mut recv = self.open(req).await?;
        match read_answer(&mut recv, self.addr).await? {
            Some(Frame::Error { code, message }) => {
                Err(NetError::Remote { addr: self.addr, code, message })
            }
            Some(f) => Ok(f),
            None => Err(NetError::Protocol {
                addr: self.addr,
                problem: "stream finished without an answer".into(),
            }),
        }
    }
}

impl ChunkReplies {
    /// The next answer in request order; `Ok(None)` after the closing End frame. Fails when the
    /// stream ends without End (truncation), when an id arrives out of order or unrequested, or
    /// on an Error frame (answers before it stay valid). After a failure every call fails.
    pub async fn next(&mut self) -> Result<Option<ChunkReply>, NetError> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => {
                return Err(NetError::Stream {
                    addr: self.addr,
                    problem: "chunk answer stream already failed".into(),
                })
            }
            State::Open => {}
        }
        let result = self.read_next().await;
        match &result {
            Ok(None) => self.state = State::Done,
            Ok(Some(_)) => {}
            Err(_) => self.state = State::Failed,
        }
        result
    }

    /// Ids requested but not answered yet, in request order.
    pub fn unanswered(&self) -> impl ExactSizeIterator<Item = &ChunkId> {
        self.expected.iter()
    }

    /// How many ids are still unanswered.
    pub fn remaining(&self) -> usize {
        self.expected.len()
    }

    async fn read_next(&mut self) -> Result<Option<ChunkReply>, NetError> {
        let addr = self.addr;
        let frame = match read_answer(&mut self.recv, addr).await? {
            Some(f) => f,
            None => {
                return Err(NetError::Protocol {
                    addr,
                    problem: format!(
                        "chunk answer truncated: stream ended with {} ids unanswered and no End",
                        self.expected.len()
                    ),
                })
            }
        };
        let reply = match frame {
            Frame::Chunk(c) => ChunkReply::Chunk(c),
            Frame::Missing { id } => ChunkReply::Missing(id),
            Frame::End if self.expected.is_empty() => return Ok(None),
            Frame::End => {
                return Err(NetError::Protocol {
                    addr,
                    problem: format!("End with {} ids unanswered", self.expected.len()),
                })
            }
            Frame::Error { code, message } => return Err(NetError::Remote { addr, code, message }),
            other => {
                return Err(NetError::Protocol {
                    addr,
                    problem: format!(
                        "unexpected frame type 0x{:02x} in a chunk answer",
                        other.type_byte()
                    ),
                })
            }
        };
        match self.expected.front() {
            Some(want) if *want == reply.id() => {
                self.expected.pop_front();
                Ok(Some(reply))
            }
            Some(want) => Err(NetError::Protocol {
                addr,
                problem: format!("answer for chunk {} where {} was due", reply.id(), want),
            }),
            None => Err(NetError::Protocol {
                addr,
                problem: format!("answer for unrequested chunk {}", reply.id()),
            }),
        }
    }
}

/// Reads and decodes one answer frame (at most [`MAX_FRAME_BYTES`]); `Ok(None)` at a clean end.
async fn read_answer(recv: &mut RecvStream, addr: SocketAddr) -> Result<Option<Frame>, NetError> {
    let (ty, body) = match read_frame(recv, MAX_FRAME_BYTES).await {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(ReadFrameError::Read(quinn::ReadError::ConnectionLost(source))) => {
            return Err(NetError::Connection { addr, source })
        }
        Err(ReadFrameError::Read(e)) => {
            return Err(NetError::Stream { addr, problem: format!("reading the answer: {e}") })
        }
        Err(ReadFrameError::Wire(source)) => return Err(NetError::Wire { addr, source }),
        Err(ReadFrameError::Truncated { have, need }) => {
            return Err(NetError::Protocol {
                addr,
                problem: format!("answer truncated inside a frame ({have} of {need} bytes)"),
            })
        }
    };
    Frame::decode(ty, body).map(Some).map_err(|source| NetError::Wire { addr, source })
}
