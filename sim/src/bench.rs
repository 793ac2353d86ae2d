//! `oasis-sim bench`: throughput of ingest and fetch, each as a ratio against a raw reference
//! measured in the same run on the same data (figures alone mean little on a shared machine).

use anyhow::Context;
use oasis_core::chunk::{cut, ChunkParams};
use oasis_core::manifest::LayerKind;
use oasis_core::net::{self, TransportOptions};
use oasis_core::pki::{Role, SeedAuthority};
use oasis_endpoint::{fetch, FetchOptions};
use oasis_seed::{publish, PublishOptions, RunningSeed};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Size of the benchmark layer in MiB.
    #[arg(long, default_value_t = 256)]
    pub size_mib: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Which benchmarks: ingest, fetch, reflector, apply, snapshot, tree, tree-rss, wan, yield,
    /// hostile (comma-separated).
    #[arg(long, default_value = "ingest,fetch", value_delimiter = ',')]
    pub only: Vec<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub reflector: crate::bench_reflector::ReflectorBenchArgs,
    #[command(flatten)]
    pub tree: crate::bench_tree::TreeBenchArgs,
    #[command(flatten)]
    pub wan: crate::bench_wan::WanBenchArgs,
    #[command(flatten)]
    pub yields: crate::bench_yield::YieldBenchArgs,
    #[command(flatten)]
    pub hostile: crate::bench_hostile::HostileBenchArgs,
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`, in seconds.
/// Beside wall-clock rates it shows whether a run had both cores: the machine is shared.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// [`process_cpu_seconds`] of process `pid` ("self" for this one).
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, hence the last ')'): utime and
    // stime are the 12th and 13th of them, in clock ticks of 1/100 s on Linux.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace().skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU time the hypervisor has given to other guests while this machine's vCPUs wanted it
/// (the `steal` column of `/proc/stat`), in seconds. On this virtual machine the host's work
/// for the guest's disk writes shows up here: a publish that writes 200 MB loses CPU that a
/// computation in memory keeps.
pub fn machine_steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal, in ticks of 1/100 s.
    let steal: f64 = cpu.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal / 100.0)
}

/// Runs `f`, returning its result with the wall seconds and CPU seconds it took.
pub(crate) async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    let (c0, t0) = (process_cpu_seconds().unwrap_or(0.0), Instant::now());
    let r = f.await;
    (r, t0.elapsed().as_secs_f64(), process_cpu_seconds().unwrap_or(0.0) - c0)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let size = args.size_mib << 20;
    let runs = args.runs.max(1);
    // The tree benchmarks make their own trees; the others share one layer.
    let tree_only = args
        .only
        .iter()
        .all(|s| ["tree", "tree-rss", "wan", "yield", "hostile"].contains(&s.as_str()));
    let data = if tree_only { Vec::new() } else { crate::sample::mixed_bytes(size, 42) };
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("layer");
    std::fs::create_dir_all(&src)?;
    // 32 files: enough for the per-file parallelism to matter, large enough to stream.
    for (i, part) in data.chunks(size.div_ceil(32)).enumerate() {
        std::fs::write(src.join(format!("part{i:02}.bin")), part)?;
    }
    let mut out = serde_json::Map::new();
    out.insert("size_bytes".into(), size.into());
    out.insert("runs".into(), runs.into());
    out.insert(
        "cores".into(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).into(),
    );

    if args.only.iter().any(|s| s == "ingest") {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut reference = Vec::new();
        let mut all_cores = Vec::new();
        let mut ours = Vec::new();
        let mut phases = Vec::new();
        for run in 0..runs {
            reference.push(raw_pipeline_mb_s(&data));
            all_cores.push(raw_pipeline_all_cores_mb_s(&data, cores));
            let data_dir = tmp.path().join(format!("ingest-seed-{run}"));
            let auth = SeedAuthority::init(&data_dir)?;
            let store = oasis_seed::node::open_store(&data_dir)?;
            let opts = PublishOptions {
                name: "bench".into(),
                version: "1".into(),
                kind: LayerKind::Base,
                chunking: ChunkParams::default(),
                progress: false,
            };
            let steal0 = machine_steal_seconds().unwrap_or(0.0);
            let (c0, t) = (process_cpu_seconds().unwrap_or(0.0), Instant::now());
            let (_, rep) = publish(&store, auth.signing_key(), &src, &opts)?;
            let wall = t.elapsed().as_secs_f64();
            ours.push(size as f64 / 1e6 / wall);
            let cpu = process_cpu_seconds().unwrap_or(0.0) - c0;
            let stolen = machine_steal_seconds().unwrap_or(0.0) - steal0;
            phases.push((rep.seconds_chunking, rep.seconds_commit, cpu, cpu / wall, stolen));
            drop(store);
            std::fs::remove_dir_all(&data_dir)?;
        }
        let (r, o, all) = (median(reference), median(ours), median(all_cores));
        let chunking_s = median(phases.iter().map(|p| p.0).collect());
        let commit_s = median(phases.iter().map(|p| p.1).collect());
        let cpu_s = median(phases.iter().map(|p| p.2).collect());
        let busy = median(phases.iter().map(|p| p.3).collect());
        let stolen_s = median(phases.iter().map(|p| p.4).collect());
        let ratio = o / (r * cores as f64);
        out.insert(
            "ingest".into(),
            serde_json::json!({
                "raw_pipeline_1core_mb_s": r, "raw_pipeline_all_cores_mb_s": all, "publish_mb_s": o,
                "ratio_vs_pipeline_all_cores": o / all,
                "ratio_vs_pipeline_x_cores": ratio, "floor": 0.6, "pass": ratio >= 0.6,
                "chunking_seconds": chunking_s, "commit_seconds": commit_s,
                "cpu_seconds": cpu_s, "cores_busy": busy, "stolen_seconds": stolen_s,
            }),
        );
        if !args.json {
            println!("ingest: raw fastcdc+blake3+zstd pipeline, 1 core, no I/O: {r:.0} MB/s");
            println!(
                "ingest: the same on {cores} threads at once: {all:.0} MB/s = {:.2}x one core",
                all / r
            );
            println!(
                "ingest: oasis-seed publish from files: {o:.0} MB/s = {:.0}% of pipeline x {cores} cores (floor 60%), {:.0}% of the {cores}-thread pipeline",
                ratio * 100.0,
                o / all * 100.0
            );
            println!(
                "ingest: publish phases (median): walk, read, chunk, hash, compress, store {chunking_s:.3} s; \
                 references, sync, sign {commit_s:.3} s; {cpu_s:.2} CPU-s, {busy:.2} cores busy, \
                 {stolen_s:.2} s of CPU taken by the hypervisor"
            );
        }
    }

    if args.only.iter().any(|s| s == "fetch") {
        let seed_dir = tmp.path().join("fetch-seed");
        let auth = SeedAuthority::init(&seed_dir)?;
        let seed = RunningSeed::start(&seed_dir, "127.0.0.1:0".parse()?, None).await?;
        let opts = PublishOptions {
            name: "bench".into(),
            version: "1".into(),
            kind: LayerKind::Base,
            chunking: ChunkParams::default(),
            progress: false,
        };
        let (_, pubr) = publish(&seed.store, auth.signing_key(), &src, &opts)?;
        oasis_seed::catalog::Catalog::open(&seed.store)?.make_available("bench", "bench", "1")?;
        let ep = tmp.path().join("endpoint");
        auth.enroll(Role::Endpoint, "bench-endpoint", Some("bench"), &ep, true)?;
        let mut reference = Vec::new();
        let mut ours = Vec::new();
        let (mut raw_cpu, mut fetch_cpu) = (Vec::new(), Vec::new());
        let mut network = 0;
        for run in 0..runs {
            let (raw, raw_wall, cpu) = timed(raw_quinn_mb_s(&seed_dir, &ep, size)).await;
            reference.push(raw?);
            raw_cpu.push((cpu, cpu / raw_wall));
            let cache = ep.join("cache");
            if cache.exists() {
                std::fs::remove_dir_all(&cache)?;
            }
            let into = tmp.path().join(format!("fetched-{run}"));
            let (r, wall, cpu) = timed(fetch(&FetchOptions {
                state_dir: ep.clone(),
                sources: vec![seed.addr],
                name: "bench".into(),
                version: Some("1".into()),
                into: into.clone(),
                streams: 8,
                progress: false,
            }))
            .await;
            let r = r?;
            ours.push(r.bytes as f64 / 1e6 / wall);
            fetch_cpu.push((cpu, cpu / wall));
            tracing::info!(
                total = r.seconds,
                manifest = r.seconds_manifest,
                scan = r.seconds_scan,
                network = r.seconds_network,
                write = r.seconds_write,
                "fetch phases (s)"
            );
            network = r.bytes_network;
            std::fs::remove_dir_all(&into)?;
        }
        seed.shutdown();
        let (r, o) = (median(reference), median(ours));
        let ratio = o / r;
        let cpu_of = |v: &[(f64, f64)]| {
            (median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1).collect()))
        };
        let ((raw_cpu_s, raw_cores), (fetch_cpu_s, fetch_cores)) =
            (cpu_of(&raw_cpu), cpu_of(&fetch_cpu));
        out.insert(
            "fetch".into(),
            serde_json::json!({
                "raw_quinn_stream_mb_s": r, "endpoint_fetch_mb_s": o, "ratio": ratio,
                "raw_cpu_seconds": raw_cpu_s, "raw_cores_busy": raw_cores,
                "fetch_cpu_seconds": fetch_cpu_s, "fetch_cores_busy": fetch_cores,
                "floor": 0.5, "pass": ratio >= 0.5, "layer_bytes": pubr.bytes,
                "stored_bytes": pubr.stored_bytes, "network_bytes": network,
            }),
        );
        if !args.json {
            println!(
                "fetch: raw quinn stream, same transport settings, same {} MiB: {r:.0} MB/s",
                args.size_mib
            );
            println!(
                "fetch: oasis-endpoint fetch (cold cache, empty dir): {o:.0} MB/s = {:.0}% of raw (floor 50%); {} MB over the network for {} MB delivered",
                ratio * 100.0,
                network / 1_000_000,
                pubr.bytes / 1_000_000
            );
            println!(
                "fetch: CPU per transfer (median): raw stream {raw_cpu_s:.2} CPU-s ({raw_cores:.2} cores busy), fetch {fetch_cpu_s:.2} CPU-s ({fetch_cores:.2} cores busy)"
            );
        }
    }
    if args.only.iter().any(|s| s == "apply" || s == "snapshot") {
        let r = crate::bench_device::run(&args.only, runs, &src, tmp.path(), args.json).await?;
        out.insert("device".into(), r);
    }
    if args.only.iter().any(|s| s == "reflector") {
        let r = crate::bench_reflector::run(&args.reflector, &src, tmp.path(), args.json).await?;
        out.insert("reflector".into(), r);
    }
    if args.only.iter().any(|s| s == "tree" || s == "tree-rss") {
        let r = crate::bench_tree::run(&args.tree, &args.only, runs, args.json).await?;
        if let serde_json::Value::Object(m) = r {
            out.extend(m);
        }
    }
    if args.only.iter().any(|s| s == "wan") {
        let r = crate::bench_wan::run(&args.wan, tmp.path(), args.json).await?;
        out.insert("wan".into(), r);
    }
    if args.only.iter().any(|s| s == "yield") {
        let r = crate::bench_yield::run(&args.yields, tmp.path(), args.json).await?;
        out.insert("yield".into(), r);
    }
    if args.only.iter().any(|s| s == "hostile") {
        let r = crate::bench_hostile::run(&args.hostile, tmp.path(), args.json).await?;
        out.insert("hostile".into(), r);
    }
    if args.json {
        println!("{}", serde_json::Value::Object(out));
    }
    Ok(())
}

/// The raw single-core pipeline: FastCDC, BLAKE3 and zstd -1 of every chunk, in memory.
fn raw_pipeline_mb_s(data: &[u8]) -> f64 {
    let t = Instant::now();
    std::hint::black_box(raw_pipeline(data));
    data.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// The same pipeline on every core at once, each thread on its own share of the data: what
/// the machine gives when nothing but this computation runs (cores that share a host core or
/// memory bandwidth scale by less than their count).
fn raw_pipeline_all_cores_mb_s(data: &[u8], cores: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for part in data.chunks(data.len().div_ceil(cores.max(1))) {
            s.spawn(move || std::hint::black_box(raw_pipeline(part)));
        }
    });
    data.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn raw_pipeline(data: &[u8]) -> usize {
    let p = ChunkParams::default();
    let mut sink = 0usize;
    for s in cut(data, &p) {
        let c = &data[s.offset as usize..(s.offset + s.len as u64) as usize];
        let h = blake3::hash(c);
        let z = zstd::bulk::compress(c, oasis_core::compress::ZSTD_LEVEL).unwrap_or_default();
        sink = sink.wrapping_add(h.as_bytes()[0] as usize + z.len());
    }
    sink
}

/// One raw quinn stream carrying `size` bytes with the transport settings Oasis uses.
async fn raw_quinn_mb_s(seed_dir: &Path, ep_dir: &Path, size: usize) -> anyhow::Result<f64> {
    let opts = TransportOptions::default();
    let server_id = oasis_core::pki::NodeIdentity::load(seed_dir)?;
    let client_id = oasis_core::pki::NodeIdentity::load(ep_dir)?;
    let server = net::server_endpoint("127.0.0.1:0".parse()?, &server_id, &opts)?;
    let addr = server.local_addr()?;
    let payload = Arc::new(bytes::Bytes::from(vec![0x5au8; 1 << 20]));
    let srv = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let (mut send, _recv) = conn.accept_bi().await?;
        let mut left = size;
        while left > 0 {
            let n = left.min(payload.len());
            send.write_chunk(payload.slice(..n)).await?;
            left -= n;
        }
        send.finish()?;
        let _ = send.stopped().await;
        anyhow::Ok(())
    });
    let client = net::client_endpoint(&client_id, &opts)?;
    let conn = client
        .connect(addr, oasis_core::pki::NODE_SERVER_NAME)?
        .await
        .context("raw quinn connect")?;
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"go").await?;
    let mut got = 0usize;
    while let Some(c) = recv.read_chunk(1 << 20, true).await? {
        got += c.bytes.len();
    }
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(got == size, "raw stream carried {got} of {size} bytes");
    srv.await??;
    conn.close(0u32.into(), b"done");
    Ok(size as f64 / 1e6 / secs)
}
