//! `apply`: bring a device root to a set of IT layers (one base, any app layers) in place.
//!
//! 1. lock the device, finish or roll back an interrupted transaction;
//! 2. get the manifests, refuse app-vs-app conflicts, fetch missing chunks into the store;
//! 3. snapshot the whole device (so every user file the layers replace is kept);
//! 4. plan: every IT file as the layers say; files the old layers had and the new drop are
//!    removed unless the user changed them; user paths elsewhere untouched;
//! 5. stage, commit through the journal, prune old snapshots.

use crate::compose::{self, Composed};
use crate::device::{self, DeviceState};
use crate::layer_fetch::{self, LayerFetchReport};
use crate::materialize::ChunkGone;
use crate::session::{Changes, Session};
use crate::snapshot::{AppliedLayer, Snapshot};
use crate::take::TakeReport;
use anyhow::Context;
use oasis_core::manifest::{compare_versions, LayerManifest, Node, SignedManifest};
use oasis_core::store::ChunkStore;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub state_dir: PathBuf,
    pub sources: Vec<SocketAddr>,
    pub root: PathBuf,
    /// (name, version) of the base layer.
    pub base: (String, String),
    pub apps: Vec<(String, String)>,
    pub streams: usize,
    pub progress: bool,
    /// Allows a layer to go to a lower version than the one applied (by
    /// [`oasis_core::manifest::compare_versions`]); refused otherwise, so that an old signed
    /// manifest cannot move a device back to a version with known faults.
    pub allow_downgrade: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ApplyReport {
    pub root: String,
    /// Layers now applied, base first.
    pub layers: Vec<String>,
    /// Layers applied before.
    pub previous: Vec<String>,
    /// The snapshot taken before (holds every user file the apply replaced).
    pub snapshot: u64,
    pub snapshot_seconds: f64,
    pub snapshot_files_hashed: u64,
    #[serde(flatten)]
    pub changes: Changes,
    /// User files at paths a layer now owns: replaced (kept in the snapshot).
    pub user_files_replaced: Vec<String>,
    /// Files a previous layer version had, the new drops, and the user changed: kept.
    pub kept_user_changed: Vec<String>,
    pub fetch: LayerFetchReport,
    pub snapshots_pruned: Vec<u64>,
    /// An interrupted transaction finished or rolled back first.
    pub recovered: Option<String>,
    pub seconds: f64,
}

/// `NAME@VERSION` (both required; split by [`crate::fetch::parse_layer`]).
pub fn parse_exact(s: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match crate::fetch::parse_layer(s) {
        (n, Some(v)) if !n.is_empty() && !v.is_empty() => {
            oasis_core::manifest::validate_label("name", &n).map_err(anyhow::Error::msg)?;
            oasis_core::manifest::validate_label("version", &v).map_err(anyhow::Error::msg)?;
            Ok((n, v))
        }
        _ => anyhow::bail!("{flag} {s:?}: expected NAME@VERSION"),
    }
}

/// Refuses any of `wanted` whose version is lower than the one of that name applied now.
fn refuse_downgrades(applied: &[AppliedLayer], wanted: &[(String, String)]) -> anyhow::Result<()> {
    for (name, version) in wanted {
        let Some(now) = applied.iter().find(|l| &l.name == name) else { continue };
        if compare_versions(version, &now.version) == std::cmp::Ordering::Less {
            anyhow::bail!(
                "{name}@{version} is older than {name}@{}, which this device has applied; \
                 going back is refused unless asked for: pass --allow-downgrade, or go back to a \
                 snapshot with `oasis-endpoint revert`",
                now.version
            );
        }
    }
    Ok(())
}

/// True when what is on disk (`cur`) has the content the layer entry says (content and mode:
/// a time or owner changed alone does not make a file the user's).
fn matches_layer(cur: &oasis_core::manifest::Entry, layer: &oasis_core::manifest::Entry) -> bool {
    match (&cur.node, &layer.node) {
        (Node::Dir, Node::Dir) => true,
        (Node::File { chunks: a, .. }, Node::File { chunks: b, .. }) => {
            a == b && cur.mode == layer.mode
        }
        (Node::Symlink { target: a }, Node::Symlink { target: b }) => a == b,
        (Node::Hardlink { target: a }, Node::Hardlink { target: b }) => a == b,
        _ => false,
    }
}

pub async fn apply(opts: &ApplyOptions) -> anyhow::Result<ApplyReport> {
    let t0 = Instant::now();
    let (state_dir, root, progress) = (opts.state_dir.clone(), opts.root.clone(), opts.progress);
    std::fs::create_dir_all(&opts.root)
        .with_context(|| format!("creating the device root {}", opts.root.display()))?;
    let mut session =
        tokio::task::spawn_blocking(move || Session::open(&state_dir, Some(&root), progress))
            .await??;

    let mut wanted = vec![opts.base.clone()];
    wanted.extend(opts.apps.iter().cloned());
    if !opts.allow_downgrade {
        refuse_downgrades(&session.state.layers, &wanted)?;
    }
    let check = |ms: &[SignedManifest]| -> anyhow::Result<()> {
        let refs: Vec<&LayerManifest> = ms.iter().map(|m| &m.manifest).collect();
        compose::compose(&refs, true)?;
        Ok(())
    };
    let mut retried = false;
    loop {
        let from = layer_fetch::LayerSources {
            state_dir: &opts.state_dir,
            identity: &session.identity,
            addrs: &opts.sources,
            streams: opts.streams,
        };
        let (manifests, fetch) = layer_fetch::fetch_layers(
            &from,
            &wanted,
            session.store.clone(),
            &session.progress,
            &check,
        )
        .await?;
        let (s, r) = tokio::task::spawn_blocking(move || {
            let r = apply_local(&mut session, &manifests, fetch);
            // A chunk that rotted in the store was dropped while staging (nothing was
            // written): drop every other damaged one now, so one fetch gets them all again.
            let r = match r {
                Err(e) if !retried && e.downcast_ref::<ChunkGone>().is_some() => {
                    match drop_damaged(&session.store, &manifests) {
                        Ok(n) => {
                            tracing::warn!(error = %e, damaged = n, "fetching damaged chunks again and retrying the apply");
                            Ok(None)
                        }
                        Err(e2) => Err(e2.context(e)),
                    }
                }
                other => other.map(Some),
            };
            (session, r)
        })
        .await?;
        session = s;
        match r? {
            Some(report) => {
                return Ok(ApplyReport { seconds: t0.elapsed().as_secs_f64(), ..report })
            }
            None => retried = true,
        }
    }
}

/// Reads every chunk of `manifests` from the store once, on all cores: the store drops each
/// whose bytes no longer match. Returns how many were dropped.
fn drop_damaged(store: &ChunkStore, manifests: &[SignedManifest]) -> anyhow::Result<u64> {
    use rayon::prelude::*;
    let mut ids: Vec<_> =
        manifests.iter().flat_map(|m| m.manifest.unique_chunks()).map(|c| c.id).collect();
    ids.sort();
    ids.dedup();
    let gone: Vec<bool> = ids
        .par_iter()
        .map(|id| Ok(store.contains(id)? && store.get(id)?.is_none()))
        .collect::<Result<_, oasis_core::store::StoreError>>()?;
    Ok(gone.into_iter().filter(|g| *g).count() as u64)
}

fn apply_local(
    s: &mut Session,
    manifests: &[SignedManifest],
    fetch: LayerFetchReport,
) -> anyhow::Result<ApplyReport> {
    let new_refs: Vec<&LayerManifest> = manifests.iter().map(|m| &m.manifest).collect();
    let new = compose::compose(&new_refs, true)?;
    let old_manifests = device::applied_manifests(&s.state_dir, &s.identity, &s.state)?;
    let old_refs: Vec<&LayerManifest> = old_manifests.iter().collect();
    let old: Composed = compose::compose(&old_refs, false)?;
    let labels: Vec<String> = new_refs.iter().map(|m| m.label()).collect();

    let (current, snap): (Snapshot, TakeReport) =
        s.snapshot(&format!("before apply {}", labels.join(" ")), false, true)?;

    let mut user_files_replaced = Vec::new();
    let targets: Vec<oasis_core::manifest::Entry> = new
        .sorted()
        .into_iter()
        .map(|e| {
            if let Some(c) = current.get(&e.path) {
                if !old.entries.contains_key(&e.path) && !matches_layer(&c.entry, e) {
                    user_files_replaced.push(e.path.clone());
                }
            }
            e.clone()
        })
        .collect();
    let mut remove = Vec::new();
    let mut kept_user_changed = Vec::new();
    for (path, (old_e, _)) in &old.entries {
        if new.entries.contains_key(path) {
            continue;
        }
        let Some(c) = current.get(path) else { continue };
        if matches_layer(&c.entry, old_e) {
            remove.push(path.clone());
        } else {
            kept_user_changed.push(path.clone());
        }
    }
    for sm in manifests {
        device::save_manifest(&s.state_dir, sm)?;
    }
    let state_after = DeviceState {
        root: Some(s.root.clone()),
        layers: manifests
            .iter()
            .map(|sm| AppliedLayer {
                name: sm.manifest.name.clone(),
                version: sm.manifest.version.clone(),
                kind: sm.manifest.kind,
                digest: sm.digest,
            })
            .collect(),
        snapshot_keep: s.state.snapshot_keep,
    };
    let previous: Vec<String> = s.state.layers.iter().map(|l| l.label()).collect();
    let changes = s.transact(
        &current,
        &targets,
        &remove,
        Some(state_after),
        &format!("apply of {}", labels.join(" ")),
    )?;
    let pruned = s.prune()?;
    Ok(ApplyReport {
        root: s.root.display().to_string(),
        layers: labels,
        previous,
        snapshot: snap.id,
        snapshot_seconds: snap.seconds,
        snapshot_files_hashed: snap.files_hashed,
        changes,
        user_files_replaced,
        kept_user_changed,
        fetch,
        snapshots_pruned: pruned.deleted,
        recovered: s.recovered.clone(),
        seconds: 0.0,
    })
}
