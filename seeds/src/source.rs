//! The seed answers chunk and manifest requests straight from its store.

use crate::catalog::Catalog;
use bytes::Bytes;
use oasis_core::chunk::ChunkId;
use oasis_core::compress::StoredChunk;
use oasis_core::identity::PeerInfo;
use oasis_core::net::{ChunkSource, SourceError};
use oasis_core::store::ChunkStore;
use oasis_core::wire::{Assignment, LayerRef};
use std::sync::Arc;

pub struct SeedSource {
    pub store: Arc<ChunkStore>,
}

fn internal(e: impl std::fmt::Display) -> SourceError {
    SourceError::Internal(e.to_string())
}

impl ChunkSource for SeedSource {
    async fn manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, SourceError> {
        let store = self.store.clone();
        let (name, version) = (name.to_string(), version.map(str::to_string));
        tokio::task::spawn_blocking(move || store.manifest_bytes(&name, version.as_deref()))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        let store = self.store.clone();
        // Reads and verification touch the disk and burn CPU: keep them off the async threads.
        tokio::task::spawn_blocking(move || store.get(&id))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        self.store.have(ids).map_err(internal)
    }

    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        self.store.layer_refs().map_err(internal)
    }

    async fn assignments(&self, peer: &PeerInfo) -> Result<Vec<Assignment>, SourceError> {
        let Some(site) = peer.site.as_deref() else { return Ok(Vec::new()) };
        let list = Catalog::open(&self.store).and_then(|c| c.list(Some(site))).map_err(internal)?;
        Ok(list.iter().map(|a| a.to_wire()).collect())
    }
}
