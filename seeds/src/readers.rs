//! Who may read which chunk at the seed: the chunks of published layers are the fleet's, the
//! chunks a device uploaded are that device's alone.
//!
//! Layer and backup chunks share one store (a file that is also in a layer is stored once), so
//! without this any enrolled node could ask `Have` or `GetChunks` about a chunk and learn
//! whether some device's backup holds it: a confirmation-of-file oracle on every user's data.
//! Two sled trees answer instead:
//! - `layer_chunks`, key a chunk id: every file and manifest-body chunk of a published layer;
//! - `device_chunks`, key `device \0 chunk id`: every chunk a device sent with `PutChunk`
//!   (proof that it holds the bytes: the seed checks them against the id).
//!
//! An endpoint may read a layer chunk or one of its own; a reflector (which never handles
//! backups), or anything else, a layer chunk. For anything else `GetChunks` is refused with `Forbidden` and `Have`
//! answers "not stored", whether or not the store holds the chunk, so the answer tells nothing.
//! A snapshot names only chunks its device may read: a device cannot claim another device's
//! chunk by its id alone.
//!
//! Stores written before the trees existed are indexed once at start ([`Readers::backfill`]):
//! every published layer, and every filed snapshot's chunks for its device.

use oasis_core::chunk::ChunkId;
use oasis_core::manifest::SignedManifest;
use oasis_core::net::SourceError;
use oasis_core::pki::{PeerInfo, Role};
use oasis_core::store::ChunkStore;

const LAYER_TREE: &str = "layer_chunks";
const DEVICE_TREE: &str = "device_chunks";
/// What was indexed from what existed before: `layer \0 name \0 version`, `record \0 device \0
/// id`.
const INDEXED_TREE: &str = "readers_indexed";

#[derive(Clone)]
pub struct Readers {
    layer: sled::Tree,
    device: sled::Tree,
    indexed: sled::Tree,
}

fn device_key(device: &str, id: &ChunkId) -> Vec<u8> {
    [device.as_bytes(), b"\0", id.as_bytes()].concat()
}

impl Readers {
    pub fn open(store: &ChunkStore) -> Result<Readers, sled::Error> {
        let db = store.db();
        Ok(Readers {
            layer: db.open_tree(LAYER_TREE)?,
            device: db.open_tree(DEVICE_TREE)?,
            indexed: db.open_tree(INDEXED_TREE)?,
        })
    }

    /// Records the chunks of a published layer (files and manifest body) as the fleet's.
    pub fn add_layer(&self, m: &SignedManifest) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        for c in m.manifest.unique_chunks().iter().chain(m.root.unique_body_chunks().iter()) {
            batch.insert(c.id.as_bytes().as_slice(), &[]);
        }
        self.layer.apply_batch(batch)?;
        self.indexed.insert(format!("layer\0{}\0{}", m.root.name, m.root.version), &[])?;
        Ok(())
    }

    /// Records that `device` sent chunk `id` (its bytes checked against the id); true when
    /// the device had not sent it before.
    pub fn add_upload(&self, device: &str, id: &ChunkId) -> Result<bool, sled::Error> {
        Ok(self.device.insert(device_key(device, id), &[])?.is_none())
    }

    pub fn in_layer(&self, id: &ChunkId) -> Result<bool, sled::Error> {
        self.layer.contains_key(id.as_bytes())
    }

    /// Whether an endpoint named `device` may read chunk `id`: a layer chunk or its own.
    pub fn device_may_read(&self, device: &str, id: &ChunkId) -> Result<bool, sled::Error> {
        Ok(self.in_layer(id)? || self.device.contains_key(device_key(device, id))?)
    }

    /// For each of `ids`, whether `peer` may read it here.
    pub fn may_read(&self, peer: &PeerInfo, ids: &[ChunkId]) -> Result<Vec<bool>, sled::Error> {
        ids.iter()
            .map(|id| match peer.role {
                // No node reaches the seed as a seed; a stolen seed identity must not read
                // backups, so it gets what a reflector gets.
                Role::Seed | Role::Reflector => self.in_layer(id),
                Role::Endpoint => self.device_may_read(&peer.name, id),
            })
            .collect()
    }

    /// Indexes what a store written before these trees holds: the chunks of every published
    /// layer, and those of every filed snapshot for its device. Each is done once. Returns how
    /// many layers and snapshots it indexed.
    pub fn backfill(
        &self,
        store: &ChunkStore,
        manifest_key: &ed25519_dalek::VerifyingKey,
    ) -> anyhow::Result<(usize, usize)> {
        let (mut layers, mut records) = (0, 0);
        for item in store.manifests() {
            let (name, version, bytes) = item?;
            if self.indexed.contains_key(format!("layer\0{name}\0{version}"))? {
                continue;
            }
            // One broken item must not keep the seed from serving the rest: it stays
            // unindexed (its chunks unreadable) and is tried again at the next start.
            match store.open_manifest_bytes(&bytes, manifest_key) {
                Ok(m) => {
                    self.add_layer(&m)?;
                    layers += 1;
                }
                Err(e) => tracing::warn!(layer = %format!("{name}@{version}"), error = %e,
                    "stored layer not indexed: its chunks stay unreadable"),
            }
        }
        let snapshots = crate::snapshots::Snapshots::open(store)?;
        for (device, filed) in snapshots.all()? {
            let mark = format!("record\0{device}\0{}", filed.info.id);
            if self.indexed.contains_key(&mark)? {
                continue;
            }
            let record = match snapshots.read_filed(&filed) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%device, snapshot = %filed.info.id, error = %e,
                        "snapshot not indexed: its chunks stay unreadable to its device");
                    continue;
                }
            };
            let mut batch = sled::Batch::default();
            for c in filed.record.chunks.iter().chain(record.unique_chunks().iter()) {
                batch.insert(device_key(&device, &c.id), &[]);
            }
            self.device.apply_batch(batch)?;
            self.indexed.insert(mark, &[])?;
            records += 1;
        }
        Ok((layers, records))
    }
}

/// The seed's [`oasis_core::net::ChunkAccess`]: [`Readers`] over its store.
pub struct SeedReaders(pub Readers);

impl oasis_core::net::ChunkAccess for SeedReaders {
    fn may_read(&self, peer: &PeerInfo, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        self.0.may_read(peer, ids).map_err(|e| SourceError::Internal(e.to_string()))
    }
}
