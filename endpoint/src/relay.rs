//! `oasis-endpoint relay`: an awake endpoint relaying wakes for its subnet where no reflector
//! sits on it. It serves only `Wake` (from the seed or a reflector of its site) on QUIC and
//! registers with its sources as a relay, again every `every` so the inventory sees it awake.

use anyhow::Context;
use bytes::Bytes;
use oasis_core::compress::StoredChunk;
use oasis_core::identity::{NodeIdentity, PeerInfo, Role};
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, ChunkSource, SourceError, TransportOptions};
use oasis_core::wake::{self as wol, WakeSent, WakeTarget};
use oasis_core::wire::LayerRef;
use oasis_core::ChunkId;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

struct RelaySource {
    me: PeerInfo,
}

impl ChunkSource for RelaySource {
    async fn manifest(&self, _: &str, _: Option<&str>) -> Result<Option<Bytes>, SourceError> {
        Ok(None)
    }
    async fn chunk(&self, _: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        Ok(None)
    }
    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        Ok(vec![false; ids.len()])
    }
    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        Ok(Vec::new())
    }
    async fn wake(
        &self,
        peer: &PeerInfo,
        targets: Vec<WakeTarget>,
    ) -> Result<Vec<WakeSent>, SourceError> {
        let allowed = peer.role == Role::Seed
            || peer.role == Role::Reflector && peer.site.is_some() && peer.site == self.me.site;
        if !allowed {
            return Err(SourceError::Refused(format!(
                "{} {} may not ask this endpoint to wake machines",
                peer.role, peer.name
            )));
        }
        tracing::info!(by = %peer.name, targets = targets.len(), "relaying a wake");
        Ok(wol::relay::send_all(targets, wol::SendOptions::default()).await)
    }
}

/// A running relay listener.
pub struct RelayListener {
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RelayListener {
    /// Serves `Wake` on `listen` and keeps registering as a relay with `sources` every `every`.
    pub async fn start(
        state: &Path,
        listen: SocketAddr,
        sources: Vec<SocketAddr>,
        every: Duration,
    ) -> anyhow::Result<RelayListener> {
        let identity = NodeIdentity::load(state)
            .with_context(|| format!("loading the endpoint identity from {}", state.display()))?;
        let endpoint = net::server_endpoint(listen, &identity, &TransportOptions::default())
            .with_context(|| format!("cannot listen for QUIC on {listen}"))?;
        let addr = endpoint.local_addr()?;
        crate::sleep::set_announce(crate::sleep::Announce {
            relay: Some(addr),
            ..Default::default()
        });
        let source = Arc::new(RelaySource { me: identity.info().clone() });
        let mut tasks =
            vec![tokio::spawn(net::serve(endpoint.clone(), source, Arc::new(NodeMetrics::new())))];
        tasks.push(tokio::spawn(async move {
            loop {
                match crate::sources::Sources::new(&identity, sources.clone()) {
                    Ok(mut s) => {
                        // Connecting registers us (as a relay).
                        if let Some(c) = s.connect_next().await {
                            c.close();
                        }
                        s.close().await;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reach the sources"),
                }
                tokio::time::sleep(every).await;
            }
        }));
        tracing::info!(%addr, "relaying wakes");
        Ok(RelayListener { addr, endpoint, tasks })
    }

    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"relay stopping");
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for RelayListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}
