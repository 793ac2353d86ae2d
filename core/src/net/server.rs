//! The serving side: accept connections, answer one request per stream from a [`Router`]
//! over a node's [`ContentSource`], [`InventorySource`] and [`BackupSource`] (see
//! [`super::router`]).

use super::limits::{PeerSlots, ServeLimits, SourceBans};
use super::router::{BackupSource, ContentSource, InventorySource, Router, SourceError};
use super::{
    close_code, read_frame, stream_code, wire_error_code, ReadFrameError, CHUNK_READ_AHEAD,
    MAX_BAD_REQUESTS, REQUEST_TIMEOUT,
};
use crate::chunk::ChunkId;
use crate::metrics::NodeMetrics;
use crate::pki::{self, PeerInfo};
use crate::policy::TrafficClass;
use crate::wire::{self, frame_type, ErrorCode, Frame, MAX_FRAME_BYTES, MAX_REQUEST_BYTES};
use bytes::Bytes;
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

/// Serves `router` on `endpoint` until the endpoint is closed: one task per connection and one
/// per request stream. Never panics on peer input; errors are logged and answered with `Error`
/// frames.
pub async fn serve<C: ContentSource, I: InventorySource, B: BackupSource>(
    endpoint: quinn::Endpoint,
    router: Router<C, I, B>,
    metrics: Arc<NodeMetrics>,
) {
    let local = endpoint.local_addr().ok();
    info!(addr = ?local, "serving oasis/1");
    // Every connection and request task, so that `serve` returns only once they have ended
    // (closing the endpoint closes the connections): a node that awaits `serve` knows nothing
    // it serves with is still held.
    let tasks = TaskTracker::new();
    // The gauge follows the list for as long as anything holds it.
    let mut lists = router.revocations.subscribe();
    let gauge = metrics.revocation_list.clone();
    tokio::spawn(async move {
        loop {
            let number = lists.borrow_and_update().as_ref().map_or(0, |l| l.number());
            gauge.set(number as i64);
            if lists.changed().await.is_err() {
                return;
            }
        }
    });
    let live = Arc::new(AtomicU32::new(0));
    let slots = Arc::new(PeerSlots::default());
    let bans = Arc::new(SourceBans::default());
    let max = router.limits.max_connections;
    while let Some(incoming) = endpoint.accept().await {
        if bans.is_banned(&incoming.remote_address()) {
            metrics.banned_connections.inc();
            debug!(remote = %incoming.remote_address(), "connection refused: its source was turned away within source_ban");
            incoming.refuse();
            continue;
        }
        if live.load(Ordering::Relaxed) >= max {
            metrics.refused_connections.inc();
            warn!(remote = %incoming.remote_address(), max, "connection refused: the server holds its maximum");
            incoming.refuse();
            continue;
        }
        live.fetch_add(1, Ordering::Relaxed);
        let held = LiveConnection(live.clone());
        let (source, metrics, t) = (Arc::new(router.clone()), metrics.clone(), tasks.clone());
        let (slots, bans) = (slots.clone(), bans.clone());
        tasks.spawn(async move {
            let _held = held;
            let remote = incoming.remote_address();
            let hold = source.limits.source_ban;
            match incoming.await {
                Ok(conn) => {
                    if !serve_connection(conn, source, metrics, t, slots).await {
                        bans.ban(remote, hold);
                    }
                }
                Err(e) => {
                    info!(%remote, error = %e, "handshake failed");
                    // Refused by TLS (no certificate, an unknown CA, a bad signature): the
                    // same source is not handshaken with again for a while. A handshake that
                    // timed out (a lossy link) bans nothing.
                    if matches!(e, quinn::ConnectionError::TransportError(_)) {
                        bans.ban(remote, hold);
                    }
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
    info!(addr = ?local, "endpoint closed, no longer serving");
}

/// The close reason a peer whose certificate is revoked reads.
const REVOKED_REASON: &[u8] = b"certificate revoked";

/// One connection (or handshake) in the server's total; counted out on drop.
struct LiveConnection(Arc<AtomicU32>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Longest a chunk answer counts for its class after it is written (a stalled client must not
/// keep a connection from yielding, or from ceasing to, for ever).
const ANSWER_DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The chunk answers a connection is sending, by traffic class. While it sends background
/// answers and no foreground one, its congestion controller yields to other traffic on the
/// path (LEDBAT-like, see [`super::congestion`]): prefetch must not crowd out a branch's
/// other traffic, while what a user waits for takes its fair share.
struct ClassLoad {
    counts: Mutex<[u32; 2]>,
    switch: Option<Arc<super::congestion::YieldSwitch>>,
}

impl ClassLoad {
    fn new(switch: Option<Arc<super::congestion::YieldSwitch>>) -> ClassLoad {
        ClassLoad { counts: Mutex::new([0, 0]), switch }
    }

    /// Counts an answer of `class` until the guard drops.
    fn begin(self: &Arc<Self>, class: TrafficClass) -> ClassGuard {
        self.change(class, true);
        ClassGuard { load: self.clone(), class }
    }

    fn change(&self, class: TrafficClass, up: bool) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let i = (class == TrafficClass::Background) as usize;
        c[i] = if up { c[i].saturating_add(1) } else { c[i].saturating_sub(1) };
        if let Some(s) = &self.switch {
            let on = c[1] > 0 && c[0] == 0;
            if s.is_on() != on {
                debug!(yielding = on, "traffic class of the connection's answers changed");
            }
            s.set(on);
        }
    }
}

/// One answer counted in a [`ClassLoad`].
struct ClassGuard {
    load: Arc<ClassLoad>,
    class: TrafficClass,
}

impl Drop for ClassGuard {
    fn drop(&mut self) {
        self.load.change(self.class, false);
    }
}

/// Decrements the connection gauge when a connection task ends, however it ends.
struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one connection to its end. Returns false when the peer was turned away: right after
/// its handshake (no identity, revoked, role not admitted, over its share of connections), or
/// later for [`MAX_BAD_REQUESTS`] bad requests.
async fn serve_connection<C: ContentSource, I: InventorySource, B: BackupSource>(
    conn: Connection,
    source: Arc<Router<C, I, B>>,
    metrics: Arc<NodeMetrics>,
    tasks: TaskTracker,
    slots: Arc<PeerSlots>,
) -> bool {
    let remote = conn.remote_address();
    let peer = match pki::peer_cert(&conn).and_then(|c| Ok((pki::peer_info_from_cert(&c)?, c))) {
        Ok(p) => p,
        Err(e) => {
            warn!(%remote, error = %e, "refusing peer without a usable Oasis identity");
            conn.close(VarInt::from_u32(close_code::FORBIDDEN), b"no Oasis node identity");
            return false;
        }
    };
    let (peer, cert) = peer;
    let mut revocations = source.revocations.subscribe();
    if source.revocations.revokes(&cert) {
        metrics.revoked_peers.inc();
        warn!(%remote, %peer, "refusing peer: its certificate is revoked");
        conn.close(VarInt::from_u32(close_code::FORBIDDEN), REVOKED_REASON);
        return false;
    }
    if !source.content.admits(&peer) {
        info!(%remote, %peer, "refusing peer: role not admitted here");
        conn.close(VarInt::from_u32(close_code::FORBIDDEN), b"role not admitted");
        return false;
    }
    let per_peer = source.limits.max_connections_per_peer;
    let Some(_slot) = slots.take(&peer.to_string(), per_peer) else {
        metrics.refused_connections.inc();
        warn!(%remote, %peer, max = per_peer, "connection closed: the peer holds its share of connections");
        conn.close(VarInt::from_u32(close_code::BUSY), b"too many connections from this node");
        return false;
    };
    let span = info_span!(
        "conn",
        peer = %peer.name,
        role = %peer.role,
        site = peer.site.as_deref().unwrap_or("-"),
        %remote
    );
    async move {
        metrics.connections.inc();
        let _guard = ConnectionGuard(metrics.connections.clone());
        let peer = Arc::new(peer);
        info!("peer connected");
        let bad_requests = Arc::new(AtomicU32::new(0));
        let load = Arc::new(ClassLoad::new(super::congestion::yield_switch(&conn)));
        let reason = loop {
            let next = tokio::select! {
                next = conn.accept_bi() => next,
                Ok(()) = revocations.changed() => {
                    if source.revocations.revokes(&cert) {
                        metrics.revoked_peers.inc();
                        warn!("closing connection: the peer's certificate is revoked");
                        conn.close(VarInt::from_u32(close_code::FORBIDDEN), REVOKED_REASON);
                    }
                    continue;
                }
            };
            match next {
                Ok((send, recv)) => {
                    let ctx = StreamCtx {
                        source: source.clone(),
                        peer: peer.clone(),
                        metrics: metrics.clone(),
                        conn: conn.clone(),
                        bad_requests: bad_requests.clone(),
                        load: load.clone(),
                        limits: source.limits.clone(),
                    };
                    tasks.spawn(ctx.handle(send, recv).in_current_span());
                }
                Err(e) => break e,
            }
        };
        match reason {
            quinn::ConnectionError::ApplicationClosed(ref c)
                if c.error_code == VarInt::from_u32(close_code::NORMAL) =>
            {
                info!("peer disconnected")
            }
            quinn::ConnectionError::LocallyClosed => info!("connection closed by us"),
            e => info!(reason = %e, "connection ended"),
        }
        // Closed for its bad requests: turned away like a peer over its share.
        bad_requests.load(Ordering::Relaxed) < MAX_BAD_REQUESTS
    }
    .instrument(span)
    .await
}

struct StreamCtx<C, I, B> {
    source: Arc<Router<C, I, B>>,
    peer: Arc<PeerInfo>,
    metrics: Arc<NodeMetrics>,
    conn: Connection,
    bad_requests: Arc<AtomicU32>,
    load: Arc<ClassLoad>,
    limits: Arc<ServeLimits>,
}

/// Why a request could not be served.
enum Refusal {
    /// Answer with this error frame (a bad request, counted against the connection).
    Bad(Frame),
    /// The stream or connection went away: nothing to answer.
    Gone(String),
}

impl<C: ContentSource, I: InventorySource, B: BackupSource> StreamCtx<C, I, B> {
    async fn handle(self, mut send: SendStream, mut recv: RecvStream) {
        let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut recv)).await {
            Ok(r) => r,
            Err(_) => Err(Refusal::Bad(Frame::error(
                ErrorCode::Malformed,
                format!("request not complete within {} s", REQUEST_TIMEOUT.as_secs()),
            ))),
        };
        if let Ok(Frame::PutChunks { count }) = request {
            return self.receive_chunks(send, recv, count).await;
        }
        // Whatever else the client sends on this stream is not wanted.
        let _ = recv.stop(VarInt::from_u32(stream_code::DONE));
        drop(recv);
        // A chunk answer counts for its class until the client has all of it: written is not
        // sent (the send buffer holds megabytes), and the controller must yield while the
        // bytes go out, not while they are queued.
        let counted = match &request {
            Ok(Frame::GetChunks { .. }) => Some(self.load.begin(TrafficClass::Foreground)),
            Ok(Frame::GetChunksBackground { .. }) => {
                Some(self.load.begin(TrafficClass::Background))
            }
            _ => None,
        };
        let result = match request {
            Ok(req) => self.answer(&mut send, req).await,
            Err(Refusal::Gone(why)) => {
                debug!(%why, "request stream abandoned by the client");
                return;
            }
            Err(Refusal::Bad(frame)) => {
                if let Frame::Error { code, message } = &frame {
                    warn!(?code, %message, "bad request");
                }
                self.metrics.request_errors.inc();
                let result = self.write_frame(&mut send, &frame).await;
                let strikes = self.bad_requests.fetch_add(1, Ordering::Relaxed) + 1;
                if strikes >= MAX_BAD_REQUESTS {
                    warn!(strikes, "closing connection: too many bad requests");
                    let _ = send.finish();
                    self.conn.close(
                        VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
                        b"too many bad requests",
                    );
                    return;
                }
                result
            }
        };
        match result {
            Ok(()) => {
                let _ = send.finish();
                if let Some(counted) = counted {
                    let _ = tokio::time::timeout(ANSWER_DELIVERY_WAIT, send.stopped()).await;
                    drop(counted);
                }
            }
            Err(e) => debug!(error = %e, "could not write the answer"),
        }
    }

    async fn answer(&self, send: &mut SendStream, req: Frame) -> Result<(), Unwritten> {
        let (content, inventory, backup) =
            (&*self.source.content, &*self.source.inventory, &*self.source.backup);
        let reply = match req {
            Frame::GetChunks { ids } => {
                return self.send_chunks(send, ids, TrafficClass::Foreground).await
            }
            Frame::GetChunksBackground { ids } => {
                return self.send_chunks(send, ids, TrafficClass::Background).await
            }
            Frame::GetManifest { name, version } => match self.fetchable(&name).await {
                Err(refused) => Err(refused),
                Ok(()) => match content.manifest(&name, version.as_deref()).await {
                    Ok(Some(signed)) if signed.len() < MAX_FRAME_BYTES => {
                        Ok(Frame::Manifest { signed })
                    }
                    Ok(Some(signed)) => Err(Frame::error(
                        ErrorCode::Internal,
                        format!("manifest root of {} bytes exceeds the frame limit", signed.len()),
                    )),
                    Ok(None) => Err(Frame::error(
                        ErrorCode::NotFound,
                        format!(
                            "layer {name}@{} not found",
                            version.as_deref().unwrap_or("latest")
                        ),
                    )),
                    Err(e) => Err(e.into_frame()),
                },
            },
            Frame::Have { ids } => self.have(ids).await,
            Frame::ListLayers => match content.layers().await {
                Ok(layers) => self.listable(layers).await.map(|layers| Frame::Layers { layers }),
                Err(e) => Err(e.into_frame()),
            },
            Frame::GetLatest { name } => match self.fetchable(&name).await {
                Err(refused) => Err(refused),
                Ok(()) => match content.latest(&name).await {
                    Ok(Some(a)) => Ok(Frame::Latest { statement: a.statement, note: a.note }),
                    Ok(None) => {
                        Err(Frame::error(ErrorCode::NotFound, format!("layer {name} not found")))
                    }
                    Err(e) => Err(e.into_frame()),
                },
            },
            Frame::GetEntitlements { site, known } => {
                match content.entitlements(&self.peer, site.as_deref(), known).await {
                    Ok((statement, seal)) => Ok(Frame::Entitlements { statement, seal }),
                    Err(e) => Err(e.into_frame()),
                }
            }
            Frame::GetRevocations { known } => Ok(Frame::Revocations {
                crl: self
                    .source
                    .revocations
                    .current()
                    .filter(|l| l.number() > known)
                    .map(|l| Bytes::copy_from_slice(l.der()))
                    .unwrap_or_default(),
            }),
            Frame::Renew { cert, csr } => {
                if self.source.revocations.revokes(&cert) {
                    Err(Frame::error(ErrorCode::Forbidden, "the certificate to renew is revoked"))
                } else {
                    match content.renew(&self.peer, cert, csr).await {
                        Ok(cert) => Ok(Frame::Renewed { cert }),
                        Err(e) => Err(e.into_frame()),
                    }
                }
            }
            Frame::GetAssignments => match content.assignments(&self.peer).await {
                Ok(assignments) => Ok(Frame::Assignments { assignments }),
                Err(e) => Err(e.into_frame()),
            },
            Frame::Register { device } => match inventory.register(&self.peer, *device).await {
                Ok(()) => Ok(Frame::Registered),
                Err(e) => Err(e.into_frame()),
            },
            Frame::GetDevices => match inventory.devices(&self.peer).await {
                Ok(devices) => Ok(Frame::Devices { devices }),
                Err(e) => Err(e.into_frame()),
            },
            Frame::Wake { targets } => match inventory.wake(&self.peer, targets).await {
                Ok(results) => Ok(Frame::WakeReport { results }),
                Err(e) => Err(e.into_frame()),
            },
            Frame::PutSnapshot(req) => match backup.put_snapshot(&self.peer, req).await {
                Ok(info) => Ok(Frame::SnapshotStored(info)),
                Err(e) => Err(e.into_frame()),
            },
            Frame::ListSnapshots { device } => match backup.snapshots(&self.peer, &device).await {
                Ok(snapshots) => Ok(Frame::Snapshots { snapshots }),
                Err(e) => Err(e.into_frame()),
            },
            Frame::GetSnapshot { device, id } => {
                match backup.snapshot(&self.peer, &device, id.as_deref()).await {
                    Ok((info, record, seal)) => Ok(Frame::Snapshot { info, record, seal }),
                    Err(e) => Err(e.into_frame()),
                }
            }
            Frame::GetPlan => match backup.plan(&self.peer).await {
                Ok((plan, seal)) => Ok(Frame::Plan { plan, seal }),
                Err(e) => Err(e.into_frame()),
            },
            // read_request only lets requests through.
            other => Err(Frame::error(
                ErrorCode::UnknownType,
                format!("frame type 0x{:02x} is not a request", other.type_byte()),
            )),
        };
        match reply {
            Ok(frame) => self.write_frame(send, &frame).await,
            Err(frame) => {
                if let Frame::Error { code, message } = &frame {
                    if *code == ErrorCode::NotFound {
                        debug!(%message, "not found");
                    } else {
                        warn!(?code, %message, "request failed");
                    }
                }
                self.write_error(send, &frame).await
            }
        }
    }

    /// Refuses a layer this peer may not fetch, with the same words whether it exists or not.
    async fn fetchable(&self, name: &str) -> Result<(), Frame> {
        let Some(access) = &self.source.access else { return Ok(()) };
        match access.may_fetch_layer(&self.peer, name).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Frame::error(
                ErrorCode::Forbidden,
                format!(
                    "layer {name} is not assigned to {} (nor to its site); ask an administrator \
                     to assign it",
                    self.peer
                ),
            )),
            Err(e) => Err(e.into_frame()),
        }
    }

    /// The layers of a listing this peer may fetch: one check per layer name, whatever the
    /// number of versions.
    async fn listable(&self, layers: Vec<wire::LayerRef>) -> Result<Vec<wire::LayerRef>, Frame> {
        let Some(access) = &self.source.access else { return Ok(layers) };
        let mut names = std::collections::HashMap::new();
        for l in &layers {
            if !names.contains_key(&l.name) {
                let may = access.may_fetch_layer(&self.peer, &l.name).await;
                names.insert(l.name.clone(), may.map_err(|e| e.into_frame())?);
            }
        }
        Ok(layers.into_iter().filter(|l| names[&l.name]).collect())
    }

    /// For each of `ids`, whether this peer may read it; None when the router lets every peer
    /// read every chunk.
    async fn readable(&self, ids: &[ChunkId]) -> Result<Option<Vec<bool>>, SourceError> {
        let Some(access) = &self.source.access else { return Ok(None) };
        let may = access.may_read(&self.peer, ids).await?;
        if may.len() != ids.len() {
            return Err(SourceError::Internal(format!(
                "chunk access answered {} flags for {} ids",
                may.len(),
                ids.len()
            )));
        }
        Ok(Some(may))
    }

    async fn have(&self, ids: Vec<ChunkId>) -> Result<Frame, Frame> {
        let may = self.readable(&ids).await.map_err(SourceError::into_frame)?;
        let mut flags = self.source.content.have(&ids).await.map_err(SourceError::into_frame)?;
        if flags.len() != ids.len() {
            return Err(Frame::error(
                ErrorCode::Internal,
                format!("source answered {} flags for {} ids", flags.len(), ids.len()),
            ));
        }
        // What the peer may not read is "not stored" to it, whether it is or not.
        for (f, m) in flags.iter_mut().zip(may.into_iter().flatten()) {
            *f &= m;
        }
        Ok(Frame::HaveReply { count: flags.len() as u32, bitmap: wire::pack_bits(&flags) })
    }

    /// The hot path: one Chunk or Missing frame per id in request order, then End. Lookups run
    /// up to CHUNK_READ_AHEAD ahead of the writes; payloads are written without a copy.
    ///
    /// Chunks the peer may not read: an endpoint's request is refused whole with `Forbidden`; a
    /// reflector's batch gathers many endpoints' misses, so there each such id is answered
    /// `Missing` and the rest are served. Either answer is what a chunk stored nowhere gets.
    async fn send_chunks(
        &self,
        send: &mut SendStream,
        ids: Vec<ChunkId>,
        class: TrafficClass,
    ) -> Result<(), Unwritten> {
        let mut unreadable = std::collections::HashSet::new();
        match self.readable(&ids).await {
            Ok(Some(may)) if self.peer.role == pki::Role::Reflector => {
                unreadable.extend(ids.iter().zip(&may).filter(|(_, m)| !**m).map(|(id, _)| *id));
            }
            Ok(Some(may)) if may.iter().any(|m| !m) => {
                let refused = may.iter().filter(|m| !**m).count();
                // The same words whether the chunks are stored or not.
                let frame = Frame::error(
                    ErrorCode::Forbidden,
                    format!(
                        "{refused} of the {} chunks asked for are not readable by {}: they are in \
                         no layer assigned to it or its site, and not among its own uploads",
                        ids.len(),
                        self.peer
                    ),
                );
                return self.write_error(send, &frame).await;
            }
            Ok(_) => {}
            Err(e) => return self.write_error(send, &e.into_frame()).await,
        }
        let started = Instant::now();
        let requested = ids.len();
        let source = &*self.source.content;
        let peer = &*self.peer;
        source.pull_ahead(peer, &ids[CHUNK_READ_AHEAD.min(ids.len())..], class);
        let unreadable = &unreadable;
        let mut lookups = futures::stream::iter(ids)
            .map(|id| async move {
                if unreadable.contains(&id) {
                    return Ok((id, None));
                }
                source.chunk_in(peer, id, class).await.map(|c| (id, c))
            })
            .buffered(CHUNK_READ_AHEAD);
        let (mut sent, mut missing, mut bytes) = (0usize, 0usize, 0u64);
        while let Some(item) = lookups.next().await {
            match item {
                Ok((id, Some(chunk))) => {
                    if chunk.id != id {
                        let frame = Frame::error(
                            ErrorCode::Internal,
                            format!("source returned chunk {} when asked for {}", chunk.id, id),
                        );
                        warn!("chunk source returned the wrong chunk");
                        return self.write_error(send, &frame).await;
                    }
                    let len = chunk.data.len() as u64;
                    let header = Bytes::copy_from_slice(&Frame::chunk_header(&chunk));
                    self.write_all(send, &mut [header, chunk.data]).await?;
                    self.metrics.served_bytes.inc_by(len);
                    self.metrics.served_chunks.inc();
                    sent += 1;
                    bytes += len;
                }
                Ok((id, None)) => {
                    self.write_all(send, &mut [Bytes::copy_from_slice(&missing_frame(&id))])
                        .await?;
                    missing += 1;
                }
                Err(e) => {
                    warn!(error = %e, sent, missing, requested, "chunk lookup failed");
                    return self.write_error(send, &e.into_frame()).await;
                }
            }
        }
        self.write_all(send, &mut [Bytes::from_static(&END_FRAME)]).await?;
        debug!(
            requested,
            sent,
            missing,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "GetChunks served"
        );
        Ok(())
    }

    /// An upload stream: `count` Chunk frames follow the PutChunks request. Each chunk is handed
    /// to the source (which verifies and stores it) before the next is read, so memory holds one
    /// frame; the first refused chunk ends the stream with an Error frame (chunks before it stay
    /// stored: they were verified, and a retry need not send them again).
    async fn receive_chunks(self, mut send: SendStream, mut recv: RecvStream, count: u32) {
        let (mut received, mut added) = (0u32, 0u32);
        let outcome: Result<(), Refusal> = async {
            let bad = |code, message: String| Refusal::Bad(Frame::Error { code, message });
            for _ in 0..count {
                let next = tokio::time::timeout(
                    UPLOAD_FRAME_TIMEOUT,
                    read_frame(&mut recv, MAX_FRAME_BYTES),
                )
                .await;
                let (ty, body) = match next {
                    Err(_) => {
                        return Err(bad(
                            ErrorCode::Malformed,
                            format!(
                                "no chunk frame within {} s ({received} of {count} received)",
                                UPLOAD_FRAME_TIMEOUT.as_secs()
                            ),
                        ))
                    }
                    Ok(Ok(Some(f))) => f,
                    Ok(Ok(None)) => {
                        return Err(bad(
                            ErrorCode::Malformed,
                            format!("stream ended after {received} of {count} chunk frames"),
                        ))
                    }
                    Ok(Err(ReadFrameError::Read(e))) => return Err(Refusal::Gone(e.to_string())),
                    Ok(Err(ReadFrameError::Wire(e))) => {
                        return Err(bad(wire_error_code(&e), e.to_string()))
                    }
                    Ok(Err(ReadFrameError::Truncated { have, need })) => {
                        return Err(bad(
                            ErrorCode::Malformed,
                            format!(
                                "stream finished inside a chunk frame ({have} of {need} bytes)"
                            ),
                        ))
                    }
                };
                let chunk = match Frame::decode(ty, body) {
                    Ok(Frame::Chunk(c)) => c,
                    Ok(other) => {
                        return Err(bad(
                            ErrorCode::Malformed,
                            format!(
                                "frame type 0x{:02x} in an upload stream, expected Chunk",
                                other.type_byte()
                            ),
                        ))
                    }
                    Err(e) => return Err(bad(wire_error_code(&e), e.to_string())),
                };
                let len = chunk.data.len() as u64;
                match self.source.backup.put_chunk(&self.peer, chunk).await {
                    Ok(new) => {
                        received += 1;
                        added += new as u32;
                        self.metrics.upload_bytes.inc_by(len);
                        self.metrics.upload_chunks.inc();
                        if new {
                            self.metrics.upload_new_chunks.inc();
                        }
                    }
                    Err(e) => return Err(Refusal::Bad(e.into_frame())),
                }
            }
            match recv.read_chunk(1, true).await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => {
                    Err(bad(ErrorCode::Malformed, format!("more than {count} chunk frames")))
                }
                Err(e) => Err(Refusal::Gone(e.to_string())),
            }
        }
        .await;
        let _ = recv.stop(VarInt::from_u32(stream_code::DONE));
        let result = match outcome {
            Ok(()) => {
                debug!(received, added, "PutChunks stored");
                self.write_frame(&mut send, &Frame::ChunksStored { received, added }).await
            }
            Err(Refusal::Gone(why)) => {
                debug!(%why, received, "upload stream abandoned by the client");
                return;
            }
            Err(Refusal::Bad(frame)) => {
                if let Frame::Error { code, message } = &frame {
                    warn!(?code, %message, received, "upload refused");
                }
                self.bad_requests.fetch_add(1, Ordering::Relaxed);
                self.write_error(&mut send, &frame).await
            }
        };
        if result.is_ok() {
            let _ = send.finish();
        }
    }

    /// Counts a failed request, then sends its error frame.
    async fn write_error(&self, send: &mut SendStream, frame: &Frame) -> Result<(), Unwritten> {
        self.metrics.request_errors.inc();
        self.write_frame(send, frame).await
    }

    async fn write_frame(&self, send: &mut SendStream, frame: &Frame) -> Result<(), Unwritten> {
        self.write_all(send, &mut [frame.to_bytes()]).await
    }

    /// Writes `bufs` whole, unless QUIC accepts none of their bytes for the write-stall limit.
    /// The deadline starts again whenever bytes are accepted: a slow reader on a slow link (a
    /// 4 MiB chunk takes 34 s at 1 Mbit/s) is never cut off, only one that stopped reading.
    async fn write_all(&self, send: &mut SendStream, bufs: &mut [Bytes]) -> Result<(), Unwritten> {
        let mut at = 0;
        while at < bufs.len() {
            if bufs[at].is_empty() {
                at += 1;
                continue;
            }
            // `write_chunks` is cancel safe: a timeout loses no bytes, and what it accepted is
            // cut off the front of `bufs`.
            let write = send.write_chunks(&mut bufs[at..]);
            match tokio::time::timeout(self.limits.write_stall, write).await {
                Ok(Ok(written)) => at += written.chunks,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(self.stalled(send)),
            }
        }
        Ok(())
    }

    /// The peer took no bytes of an answer for the write-stall limit: the stream is reset so
    /// that its buffered bytes are dropped and its task ends.
    fn stalled(&self, send: &mut SendStream) -> Unwritten {
        let stall = self.limits.write_stall;
        warn!(stall_s = stall.as_secs_f64(), "answer reset: the peer stopped reading it");
        self.metrics.stalled_answers.inc();
        let _ = send.reset(VarInt::from_u32(stream_code::STALLED));
        Unwritten::Stalled(stall)
    }
}

/// How long an upload stream may wait for its next chunk frame.
const UPLOAD_FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) const END_FRAME: [u8; 5] = [0, 0, 0, 1, frame_type::END];

pub(super) fn missing_frame(id: &ChunkId) -> [u8; 37] {
    let mut f = [0u8; 37];
    f[..4].copy_from_slice(&33u32.to_be_bytes());
    f[4] = frame_type::MISSING;
    f[5..].copy_from_slice(id.as_bytes());
    f
}

/// Why an answer was not written whole.
#[derive(Debug, thiserror::Error)]
enum Unwritten {
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
    #[error("the peer read nothing of the answer for {0:?}")]
    Stalled(std::time::Duration),
}

/// Reads the one request frame of a stream, then the end of the stream.
async fn read_request(recv: &mut RecvStream) -> Result<Frame, Refusal> {
    let bad = |code, message: String| Refusal::Bad(Frame::Error { code, message });
    let (ty, body) = match read_frame(recv, MAX_REQUEST_BYTES).await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Err(bad(ErrorCode::Malformed, "stream finished without a request".into()))
        }
        Err(ReadFrameError::Read(e)) => return Err(Refusal::Gone(e.to_string())),
        Err(ReadFrameError::Wire(e)) => return Err(bad(wire_error_code(&e), e.to_string())),
        Err(ReadFrameError::Truncated { have, need }) => {
            return Err(bad(
                ErrorCode::Malformed,
                format!("stream finished inside a frame ({have} of {need} bytes)"),
            ))
        }
    };
    if !matches!(
        ty,
        frame_type::GET_MANIFEST
            | frame_type::GET_CHUNKS
            | frame_type::GET_CHUNKS_BACKGROUND
            | frame_type::HAVE
            | frame_type::LIST_LAYERS
            | frame_type::GET_ASSIGNMENTS
            | frame_type::GET_LATEST
            | frame_type::GET_REVOCATIONS
            | frame_type::RENEW
            | frame_type::GET_ENTITLEMENTS
            | frame_type::REGISTER
            | frame_type::GET_DEVICES
            | frame_type::WAKE
            | frame_type::PUT_CHUNKS
            | frame_type::PUT_SNAPSHOT
            | frame_type::LIST_SNAPSHOTS
            | frame_type::GET_SNAPSHOT
            | frame_type::GET_PLAN
    ) {
        let known = Frame::decode(ty, Bytes::new())
            .map_or_else(|e| !matches!(e, wire::WireError::UnknownType(_)), |_| true);
        let message = if known {
            format!("frame type 0x{ty:02x} is not a request")
        } else {
            format!("unknown frame type 0x{ty:02x}")
        };
        return Err(bad(ErrorCode::UnknownType, message));
    }
    let frame = Frame::decode(ty, body).map_err(|e| bad(wire_error_code(&e), e.to_string()))?;
    if matches!(frame, Frame::PutChunks { .. }) {
        // Its chunk frames follow on the same stream.
        return Ok(frame);
    }
    // One request per stream: the client must finish its side right after the frame.
    match recv.read_chunk(1, true).await {
        Ok(None) => Ok(frame),
        Ok(Some(_)) => Err(bad(ErrorCode::Malformed, "data after the request frame".into())),
        Err(e) => Err(Refusal::Gone(e.to_string())),
    }
}

#[cfg(test)]
mod class_load_tests {
    use super::*;
    use crate::net::congestion::YieldSwitch;

    #[test]
    fn a_connection_yields_only_while_it_sends_background_alone() {
        let switch = Arc::new(YieldSwitch::default());
        let load = Arc::new(ClassLoad::new(Some(switch.clone())));
        let bg = load.begin(TrafficClass::Background);
        assert!(switch.is_on(), "prefetch alone yields");
        let fg = load.begin(TrafficClass::Foreground);
        assert!(!switch.is_on(), "a user's fetch on the same connection takes its fair share");
        let bg2 = load.begin(TrafficClass::Background);
        drop(fg);
        assert!(switch.is_on(), "back to prefetch alone");
        drop(bg);
        assert!(switch.is_on(), "one background answer is still going");
        drop(bg2);
        assert!(!switch.is_on(), "an idle connection does not yield");
    }
}
