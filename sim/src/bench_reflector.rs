//! `oasis-sim bench --only reflector`: the reflector's benchmark. Fifty endpoints fetch a
//! layer at once through one cold reflector whose WAN is capped; the total time is compared
//! with the lower bound measured in the same run: the larger of (stored bytes / WAN rate) and
//! (endpoints × layer bytes / the reflector's serving rate on a warm cache), since the two
//! overlap. Also WAN bytes against stored bytes and the WAN rate over time (10 s windows).
//!
//! Seed, reflector and endpoints run in this process on 127.0.0.1 (real QUIC). Endpoints are
//! [`crate::live::verify_fetch`] unless `--full-fetch` (see [`crate::live`] for why).

use crate::live::{self, EndpointRun, RateSampler, TestSeed};
use oasis_core::pki::Role;
use oasis_reflector::config::parse_rate;
use oasis_reflector::WanLimit;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The floor: total time within 1.25× the lower bound.
pub const FLOOR: f64 = 1.25;
/// Over any 10 s window the WAN rate stays within 5% above the cap.
pub const RATE_TOLERANCE: f64 = 0.05;

#[derive(Clone, Debug, clap::Args)]
pub struct ReflectorBenchArgs {
    /// reflector: endpoints fetching at once through the reflector.
    #[arg(long, default_value_t = 50)]
    pub endpoints: usize,
    /// reflector: the reflector's WAN cap ("10MB/s", bytes per second, ...).
    #[arg(long, default_value = "10MB/s")]
    pub wan_rate: String,
    /// reflector: write wan_rate.csv and wan_rate.svg (WAN rate over time) into this directory.
    #[arg(long)]
    pub reflector_out: Option<PathBuf>,
    /// reflector: endpoints run the whole `oasis-endpoint fetch` (tree and cache on disk,
    /// ~0.5 GB per endpoint for 256 MiB) instead of verifying every chunk in memory.
    #[arg(long)]
    pub full_fetch: bool,
}

/// One wave of endpoints fetching at once.
struct Wave {
    seconds: f64,
    runs: Vec<EndpointRun>,
}

async fn wave(
    seed: &TestSeed,
    tag: &str,
    n: usize,
    from: std::net::SocketAddr,
    full: bool,
    t0: Instant,
) -> anyhow::Result<Wave> {
    let mut states = Vec::with_capacity(n);
    for i in 0..n {
        states.push(seed.enroll_in_site(Role::Endpoint, &format!("{tag}-ep{i:02}"), "bench")?);
    }
    let mut tasks = Vec::with_capacity(n);
    let start = t0.elapsed().as_secs_f64();
    for state in states {
        // Each endpoint's tree beside its state directory (`base/node-NAME-root`).
        let mut dir = state.clone().into_os_string();
        dir.push("-root");
        let into = std::path::PathBuf::from(dir);
        tasks.push(tokio::spawn(async move {
            if full {
                let r = live::full_fetch(&state, vec![from], "bench-refl", "1", &into).await?;
                let done_at = t0.elapsed().as_secs_f64();
                // Free the disk as soon as possible: fifty trees do not fit on every machine.
                let _ = std::fs::remove_dir_all(&into);
                let _ = std::fs::remove_dir_all(state.join("cache"));
                anyhow::Ok(EndpointRun {
                    done_at,
                    bytes_plain: r.bytes,
                    bytes_network: r.bytes_network,
                    chunks: r.chunks_fetched,
                })
            } else {
                live::verify_fetch(&state, from, "bench-refl", "1", 8, t0).await
            }
        }));
    }
    let mut runs = Vec::with_capacity(n);
    for t in tasks {
        runs.push(t.await??);
    }
    let end = runs.iter().map(|r| r.done_at).fold(start, f64::max);
    Ok(Wave { seconds: end - start, runs })
}

pub async fn run(
    args: &ReflectorBenchArgs,
    src: &Path,
    tmp: &Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let rate = parse_rate(&args.wan_rate).map_err(|e| anyhow::anyhow!("--wan-rate: {e}"))?;
    anyhow::ensure!(rate > 0, "--wan-rate must be a rate, not unlimited");
    let n = args.endpoints.max(1);
    let base = tmp.join("reflector-bench");
    std::fs::create_dir_all(&base)?;
    let seed = TestSeed::start_in(&base).await?;
    let layer = seed.publish_blocking("bench-refl", "1", src).await?;
    seed.make_available("bench", "bench-refl", "1")?;
    let refl = live::site_reflector(&seed, "reflector", "bench", WanLimit::Flat(rate)).await?;
    let burst = oasis_core::policy::BandwidthPolicy::flat(rate).burst_bytes();
    let say = |s: String| {
        if !json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "reflector: layer {} MB ({} MB stored, {} chunks); {n} endpoints; WAN cap {rate} B/s, burst {burst} B",
        layer.bytes / 1_000_000,
        layer.stored_bytes / 1_000_000,
        layer.unique_chunks
    ));

    // Cold: every endpoint at once, the WAN sampled every 100 ms.
    let t0 = Instant::now();
    let upstream = refl.stats.upstream_bytes.clone();
    let sampler = RateSampler::start_at(t0, Duration::from_millis(100), move || upstream.get());
    let cold = wave(&seed, "cold", n, refl.addr, args.full_fetch, t0).await?;
    let samples = sampler.finish().await?.0;
    let wan_bytes = refl.stats.upstream_bytes.get();
    let seed_served = seed.seed.metrics.served_bytes.get();
    say(format!("reflector: cold wave done in {:.1} s", cold.seconds));

    // Warm: the same again on a full cache, no WAN involved: the reflector's serving rate.
    let warm = wave(&seed, "warm", n, refl.addr, args.full_fetch, t0).await?;
    let warm_wan = refl.stats.upstream_bytes.get() - wan_bytes;
    say(format!("reflector: warm wave done in {:.1} s", warm.seconds));
    refl.stop().await;
    seed.seed.shutdown();

    for r in cold.runs.iter().chain(&warm.runs) {
        anyhow::ensure!(
            r.bytes_network == layer.stored_bytes,
            "an endpoint received {} B of a layer stored in {} B",
            r.bytes_network,
            layer.stored_bytes
        );
    }
    let delivered: u64 = warm.runs.iter().map(|r| r.bytes_plain).sum();
    let serving_rate = n as f64 * layer.bytes as f64 / warm.seconds;
    let wan_bound = layer.stored_bytes as f64 / rate as f64;
    let serve_bound = n as f64 * layer.bytes as f64 / serving_rate;
    let bound = wan_bound.max(serve_bound);
    let ratio = cold.seconds / bound;

    // WAN rate: 10 s windows starting every 100 ms, once the burst is spent.
    let first = samples.iter().find(|s| s.1 > 0).map_or(0.0, |s| s.0);
    let after_burst = first + burst as f64 / rate as f64;
    let windows = live::window_rates(&samples, 10.0, after_burst);
    let peak = windows.iter().map(|w| w.1).fold(0.0, f64::max);
    let mean = windows.iter().map(|w| w.1).sum::<f64>() / windows.len().max(1) as f64;
    let with_burst =
        live::window_rates(&samples, 10.0, 0.0).iter().map(|w| w.1).fold(0.0, f64::max);
    let series = per_second(&samples);
    if let Some(dir) = &args.reflector_out {
        write_series(dir, &series, rate)?;
    }
    let completions = {
        let mut v: Vec<f64> = cold.runs.iter().map(|r| r.done_at - samples[0].0).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let out = serde_json::json!({
        "endpoints": n,
        "endpoint_kind": if args.full_fetch { "oasis-endpoint fetch" } else { "verify in memory" },
        "layer_bytes": layer.bytes,
        "stored_bytes": layer.stored_bytes,
        "wan_rate_bytes_per_s": rate,
        "burst_bytes": burst,
        "cold_seconds": cold.seconds,
        "cold_completion_p50_s": completions[completions.len() / 2],
        "warm_seconds": warm.seconds,
        "serving_rate_bytes_per_s": serving_rate,
        "bound_wan_s": wan_bound,
        "bound_serving_s": serve_bound,
        "bound_s": bound,
        "ratio_vs_bound": ratio,
        "floor": FLOOR,
        "pass": ratio <= FLOOR,
        "wan_bytes": wan_bytes,
        "seed_served_bytes": seed_served,
        "wan_over_stored": wan_bytes as f64 / layer.stored_bytes as f64,
        "warm_wave_wan_bytes": warm_wan,
        "delivered_bytes_warm": delivered,
        "rate_windows": windows.len(),
        "peak_10s_rate_over_cap": peak / rate as f64,
        "mean_10s_rate_over_cap": mean / rate as f64,
        "peak_10s_rate_over_cap_with_burst": with_burst / rate as f64,
        "rate_pass": peak <= rate as f64 * (1.0 + RATE_TOLERANCE),
        "wan_rate_per_second": series.iter().map(|s| s.1).collect::<Vec<_>>(),
    });
    if !json {
        let mb = |b: f64| b / 1e6;
        println!(
            "reflector: {n} endpoints, {:.0} MB layer ({:.0} MB stored), WAN cap {:.1} MB/s",
            mb(layer.bytes as f64),
            mb(layer.stored_bytes as f64),
            mb(rate as f64)
        );
        println!(
            "reflector: cold wave {:.1} s; bound {:.1} s = max(stored / WAN {wan_bound:.1} s, \
             {n} x layer / warm serving rate {:.0} MB/s = {serve_bound:.1} s): {ratio:.2}x (floor {FLOOR}x) {}",
            cold.seconds,
            bound,
            mb(serving_rate),
            if ratio <= FLOOR { "met" } else { "NOT MET" }
        );
        println!(
            "reflector: WAN {:.1} MB for {:.1} MB stored ({:.4}x); warm wave pulled {warm_wan} B",
            mb(wan_bytes as f64),
            mb(layer.stored_bytes as f64),
            wan_bytes as f64 / layer.stored_bytes as f64
        );
        println!(
            "reflector: WAN rate over {} 10 s windows after the burst: peak {:+.2}%, mean {:+.2}% of the cap (limit +5%); \
             first window including the {burst} B burst {:+.2}%",
            windows.len(),
            (peak / rate as f64 - 1.0) * 100.0,
            (mean / rate as f64 - 1.0) * 100.0,
            (with_burst / rate as f64 - 1.0) * 100.0
        );
        if let Some(dir) = &args.reflector_out {
            println!("reflector: wrote {0}/wan_rate.csv and {0}/wan_rate.svg", dir.display());
        }
    }
    Ok(out)
}

/// (end of second, bytes/s in that second, bytes/s over the 10 s before it).
fn per_second(samples: &[(f64, u64)]) -> Vec<(f64, f64, f64)> {
    let Some(&(t_end, _)) = samples.last() else { return Vec::new() };
    let at = |t: f64| -> f64 {
        // Counter value at time t, interpolated between samples.
        match samples.iter().position(|s| s.0 >= t) {
            Some(0) => samples[0].1 as f64,
            Some(i) => {
                let (a, b) = (samples[i - 1], samples[i]);
                a.1 as f64 + (b.1 - a.1) as f64 * (t - a.0) / (b.0 - a.0).max(1e-9)
            }
            None => samples.last().map_or(0.0, |s| s.1 as f64),
        }
    };
    let t0 = samples[0].0;
    let mut out = Vec::new();
    let mut t = t0 + 1.0;
    while t <= t_end + 1e-9 {
        let one = at(t) - at(t - 1.0);
        let ten = (at(t) - at((t - 10.0).max(t0))) / (t - (t - 10.0).max(t0));
        out.push((t - t0, one, ten));
        t += 1.0;
    }
    out
}

fn write_series(dir: &Path, series: &[(f64, f64, f64)], cap: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut csv = String::from("t_s,wan_bytes_per_s_1s,wan_bytes_per_s_10s,cap_bytes_per_s\n");
    for (t, one, ten) in series {
        csv.push_str(&format!("{t:.0},{one:.0},{ten:.0},{cap}\n"));
    }
    std::fs::write(dir.join("wan_rate.csv"), csv)?;
    let mb = |v: f64| v / 1e6;
    crate::report::line_chart(
        &dir.join("wan_rate.svg"),
        "Reflector WAN rate, cold wave",
        "seconds",
        "MB/s",
        &[
            ("1 s".to_string(), series.iter().map(|s| (s.0, mb(s.1))).collect()),
            ("10 s trailing".to_string(), series.iter().map(|s| (s.0, mb(s.2))).collect()),
            ("cap".to_string(), series.iter().map(|s| (s.0, mb(cap as f64))).collect()),
        ],
    )
}
