//! The seed's store operations, shared by the command line (store opened locally) and the
//! admin socket of a running `oasis-seed serve` (which holds the store's lock).

use crate::catalog::Catalog;
use crate::ingest::PublishOptions;
use crate::keys::Keys;
use anyhow::Context;
use indicatif::ProgressBar;
use oasis_core::chunk::ChunkParams;
use oasis_core::manifest::{self, LayerKind, SignedRoot};
use oasis_core::store::ChunkStore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum StoreCommand {
    Publish {
        name: String,
        version: String,
        kind: LayerKind,
        chunking: ChunkParams,
        src_dir: PathBuf,
    },
    List,
    Show {
        layer: String,
    },
    Assign {
        site: String,
        layer: String,
        window: Option<String>,
        /// Available on demand, not delivered.
        available: bool,
    },
    Unassign {
        site: String,
        layer: String,
    },
    Assignments {
        site: Option<String>,
    },
    Verify,
    /// Assign layers to a device (`oasis-seed provision`).
    Provision {
        device: String,
        base: String,
        #[serde(default)]
        apps: Vec<String>,
    },
    /// Uploaded device snapshots: one device's, or the latest of every device.
    Snapshots {
        device: Option<String>,
        /// Forget this snapshot of `device` (its chunks stay stored).
        #[serde(default)]
        forget: Option<String>,
    },
    /// The device inventory; `pending`: only devices without a plan.
    Devices {
        #[serde(default)]
        pending: bool,
    },
}

/// Splits NAME[@VERSION].
pub fn split_layer(s: &str) -> (&str, Option<&str>) {
    match s.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    }
}

/// Runs one command against an open store. `bar` tracks progress of long operations (it may
/// be hidden: a remote caller polls its position).
pub fn execute(
    cmd: &StoreCommand,
    keys: &dyn Keys,
    store: &ChunkStore,
    bar: Option<ProgressBar>,
) -> anyhow::Result<Value> {
    match cmd {
        StoreCommand::Publish { name, version, kind, chunking, src_dir } => {
            let opts = PublishOptions {
                name: name.clone(),
                version: version.clone(),
                kind: *kind,
                chunking: *chunking,
                progress: false,
            };
            let (_, report) =
                crate::ingest::publish_with_bar(store, keys.root_signer(), src_dir, &opts, bar)?;
            Ok(serde_json::to_value(report)?)
        }
        StoreCommand::List => {
            let mut rows = Vec::new();
            for item in store.manifests() {
                let (name, version, bytes) = item?;
                // The signed root carries every total a listing shows: no body to assemble.
                let sr = SignedRoot::open(&bytes, keys.trust().manifest_key())
                    .with_context(|| format!("stored manifest {name}@{version}"))?;
                let r = &sr.root;
                rows.push(json!({
                    "name": name, "version": version, "kind": r.kind.to_string(),
                    "digest": hex::encode(sr.digest), "files": r.files, "bytes": r.bytes,
                    "entries": r.entries, "body_bytes": r.body_len, "body_chunks": r.body.len(),
                    "created": r.created,
                    "latest": store.latest_version(&name)?.as_deref() == Some(version.as_str()),
                }));
            }
            Ok(Value::Array(rows))
        }
        StoreCommand::Show { layer } => {
            let (name, version) = split_layer(layer);
            let sm = store
                .open_manifest(name, version, keys.trust().manifest_key())
                .with_context(|| format!("stored manifest {layer}"))?
                .with_context(|| format!("layer {layer} is not published"))?;
            Ok(manifest::to_json(&sm))
        }
        StoreCommand::Assign { site, layer, window, available } => {
            let (name, version) = split_layer(layer);
            let version = match version {
                Some(v) => v.to_string(),
                None => store
                    .latest_version(name)?
                    .with_context(|| format!("layer {name} is not published"))?,
            };
            let catalog = Catalog::open(store)?;
            let replaced = match (available, window) {
                (true, Some(_)) => anyhow::bail!(
                    "--available and --window do not go together: an available layer is fetched \
                     when an endpoint asks, and never delivered in a window"
                ),
                (true, None) => catalog.make_available(site, name, &version)?,
                (false, w) => catalog.assign(site, name, &version, w.as_deref())?,
            };
            Ok(json!({ "site": site, "name": name, "version": version,
                       "window": window.clone().unwrap_or_default(), "available": available,
                       "replaced": replaced }))
        }
        StoreCommand::Unassign { site, layer } => {
            let (name, version) = split_layer(layer);
            Ok(serde_json::to_value(Catalog::open(store)?.unassign(site, name, version)?)?)
        }
        StoreCommand::Assignments { site } => {
            Ok(serde_json::to_value(Catalog::open(store)?.list(site.as_deref())?)?)
        }
        StoreCommand::Devices { pending } => {
            Ok(serde_json::to_value(crate::devices::Inventory::open(store)?.list(*pending)?)?)
        }
        StoreCommand::Provision { device, base, apps } => {
            crate::provision::provision(store, keys.trust(), device, base, apps)
        }
        StoreCommand::Snapshots { device, forget } => {
            let snaps = crate::snapshots::Snapshots::open(store)?;
            match (device, forget) {
                (Some(d), Some(id)) => Ok(serde_json::to_value(snaps.remove(d, id)?)?),
                (Some(d), None) => {
                    let list: Vec<_> = snaps.list(d)?.into_iter().map(|f| f.info).collect();
                    if list.is_empty() {
                        anyhow::bail!("device {d} has no snapshots at this seed");
                    }
                    Ok(serde_json::to_value(list)?)
                }
                (None, Some(_)) => anyhow::bail!("--forget needs a DEVICE"),
                (None, None) => Ok(Value::Array(
                    snaps
                        .devices()?
                        .into_iter()
                        .map(|(d, n, latest)| json!({ "device": d, "count": n, "latest": latest }))
                        .collect(),
                )),
            }
        }
        StoreCommand::Verify => {
            let (mut ok, mut bad, mut bytes) = (0u64, 0u64, 0u64);
            let ids: Vec<_> = store.ids().collect::<Result<_, _>>()?;
            for (id, e) in ids {
                match store.get(&id)? {
                    Some(_) => {
                        ok += 1;
                        bytes += e.stored_len as u64;
                    }
                    None => bad += 1,
                }
            }
            // Then every layer's manifest: its root's signature, and a body whose chunks are
            // all stored and decode to valid entries.
            let (mut layers_ok, mut layers_bad) = (0u64, Vec::new());
            for item in store.manifests() {
                let (name, version, root) = item?;
                match store.open_manifest_bytes(&root, keys.trust().manifest_key()) {
                    Ok(_) => layers_ok += 1,
                    Err(e) => layers_bad.push(json!({
                        "layer": format!("{name}@{version}"), "problem": e.to_string(),
                    })),
                }
            }
            Ok(json!({ "chunks_ok": ok, "chunks_dropped": bad, "stored_bytes": bytes,
                       "manifests_ok": layers_ok, "manifests_bad": layers_bad }))
        }
    }
}
