//! What one server lets its peers hold: connections in total and per node identity, requests
//! and answer bytes per connection, and how long an answer may wait for a peer that does not
//! read it.
//!
//! Why per identity and not per address: every peer proves a node identity at the handshake,
//! and several honest nodes can share an address (a NAT, a branch office behind one router),
//! while one stolen or misbehaving identity can connect from many. The total cap holds the
//! handshakes of peers without an identity too.
//!
//! A source address (IP and port: one client socket) whose connection was turned away after
//! its handshake (over its identity's share, revoked, refused by TLS, role not admitted), or
//! closed for its bad requests, has
//! its next connections refused before the handshake for [`ServeLimits::source_ban`]: a flood
//! from one socket then costs no handshakes. The port is part of it because honest nodes
//! behind one NAT share the IP.

use super::TransportOptions;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits [`super::serve`] holds every peer to. Defaults in docs/deploy-seed.md and
/// docs/deploy-reflector.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections (handshakes included) served at once; more are refused at the handshake
    /// with QUIC's `CONNECTION_REFUSED`.
    pub max_connections: u32,
    /// Connections one node identity may hold at once; another is closed right after its
    /// handshake with [`super::close_code::BUSY`].
    pub max_connections_per_peer: u32,
    /// Longest an answer waits for the peer to take more bytes (QUIC flow control holds a
    /// writer while the peer does not read). The stream is then reset with
    /// [`super::stream_code::STALLED`], so a reader that stopped reading holds no buffers.
    pub write_stall: Duration,
    /// Requests (bidirectional streams) one connection may have open at once; QUIC's stream
    /// credit holds the peer to it, so a further request waits until one ends.
    pub max_streams_per_connection: u32,
    /// Answer bytes one connection may have written and not yet acknowledged by the peer (QUIC's
    /// send window); writers wait beyond it. What answers hold in memory is at most this per
    /// connection, and `max_connections` times it in all.
    pub max_answer_bytes_per_connection: u64,
    /// How long a source address (IP and port) whose connection was turned away after its
    /// handshake has its next connections refused before the handshake. Zero turns it off.
    pub source_ban: Duration,
}

/// The smallest answer window accepted: below a few datagrams' worth, a connection barely moves.
pub const MIN_ANSWER_BYTES_PER_CONNECTION: u64 = 64 << 10;
/// The largest answer window accepted.
pub const MAX_ANSWER_BYTES_PER_CONNECTION: u64 = 1 << 30;

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            // A seed serves every site's reflectors and, where no reflector is, endpoints.
            max_connections: 4096,
            // A node opens one connection per server and task (a reflector: upstream, inventory
            // sync, wake relays, siblings); the rest covers reconnects while an old
            // connection is still timing out.
            max_connections_per_peer: 16,
            write_stall: Duration::from_secs(30),
            max_streams_per_connection: TransportOptions::default().max_concurrent_bidi_streams,
            max_answer_bytes_per_connection: TransportOptions::default().send_window,
            // Long enough that a flood from one socket costs a handshake per ban, short enough
            // that an honest node that went over its share once is soon back.
            source_ban: Duration::from_secs(10),
        }
    }
}

impl ServeLimits {
    /// Refuses limits a server could not run with.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.max_connections_per_peer == 0 {
            return Err("max_connections_per_peer must be at least 1".into());
        }
        if self.write_stall.is_zero() {
            return Err("write_stall must be longer than 0 s".into());
        }
        if self.max_streams_per_connection == 0 {
            return Err("max_streams_per_connection must be at least 1".into());
        }
        let answer = self.max_answer_bytes_per_connection;
        if !(MIN_ANSWER_BYTES_PER_CONNECTION..=MAX_ANSWER_BYTES_PER_CONNECTION).contains(&answer) {
            return Err(format!(
                "max_answer_bytes_per_connection must be between 64 KiB and 1 GiB (is {answer} bytes)"
            ));
        }
        Ok(())
    }

    /// `opts` with this server's caps per connection (requests at once, answer bytes in
    /// flight), for the endpoint the server listens on.
    pub fn transport(&self, opts: &TransportOptions) -> TransportOptions {
        TransportOptions {
            max_concurrent_bidi_streams: self.max_streams_per_connection,
            send_window: self.max_answer_bytes_per_connection,
            ..opts.clone()
        }
    }
}

/// Source addresses banned until an instant, bounded: when full, expired bans are dropped, and
/// if none has expired a new ban is not recorded (the other limits still hold).
#[derive(Debug, Default)]
pub(crate) struct SourceBans {
    until: Mutex<HashMap<SocketAddr, Instant>>,
}

/// Most source addresses banned at once.
pub const MAX_BANNED_SOURCES: usize = 65_536;

impl SourceBans {
    pub(crate) fn ban(&self, source: SocketAddr, hold: Duration) {
        if hold.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if until.len() >= MAX_BANNED_SOURCES {
            until.retain(|_, t| *t > now);
        }
        if until.len() < MAX_BANNED_SOURCES || until.contains_key(&source) {
            until.insert(source, now + hold);
        }
    }

    pub(crate) fn is_banned(&self, source: &SocketAddr) -> bool {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match until.get(source) {
            Some(t) if *t > Instant::now() => true,
            Some(_) => {
                until.remove(source);
                false
            }
            None => false,
        }
    }
}

/// Live connections per node identity. Shared by a server's connection tasks: each takes a
/// [`PeerSlot`] after the handshake and gives it back when its connection ends.
#[derive(Debug, Default)]
pub(crate) struct PeerSlots {
    held: Mutex<HashMap<String, u32>>,
}

impl PeerSlots {
    /// A slot for `peer`, or `None` when it holds `max` connections already.
    pub(crate) fn take(self: &Arc<Self>, peer: &str, max: u32) -> Option<PeerSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(peer.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot { slots: self.clone(), peer: peer.to_string() })
    }

    #[cfg(test)]
    fn held(&self, peer: &str) -> u32 {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).get(peer).copied().unwrap_or(0)
    }
}

/// One connection's place in its peer's count; given back on drop.
#[derive(Debug)]
pub(crate) struct PeerSlot {
    slots: Arc<PeerSlots>,
    peer: String,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Peers come and go: the map holds only those connected now.
                held.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_and_gets_slots_back_as_connections_end() {
        let slots = Arc::new(PeerSlots::default());
        let mut a: Vec<PeerSlot> =
            (0..3).map(|_| slots.take("a", 3).expect("within the cap")).collect();
        assert!(slots.take("a", 3).is_none(), "a fourth connection of the same peer is refused");
        let b = slots.take("b", 3).expect("another peer is not held to a's count");
        drop(a.pop());
        assert_eq!(slots.held("a"), 2);
        assert!(slots.take("a", 3).is_some(), "a slot comes back when a connection ends");
        drop(b);
        assert_eq!(slots.held("b"), 0);
        assert!(!slots.held.lock().unwrap().contains_key("b"), "gone peers leave no entry");
    }

    #[test]
    fn limits_that_could_not_serve_are_refused() {
        assert!(ServeLimits::default().validate().is_ok());
        let zero = ServeLimits { max_connections: 0, ..ServeLimits::default() };
        assert!(zero.validate().unwrap_err().contains("max_connections"));
        let stall = ServeLimits { write_stall: Duration::ZERO, ..ServeLimits::default() };
        assert!(stall.validate().unwrap_err().contains("write_stall"));
        let streams = ServeLimits { max_streams_per_connection: 0, ..ServeLimits::default() };
        assert!(streams.validate().unwrap_err().contains("max_streams_per_connection"));
        for bytes in [1000, 2 << 30] {
            let l =
                ServeLimits { max_answer_bytes_per_connection: bytes, ..ServeLimits::default() };
            assert!(
                l.validate().unwrap_err().contains("max_answer_bytes_per_connection"),
                "{bytes}"
            );
        }
    }

    #[test]
    fn the_caps_per_connection_go_into_the_servers_transport() {
        let l = ServeLimits {
            max_streams_per_connection: 32,
            max_answer_bytes_per_connection: 1 << 20,
            ..ServeLimits::default()
        };
        let t = l.transport(&TransportOptions::default());
        assert_eq!((t.max_concurrent_bidi_streams, t.send_window), (32, 1 << 20));
        assert_eq!(t.receive_window, TransportOptions::default().receive_window, "the rest kept");
    }
}
