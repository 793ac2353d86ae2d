//! The seed answers chunk and manifest requests straight from its store: a `Manifest` answer is
//! the signed root as published, and the manifest's body chunks are ordinary chunks, served by
//! `GetChunks` like any layer chunk.

use crate::catalog::Catalog;
use crate::keys::Keys;
use crate::signer::SeedSigner;
use bytes::Bytes;
use oasis_core::chunk::ChunkId;
use oasis_core::compress::StoredChunk;
use oasis_core::net::{BackupSource, ContentSource, InventorySource, LatestAnswer, SourceError};
use oasis_core::pki::PeerInfo;
use oasis_core::seal::{plan_digest, Sealed};
use oasis_core::store::ChunkStore;
use oasis_core::wake::{DeviceEntry, DeviceInfo};
use oasis_core::wire::{Assignment, LayerRef};
use std::sync::Arc;

pub struct SeedSource {
    pub store: Arc<ChunkStore>,
    /// Signs `GetLatest` answers and seals records and plans; None: those requests are
    /// refused (a seed serving without the manifest key).
    pub signer: Option<Arc<SeedSigner>>,
    /// Issues certificate renewals (the CA key, here or in a signer); None: `Renew` is
    /// refused.
    pub authority: Option<Arc<dyn Keys>>,
    /// Every site's entitlements, for `GetEntitlements`.
    pub fleet: Arc<crate::entitlements::FleetCache>,
}

fn internal(e: impl std::fmt::Display) -> SourceError {
    SourceError::Internal(e.to_string())
}

/// A seal by `signer`, off the async threads (a separate signer is a socket away).
async fn seal(signer: Arc<SeedSigner>, sealed: Sealed) -> Result<Bytes, SourceError> {
    let seal =
        tokio::task::spawn_blocking(move || signer.seal(sealed)).await.map_err(internal)??;
    Ok(seal.into())
}

impl SeedSource {
    fn signer(&self) -> Result<Arc<SeedSigner>, SourceError> {
        self.signer
            .clone()
            .ok_or_else(|| SourceError::Refused("this seed serves without its signing key".into()))
    }
}

impl ContentSource for SeedSource {
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

    async fn latest(&self, name: &str) -> Result<Option<LatestAnswer>, SourceError> {
        let signer = self.signer()?;
        let (store, name) = (self.store.clone(), name.to_string());
        let statement = tokio::task::spawn_blocking(move || signer.statement(&store, &name))
            .await
            .map_err(internal)??;
        Ok(statement.map(|s| LatestAnswer { statement: s.into(), note: String::new() }))
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        let store = self.store.clone();
        // Reads and verification touch the disk and burn CPU: keep them off the async threads.
        tokio::task::spawn_blocking(move || store.get(&id))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    async fn renew(&self, peer: &PeerInfo, cert: Bytes, csr: Bytes) -> Result<Bytes, SourceError> {
        let Some(authority) = self.authority.clone() else {
            return Err(SourceError::Refused("this seed serves without its CA key".into()));
        };
        // The seed renews its own certificate itself; one arriving over the wire is someone
        // else holding a seed key, who must not keep it alive.
        let role = oasis_core::pki::peer_info_from_cert(&cert.to_vec().into()).map(|p| p.role);
        if role.is_ok_and(|r| r == oasis_core::pki::Role::Seed) {
            return Err(SourceError::Refused(
                "a seed certificate is renewed by the seed itself, not over the network".into(),
            ));
        }
        // An ECDSA signature and a durable append to the register, or a signer's socket: off
        // the async threads.
        let renewed = tokio::task::spawn_blocking(move || authority.renew(&cert, &csr))
            .await
            .map_err(internal)??;
        tracing::info!(by = %peer, "certificate renewed");
        Ok(Bytes::from(renewed.to_vec()))
    }

    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        self.store.have(ids).map_err(internal)
    }

    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        self.store.layer_refs().map_err(internal)
    }

    async fn entitlements(
        &self,
        peer: &PeerInfo,
        site: Option<&str>,
        known: [u8; 32],
    ) -> Result<(Bytes, Bytes), SourceError> {
        // A reflector enforces its site's statement for the site's endpoints (and one of
        // another site asks for the site of a reflector chained below it); an endpoint is
        // checked by whoever serves it and needs none.
        let site = match (peer.role, site.or(peer.site.as_deref())) {
            (oasis_core::pki::Role::Reflector, Some(site)) => site.to_string(),
            _ => {
                return Err(SourceError::Refused(format!(
                    "{peer} asked for a site's entitlements: only reflectors get them"
                )))
            }
        };
        oasis_core::pki::validate_node_name("site", &site).map_err(|e| {
            SourceError::Rejected(oasis_core::wire::ErrorCode::Malformed, e.to_string())
        })?;
        let (store, fleet, site_name) = (self.store.clone(), self.fleet.clone(), site.clone());
        let (fleet, statement) = tokio::task::spawn_blocking(move || {
            fleet.get(&store).map(|f| {
                let statement = f.site(&site).encode();
                (f, statement)
            })
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let limit = oasis_core::entitlement::MAX_ENTITLEMENTS_BYTES;
        if statement.len() > limit {
            return Err(SourceError::Internal(format!(
                "the entitlement statement of site {site_name} is {} bytes, over the limit of \
                 {limit}: fewer device plans or layers per site",
                statement.len()
            )));
        }
        let digest = oasis_core::entitlement::Entitlements::digest_of(&statement);
        if digest == known {
            return Ok((Bytes::new(), Bytes::new()));
        }
        if let Some(seal) = fleet.seal_of(&site_name) {
            return Ok((statement.into(), seal));
        }
        let sealed = Sealed::Entitlements { site: site_name.clone(), digest };
        let seal = seal(self.signer()?, sealed).await?;
        fleet.keep_seal(&site_name, seal.clone());
        Ok((statement.into(), seal))
    }

    async fn assignments(&self, peer: &PeerInfo) -> Result<Vec<Assignment>, SourceError> {
        let Some(site) = peer.site.as_deref() else { return Ok(Vec::new()) };
        let list = Catalog::open(&self.store).and_then(|c| c.list(Some(site))).map_err(internal)?;
        // What reflectors deliver; layers only available are fetched on demand.
        Ok(list.iter().filter(|a| !a.available).map(|a| a.to_wire()).collect())
    }
}

impl InventorySource for SeedSource {
    async fn register(&self, peer: &PeerInfo, info: DeviceInfo) -> Result<(), SourceError> {
        let info = crate::devices::admit_registration(peer, info)?;
        let inv = crate::devices::Inventory::open(&self.store).map_err(internal)?;
        let existing = inv.get(&info.name).map_err(internal)?;
        crate::devices::may_rewrite(peer, &info, existing.as_ref())?;
        let r = inv.record(&info, &peer.name, crate::devices::unix_now()).map_err(internal)?;
        tracing::info!(device = %r.name, by = %peer.name, site = ?r.site, "device registered");
        Ok(())
    }

    async fn devices(&self, peer: &PeerInfo) -> Result<Vec<DeviceEntry>, SourceError> {
        let site = crate::devices::inventory_site(peer)?;
        let inv = crate::devices::Inventory::open(&self.store).map_err(internal)?;
        Ok(inv.site(&site).map_err(internal)?.iter().map(|r| r.to_entry()).collect())
    }
}

impl BackupSource for SeedSource {
    async fn put_chunk(&self, peer: &PeerInfo, chunk: StoredChunk) -> Result<bool, SourceError> {
        crate::provision::may_upload(peer)?;
        let (store, device) = (self.store.clone(), peer.name.clone());
        // Decompressing and hashing burn CPU: keep them off the async threads.
        tokio::task::spawn_blocking(move || {
            crate::provision::store_uploaded(&store, &chunk)?;
            // The bytes checked against the id: from now on the device may read this chunk.
            // "New" is new to this device, never to the store: whether another device stored
            // the chunk first is not this device's to learn.
            crate::readers::Readers::open(&store)
                .and_then(|r| r.add_upload(&device, &chunk.id))
                .map_err(internal)
        })
        .await
        .map_err(internal)?
    }

    async fn put_snapshot(
        &self,
        peer: &PeerInfo,
        req: oasis_core::backup::PutSnapshot,
    ) -> Result<oasis_core::backup::SnapshotInfo, SourceError> {
        crate::provision::own_device(peer, &req.device)?;
        let (store, device) = (self.store.clone(), peer.name.clone());
        tokio::task::spawn_blocking(move || {
            crate::snapshots::Snapshots::open(&store)
                .and_then(|s| s.put(&device, &req))
                .map_err(crate::provision::snapshot_error)
        })
        .await
        .map_err(internal)?
    }

    async fn snapshots(
        &self,
        peer: &PeerInfo,
        device: &str,
    ) -> Result<Vec<oasis_core::backup::SnapshotInfo>, SourceError> {
        crate::provision::own_device(peer, device)?;
        let list = crate::snapshots::Snapshots::open(&self.store)
            .and_then(|s| s.list(device))
            .map_err(crate::provision::snapshot_error)?;
        Ok(list.into_iter().map(|f| f.info).collect())
    }

    async fn snapshot(
        &self,
        peer: &PeerInfo,
        device: &str,
        id: Option<&str>,
    ) -> Result<(oasis_core::backup::SnapshotInfo, oasis_core::backup::RecordRef, Bytes), SourceError>
    {
        crate::provision::own_device(peer, device)?;
        let signer = self.signer()?;
        let f = crate::snapshots::Snapshots::open(&self.store)
            .and_then(|s| s.get(device, id))
            .map_err(crate::provision::snapshot_error)?;
        let sealed = Sealed::SnapshotRecord {
            device: f.info.device.clone(),
            id: f.info.id.clone(),
            digest: f.record.digest,
        };
        let seal = seal(signer, sealed).await?;
        Ok((f.info, f.record, seal))
    }

    async fn plan(
        &self,
        peer: &PeerInfo,
    ) -> Result<(oasis_core::backup::DevicePlan, Bytes), SourceError> {
        let signer = self.signer()?;
        let store = self.store.clone();
        let device = peer.name.clone();
        let peer = peer.clone();
        let plan = tokio::task::spawn_blocking(move || crate::provision::plan_for(&store, &peer))
            .await
            .map_err(internal)??;
        let seal = seal(signer, Sealed::DevicePlan { device, digest: plan_digest(&plan) }).await?;
        Ok((plan, seal))
    }
}
