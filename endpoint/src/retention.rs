//! Retention: keep the newest N snapshots (`snapshot_keep` in the device state, set with
//! `oasis-endpoint retention --keep N`), delete older ones, and drop from the chunk store the
//! chunks that only deleted snapshots used. Chunks of any kept snapshot, of any kept layer
//! manifest (its files' chunks and its body's) and of any manifest in the store stay.

use crate::journal::device_dir;
use crate::snapshot::SnapshotDir;
use anyhow::Context;
use oasis_core::manifest::{ManifestRoot, SignedRoot};
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
    // Layer chunks stay cached for fetches and applies, and so do manifest bodies (a new
    // version of a layer then moves only the body chunks that changed). Only chunk ids are
    // read here: trust is not needed to keep chunks.
    let mut keep_chunk = |id: &ChunkId| {
        candidates.remove(id);
    };
    if let Ok(rd) = std::fs::read_dir(device_dir(state_dir).join("manifests")) {
        for de in rd.flatten() {
            let path = de.path();
            if path.extension().is_some_and(|e| e == "body") {
                continue;
            }
            let Some(root) = std::fs::read(&path).ok().and_then(|b| unverified_root(&b)) else {
                continue;
            };
            root.root.body.iter().for_each(|c| keep_chunk(&c.id));
            let mut body_path = path.into_os_string();
            body_path.push(".body");
            if let Ok(body) = std::fs::read(&body_path) {
                if let Ok(sm) = root.assemble_body(&body) {
                    sm.manifest.unique_chunks().iter().for_each(|c| keep_chunk(&c.id));
                }
            }
        }
    }
    for r in store.manifests() {
        let (_, _, b) = r?;
        let Some(root) = unverified_root(&b) else { continue };
        root.root.body.iter().for_each(|c| keep_chunk(&c.id));
        let assembled = root.assemble(|c| match store.get_plain(&c.id) {
            Ok(Some(b)) => Ok(b),
            _ => Err("not in the store".into()),
        });
        if let Ok(sm) = assembled {
            sm.manifest.unique_chunks().iter().for_each(|c| keep_chunk(&c.id));
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

/// A signed manifest root parsed without checking its signature (for the chunk ids it names).
fn unverified_root(bytes: &[u8]) -> Option<SignedRoot> {
    let signature: [u8; 64] = bytes.get(4..68)?.try_into().ok()?;
    let root_body = bytes.get(68..)?.to_vec();
    let root: ManifestRoot = postcard::from_bytes(&root_body).ok()?;
    let digest = oasis_core::manifest::digest_of_signed(bytes);
    Some(SignedRoot { root_body, digest, signature, root })
}
