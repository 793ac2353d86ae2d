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
use crate::live::{self, TestSeed};
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

mod generate;
pub(crate) mod refs;
pub(crate) mod rss;

pub use generate::{generate_entries, generate_tree, GenReport};
use refs::*;
pub use refs::{count_tree, TreeCount};
use rss::bench_rss;

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

pub(crate) fn say(json: bool, s: &str) {
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
    let seed = TestSeed::from_parts(seed, auth, work);
    seed.make_available("bench", LAYER, VERSION)?;

    // 2. A reflector in front of the seed, warmed by one endpoint's fetch.
    let refl = live::site_reflector(&seed, "tree-reflector", "bench", WanLimit::Unlimited).await?;
    let warm_ep = seed.enroll_in_site(Role::Endpoint, "tree-warm", "bench")?;
    let into = work.join("fetched");
    let t = Instant::now();
    live::full_fetch(&warm_ep, vec![refl.addr], LAYER, VERSION, &into)
        .await
        .context("warming the reflector with one endpoint fetch")?;
    let cold_fetch = t.elapsed().as_secs_f64();
    let wan_cold = Wan::read(&refl, &seed.seed);
    remove(&into)?;
    remove(&warm_ep.join("cache"))?;
    say(json, &format!("tree [{label}]: reflector warmed by a fetch of {cold_fetch:.2} s"));

    // 3. Fetch through the warm reflector by a second endpoint (empty cache, empty directory)
    //    vs rsync -a from a daemon.
    let daemon = RsyncDaemon::start(src, work)?;
    let ep = seed.enroll_in_site(Role::Endpoint, "tree-ep2", "bench")?;
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
    let wan_fetch = Wan::read(&refl, &seed.seed).since(wan_cold);

    // 4. Apply onto an empty root from the warm reflector: a fresh device each run (empty
    //    chunk store, no layers, no snapshots).
    let dev = seed.enroll_in_site(Role::Endpoint, "tree-device", "bench")?;
    let root = work.join("root");
    let apply_opts = ApplyOptions {
        state_dir: dev.clone(),
        sources: vec![refl.addr],
        root: root.clone(),
        base: (LAYER.into(), VERSION.into()),
        apps: vec![],
        streams: 8,
        progress: false,
        allow_downgrade: false,
    };
    let mut applies = Vec::new();
    let mut apply_phases: Vec<[f64; 6]> = Vec::new();
    let mut applied_count = None;
    let mut apply_written = 0;
    let before_apply = Wan::read(&refl, &seed.seed);
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
    let wan_apply = Wan::read(&refl, &seed.seed).since(before_apply);
    remove(&root)?;
    refl.stop().await;
    seed.seed.shutdown();

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
