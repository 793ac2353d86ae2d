//! `fetch`: get a signed layer from the first reachable source and write it into a directory,
//! reusing what the endpoint's chunk cache and the directory already hold.
//!
//! Order of work (each step refuses before the next one writes anything):
//! 1. load the node identity, connect to the first reachable source, get the signed manifest
//!    root, open it against the trusted manifest key and fetch the body chunks the cache does
//!    not hold (sources that fail are skipped); the body chunks fetched are kept in the cache,
//!    so the next version of the layer moves only those that changed, plus the root;
//! 2. inspect the target directory against the manifest ([`tree_writer::inspect`]);
//! 3. scan existing files for reusable chunks ([`reuse::scan`]) and look the rest up in the cache
//!    (`STATE_DIR/cache`);
//! 4. stage the tree ([`tree_writer::TreeWriter::prepare`]: directories, empty temporary files)
//!    and download what is still lacking ([`download`]), writing each verified chunk straight
//!    into the staged files; failing over to the next source for chunks a source lacks, keeps
//!    corrupting, or did not deliver before it died;
//! 5. fill in the chunks that come from local files and the cache; a chunk that turns out
//!    unreadable (corrupt cache entry, local file changed meanwhile) is fetched too;
//! 6. commit: give every entry its owner (as root), mode, extended attributes and mtime,
//!    stage hard links, rename everything into place, set the kept files' and the directories'
//!    metadata; with [`Extraneous::Delete`], remove what the layer does not have first;
//! 7. record in the cache where every chunk of the layer now lies in the written files (file
//!    references, see [`oasis_core::store`]) rather than keeping a second copy of each chunk:
//!    writing that copy cost about a tenth of a fetch's CPU. A later fetch, into any directory,
//!    reads them back through [`cached_chunk`], which checks the file's stamp and the chunk's
//!    hash; a chunk whose file was changed or removed since is simply fetched again.

use crate::download::{CacheForm, CacheWriter, Downloader, NetCounters};
use crate::latest::{LatestReport, Resolved};
use crate::reuse::{self, LocalData};
use crate::sources::{self, ManifestTraffic, SourceFailure, Sources};
use crate::tree_writer::{self, ChunkReader, OnDisk, TreeWriter, WriteStats};
use anyhow::{bail, Context};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use oasis_core::compress::Encoding;
use oasis_core::fsmeta::MetaReport;
use oasis_core::manifest::{ChunkRef, LayerManifest, Node};
use oasis_core::net::Client;
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::store::ChunkStore;
use oasis_core::ChunkId;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Default number of concurrent chunk requests.
pub const DEFAULT_STREAMS: usize = 8;
/// Rounds of "write, fetch what turned out unreadable" before giving up.
const MAX_REPAIR_ROUNDS: usize = 2;

/// What to fetch, from where, into where.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Node state directory written by `oasis-seed enroll --role endpoint` (node.pem, node.key,
    /// trust.pem); the chunk cache lives in `STATE_DIR/cache`.
    pub state_dir: PathBuf,
    /// Sources in order of preference: reflectors first, the seed last.
    pub sources: Vec<SocketAddr>,
    pub name: String,
    /// None = the latest version the first answering source knows.
    pub version: Option<String>,
    pub into: PathBuf,
    /// Concurrent chunk requests on the connection.
    pub streams: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl FetchOptions {
    pub fn new(
        state_dir: impl Into<PathBuf>,
        sources: Vec<SocketAddr>,
        name: impl Into<String>,
        version: Option<String>,
        into: impl Into<PathBuf>,
    ) -> FetchOptions {
        FetchOptions {
            state_dir: state_dir.into(),
            sources,
            name: name.into(),
            version,
            into: into.into(),
            streams: DEFAULT_STREAMS,
            progress: false,
        }
    }
}

/// What a fetch does with entries under the target directory that the layer does not have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Extraneous {
    /// Leave them (the default): the directory holds the layer and whatever else it held.
    #[default]
    Keep,
    /// Remove them, as `rsync --delete` does: the directory becomes exactly the layer.
    /// Symlinks are removed, never followed; other filesystems mounted below it and the
    /// endpoint's own state directory are left.
    Delete,
}

/// Splits `NAME[@VERSION]`.
pub fn parse_layer(s: &str) -> (String, Option<String>) {
    match s.split_once('@') {
        Some((name, version)) => (name.to_string(), Some(version.to_string())),
        None => (s.to_string(), None),
    }
}

/// What a fetch did. Printed as one JSON object by `oasis-endpoint fetch --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FetchReport {
    pub layer: String,
    pub version: String,
    /// BLAKE3 of the manifest body (hex).
    pub digest: String,
    /// The source that served the manifest.
    pub source: String,
    /// When "latest" was asked for: the signed statement that said which version it is, and
    /// whether it was stale. None when a version was named.
    pub latest: Option<LatestReport>,
    /// Every source that served the manifest or chunks, in the order used.
    pub sources_used: Vec<String>,
    /// Sources skipped or given up, and why.
    pub source_problems: Vec<SourceFailure>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Further names of files of the layer (hard links).
    pub hardlinks: u64,
    /// Manifest bytes moved: the signed root plus the body chunks not already in the cache,
    /// as sent.
    pub manifest_bytes: u64,
    pub manifest_root_bytes: u64,
    pub manifest_body_bytes: u64,
    /// Body chunks received, of the body's distinct chunks (the rest came from the cache).
    pub manifest_body_chunks_fetched: u64,
    pub manifest_body_chunks: u64,
    /// Plain bytes of all files of the layer.
    pub bytes: u64,
    /// Chunk payload bytes received from the network, as sent (compressed size).
    pub bytes_network: u64,
    /// Plain bytes of the chunks received and accepted.
    pub bytes_fetched: u64,
    /// Plain bytes of the layer's distinct chunks satisfied locally (cache + local files).
    pub bytes_reused: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_local_files: u64,
    /// Distinct chunks of the layer.
    pub chunks_total: u64,
    pub chunks_from_cache: u64,
    pub chunks_from_local_files: u64,
    /// Chunks received and accepted.
    pub chunks_fetched: u64,
    /// Chunks received corrupt (not matching their id), discarded and asked for again.
    pub chunks_refetched: u64,
    /// `Missing` answers (the source lacked the chunk; the next source was asked).
    pub chunks_missing_answers: u64,
    pub files_written: u64,
    /// Files already on disk with the right content (kept; only their metadata was set).
    pub files_unchanged: u64,
    pub symlinks_written: u64,
    pub hardlinks_written: u64,
    pub dirs_created: u64,
    pub bytes_written: u64,
    /// Metadata the layer asks for that could not be applied (owners, set-id bits and
    /// security attributes need root; attributes the filesystem refused): counted, not dropped.
    pub not_applied: MetaReport,
    /// With [`Extraneous::Delete`]: entries removed because the layer does not have them (not
    /// directories, and directories each counted once with what they held).
    pub deleted_files: u64,
    pub deleted_dirs: u64,
    /// Bytes of existing files read to find reusable chunks.
    pub bytes_scanned: u64,
    /// Fetched chunks that could not be stored in the cache, plus 1 if the file references
    /// of the written tree could not be recorded (logged; the tree is complete).
    pub cache_errors: u64,
    pub seconds: f64,
    pub seconds_manifest: f64,
    pub seconds_scan: f64,
    pub seconds_network: f64,
    pub seconds_write: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Local,
    Cache,
    Network,
}

/// Fetches `opts.name[@opts.version]` into `opts.into`, leaving entries the layer does not
/// have. Callable in-process (needs a tokio runtime; either flavour works). Does not set up
/// logging.
pub async fn fetch(opts: &FetchOptions) -> anyhow::Result<FetchReport> {
    fetch_with(opts, Extraneous::Keep).await
}

/// [`fetch`], choosing what happens to entries under `opts.into` the layer does not have.
pub async fn fetch_with(
    opts: &FetchOptions,
    extraneous: Extraneous,
) -> anyhow::Result<FetchReport> {
    let t0 = Instant::now();
    if opts.sources.is_empty() {
        bail!("no source to fetch from (give at least one --from ADDR)");
    }
    let asked = match &opts.version {
        Some(v) => format!("{}@{v}", opts.name),
        None => opts.name.clone(),
    };
    let state_dir = opts.state_dir.clone();
    let identity = tokio::task::spawn_blocking(move || NodeIdentity::load(&state_dir))
        .await?
        .with_context(|| format!("loading the node identity from {}", opts.state_dir.display()))?;
    if identity.info().role != Role::Endpoint {
        tracing::warn!(identity = %identity.info(), "state directory does not hold an endpoint identity");
    }

    // The cache holds the body chunks of manifests fetched before.
    let cache_dir = opts.state_dir.join("cache");
    let cache = {
        let dir = cache_dir.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || ChunkStore::open(&dir))
                .await?
                .with_context(|| format!("opening the chunk cache {}", cache_dir.display()))?,
        )
    };

    // 1. The manifest, from the first source that has a valid one.
    let mut sources = Sources::new(&identity, &opts.state_dir, opts.sources.clone())?;
    let (client, got, latest) = loop {
        let Some(client) = sources.connect_next().await else {
            bail!("{}", no_manifest_error(&asked, &sources.failures));
        };
        let got = async {
            // "Latest" is what the seed's signed statement says, not whatever a source holds.
            let (mut signed, mut unsigned, mut report) = (None, None, None);
            let mut early_root = None;
            if opts.version.is_none() {
                let (trust, state) = (identity.trust(), &opts.state_dir);
                // The source's latest root is asked for beside the signed statement: the two
                // name the same version but for a publish in between, and the manifest then
                // costs no round trip of its own (a WAN round trip at a cold reflector).
                let root = tokio::time::timeout(
                    sources::MANIFEST_TIMEOUT,
                    client.manifest(&opts.name, None),
                );
                let (resolved, root) =
                    tokio::join!(crate::latest::resolve(&client, &opts.name, trust, state), root);
                match resolved? {
                    Resolved::Signed(l, r) => (signed, report) = (Some(l), Some(r)),
                    Resolved::Unsigned(problem) => unsigned = Some(problem),
                }
                early_root = root.ok().and_then(Result::ok);
            }
            let version = match &signed {
                Some(l) => Some(l.version.as_str()),
                None => opts.version.as_deref(),
            };
            // Used only when it is the root of the version asked for; any other (a refusal,
            // another version) is asked for again by version, and answered as such.
            let early_root = early_root.filter(|r| match version {
                Some(v) => {
                    sources::root_version(r, &opts.name, identity.trust()).as_deref() == Some(v)
                }
                None => true,
            });
            let got = sources::get_manifest_from(
                &client,
                &opts.name,
                version,
                identity.trust(),
                Some(&cache),
                early_root,
            )
            .await?;
            if let Some(l) = &signed {
                anyhow::ensure!(
                    got.manifest.digest == l.digest,
                    "the manifest of {} differs from the one the latest statement names",
                    l.label()
                );
            }
            if let Some(problem) = unsigned {
                let v = &got.manifest.root.version;
                let trust = identity.trust();
                report =
                    Some(crate::latest::unsigned(&opts.state_dir, &opts.name, v, trust, problem)?);
            }
            anyhow::Ok((got, report))
        }
        .await;
        match got {
            Ok((got, latest)) => break (client, got, latest),
            Err(e) => {
                sources.fail(client.remote_addr(), format!("{e:#}"));
                client.close();
            }
        }
    };
    let mut traffic = ManifestTraffic::default();
    traffic.add(&got);
    let sm = got.manifest;
    let manifest = Arc::new(sm.manifest);
    let digest = hex::encode(sm.digest);
    let source = client.remote_addr().to_string();
    let mut sources_used = vec![source.clone()];
    tracing::info!(layer = %manifest.label(), %digest, %source, files = manifest.files().count(), bytes = manifest.total_bytes(), "manifest verified");
    let t_manifest = t0.elapsed();

    let progress = progress_bar(opts.progress);

    // 2 + 3. Inspect the target, find what is local, plan.
    let t_scan0 = Instant::now();
    let plan = {
        let (root, manifest, progress) = (opts.into.clone(), manifest.clone(), progress.clone());
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || plan(&root, &manifest, cache, &progress)).await??
    };
    let Plan { cache, local, origin, missing } = plan;
    let t_scan = t_scan0.elapsed();
    let lens: HashMap<ChunkId, u32> =
        manifest.unique_chunks().into_iter().map(|c| (c.id, c.len)).collect();
    let mut origin = origin;

    // 4. Stage the tree (directories, empty temporary files), then download what is lacking,
    // writing each verified chunk straight into the staged files.
    let t_prep0 = Instant::now();
    let writer = {
        let (root, manifest, local) = (opts.into.clone(), manifest.clone(), local.clone());
        tokio::task::spawn_blocking(move || TreeWriter::prepare(&root, manifest, &local.unchanged))
            .await??
    };
    let writer = Arc::new(writer);
    // If this future is dropped (Ctrl-C, a caller's timeout), stop the blocking writer soon;
    // dropping it then removes its temporary files.
    let _cancel = CancelOnDrop(writer.cancel_handle());
    let mut t_write = t_prep0.elapsed();

    let t_net0 = Instant::now();
    let counters = Arc::new(NetCounters::default());
    let cache_writer = {
        let cache = cache.clone();
        Arc::new(
            CacheWriter::start(cache, CacheForm::AsSent)
                .context("starting the cache writer thread")?,
        )
    };
    let downloader = Downloader {
        cache: cache_writer.clone(),
        streams: opts.streams.max(1),
        counters: counters.clone(),
        progress: progress.clone(),
        sink: Some(writer.clone()),
    };
    let mut net = Net { sources, current: Some(client), used: &mut sources_used };
    stage(&progress, "fetch", missing.iter().map(|c| c.len as u64).sum());
    net.download(&downloader, missing, &manifest).await?;
    let mut t_net = t_net0.elapsed();

    // 5. Fill in what came from local files and the cache; fetch what turns out unreadable.
    let reader = Arc::new(LayerReader {
        local: local.clone(),
        cache: cache.clone(),
        bad_local: Mutex::new(HashSet::new()),
    });
    stage(&progress, "write", writer.pending_bytes());
    for round in 0..=MAX_REPAIR_ROUNDS {
        let t = Instant::now();
        let unavailable = {
            let (writer, reader, progress) = (writer.clone(), reader.clone(), progress.clone());
            tokio::task::spawn_blocking(move || writer.write_files(&*reader, Some(&progress)))
                .await??
        };
        t_write += t.elapsed();
        if unavailable.is_empty() {
            break;
        }
        if round == MAX_REPAIR_ROUNDS {
            bail!(
                "{} chunks stayed unreadable after being fetched again (first: {}); is the \
                 cache at {} on a failing disk?",
                unavailable.len(),
                unavailable[0],
                cache.dir().display()
            );
        }
        tracing::warn!(
            chunks = unavailable.len(),
            "chunks unreadable while writing (corrupt cache entry or local file changed); fetching them"
        );
        let t = Instant::now();
        let refs: Vec<ChunkRef> = unavailable
            .iter()
            .map(|id| {
                origin.insert(*id, Origin::Network);
                ChunkRef { id: *id, len: lens.get(id).copied().unwrap_or(0) }
            })
            .collect();
        net.download(&downloader, refs, &manifest).await?;
        t_net += t.elapsed();
    }
    drop(downloader);
    let cache_errors = {
        let cw = cache_writer.clone();
        tokio::task::spawn_blocking(move || cw.finish()).await?
    };
    drop(cache_writer);
    let t = Instant::now();
    let writer = Arc::try_unwrap(writer)
        .map_err(|_| anyhow::anyhow!("internal error: the tree writer is still in use"))?;
    // The state directory may lie inside the target: --delete leaves it.
    let keep = vec![std::path::absolute(&opts.state_dir).unwrap_or(opts.state_dir.clone())];
    let stats: WriteStats = tokio::task::spawn_blocking(move || match extraneous {
        Extraneous::Keep => writer.commit(),
        Extraneous::Delete => writer.commit_exact(&keep),
    })
    .await??;
    t_write += t.elapsed();
    let t_refs = Instant::now();
    let recorded = {
        let (root, manifest, cache) = (opts.into.clone(), manifest.clone(), cache.clone());
        tokio::task::spawn_blocking(move || record_file_refs(&root, &manifest, &cache)).await?
    };
    let cache_errors = match recorded {
        Ok(n) => {
            tracing::debug!(
                chunks = n,
                ms = t_refs.elapsed().as_millis() as u64,
                "file references recorded in the cache"
            );
            cache_errors
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot record the written files in the cache (the tree is complete; a later fetch may download more)");
            cache_errors + 1
        }
    };
    progress.finish_and_clear();
    let source_problems = net.sources.failures.clone();
    net.sources.close().await;

    let mut report = FetchReport {
        layer: manifest.name.clone(),
        version: manifest.version.clone(),
        digest,
        source,
        latest,
        sources_used,
        source_problems,
        files: 0,
        dirs: 0,
        symlinks: 0,
        hardlinks: 0,
        manifest_bytes: traffic.manifest_bytes,
        manifest_root_bytes: traffic.manifest_root_bytes,
        manifest_body_bytes: traffic.manifest_body_bytes,
        manifest_body_chunks_fetched: traffic.manifest_body_chunks_fetched,
        manifest_body_chunks: traffic.manifest_body_chunks,
        bytes: manifest.total_bytes(),
        bytes_network: counters.bytes_network.load(Ordering::Relaxed),
        bytes_fetched: counters.bytes_plain.load(Ordering::Relaxed),
        bytes_reused: 0,
        bytes_from_cache: 0,
        bytes_from_local_files: 0,
        chunks_total: lens.len() as u64,
        chunks_from_cache: 0,
        chunks_from_local_files: 0,
        chunks_fetched: counters.chunks_fetched.load(Ordering::Relaxed),
        chunks_refetched: counters.chunks_refetched.load(Ordering::Relaxed),
        chunks_missing_answers: counters.chunks_missing.load(Ordering::Relaxed),
        files_written: stats.files_written,
        files_unchanged: stats.files_unchanged,
        symlinks_written: stats.symlinks_written,
        hardlinks_written: stats.hardlinks_written,
        dirs_created: stats.dirs_created,
        bytes_written: stats.bytes_written,
        not_applied: stats.not_applied,
        deleted_files: stats.deleted_files,
        deleted_dirs: stats.deleted_dirs,
        bytes_scanned: local.bytes_scanned,
        cache_errors,
        seconds: t0.elapsed().as_secs_f64(),
        seconds_manifest: t_manifest.as_secs_f64(),
        seconds_scan: t_scan.as_secs_f64(),
        seconds_network: t_net.as_secs_f64(),
        seconds_write: t_write.as_secs_f64(),
    };
    for e in &manifest.entries {
        match e.node {
            Node::Dir => report.dirs += 1,
            Node::File { .. } => report.files += 1,
            Node::Symlink { .. } => report.symlinks += 1,
            Node::Hardlink { .. } => report.hardlinks += 1,
        }
    }
    for (id, o) in &origin {
        let len = lens.get(id).copied().unwrap_or(0) as u64;
        match o {
            Origin::Local => {
                report.chunks_from_local_files += 1;
                report.bytes_from_local_files += len;
            }
            Origin::Cache => {
                report.chunks_from_cache += 1;
                report.bytes_from_cache += len;
            }
            Origin::Network => {}
        }
    }
    report.bytes_reused = report.bytes_from_cache + report.bytes_from_local_files;
    Ok(report)
}

struct Plan {
    cache: Arc<ChunkStore>,
    local: Arc<LocalData>,
    origin: HashMap<ChunkId, Origin>,
    missing: Vec<ChunkRef>,
}

/// Inspects the target (refusing unsafe trees before anything is written), scans local files,
/// opens the cache and decides where each distinct chunk comes from.
fn plan(
    root: &Path,
    manifest: &LayerManifest,
    cache: Arc<ChunkStore>,
    progress: &ProgressBar,
) -> anyhow::Result<Plan> {
    let disk = tree_writer::inspect(root, manifest)?;
    let unique = manifest.unique_chunks();
    let wanted: HashSet<ChunkId> = unique.iter().map(|c| c.id).collect();
    let scan_bytes: u64 = disk
        .iter()
        .map(|d| match d {
            OnDisk::File { stamp, .. } => stamp.len,
            _ => 0,
        })
        .sum();
    stage(progress, "scan", scan_bytes);
    let local = reuse::scan(root, manifest, &disk, &wanted, Some(progress));
    let mut origin = HashMap::with_capacity(unique.len());
    let mut missing = Vec::new();
    for c in unique {
        let o = if local.chunks.contains_key(&c.id) {
            Origin::Local
        } else if cache.contains(&c.id)? || cache.has_file_ref(&c.id)? {
            Origin::Cache
        } else {
            missing.push(c);
            Origin::Network
        };
        origin.insert(c.id, o);
    }
    tracing::info!(
        chunks = origin.len(),
        local_files = local.files.len(),
        from_local = origin.values().filter(|o| **o == Origin::Local).count(),
        from_cache = origin.values().filter(|o| **o == Origin::Cache).count(),
        to_fetch = missing.len(),
        unchanged_files = local.unchanged.len(),
        "planned"
    );
    Ok(Plan { cache, local: Arc::new(local), origin, missing })
}

/// The source currently fetched from, and failover to the next.
struct Net<'a> {
    sources: Sources,
    current: Option<Client>,
    used: &'a mut Vec<String>,
}

impl Net<'_> {
    /// Gets every chunk of `pending` into the cache, moving on to the next source for what the
    /// current one does not deliver. Fails naming a chunk no source delivered.
    async fn download(
        &mut self,
        downloader: &Downloader,
        mut pending: Vec<ChunkRef>,
        manifest: &LayerManifest,
    ) -> anyhow::Result<()> {
        let mut why: HashMap<ChunkId, Vec<String>> = HashMap::new();
        while !pending.is_empty() {
            let client = match &self.current {
                Some(c) => c.clone(),
                None => match self.sources.connect_next().await {
                    Some(c) => {
                        self.current = Some(c.clone());
                        c
                    }
                    None => bail!("{}", unfetchable_error(&pending, &why, manifest)),
                },
            };
            let addr = client.remote_addr();
            if !self.used.contains(&addr.to_string()) {
                self.used.push(addr.to_string());
            }
            tracing::info!(source = %addr, chunks = pending.len(), "fetching chunks");
            let out = downloader.fetch_from(&client, pending).await?;
            if out.is_complete() {
                return Ok(());
            }
            let note =
                |list: &[ChunkRef], what: String, why: &mut HashMap<ChunkId, Vec<String>>| {
                    for c in list {
                        why.entry(c.id).or_default().push(what.clone());
                    }
                };
            note(&out.missing, format!("missing at {addr}"), &mut why);
            note(
                &out.rejected,
                format!("corrupt {} times from {addr}", crate::download::ATTEMPTS_PER_SOURCE),
                &mut why,
            );
            if let Some(e) = &out.error {
                note(&out.unfinished, format!("{addr} failed: {e}"), &mut why);
            }
            let problem = match &out.error {
                Some(e) => format!("failed during the download: {e}"),
                None => format!(
                    "lacked {} chunks and sent {} corrupt ones",
                    out.missing.len(),
                    out.rejected.len()
                ),
            };
            self.sources.fail(addr, problem);
            client.close();
            self.current = None;
            pending = out.unfinished;
            pending.extend(out.missing);
            pending.extend(out.rejected);
        }
        Ok(())
    }
}

fn no_manifest_error(asked: &str, failures: &[SourceFailure]) -> String {
    match failures {
        [] => format!("fetching {asked}: no source given"),
        [one] => format!("fetching {asked} from {}: {}", one.addr, one.problem),
        many => {
            let list: Vec<String> =
                many.iter().map(|f| format!("{}: {}", f.addr, f.problem)).collect();
            format!("no source could provide {asked}: {}", list.join("; "))
        }
    }
}

fn unfetchable_error(
    pending: &[ChunkRef],
    why: &HashMap<ChunkId, Vec<String>>,
    manifest: &LayerManifest,
) -> String {
    let c = &pending[0];
    let file = manifest
        .files()
        .find(|(_, _, chunks)| chunks.iter().any(|r| r.id == c.id))
        .map(|(e, _, _)| format!(", part of {}", e.path))
        .unwrap_or_default();
    let reasons =
        why.get(&c.id).map(|w| w.join("; ")).unwrap_or_else(|| "no source reachable".into());
    let more = match pending.len() {
        1 => String::new(),
        n => format!(" ({} more chunks could not be fetched either)", n - 1),
    };
    format!(
        "chunk {} ({} bytes{file}) could not be fetched from any source: {reasons}{more}",
        c.id, c.len
    )
}

struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Chunk bytes for the writer: local files first (re-verified), then the cache.
struct LayerReader {
    local: Arc<LocalData>,
    cache: Arc<ChunkStore>,
    /// Local chunks that no longer matched; not tried again.
    bad_local: Mutex<HashSet<ChunkId>>,
}

impl ChunkReader for LayerReader {
    fn read(&self, chunk: &ChunkRef) -> io::Result<Option<Bytes>> {
        let id = &chunk.id;
        if self.local.chunks.contains_key(id)
            && !self.bad_local.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
        {
            match self.local.read(id) {
                Ok(Some(b)) => return Ok(Some(b)),
                Ok(None) => {}
                Err(e) => tracing::warn!(chunk = %id, error = %e, "cannot read local chunk"),
            }
            self.bad_local.lock().unwrap_or_else(|e| e.into_inner()).insert(*id);
        }
        cached_chunk(&self.cache, id)
    }
}

/// The plain bytes of chunk `id` from an endpoint's cache (`STATE_DIR/cache`), verified: the
/// cache's own copy, or else the chunk read through the file reference a fetch recorded (a
/// file it wrote; used only while the file keeps its stamp and the bytes hash to `id`).
/// `Ok(None)` when neither has it; stale entries are dropped on the way.
pub fn cached_chunk(cache: &ChunkStore, id: &ChunkId) -> io::Result<Option<Bytes>> {
    if let Some(c) = cache.get(id).map_err(io::Error::other)? {
        return match c.encoding {
            Encoding::Raw => Ok(Some(c.data)),
            // get() just checked these bytes decompress to the id's content; decode without
            // hashing a second time.
            Encoding::Zstd => oasis_core::compress::decompress_zstd(&c.data, c.plain_len as usize)
                .map(|v| Some(Bytes::from(v))),
        };
    }
    cache.read_file_ref(id).map_err(io::Error::other)
}

/// Whether [`cached_chunk`] can provide `id` (its own copy, or a file reference whose file
/// still has its stamp; the bytes are only checked when read).
pub fn cache_has_chunk(cache: &ChunkStore, id: &ChunkId) -> io::Result<bool> {
    Ok(cache.contains(id).map_err(io::Error::other)?
        || cache.has_file_ref(id).map_err(io::Error::other)?)
}

/// [`cached_chunk`] for callers without an open store: opens `STATE_DIR/cache` (which fails
/// while another process has it open).
pub fn cached_chunk_in(state_dir: &Path, id: &ChunkId) -> anyhow::Result<Option<Bytes>> {
    let dir = state_dir.join("cache");
    let cache = ChunkStore::open(&dir)
        .with_context(|| format!("opening the chunk cache {}", dir.display()))?;
    Ok(cached_chunk(&cache, id)?)
}

/// Records, for every distinct chunk of the layer that the cache does not hold itself, where
/// it lies in the files just committed under `root`. Returns how many were recorded.
fn record_file_refs(
    root: &Path,
    manifest: &LayerManifest,
    cache: &ChunkStore,
) -> anyhow::Result<u64> {
    use oasis_core::store::{FileRef, RefStamp};
    // Absolute, so the references hold whatever the working directory of a later fetch.
    let root =
        std::fs::canonicalize(root).with_context(|| format!("resolving {}", root.display()))?;
    let mut seen = HashSet::new();
    let mut refs = Vec::new();
    for (e, _, chunks) in manifest.files() {
        if chunks.is_empty() {
            continue;
        }
        let path = root.join(&e.path);
        let md = std::fs::symlink_metadata(&path)
            .with_context(|| format!("inspecting {}", path.display()))?;
        if !md.is_file() {
            continue;
        }
        let stamp = RefStamp::of(&md);
        let mut offset = 0u64;
        for c in chunks {
            if seen.insert(c.id) {
                refs.push((c.id, FileRef::new(&path, offset, c.len, stamp)));
            }
            offset += c.len as u64;
        }
    }
    Ok(cache.put_file_refs(refs.iter().map(|(id, r)| (id, r)))?)
}

fn progress_bar(enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>6} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn stage(pb: &ProgressBar, what: &'static str, total: u64) {
    pb.set_message(what);
    pb.set_length(total);
    pb.set_position(0);
    pb.reset_eta();
}
