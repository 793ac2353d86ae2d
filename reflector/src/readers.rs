//! Which layer each cached chunk belongs to, so that the reflector lets an endpoint read only
//! the chunks of layers it may fetch (`crate::entitlements`).
//!
//! Two sled trees in the cache's database:
//! - `reflector_chunk_layers`, key `chunk id | layer name`: every file and body chunk of every
//!   manifest the cache has held, under its layer's name;
//! - `reflector_layers_indexed`, key a manifest digest: the manifests indexed.
//!
//! A manifest is indexed when its chunk list is read (for an endpoint's manifest, a pin, the
//! mesh), and on demand when an endpoint asks for a chunk not indexed under any layer it may
//! fetch while an unindexed manifest of such a layer is cached. Entries are never removed: a
//! chunk stays readable by the layer's endpoints while the layer stays assigned.

use oasis_core::manifest::{ChunkRef, SignedRoot};
use oasis_core::ChunkId;

const CHUNKS_TREE: &str = "reflector_chunk_layers";
const INDEXED_TREE: &str = "reflector_layers_indexed";

#[derive(Clone)]
pub struct LayerIndex {
    chunks: sled::Tree,
    indexed: sled::Tree,
}

fn key(id: &ChunkId, name: &str) -> Vec<u8> {
    [id.as_bytes().as_slice(), name.as_bytes()].concat()
}

impl LayerIndex {
    pub fn open(db: &sled::Db) -> Result<LayerIndex, sled::Error> {
        Ok(LayerIndex { chunks: db.open_tree(CHUNKS_TREE)?, indexed: db.open_tree(INDEXED_TREE)? })
    }

    pub fn is_indexed(&self, digest: &[u8; 32]) -> Result<bool, sled::Error> {
        self.indexed.contains_key(digest)
    }

    /// Indexes `root`'s body chunks and `files`, the distinct chunks of its files. Blocking.
    pub fn add(&self, root: &SignedRoot, files: &[ChunkRef]) -> Result<(), sled::Error> {
        if self.is_indexed(&root.digest)? {
            return Ok(());
        }
        let name = &root.root.name;
        let mut batch = sled::Batch::default();
        for c in files.iter().chain(root.root.unique_body_chunks().iter()) {
            batch.insert(key(&c.id, name), &[]);
        }
        self.chunks.apply_batch(batch)?;
        self.indexed.insert(root.digest, &[])?;
        Ok(())
    }

    /// Indexes only `root`'s body chunks (its files are indexed once its body is read): an
    /// endpoint asks for them right after the root. Blocking.
    pub fn add_body(&self, root: &SignedRoot) -> Result<(), sled::Error> {
        let name = &root.root.name;
        let mut batch = sled::Batch::default();
        for c in root.root.unique_body_chunks() {
            batch.insert(key(&c.id, name), &[]);
        }
        self.chunks.apply_batch(batch)
    }

    /// Whether chunk `id` belongs to a layer named in `names`. Blocking.
    pub fn in_layers(&self, id: &ChunkId, names: &[&str]) -> Result<bool, sled::Error> {
        for k in self.chunks.scan_prefix(id.as_bytes()).keys() {
            let k = k?;
            if names.iter().any(|n| n.as_bytes() == &k[32..]) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
