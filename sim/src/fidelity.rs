//! `oasis-sim fidelity`: one small scenario run twice, in the simulator and live on loopback
//! (real seed, reflectors under the scenario's policy, endpoints over QUIC), on the same
//! layer: the simulator is given the live layer's chunks (ids and sizes as sent), so WAN bytes
//! must agree exactly, and completion times are compared (the target: within 15%).
//!
//! Live, each site reaches the seed through its own emulated WAN link (`oasis-wanem`) with the
//! scenario's `wan_rate` as its bottleneck, `wan_latency` each way and `wan_loss` in both
//! directions; the simulator models what the transport achieves on the same link.
//!
//! What can run live is limited to what loopback can stand for: one layer assigned to every
//! site, no windows, failures or sleeping endpoints, no sharing with a previous version (the
//! caches start empty), a handful of sites. The LAN is loopback: its rate must be well above
//! what the WAN delivers.

use crate::engine::{content_from_chunks, simulate_content};
use crate::live::{self, RateSampler, TestSeed};
use crate::report::Stats;
use crate::scenario::Scenario;
use anyhow::Context;
use oasis_core::pki::Role;
use oasis_reflector::RunningReflector;
use oasis_wanem::{EmulatorThread, Probability, WanSpec};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Completion times within 15% of the live run.
pub const TOLERANCE: f64 = 0.15;
const MAX_LIVE_ENDPOINTS: usize = 64;

#[derive(clap::Args, Debug)]
pub struct FidelityArgs {
    /// Scenario to run both ways.
    #[arg(default_value = "config/sim/fidelity.toml")]
    pub scenario: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Random seed of the simulation (the layer's content is fixed).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the live run's nodes under this directory instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Why a scenario cannot be run live, if it cannot.
fn live_problem(sc: &Scenario) -> Option<String> {
    if sc.layers.len() != 1 {
        return Some(format!("it has {} layers (fidelity runs one)", sc.layers.len()));
    }
    let l = &sc.layers[0];
    if l.shared_with_previous > 0.0 || l.shared_with.is_some() {
        return Some("layers[0] shares chunks with a previous version or another layer".into());
    }
    if sc.assignments.len() != 1 || sc.assignments[0].window.is_some() {
        return Some("it needs exactly one assignment, without a window".into());
    }
    if !sc.failures.is_empty() {
        return Some("it has [[failures]]".into());
    }
    let endpoints: usize = sc.groups.iter().map(|g| g.count * g.endpoints).sum();
    if endpoints > MAX_LIVE_ENDPOINTS || sc.total_sites() > 8 {
        return Some(format!(
            "{endpoints} endpoints in {} sites is too many for loopback",
            sc.total_sites()
        ));
    }
    for g in &sc.groups {
        if g.asleep > 0.0 {
            return Some(format!("sites group {} has sleeping endpoints", g.name));
        }
        if !sc.assignments[0].sites.matches(&g.name, &g.site_name(0)) {
            return Some(format!("the layer is not assigned to group {}", g.name));
        }
    }
    if !sc.policy.policy.windows().is_empty() {
        return Some(
            "the policy has schedule windows (the live run is not at the scenario's clock)".into(),
        );
    }
    None
}

struct LiveSite {
    name: String,
    n_reflectors: usize,
    reflectors: Vec<RunningReflector>,
    endpoints: Vec<std::path::PathBuf>,
    /// The site's emulated WAN link to the seed.
    link: EmulatorThread,
}

/// The emulated link of a site of group `g`: `wan_rate` as the bottleneck each way,
/// `wan_latency` each way, `wan_loss` in each direction.
pub fn site_link(g: &crate::scenario::GroupSpec) -> WanSpec {
    let rate = g.wan_rate.is_finite().then_some((g.wan_rate * 8.0) as u64);
    let rtt = Duration::from_secs_f64(2.0 * g.wan_latency_s);
    WanSpec::symmetric(rtt, Probability::fraction(g.wan_loss), rate)
}

pub async fn run(a: FidelityArgs) -> anyhow::Result<()> {
    let sc = Scenario::load(&a.scenario)?;
    let (out, table) = run_with(&a, sc).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// Runs `sc` both ways; returns the comparison as JSON and as the printed table.
pub async fn run_with(
    a: &FidelityArgs,
    mut sc: Scenario,
) -> anyhow::Result<(serde_json::Value, String)> {
    use std::fmt::Write as _;
    if let Some(p) = live_problem(&sc) {
        anyhow::bail!("{}: cannot run live: {p}", a.scenario.display());
    }
    // Chunk by chunk: every pull is one chunk of the live layer, as many in flight as a live
    // reflector's batches hold.
    sc.model.pull_bytes = 1;
    sc.model.fetch_concurrency = oasis_reflector::config::DEFAULT_BATCHES_IN_FLIGHT
        * oasis_reflector::config::DEFAULT_BATCH_MAX_CHUNKS;
    let say = |s: String| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    let tmp;
    let base = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let layer = &sc.layers[0];
    let seed = TestSeed::start_in(&base).await?;
    let src = base.join("layer");
    live::write_layer(&src, layer.size as usize, 42)?;
    let published = seed.publish_blocking(&layer.name, "1", &src).await?;
    let (chunks, body_chunks) = seed.stored_layer(&layer.name, "1")?;
    // What one site pulls: the layer's chunks and its manifest's body chunks, as stored.
    let stored_total: u64 = chunks.iter().map(|c| c.1).sum();
    std::fs::remove_dir_all(&src)?;
    say(format!(
        "fidelity: layer {} of {} MB ({} MB as stored, {} chunks) published",
        layer.name,
        published.bytes / 1_000_000,
        published.stored_bytes / 1_000_000,
        chunks.len()
    ));

    // The simulator, on the same chunks.
    let t = Instant::now();
    let content = content_from_chunks(&sc, std::slice::from_ref(&chunks), &[body_chunks]);
    let sim = simulate_content(&sc, a.seed, content);
    let sim_wall = t.elapsed().as_secs_f64();

    // Live: every site's reflectors under the site's policy, endpoint i on reflector i mod n.
    let mut sites = Vec::new();
    for g in &sc.groups {
        let policy = g.policy.as_ref().unwrap_or(&sc.policy).policy.clone();
        for i in 0..g.count {
            let name = g.site_name(i);
            let spec = site_link(g);
            let link = EmulatorThread::start("127.0.0.1:0".parse()?, seed.seed.addr, spec.clone())
                .with_context(|| format!("starting the emulated WAN link of {name}"))?;
            say(format!("fidelity: {name} reaches the seed over an emulated link: {spec}"));
            // Entitled before its reflectors start, as the scenario's assignments hold from its
            // start: the first statement a reflector fetches already names the layer.
            seed.make_available(&name, &layer.name, "1")?;
            let wan = live::SitePolicy::Policy(&policy);
            let reflectors =
                live::site_reflectors_via(&seed, &name, g.reflectors, wan, link.local_addr())
                    .await?;
            let mut endpoints = Vec::new();
            for e in 0..g.endpoints {
                endpoints.push(seed.enroll_in_site(
                    Role::Endpoint,
                    &format!("{name}-ep{e:02}"),
                    &name,
                )?);
            }
            let n_reflectors = reflectors.len();
            sites.push(LiveSite { name, n_reflectors, reflectors, endpoints, link });
        }
    }
    say(format!(
        "fidelity: simulated in {sim_wall:.2} s; live: {} sites, {} reflectors, {} endpoints on 127.0.0.1",
        sites.len(),
        sites.iter().map(|s| s.n_reflectors).sum::<usize>(),
        sites.iter().map(|s| s.endpoints.len()).sum::<usize>()
    ));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let mut samplers = Vec::new();
    for (si, site) in sites.iter().enumerate() {
        let counters: Vec<_> =
            site.reflectors.iter().map(|r| r.stats.upstream_bytes.clone()).collect();
        samplers.push(RateSampler::start_at(t0, Duration::from_millis(100), move || {
            counters.iter().map(|c| c.get()).sum()
        }));
        for (e, state) in site.endpoints.iter().enumerate() {
            let from = site.reflectors[e % site.reflectors.len()].addr;
            let (state, name) = (state.clone(), layer.name.clone());
            tasks.push(tokio::spawn(async move {
                (si, live::verify_fetch(&state, from, &name, "1", 8, t0).await)
            }));
        }
    }
    let mut live_done: Vec<Vec<f64>> = vec![Vec::new(); sites.len()];
    for t in tasks {
        let (si, r) = t.await?;
        let r = r.with_context(|| format!("an endpoint of {}", sites[si].name))?;
        anyhow::ensure!(
            r.bytes_network == published.stored_bytes,
            "an endpoint got a partial layer"
        );
        live_done[si].push(r.done_at);
    }
    let live_wall = t0.elapsed().as_secs_f64();
    let mut live_wan = Vec::new();
    let mut carried = Vec::new();
    let mut series = Vec::new();
    for (site, s) in sites.iter().zip(samplers) {
        series.push(s.finish().await?.0);
        live_wan.push(site.reflectors.iter().map(|r| r.stats.upstream_bytes.get()).sum::<u64>());
        let c = site.link.counters();
        carried.push(c.down.delivered_bytes + c.down.lost_bytes);
    }
    let seed_served = seed.seed.metrics.served_bytes.get();
    for site in sites.iter_mut() {
        for r in site.reflectors.drain(..) {
            r.stop().await;
        }
    }
    seed.seed.shutdown();

    // Compare.
    let mut rows = Vec::new();
    let mut all_live = Vec::new();
    let mut all_sim = Vec::new();
    let mut wan_equal = true;
    for (si, site) in sites.iter().enumerate() {
        let s = sim
            .sites
            .iter()
            .find(|x| x.name == site.name)
            .context("site missing in the simulation")?;
        let mut l = live_done[si].clone();
        l.sort_by(f64::total_cmp);
        let mut m = s.stats.completions.clone();
        m.sort_by(f64::total_cmp);
        all_live.extend(l.iter().copied());
        all_sim.extend(m.iter().copied());
        wan_equal &= s.stats.wan_bytes == live_wan[si];
        rows.push(json!({
            "site": site.name,
            "reflectors": site.n_reflectors,
            "endpoints": site.endpoints.len(),
            "wan_bytes_sim": s.stats.wan_bytes,
            "wan_bytes_live": live_wan[si],
            "wan_equal": s.stats.wan_bytes == live_wan[si],
            "link": site.link.spec().to_string(),
            "link_carried_bytes_down": carried[si],
            "wan_bytes_live_per_second": per_second(&series[si]),
            "completion_p50_s": {"sim": pct(&m, 0.5), "live": pct(&l, 0.5)},
            "completion_max_s": {"sim": pct(&m, 1.0), "live": pct(&l, 1.0)},
            "failed_sim": s.stats.failed(),
        }));
    }
    all_live.sort_by(f64::total_cmp);
    all_sim.sort_by(f64::total_cmp);
    let mut times = Vec::new();
    let mut times_ok = true;
    for (q, label) in [(0.5, "p50"), (0.95, "p95"), (1.0, "max")] {
        let (s, l) = (pct(&all_sim, q), pct(&all_live, q));
        let diff = l / s - 1.0;
        times_ok &= diff.abs() <= TOLERANCE;
        times.push((label, s, l, diff));
    }
    let total_sim: u64 = sim.sites.iter().map(|s| s.stats.wan_bytes).sum();
    let total_live: u64 = live_wan.iter().sum();
    let st = Stats::of(&sim.sites.iter().collect::<Vec<_>>());
    let out = json!({
        "scenario": sc.name,
        "file": a.scenario.display().to_string(),
        "seed": a.seed,
        "layer_bytes": published.bytes,
        "stored_bytes": stored_total,
        "chunks": chunks.len(),
        "wan_bytes_sim": total_sim,
        "wan_bytes_live": total_live,
        "seed_served_bytes_live": seed_served,
        "wan_bytes_equal": wan_equal && total_sim == total_live,
        "completion": times.iter().map(|(k, s, l, d)| (k.to_string(), json!({"sim": s, "live": l, "live_vs_sim": d}))).collect::<serde_json::Map<_, _>>(),
        "tolerance": TOLERANCE,
        "completion_within_tolerance": times_ok,
        "sim_peak_wan_ratio": st.peak_wan_ratio,
        "sim_failed_endpoints": st.failed(),
        "sim_wall_seconds": sim_wall,
        "live_wall_seconds": live_wall,
        "sites": rows,
    });
    let mut t = String::new();
    let _ = writeln!(
        t,
        "scenario {} ({}): {} MB layer, {} MB stored in {} chunks",
        sc.name,
        a.scenario.display(),
        published.bytes / 1_000_000,
        published.stored_bytes / 1_000_000,
        chunks.len()
    );
    let _ = writeln!(t, "{:<14} {:>16} {:>16} {:>10}", "", "simulated", "live", "agree");
    for (si, site) in sites.iter().enumerate() {
        let s = sim.sites.iter().find(|x| x.name == site.name).map_or(0, |x| x.stats.wan_bytes);
        let _ = writeln!(
            t,
            "{:<14} {:>16} {:>16} {:>10}",
            format!("WAN {}", site.name),
            s,
            live_wan[si],
            if s == live_wan[si] { "exact" } else { "NO" }
        );
        let _ = writeln!(
            t,
            "{:<14} {:>16} {:>16} {:>10}",
            "  link carried",
            "",
            carried[si],
            format!("{:.3}x", carried[si] as f64 / live_wan[si].max(1) as f64)
        );
    }
    let _ = writeln!(
        t,
        "{:<14} {:>16} {:>16} {:>10}",
        "WAN total",
        total_sim,
        total_live,
        if total_sim == total_live { "exact" } else { "NO" }
    );
    for (label, s, l, d) in &times {
        let _ = writeln!(
            t,
            "{:<14} {:>15.2}s {:>15.2}s {:>+9.1}%",
            format!("completion {label}"),
            s,
            l,
            d * 100.0
        );
    }
    let _ = writeln!(
        t,
        "WAN bytes {}; completion times {} (tolerance ±{:.0}%)",
        if wan_equal && total_sim == total_live { "agree exactly" } else { "DIFFER" },
        if times_ok { "agree" } else { "DO NOT agree" },
        TOLERANCE * 100.0
    );
    Ok((out, t))
}

/// Bytes per whole second from cumulative samples (time, bytes so far).
fn per_second(samples: &[(f64, u64)]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    let mut last = 0;
    for &(t, b) in samples {
        let sec = t.floor() as usize;
        if out.len() <= sec {
            out.resize(sec + 1, 0);
        }
        out[sec] += b.saturating_sub(last);
        last = b;
    }
    out
}

/// The q-quantile of sorted values (nearest rank).
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}
