//! Retention: keep the newest N snapshots (`snapshot_keep` in the device state, set with
//! `oasis-endpoint retention --keep N`), delete older ones, and drop from the chunk store the
//! chunks that only deleted snapshots used. Chunks of any kept snapshot, of any kept layer
//! manifest and of any manifest in the store stay.

use crate::journal::device_dir;
use crate::snapshot::SnapshotDir;
use anyhow::Context;
use oasis_core::manifest::LayerManifest;
use oasis_core::store::ChunkStore;
use oasis_core::ChunkId;
use std::collections::HashSet;
use std::path::Path;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PruneReport {
    pub deleted: Vec<u64>,
    pub chunks_freed: u64,
    pub bytes_freed: u64,
}

pub fn prune(state_dir: &Path, store: &ChunkStore, keep: u32) -> anyhow::Result<PruneReport> {
    let dir = SnapshotDir::new(state_dir);
    let ids = dir.ids()?;
    let keep = keep.max(1) as usize;
    let mut report = PruneReport::default();
    if ids.len() <= keep {
        return Ok(report);
    }
    let (old, kept) = ids.split_at(ids.len() - keep);
    let mut candidates: HashSet<ChunkId> = HashSet::new();
    for &id in old {
        match dir.load(id) {
            Ok(s) => candidates.extend(s.chunk_ids()),
            Err(e) => tracing::warn!(snapshot = id, error = %e, "deleting an unreadable snapshot"),
        }
    }
    // Delete the files first: a crash after this leaves unreferenced chunks, never a snapshot
    // whose chunks are gone.
    for &id in old {
        dir.remove(id)?;
        report.deleted.push(id);
    }
    for &id in kept {
        let s = dir.load(id).with_context(|| format!("reading snapshot {id}"))?;
        for c in s.chunk_ids() {
            candidates.remove(&c);
        }
    }
    // Layer chunks stay cached for fetches and applies.
    let mut manifests: Vec<LayerManifest> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(device_dir(state_dir).join("manifests")) {
        for de in rd.flatten() {
            if let Ok(b) = std::fs::read(de.path()) {
                // Only chunk ids are read here; trust is not needed to keep chunks.
                if let Ok(m) =
                    postcard::from_bytes::<LayerManifest>(b.get(68..).unwrap_or_default())
                {
                    manifests.push(m);
                }
            }
        }
    }
    for r in store.manifests() {
        let (_, _, b) = r?;
        if let Ok(m) = postcard::from_bytes::<LayerManifest>(b.get(68..).unwrap_or_default()) {
            manifests.push(m);
        }
    }
    for m in &manifests {
        for (_, _, chunks) in m.files() {
            for c in chunks {
                candidates.remove(&c.id);
            }
        }
    }
    for id in candidates {
        if let Some(e) = store.remove(&id)? {
            report.chunks_freed += 1;
            report.bytes_freed += e.stored_len as u64;
        }
    }
    store.sync()?;
    Ok(report)
}
