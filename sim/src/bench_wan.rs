//! `oasis-sim bench --only wan`: a cold reflector pulls a layer from the seed under its WAN
//! policy through the WAN emulator ([`oasis_wanem`]), over a matrix of links (RTT × random
//! loss, one bottleneck rate) and policy caps. Per cell: the achieved WAN rate (stored bytes of
//! the layer over the time the endpoint's fetch through the reflector took, from its first
//! request to its last verified chunk, manifest and the connection's slow start included; the
//! reflector is new, and has only connected to its upstream and got its site's statement, as
//! a deployed reflector does when it starts) against the cap where the cap is below the
//! bottleneck, against the bottleneck where the link is the limit; and the WAN bytes over the
//! layer's stored bytes:
//! every UDP payload byte that crossed the bottleneck, both directions, QUIC headers, ACKs and
//! retransmissions included (a packet the path loses at random crossed it and counts; a packet
//! the bottleneck's queue drops never did, and is reported beside as offered bytes). A
//! reference row per cap goes over a clean emulated link (no delay, no loss, same bottleneck)
//! in the same run.
//!
//! The same matrix runs over three paths (`--wan-paths`): `seed`, a branch reflector pulling
//! from the seed; `sibling`, a branch reflector pulling from a warm reflector of another site
//! (its upstream is that reflector); `upload`, an endpoint sending a fresh snapshot of the
//! same size and content mix to the seed under the cap (centralization), judged by the stored
//! bytes it sent.

use crate::live::{self, RateSampler, TestSeed};
use anyhow::Context;
use oasis_core::pki::Role;
use oasis_core::policy::BandwidthPolicy;
use oasis_endpoint::apply::{self, ApplyOptions};
use oasis_endpoint::session::Session;
use oasis_endpoint::upload::{self, UploadOptions};
use oasis_reflector::config::parse_rate;
use oasis_reflector::{ReflectorConfig, RunningReflector, WanLimit};
use oasis_wanem::{EmulatorThread, WanSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Achieved rate over the cap, where the cap is below the bottleneck.
pub const CAP_FLOOR: f64 = 0.90;
/// Achieved rate over the bottleneck, where the link is the limit.
pub const LINK_FLOOR: f64 = 0.85;
/// WAN bytes over stored bytes at 1% loss.
pub const WAN_BYTES_CEILING: f64 = 1.05;
/// An endpoint's rate from a warm reflector over a Wi-Fi-like link, over the link.
pub const LAN_FLOOR: f64 = 0.70;
/// Longest a cell's new reflector may take to connect and get its site's statement.
const READY_WITHIN: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, clap::Args)]
pub struct WanBenchArgs {
    /// wan: round-trip times of the matrix, in ms (comma-separated).
    #[arg(long, default_value = "20,80,150", value_delimiter = ',')]
    pub wan_rtts: Vec<u64>,
    /// wan: random loss rates of the matrix, in percent (comma-separated).
    #[arg(long, default_value = "0,0.1,0.5,1", value_delimiter = ',')]
    pub wan_losses: Vec<f64>,
    /// wan: the bottleneck of every link ("100Mbit"; see `oasis-wanem --help`).
    #[arg(long, default_value = "100Mbit")]
    pub wan_bottleneck: String,
    /// wan: the reflector's WAN caps (comma-separated rates: "8MiB/s,40MiB/s").
    #[arg(long, default_value = "8MiB/s,40MiB/s", value_delimiter = ',')]
    pub wan_caps: Vec<String>,
    /// wan: size of the layer in MiB (mixed content; stored smaller).
    #[arg(long, default_value_t = 128)]
    pub wan_mib: usize,
    /// wan: extra link settings appended to every cell's spec ("queue=256KiB,jitter=2ms").
    #[arg(long, default_value = "")]
    pub wan_extra: String,
    /// wan: the link between an endpoint and a warm reflector, measured after the matrix
    /// against a clean link of the same rate ("" to skip).
    #[arg(long, default_value = "5ms,1%,300Mbit")]
    pub wan_lan: String,
    /// wan: write each cell's link series (`NN-PATH.csv`: the data direction's bytes every
    /// 100 ms from the transfer's start) and its rate chart (`NN-PATH.svg`) into this directory.
    #[arg(long)]
    pub wan_out: Option<PathBuf>,
    /// wan: the paths the matrix runs over (comma-separated: seed, sibling, upload).
    #[arg(long, value_enum, default_value = "seed,sibling,upload", value_delimiter = ',')]
    pub wan_paths: Vec<WanPath>,
}

/// What crosses the emulated link in a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WanPath {
    /// A branch reflector pulls the layer from the seed.
    Seed,
    /// A branch reflector pulls the layer from a warm reflector of another site.
    Sibling,
    /// An endpoint uploads a snapshot to the seed.
    Upload,
}

impl WanPath {
    fn name(self) -> &'static str {
        match self {
            WanPath::Seed => "seed",
            WanPath::Sibling => "sibling",
            WanPath::Upload => "upload",
        }
    }
}

/// Bytes per second between the samples where a quarter and nine tenths of the final count
/// were reached.
fn steady_rate(samples: &[(f64, u64)]) -> f64 {
    let total = samples.last().map_or(0, |s| s.1) as f64;
    let at = |share: f64| samples.iter().find(|s| s.1 as f64 >= share * total).copied();
    match (at(0.25), at(0.9)) {
        (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0),
        _ => 0.0,
    }
}

/// `samples` (seconds from the sampler's start, bytes so far) counted from `from` on: what the
/// link carried before (a reflector's connection and statement) is left out.
fn since(samples: Vec<(f64, u64)>, from: Duration) -> Vec<(f64, u64)> {
    let from = from.as_secs_f64();
    let before = samples.iter().take_while(|s| s.0 < from).last().map_or(0, |s| s.1);
    samples.into_iter().filter(|s| s.0 >= from).map(|(at, b)| (at - from, b - before)).collect()
}

/// `NAME.csv` (seconds, bytes so far, MB/s over the last 100 ms) and `NAME.svg` (that rate
/// against the limit the cell is judged by) of one cell, into `dir`.
fn write_series(
    dir: &Path,
    name: &str,
    spec: &WanSpec,
    cap: u64,
    samples: &[(f64, u64)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("t_s,bytes,mb_per_s\n");
    let mut rates = Vec::with_capacity(samples.len());
    let mut last = (0.0, 0u64);
    for &(t, b) in samples {
        let rate = if t > last.0 { (b - last.1) as f64 / (t - last.0) / 1e6 } else { 0.0 };
        csv.push_str(&format!("{t:.3},{b},{rate:.3}\n"));
        rates.push((t, rate));
        last = (t, b);
    }
    std::fs::write(dir.join(format!("{name}.csv")), csv)?;
    let end = samples.last().map_or(0.0, |s| s.0);
    let cap_mb = cap as f64 / 1e6;
    let mut lines = vec![("data direction, 100 ms".to_string(), rates)];
    // The limit the cell is judged against: the cap, or the link's payload rate.
    match payload_rate(spec) {
        Some(link) if link <= cap as f64 => {
            lines.push(("link payload rate".into(), vec![(0.0, link / 1e6), (end, link / 1e6)]))
        }
        _ => lines.push(("cap".into(), vec![(0.0, cap_mb), (end, cap_mb)])),
    }
    crate::report::line_chart(
        &dir.join(format!("{name}.svg")),
        &format!("{name}: {spec}"),
        "seconds from the first request",
        "MB/s",
        &lines,
    )
}

/// Where a cell's time goes before the link is full: seconds from the start until the data
/// direction has carried 1 MB (handshakes, entitlements, manifest and the first flights), and
/// until a 300 ms window first runs at 90% of `limit`.
fn ramp(samples: &[(f64, u64)], limit: f64) -> (Option<f64>, Option<f64>) {
    let started = samples.iter().find(|s| s.1 >= 1_000_000).map(|s| s.0);
    let full = samples.windows(4).find_map(|w| {
        let (a, b) = (w[0], w[3]);
        ((b.1 - a.1) as f64 / (b.0 - a.0) >= 0.9 * limit).then_some(a.0)
    });
    (started, full)
}

/// One cell of the matrix.
#[derive(Debug, serde::Serialize)]
struct Cell {
    path: WanPath,
    link: String,
    cap_bytes_per_s: u64,
    /// min(cap, bottleneck payload rate): what the rate is judged against.
    limit_bytes_per_s: f64,
    limited_by: &'static str,
    seconds: f64,
    rate_bytes_per_s: f64,
    rate_over_limit: f64,
    /// Once the link is full: the rate from a quarter to nine tenths of the transfer (the
    /// link's data-direction counter sampled every 100 ms), as stored bytes.
    steady_rate_bytes_per_s: f64,
    steady_over_limit: f64,
    /// Seconds until the link carried 1 MB, and until it first ran at 90% of the limit
    /// (`ramp`).
    started_seconds: Option<f64>,
    full_seconds: Option<f64>,
    /// Seconds the reflector took to connect and get its statement before the pull (untimed).
    ready_seconds: Option<f64>,
    wan_bytes: u64,
    wan_over_stored: f64,
    /// Bytes offered to the link, queue drops included.
    offered_bytes: u64,
    /// Stored bytes the cell moved: the layer as the reflector stored it, or the snapshot's
    /// chunks as the endpoint sent them.
    moved_bytes: u64,
    queue_drops: u64,
    path_losses: u64,
    floor: f64,
    pass: bool,
}

/// The bottleneck's payload rate in bytes/s: its bit rate less the per-packet overhead the
/// emulator counts (IPv4 + UDP headers on full-size datagrams).
fn payload_rate(spec: &WanSpec) -> Option<f64> {
    let down = &spec.down;
    let bits = down.rate? as f64;
    let mtu = 1452.0;
    Some(bits / 8.0 * mtu / (mtu + down.overhead as f64))
}

/// What a cell's transfer did, before it is judged.
struct Transfer {
    /// When the timed part began: the endpoint's first request, or the upload's start.
    started: Instant,
    seconds: f64,
    /// Stored bytes moved.
    moved: u64,
    /// How long the reflector took to connect to its upstream and get its site's statement,
    /// before the endpoint asked (pull cells).
    ready_seconds: Option<f64>,
}

/// The warm reflector of another site that `sibling` cells pull from.
struct Hub {
    reflector: RunningReflector,
}

/// The endpoint whose snapshots `upload` cells send.
struct Uploader {
    state: PathBuf,
    root: PathBuf,
}

impl Uploader {
    /// An endpoint with a tiny base layer applied (a device needs a root to snapshot).
    async fn start(seed: &TestSeed, base: &Path) -> anyhow::Result<Uploader> {
        let src = base.join("uploader-base");
        std::fs::create_dir_all(src.join("etc"))?;
        std::fs::write(src.join("etc/hostname"), b"bench-uploader\n")?;
        seed.publish_blocking("bench-uploader-base", "1", &src).await?;
        seed.make_available("uploads", "bench-uploader-base", "1")?;
        let state = seed.enroll_in_site(Role::Endpoint, "uploader", "uploads")?;
        let root = base.join("uploader-root");
        std::fs::create_dir_all(&root)?;
        apply::apply(&ApplyOptions {
            state_dir: state.clone(),
            sources: vec![seed.seed.addr],
            root: root.clone(),
            base: ("bench-uploader-base".into(), "1".into()),
            apps: Vec::new(),
            streams: 4,
            progress: false,
            allow_downgrade: false,
        })
        .await
        .context("applying the uploader's base layer")?;
        Ok(Uploader { state, root })
    }

    /// Writes `size` bytes of fresh content (`n` seeds it: no cell's chunks are at the seed
    /// yet), snapshots them, and uploads through `via` under `cap`.
    async fn upload(
        &self,
        size: usize,
        n: u64,
        via: SocketAddr,
        cap: u64,
    ) -> anyhow::Result<Transfer> {
        live::write_layer(&self.root.join("home/data"), size, 1000 + n)?;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let s = Session::open(&state, None, false)?;
            s.snapshot("bench", false, false).map(|_| ())
        })
        .await??;
        let mut opts = UploadOptions::new(&self.state, via);
        let text = format!("[wan]\nrate = {cap}\nburst = \"1MiB\"\n");
        opts.policy = Some(BandwidthPolicy::from_toml_str(&text, "bench upload policy")?);
        let started = Instant::now();
        let report = upload::upload(&opts).await.context("uploading the snapshot")?;
        // Until the seed filed the snapshot, as a pull cell runs until the endpoint verified
        // its last chunk: the connection's close and drain after that carry nothing.
        let seconds = report.filed_seconds;
        anyhow::ensure!(
            report.bytes_sent_plain >= size as u64,
            "the upload sent {} plain bytes of a {size}-byte snapshot",
            report.bytes_sent_plain
        );
        Ok(Transfer { started, seconds, moved: report.bytes_sent, ready_seconds: None })
    }
}

/// A branch reflector under `cap` behind `via` pulls the layer; an endpoint fetches it through
/// the reflector.
async fn pull(
    seed: &TestSeed,
    tag: &str,
    via: SocketAddr,
    cap: u64,
    stored: u64,
    body: u64,
) -> anyhow::Result<Transfer> {
    let state = seed.enroll_in_site(Role::Reflector, &format!("{tag}-refl"), tag)?;
    seed.make_available(tag, "bench-wan", "1")?;
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, via.to_string());
    cfg.wan = WanLimit::Flat(cap);
    cfg.assignments_poll = Duration::ZERO;
    let ep = seed.enroll_in_site(Role::Endpoint, &format!("{tag}-ep"), tag)?;
    let booted = Instant::now();
    let refl = RunningReflector::start(cfg).await?;
    // A deployed reflector connects to its upstream and gets its site's statement when it
    // starts, long before a layer is assigned: the cell times the pull, from the endpoint's
    // request, and reports the reflector's start beside it. Its connection has carried
    // nothing else, so the pull still pays the manifest and the controller's whole start.
    anyhow::ensure!(
        refl.wait_ready(READY_WITHIN).await,
        "the reflector did not connect through {via} and get its site's statement within {} s",
        READY_WITHIN.as_secs()
    );
    let ready_seconds = Some(booted.elapsed().as_secs_f64());
    let t0 = Instant::now();
    let run = live::verify_fetch(&ep, refl.addr, "bench-wan", "1", 8, t0).await?;
    let seconds = t0.elapsed().as_secs_f64();
    refl.stop().await;
    anyhow::ensure!(
        run.bytes_network + body == stored,
        "the endpoint received {} B of a layer whose chunks are stored in {} B",
        run.bytes_network,
        stored - body
    );
    Ok(Transfer { started: t0, seconds, moved: stored, ready_seconds })
}

struct Ctx<'a> {
    seed: &'a TestSeed,
    hub: Option<&'a Hub>,
    uploader: Option<&'a Uploader>,
    stored: u64,
    body: u64,
    upload_size: usize,
    out: Option<&'a Path>,
}

async fn cell(
    cx: &Ctx<'_>,
    path: WanPath,
    n: u64,
    spec: WanSpec,
    cap: u64,
) -> anyhow::Result<Cell> {
    let upstream = match (path, cx.hub) {
        (WanPath::Sibling, Some(hub)) => hub.reflector.addr,
        _ => cx.seed.seed.addr,
    };
    let emu = Arc::new(EmulatorThread::start("127.0.0.1:0".parse()?, upstream, spec.clone())?);
    let via = emu.local_addr();
    let probe = emu.clone();
    let data_direction = move || {
        let c = probe.counters();
        if path == WanPath::Upload {
            c.up.delivered_bytes
        } else {
            c.down.delivered_bytes
        }
    };
    let sampled_from = Instant::now();
    let sampler = RateSampler::start_at(sampled_from, Duration::from_millis(100), data_direction);
    let t = match (path, cx.uploader) {
        (WanPath::Upload, Some(u)) => u.upload(cx.upload_size, n, via, cap).await?,
        _ => pull(cx.seed, &format!("w{n:02}"), via, cap, cx.stored, cx.body).await?,
    };
    let samples = since(sampler.finish().await?.0, t.started.duration_since(sampled_from));
    if let Some(dir) = &cx.out {
        write_series(dir, &format!("{n:02}-{}", path.name()), &spec, cap, &samples)
            .with_context(|| format!("writing cell {n}'s series into {}", dir.display()))?;
    }
    let c = emu.counters();
    drop(emu);
    let link = payload_rate(&spec).unwrap_or(f64::INFINITY);
    let (limit, limited_by) =
        if (cap as f64) < link { (cap as f64, "cap") } else { (link, "link") };
    let rate = t.moved as f64 / t.seconds;
    let steady =
        steady_rate(&samples) * t.moved as f64 / samples.last().map_or(0, |s| s.1).max(1) as f64;
    let (started_seconds, full_seconds) = ramp(&samples, limit);
    let offered_bytes = c.down.offered_bytes + c.up.offered_bytes;
    let wan_bytes = offered_bytes - c.down.queue_dropped_bytes - c.up.queue_dropped_bytes;
    let floor = if limited_by == "cap" { CAP_FLOOR } else { LINK_FLOOR };
    let wan_over_stored = wan_bytes as f64 / t.moved as f64;
    Ok(Cell {
        path,
        link: spec.to_string(),
        cap_bytes_per_s: cap,
        limit_bytes_per_s: limit,
        limited_by,
        seconds: t.seconds,
        rate_bytes_per_s: rate,
        rate_over_limit: rate / limit,
        steady_rate_bytes_per_s: steady,
        steady_over_limit: steady / limit,
        started_seconds,
        full_seconds,
        ready_seconds: t.ready_seconds,
        wan_bytes,
        wan_over_stored,
        offered_bytes,
        moved_bytes: t.moved,
        queue_drops: c.down.queue_dropped_packets + c.up.queue_dropped_packets,
        path_losses: c.down.lost_packets + c.up.lost_packets,
        floor,
        pass: rate / limit >= floor,
    })
}

pub async fn run(args: &WanBenchArgs, tmp: &Path, json: bool) -> anyhow::Result<serde_json::Value> {
    let base = tmp.join("wan-bench");
    std::fs::create_dir_all(&base)?;
    let src = base.join("layer");
    live::write_layer(&src, args.wan_mib << 20, 42)?;
    let seed = TestSeed::start_in(&base).await?;
    seed.publish_blocking("bench-wan", "1", &src).await?;
    let stored: u64 = seed.stored_chunks("bench-wan", "1")?.iter().map(|(_, len)| len).sum();
    let body = seed.new_body_bytes("bench-wan", "1", None)?;
    let say = |s: String| {
        if !json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "wan: layer {} MiB, {:.1} MB stored (manifest body included); bottleneck {}",
        args.wan_mib,
        stored as f64 / 1e6,
        args.wan_bottleneck
    ));
    let extra =
        |s: String| if args.wan_extra.is_empty() { s } else { format!("{s},{}", args.wan_extra) };
    let paths = &args.wan_paths;
    let hub = if paths.contains(&WanPath::Sibling) {
        // Another site's reflector, next to the seed and warm with the layer.
        let state = seed.enroll_in_site(Role::Reflector, "hub-refl", "hub")?;
        seed.make_available("hub", "bench-wan", "1")?;
        let mut cfg =
            ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, seed.seed.addr.to_string());
        cfg.assignments_poll = Duration::ZERO;
        let reflector = RunningReflector::start(cfg).await?;
        let ep = seed.enroll_in_site(Role::Endpoint, "hub-ep", "hub")?;
        live::verify_fetch(&ep, reflector.addr, "bench-wan", "1", 8, Instant::now()).await?;
        Some(Hub { reflector })
    } else {
        None
    };
    let uploader = if paths.contains(&WanPath::Upload) {
        Some(Uploader::start(&seed, &base).await?)
    } else {
        None
    };
    let cx = Ctx {
        seed: &seed,
        hub: hub.as_ref(),
        uploader: uploader.as_ref(),
        stored,
        body,
        upload_size: args.wan_mib << 20,
        out: args.wan_out.as_deref(),
    };
    let mut cells = Vec::new();
    let mut n = 0;
    for &path in paths {
        for cap_text in &args.wan_caps {
            let cap =
                parse_rate(cap_text).map_err(|e| anyhow::anyhow!("--wan-caps {cap_text}: {e}"))?;
            anyhow::ensure!(cap > 0, "--wan-caps: {cap_text} is not a rate");
            let mut links = vec![(format!("0ms,0%,{}", args.wan_bottleneck), 0.0, true)];
            for rtt in &args.wan_rtts {
                for &loss in &args.wan_losses {
                    links.push((format!("{rtt}ms,{loss}%,{}", args.wan_bottleneck), loss, false));
                }
            }
            for (text, loss, reference) in links {
                let text = extra(text);
                let spec: WanSpec =
                    text.parse().map_err(|e| anyhow::anyhow!("link {text}: {e}"))?;
                n += 1;
                let c = cell(&cx, path, n, spec, cap).await?;
                say(format!(
                "wan: {:<7} cap {cap_text:>8} link {:<28}{} {:>6.2} MB/s = {:>5.1}% of the {} ({}; steady {:.1}%; 1 MB at {}, full at {}); WAN bytes {:.3}x stored ({:.3}x offered, {} queue drops){}",
                path.name(),
                c.link,
                if reference { " (reference)" } else { "" },
                c.rate_bytes_per_s / 1e6,
                c.rate_over_limit * 100.0,
                c.limited_by,
                if c.pass { "met" } else { "NOT MET" },
                c.steady_over_limit * 100.0,
                c.started_seconds.map_or("-".into(), |t| format!("{t:.2} s")),
                c.full_seconds.map_or("-".into(), |t| format!("{t:.2} s")),
                c.wan_over_stored,
                c.offered_bytes as f64 / c.moved_bytes as f64,
                c.queue_drops,
                c.ready_seconds.map_or(String::new(), |t| format!("; reflector up in {t:.2} s")),
            ));
                cells.push((cap_text.clone(), loss, reference, c));
            }
        }
    }
    let lan = if args.wan_lan.is_empty() {
        serde_json::Value::Null
    } else {
        lan_cells(&seed, &args.wan_lan, stored - body, &say).await?
    };
    if let Some(h) = hub {
        h.reflector.stop().await;
    }
    seed.seed.shutdown();
    let rows: Vec<serde_json::Value> = cells
        .iter()
        .map(|(cap, _, reference, c)| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            v["cap"] = serde_json::json!(cap);
            v["reference"] = serde_json::json!(reference);
            v
        })
        .collect();
    let mut summary = serde_json::Map::new();
    for &path in paths {
        let of_path = || cells.iter().filter(move |(_, _, r, c)| !r && c.path == path);
        let worst = of_path()
            .filter(|(_, loss, _, _)| *loss >= 1.0)
            .map(|(_, _, _, c)| c.wan_over_stored)
            .fold(0.0, f64::max);
        let met = of_path().filter(|(_, _, _, c)| c.pass).count();
        let total = of_path().count();
        say(format!(
            "wan: {}: {met} of {total} cells meet their floor; worst WAN bytes / stored at 1% loss: {worst:.3}x (ceiling {WAN_BYTES_CEILING})",
            path.name()
        ));
        summary.insert(
            path.name().into(),
            serde_json::json!({"cells_met": met, "cells": total, "worst_wan_over_stored_at_1pct": worst}),
        );
    }
    let worst_bytes_1pct = cells
        .iter()
        .filter(|(_, loss, r, _)| !r && *loss >= 1.0)
        .map(|(_, _, _, c)| c.wan_over_stored)
        .fold(0.0, f64::max);
    let all_met = cells.iter().filter(|(_, _, r, _)| !r).all(|(_, _, _, c)| c.pass);
    Ok(serde_json::json!({
        "stored_bytes": stored,
        "layer_mib": args.wan_mib,
        "cells": rows,
        "all_met": all_met,
        "paths": summary,
        "worst_wan_over_stored_at_1pct": worst_bytes_1pct,
        "endpoint_link": lan,
    }))
}

/// An endpoint fetching from a warm reflector through `link`, and through a clean link of the
/// same rate: stored bytes of the layer's chunks / fetch time, against the link's payload rate.
async fn lan_cells(
    seed: &TestSeed,
    link: &str,
    layer_stored: u64,
    say: &impl Fn(String),
) -> anyhow::Result<serde_json::Value> {
    let spec: WanSpec = link.parse().map_err(|e| anyhow::anyhow!("--wan-lan {link}: {e}"))?;
    let rate = spec.down.rate.map(|r| format!("{}bit", r)).unwrap_or_default();
    let clean: WanSpec = format!("0ms,0%,{rate}")
        .parse()
        .map_err(|e| anyhow::anyhow!("clean link of {link}: {e}"))?;
    let state = seed.enroll_in_site(Role::Reflector, "lan-refl", "lan")?;
    seed.make_available("lan", "bench-wan", "1")?;
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, seed.seed.addr.to_string());
    cfg.assignments_poll = Duration::ZERO;
    let refl = RunningReflector::start(cfg).await?;
    let warm = seed.enroll_in_site(Role::Endpoint, "lan-warm", "lan")?;
    live::verify_fetch(&warm, refl.addr, "bench-wan", "1", 8, Instant::now()).await?;
    let mut out = serde_json::Map::new();
    for (tag, spec) in [("reference", clean), ("link", spec)] {
        let emu = EmulatorThread::start("127.0.0.1:0".parse()?, refl.addr, spec.clone())?;
        let ep = seed.enroll_in_site(Role::Endpoint, &format!("lan-{tag}"), "lan")?;
        let t0 = Instant::now();
        let run = live::verify_fetch(&ep, emu.local_addr(), "bench-wan", "1", 8, t0).await?;
        let seconds = t0.elapsed().as_secs_f64();
        anyhow::ensure!(
            run.bytes_network == layer_stored,
            "the endpoint got {} B",
            run.bytes_network
        );
        let limit = payload_rate(&spec).unwrap_or(f64::INFINITY);
        let share = layer_stored as f64 / seconds / limit;
        let floor_text = if tag == "link" {
            format!(
                " (floor {:.0}%: {})",
                LAN_FLOOR * 100.0,
                if share >= LAN_FLOOR { "met" } else { "NOT MET" }
            )
        } else {
            String::new()
        };
        say(format!(
            "wan: endpoint from a warm reflector over {spec}: {:.2} MB/s = {:.1}% of the link{floor_text}",
            layer_stored as f64 / seconds / 1e6,
            share * 100.0
        ));
        out.insert(
            tag.into(),
            serde_json::json!({
                "link": spec.to_string(), "seconds": seconds, "rate_over_link": share,
                "floor": if tag == "link" { Some(LAN_FLOOR) } else { None },
            }),
        );
    }
    refl.stop().await;
    Ok(serde_json::Value::Object(out))
}
