//! Relaying wakes: sending magic packets from this box, or asking the awake relay on the
//! target's subnet to.

use super::*;

impl WakeNode {
    /// A `Wake` from the seed or a sibling: send the packets from this box.
    pub async fn wake(
        &self,
        peer: &PeerInfo,
        targets: Vec<WakeTarget>,
    ) -> Result<Vec<WakeSent>, SourceError> {
        let fixed = &self.fixed;
        if !(peer.role == Role::Seed || peer.role == Role::Reflector && fixed.same_site(peer)) {
            return Err(SourceError::Refused(format!(
                "{} {} may not ask this reflector to wake machines",
                peer.role, peer.name
            )));
        }
        fixed.metrics.relayed.inc();
        tracing::info!(by = %peer.name, targets = targets.len(), "relaying a wake");
        Ok(fixed.send_here(targets).await)
    }
}

impl Fixed {
    async fn send_here(&self, targets: Vec<WakeTarget>) -> Vec<WakeSent> {
        let results = wol::relay::send_all(targets, self.settings.send).await;
        for r in &results {
            self.metrics.packets.inc_by(u64::from(r.packets));
        }
        results
    }
}

impl WakeState {
    /// The QUIC endpoint other relays are asked through (made on first use).
    pub(super) fn endpoint(&mut self, fixed: &Fixed) -> Result<quinn::Endpoint, String> {
        if let Some(ep) = &self.client_endpoint {
            return Ok(ep.clone());
        }
        let ep = net::client_endpoint(&fixed.identity, &TransportOptions::default())
            .map_err(|e| e.to_string())?;
        self.client_endpoint = Some(ep.clone());
        Ok(ep)
    }
}

/// Sends the wakes for `names` through the relays on their subnets in `inventory` (this box
/// when it is one of them); returns the failures as (name, reason). Runs beside the wake
/// task's loop.
pub(super) async fn wake_names(
    fixed: Arc<Fixed>,
    inventory: Vec<DeviceEntry>,
    endpoint: Result<quinn::Endpoint, String>,
    names: Vec<String>,
) -> Vec<(String, String)> {
    let mut failures = Vec::new();
    let mut by_relay: BTreeMap<String, (Vec<route::RelayChoice>, Vec<WakeTarget>)> =
        BTreeMap::new();
    for n in &names {
        match route::route(n, &inventory) {
            Ok(r) => {
                let key = r.relays.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(",");
                let slot = by_relay.entry(key).or_insert_with(|| (r.relays.clone(), Vec::new()));
                slot.1.push(r.target);
            }
            Err(e) => failures.push((n.clone(), e.to_string())),
        }
    }
    for (_, (relays, targets)) in by_relay {
        let mut problems = Vec::new();
        let mut sent = None;
        for relay in &relays {
            let r = if relay.name == fixed.me.name {
                Ok(fixed.send_here(targets.clone()).await)
            } else {
                match &endpoint {
                    Ok(ep) => ask_relay(ep, relay, targets.clone()).await,
                    Err(e) => Err(e.clone()),
                }
            };
            match r {
                Ok(results) => {
                    sent = Some(results);
                    break;
                }
                Err(e) => problems.push(format!("relay {} asleep or unreachable: {e}", relay.name)),
            }
        }
        match sent {
            Some(results) => {
                for r in results.into_iter().filter(|r| !r.error.is_empty()) {
                    failures.push((r.device, r.error));
                }
            }
            None => {
                for t in targets {
                    failures.push((t.device, problems.join("; ")));
                }
            }
        }
    }
    failures
}

async fn ask_relay(
    ep: &quinn::Endpoint,
    relay: &route::RelayChoice,
    targets: Vec<WakeTarget>,
) -> Result<Vec<WakeSent>, String> {
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect(ep, relay.addr, net::accept::RELAY),
    )
    .await
    .map_err(|_| format!("no answer from {} within 5 s", relay.addr))?
    .map_err(|e| e.to_string())?;
    let r = c.wake(targets).await.map_err(|e| e.to_string());
    c.close();
    r
}
