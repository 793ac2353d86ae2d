//! `oasis-sim bench --only yield`: does background traffic give way to a branch's other
//! traffic, and does foreground share the link fairly?
//!
//! One emulated WAN link with two routes through the same bottleneck: one to the seed, one to
//! a competing bulk sender (a plain QUIC stream under quinn's default Cubic, the loss-based
//! kind TCP downloads use). Two phases, each on a fresh link and a cold reflector:
//! - **background**: the reflector prefetches a layer (`GetChunksBackground`); a competing
//!   download runs from `--yield-from` to `--yield-to` seconds. Reported: the prefetch's share
//!   of the bottleneck alone, beside the competitor (after one second to react), and how long
//!   after the competitor stops until it is back at 80% of the link;
//! - **foreground**: an endpoint fetches a layer through the reflector while the competitor
//!   runs; Jain's fairness index of the two rates over the time both ran.
//!
//! Rates come from byte counters sampled every 100 ms: the reflector's upstream chunk bytes
//! and the competitor's received bytes (stream payload, as the reflector's are).

use crate::live::{self, RateSampler, TestSeed};
use anyhow::Context;
use oasis_core::net::{self, Congestion, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role, NODE_SERVER_NAME};
use oasis_reflector::{ReflectorConfig, RunningReflector, WanLimit};
use oasis_wanem::{EmulatorThread, WanSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Background's share of the bottleneck while a competitor is active, at most.
pub const YIELD_CEILING: f64 = 0.10;
/// Seconds after the competitor stops within which background is back at 80% of the link.
pub const RECOVERY_CEILING_S: f64 = 5.0;
/// Jain's index of foreground against one competing flow, at least.
pub const FAIRNESS_FLOOR: f64 = 0.9;
/// Reaction time left out of the "beside a competitor" window.
const REACT_S: f64 = 1.0;
const SAMPLE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, clap::Args)]
pub struct YieldBenchArgs {
    /// yield: the link ("80ms,0%,100Mbit"; see `oasis-wanem --help`).
    #[arg(long, default_value = "80ms,0%,100Mbit")]
    pub yield_link: String,
    /// yield: size of the prefetched layer in MiB (long enough to outlast the competitor).
    #[arg(long, default_value_t = 256)]
    pub yield_mib: usize,
    /// yield: second at which the competing download starts.
    #[arg(long, default_value_t = 6.0)]
    pub yield_from: f64,
    /// yield: second at which it stops.
    #[arg(long, default_value_t = 16.0)]
    pub yield_to: f64,
}

/// A bulk sender: every connection's first stream gets zeros until the client stops reading.
struct Competitor {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Competitor {
    fn start(identity: &NodeIdentity) -> anyhow::Result<Competitor> {
        let opts = TransportOptions { congestion: Congestion::Cubic, ..Default::default() };
        let ep = net::server_endpoint("127.0.0.1:0".parse()?, identity, &opts)?;
        let addr = ep.local_addr()?;
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let Ok((mut send, _recv)) = conn.accept_bi().await else { return };
                    let block = bytes::Bytes::from(vec![0u8; 1 << 20]);
                    while send.write_chunk(block.clone()).await.is_ok() {}
                });
            }
        });
        Ok(Competitor { addr, task })
    }
}

impl Drop for Competitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Downloads from the competitor through `via` until `stop` is set, counting into `got`.
async fn compete(
    identity: NodeIdentity,
    via: SocketAddr,
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let opts = TransportOptions { congestion: Congestion::Cubic, ..Default::default() };
    let ep = net::client_endpoint(&identity, &opts)?;
    let conn = ep.connect(via, NODE_SERVER_NAME)?.await.context("connecting to the competitor")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"go").await?;
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(SAMPLE, recv.read_chunk(1 << 20, true)).await {
            Ok(Ok(Some(c))) => {
                got.fetch_add(c.bytes.len() as u64, Ordering::Relaxed);
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {}
        }
    }
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    Ok(())
}

/// Mean rate of a sampled counter between two times (bytes/s).
fn rate(samples: &[(f64, u64)], from: f64, to: f64) -> f64 {
    let at =
        |t: f64| samples.iter().rev().find(|s| s.0 <= t).or(samples.first()).map_or((t, 0), |s| *s);
    let (a, b) = (at(from), at(to));
    if b.0 <= a.0 {
        return 0.0;
    }
    (b.1 - a.1) as f64 / (b.0 - a.0)
}

/// Jain's fairness index of the rates: 1 when equal, 1/n when one takes everything.
pub fn jain(rates: &[f64]) -> f64 {
    let sum: f64 = rates.iter().sum();
    let squares: f64 = rates.iter().map(|r| r * r).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (rates.len() as f64 * squares)
}

fn start_reflector_config(
    seed: &TestSeed,
    tag: &str,
    upstream: SocketAddr,
) -> anyhow::Result<ReflectorConfig> {
    let state = seed.enroll_in_site(Role::Reflector, &format!("{tag}-refl"), tag)?;
    seed.make_available(tag, "bench-yield", "1")?;
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, upstream.to_string());
    cfg.wan = WanLimit::Unlimited;
    cfg.assignments_poll = Duration::ZERO;
    Ok(cfg)
}

/// One phase: a fresh link with a route to the seed and one to the competitor, a cold
/// reflector behind it, and the two byte counters sampled from now.
struct Phase {
    emu: EmulatorThread,
    refl: RunningReflector,
    t0: Instant,
    ours: RateSampler,
    theirs_bytes: Arc<AtomicU64>,
    theirs: RateSampler,
}

impl Phase {
    async fn start(
        seed: &TestSeed,
        tag: &str,
        competitor: SocketAddr,
        spec: &WanSpec,
    ) -> anyhow::Result<Phase> {
        let emu = EmulatorThread::start_routes(
            vec![("127.0.0.1:0".parse()?, seed.seed.addr), ("127.0.0.1:0".parse()?, competitor)],
            spec.clone(),
        )?;
        let refl =
            RunningReflector::start(start_reflector_config(seed, tag, emu.local_addrs()[0])?)
                .await?;
        let t0 = Instant::now();
        let ours = {
            let s = refl.stats.clone();
            RateSampler::start_at(t0, SAMPLE, move || s.upstream_bytes.get())
        };
        let theirs_bytes = Arc::new(AtomicU64::new(0));
        let theirs = {
            let b = theirs_bytes.clone();
            RateSampler::start_at(t0, SAMPLE, move || b.load(Ordering::Relaxed))
        };
        Ok(Phase { emu, refl, t0, ours, theirs_bytes, theirs })
    }

    /// Stops the samplers, the reflector and the link; the two sample series.
    async fn finish(self) -> (Vec<(f64, u64)>, Vec<(f64, u64)>) {
        // A sampler task that failed leaves an empty series, which the report shows as no data.
        let series = |r: anyhow::Result<live::Samples>| r.map(|s| s.0).unwrap_or_default();
        let samples = (series(self.ours.finish().await), series(self.theirs.finish().await));
        self.refl.stop().await;
        drop(self.emu);
        samples
    }
}

pub async fn run(
    args: &YieldBenchArgs,
    tmp: &Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.yield_from >= 2.0 && args.yield_to > args.yield_from + 2.0 * REACT_S,
        "--yield-from must be at least 2 s and --yield-to more than 2 s after it"
    );
    let spec: WanSpec = args
        .yield_link
        .parse()
        .map_err(|e| anyhow::anyhow!("--yield-link {}: {e}", args.yield_link))?;
    let link = spec
        .down
        .rate
        .map(|bits| bits as f64 / 8.0 * 1452.0 / (1452.0 + spec.down.overhead as f64))
        .context("--yield-link needs a bottleneck rate")?;
    let base = tmp.join("yield-bench");
    std::fs::create_dir_all(&base)?;
    let src = base.join("layer");
    live::write_layer(&src, args.yield_mib << 20, 7)?;
    let seed = TestSeed::start_in(&base).await?;
    seed.publish_blocking("bench-yield", "1", &src).await?;
    let competitor_id =
        NodeIdentity::load(&seed.enroll_in_site(Role::Reflector, "competitor", "c")?)?;
    let competitor = Competitor::start(&competitor_id)?;
    let say = |s: String| {
        if !json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "yield: link {spec}, {:.2} MB/s of payload; competitor: a Cubic QUIC download through the same bottleneck",
        link / 1e6
    ));

    // Background.
    let phase = Phase::start(&seed, "ybg", competitor.addr, &spec).await?;
    let (t0, theirs_bytes) = (phase.t0, phase.theirs_bytes.clone());
    let prefetch = {
        let refl = &phase.refl;
        async move { refl.prefetch_layer("bench-yield", Some("1")).await }
    };
    let schedule = async {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(args.yield_from)).into()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(compete(
            competitor_id.clone(),
            phase.emu.local_addrs()[1],
            theirs_bytes.clone(),
            stop.clone(),
        ));
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(args.yield_to)).into()).await;
        stop.store(true, Ordering::Relaxed);
        task.await.context("competitor task")?
    };
    let (prefetched, competed) = tokio::join!(prefetch, schedule);
    let prefetched = prefetched.context("background prefetch")?;
    competed?;
    let done = t0.elapsed().as_secs_f64();
    let (ours, theirs) = phase.finish().await;
    anyhow::ensure!(
        done > args.yield_to + 1.0,
        "the prefetch ended {done:.1} s in, before the competitor stopped: give a larger --yield-mib"
    );
    let alone = rate(&ours, args.yield_from - 2.0, args.yield_from) / link;
    let beside = rate(&ours, args.yield_from + REACT_S, args.yield_to) / link;
    let competitor_share = rate(&theirs, args.yield_from + REACT_S, args.yield_to) / link;
    let recovered = live::window_rates(&ours, 0.5, args.yield_to)
        .into_iter()
        .find(|&(_, r)| r >= 0.8 * link)
        .map(|(t, _)| t + 0.5 - args.yield_to);
    // Half-second rates of both, for a chart: (second, prefetch share, competitor share).
    let series = |s: &[(f64, u64)]| live::window_rates(s, 0.5, 0.0);
    let timeline: Vec<(f64, f64, f64)> = series(&ours)
        .into_iter()
        .step_by(5)
        .map(|(t, r)| (t, r / link, rate(&theirs, t, t + 0.5) / link))
        .collect();
    let bg_pass = beside <= YIELD_CEILING && recovered.is_some_and(|s| s <= RECOVERY_CEILING_S);
    say(format!(
        "yield: background prefetch ({:.0} MB): alone {:.1}% of the link; beside the competitor {:.1}% (ceiling {:.0}%), competitor {:.1}%; back at 80% {} after it stopped (within {RECOVERY_CEILING_S:.0} s): {}",
        prefetched.bytes_fetched as f64 / 1e6,
        alone * 100.0,
        beside * 100.0,
        YIELD_CEILING * 100.0,
        competitor_share * 100.0,
        recovered.map_or("never".to_string(), |s| format!("{s:.1} s")),
        if bg_pass { "met" } else { "NOT MET" }
    ));

    // Foreground.
    let phase = Phase::start(&seed, "yfg", competitor.addr, &spec).await?;
    let ep = seed.enroll_in_site(Role::Endpoint, "yfg-ep", "yfg")?;
    let stop = Arc::new(AtomicBool::new(false));
    let rival = tokio::spawn(compete(
        competitor_id.clone(),
        phase.emu.local_addrs()[1],
        phase.theirs_bytes.clone(),
        stop.clone(),
    ));
    let fetched = live::verify_fetch(&ep, phase.refl.addr, "bench-yield", "1", 8, phase.t0).await;
    let fg_end = phase.t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    rival.await.context("competitor task")??;
    fetched?;
    let (ours, theirs) = phase.finish().await;
    // Both running: from when both are past their start (2 s) to the end of the fetch.
    let (from, to) = (2.0, fg_end - 0.5);
    anyhow::ensure!(to > from + 2.0, "the foreground fetch took {fg_end:.1} s: too short to judge");
    let fg = rate(&ours, from, to);
    let other = rate(&theirs, from, to);
    let index = jain(&[fg, other]);
    say(format!(
        "yield: foreground fetch beside the competitor: {:.1}% and {:.1}% of the link over {:.1} s; Jain's index {index:.3} (floor {FAIRNESS_FLOOR}): {}",
        fg / link * 100.0,
        other / link * 100.0,
        to - from,
        if index >= FAIRNESS_FLOOR { "met" } else { "NOT MET" }
    ));
    seed.seed.shutdown();
    Ok(serde_json::json!({
        "link": spec.to_string(),
        "link_payload_bytes_per_s": link,
        "background": {
            "alone_share": alone, "beside_share": beside, "competitor_share": competitor_share,
            "ceiling": YIELD_CEILING, "recovery_seconds": recovered,
            "recovery_ceiling_seconds": RECOVERY_CEILING_S, "pass": bg_pass,
            "competitor_from_s": args.yield_from, "competitor_to_s": args.yield_to,
            "timeline": timeline,
        },
        "foreground": {
            "share": fg / link, "competitor_share": other / link, "jain": index,
            "floor": FAIRNESS_FLOOR, "pass": index >= FAIRNESS_FLOOR, "seconds": to - from,
        },
    }))
}
