//! The seed in the reflector mesh: it proves its enrolment like a reflector (a hello signed with
//! its node certificate, role seed), heartbeats with its serving address, announces every
//! published layer as complete and provides it in Kademlia (a provider record keyed by the
//! layer digest), so that reflectors can bootstrap from the seed alone and find each other
//! through it (identify fills the seed's routing table; their Kademlia queries return it).
//!
//! Reflectors never treat the seed as a sibling: its heartbeats carry no site in their view
//! (see `oasis-mesh`), so it is not a holder they ask over the LAN, not a site's WAN fetcher,
//! and its WAN demand (always 0) is not counted in any site's shares.

use anyhow::Context;
use oasis_core::gossip::LayerDigest;
use oasis_core::metrics::NodeMetrics;
use oasis_core::pki::NodeIdentity;
use oasis_core::store::ChunkStore;
use oasis_mesh::{Holding, Mesh, MeshConfig, MeshHandle};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How often the store is looked at for layers published while the seed runs.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// The seed's mesh node and the task announcing its layers.
pub struct SeedMesh {
    pub handle: MeshHandle,
    task: JoinHandle<anyhow::Result<()>>,
    announcer: JoinHandle<()>,
}

impl SeedMesh {
    /// Starts the mesh (`oasis-seed serve`'s `--p2p-listen`, `--bootstrap`, `--no-mdns` and
    /// `--advertise` in `config`) with the seed's identity (`DATA/node.pem`, `DATA/p2p.key`) and announces
    /// the store's layers now and whenever new ones are published.
    pub fn start(
        config: MeshConfig,
        identity: &NodeIdentity,
        data: &Path,
        store: Arc<ChunkStore>,
        metrics: &NodeMetrics,
    ) -> anyhow::Result<SeedMesh> {
        let serving = config.serving_addr;
        let (handle, task) =
            Mesh::start(config, identity, data).context("starting the seed's mesh node")?;
        metrics.with_registry(|r| handle.metrics().register(r));
        tracing::info!(peer_id = %handle.peer_id(), serving = ?serving, "seed joined the mesh");
        let key = *identity.trust().manifest_key();
        let announce = announce_loop(handle.clone(), store, key);
        let announcer =
            tokio::spawn(announce.instrument(tracing::info_span!("task", task = "mesh-announce")));
        Ok(SeedMesh { handle, task, announcer })
    }

    /// Leaves the mesh (reflectors expire the seed after 3 heartbeats).
    pub fn shutdown(&self) {
        self.announcer.abort();
        self.handle.shutdown();
    }

    /// [`shutdown`](Self::shutdown), then waits for the mesh task to end.
    pub async fn stop(self) {
        self.shutdown();
        let _ = self.task.await;
    }
}

/// Announces every layer of the store not yet announced, every [`ANNOUNCE_EVERY`].
async fn announce_loop(mesh: MeshHandle, store: Arc<ChunkStore>, key: ed25519_dalek::VerifyingKey) {
    let mut announced: HashSet<LayerDigest> = HashSet::new();
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (m, s, known) = (mesh.clone(), store.clone(), announced.clone());
        match tokio::task::spawn_blocking(move || announce_new(&m, &s, &key, &known)).await {
            Ok(Ok(new)) => announced.extend(new),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot list layers for the mesh")
            }
            Err(e) => tracing::warn!(error = %e, "announcing layers to the mesh failed"),
        }
    }
}

/// Announces the store's layers missing from `known` as complete; returns their digests.
fn announce_new(
    mesh: &MeshHandle,
    store: &ChunkStore,
    key: &ed25519_dalek::VerifyingKey,
    known: &HashSet<LayerDigest>,
) -> anyhow::Result<Vec<LayerDigest>> {
    let mut new = Vec::new();
    for r in store.layer_refs().context("listing published layers")? {
        if known.contains(&r.digest) {
            continue;
        }
        let label = format!("{}@{}", r.name, r.version);
        let Some(bytes) = store.manifest_bytes(&r.name, Some(&r.version))? else { continue };
        let sm = match store.open_manifest_bytes(&bytes, key) {
            Ok(sm) => sm,
            Err(e) => {
                tracing::warn!(layer = %label, error = %e, "published manifest does not verify; not announced");
                continue;
            }
        };
        let count = u32::try_from(sm.manifest.unique_chunks().len()).unwrap_or(u32::MAX);
        mesh.learn_layer(sm.digest, count);
        mesh.announce_layer(sm.digest, count, Holding::Complete);
        tracing::debug!(layer = %label, chunks = count, "layer announced to the mesh");
        new.push(sm.digest);
    }
    Ok(new)
}
