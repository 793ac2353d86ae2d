//! `oasis-sim bench --only tree,tree-rss`: Oasis on OS-shaped trees, every figure a ratio
//! against a standard tool measured in the same run on the same disk.
//!
//! - tree: on a generated OS-shaped tree ([`generate_tree`]: 100,000 files by default with
//!   log-normal sizes and a long tail, ~10 levels of directories, duplicate files and shared
//!   extents, symlinks, hard links, setuid files, user xattrs, varied owners and mtimes; the
//!   same seed gives the same tree) and on a copy of a real tree (`/usr/share`):
//!   publish into a fresh store vs `cp -a` (floor 1.5x); fetch through a warm reflector into
//!   an empty directory with an empty cache vs `rsync -a` from an rsync daemon on 127.0.0.1
//!   (floor 1.5x); apply onto an empty root from the warm reflector vs `cp -a` (floor 2x); the
//!   WAN bytes of a second endpoint fetching through the same reflector (must be 0); the
//!   manifest's size. The source tree is copied once before anything is timed, so every
//!   reader finds it in the page cache alike (dropping caches needs a privilege the benchmark
//!   does not assume); a `sync` precedes every timed step so no one pays for another's
//!   writeback.
//! - tree-rss: a layer of 1,000,000 mostly empty and tiny entries through the real binaries
//!   (`oasis-seed publish`, `oasis-seed serve`, `oasis-reflector serve`, `oasis-endpoint
//!   fetch`), each its own child process: peak RSS (VmHWM) and wall time of each.

use crate::bench::{median, timed};
use crate::live::{self, LiveSeed};
use crate::sample::SplitMix;
use anyhow::Context;
use oasis_core::fsmeta::{apply_meta, MetaReport, Writer};
use oasis_core::manifest::{LayerKind, Meta, Node, Xattr};
use oasis_core::pki::{Role, SeedAuthority, TrustRoot};
use oasis_endpoint::apply::{apply, ApplyOptions};
use oasis_reflector::{RunningReflector, WanLimit};
use oasis_seed::{publish, PublishOptions, PublishReport, RunningSeed};
use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// publish <= 1.5x `cp -a`.
pub const PUBLISH_FLOOR: f64 = 1.5;
/// fetch through a warm reflector <= 1.5x `rsync -a` from a daemon.
pub const FETCH_FLOOR: f64 = 1.5;
/// apply from a warm reflector <= 2x `cp -a`.
pub const APPLY_FLOOR: f64 = 2.0;
/// Peak RSS targets of the 1,000,000-entry layer.
pub const RSS_TARGET_SEED: u64 = 2 << 30;
pub const RSS_TARGET_REFLECTOR: u64 = 1 << 30;
pub const RSS_TARGET_ENDPOINT: u64 = 1 << 30;

const LAYER: &str = "tree";
const VERSION: &str = "1";
const MIB: f64 = 1048576.0;

#[derive(Clone, Debug, clap::Args)]
pub struct TreeBenchArgs {
    /// tree: regular files in the generated OS-shaped tree.
    #[arg(long, default_value_t = 100_000)]
    pub files: usize,
    /// tree: plain bytes of the generated tree's files, in MiB (the size distribution is
    /// scaled to it; e.g. `--files 20000 --tree-mib 300` for a quick run).
    #[arg(long, default_value_t = 1536)]
    pub tree_mib: u64,
    /// tree, tree-rss: seed of the generated trees (the same seed gives the same tree).
    #[arg(long, default_value_t = 1)]
    pub tree_seed: u64,
    /// tree: a real tree, copied aside with `cp -a` and measured like the generated one
    /// (SKIPPED when it does not exist).
    #[arg(long, default_value = "/usr/share")]
    pub real_tree: PathBuf,
    /// tree, tree-rss: where trees, stores and copies go, all on one disk (default: the
    /// system temporary directory). A fresh directory is made inside and removed after.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// tree-rss: entries of the layer (mostly empty and tiny files, and directories).
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: usize,
}

/// Runs `tree` and/or `tree-rss` as `only` asks; returns their JSON.
pub async fn run(
    args: &TreeBenchArgs,
    only: &[String],
    runs: usize,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)
        .with_context(|| format!("creating the benchmark directory {}", base.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("oasis-treebench-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a directory in {}", base.display()))?;
    let mut out = serde_json::Map::new();
    out.insert("dir".into(), tmp.path().display().to_string().into());
    if only.iter().any(|s| s == "tree") {
        out.insert("tree".into(), bench_trees(args, runs, tmp.path(), json).await?);
    }
    if only.iter().any(|s| s == "tree-rss") {
        let (a, d) = (args.clone(), tmp.path().join("rss"));
        let r = tokio::task::spawn_blocking(move || bench_rss(&a, &d, json)).await??;
        out.insert("tree_rss".into(), r);
    }
    Ok(serde_json::Value::Object(out))
}

fn say(json: bool, s: &str) {
    if !json {
        eprintln!("{s}");
    }
}

async fn bench_trees(
    args: &TreeBenchArgs,
    runs: usize,
    tmp: &Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    check_rsync()?;
    let mut trees = serde_json::Map::new();

    let gen_dir = tmp.join("generated");
    let src = gen_dir.join("src");
    say(
        json,
        &format!(
            "tree: generating {} files, {} MiB (seed {}) in {}",
            args.files,
            args.tree_mib,
            args.tree_seed,
            src.display()
        ),
    );
    let (s, files, total, seed) = (src.clone(), args.files, args.tree_mib << 20, args.tree_seed);
    let made = tokio::task::spawn_blocking(move || generate_tree(&s, files, total, seed)).await??;
    say(
        json,
        &format!(
            "tree: generated in {:.1} s: {} dirs (max depth {}), {} symlinks, {} hard links, \
             {} setuid/setgid, {} with xattrs, {} duplicates, {} empty; largest {:.1} MiB, \
             median {} B",
            made.seconds,
            made.dirs,
            made.max_depth,
            made.symlinks,
            made.hardlinks,
            made.setid_files,
            made.xattr_files,
            made.duplicate_files,
            made.empty_files,
            made.largest_file as f64 / MIB,
            made.median_file
        ),
    );
    let label = format!("generated, seed {}", args.tree_seed);
    let mut r = bench_one(&label, &src, &gen_dir, runs, json).await?;
    r["generator"] = serde_json::to_value(&made)?;
    trees.insert("generated".into(), r);
    std::fs::remove_dir_all(&gen_dir)?;

    let real = &args.real_tree;
    if std::fs::symlink_metadata(real).is_ok() {
        let real_dir = tmp.join("real");
        std::fs::create_dir_all(&real_dir)?;
        let src = real_dir.join("src");
        say(json, &format!("tree: copying {} aside with cp -a", real.display()));
        run_cmd(Command::new("cp").arg("-a").arg(real).arg(&src))?;
        let label = format!("real, {}", real.display());
        let mut r = bench_one(&label, &src, &real_dir, runs, json).await?;
        r["path"] = real.display().to_string().into();
        trees.insert("real".into(), r);
        std::fs::remove_dir_all(&real_dir)?;
    } else {
        let why = format!("{} does not exist", real.display());
        if !json {
            println!("tree [real, {}]: SKIPPED: {why}", real.display());
        }
        eprintln!("SKIPPED: tree benchmark on a real tree: {why}");
        trees.insert("real".into(), serde_json::json!({ "skipped": why }));
    }
    Ok(serde_json::Value::Object(trees))
}

/// Entries of a tree on disk, as `find` would count them below its root.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct TreeCount {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Regular files with more than one link.
    pub multi_linked: u64,
    pub bytes: u64,
}

pub fn count_tree(root: &Path) -> std::io::Result<TreeCount> {
    let mut c = TreeCount::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in std::fs::read_dir(&d)? {
            let p = de?.path();
            let md = std::fs::symlink_metadata(&p)?;
            c.entries += 1;
            let ft = md.file_type();
            if ft.is_dir() {
                c.dirs += 1;
                stack.push(p);
            } else if ft.is_symlink() {
                c.symlinks += 1;
            } else if ft.is_file() {
                use std::os::unix::fs::MetadataExt;
                c.files += 1;
                c.bytes += md.len();
                if md.nlink() > 1 {
                    c.multi_linked += 1;
                }
            }
        }
    }
    Ok(c)
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.stdin(Stdio::null()).status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(st.success(), "{cmd:?} failed ({st})");
    Ok(())
}

fn timed_cmd(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    run_cmd(cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

fn sync_disk() -> anyhow::Result<()> {
    run_cmd(&mut Command::new("sync"))
}

fn remove(p: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(p).is_ok() {
        std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// `cp -a src dst` (then `sync` if asked) into a fresh `dst`, after a `sync`; seconds.
fn cp_a(src: &Path, dst: &Path, with_sync: bool) -> anyhow::Result<f64> {
    remove(dst)?;
    sync_disk()?;
    let script = if with_sync { "cp -a \"$0\" \"$1\" && sync" } else { "cp -a \"$0\" \"$1\"" };
    let s = timed_cmd(Command::new("sh").arg("-c").arg(script).arg(src).arg(dst))?;
    remove(dst)?;
    Ok(s)
}

fn check_rsync() -> anyhow::Result<()> {
    let ok = Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        ok,
        "rsync is not installed: the tree benchmark's fetch reference is `rsync -a` from an \
         rsync daemon on 127.0.0.1; install it (e.g. `apt-get install -y rsync`)"
    );
    Ok(())
}

/// A TCP port free on 127.0.0.1 whose UDP twin is free too (QUIC listens on UDP).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 with its UDP twin free after 100 tries")
}

/// Waits until something accepts TCP connections on `addr`, or `child` exits (an error
/// carrying the end of its log), or `limit` passes.
fn wait_listening(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    log: &Path,
    limit: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            anyhow::bail!("{what} exited ({st}) before listening on {addr}: {}", log_tail(log));
        }
        anyhow::ensure!(
            t0.elapsed() < limit,
            "{what} did not listen on {addr} within {} s: {}",
            limit.as_secs(),
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
    format!("{} says: {tail}", log.display())
}

/// An rsync daemon on 127.0.0.1 serving `src` as module `tree`, read-only, as root so it
/// reads every file and sends owners as they are.
struct RsyncDaemon {
    child: Child,
    port: u16,
}

impl RsyncDaemon {
    fn start(src: &Path, work: &Path) -> anyhow::Result<RsyncDaemon> {
        let port = free_port()?;
        let conf = work.join("rsyncd.conf");
        let log = work.join("rsyncd.log");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nmax connections = 8\nlog file = {}\n\n[tree]\n    path = {}\n    \
                 read only = yes\n    uid = 0\n    gid = 0\n",
                log.display(),
                src.display()
            ),
        )?;
        let mut child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg("--port")
            .arg(port.to_string())
            .arg("--address")
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("rsyncd.stderr"))?)
            .spawn()
            .context("starting the rsync daemon")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Err(e) =
            wait_listening(addr, &mut child, "rsync --daemon", &log, Duration::from_secs(20))
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(RsyncDaemon { child, port })
    }

    /// `rsync -a rsync://127.0.0.1:PORT/tree/ dst/` into a fresh `dst`, after a `sync`; seconds.
    fn fetch(&self, dst: &Path) -> anyhow::Result<f64> {
        remove(dst)?;
        sync_disk()?;
        let url = format!("rsync://127.0.0.1:{}/tree/", self.port);
        timed_cmd(Command::new("rsync").arg("-a").arg(url).arg(format!("{}/", dst.display())))
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WAN side of a reflector: what it pulled from upstream, what the seed served.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct Wan {
    reflector_upstream_bytes: u64,
    reflector_upstream_chunks: u64,
    seed_served_bytes: u64,
    seed_served_chunks: u64,
}

impl Wan {
    fn read(refl: &RunningReflector, seed: &RunningSeed) -> Wan {
        Wan {
            reflector_upstream_bytes: refl.stats.upstream_bytes.get(),
            reflector_upstream_chunks: refl.stats.upstream_chunks.get(),
            seed_served_bytes: seed.metrics.served_bytes.get(),
            seed_served_chunks: seed.metrics.served_chunks.get(),
        }
    }

    fn since(self, before: Wan) -> Wan {
        Wan {
            reflector_upstream_bytes: self.reflector_upstream_bytes
                - before.reflector_upstream_bytes,
            reflector_upstream_chunks: self.reflector_upstream_chunks
                - before.reflector_upstream_chunks,
            seed_served_bytes: self.seed_served_bytes - before.seed_served_bytes,
            seed_served_chunks: self.seed_served_chunks - before.seed_served_chunks,
        }
    }

    fn is_zero(&self) -> bool {
        self.reflector_upstream_bytes == 0
            && self.reflector_upstream_chunks == 0
            && self.seed_served_bytes == 0
            && self.seed_served_chunks == 0
    }
}

/// One row of a tree's table.
struct Row {
    what: String,
    reference: String,
    ours: String,
    ratio: Option<f64>,
    floor: String,
    met: Option<bool>,
}

fn print_table(title: &str, rows: &[Row]) {
    println!("{title}");
    println!(
        "  {:<44} {:<24} {:<22} {:>7} {:>7}  met?",
        "what", "reference", "ours", "ratio", "floor"
    );
    for r in rows {
        println!(
            "  {:<44} {:<24} {:<22} {:>7} {:>7}  {}",
            r.what,
            r.reference,
            r.ours,
            r.ratio.map_or("-".to_string(), |x| format!("{x:.2}x")),
            r.floor,
            match r.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "-",
            }
        );
    }
}

fn publish_opts() -> PublishOptions {
    PublishOptions {
        name: LAYER.into(),
        version: VERSION.into(),
        kind: LayerKind::Base,
        chunking: Default::default(),
        progress: false,
    }
}

/// The whole comparison on one source tree; `work` holds every copy, store and state.
async fn bench_one(
    label: &str,
    src: &Path,
    work: &Path,
    runs: usize,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let source = count_tree(src).with_context(|| format!("walking {}", src.display()))?;
    say(
        json,
        &format!(
            "tree [{label}]: {} entries ({} files, {} dirs, {} symlinks), {:.0} MiB; warming the \
             page cache with one cp -a",
            source.entries,
            source.files,
            source.dirs,
            source.symlinks,
            source.bytes as f64 / MIB
        ),
    );
    // One untimed copy so every reader after it finds the tree in the page cache alike.
    let warm = cp_a(src, &work.join("warm"), false)?;

    // 1. publish into a fresh store vs cp -a, alternating the order so page cache and
    //    writeback state favour no one.
    let copy = work.join("cp");
    let (mut cp, mut cp_sync, mut pubs) = (Vec::new(), Vec::new(), Vec::new());
    let mut pub_phases: Vec<(f64, f64, f64)> = Vec::new();
    let mut kept: Option<(PathBuf, SeedAuthority, PublishReport)> = None;
    for run in 0..runs {
        if run % 2 == 0 {
            cp.push(cp_a(src, &copy, false)?);
            cp_sync.push(cp_a(src, &copy, true)?);
        }
        if let Some((d, _, _)) = kept.take() {
            remove(&d)?;
        }
        let data = work.join(format!("seed-{run}"));
        let auth = SeedAuthority::init(&data).context("initialising a seed")?;
        let store = oasis_seed::node::open_store(&data)?;
        sync_disk()?;
        let (key, s) = (auth.signing_key().clone(), src.to_path_buf());
        let (r, wall, cpu) = timed(tokio::task::spawn_blocking(move || {
            let r = publish(&store, &key, &s, &publish_opts());
            drop(store);
            r
        }))
        .await;
        let (_, rep) = r?.with_context(|| format!("publishing {}", src.display()))?;
        say(json, &format!("tree [{label}]: publish run {run}: {wall:.2} s"));
        pubs.push(wall);
        pub_phases.push((rep.seconds_chunking, rep.seconds_commit, cpu));
        kept = Some((data, auth, rep));
        if run % 2 == 1 {
            cp_sync.push(cp_a(src, &copy, true)?);
            cp.push(cp_a(src, &copy, false)?);
        }
    }
    let (data, auth, pubr) = kept.context("no publish ran")?;

    // The layer's manifest, from the store the last publish filled.
    let seed = RunningSeed::start(&data, "127.0.0.1:0".parse()?, None).await?;
    let sm = seed
        .store
        .open_manifest(LAYER, Some(VERSION), auth.trust().manifest_key())?
        .context("the published layer is not in the store")?;
    let mut body_stored = 0u64;
    for c in &sm.root.body {
        let (_, _, len) =
            seed.store.chunk_location(&c.id)?.context("a manifest body chunk is not stored")?;
        body_stored += u64::from(len);
    }
    let hardlinks =
        sm.manifest.entries.iter().filter(|e| matches!(e.node, Node::Hardlink { .. })).count();
    let manifest = serde_json::json!({
        "entries": sm.root.entries,
        "files": sm.root.files,
        "hardlinks": hardlinks,
        "bytes": sm.root.bytes,
        "signed_root_bytes": sm.to_bytes().len(),
        "body_bytes": sm.root.body_len,
        "body_chunks": sm.root.body.len(),
        "body_stored_bytes": body_stored,
    });
    drop(sm);
    let live = LiveSeed { seed, auth, base: work.to_path_buf() };

    // 2. A reflector in front of the seed, warmed by one endpoint's fetch.
    let refl = live.reflector("tree-reflector", "bench", WanLimit::Unlimited).await?;
    let warm_ep = live.enroll(Role::Endpoint, "tree-warm", "bench")?;
    let into = work.join("fetched");
    let t = Instant::now();
    live::full_fetch(&warm_ep, vec![refl.addr], LAYER, VERSION, &into)
        .await
        .context("warming the reflector with one endpoint fetch")?;
    let cold_fetch = t.elapsed().as_secs_f64();
    let wan_cold = Wan::read(&refl, &live.seed);
    remove(&into)?;
    remove(&warm_ep.join("cache"))?;
    say(json, &format!("tree [{label}]: reflector warmed by a fetch of {cold_fetch:.2} s"));

    // 3. Fetch through the warm reflector by a second endpoint (empty cache, empty directory)
    //    vs rsync -a from a daemon.
    let daemon = RsyncDaemon::start(src, work)?;
    let ep = live.enroll(Role::Endpoint, "tree-ep2", "bench")?;
    let rsync_dst = work.join("rsync");
    let (mut ours, mut rs) = (Vec::new(), Vec::new());
    let mut fetch_phases: Vec<[f64; 5]> = Vec::new();
    let (mut fetched_count, mut rsync_count) = (None, None);
    let mut fetch_network = 0;
    for run in 0..runs {
        if run % 2 == 0 {
            rs.push(daemon.fetch(&rsync_dst)?);
            if run == 0 {
                rsync_count = Some(count_tree(&rsync_dst)?);
            }
            remove(&rsync_dst)?;
        }
        remove(&ep.join("cache"))?;
        remove(&into)?;
        sync_disk()?;
        let (r, wall, cpu) =
            timed(live::full_fetch(&ep, vec![refl.addr], LAYER, VERSION, &into)).await;
        let r = r.context("fetching through the warm reflector")?;
        say(json, &format!("tree [{label}]: fetch run {run}: {wall:.2} s"));
        ours.push(wall);
        fetch_phases.push([
            r.seconds_manifest,
            r.seconds_scan,
            r.seconds_network,
            r.seconds_write,
            cpu,
        ]);
        fetch_network = r.bytes_network;
        if run == 0 {
            fetched_count = Some(count_tree(&into)?);
        }
        remove(&into)?;
        if run % 2 == 1 {
            rs.push(daemon.fetch(&rsync_dst)?);
            remove(&rsync_dst)?;
        }
    }
    drop(daemon);
    let wan_fetch = Wan::read(&refl, &live.seed).since(wan_cold);

    // 4. Apply onto an empty root from the warm reflector: a fresh device each run (empty
    //    chunk store, no layers, no snapshots).
    let dev = live.enroll(Role::Endpoint, "tree-device", "bench")?;
    let root = work.join("root");
    let apply_opts = ApplyOptions {
        state_dir: dev.clone(),
        sources: vec![refl.addr],
        root: root.clone(),
        base: (LAYER.into(), VERSION.into()),
        apps: vec![],
        streams: 8,
        progress: false,
    };
    let mut applies = Vec::new();
    let mut apply_phases: Vec<[f64; 6]> = Vec::new();
    let mut applied_count = None;
    let mut apply_written = 0;
    let before_apply = Wan::read(&refl, &live.seed);
    // An apply that runs out of file descriptors is reported as such, then measured again
    // with the limit raised (and put back after) where this process may raise it, so the
    // table shows both; where it may not, there are no apply figures.
    let limit = nofile_limit();
    let mut emfile: Option<(String, Option<u64>)> = None;
    let mut run = 0;
    while run < runs {
        for d in [dev.join("cache"), dev.join("device"), dev.join("snapshots"), root.clone()] {
            remove(&d)?;
        }
        sync_disk()?;
        let (r, wall, cpu) = timed(apply(&apply_opts)).await;
        let r = match r {
            Ok(r) => r,
            Err(e) if emfile.is_none() && format!("{e:#}").contains("os error 24") => {
                let raised = (source.entries * 2 + 4096).max(limit.unwrap_or(0));
                let msg = format!("{e:#}");
                let at = limit.map_or("?".into(), |l| l.to_string());
                say(json, &format!("tree [{label}]: apply FAILED at RLIMIT_NOFILE {at}: {msg}"));
                match set_nofile(raised) {
                    Ok(()) => {
                        say(json, &format!("tree [{label}]: measuring again at {raised}"));
                        emfile = Some((msg, Some(raised)));
                        continue;
                    }
                    Err(why) => {
                        say(json, &format!("tree [{label}]: no apply figures: {why:#}"));
                        emfile = Some((msg, None));
                        break;
                    }
                }
            }
            Err(e) => return Err(e.context("applying the layer from the warm reflector")),
        };
        say(json, &format!("tree [{label}]: apply run {run}: {wall:.2} s"));
        applies.push(wall);
        let c = &r.changes;
        // Opening the device, the manifests, fetching every chunk into the store.
        let before = wall - r.snapshot_seconds - c.seconds_stage - c.seconds_commit;
        apply_phases.push([
            before,
            r.snapshot_seconds,
            c.seconds_stage,
            c.seconds_commit,
            c.seconds_sync_staged,
            cpu,
        ]);
        apply_written = c.bytes_written;
        if run == 0 {
            applied_count = Some(count_tree(&root)?);
        }
        run += 1;
    }
    if let (Some((_, Some(_))), Some(l)) = (&emfile, limit) {
        set_nofile(l).context("putting RLIMIT_NOFILE back")?;
    }
    let wan_apply = Wan::read(&refl, &live.seed).since(before_apply);
    remove(&root)?;
    refl.stop().await;
    live.seed.shutdown();

    let (c, cs, p, f, r, a) = (
        median(cp.clone()),
        median(cp_sync.clone()),
        median(pubs.clone()),
        median(ours.clone()),
        median(rs.clone()),
        if applies.is_empty() { f64::NAN } else { median(applies.clone()) },
    );
    let fph: Vec<f64> =
        (0..5).map(|i| median(fetch_phases.iter().map(|x| x[i]).collect())).collect();
    let aph: Vec<f64> = match apply_phases.is_empty() {
        true => vec![f64::NAN; 6],
        false => (0..6).map(|i| median(apply_phases.iter().map(|x| x[i]).collect())).collect(),
    };
    let pph: Vec<f64> =
        (0..3).map(|i| median(pub_phases.iter().map(|x| [x.0, x.1, x.2][i]).collect())).collect();
    let second_zero = wan_fetch.is_zero();
    let counts_ok = |c: Option<TreeCount>| c.map(|c| c.entries == source.entries);

    if !json {
        let rows = vec![
            Row {
                what: "publish into a fresh store".into(),
                reference: format!("cp -a {c:.2} s"),
                ours: format!("{p:.2} s"),
                ratio: Some(p / c),
                floor: format!("{PUBLISH_FLOOR}x"),
                met: Some(p / c <= PUBLISH_FLOOR),
            },
            Row {
                what: "  (publish vs cp -a + sync)".into(),
                reference: format!("cp -a+sync {cs:.2} s"),
                ours: format!("{p:.2} s"),
                ratio: Some(p / cs),
                floor: "-".into(),
                met: None,
            },
            Row {
                what: "fetch via warm reflector, empty cache/dir".into(),
                reference: format!("rsync -a {r:.2} s"),
                ours: format!("{f:.2} s"),
                ratio: Some(f / r),
                floor: format!("{FETCH_FLOOR}x"),
                met: Some(f / r <= FETCH_FLOOR),
            },
            Row {
                what: "apply onto an empty root from warm refl.".into(),
                reference: format!("cp -a {c:.2} s"),
                ours: if a.is_nan() { "FAILED (EMFILE)".into() } else { format!("{a:.2} s") },
                ratio: (!a.is_nan()).then_some(a / c),
                floor: format!("{APPLY_FLOOR}x"),
                met: Some(a / c <= APPLY_FLOOR),
            },
            Row {
                what: match &emfile {
                    Some((_, Some(n))) => format!("  (apply above ran with RLIMIT_NOFILE {n})"),
                    _ => "  (apply within RLIMIT_NOFILE)".into(),
                },
                reference: limit.map_or("?".into(), |l| format!("limit {l}")),
                ours: if emfile.is_some() { "FAILED: EMFILE".into() } else { "ok".into() },
                ratio: None,
                floor: "-".into(),
                met: Some(emfile.is_none()),
            },
            Row {
                what: "  (apply vs cp -a + sync)".into(),
                reference: format!("cp -a+sync {cs:.2} s"),
                ours: if a.is_nan() { "-".into() } else { format!("{a:.2} s") },
                ratio: (!a.is_nan()).then_some(a / cs),
                floor: "-".into(),
                met: None,
            },
            Row {
                what: "second endpoint's WAN bytes (seed served)".into(),
                reference: "0 B".into(),
                ours: format!(
                    "{} B, {} chunks",
                    wan_fetch.seed_served_bytes, wan_fetch.seed_served_chunks
                ),
                ratio: None,
                floor: "0 B".into(),
                met: Some(second_zero),
            },
        ];
        print_table(
            &format!(
                "tree [{label}]: {} entries ({} files, {} dirs, {} symlinks, {} multi-linked), \
                 {:.0} MiB; median of {runs} runs",
                source.entries,
                source.files,
                source.dirs,
                source.symlinks,
                source.multi_linked,
                source.bytes as f64 / MIB
            ),
            &rows,
        );
        println!(
            "  manifest: {} entries ({} hard links); signed root {} B; body {} B in {} chunks \
             ({} B stored)",
            manifest["entries"],
            manifest["hardlinks"],
            manifest["signed_root_bytes"],
            manifest["body_bytes"],
            manifest["body_chunks"],
            manifest["body_stored_bytes"]
        );
        println!(
            "  layer: {} files, {:.0} MiB plain, {} unique chunks, {:.0} MiB stored",
            pubr.files,
            pubr.bytes as f64 / MIB,
            pubr.unique_chunks,
            pubr.stored_bytes as f64 / MIB
        );
        println!(
            "  publish phases (median): walk, read, chunk, hash, compress, store {:.2} s; \
             references, sync, sign {:.2} s; {:.2} CPU-s",
            pph[0], pph[1], pph[2]
        );
        println!(
            "  fetch phases (median): manifest {:.2} s, scan {:.2} s, network {:.2} s, write \
             {:.2} s; {:.2} CPU-s; {:.0} MiB received; cold (reflector filling) fetch {:.2} s",
            fph[0],
            fph[1],
            fph[2],
            fph[3],
            fph[4],
            fetch_network as f64 / MIB,
            cold_fetch
        );
        println!(
            "  apply phases (median): open, manifest, fetch chunks {:.2} s; pre-apply snapshot \
             {:.2} s; staging {:.2} s; commit {:.2} s (waiting for staged data {:.2} s); {:.2} CPU-s",
            aph[0], aph[1], aph[2], aph[3], aph[4], aph[5]
        );
        println!(
            "  WAN while the second endpoint fetched {runs}x: reflector pulled {} B / {} chunks, \
             seed served {} B / {} chunks; during the applies: reflector pulled {} B, seed \
             served {} B",
            wan_fetch.reflector_upstream_bytes,
            wan_fetch.reflector_upstream_chunks,
            wan_fetch.seed_served_bytes,
            wan_fetch.seed_served_chunks,
            wan_apply.reflector_upstream_bytes,
            wan_apply.seed_served_bytes
        );
        if let Some((msg, _)) = &emfile {
            println!("  apply error at the default open-file limit: {msg}");
        }
        for (what, c) in [
            ("fetched tree", fetched_count),
            ("rsync copy", rsync_count),
            ("applied root", applied_count),
        ] {
            if let Some(c) = c {
                if c.entries != source.entries {
                    println!(
                        "  WARNING: the {what} has {} entries, the source {}",
                        c.entries, source.entries
                    );
                }
            }
        }
        println!(
            "  every run: cp -a {cp:.2?} s, cp -a + sync {cp_sync:.2?} s, publish {pubs:.2?} s, \
             rsync {rs:.2?} s, fetch {ours:.2?} s, apply {applies:.2?} s"
        );
    }
    Ok(serde_json::json!({
        "label": label,
        "runs": runs,
        "source": source,
        "warm_cp_a_s": warm,
        "cp_a_s": c,
        "cp_a_sync_s": cs,
        "publish": {
            "seconds": p, "ratio_vs_cp_a": p / c, "ratio_vs_cp_a_sync": p / cs,
            "floor": PUBLISH_FLOOR, "pass": p / c <= PUBLISH_FLOOR,
            "chunking_s": pph[0], "commit_s": pph[1], "cpu_s": pph[2],
            "files": pubr.files, "dirs": pubr.dirs, "symlinks": pubr.symlinks,
            "bytes": pubr.bytes, "chunks": pubr.chunks, "unique_chunks": pubr.unique_chunks,
            "unique_bytes": pubr.unique_bytes, "stored_bytes": pubr.stored_bytes,
        },
        "manifest": manifest,
        "fetch": {
            "seconds": f, "rsync_s": r, "ratio_vs_rsync": f / r, "floor": FETCH_FLOOR,
            "pass": f / r <= FETCH_FLOOR, "cold_fetch_s": cold_fetch,
            "manifest_s": fph[0], "scan_s": fph[1], "network_s": fph[2], "write_s": fph[3],
            "cpu_s": fph[4], "bytes_network": fetch_network,
            "fetched": fetched_count, "fetched_entries_match": counts_ok(fetched_count),
            "rsync_copy": rsync_count, "rsync_entries_match": counts_ok(rsync_count),
        },
        "apply": {
            "seconds": a, "ratio_vs_cp_a": a / c, "ratio_vs_cp_a_sync": a / cs,
            "floor": APPLY_FLOOR, "pass": a / c <= APPLY_FLOOR,
            "before_stage_s": aph[0], "snapshot_s": aph[1], "stage_s": aph[2],
            "commit_s": aph[3], "sync_staged_s": aph[4], "cpu_s": aph[5],
            "bytes_written": apply_written,
            "applied": applied_count, "applied_entries_match": counts_ok(applied_count),
            "nofile_limit": limit,
            "failed_at_nofile_limit": emfile.as_ref().map(|e| &e.0),
            "measured_with_nofile_limit": emfile.as_ref().map_or(limit, |e| e.1),
        },
        "second_endpoint_wan": {
            "wan": wan_fetch, "zero": second_zero, "cold_fill": wan_cold,
            "during_applies": wan_apply,
        },
        "every_run": {
            "cp_a_s": cp, "cp_a_sync_s": cp_sync, "publish_s": pubs, "rsync_s": rs,
            "fetch_s": ours, "apply_s": applies,
        },
    }))
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Sets this process's open-file limit (soft and hard) with `prlimit` (root may raise it).
fn set_nofile(n: u64) -> anyhow::Result<()> {
    run_cmd(
        Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={n}:{n}")),
    )
}

// ---------------------------------------------------------------------------------------
// tree-rss: the real binaries, each its own process.

/// Peak RSS (VmHWM) of a process in KiB, from `/proc/PID/status`; None once it has exited.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A child process whose peak RSS is polled every 20 ms until it exits.
struct Watched {
    child: Child,
    name: String,
    started: Instant,
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
    log: PathBuf,
}

impl Watched {
    fn spawn(name: &str, cmd: &mut Command, logs: &Path) -> anyhow::Result<Watched> {
        let log = logs.join(format!("{name}.log"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.join(format!("{name}.out")))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let (peak_kib, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s, pid) = (peak_kib.clone(), stop.clone(), child.id());
        let poller = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match vm_hwm_kib(pid) {
                    Some(k) => {
                        p.fetch_max(k, Ordering::Relaxed);
                    }
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Watched {
            child,
            name: name.into(),
            started: Instant::now(),
            peak_kib,
            stop,
            poller: Some(poller),
            log,
        })
    }

    fn peak_bytes(&self) -> u64 {
        if let Some(k) = vm_hwm_kib(self.child.id()) {
            self.peak_kib.fetch_max(k, Ordering::Relaxed);
        }
        self.peak_kib.load(Ordering::Relaxed) << 10
    }

    fn finish(&mut self) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        Measured {
            name: self.name.clone(),
            peak_rss_bytes: self.peak_kib.load(Ordering::Relaxed) << 10,
            wall_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Waits for a command that ends by itself.
    fn wait(mut self) -> anyhow::Result<Measured> {
        loop {
            // VmHWM only grows; the last reading before exit is the peak but for the
            // last 20 ms.
            self.peak_bytes();
            if let Some(st) = self.child.try_wait()? {
                let m = self.finish();
                anyhow::ensure!(
                    st.success(),
                    "{} failed ({st}): {}",
                    self.name,
                    log_tail(&self.log)
                );
                return Ok(m);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the peak of a server, then stops it with SIGTERM (SIGKILL after 20 s).
    fn stop(mut self) -> anyhow::Result<Measured> {
        let peak = self.peak_bytes();
        let mut m = self.finish();
        m.peak_rss_bytes = peak;
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let t0 = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(m)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, serde::Serialize)]
struct Measured {
    name: String,
    peak_rss_bytes: u64,
    wall_s: f64,
}

fn bench_rss(args: &TreeBenchArgs, dir: &Path, json: bool) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let bin_dir = exe.parent().context("this executable has no directory")?.to_path_buf();
    let bin = |name: &str| -> anyhow::Result<PathBuf> {
        let p = bin_dir.join(name);
        anyhow::ensure!(
            p.exists(),
            "{} not found next to {}: build the binaries first (cargo build --release -p \
             oasis-seed -p oasis-reflector -p oasis-endpoint -p oasis-sim)",
            p.display(),
            exe.display()
        );
        Ok(p)
    };
    let (seed_bin, refl_bin, ep_bin) =
        (bin("oasis-seed")?, bin("oasis-reflector")?, bin("oasis-endpoint")?);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let src = dir.join("src");
    say(
        json,
        &format!("tree-rss: writing a layer of {} entries in {}", args.entries, src.display()),
    );
    let made = generate_entries(&src, args.entries, args.tree_seed)?;
    say(
        json,
        &format!(
            "tree-rss: {} files ({} empty), {} dirs, {} symlinks; mean path {:.0} B; {:.1} s",
            made.files,
            made.empty_files,
            made.dirs,
            made.symlinks,
            made.mean_path_bytes,
            made.seconds
        ),
    );
    let data = dir.join("seed");
    let (refl_state, ep_state) = (dir.join("reflector"), dir.join("endpoint"));
    let quiet = |cmd: &mut Command| -> anyhow::Result<()> {
        let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    quiet(Command::new(&seed_bin).arg("init").arg("--data").arg(&data))?;
    for (role, name, out) in
        [("reflector", "rss-reflector", &refl_state), ("endpoint", "rss-endpoint", &ep_state)]
    {
        quiet(
            Command::new(&seed_bin)
                .args(["enroll", "--data"])
                .arg(&data)
                .args(["--role", role, "--name", name, "--site", "bench", "--out"])
                .arg(out),
        )?;
    }

    say(json, "tree-rss: oasis-seed publish");
    let publish = Watched::spawn(
        "publish",
        Command::new(&seed_bin)
            .args(["publish", "--data"])
            .arg(&data)
            .args(["--name", "rss", "--version", "1", "--json"])
            .arg(&src),
        &logs,
    )?
    .wait()?;

    let (seed_port, seed_metrics) = (free_port()?, free_port()?);
    let mut seed = Watched::spawn(
        "seed-serve",
        Command::new(&seed_bin)
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{seed_port}")])
            .args(["--metrics", &format!("127.0.0.1:{seed_metrics}")]),
        &logs,
    )?;
    let limit = Duration::from_secs(120);
    let log = seed.log.clone();
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], seed_metrics)),
        &mut seed.child,
        "oasis-seed serve",
        &log,
        limit,
    )?;
    let (refl_port, refl_metrics) = (free_port()?, free_port()?);
    let mut refl = Watched::spawn(
        "reflector-serve",
        Command::new(&refl_bin)
            .args(["serve", "--state"])
            .arg(&refl_state)
            .args(["--listen", &format!("127.0.0.1:{refl_port}")])
            .args(["--upstream", &format!("127.0.0.1:{seed_port}")])
            .args(["--metrics", &format!("127.0.0.1:{refl_metrics}")])
            .arg("--no-mesh"),
        &logs,
    )?;
    let log = refl.log.clone();
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], refl_metrics)),
        &mut refl.child,
        "oasis-reflector serve",
        &log,
        limit,
    )?;
    let (seed_idle, refl_idle) = (seed.peak_bytes(), refl.peak_bytes());

    say(json, "tree-rss: oasis-endpoint fetch through the reflector");
    let into = dir.join("fetched");
    let fetch = Watched::spawn(
        "endpoint-fetch",
        Command::new(&ep_bin)
            .args(["fetch", "--state"])
            .arg(&ep_state)
            .args(["--from", &format!("127.0.0.1:{refl_port}")])
            .args(["--layer", "rss@1", "--into"])
            .arg(&into)
            .arg("--json"),
        &logs,
    )?
    .wait()?;
    let seed_m = seed.stop()?;
    let refl_m = refl.stop()?;
    let fetched = count_tree(&into)?;
    let report = |name: &str| -> serde_json::Value {
        std::fs::read_to_string(logs.join(format!("{name}.out")))
            .ok()
            .and_then(|s| serde_json::from_str(s.trim()).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let (publish_report, fetch_report) = (report("publish"), report("endpoint-fetch"));

    // The manifest's size, read from the seed's store now that the seed has stopped.
    let manifest = {
        let trust = TrustRoot::load(&data.join(oasis_core::pki::TRUST_FILE))?;
        let store = oasis_seed::node::open_store(&data)?;
        let sm = store
            .open_manifest("rss", Some("1"), trust.manifest_key())?
            .context("the rss layer is not in the seed's store")?;
        serde_json::json!({
            "entries": sm.root.entries,
            "signed_root_bytes": sm.to_bytes().len(),
            "body_bytes": sm.root.body_len,
            "body_chunks": sm.root.body.len(),
        })
    };
    let targets = [
        (&publish, RSS_TARGET_SEED),
        (&seed_m, RSS_TARGET_SEED),
        (&refl_m, RSS_TARGET_REFLECTOR),
        (&fetch, RSS_TARGET_ENDPOINT),
    ];
    if !json {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        println!(
            "tree-rss: a layer of {} entries ({} files, {} empty; {} dirs; {} symlinks; mean \
             path {:.0} B), each node its own process",
            args.entries,
            made.files,
            made.empty_files,
            made.dirs,
            made.symlinks,
            made.mean_path_bytes
        );
        println!("  {:<34} {:>10} {:>14} {:>10}  met?", "process", "wall", "peak RSS", "target");
        let row = |what: &str, m: &Measured, target: Option<u64>| {
            println!(
                "  {:<34} {:>8.1} s {:>10.0} MiB {:>10}  {}",
                what,
                m.wall_s,
                m.peak_rss_bytes as f64 / MIB,
                target.map_or("-".to_string(), |t| format!("< {:.0} GiB", gib(t))),
                match target {
                    Some(t) if m.peak_rss_bytes < t => "met",
                    Some(_) => "NOT MET",
                    None => "-",
                }
            )
        };
        row("oasis-seed publish", &publish, Some(RSS_TARGET_SEED));
        row("oasis-seed serve", &seed_m, Some(RSS_TARGET_SEED));
        row("oasis-reflector serve", &refl_m, Some(RSS_TARGET_REFLECTOR));
        row("oasis-endpoint fetch", &fetch, Some(RSS_TARGET_ENDPOINT));
        println!(
            "  serve processes before the fetch: seed {:.0} MiB, reflector {:.0} MiB",
            seed_idle as f64 / MIB,
            refl_idle as f64 / MIB
        );
        println!(
            "  manifest: {} entries; signed root {} B; body {} B in {} chunks",
            manifest["entries"],
            manifest["signed_root_bytes"],
            manifest["body_bytes"],
            manifest["body_chunks"]
        );
        if fetched.entries != made.entries() {
            println!(
                "  WARNING: the fetched tree has {} entries, the layer {}",
                fetched.entries,
                made.entries()
            );
        }
    }
    let out = serde_json::json!({
        "entries": args.entries,
        "generator": made,
        "manifest": manifest,
        "publish": publish,
        "seed_serve": seed_m,
        "reflector_serve": refl_m,
        "endpoint_fetch": fetch,
        "seed_before_fetch_rss_bytes": seed_idle,
        "reflector_before_fetch_rss_bytes": refl_idle,
        "targets": targets.iter().map(|(m, t)| serde_json::json!({
            "process": m.name, "peak_rss_bytes": m.peak_rss_bytes, "target_bytes": t,
            "pass": m.peak_rss_bytes < *t,
        })).collect::<Vec<_>>(),
        "fetched": fetched,
        "fetched_entries_match": fetched.entries == made.entries(),
        "publish_report": publish_report,
        "fetch_report": fetch_report,
    });
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The generated trees.

/// What [`generate_tree`] or [`generate_entries`] wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GenReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Extra names of files (the files themselves are counted once in `files`).
    pub hardlinks: u64,
    pub empty_files: u64,
    /// Files with the same content as another.
    pub duplicate_files: u64,
    pub setid_files: u64,
    pub xattr_files: u64,
    pub bytes: u64,
    pub largest_file: u64,
    pub median_file: u64,
    pub max_depth: u32,
    pub mean_path_bytes: f64,
    pub seconds: f64,
}

impl GenReport {
    pub fn entries(&self) -> u64 {
        self.files + self.dirs + self.symlinks + self.hardlinks
    }
}

fn below(r: &mut SplitMix, n: usize) -> usize {
    (r.next_u64() % n.max(1) as u64) as usize
}

fn unit(r: &mut SplitMix) -> f64 {
    (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal deviate (Box-Muller).
fn normal(r: &mut SplitMix) -> f64 {
    let u1 = unit(r).max(1e-300);
    let u2 = unit(r);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Directory and file name parts as they occur under / on a Linux system.
const WORDS: &[&str] = &[
    "lib",
    "share",
    "doc",
    "man",
    "locale",
    "icons",
    "hicolor",
    "scalable",
    "apps",
    "python3",
    "dist-packages",
    "site-packages",
    "x86_64-linux-gnu",
    "modules",
    "kernel",
    "drivers",
    "net",
    "firmware",
    "include",
    "linux",
    "gnome",
    "perl5",
    "fonts",
    "truetype",
    "zoneinfo",
    "America",
    "Europe",
    "systemd",
    "system",
    "udev",
    "rules.d",
    "cron.d",
    "default",
    "init.d",
    "alternatives",
    "ssl",
    "certs",
    "mime",
    "packages",
    "texmf",
    "vim",
    "syntax",
    "autoload",
    "plugin",
    "themes",
    "Adwaita",
    "cursors",
    "sounds",
    "backgrounds",
    "applications",
    "dbus-1",
    "services",
    "polkit-1",
    "actions",
    "gtk-3.0",
    "qt5",
    "plugins",
    "translations",
    "help",
    "C",
    "de",
    "fr",
    "ja",
    "zh_CN",
    "LC_MESSAGES",
    "bash-completion",
    "completions",
    "info",
    "common-licenses",
    "xml",
    "sgml",
    "pixmaps",
    "javascript",
    "node_modules",
    "src",
    "test",
    "tests",
    "data",
    "config",
    "util",
    "core",
    "base",
    "misc",
    "tools",
    "bin",
    "sbin",
    "etc",
    "var",
    "cache",
    "log",
    "spool",
    "opt",
    "usr",
    "local",
    "games",
    "cmake",
    "pkgconfig",
    "aclocal",
    "gir-1.0",
    "glib-2.0",
    "schemas",
    "emacs",
    "site-lisp",
    "ruby",
    "gems",
    "go",
    "rustlib",
    "java",
    "jvm",
    "openjdk",
    "security",
    "crypto",
    "sound",
    "video",
    "media",
    "gpu",
    "drm",
    "usb",
    "hid",
    "input",
    "fs",
    "ext4",
    "nfs",
    "block",
    "scsi",
    "arch",
    "x86",
    "boot",
    "efi",
    "grub",
];

const SYLLABLES: &[&str] = &[
    "ar", "be", "co", "da", "el", "fi", "go", "ha", "in", "jo", "ka", "lu", "mo", "ne", "or", "pa",
    "qu", "ri", "so", "tu", "ul", "ve", "wi", "xy", "ze", "gtk", "lib", "net", "kde", "sys", "xml",
    "dev", "img", "cfg", "std", "io", "rt", "ssl", "z", "bz",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Source, configuration, documentation: words from a vocabulary, some licence text.
    Text,
    /// Executables and libraries: random code, shared extents, tables.
    Binary,
    /// Already compressed (images, archives): incompressible.
    Packed,
}

const EXTS: &[(&str, Kind)] = &[
    (".so", Kind::Binary),
    (".h", Kind::Text),
    (".py", Kind::Text),
    (".txt", Kind::Text),
    ("", Kind::Binary),
    (".gz", Kind::Packed),
    (".png", Kind::Packed),
    (".svg", Kind::Text),
    (".conf", Kind::Text),
    (".mo", Kind::Binary),
    (".html", Kind::Text),
    (".json", Kind::Text),
    (".xml", Kind::Text),
    (".desktop", Kind::Text),
    (".pc", Kind::Text),
    (".a", Kind::Binary),
    (".ko", Kind::Binary),
    (".jar", Kind::Packed),
    (".pyc", Kind::Binary),
    (".md", Kind::Text),
    ("", Kind::Text),
];

const BIG_EXTS: &[(&str, Kind)] = &[
    (".so", Kind::Binary),
    ("", Kind::Binary),
    (".ko", Kind::Binary),
    (".a", Kind::Binary),
    (".jar", Kind::Packed),
    (".pack", Kind::Packed),
    (".dat", Kind::Binary),
];

fn syllables(r: &mut SplitMix, max: usize) -> String {
    (0..1 + below(r, max)).map(|_| SYLLABLES[below(r, SYLLABLES.len())]).collect()
}

fn dir_name(r: &mut SplitMix) -> String {
    let w = WORDS[below(r, WORDS.len())];
    match below(r, 10) {
        0..=5 => w.to_string(),
        6..=7 => format!("{w}-{}", syllables(r, 2)),
        _ => format!("{w}{}.{}", below(r, 10), below(r, 20)),
    }
}

fn file_stem(r: &mut SplitMix) -> String {
    match below(r, 10) {
        0..=3 => format!("{}{}", WORDS[below(r, WORDS.len())], syllables(r, 2)),
        4..=6 => format!("{}-{}", syllables(r, 3), syllables(r, 2)),
        _ => format!("{}_{}", WORDS[below(r, WORDS.len())], below(r, 1000)),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `dir/name`, or `dir/name.N` for the first N that no earlier entry took.
fn unique(taken: &mut HashSet<String>, dir: &str, name: &str) -> String {
    let mut p = join(dir, name);
    let mut i = 1;
    while !taken.insert(p.clone()) {
        p = join(dir, &format!("{name}.{i}"));
        i += 1;
    }
    p
}

/// `n` directories under a root (index 0, ""), each below a uniformly chosen earlier one no
/// deeper than `max_depth - 1`: a random recursive tree, whose depth grows with ln(n) as real
/// file systems' do (~9 levels for 8,000 directories). Parents come before their children.
fn build_dirs(
    r: &mut SplitMix,
    n: usize,
    max_depth: u32,
    taken: &mut HashSet<String>,
) -> (Vec<String>, Vec<u32>) {
    let mut paths = vec![String::new()];
    let mut depth = vec![0u32];
    for top in ["bin", "boot", "etc", "lib", "opt", "sbin", "srv", "usr", "var"] {
        if paths.len() > n {
            break;
        }
        paths.push(unique(taken, "", top));
        depth.push(1);
    }
    while paths.len() < n + 1 {
        let p = below(r, paths.len());
        if depth[p] >= max_depth {
            continue;
        }
        let name = dir_name(r);
        let path = unique(taken, &paths[p], &name);
        paths.push(path);
        depth.push(depth[p] + 1);
    }
    (paths, depth)
}

/// A directory for a new file: the deeper of two random ones (files gather in leaves).
fn pick_dir(r: &mut SplitMix, depth: &[u32]) -> usize {
    let (a, b) = (below(r, depth.len()), below(r, depth.len()));
    if depth[a] >= depth[b] {
        a
    } else {
        b
    }
}

/// The relative path from directory `from` to `to` (both relative to the tree's root).
fn relative(from: &str, to: &str) -> String {
    let a: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let b: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let k = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<&str> = vec![".."; a.len() - k];
    parts.extend(&b[k..]);
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

fn parent_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// Shared material for file contents: a vocabulary, licence-like boilerplate, and a pool
/// of "library code" that binaries embed extents of (so chunks recur across files).
struct Pools {
    words: Vec<Vec<u8>>,
    boiler: Vec<u8>,
    shared: Vec<u8>,
}

impl Pools {
    fn new(seed: u64) -> Pools {
        let mut r = SplitMix(seed ^ 0x9e37_79b9);
        let words: Vec<Vec<u8>> = (0..4096)
            .map(|_| {
                let n = 2 + below(&mut r, 9);
                (0..n).map(|_| b"etaoinshrdlucmfwypvb"[below(&mut r, 20)]).collect()
            })
            .collect();
        let mut p = Pools { words, boiler: Vec::new(), shared: vec![0u8; 16 << 20] };
        let mut boiler = Vec::with_capacity(96 << 10);
        while boiler.len() < 64 << 10 {
            p.line(&mut r, &mut boiler);
        }
        p.boiler = boiler;
        let mut shared = std::mem::take(&mut p.shared);
        for block in shared.chunks_mut(64 << 10) {
            if below(&mut r, 3) == 0 {
                // Tables and padding: compressible.
                let mut t = Vec::with_capacity(block.len());
                while t.len() < block.len() {
                    p.line(&mut r, &mut t);
                    t.extend(std::iter::repeat_n(0u8, below(&mut r, 256)));
                }
                block.copy_from_slice(&t[..block.len()]);
            } else {
                r.fill(block);
            }
        }
        p.shared = shared;
        p
    }

    /// One line of 4-12 words; frequent words are likelier (roughly Zipf).
    fn line(&self, r: &mut SplitMix, out: &mut Vec<u8>) {
        let n = self.words.len();
        for i in 0..4 + below(r, 9) {
            if i > 0 {
                out.push(b' ');
            }
            let w = below(r, n) * below(r, n) / n;
            out.extend_from_slice(&self.words[w]);
        }
        out.push(b'\n');
    }

    /// The content of a file: a function of (kind, seed, size) alone, so duplicates are
    /// the same triple.
    fn content(&self, kind: Kind, seed: u64, size: usize) -> Vec<u8> {
        let mut r = SplitMix(seed);
        let mut out = Vec::with_capacity(size + (256 << 10));
        match kind {
            Kind::Packed => {
                out.resize(size, 0);
                r.fill(&mut out);
            }
            Kind::Text => {
                while out.len() < size {
                    if below(&mut r, 40) == 0 {
                        let len = 512 + below(&mut r, 3584);
                        let at = below(&mut r, self.boiler.len() - len);
                        out.extend_from_slice(&self.boiler[at..at + len]);
                    } else {
                        self.line(&mut r, &mut out);
                    }
                }
            }
            Kind::Binary => {
                while out.len() < size {
                    match below(&mut r, 10) {
                        0..=3 => {
                            let at = out.len();
                            out.resize(at + 4096 + below(&mut r, 60 << 10), 0);
                            r.fill(&mut out[at..]);
                        }
                        4..=6 => {
                            let len = (16 << 10) + below(&mut r, 240 << 10);
                            let at = below(&mut r, self.shared.len() - len);
                            out.extend_from_slice(&self.shared[at..at + len]);
                        }
                        _ => {
                            let end = out.len() + 2048 + below(&mut r, 30 << 10);
                            while out.len() < end {
                                self.line(&mut r, &mut out);
                                out.extend(std::iter::repeat_n(0u8, below(&mut r, 64)));
                            }
                        }
                    }
                }
            }
        }
        out.truncate(size);
        out
    }
}

/// Owner, time and (if asked) user xattrs of an entry: mostly root's, some a user's or a
/// service's; mtimes spread over 2015-2024 with nanoseconds.
fn gen_meta(r: &mut SplitMix, xattrs: bool) -> Meta {
    const OWNERS: [(u32, u32); 5] = [(1000, 1000), (33, 33), (65534, 65534), (0, 4), (0, 50)];
    let (uid, gid) = if below(r, 100) < 95 { (0, 0) } else { OWNERS[below(r, OWNERS.len())] };
    let mut x = Vec::new();
    if xattrs {
        // Pushed in name order, as Meta wants them.
        let origin = format!("pkg-{}", below(r, 500)).into_bytes();
        if below(r, 2) == 0 {
            let mut v = vec![0u8; 32];
            r.fill(&mut v);
            x.push(Xattr { name: "user.checksum".into(), value: v });
        }
        x.push(Xattr { name: "user.comment".into(), value: b"oasis tree benchmark".to_vec() });
        x.push(Xattr { name: "user.origin".into(), value: origin });
    }
    Meta {
        uid,
        gid,
        mtime: 1_420_070_400 + below(r, 10 * 365 * 86_400) as i64,
        mtime_nsec: below(r, 1_000_000_000) as u32,
        xattrs: x,
    }
}

struct PlannedFile {
    path: String,
    size: u64,
    kind: Kind,
    content_seed: u64,
    mode: u32,
    meta: Meta,
    duplicate: bool,
}

/// Writes a deterministic OS-shaped tree of `files` regular files totalling about `total`
/// bytes under `root` (which must not exist yet):
/// - sizes log-normal around 3 KiB (sigma 1.6), 3% empty, and a long tail of one file in
///   2,000 (at least 4) log-uniform between 1 and 48 MiB, all scaled so the total is `total`;
/// - one directory per 12 files, a random recursive tree at most 12 deep (~10 typical);
/// - text, binary and already-compressed contents; 5% of the files duplicate an earlier one
///   (same name elsewhere, as licence files and copied headers do), binaries share extents
///   of a 16 MiB pool, texts share licence-like paragraphs;
/// - 4% symlinks (relative to files and directories, some absolute, some dangling), one hard
///   link per 5,000 files (at least 3), one setuid/setgid file per 10,000 (at least 3), user
///   xattrs on one file in 2,000 (at least 5), 5% of entries not owned by root, mtimes
///   spread over ten years with nanoseconds, a few 0700 and sticky directories.
pub fn generate_tree(
    root: &Path,
    files: usize,
    total: u64,
    seed: u64,
) -> anyhow::Result<GenReport> {
    let t0 = Instant::now();
    anyhow::ensure!(!root.exists(), "{} exists already", root.display());
    let mut r = SplitMix(seed);
    let mut taken = HashSet::new();
    let (dirs, depth) = build_dirs(&mut r, (files / 12).max(10), 12, &mut taken);

    // Sizes, scaled to the total.
    let mut raw: Vec<f64> = (0..files)
        .map(|_| {
            if below(&mut r, 100) < 3 {
                0.0
            } else {
                ((3072f64).ln() + 1.6 * normal(&mut r)).exp().min(4.0 * MIB)
            }
        })
        .collect();
    for _ in 0..(files / 2000).max(4).min(files) {
        let i = below(&mut r, files);
        raw[i] = (MIB.ln() + unit(&mut r) * 48f64.ln()).exp();
    }
    let scale = total as f64 / raw.iter().sum::<f64>().max(1.0);

    let mut plan: Vec<PlannedFile> = Vec::with_capacity(files);
    let n_setid = (files / 10_000).max(3);
    let n_xattr = (files / 2000).max(5);
    for (i, raw_size) in raw.iter().enumerate() {
        let size = if *raw_size == 0.0 { 0 } else { (raw_size * scale).round().max(1.0) as u64 };
        let d = pick_dir(&mut r, &depth);
        // Duplicates: an earlier non-empty file below 1 MiB, under its own name, elsewhere.
        if i > 10 && below(&mut r, 100) < 5 {
            let j = below(&mut r, i);
            let o = &plan[j];
            if o.size > 0 && o.size < 1 << 20 && !o.duplicate {
                let name = o.path.rsplit('/').next().unwrap_or("dup").to_string();
                let (size, kind, content_seed, mode) = (o.size, o.kind, o.content_seed, o.mode);
                let path = unique(&mut taken, &dirs[d], &name);
                let meta = gen_meta(&mut r, false);
                plan.push(PlannedFile {
                    path,
                    size,
                    kind,
                    content_seed,
                    mode,
                    meta,
                    duplicate: true,
                });
                continue;
            }
        }
        let (ext, kind) = if size > 512 << 10 {
            BIG_EXTS[below(&mut r, BIG_EXTS.len())]
        } else {
            EXTS[below(&mut r, EXTS.len())]
        };
        let name = format!("{}{ext}", file_stem(&mut r));
        let path = unique(&mut taken, &dirs[d], &name);
        let mode = match (kind, below(&mut r, 100)) {
            (_, 0) => 0o600,
            (_, 1) => 0o444,
            (Kind::Binary, x) if x < 60 => 0o755,
            (Kind::Text, x) if x < 8 => 0o755,
            _ => 0o644,
        };
        let meta = gen_meta(&mut r, i % (files / n_xattr).max(1) == 0);
        plan.push(PlannedFile {
            path,
            size,
            kind,
            content_seed: r.next_u64(),
            mode,
            meta,
            duplicate: false,
        });
    }
    // setuid and setgid executables, spread through the tree.
    let mut rep = GenReport::default();
    for k in 0..n_setid.min(files) {
        let i = (k * files / n_setid.max(1) + 7) % files;
        plan[i].mode = if k % 3 == 2 { 0o2755 } else { 0o4755 };
        rep.setid_files += 1;
    }

    // Write: directories, files, hard links, symlinks, then directory metadata bottom-up.
    let who = Writer::current();
    let mut mr = MetaReport::default();
    std::fs::create_dir_all(root)?;
    for d in &dirs[1..] {
        std::fs::create_dir(root.join(d)).with_context(|| format!("creating {d}"))?;
    }
    let pools = Pools::new(seed);
    let mut sizes = Vec::with_capacity(files);
    let mut path_bytes = 0u64;
    for f in &plan {
        let p = root.join(&f.path);
        let data = pools.content(f.kind, f.content_seed, f.size as usize);
        std::fs::write(&p, &data).with_context(|| format!("writing {}", p.display()))?;
        apply_meta(&p, false, f.mode, &f.meta, who, &mut mr)?;
        rep.files += 1;
        rep.bytes += f.size;
        rep.empty_files += u64::from(f.size == 0);
        rep.duplicate_files += u64::from(f.duplicate);
        rep.xattr_files += u64::from(!f.meta.xattrs.is_empty());
        sizes.push(f.size);
        path_bytes += f.path.len() as u64;
    }
    for _ in 0..(files / 5000).max(3).min(files) {
        let f = &plan[below(&mut r, plan.len())];
        let d = pick_dir(&mut r, &depth);
        let name = f.path.rsplit('/').next().unwrap_or("link").to_string();
        let path = unique(&mut taken, &dirs[d], &name);
        std::fs::hard_link(root.join(&f.path), root.join(&path))
            .with_context(|| format!("linking {path} to {}", f.path))?;
        rep.hardlinks += 1;
        path_bytes += path.len() as u64;
    }
    for _ in 0..(files * 4 / 100).max(3) {
        let d = pick_dir(&mut r, &depth);
        let from = dirs[d].clone();
        let (name, target) = match below(&mut r, 10) {
            0..=5 => {
                let f = &plan[below(&mut r, plan.len())];
                let base = f.path.rsplit('/').next().unwrap_or("f");
                (base.to_string(), relative(&from, &f.path))
            }
            6..=7 => {
                let t = &dirs[1 + below(&mut r, dirs.len() - 1)];
                (dir_name(&mut r), relative(&from, t))
            }
            8 => {
                let f = &plan[below(&mut r, plan.len())];
                (file_stem(&mut r), format!("/{}", f.path))
            }
            _ => (file_stem(&mut r), format!("missing-{}", syllables(&mut r, 3))),
        };
        let path = unique(&mut taken, &from, &name);
        let p = root.join(&path);
        std::os::unix::fs::symlink(&target, &p)
            .with_context(|| format!("creating symlink {path}"))?;
        let mut meta = gen_meta(&mut r, false);
        (meta.uid, meta.gid) = (0, 0);
        apply_meta(&p, true, 0o777, &meta, who, &mut mr)?;
        rep.symlinks += 1;
        path_bytes += path.len() as u64;
    }
    let sticky = [dirs.len() / 3, 2 * dirs.len() / 3];
    for (i, d) in dirs.iter().enumerate().skip(1).rev() {
        let mode = if sticky.contains(&i) {
            0o1777
        } else if below(&mut r, 100) == 0 {
            0o700
        } else {
            0o755
        };
        let meta = gen_meta(&mut r, false);
        apply_meta(&root.join(d), false, mode, &meta, who, &mut mr)?;
        path_bytes += d.len() as u64;
    }
    if let Some(s) = mr.summary() {
        tracing::warn!("generated tree: metadata not applied: {s}");
    }
    sizes.sort_unstable();
    rep.dirs = (dirs.len() - 1) as u64;
    rep.largest_file = sizes.last().copied().unwrap_or(0);
    rep.median_file = sizes.get(sizes.len() / 2).copied().unwrap_or(0);
    rep.max_depth = depth.iter().copied().max().unwrap_or(0);
    rep.mean_path_bytes = path_bytes as f64 / rep.entries().max(1) as f64;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// Writes a layer of `entries` entries under `root` (which must not exist yet): 7%
/// directories at most 8 deep, 3% symlinks to siblings, the rest files, 70% of them empty and
/// the others 1 to 400 bytes of text; paths of 60-80 bytes on average.
pub fn generate_entries(root: &Path, entries: usize, seed: u64) -> anyhow::Result<GenReport> {
    let t0 = Instant::now();
    anyhow::ensure!(!root.exists(), "{} exists already", root.display());
    let mut r = SplitMix(seed ^ 0x1e6);
    let mut taken = HashSet::with_capacity(entries);
    let n_dirs = (entries * 7 / 100).max(10);
    let n_sym = entries * 3 / 100;
    let n_files = entries.saturating_sub(n_dirs + n_sym);
    let (dirs, depth) = build_dirs(&mut r, n_dirs, 8, &mut taken);
    std::fs::create_dir_all(root)?;
    for d in &dirs[1..] {
        std::fs::create_dir(root.join(d)).with_context(|| format!("creating {d}"))?;
    }
    let pools_words: Vec<Vec<u8>> = (0..512)
        .map(|_| (0..2 + below(&mut r, 8)).map(|_| b"etaoinshrdlucm"[below(&mut r, 14)]).collect())
        .collect();
    let mut rep = GenReport::default();
    let mut path_bytes = 0u64;
    let mut files: Vec<String> = Vec::with_capacity(n_files);
    let mut buf = Vec::with_capacity(512);
    for _ in 0..n_files {
        let d = pick_dir(&mut r, &depth);
        let (ext, _) = EXTS[below(&mut r, EXTS.len())];
        let name = format!("{}{ext}", file_stem(&mut r));
        let path = unique(&mut taken, &dirs[d], &name);
        buf.clear();
        if below(&mut r, 100) >= 70 {
            let len = 1 + below(&mut r, 400);
            while buf.len() < len {
                buf.extend_from_slice(&pools_words[below(&mut r, pools_words.len())]);
                buf.push(b' ');
            }
            buf.truncate(len);
        } else {
            rep.empty_files += 1;
        }
        let mut f =
            std::fs::File::create(root.join(&path)).with_context(|| format!("creating {path}"))?;
        f.write_all(&buf)?;
        rep.files += 1;
        rep.bytes += buf.len() as u64;
        path_bytes += path.len() as u64;
        files.push(path);
    }
    for _ in 0..n_sym {
        let Some(t) = files.get(below(&mut r, files.len())) else { break };
        let dir = parent_of(t).to_string();
        let target = t.rsplit('/').next().unwrap_or("x").to_string();
        let path = unique(&mut taken, &dir, &format!("{target}.link"));
        std::os::unix::fs::symlink(&target, root.join(&path))
            .with_context(|| format!("creating symlink {path}"))?;
        rep.symlinks += 1;
        path_bytes += path.len() as u64;
    }
    for d in &dirs[1..] {
        path_bytes += d.len() as u64;
    }
    rep.dirs = (dirs.len() - 1) as u64;
    rep.max_depth = depth.iter().copied().max().unwrap_or(0);
    rep.mean_path_bytes = path_bytes as f64 / rep.entries().max(1) as f64;
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_lead_to_the_target() {
        assert_eq!(relative("usr/lib", "usr/share/doc/x"), "../share/doc/x");
        assert_eq!(relative("", "etc/passwd"), "etc/passwd");
        assert_eq!(relative("a/b", "a/b/c"), "c");
        assert_eq!(relative("a/b", "a"), "..");
    }

    #[test]
    fn the_same_seed_gives_the_same_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let ra = generate_tree(&a, 300, 4 << 20, 7).unwrap();
        let rb = generate_tree(&b, 300, 4 << 20, 7).unwrap();
        assert_eq!(
            (ra.files, ra.dirs, ra.symlinks, ra.bytes),
            (rb.files, rb.dirs, rb.symlinks, rb.bytes)
        );
        let (ca, cb) = (count_tree(&a).unwrap(), count_tree(&b).unwrap());
        assert_eq!(ca, cb);
        assert_eq!(ca.entries, ra.entries());
        assert_eq!(ca.files, ra.files + ra.hardlinks, "hard links are regular files on disk");
        assert!(ca.multi_linked >= 2, "no hard links on disk");
        let ratio = ra.bytes as f64 / (4u64 << 20) as f64;
        assert!((0.95..1.05).contains(&ratio), "total {} B for 4 MiB asked", ra.bytes);
    }
}
