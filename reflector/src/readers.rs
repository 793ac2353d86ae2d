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
use oasis_core::store::chunk_layers::ChunkLayers;
use oasis_core::ChunkId;

const CHUNKS_TREE: &str = "reflector_chunk_layers";
const INDEXED_TREE: &str = "reflector_layers_indexed";

#[derive(Clone)]
pub struct LayerIndex {
    chunks: ChunkLayers,
    indexed: sled::Tree,
}

impl LayerIndex {
    pub fn open(db: &sled::Db) -> Result<LayerIndex, sled::Error> {
        Ok(LayerIndex {
            chunks: ChunkLayers::new(db.open_tree(CHUNKS_TREE)?),
            indexed: db.open_tree(INDEXED_TREE)?,
        })
    }

    pub fn is_indexed(&self, digest: &[u8; 32]) -> Result<bool, sled::Error> {
        self.indexed.contains_key(digest)
    }

    /// Indexes `root`'s body chunks and `files`, the distinct chunks of its files. Blocking.
    pub fn add(&self, root: &SignedRoot, files: &[ChunkRef]) -> Result<(), sled::Error> {
        if self.is_indexed(&root.digest)? {
            return Ok(());
        }
        let body = root.root.unique_body_chunks();
        self.chunks.add(&root.root.name, files.iter().chain(body.iter()).map(|c| &c.id))?;
        self.indexed.insert(root.digest, &[])?;
        Ok(())
    }

    /// Indexes only `root`'s body chunks (its files are indexed once its body is read): an
    /// endpoint asks for them right after the root. Blocking.
    pub fn add_body(&self, root: &SignedRoot) -> Result<(), sled::Error> {
        let body = root.root.unique_body_chunks();
        self.chunks.add(&root.root.name, body.iter().map(|c| &c.id))
    }

    /// Whether chunk `id` belongs to a layer named in `names`. Blocking.
    pub fn in_layers(&self, id: &ChunkId, names: &[&str]) -> Result<bool, sled::Error> {
        self.chunks.any_layer(id, |name| names.contains(&name))
    }
}
