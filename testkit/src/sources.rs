//! Content sources that misbehave on purpose.

use crate::TestSeed;

/// A seed's chunk source that flips one bit in the middle of the chunks it serves: every time,
/// or only the first time each chunk is asked for. Counts the chunk requests it answers.
pub struct CorruptingSource {
    inner: oasis_seed::source::SeedSource,
    pub asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    first_time_only: bool,
    sent: std::sync::Mutex<std::collections::HashSet<oasis_core::ChunkId>>,
}

impl CorruptingSource {
    pub fn new(seed: &TestSeed, first_time_only: bool) -> CorruptingSource {
        CorruptingSource {
            inner: oasis_seed::source::SeedSource {
                store: seed.seed.store.clone(),
                signer: Some(seed.signer()),
                authority: None,
                fleet: Default::default(),
            },
            asked: Default::default(),
            first_time_only,
            sent: Default::default(),
        }
    }
}

impl oasis_core::net::ContentSource for CorruptingSource {
    async fn manifest(
        &self,
        n: &str,
        v: Option<&str>,
    ) -> Result<Option<bytes::Bytes>, oasis_core::net::SourceError> {
        self.inner.manifest(n, v).await
    }

    async fn latest(
        &self,
        name: &str,
    ) -> Result<Option<oasis_core::net::LatestAnswer>, oasis_core::net::SourceError> {
        self.inner.latest(name).await
    }

    async fn chunk(
        &self,
        id: oasis_core::ChunkId,
    ) -> Result<Option<oasis_core::compress::StoredChunk>, oasis_core::net::SourceError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut c = self.inner.chunk(id).await?;
        let corrupt = !self.first_time_only || self.sent.lock().unwrap().insert(id);
        if let (true, Some(c)) = (corrupt, c.as_mut()) {
            let mut data = c.data.to_vec();
            let mid = data.len() / 2;
            data[mid] ^= 0x01;
            c.data = bytes::Bytes::from(data);
        }
        Ok(c)
    }

    async fn have(
        &self,
        ids: &[oasis_core::ChunkId],
    ) -> Result<Vec<bool>, oasis_core::net::SourceError> {
        self.inner.have(ids).await
    }

    async fn layers(
        &self,
    ) -> Result<Vec<oasis_core::wire::LayerRef>, oasis_core::net::SourceError> {
        self.inner.layers().await
    }

    async fn entitlements(
        &self,
        peer: &oasis_core::pki::PeerInfo,
        site: Option<&str>,
        known: [u8; 32],
    ) -> Result<(bytes::Bytes, bytes::Bytes), oasis_core::net::SourceError> {
        self.inner.entitlements(peer, site, known).await
    }
}
