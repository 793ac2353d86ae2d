//! The QUIC transport: endpoint set-up, the serving side ([`serve`] over a [`Router`] of sources) and
//! the client side ([`Client`]).
//!
//! Everything here is a thin I/O shell around [`crate::wire`]: a request is one frame on its own
//! bidirectional stream, the answer is one or more frames on the same stream, and both sides
//! finish their send half when done. docs/protocol.md is the normative description.
//!
//! Limits are enforced before anything is buffered: a server reads at most
//! [`wire::MAX_REQUEST_BYTES`] per request, a client at most [`wire::MAX_FRAME_BYTES`] per
//! answer frame. A misbehaving peer gets a typed `Error` frame on the offending stream and, if it
//! keeps at it, its connection closed with [`close_code::PROTOCOL_VIOLATION`]; it never takes
//! the server down.

mod client;
pub mod congestion;
pub mod credentials;
mod limits;
mod router;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ChunkReplies, ChunkReply, Client, FetchedManifest};
pub use limits::ServeLimits;
pub use router::{
    Access, BackupSource, ContentSource, InventorySource, LatestAnswer, Refuse, Router, SourceError,
};
pub use server::serve;

use crate::pki::{IdentityError, NodeIdentity};
use crate::wire::{self, ErrorCode, WireError};
use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, RecvStream, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long [`Client::connect`] waits for the QUIC + TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server waits for a complete request frame (and the end of the request stream)
/// after a stream was opened; a slower request is answered with `Error(Malformed)`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunk lookups a server keeps in flight per GetChunks stream.
pub const CHUNK_READ_AHEAD: usize = 8;
/// Bad requests (error frames sent) a connection may make before the server closes it.
pub const MAX_BAD_REQUESTS: u32 = 32;

/// Application error codes of QUIC `CONNECTION_CLOSE` frames.
pub mod close_code {
    /// Orderly close: the client is done (or the server is shutting down).
    pub const NORMAL: u32 = 0;
    /// The peer kept sending malformed or oversized requests.
    pub const PROTOCOL_VIOLATION: u32 = 1;
    /// The peer's certificate carries no usable Oasis identity, or its role is not admitted.
    pub const FORBIDDEN: u32 = 2;
    /// The peer's node identity holds as many connections as the server allows one node
    /// ([`super::ServeLimits::max_connections_per_peer`]); retry once one has closed.
    pub const BUSY: u32 = 3;
}

/// Application error codes of `STOP_SENDING` / `RESET_STREAM` frames.
pub mod stream_code {
    /// The receiver wants no more data on this stream (request already answered or refused,
    /// or the reader lost interest in the rest of an answer).
    pub const DONE: u32 = 0;
    /// The server reset an answer of which the client took no bytes for its write-stall limit
    /// ([`super::ServeLimits::write_stall`]).
    pub const STALLED: u32 = 1;
}

/// QUIC transport parameters and UDP socket sizing shared by servers and clients.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// Flow-control window of one stream (bytes in flight per request).
    pub stream_receive_window: u64,
    /// Flow-control window of a whole connection.
    pub receive_window: u64,
    /// Bytes a sender buffers per connection before writes wait (back-pressure).
    pub send_window: u64,
    /// Concurrent requests (bidirectional streams) a server accepts per connection.
    pub max_concurrent_bidi_streams: u32,
    /// Interval of QUIC PINGs keeping an idle connection (and NAT bindings) alive.
    pub keep_alive: Option<Duration>,
    /// A connection with no traffic from the peer for this long is dropped.
    pub idle_timeout: Duration,
    /// SO_RCVBUF and SO_SNDBUF of the UDP socket (the kernel may cap them; best effort).
    pub socket_buffer_bytes: usize,
    /// The congestion controller of every connection.
    pub congestion: Congestion,
}

/// Which congestion controller connections use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// Oasis's own ([`congestion::Pipe`]): fills lossy long links, yields while a connection
    /// carries only background traffic.
    #[default]
    Pipe,
    /// quinn's default, loss-based like TCP's: the reference and the competing flow of the
    /// benchmarks.
    Cubic,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            stream_receive_window: 16 << 20,
            receive_window: 64 << 20,
            send_window: 64 << 20,
            max_concurrent_bidi_streams: 256,
            keep_alive: Some(Duration::from_secs(5)),
            idle_timeout: Duration::from_secs(30),
            socket_buffer_bytes: 4 << 20,
            congestion: Congestion::Pipe,
        }
    }
}

impl TransportOptions {
    /// The quinn transport config; `accept_streams` is false for a pure client (servers never
    /// open streams towards clients).
    pub fn transport_config(&self, accept_streams: bool) -> Result<TransportConfig, String> {
        let var = |v: u64, what: &str| {
            VarInt::from_u64(v).map_err(|_| format!("{what} {v} is too large for QUIC"))
        };
        let mut t = TransportConfig::default();
        match self.congestion {
            Congestion::Pipe => {
                t.congestion_controller_factory(Arc::new(congestion::PipeConfig::new()))
            }
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
        };
        t.stream_receive_window(var(self.stream_receive_window, "stream_receive_window")?)
            .receive_window(var(self.receive_window, "receive_window")?)
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(if accept_streams {
                VarInt::from_u32(self.max_concurrent_bidi_streams)
            } else {
                VarInt::from_u32(0)
            })
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .keep_alive_interval(self.keep_alive)
            .max_idle_timeout(Some(
                IdleTimeout::try_from(self.idle_timeout)
                    .map_err(|_| format!("idle_timeout {:?} is too large", self.idle_timeout))?,
            ));
        Ok(t)
    }
}

/// Which servers a client accepts, by the role their certificate names ([`Client::connect`]).
pub mod accept {
    use crate::pki::Role;

    /// Layers and chunks: the seed or a reflector (fetch, apply, discovery, a reflector's
    /// upstream, which may be another reflector, and registering for wakes).
    pub const CONTENT: &[Role] = &[Role::Seed, Role::Reflector];
    /// The seed alone: a device's own data and plan (upload, restore, provision).
    pub const SEED: &[Role] = &[Role::Seed];
    /// A reflector of the mesh (sibling fetches).
    pub const REFLECTOR: &[Role] = &[Role::Reflector];
    /// A wake relay: a reflector, or an awake endpoint on the target's subnet.
    pub const RELAY: &[Role] = &[Role::Reflector, Role::Endpoint];
    /// Any enrolled node (diagnostics and tests).
    pub const ANY: &[Role] = &Role::ALL;
}

/// Everything that can go wrong on the network side; each variant names the peer (or local)
/// address concerned.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Building the TLS/QUIC configuration or binding the UDP socket failed.
    #[error("setting up the QUIC endpoint on {addr}: {source}")]
    Setup {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection could not be established (handshake refused, bad peer certificate...).
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server's certificate names a role this connection does not accept (an endpoint
    /// posing as the seed, say); the connection was closed before any request.
    #[error("{addr} is {peer}, but this connection accepts only a {accepted}")]
    Role { addr: SocketAddr, peer: String, accepted: String },
    /// An established connection was lost or closed.
    #[error("connection to {addr} lost: {source}")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    /// A stream failed (reset or stopped by the peer, ...).
    #[error("stream to {addr}: {problem}")]
    Stream { addr: SocketAddr, problem: String },
    /// The peer sent a frame that does not decode or exceeds the limits.
    #[error("bad frame from {addr}: {source}")]
    Wire {
        addr: SocketAddr,
        #[source]
        source: WireError,
    },
    /// The peer answered with an `Error` frame.
    #[error("{addr} refused the request ({code:?}): {message}")]
    Remote { addr: SocketAddr, code: ErrorCode, message: String },
    /// Something did not happen in time.
    #[error("{addr}: timed out {what}")]
    Timeout { addr: SocketAddr, what: &'static str },
    /// The peer broke the protocol (wrong frame, reply out of order, truncated answer...).
    #[error("protocol violation by {addr}: {problem}")]
    Protocol { addr: SocketAddr, problem: String },
    /// The caller asked for something the protocol cannot carry (too many ids, long name...);
    /// nothing was sent.
    #[error("invalid request to {addr}: {problem}")]
    Request { addr: SocketAddr, problem: String },
    /// The peer does not hold a chunk that the caller needed.
    #[error("{addr} does not hold chunk {id}")]
    Missing { addr: SocketAddr, id: crate::chunk::ChunkId },
    /// The manifest the peer sent does not verify, is not the one asked for, or its body does
    /// not assemble.
    #[error("manifest from {addr}: {source}")]
    Manifest {
        addr: SocketAddr,
        #[source]
        source: crate::manifest::ManifestError,
    },
}

impl NetError {
    /// The address of the peer (or of the local endpoint for `Setup`).
    pub fn addr(&self) -> SocketAddr {
        match self {
            NetError::Setup { addr, .. }
            | NetError::Connect { addr, .. }
            | NetError::Role { addr, .. }
            | NetError::Connection { addr, .. }
            | NetError::Stream { addr, .. }
            | NetError::Wire { addr, .. }
            | NetError::Remote { addr, .. }
            | NetError::Timeout { addr, .. }
            | NetError::Protocol { addr, .. }
            | NetError::Request { addr, .. }
            | NetError::Missing { addr, .. }
            | NetError::Manifest { addr, .. } => *addr,
        }
    }

    /// The code of an `Error` frame answer, if this is one.
    pub fn remote_code(&self) -> Option<ErrorCode> {
        match self {
            NetError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for an `Error(NotFound)` answer.
    pub fn is_not_found(&self) -> bool {
        self.remote_code() == Some(ErrorCode::NotFound)
    }

    fn setup(addr: SocketAddr, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        NetError::Setup { addr, source: e.into() }
    }
}

/// A UDP socket with the configured buffer sizes, non-blocking, bound to `addr`.
fn udp_socket(addr: SocketAddr, opts: &TransportOptions) -> Result<std::net::UdpSocket, NetError> {
    let err = |what: &str, e: std::io::Error| NetError::setup(addr, format!("{what}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| err("creating the UDP socket", e))?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it; a v6-only system still works for v6 peers.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let n = opts.socket_buffer_bytes;
    if let Err(e) = socket.set_recv_buffer_size(n) {
        tracing::debug!(error = %e, bytes = n, "cannot set SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(n) {
        tracing::debug!(error = %e, bytes = n, "cannot set SO_SNDBUF");
    }
    socket.set_nonblocking(true).map_err(|e| err("making the socket non-blocking", e))?;
    socket.bind(&addr.into()).map_err(|e| err("binding", e))?;
    tracing::debug!(
        %addr,
        rcvbuf = socket.recv_buffer_size().unwrap_or(0),
        sndbuf = socket.send_buffer_size().unwrap_or(0),
        "UDP socket bound"
    );
    Ok(socket.into())
}

fn client_config(
    id: &NodeIdentity,
    opts: &TransportOptions,
    addr: SocketAddr,
) -> Result<quinn::ClientConfig, NetError> {
    let tls = id.rustls_client_config().map_err(|e: IdentityError| NetError::setup(addr, e))?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| NetError::setup(addr, e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(
        opts.transport_config(false).map_err(|e| NetError::setup(addr, e))?,
    ));
    Ok(cfg)
}

fn server_config(
    id: &NodeIdentity,
    opts: &TransportOptions,
    addr: SocketAddr,
) -> Result<quinn::ServerConfig, NetError> {
    let tls = id.rustls_server_config().map_err(|e| NetError::setup(addr, e))?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| NetError::setup(addr, e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(
        opts.transport_config(true).map_err(|e| NetError::setup(addr, e))?,
    ));
    Ok(cfg)
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    client: quinn::ClientConfig,
    opts: &TransportOptions,
) -> Result<quinn::Endpoint, NetError> {
    let socket = udp_socket(addr, opts)?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| NetError::setup(addr, e))?;
    ep.set_default_client_config(client);
    Ok(ep)
}

/// A serving endpoint bound to `addr` (port 0 picks one; see `local_addr()`). It also carries a
/// client config, so the same endpoint can dial out (reflectors do). Must be called within a
/// tokio runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    id: &NodeIdentity,
    opts: &TransportOptions,
) -> Result<quinn::Endpoint, NetError> {
    let server = server_config(id, opts, addr)?;
    let client = client_config(id, opts, addr)?;
    endpoint(addr, Some(server), client, opts)
}

/// Longest wait for an endpoint's closed connections to drain: three probe timeouts, about
/// 0.1 s on a LAN and more over a WAN, during which a lost CONNECTION_CLOSE is sent again.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Waits (up to [`CLOSE_DRAIN`]) until the connections of an endpoint closed with
/// `quinn::Endpoint::close` have drained. A process that exits without this can drop the close
/// frames still queued, and its peers then hold the dead connection until a timeout.
pub async fn drain(endpoint: &quinn::Endpoint) {
    let _ = tokio::time::timeout(CLOSE_DRAIN, endpoint.wait_idle()).await;
}

/// A client-only endpoint on `0.0.0.0:0` (IPv4 peers). Use [`client_endpoint_for`] to reach IPv6
/// peers. Must be called within a tokio runtime.
pub fn client_endpoint(
    id: &NodeIdentity,
    opts: &TransportOptions,
) -> Result<quinn::Endpoint, NetError> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    endpoint(addr, None, client_config(id, opts, addr)?, opts)
}

/// A client-only endpoint on the unspecified address of `remote`'s family, port 0.
pub fn client_endpoint_for(
    remote: SocketAddr,
    id: &NodeIdentity,
    opts: &TransportOptions,
) -> Result<quinn::Endpoint, NetError> {
    let addr = match remote {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    endpoint(addr, None, client_config(id, opts, addr)?, opts)
}

/// Why reading a frame off a stream failed.
#[derive(Debug)]
pub(crate) enum ReadFrameError {
    /// The stream or connection failed underneath.
    Read(quinn::ReadError),
    /// The length prefix is zero or over the limit.
    Wire(WireError),
    /// The stream ended inside a frame.
    Truncated { have: usize, need: usize },
}

impl From<quinn::ReadError> for ReadFrameError {
    fn from(e: quinn::ReadError) -> Self {
        ReadFrameError::Read(e)
    }
}

/// Reads one frame (`type`, `body`) off `recv`, refusing a length over `max` before buffering.
///
/// `Ok(None)` when the stream ends cleanly at a frame boundary.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<(u8, Bytes)>, ReadFrameError> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match recv.read(&mut head[got..]).await? {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => return Err(ReadFrameError::Truncated { have: got, need: 4 }),
        }
    }
    let len = u32::from_be_bytes(head) as usize;
    wire::check_len(len, max).map_err(ReadFrameError::Wire)?;
    let mut body = read_exactly(recv, len).await?;
    let ty = body[0];
    let _ = body.split_to(1);
    Ok(Some((ty, body)))
}

/// Reads exactly `len` (> 0) bytes; a single received segment is returned without a copy.
async fn read_exactly(recv: &mut RecvStream, len: usize) -> Result<Bytes, ReadFrameError> {
    let truncated = |have| ReadFrameError::Truncated { have, need: len };
    let first = match recv.read_chunk(len, true).await? {
        Some(c) => c.bytes,
        None => return Err(truncated(0)),
    };
    if first.len() == len {
        return Ok(first);
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.extend_from_slice(&first);
    while buf.len() < len {
        match recv.read_chunk(len - buf.len(), true).await? {
            Some(c) => buf.extend_from_slice(&c.bytes),
            None => return Err(truncated(buf.len())),
        }
    }
    Ok(buf.freeze())
}

/// The error code a wire decoding failure is answered with.
pub(crate) fn wire_error_code(e: &WireError) -> ErrorCode {
    match e {
        WireError::TooLarge { .. } => ErrorCode::TooLarge,
        WireError::UnknownType(_) => ErrorCode::UnknownType,
        WireError::Malformed { .. } | WireError::Empty => ErrorCode::Malformed,
    }
}
