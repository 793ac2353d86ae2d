//! Who may upload and read device snapshots, and which layers a device gets.
//!
//! Authorization comes from the peer's certificate (verified by mTLS): an endpoint uploads
//! chunks and files, lists and reads snapshots of its own device only (its certificate's
//! name); reflectors and other seeds may do none of it. Administrators reach every device's
//! snapshots through `oasis-seed snapshots` on the seed host (the admin socket), not the wire.
//!
//! Provisioning: an endpoint that asks for its plan (`GetPlan`) and is not in the inventory is
//! recorded there and listed as pending; `oasis-seed provision` gives it a base layer and app
//! layers, which the endpoint's `provision` command then applies.

use crate::devices::{DevicePlan, Inventory};
use crate::snapshots::SnapshotError;
use anyhow::{bail, Context};
use oasis_core::backup;
use oasis_core::compress::StoredChunk;
use oasis_core::manifest::LayerKind;
use oasis_core::net::SourceError;
use oasis_core::pki::{PeerInfo, Role, TrustRoot};
use oasis_core::store::ChunkStore;
use oasis_core::wire::ErrorCode;

/// Uploads are for endpoints.
pub fn may_upload(peer: &PeerInfo) -> Result<(), SourceError> {
    if peer.role != Role::Endpoint {
        return Err(SourceError::Refused(format!(
            "{peer} may not upload: only endpoints upload their device snapshots"
        )));
    }
    Ok(())
}

/// An endpoint may touch only its own device's snapshots.
pub fn own_device(peer: &PeerInfo, device: &str) -> Result<(), SourceError> {
    may_upload(peer)?;
    if device != peer.name {
        return Err(SourceError::Refused(format!(
            "endpoint {} may only access its own snapshots, not those of device {device:?} \
             (an administrator can, with `oasis-seed snapshots` on the seed)",
            peer.name
        )));
    }
    Ok(())
}

/// Verifies an uploaded chunk against its id and stores it; Ok(true) when it was new.
/// A chunk that does not decode to its id is refused and not stored.
pub fn store_uploaded(store: &ChunkStore, chunk: &StoredChunk) -> Result<bool, SourceError> {
    if let Err(e) = chunk.decode_verified() {
        return Err(SourceError::Rejected(ErrorCode::Malformed, format!("chunk refused: {e}")));
    }
    store.put(chunk).map_err(|e| SourceError::Internal(e.to_string()))
}

pub fn snapshot_error(e: SnapshotError) -> SourceError {
    match e {
        SnapshotError::Invalid(m) => SourceError::Rejected(ErrorCode::Malformed, m),
        SnapshotError::TooLarge(m) => SourceError::Rejected(ErrorCode::TooLarge, m),
        SnapshotError::Incomplete(m) | SnapshotError::NotFound(m) => {
            SourceError::Rejected(ErrorCode::NotFound, m)
        }
        SnapshotError::Busy(m) => SourceError::Unavailable(m),
        other => SourceError::Internal(other.to_string()),
    }
}

/// The plan of the requesting endpoint. One not in the inventory yet is recorded there (from its
/// certificate) and so listed as pending.
pub fn plan_for(store: &ChunkStore, peer: &PeerInfo) -> Result<backup::DevicePlan, SourceError> {
    may_upload(peer).map_err(|_| {
        SourceError::Refused(format!("{peer} asked for a device plan: only endpoints have one"))
    })?;
    let internal = |e: crate::devices::DeviceError| SourceError::Internal(e.to_string());
    let inv = Inventory::open(store).map_err(internal)?;
    let plan = match inv.get(&peer.name).map_err(internal)? {
        Some(r) => r.plan,
        None => {
            let info = oasis_core::wake::DeviceInfo {
                name: peer.name.clone(),
                role: Role::Endpoint.to_string(),
                site: peer.site.clone().unwrap_or_default(),
                ..Default::default()
            };
            let info = crate::devices::admit_registration(peer, info)?;
            inv.record(&info, &peer.name, crate::devices::unix_now()).map_err(internal)?;
            tracing::info!(device = %peer.name, "unknown endpoint asked for its plan: listed as pending");
            None
        }
    };
    Ok(match plan {
        Some(p) => backup::DevicePlan { base: Some(p.base), apps: p.apps },
        None => backup::DevicePlan::default(),
    })
}

/// `oasis-seed provision`: checks every layer is published with a fitting kind, then sets the
/// device's plan. Returns the device record as JSON.
pub fn provision(
    store: &ChunkStore,
    trust: &TrustRoot,
    device: &str,
    base: &str,
    apps: &[String],
) -> anyhow::Result<serde_json::Value> {
    let inv = Inventory::open(store)?;
    if inv.get(device)?.is_none() {
        bail!(
            "device {device} is not in the inventory: it is listed (as pending) once it has \
             connected to the seed; see `oasis-seed devices --pending`"
        );
    }
    let resolve = |spec: &str, want: &[LayerKind]| -> anyhow::Result<(String, String)> {
        let (name, version) = crate::commands::split_layer(spec);
        let version = match version {
            Some(v) => v.to_string(),
            None => store
                .latest_version(name)?
                .with_context(|| format!("layer {name} is not published"))?,
        };
        let sm = store
            .open_manifest(name, Some(&version), trust.manifest_key())
            .with_context(|| format!("stored manifest {name}@{version}"))?
            .with_context(|| format!("layer {name}@{version} is not published"))?;
        if !want.contains(&sm.manifest.kind) {
            bail!(
                "layer {name}@{version} is a {} layer; expected {}",
                sm.manifest.kind,
                want.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(" or ")
            );
        }
        Ok((name.to_string(), version))
    };
    let base = resolve(base, &[LayerKind::Base])?;
    let mut app_layers = Vec::new();
    for a in apps {
        let l = resolve(a, &[LayerKind::App, LayerKind::Driver])?;
        if l.0 == base.0 || app_layers.iter().any(|(n, _): &(String, String)| *n == l.0) {
            bail!("layer {} is named twice", l.0);
        }
        app_layers.push(l);
    }
    let r = inv.set_plan(device, DevicePlan { base, apps: app_layers })?;
    tracing::info!(%device, plan = ?r.plan, "device provisioned");
    Ok(serde_json::to_value(r)?)
}
