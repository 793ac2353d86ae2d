//! What one server lets its peers hold: connections in total and per node identity, and how
//! long an answer may wait for a peer that does not read it.
//!
//! Why per identity and not per address: every peer proves a node identity at the handshake,
//! and several honest nodes can share an address (a NAT, a branch office behind one router),
//! while one stolen or misbehaving identity can connect from many. The total cap holds the
//! handshakes of peers without an identity too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

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
        Ok(())
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
    }
}
