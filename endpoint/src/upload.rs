//! `upload`: send a device snapshot to the seed, so the device can be restored elsewhere.
//!
//! 1. load the snapshot (the latest by default) and turn it into the record the seed files
//!    ([`oasis_core::backup::SnapshotRecord`]); the record is cut into chunks like a file;
//! 2. ask the seed which of the snapshot's chunks it holds (`Have`): chunks of published layers
//!    and of earlier uploads are already there, so only what changed crosses the WAN;
//! 3. send the rest as stored in the local chunk store (compressed when that pays), in
//!    `PutChunks` batches on a few concurrent streams, every chunk frame waiting for its bytes
//!    under the bandwidth policy (the same policy file as a reflector's);
//! 4. file the record (`PutSnapshot`): the seed checks it names nothing it lacks.
//!
//! A break (lost connection, seed restart) is retried with backoff: the have-query is asked
//! again, so what the seed stored before the break is not sent again. The same holds across
//! runs: running `upload` again after a failure continues where it stopped.

use crate::device::{self, DeviceLock};
use crate::snapshot::{Owner, Snapshot, SnapshotDir};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oasis_core::backup::{
    PutSnapshot, RecordEntry, RecordLayer, RecordRef, SnapshotInfo, SnapshotRecord, RECORD_FORMAT,
};
use oasis_core::chunk::ChunkId;
use oasis_core::compress::StoredChunk;
use oasis_core::net::accept;
use oasis_core::net::{self, Client, NetError, TransportOptions};
use oasis_core::pki::NodeIdentity;
use oasis_core::policy::{BandwidthPolicy, WanLimiter};
use oasis_core::store::ChunkStore;
use oasis_core::wire::{ErrorCode, MAX_IDS_PER_REQUEST};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent upload streams by default.
pub const DEFAULT_UPLOAD_STREAMS: usize = 4;
/// Connection attempts after a break before giving up, by default.
pub const DEFAULT_RETRIES: u32 = 5;
/// Most chunks, and stored bytes, per `PutChunks` stream: a break loses at most one batch per
/// stream in flight, and a batch is small enough to be answered well within time limits.
const BATCH_CHUNKS: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// The endpoint's state directory (identity, chunk store, snapshots).
    pub state_dir: PathBuf,
    /// The seed's address.
    pub seed: SocketAddr,
    /// Snapshot id or "latest".
    pub snapshot: String,
    /// The WAN policy uploads run under; `None`: unlimited.
    pub policy: Option<BandwidthPolicy>,
    pub streams: usize,
    /// Reconnections after a break before giving up.
    pub retries: u32,
    pub progress: bool,
}

impl UploadOptions {
    pub fn new(state_dir: impl Into<PathBuf>, seed: SocketAddr) -> UploadOptions {
        UploadOptions {
            state_dir: state_dir.into(),
            seed,
            snapshot: "latest".into(),
            policy: None,
            streams: DEFAULT_UPLOAD_STREAMS,
            retries: DEFAULT_RETRIES,
            progress: false,
        }
    }
}

/// What an upload did; `oasis-endpoint upload --json` prints it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UploadReport {
    pub device: String,
    /// The snapshot's id on the device.
    pub snapshot: String,
    /// As filed at the seed.
    pub filed: SnapshotInfo,
    pub files: u64,
    /// Plain bytes of all files of the snapshot.
    pub bytes: u64,
    /// Distinct chunks the snapshot needs at the seed (file chunks and record chunks).
    pub chunks_total: u64,
    /// Of those, chunks the seed already held when the upload started.
    pub chunks_at_seed: u64,
    /// Chunks sent (and acknowledged) by this run.
    pub chunks_sent: u64,
    /// Chunk payload bytes sent, as on the wire (compressed size).
    pub bytes_sent: u64,
    /// Plain bytes of the chunks sent.
    pub bytes_sent_plain: u64,
    /// Of the chunks sent, those the seed did not have yet (others raced in meanwhile).
    pub chunks_new_at_seed: u64,
    pub record_bytes: u64,
    /// Connections made (1 without a break).
    pub attempts: u32,
    /// Bytes per second the policy allowed at the start (`None`: unlimited).
    pub rate_limit: Option<u64>,
    /// From the start until the seed had filed the snapshot.
    pub filed_seconds: f64,
    /// From the start until the command's connection had closed (a closed QUIC connection
    /// drains for three probe timeouts, at most [`net::CLOSE_DRAIN`], so that the seed hears
    /// of the close).
    pub seconds: f64,
}

/// Converts a device snapshot into the record the seed files.
pub fn to_record(s: &Snapshot, device: &str) -> SnapshotRecord {
    SnapshotRecord {
        format: RECORD_FORMAT,
        device: device.to_string(),
        id: s.id.to_string(),
        created: s.created,
        chunking: s.chunking,
        layers: s
            .layers
            .iter()
            .map(|l| RecordLayer {
                name: l.name.clone(),
                version: l.version.clone(),
                kind: l.kind,
                digest: l.digest,
            })
            .collect(),
        entries: s
            .entries
            .iter()
            .map(|e| RecordEntry {
                entry: e.entry.clone(),
                layer: match e.owner {
                    Owner::User => None,
                    Owner::Layer(i) => Some(i),
                },
            })
            .collect(),
    }
}

/// A chunk to send: from the local store, or one of the record's (in memory).
#[derive(Clone)]
enum Pending {
    Stored(ChunkId, u32),
    Record(StoredChunk),
}

impl Pending {
    fn id(&self) -> ChunkId {
        match self {
            Pending::Stored(id, _) => *id,
            Pending::Record(c) => c.id,
        }
    }

    fn plain_len(&self) -> u64 {
        match self {
            Pending::Stored(_, len) => *len as u64,
            Pending::Record(c) => c.plain_len as u64,
        }
    }
}

/// A failure worth reconnecting for (the network), or not (everything else).
fn is_transient(e: &NetError) -> bool {
    match e {
        NetError::Connect { .. }
        | NetError::Connection { .. }
        | NetError::Stream { .. }
        | NetError::Timeout { .. } => true,
        // NotFound from PutSnapshot: a chunk went missing at the seed after the have-query
        // (dropped as corrupt); the next attempt's have-query sends it again.
        NetError::Remote { code, .. } => {
            matches!(code, ErrorCode::Unavailable | ErrorCode::NotFound)
        }
        _ => false,
    }
}

struct Counters {
    chunks: AtomicU64,
    bytes: AtomicU64,
    plain: AtomicU64,
    new: AtomicU64,
}

pub async fn upload(opts: &UploadOptions) -> anyhow::Result<UploadReport> {
    let t0 = Instant::now();
    let state_dir = opts.state_dir.clone();
    let snapshot_arg = opts.snapshot.clone();
    let (lock, identity, store, snap) = tokio::task::spawn_blocking(move || {
        let lock = DeviceLock::acquire(&state_dir)?;
        let identity = NodeIdentity::load(&state_dir)
            .with_context(|| format!("loading the node identity from {}", state_dir.display()))?;
        let dir = SnapshotDir::new(&state_dir);
        let id = dir.resolve(&snapshot_arg).with_context(|| {
            format!(
                "no snapshot {snapshot_arg:?} to upload (take one with `oasis-endpoint snapshot`)"
            )
        })?;
        let snap = dir.load(id)?;
        let store = Arc::new(device::open_store(&state_dir)?);
        anyhow::Ok((lock, identity, store, snap))
    })
    .await??;
    let device = identity.info().name.clone();
    if !snap.device.is_empty() && snap.device != device {
        bail!(
            "snapshot {} was taken as device {:?}, but this state directory is enrolled as {device:?}",
            snap.id,
            snap.device
        );
    }
    let record = to_record(&snap, &device);
    record.validate().context("the snapshot does not make a valid record")?;
    let record_bytes = record.encode();
    let (rref, pieces) = RecordRef::cut(&record_bytes);

    // Everything the seed must hold, each chunk once.
    let mut want: Vec<Pending> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for c in record.unique_chunks() {
        if seen.insert(c.id) {
            want.push(Pending::Stored(c.id, c.len));
        }
    }
    for (c, data) in &pieces {
        if seen.insert(c.id) {
            want.push(Pending::Record(StoredChunk::encode_with_id(c.id, data)));
        }
    }
    let (files, bytes) = record.totals();
    let mut report = UploadReport {
        device: device.clone(),
        snapshot: snap.id.to_string(),
        files,
        bytes,
        chunks_total: want.len() as u64,
        record_bytes: record_bytes.len() as u64,
        ..Default::default()
    };

    let limiter = opts.policy.clone().map(|mut p| {
        // The largest frame is a chunk of the device's maximum size plus its header.
        if let Some(note) = p.ensure_burst_covers(snap.chunking.max as u64 + 64) {
            tracing::info!("{note}");
        }
        WanLimiter::new(p)
    });
    report.rate_limit = limiter.as_ref().and_then(|l| l.rate_now());

    let endpoint = match opts.seed {
        SocketAddr::V6(_) => {
            net::client_endpoint_for(opts.seed, &identity, &TransportOptions::default())?
        }
        SocketAddr::V4(_) => net::client_endpoint(&identity, &TransportOptions::default())?,
    };
    let counters = Arc::new(Counters {
        chunks: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        plain: AtomicU64::new(0),
        new: AtomicU64::new(0),
    });
    let bar = progress_bar(opts.progress);
    let put = PutSnapshot { device: device.clone(), id: snap.id.to_string(), record: rref };
    let mut backoff = Duration::from_millis(500);
    let filed = loop {
        report.attempts += 1;
        let attempt = async {
            let client = Client::connect(&endpoint, opts.seed, accept::SEED).await?;
            let result = upload_once(
                &client,
                &want,
                &store,
                limiter.as_ref(),
                opts.streams.max(1),
                &counters,
                &bar,
                &put,
                report.attempts == 1,
            )
            .await;
            client.close();
            result
        };
        match attempt.await {
            Ok((info, at_seed)) => {
                if let Some(n) = at_seed {
                    report.chunks_at_seed = n;
                }
                break info;
            }
            Err(UploadError::Net(e, at_seed))
                if is_transient(&e) && report.attempts <= opts.retries =>
            {
                if let Some(n) = at_seed {
                    report.chunks_at_seed = n;
                }
                tracing::warn!(error = %e, attempt = report.attempts, retry_in = ?backoff, "upload interrupted; resuming");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(UploadError::Net(e, _)) => {
                // A record larger than the seed assembles is refused for good: resuming is no use.
                let again = if matches!(
                    e,
                    oasis_core::net::NetError::Remote { code: ErrorCode::TooLarge, .. }
                ) {
                    "the seed's operator can raise oasis-seed serve --max-record-assembly-bytes"
                } else {
                    "run upload again to resume"
                };
                return Err(anyhow::Error::new(e).context(format!(
                    "uploading snapshot {} to {} ({again})",
                    snap.id, opts.seed
                )));
            }
            Err(UploadError::Local(e)) => return Err(e),
        }
    };
    report.filed_seconds = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    endpoint.close(0u32.into(), b"done");
    oasis_core::net::drain(&endpoint).await;
    drop(lock);
    report.filed = filed;
    report.chunks_sent = counters.chunks.load(Ordering::Relaxed);
    report.bytes_sent = counters.bytes.load(Ordering::Relaxed);
    report.bytes_sent_plain = counters.plain.load(Ordering::Relaxed);
    report.chunks_new_at_seed = counters.new.load(Ordering::Relaxed);
    report.seconds = t0.elapsed().as_secs_f64();
    tracing::info!(
        device = %report.device,
        snapshot = %report.snapshot,
        chunks_sent = report.chunks_sent,
        bytes_sent = report.bytes_sent,
        chunks_at_seed = report.chunks_at_seed,
        "snapshot uploaded"
    );
    Ok(report)
}

enum UploadError {
    /// A network failure, with the have-count if the have-query got through.
    Net(NetError, Option<u64>),
    Local(anyhow::Error),
}

impl From<NetError> for UploadError {
    fn from(e: NetError) -> Self {
        UploadError::Net(e, None)
    }
}

/// One connection's worth: have-query, send what is missing, file the record. Returns the
/// filing and, on the first attempt, how many chunks the seed already held.
#[allow(clippy::too_many_arguments)]
async fn upload_once(
    client: &Client,
    want: &[Pending],
    store: &Arc<ChunkStore>,
    limiter: Option<&WanLimiter>,
    streams: usize,
    counters: &Arc<Counters>,
    bar: &ProgressBar,
    put: &PutSnapshot,
    first: bool,
) -> Result<(SnapshotInfo, Option<u64>), UploadError> {
    let mut missing = Vec::new();
    for batch in want.chunks(MAX_IDS_PER_REQUEST) {
        let ids: Vec<ChunkId> = batch.iter().map(Pending::id).collect();
        let have = client.have(&ids).await?;
        missing.extend(batch.iter().zip(have).filter(|(_, h)| !h).map(|(p, _)| p.clone()));
    }
    let at_seed = first.then_some((want.len() - missing.len()) as u64);
    tracing::info!(
        chunks = want.len(),
        missing = missing.len(),
        "have-query answered: sending what the seed lacks"
    );
    bar.set_length(missing.iter().map(Pending::plain_len).sum());
    bar.set_position(0);

    // Batches by count and plain size (stored size is not known before reading).
    let mut batches: Vec<Vec<Pending>> = Vec::new();
    let mut size = 0u64;
    for p in missing {
        let full = batches
            .last()
            .is_none_or(|b| b.len() >= BATCH_CHUNKS || size + p.plain_len() > BATCH_BYTES);
        if full {
            batches.push(Vec::new());
            size = 0;
        }
        size += p.plain_len();
        batches.last_mut().expect("just pushed").push(p);
    }

    use futures::StreamExt;
    let mut results = futures::stream::iter(batches)
        .map(|batch| async move {
            let store = store.clone();
            let chunks = tokio::task::spawn_blocking(move || read_batch(&store, batch))
                .await
                .map_err(|e| UploadError::Local(e.into()))?
                .map_err(UploadError::Local)?;
            let (received, added) = client.put_chunks(&chunks, limiter).await?;
            if received as usize != chunks.len() {
                return Err(UploadError::Net(
                    NetError::Protocol {
                        addr: client.remote_addr(),
                        problem: format!("stored {received} of {} chunks sent", chunks.len()),
                    },
                    None,
                ));
            }
            let wire: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
            let plain: u64 = chunks.iter().map(|c| c.plain_len as u64).sum();
            counters.chunks.fetch_add(chunks.len() as u64, Ordering::Relaxed);
            counters.bytes.fetch_add(wire, Ordering::Relaxed);
            counters.plain.fetch_add(plain, Ordering::Relaxed);
            counters.new.fetch_add(added as u64, Ordering::Relaxed);
            bar.inc(plain);
            Ok::<(), UploadError>(())
        })
        .buffer_unordered(streams);
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            return Err(match e {
                UploadError::Net(n, _) => UploadError::Net(n, at_seed),
                other => other,
            });
        }
    }
    drop(results);
    match client.put_snapshot(put.clone()).await {
        Ok(info) => Ok((info, at_seed)),
        Err(e) => Err(UploadError::Net(e, at_seed)),
    }
}

/// Reads a batch's chunks as stored locally (verified by the store).
fn read_batch(store: &ChunkStore, batch: Vec<Pending>) -> anyhow::Result<Vec<StoredChunk>> {
    let mut out = Vec::with_capacity(batch.len());
    for p in batch {
        match p {
            Pending::Record(c) => out.push(c),
            Pending::Stored(id, _) => match store.get(&id)? {
                Some(c) => out.push(c),
                None => bail!(
                    "chunk {id} of the snapshot is missing from the local store {} (damaged?): \
                     take a new snapshot and upload that",
                    store.dir().display()
                ),
            },
        }
    }
    Ok(out)
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    b.set_style(
        ProgressStyle::with_template(
            "uploading [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    b
}

/// The bandwidth policy for `--policy FILE` or `--wan-rate RATE` (same units as the policy
/// file: "2MB/s", "80Mbit/s", "unlimited"); neither: unlimited.
pub fn policy_from_flags(
    policy: Option<&Path>,
    wan_rate: Option<&str>,
) -> anyhow::Result<Option<BandwidthPolicy>> {
    match (policy, wan_rate) {
        (Some(_), Some(_)) => {
            bail!("--policy and --wan-rate both given: use one (--wan-rate is a flat cap, --policy a full policy file)")
        }
        (Some(p), None) => Ok(Some(oasis_core::policy::load(p)?)),
        (None, Some(r)) => {
            let text = format!("[wan]\nrate = {}\n", toml_string(r));
            Ok(Some(BandwidthPolicy::from_toml_str(&text, "--wan-rate")?))
        }
        (None, None) => Ok(None),
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_rate_flag_uses_the_policy_format() {
        let p = policy_from_flags(None, Some("2MB/s")).unwrap().unwrap();
        assert_eq!(p.default_rate(), Some(2_000_000));
        assert!(policy_from_flags(None, Some("fast")).is_err());
        assert!(policy_from_flags(None, Some("\"] x")).is_err());
        assert!(policy_from_flags(Some(Path::new("/p")), Some("1MB/s")).is_err());
        assert!(policy_from_flags(None, None).unwrap().is_none());
    }
}
