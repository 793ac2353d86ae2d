//! What endpoints and siblings are served from: the reflector behind the [`ContentSource`] and [`InventorySource`]
//! interface of `oasis_core::net::serve`.

use super::Reflector;
use bytes::Bytes;
use oasis_core::compress::StoredChunk;
use oasis_core::net::{ContentSource, InventorySource, LatestAnswer, SourceError};
use oasis_core::pki::PeerInfo;
use oasis_core::policy::TrafficClass;
use oasis_core::wire::LayerRef;
use oasis_core::ChunkId;
use std::sync::Arc;

/// The sources endpoints are served from: content, and the inventory and wakes.
pub struct ReflectorSource(pub(super) Arc<Reflector>);

impl ReflectorSource {
    /// The upstream connection, for a request passed on as it came.
    fn upstream(&self) -> Result<oasis_core::net::Client, SourceError> {
        self.0
            .upstream
            .current()
            .ok_or_else(|| SourceError::Unavailable("the upstream is unreachable".into()))
    }
}

/// The upstream's answer to a request passed on: its refusal as it gave it, anything else as
/// this reflector being unable to answer now.
fn relayed(e: oasis_core::net::NetError) -> SourceError {
    match e {
        oasis_core::net::NetError::Remote { code, message, .. } => {
            SourceError::Rejected(code, message)
        }
        other => SourceError::Unavailable(other.to_string()),
    }
}

impl ContentSource for ReflectorSource {
    async fn manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, SourceError> {
        self.0.manifest(name, version).await
    }

    async fn latest(&self, name: &str) -> Result<Option<LatestAnswer>, SourceError> {
        self.0.latest(name).await
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        self.0.chunk(None, id, TrafficClass::Foreground).await
    }

    async fn chunk_for(
        &self,
        peer: &PeerInfo,
        id: ChunkId,
    ) -> Result<Option<StoredChunk>, SourceError> {
        self.0.chunk(Some(peer), id, TrafficClass::Foreground).await
    }

    async fn chunk_in(
        &self,
        peer: &PeerInfo,
        id: ChunkId,
        class: TrafficClass,
    ) -> Result<Option<StoredChunk>, SourceError> {
        self.0.chunk(Some(peer), id, class).await
    }

    fn pull_ahead(&self, _peer: &PeerInfo, ids: &[ChunkId], class: TrafficClass) {
        if !ids.is_empty() {
            self.0.pull_ahead(ids.to_vec(), class);
        }
    }

    async fn renew(&self, peer: &PeerInfo, cert: Bytes, csr: Bytes) -> Result<Bytes, SourceError> {
        // Passed on as it came: the request proves itself to the seed (pki::renewal).
        tracing::info!(for_node = %peer, "passing a certificate renewal upstream");
        self.upstream()?.renew(cert, csr).await.map_err(relayed)
    }

    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        self.0.cache.store.have(ids).map_err(|e| SourceError::Internal(e.to_string()))
    }

    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        self.0.layers().await
    }

    async fn entitlements(
        &self,
        peer: &PeerInfo,
        site: Option<&str>,
        known: [u8; 32],
    ) -> Result<(Bytes, Bytes), SourceError> {
        if peer.role != oasis_core::pki::Role::Reflector {
            return Err(SourceError::Refused(format!(
                "{peer} asked for a site's entitlements: only reflectors get them"
            )));
        }
        let ents = &self.0.entitlements;
        let site = site.or(peer.site.as_deref()).unwrap_or_default();
        if site == ents.site() {
            let Some(held) = ents.current() else {
                return Err(SourceError::Unavailable(format!(
                    "this reflector holds no entitlement statement for site {site} yet"
                )));
            };
            if held.digest == known {
                return Ok((Bytes::new(), Bytes::new()));
            }
            return Ok((held.encoded.clone(), held.seal.clone()));
        }
        // A reflector of another site chained below this one: its site's statement comes from
        // the seed, passed on as sealed.
        self.upstream()?.entitlements(Some(site), known).await.map_err(relayed)
    }

    async fn assignments(
        &self,
        peer: &PeerInfo,
    ) -> Result<Vec<oasis_core::wire::Assignment>, SourceError> {
        Ok(self.0.wake.assignments(peer).await)
    }
}

impl InventorySource for ReflectorSource {
    async fn register(
        &self,
        peer: &PeerInfo,
        info: oasis_core::wake::DeviceInfo,
    ) -> Result<(), SourceError> {
        self.0.wake.register(peer, info).await
    }

    async fn devices(
        &self,
        peer: &PeerInfo,
    ) -> Result<Vec<oasis_core::wake::DeviceEntry>, SourceError> {
        self.0.wake.devices(peer).await
    }

    async fn wake(
        &self,
        peer: &PeerInfo,
        targets: Vec<oasis_core::wake::WakeTarget>,
    ) -> Result<Vec<oasis_core::wake::WakeSent>, SourceError> {
        self.0.wake.wake(peer, targets).await
    }
}
