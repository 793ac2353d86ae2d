//! Who may read which chunk at the seed: the chunks of a published layer are for the nodes
//! entitled to that layer ([`crate::entitlements`]), the chunks a device uploaded are that
//! device's alone.
//!
//! Layer and backup chunks share one store (a file that is also in a layer is stored once), so
//! without this any enrolled node could ask `Have` or `GetChunks` about a chunk and learn
//! whether some device's backup holds it: a confirmation-of-file oracle on every user's data.
//! Two sled trees answer instead:
//! - `chunk_layers`, key `chunk id | layer name`: every file and manifest-body chunk of each
//!   published layer, under the layer's name (every version of a layer under one name);
//! - `device_chunks`, key `device \0 chunk id`: every chunk a device sent with `PutChunk`
//!   (proof that it holds the bytes: the seed checks them against the id).
//!
//! An endpoint may read a chunk of a layer it may fetch, or one of its own; a reflector (which
//! never handles backups) a chunk of a layer its site may fetch. For anything else `GetChunks`
//! is refused with `Forbidden` and `Have` answers "not stored", whether or not the store holds
//! the chunk, so the answer tells nothing. A snapshot names only chunks its device may read: a
//! device cannot claim another device's chunk by its id alone.
//!
//! Stores written before the trees existed are indexed once at start ([`Readers::backfill`]):
//! every published layer, and every filed snapshot's chunks for its device.

use futures::future::{BoxFuture, FutureExt};
use oasis_core::chunk::ChunkId;
use oasis_core::manifest::SignedManifest;
use oasis_core::net::SourceError;
use oasis_core::pki::{PeerInfo, Role};
use oasis_core::store::chunk_layers::ChunkLayers;
use oasis_core::store::ChunkStore;
use std::collections::BTreeSet;
use std::sync::Arc;

const LAYER_TREE: &str = "chunk_layers";
/// The index of an earlier form (chunk id alone, no layer name), dropped at open.
const OLD_LAYER_TREE: &str = "layer_chunks";
const DEVICE_TREE: &str = "device_chunks";
/// What was indexed from what existed before: `named \0 name \0 version`, `record \0 device
/// \0 id`.
const INDEXED_TREE: &str = "readers_indexed";

#[derive(Clone)]
pub struct Readers {
    layer: ChunkLayers,
    device: sled::Tree,
    indexed: sled::Tree,
}

fn device_key(device: &str, id: &ChunkId) -> Vec<u8> {
    [device.as_bytes(), b"\0", id.as_bytes()].concat()
}

fn layer_mark(name: &str, version: &str) -> String {
    format!("named\0{name}\0{version}")
}

impl Readers {
    pub fn open(store: &ChunkStore) -> Result<Readers, sled::Error> {
        let db = store.db();
        if db.tree_names().iter().any(|n| n.as_ref() == OLD_LAYER_TREE.as_bytes()) {
            db.drop_tree(OLD_LAYER_TREE)?;
        }
        Ok(Readers {
            layer: ChunkLayers::new(db.open_tree(LAYER_TREE)?),
            device: db.open_tree(DEVICE_TREE)?,
            indexed: db.open_tree(INDEXED_TREE)?,
        })
    }

    /// Records the chunks of a published layer (files and manifest body) under its name.
    pub fn add_layer(&self, m: &SignedManifest) -> Result<(), sled::Error> {
        let (files, body) = (m.manifest.unique_chunks(), m.root.unique_body_chunks());
        self.layer.add(&m.root.name, files.iter().chain(body.iter()).map(|c| &c.id))?;
        self.indexed.insert(layer_mark(&m.root.name, &m.root.version), &[])?;
        Ok(())
    }

    /// Records that `device` sent chunk `id` (its bytes checked against the id); true when
    /// the device had not sent it before.
    pub fn add_upload(&self, device: &str, id: &ChunkId) -> Result<bool, sled::Error> {
        Ok(self.device.insert(device_key(device, id), &[])?.is_none())
    }

    /// Whether chunk `id` is in a layer named in `names`.
    pub fn in_layers(&self, id: &ChunkId, names: &BTreeSet<String>) -> Result<bool, sled::Error> {
        if names.is_empty() {
            return Ok(false);
        }
        self.layer.any_layer(id, |name| names.contains(name))
    }

    /// Whether `device` sent chunk `id` itself.
    pub fn uploaded_by(&self, device: &str, id: &ChunkId) -> Result<bool, sled::Error> {
        self.device.contains_key(device_key(device, id))
    }

    /// For each of `ids`, whether `peer`, entitled to the layers `names`, may read it here.
    pub fn may_read(
        &self,
        peer: &PeerInfo,
        names: &BTreeSet<String>,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, sled::Error> {
        ids.iter()
            .map(|id| {
                Ok(self.in_layers(id, names)?
                    || (peer.role == Role::Endpoint && self.uploaded_by(&peer.name, id)?))
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
            if self.indexed.contains_key(layer_mark(&name, &version))? {
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

/// The seed's [`oasis_core::net::Access`]: the entitlements of [`crate::entitlements`] and
/// [`Readers`] over its store. Each request looks its entitlements up anew, so that an
/// assignment or a plan takes effect at the next request.
pub struct SeedReaders {
    pub readers: Readers,
    pub store: Arc<ChunkStore>,
    pub fleet: Arc<crate::entitlements::FleetCache>,
}

fn internal(e: impl std::fmt::Display) -> SourceError {
    SourceError::Internal(e.to_string())
}

impl oasis_core::net::Access for SeedReaders {
    fn may_fetch_layer<'a>(
        &'a self,
        peer: &'a PeerInfo,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        let (store, fleet, peer, name) =
            (self.store.clone(), self.fleet.clone(), peer.clone(), name.to_string());
        async move {
            tokio::task::spawn_blocking(move || {
                crate::entitlements::layers_of(&store, &fleet, &peer).map(|n| n.contains(&name))
            })
            .await
            .map_err(internal)?
            .map_err(internal)
        }
        .boxed()
    }

    fn may_read<'a>(
        &'a self,
        peer: &'a PeerInfo,
        ids: &'a [ChunkId],
    ) -> BoxFuture<'a, Result<Vec<bool>, SourceError>> {
        let (store, fleet, readers, peer, ids) = (
            self.store.clone(),
            self.fleet.clone(),
            self.readers.clone(),
            peer.clone(),
            ids.to_vec(),
        );
        async move {
            tokio::task::spawn_blocking(move || {
                let names =
                    crate::entitlements::layers_of(&store, &fleet, &peer).map_err(internal)?;
                readers.may_read(&peer, &names, &ids).map_err(internal)
            })
            .await
            .map_err(internal)?
        }
        .boxed()
    }
}
