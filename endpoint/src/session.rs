//! What every device command does first and shares: lock the device, finish or roll back an
//! interrupted transaction, load the state, identity and chunk store; then snapshots,
//! transactions and retention on top of that.

use crate::compose;
use crate::device::{self, DeviceLock, DeviceState};
use crate::journal::{self, Op, Stage};
use crate::materialize;
use crate::plan::{self, Plan};
use crate::retention;
use crate::snapshot::Snapshot;
use crate::take::{self, TakeOptions, TakeReport};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oasis_core::chunk::ChunkParams;
use oasis_core::fsmeta::{MetaReport, Writer};
use oasis_core::manifest::{Entry, Node};
use oasis_core::pki::NodeIdentity;
use oasis_core::store::ChunkStore;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The configuration file device commands read (`--config FILE`), set once by the binary.
/// Without it, `STATE_DIR/endpoint.toml` is read if it exists.
static CONFIG_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Makes every session of this process read `path` as the endpoint's configuration file
/// (the binary's `--config`). Only the first call counts.
pub fn set_config_file(path: &Path) {
    let _ = CONFIG_FILE.set(path.to_path_buf());
}

pub struct Session {
    pub state_dir: PathBuf,
    pub state: DeviceState,
    pub identity: NodeIdentity,
    pub root: PathBuf,
    pub store: Arc<ChunkStore>,
    /// What recovery did on start, if anything.
    pub recovered: Option<String>,
    /// Mount points whose filesystems snapshots include (`snapshot_mounts` in the config).
    pub snapshot_mounts: Vec<String>,
    pub progress: ProgressBar,
    _lock: DeviceLock,
}

/// What a transaction changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Changes {
    pub files_written: u64,
    pub symlinks_written: u64,
    pub hardlinks_written: u64,
    /// Entries whose content was right and whose owner, mode, attributes or time were set.
    pub metadata_set: u64,
    pub bytes_written: u64,
    pub dirs_created: u64,
    pub removed: u64,
    pub unchanged: u64,
    pub seconds_stage: f64,
    /// Syncing, journal, renames, syncing again.
    pub seconds_commit: f64,
    /// The part of `seconds_commit` spent waiting for the staged data to reach the disk.
    pub seconds_sync_staged: f64,
    /// Metadata the layers or snapshot ask for that this writer could not apply (owners,
    /// set-id bits and security attributes need root), counted, never dropped silently.
    pub not_applied: MetaReport,
    /// Targets left alone, with the reason (at or below a mount point of another filesystem).
    pub skipped: Vec<String>,
}

impl Session {
    /// `root`: given on the command line (checked against the recorded root), or None to use
    /// the recorded one.
    pub fn open(state_dir: &Path, root: Option<&Path>, progress: bool) -> anyhow::Result<Session> {
        let lock = DeviceLock::acquire(state_dir)?;
        let recovered = journal::recover(state_dir)?;
        let state = DeviceState::load(state_dir)?;
        let identity = NodeIdentity::load(state_dir)
            .with_context(|| format!("loading the node identity from {}", state_dir.display()))?;
        let root = state.root(root)?;
        let store = Arc::new(device::open_store(state_dir)?);
        let config = crate::config::EndpointConfig::load(
            state_dir,
            CONFIG_FILE.get().map(PathBuf::as_path),
        )?;
        Ok(Session {
            state_dir: state_dir.to_path_buf(),
            state,
            identity,
            root,
            store,
            recovered,
            snapshot_mounts: config.snapshot_mounts,
            progress: progress_bar(progress),
            _lock: lock,
        })
    }

    /// Chunking for snapshots: the base layer's, so layer files dedupe with layer chunks.
    pub fn chunking(&self, manifests: &[oasis_core::manifest::LayerManifest]) -> ChunkParams {
        manifests.first().map(|m| m.chunking).unwrap_or_default()
    }

    /// Snapshot of the whole device as it is now. `reuse_identical`: when nothing changed since
    /// the latest snapshot, return that one instead of storing a copy.
    pub fn snapshot(
        &self,
        reason: &str,
        full_verify: bool,
        reuse_identical: bool,
    ) -> anyhow::Result<(Snapshot, TakeReport)> {
        let manifests = device::applied_manifests(&self.state_dir, &self.identity, &self.state)?;
        let refs: Vec<&_> = manifests.iter().collect();
        let composed = compose::compose(&refs, false)?;
        let opts = TakeOptions {
            root: self.root.clone(),
            reason: reason.to_string(),
            device: device::device_name(Some(&self.identity)),
            layers: self.state.layers.clone(),
            owners: composed.owners(),
            chunking: self.chunking(&manifests),
            full_verify,
            reuse_identical,
            exclude: self.excluded(),
            include_mounts: self.snapshot_mounts.clone(),
            progress: self.progress.clone(),
        };
        let r = take::take(&self.state_dir, &self.store, &opts)?;
        self.progress.set_position(0);
        Ok(r)
    }

    /// The state dir, relative to the root, when it lies inside it (a real device whose root
    /// is `/`): snapshotting the chunk store into itself would never end.
    fn excluded(&self) -> Vec<String> {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let (root, state) = (canon(&self.root), canon(&self.state_dir));
        match state.strip_prefix(&root) {
            Ok(rel) if !rel.as_os_str().is_empty() => {
                vec![rel.to_string_lossy().into_owned()]
            }
            _ => Vec::new(),
        }
    }

    /// Turns the root into one holding `targets` (sorted by path, parents first) and none of
    /// `remove`, crash-safely, with every target's metadata; then writes `state_after` (if
    /// any) as the device state.
    pub fn transact(
        &mut self,
        current: &Snapshot,
        targets: &[Entry],
        remove: &[String],
        state_after: Option<DeviceState>,
        what: &str,
    ) -> anyhow::Result<Changes> {
        let plan: Plan = plan::plan(current, targets, remove, Writer::current());
        let mut ch = Changes {
            dirs_created: plan.dirs_created,
            removed: plan.removed,
            unchanged: plan.unchanged,
            metadata_set: plan.metadata_set,
            not_applied: plan.not_applied.clone(),
            skipped: plan.skipped.clone(),
            ..Default::default()
        };
        for p in &ch.skipped {
            tracing::warn!(entry = %p, "left alone");
        }
        for s in &plan.staged {
            match &s.node {
                Node::File { size, .. } => {
                    ch.files_written += 1;
                    ch.bytes_written += size;
                }
                Node::Hardlink { .. } => ch.hardlinks_written += 1,
                _ => ch.symlinks_written += 1,
            }
        }
        let state_changes = state_after.as_ref().is_some_and(|s| *s != self.state);
        if plan.is_empty() && !state_changes {
            return Ok(ch);
        }
        let t = std::time::Instant::now();
        let stage = Stage::begin(&self.state_dir, &self.root, &current.included_filesystems)?;
        self.progress.set_message("write");
        self.progress.set_length(plan.staged_bytes());
        self.progress.set_position(0);
        let staged_report =
            materialize::write_staged(&stage, &plan.staged, &self.store, &self.progress)?;
        ch.not_applied.add(&staged_report);
        ch.seconds_stage = t.elapsed().as_secs_f64();
        journal::crash_point("staged");
        let t = std::time::Instant::now();
        let ops: Vec<Op> = plan.ops;
        let (synced, ops_report) =
            stage.commit(ops, state_after.as_ref().map(|s| s.to_bytes()), what)?;
        ch.seconds_sync_staged = synced;
        ch.not_applied.add(&ops_report);
        ch.seconds_commit = t.elapsed().as_secs_f64();
        if let Some(s) = state_after {
            self.state = s;
        }
        self.progress.finish_and_clear();
        if let Some(s) = ch.not_applied.summary() {
            tracing::warn!("{what}: metadata {s}");
        }
        Ok(ch)
    }

    /// Deletes snapshots beyond the retention setting, and chunks only they used.
    pub fn prune(&self) -> anyhow::Result<retention::PruneReport> {
        retention::prune(&self.state_dir, &self.store, self.state.keep())
    }
}

pub fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>8} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}
