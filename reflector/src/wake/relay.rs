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
        if !(peer.role == Role::Seed || peer.role == Role::Reflector && self.same_site(peer)) {
            return Err(SourceError::Refused(format!(
                "{} {} may not ask this reflector to wake machines",
                peer.role, peer.name
            )));
        }
        self.metrics.relayed.inc();
        tracing::info!(by = %peer.name, targets = targets.len(), "relaying a wake");
        Ok(self.send_here(targets).await)
    }

    pub(super) async fn send_here(&self, targets: Vec<WakeTarget>) -> Vec<WakeSent> {
        let results = wol::relay::send_all(targets, self.settings.send).await;
        for r in &results {
            self.metrics.packets.inc_by(u64::from(r.packets));
        }
        results
    }

    pub(super) fn endpoint(&self) -> Result<quinn::Endpoint, String> {
        let mut e = self.client_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ep) = &*e {
            return Ok(ep.clone());
        }
        let ep = net::client_endpoint(&self.identity, &TransportOptions::default())
            .map_err(|e| e.to_string())?;
        *e = Some(ep.clone());
        Ok(ep)
    }

    /// Sends the wakes for `names` through the relays on their subnets (this box when it is
    /// one of them); returns the failures as (name, reason).
    pub(super) async fn wake_names(&self, names: &[String]) -> Vec<(String, String)> {
        let inventory: Vec<DeviceEntry> = {
            let mut v: Vec<DeviceEntry> =
                self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
            v.retain(|d| d.info.name != self.me.name);
            v.push(self.self_entry());
            v
        };
        let mut failures = Vec::new();
        let mut by_relay: BTreeMap<String, (Vec<route::RelayChoice>, Vec<WakeTarget>)> =
            BTreeMap::new();
        for n in names {
            match route::route(n, &inventory) {
                Ok(r) => {
                    let key = r.relays.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(",");
                    let slot =
                        by_relay.entry(key).or_insert_with(|| (r.relays.clone(), Vec::new()));
                    slot.1.push(r.target);
                }
                Err(e) => failures.push((n.clone(), e.to_string())),
            }
        }
        for (_, (relays, targets)) in by_relay {
            let mut problems = Vec::new();
            let mut sent = None;
            for relay in &relays {
                let r = if relay.name == self.me.name {
                    Ok(self.send_here(targets.clone()).await)
                } else {
                    self.ask_relay(relay, targets.clone()).await
                };
                match r {
                    Ok(results) => {
                        sent = Some(results);
                        break;
                    }
                    Err(e) => {
                        problems.push(format!("relay {} asleep or unreachable: {e}", relay.name))
                    }
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

    pub(super) async fn ask_relay(
        &self,
        relay: &route::RelayChoice,
        targets: Vec<WakeTarget>,
    ) -> Result<Vec<WakeSent>, String> {
        let ep = self.endpoint()?;
        let c = tokio::time::timeout(Duration::from_secs(5), Client::connect(&ep, relay.addr))
            .await
            .map_err(|_| format!("no answer from {} within 5 s", relay.addr))?
            .map_err(|e| e.to_string())?;
        let r = c.wake(targets).await.map_err(|e| e.to_string());
        c.close();
        r
    }
}
