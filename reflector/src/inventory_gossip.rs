//! Inventory gossip between the reflectors of a site: what each learnt of the site's devices
//! (registrations received, the seed's site inventory) is published on the site's inventory
//! topic of the mesh, and what the siblings publish is merged into this reflector's inventory
//! by last-seen. So a sibling can wake a machine by name even while the seed is out of reach.
//!
//! A registration is announced at once ([`WakeNode::register`]); the whole site inventory again
//! every `every`, so a sibling that joins later, or lost a message, catches up. The mesh admits
//! only records from verified reflectors of this site about devices of this site
//! (docs/protocol.md, section 12, "Device inventory gossip").

use crate::wake::WakeNode;
use oasis_mesh::MeshHandle;
use std::time::Duration;

/// Runs until the mesh task stops.
pub(crate) async fn run(wake: WakeNode, mesh: MeshHandle, every: Duration) {
    wake.set_mesh(mesh.clone()).await;
    let mut inbound = mesh.subscribe_devices();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = inbound.recv() => match batch {
                Some(b) => {
                    let n = wake.learn_from_sibling(&b.sender, b.records.clone()).await;
                    tracing::debug!(from = %b.sender, records = b.records.len(), learnt = n, "inventory gossip");
                }
                None => {
                    tracing::debug!("mesh stopped: no more inventory gossip");
                    return;
                }
            },
            _ = tick.tick() => mesh.announce_devices(wake.site_records().await),
        }
    }
}
