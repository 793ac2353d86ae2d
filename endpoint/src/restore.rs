//! `restore --from-seed DEVICE[@SNAPSHOT]`: rebuild a device from a snapshot it uploaded to the
//! seed, onto an empty or replaced root.
//!
//! Modes (what is written):
//! - `full`: the whole device as it was: IT-layer files at the versions applied then, and every
//!   user file. The state directory then records those layers as applied on the new root, so
//!   the next `apply` updates it in place like any device.
//! - `apps-and-user`: the layers assigned to this device now (its plan at the seed, applied with
//!   `apply`), then everything the user owned on top: data, profile and the user's own
//!   applications. A user path that an assigned layer now owns keeps the layer's version.
//! - `user`: the user's data and profile only: user-owned entries under the profile
//!   directories (`home`, `root`, `Users` by default, see [`DEFAULT_PROFILE_DIRS`]); nothing of
//!   IT's and none of the user's applications elsewhere. Paths an applied layer owns are kept.
//!
//! The snapshot record comes from the seed (`GetSnapshot`, then its chunks with `GetChunks`,
//! checked against the record digest); file chunks the local store lacks are fetched from the
//! seed, verified, and stored locally, then the tree is written with the same staged writer
//! as `fetch` (temporary files renamed into place), with every entry's owner (as root), mode,
//! extended attributes, mtime and hard links as the snapshot recorded them. A hard link whose
//! file the mode leaves out becomes a file of its own.

use crate::apply::{self, ApplyOptions, ApplyReport};
use crate::device::{self, DeviceLock, DeviceState};
use crate::snapshot::AppliedLayer;
use crate::tree_writer::{self, ChunkReader};
use anyhow::{bail, Context};
use bytes::Bytes;
use oasis_core::backup::{DevicePlan, RecordRef, SnapshotInfo, SnapshotRecord};
use oasis_core::chunk::ChunkId;
use oasis_core::fsmeta::MetaReport;
use oasis_core::manifest::{ChunkRef, LayerManifest};
use oasis_core::net::accept;
use oasis_core::net::{self, ChunkReply, Client, TransportOptions};
use oasis_core::pki::{NodeIdentity, TrustRoot};
use oasis_core::seal::{plan_digest, Seal, Sealed};
use oasis_core::store::ChunkStore;
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Top-level directories holding user profiles and data, for `--mode user`.
pub const DEFAULT_PROFILE_DIRS: &[&str] = &["home", "root", "Users"];
/// Ids per GetChunks request when fetching.
const FETCH_BATCH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    Full,
    AppsAndUser,
    User,
}

impl std::str::FromStr for RestoreMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(RestoreMode::Full),
            "apps-and-user" => Ok(RestoreMode::AppsAndUser),
            "user" => Ok(RestoreMode::User),
            _ => Err(format!("mode {s:?}: expected full, apps-and-user or user")),
        }
    }
}

impl std::fmt::Display for RestoreMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestoreMode::Full => "full",
            RestoreMode::AppsAndUser => "apps-and-user",
            RestoreMode::User => "user",
        })
    }
}

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub state_dir: PathBuf,
    /// The seed (snapshots and their chunks come from it).
    pub seed: SocketAddr,
    /// Where layers come from for `apps-and-user` (reflectors first); empty: the seed.
    pub sources: Vec<SocketAddr>,
    pub device: String,
    /// Snapshot id at the seed; None: the latest.
    pub snapshot: Option<String>,
    pub root: PathBuf,
    pub mode: RestoreMode,
    /// Top-level directories that hold user profiles (`user` mode).
    pub profile_dirs: Vec<String>,
    pub streams: usize,
    pub progress: bool,
}

impl RestoreOptions {
    pub fn new(
        state_dir: impl Into<PathBuf>,
        seed: SocketAddr,
        device: &str,
        root: impl Into<PathBuf>,
        mode: RestoreMode,
    ) -> RestoreOptions {
        RestoreOptions {
            state_dir: state_dir.into(),
            seed,
            sources: Vec::new(),
            device: device.to_string(),
            snapshot: None,
            root: root.into(),
            mode,
            profile_dirs: DEFAULT_PROFILE_DIRS.iter().map(|s| s.to_string()).collect(),
            streams: 4,
            progress: false,
        }
    }
}

/// What a restore did; `restore --json` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    pub device: String,
    pub snapshot: SnapshotInfo,
    pub mode: RestoreMode,
    pub root: String,
    /// Entries written from the snapshot (directories, files, symlinks).
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// User entries left out because a layer applied now owns their path.
    pub skipped_layer_owned: u64,
    /// Entries that are further names of a file written (hard links).
    pub hardlinks: u64,
    /// Metadata the snapshot recorded that could not be applied (owners, set-id bits and
    /// security attributes need root): counted, not dropped.
    pub not_applied: MetaReport,
    /// Chunks fetched from the seed (the rest came from the local store).
    pub chunks_fetched: u64,
    /// Chunk payload bytes received, as sent.
    pub bytes_network: u64,
    /// Layers applied on the root afterwards (full: as in the snapshot; apps-and-user: the plan).
    pub layers: Vec<String>,
    /// The apply of `apps-and-user`.
    pub apply: Option<ApplyReport>,
    pub seconds: f64,
}

/// Splits `DEVICE[@SNAPSHOT]`.
pub fn parse_target(s: &str) -> anyhow::Result<(String, Option<String>)> {
    let (d, id) = match s.split_once('@') {
        Some((d, id)) => (d, Some(id.to_string())),
        None => (s, None),
    };
    oasis_core::pki::validate_node_name("device", d).map_err(anyhow::Error::msg)?;
    if let Some(id) = &id {
        oasis_core::manifest::validate_label("snapshot", id).map_err(anyhow::Error::msg)?;
    }
    Ok((d.to_string(), id))
}

fn in_profile(path: &str, dirs: &[String]) -> bool {
    let top = path.split('/').next().unwrap_or(path);
    dirs.iter().any(|d| d == top)
}

pub async fn restore(opts: &RestoreOptions) -> anyhow::Result<RestoreReport> {
    let t0 = Instant::now();
    if opts.mode == RestoreMode::Full {
        check_empty_root(&opts.root)?;
    }
    let (identity, endpoint) = seed_client(&opts.state_dir, opts.seed).await?;
    let client = Client::connect(&endpoint, opts.seed, accept::SEED).await?;
    let result = restore_with(opts, &identity, &client, t0).await;
    client.close();
    endpoint.close(0u32.into(), b"done");
    oasis_core::net::drain(&endpoint).await;
    result
}

/// This node's identity and a QUIC endpoint that can reach `seed` with it.
async fn seed_client(
    state_dir: &std::path::Path,
    seed: SocketAddr,
) -> anyhow::Result<(NodeIdentity, quinn::Endpoint)> {
    let dir = state_dir.to_path_buf();
    let identity = tokio::task::spawn_blocking(move || NodeIdentity::load(&dir))
        .await?
        .with_context(|| format!("loading the node identity from {}", state_dir.display()))?;
    let endpoint = match seed {
        SocketAddr::V6(_) => {
            net::client_endpoint_for(seed, &identity, &TransportOptions::default())?
        }
        SocketAddr::V4(_) => net::client_endpoint(&identity, &TransportOptions::default())?,
    };
    Ok((identity, endpoint))
}

fn check_empty_root(root: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::read_dir(root) {
        Ok(mut d) => {
            if d.next().is_some() {
                bail!(
                    "{} is not empty: --mode full rebuilds a whole device onto an empty root \
                     (use --mode apps-and-user or user to restore onto a device in use)",
                    root.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", root.display())),
    }
}

/// Fetches a snapshot record from the seed and checks it: the seed's seal on it (before a
/// byte of it is fetched), then its bytes against the sealed digest.
pub async fn fetch_record(
    client: &Client,
    device: &str,
    id: Option<&str>,
    trust: &TrustRoot,
) -> anyhow::Result<(SnapshotInfo, SnapshotRecord)> {
    let (info, rref, seal): (SnapshotInfo, RecordRef, _) =
        client.snapshot(device, id).await.with_context(|| {
            format!(
                "asking {} for snapshot {device}@{}",
                client.remote_addr(),
                id.unwrap_or("latest")
            )
        })?;
    if let Some(asked) = id.filter(|asked| *asked != info.id) {
        bail!("asked the seed for snapshot {device}@{asked}, it answered with {}", info.id);
    }
    let want = Sealed::SnapshotRecord {
        device: device.to_string(),
        id: info.id.clone(),
        digest: rref.digest,
    };
    Seal::check(&seal, trust.manifest_key(), &want)
        .with_context(|| format!("snapshot {device}@{} refused", info.id))?;
    let mut bytes = Vec::with_capacity(rref.len.min(1 << 30) as usize);
    for batch in rref.chunks.chunks(FETCH_BATCH) {
        let mut replies = client.chunks(batch.iter().map(|c| c.id).collect()).await?;
        while let Some(r) = replies.next().await? {
            match r {
                ChunkReply::Chunk(c) => {
                    let plain = c.decode_verified().context("record chunk from the seed")?;
                    bytes.extend_from_slice(&plain);
                }
                ChunkReply::Missing(id) => {
                    bail!("the seed lacks chunk {id} of the snapshot record")
                }
            }
        }
    }
    rref.check(&bytes).map_err(anyhow::Error::msg)?;
    let record = SnapshotRecord::decode(&bytes)?;
    if record.device != device {
        bail!("the seed answered with a snapshot of {}, not {device}", record.device);
    }
    Ok((info, record))
}

async fn restore_with(
    opts: &RestoreOptions,
    identity: &NodeIdentity,
    client: &Client,
    t0: Instant,
) -> anyhow::Result<RestoreReport> {
    let (info, record) =
        fetch_record(client, &opts.device, opts.snapshot.as_deref(), identity.trust()).await?;
    tracing::info!(device = %opts.device, snapshot = %info.id, files = info.files, mode = %opts.mode, "restoring");

    // apps-and-user: the layers assigned now, applied first (apply takes the device lock).
    let mut apply_report = None;
    if opts.mode == RestoreMode::AppsAndUser {
        let plan = sealed_plan(client, identity)
            .await
            .context("asking the seed for this device's layers")?;
        let Some(base) = plan.base else {
            bail!(
                "no layers are assigned to {} yet (it is pending at the seed): an administrator \
                 runs `oasis-seed provision`, or restore with --mode full",
                identity.info().name
            );
        };
        let sources = if opts.sources.is_empty() { vec![opts.seed] } else { opts.sources.clone() };
        let a = apply::apply(&ApplyOptions {
            state_dir: opts.state_dir.clone(),
            sources,
            root: opts.root.clone(),
            base,
            apps: plan.apps,
            streams: opts.streams,
            progress: opts.progress,
            // The plan is the administrator's, from the seed (role-pinned): it may go back.
            allow_downgrade: true,
        })
        .await
        .context("applying the layers assigned to this device")?;
        apply_report = Some(a);
    }

    let state_dir = opts.state_dir.clone();
    let (lock, store) = tokio::task::spawn_blocking(move || {
        let lock = DeviceLock::acquire(&state_dir)?;
        let store = Arc::new(device::open_store(&state_dir)?);
        anyhow::Ok((lock, store))
    })
    .await??;

    // Paths the layers applied now own (user entries there are left to the layer).
    let layer_paths: HashSet<String> = if opts.mode == RestoreMode::Full {
        HashSet::new()
    } else {
        let state = DeviceState::load(&opts.state_dir)?;
        if state.root.as_deref().is_some_and(|r| !same_dir(r, &opts.root)) {
            HashSet::new()
        } else {
            device::applied_manifests(&opts.state_dir, identity, &state)?
                .iter()
                .flat_map(|m| m.entries.iter().map(|e| e.path.clone()))
                .collect()
        }
    };
    // Directories stay even where a layer has them (they hold the user's entries).
    let layer_owned = |e: &oasis_core::backup::RecordEntry| {
        e.entry.node != oasis_core::manifest::Node::Dir && layer_paths.contains(&e.entry.path)
    };
    let selected = select(&record, opts.mode, &opts.profile_dirs);
    let selected_paths: HashSet<&str> = selected.entries.iter().map(|e| e.path.as_str()).collect();
    let skipped = record
        .entries
        .iter()
        .filter(|e| selected_paths.contains(e.entry.path.as_str()) && layer_owned(e))
        .count() as u64;
    let mut manifest =
        record.to_manifest(|e| selected_paths.contains(e.entry.path.as_str()) && !layer_owned(e));
    {
        let files: std::collections::HashMap<&str, &oasis_core::manifest::Entry> = record
            .entries
            .iter()
            .filter(|e| matches!(e.entry.node, oasis_core::manifest::Node::File { .. }))
            .map(|e| (e.entry.path.as_str(), &e.entry))
            .collect();
        crate::revert::detach_hardlinks(&mut manifest.entries, |p| {
            files.get(p).map(|e| (*e).clone())
        });
    }
    manifest.validate().context("the snapshot's tree")?;
    let hardlinks = manifest
        .entries
        .iter()
        .filter(|e| matches!(e.node, oasis_core::manifest::Node::Hardlink { .. }))
        .count() as u64;
    let (files, bytes) =
        manifest.files().fold((0u64, 0u64), |(n, b), (_, size, _)| (n + 1, b + size));

    // Chunks the local store lacks come from the seed.
    let want = manifest.unique_chunks();
    let lacking: Vec<ChunkRef> = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<ChunkRef>> {
            let mut out = Vec::new();
            for c in want {
                if !store.contains(&c.id)? {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .await??
    };
    let (chunks_fetched, bytes_network) =
        fetch_chunks(client, &store, lacking, opts.streams).await?;

    let (root, m, s) = (opts.root.clone(), manifest.clone(), store.clone());
    let written = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        tree_writer::write_tree(&root, &m, &StoreReader(s))
            .with_context(|| format!("writing the restored tree into {}", root.display()))
    })
    .await??;
    if let Some(s) = written.not_applied.summary() {
        tracing::warn!("restore of {}: metadata {s}", opts.device);
    }

    let mut layers: Vec<String> = Vec::new();
    if opts.mode == RestoreMode::Full {
        layers = adopt_layers(opts, identity, client, &record, &store).await?;
    } else if let Some(a) = &apply_report {
        layers = a.layers.clone();
    }
    store.sync()?;
    drop(lock);
    Ok(RestoreReport {
        device: opts.device.clone(),
        snapshot: info,
        mode: opts.mode,
        root: opts.root.display().to_string(),
        entries: manifest.entries.len() as u64,
        files,
        bytes,
        skipped_layer_owned: skipped,
        hardlinks,
        not_applied: written.not_applied,
        chunks_fetched,
        bytes_network,
        layers,
        apply: apply_report,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// After a full restore, records the snapshot's layers as applied on the new root (their
/// manifests fetched from the seed and checked against the digests in the snapshot). A layer
/// the seed no longer publishes leaves the device with no IT layers recorded: every file then
/// counts as the user's until the next apply.
async fn adopt_layers(
    opts: &RestoreOptions,
    identity: &NodeIdentity,
    client: &Client,
    record: &SnapshotRecord,
    store: &Arc<ChunkStore>,
) -> anyhow::Result<Vec<String>> {
    let mut manifests = Vec::new();
    for l in &record.layers {
        let got = crate::sources::get_manifest_with(
            client,
            &l.name,
            Some(&l.version),
            identity.trust(),
            Some(store),
        )
        .await;
        match got.map(|g| g.manifest) {
            Ok(sm) if sm.digest == l.digest => manifests.push(sm),
            Ok(_) => {
                tracing::warn!(layer = %l.label(), "the seed's manifest differs from the one applied when the snapshot was taken; not recording layers");
                manifests.clear();
                break;
            }
            Err(e) => {
                tracing::warn!(layer = %l.label(), error = %format!("{e:#}"), "cannot get the manifest of a layer of the snapshot; not recording layers");
                manifests.clear();
                break;
            }
        }
    }
    let mut state = DeviceState::load(&opts.state_dir)?;
    state.root = Some(std::path::absolute(&opts.root).unwrap_or(opts.root.clone()));
    state.layers = Vec::new();
    if manifests.len() == record.layers.len() {
        for sm in &manifests {
            device::save_manifest(&opts.state_dir, sm)?;
        }
        state.layers = record
            .layers
            .iter()
            .map(|l| AppliedLayer {
                name: l.name.clone(),
                version: l.version.clone(),
                kind: l.kind,
                digest: l.digest,
            })
            .collect();
    }
    state.save(&opts.state_dir)?;
    Ok(state.layers.iter().map(|l| l.label()).collect())
}

/// Fetches `want` from the seed into the local store, verified; returns (chunks, wire bytes).
async fn fetch_chunks(
    client: &Client,
    store: &Arc<ChunkStore>,
    want: Vec<ChunkRef>,
    streams: usize,
) -> anyhow::Result<(u64, u64)> {
    use futures::StreamExt;
    let batches: Vec<Vec<ChunkId>> =
        want.chunks(FETCH_BATCH).map(|b| b.iter().map(|c| c.id).collect()).collect();
    let mut results = futures::stream::iter(batches)
        .map(|ids| async move {
            let mut replies = client.chunks(ids).await?;
            let (mut n, mut wire) = (0u64, 0u64);
            while let Some(r) = replies.next().await? {
                match r {
                    ChunkReply::Chunk(c) => {
                        wire += c.data.len() as u64;
                        let store = store.clone();
                        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                            c.decode_verified()?;
                            store.put(&c)?;
                            Ok(())
                        })
                        .await??;
                        n += 1;
                    }
                    ChunkReply::Missing(id) => {
                        bail!("the seed lacks chunk {id} of the snapshot (was it damaged?)")
                    }
                }
            }
            anyhow::Ok((n, wire))
        })
        .buffer_unordered(streams.max(1));
    let (mut n, mut wire) = (0, 0);
    while let Some(r) = results.next().await {
        let (a, b) = r?;
        n += a;
        wire += b;
    }
    Ok((n, wire))
}

/// Chunks from the local store, verified against their ids.
struct StoreReader(Arc<ChunkStore>);

impl ChunkReader for StoreReader {
    fn read(&self, chunk: &ChunkRef) -> io::Result<Option<Bytes>> {
        self.0.get_plain(&chunk.id).map_err(io::Error::other)
    }
}

/// A layer manifest of `record`'s entries `keep` accepts (re-exported for tests).
pub fn select(
    record: &SnapshotRecord,
    mode: RestoreMode,
    profile_dirs: &[String],
) -> LayerManifest {
    record.to_manifest(|e| match mode {
        RestoreMode::Full => true,
        RestoreMode::AppsAndUser => e.layer.is_none(),
        RestoreMode::User => e.layer.is_none() && in_profile(&e.entry.path, profile_dirs),
    })
}

/// `oasis-endpoint provision`: build this device from the layers the seed assigns it.
#[derive(Clone, Debug)]
pub struct ProvisionOptions {
    pub state_dir: PathBuf,
    pub seed: SocketAddr,
    /// Layer sources (reflectors first); empty: the seed.
    pub sources: Vec<SocketAddr>,
    pub root: PathBuf,
    /// While the device is pending, ask again at this interval (None: fail at once).
    pub wait: Option<Duration>,
    pub streams: usize,
    pub progress: bool,
}

/// This device's plan from the seed, once the seed's seal on it checks.
pub async fn sealed_plan(client: &Client, identity: &NodeIdentity) -> anyhow::Result<DevicePlan> {
    let (plan, seal) = client.plan().await?;
    let device = identity.info().name.clone();
    let want = Sealed::DevicePlan { device, digest: plan_digest(&plan) };
    Seal::check(&seal, identity.trust().manifest_key(), &want)
        .context("the plan for this device refused")?;
    Ok(plan)
}

/// Asks the seed for this device's plan (a device unknown to the seed is listed there as
/// pending), waits for one if asked to, then applies it onto the root.
pub async fn provision(opts: &ProvisionOptions) -> anyhow::Result<ApplyReport> {
    let (identity, endpoint) = seed_client(&opts.state_dir, opts.seed).await?;
    let name = identity.info().name.clone();
    let plan = loop {
        let asked = async {
            let client = Client::connect(&endpoint, opts.seed, accept::SEED).await?;
            let plan = sealed_plan(&client, &identity).await;
            client.close();
            plan
        }
        .await;
        match asked {
            Ok(p) if p.base.is_some() => break p,
            Ok(_) => match opts.wait {
                Some(every) => {
                    tracing::info!(device = %name, "pending at the seed: waiting for an administrator to assign layers (oasis-seed provision)");
                    tokio::time::sleep(every).await;
                }
                None => {
                    endpoint.close(0u32.into(), b"done");
                    bail!(
                        "device {name} is pending at the seed: an administrator assigns its layers \
                         with `oasis-seed provision --data DIR {name} --base NAME@VERSION [--app NAME@VERSION]`, \
                         then run this again (or pass --wait SECONDS)"
                    )
                }
            },
            Err(e) if opts.wait.is_some() => {
                tracing::warn!(error = %e, "cannot ask the seed for this device's plan; trying again");
                tokio::time::sleep(opts.wait.unwrap_or_default()).await;
            }
            Err(e) => return Err(e).context("asking the seed for this device's plan"),
        }
    };
    endpoint.close(0u32.into(), b"done");
    let base = plan.base.expect("checked above");
    tracing::info!(device = %name, base = %format!("{}@{}", base.0, base.1), apps = plan.apps.len(), "plan received; applying");
    let sources = if opts.sources.is_empty() { vec![opts.seed] } else { opts.sources.clone() };
    apply::apply(&ApplyOptions {
        state_dir: opts.state_dir.clone(),
        sources,
        root: opts.root.clone(),
        base,
        apps: plan.apps,
        streams: opts.streams,
        progress: opts.progress,
        // The plan is the administrator's, from the seed (role-pinned): it may go back.
        allow_downgrade: true,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_modes_parse() {
        assert_eq!(parse_target("laptop-1").unwrap(), ("laptop-1".into(), None));
        assert_eq!(parse_target("laptop-1@7").unwrap(), ("laptop-1".into(), Some("7".into())));
        assert!(parse_target("../x").is_err());
        assert!(parse_target("a@").is_err());
        assert_eq!("apps-and-user".parse::<RestoreMode>().unwrap(), RestoreMode::AppsAndUser);
        assert!("everything".parse::<RestoreMode>().is_err());
        assert!(in_profile("home/u/x", &["home".into()]));
        assert!(!in_profile("homework/x", &["home".into()]));
    }
}
