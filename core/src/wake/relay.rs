//! What a relay does with a `Wake` request: send each target's packets from this box.

use super::msg::{WakeSent, WakeTarget};
use super::packet::{self, Mac, Password, SendOptions, DEFAULT_PORT};
use futures::StreamExt;
use std::net::{Ipv4Addr, SocketAddr};

/// Targets sent concurrently (each one's repeats are spaced apart).
const CONCURRENT_TARGETS: usize = 64;

/// The destinations for a target without one: the broadcast address of each of this box's
/// IPv4 subnets on port 9, or the limited broadcast when it has none.
pub fn default_destinations() -> Vec<SocketAddr> {
    let b = super::iface::local_interfaces().broadcasts;
    if b.is_empty() {
        return vec![SocketAddr::from((Ipv4Addr::BROADCAST, DEFAULT_PORT))];
    }
    b.into_iter().map(|a| SocketAddr::from((a, DEFAULT_PORT))).collect()
}

/// Sends every target's packets; one result per target, in order. Never fails as a whole: a
/// target that cannot be sent carries its error.
pub async fn send_all(targets: Vec<WakeTarget>, opts: SendOptions) -> Vec<WakeSent> {
    let defaults = default_destinations();
    futures::stream::iter(targets)
        .map(|t| {
            let defaults = defaults.clone();
            async move { send_one(t, &defaults, opts).await }
        })
        .buffered(CONCURRENT_TARGETS)
        .collect()
        .await
}

async fn send_one(t: WakeTarget, defaults: &[SocketAddr], opts: SendOptions) -> WakeSent {
    let mut out = WakeSent {
        device: t.device.clone(),
        mac: t.mac,
        sent_to: String::new(),
        packets: 0,
        error: String::new(),
    };
    let password = match Password::from_wire(&t.password) {
        Ok(p) => p,
        Err(e) => {
            out.error = e.to_string();
            return out;
        }
    };
    let dests: Vec<SocketAddr> = t.to.map(|d| vec![d]).unwrap_or_else(|| defaults.to_vec());
    let mut sent_to = Vec::new();
    let mut errors = Vec::new();
    for d in dests {
        match packet::send(Mac(t.mac), d, password.as_ref(), opts).await {
            Ok((n, _)) => {
                out.packets = out.packets.saturating_add(n.min(255) as u8);
                sent_to.push(d.to_string());
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    out.sent_to = sent_to.join(",");
    if out.packets == 0 {
        out.error = errors.join("; ");
    }
    out
}

/// A node that only relays wakes (an awake endpoint on a subnet without a reflector): serves
/// `Wake` from the seed or a reflector of its own site, nothing else. Chunk requests find
/// nothing here.
pub struct RelayService {
    me: crate::pki::PeerInfo,
    send: SendOptions,
    packets: std::sync::atomic::AtomicU64,
}

impl RelayService {
    pub fn new(me: crate::pki::PeerInfo, send: SendOptions) -> RelayService {
        RelayService { me, send, packets: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Magic packets this relay has sent (repeats included).
    pub fn packets_sent(&self) -> u64 {
        self.packets.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A relay serves no content (see [`crate::net::Refuse`]) and keeps no inventory: it wakes.
impl crate::net::InventorySource for RelayService {
    async fn wake(
        &self,
        peer: &crate::pki::PeerInfo,
        targets: Vec<WakeTarget>,
    ) -> Result<Vec<WakeSent>, crate::net::SourceError> {
        use crate::pki::Role;
        let allowed = peer.role == Role::Seed
            || peer.role == Role::Reflector && peer.site.is_some() && peer.site == self.me.site;
        if !allowed {
            return Err(crate::net::SourceError::Refused(format!(
                "{} {} may not ask {} to wake machines",
                peer.role, peer.name, self.me.name
            )));
        }
        tracing::info!(by = %peer.name, targets = targets.len(), "relaying a wake");
        let results = send_all(targets, self.send).await;
        let n: u64 = results.iter().map(|r| u64::from(r.packets)).sum();
        self.packets.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(results)
    }
}
