//! `oasis-sim run` and `oasis-sim compare`: WAN what-if simulations of a scenario.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::engine::{simulate, Outcome};
use crate::report::{self, fmt_bytes, fmt_secs, Stats};
use crate::scenario::{load_policy, Scenario};

/// Arguments of `oasis-sim run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Scenario file (TOML, see config/sim/).
    pub scenario: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write timeseries.csv, wan_rate.svg and completion_cdf.svg into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Random seed (synthetic chunk sizes, sharing, who is asleep).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Arguments of `oasis-sim compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Scenario file (TOML, see config/sim/).
    pub scenario: PathBuf,
    /// First bandwidth policy file (the reflector's format).
    pub policy_a: PathBuf,
    /// Second bandwidth policy file.
    pub policy_b: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write each run's CSV and charts into DIR/a and DIR/b.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One simulation with its wall time.
pub struct Run {
    pub scenario: Scenario,
    pub outcome: Outcome,
    pub policy: String,
    pub seed: u64,
    pub wall: f64,
}

impl Run {
    pub fn json(&self) -> Value {
        report::to_json(&self.scenario, &self.outcome, self.seed, &self.policy, self.wall)
    }
}

/// Runs a parsed scenario.
pub fn run_scenario(scenario: Scenario, seed: u64) -> Run {
    let t0 = Instant::now();
    let outcome = simulate(&scenario, seed);
    let wall = t0.elapsed().as_secs_f64();
    let policy = scenario.policy.source.clone();
    Run { scenario, outcome, policy, seed, wall }
}

/// Loads and runs a scenario file.
pub fn run_file(path: &Path, seed: u64) -> anyhow::Result<Run> {
    let scenario = Scenario::load(path)?;
    Ok(run_scenario(scenario, seed))
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let r = run_file(&a.scenario, a.seed)?;
    if let Some(dir) = &a.out {
        report::write_outputs(dir, &r.scenario, &r.outcome)
            .with_context(|| format!("writing results to {}", dir.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.json())?);
    } else {
        print!("{}", report::summary(&r.scenario, &r.outcome, r.seed, &r.policy, r.wall));
        if let Some(dir) = &a.out {
            println!(
                "wrote {0}/timeseries.csv, {0}/wan_rate.svg, {0}/completion_cdf.svg",
                dir.display()
            );
        }
    }
    Ok(())
}

pub fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let base = Scenario::load(&a.scenario)?;
    let mut runs = Vec::new();
    for (tag, p) in [("a", &a.policy_a), ("b", &a.policy_b)] {
        let spec = load_policy(p)?;
        let r = run_scenario(base.with_policy(spec), a.seed);
        if let Some(dir) = &a.out {
            let d = dir.join(tag);
            report::write_outputs(&d, &r.scenario, &r.outcome)
                .with_context(|| format!("writing results to {}", d.display()))?;
        }
        runs.push(r);
    }
    if a.json {
        let v = json!({
            "scenario": base.name,
            "file": base.origin,
            "seed": a.seed,
            "a": runs[0].json(),
            "b": runs[1].json(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("scenario {} ({}), seed {}", base.name, base.origin, a.seed);
    println!("A: {}\nB: {}\n", runs[0].policy, runs[1].policy);
    let stats: Vec<Stats> =
        runs.iter().map(|r| Stats::of(&r.outcome.sites.iter().collect::<Vec<_>>())).collect();
    let row = |name: &str, f: &dyn Fn(&Stats, &Run) -> String| {
        println!("{:<28} {:>16} {:>16}", name, f(&stats[0], &runs[0]), f(&stats[1], &runs[1]));
    };
    println!("{:<28} {:>16} {:>16}", "", "A", "B");
    row("WAN bytes", &|s, _| fmt_bytes(s.wan_bytes as f64));
    row("unique layer bytes", &|s, _| fmt_bytes(s.unique_bytes as f64));
    row("completion p50", &|s, _| fmt_secs(s.pct(0.5)));
    row("completion p95", &|s, _| fmt_secs(s.pct(0.95)));
    row("completion max", &|s, _| fmt_secs(s.completions.last().copied()));
    row("peak WAN / policy rate", &|s, _| format!("{:.3}", s.peak_wan_ratio));
    row("seed egress peak / cap", &|_, r| {
        r.outcome.seed_peak_ratio.map_or("-".into(), |x| format!("{x:.3}"))
    });
    row("bytes outside windows", &|s, _| fmt_bytes(s.bytes_outside_windows as f64));
    row("failed endpoints", &|s, _| s.failed().to_string());
    row("virtual time", &|_, r| fmt_secs(Some(r.outcome.sim_seconds)));
    row("wall seconds", &|_, r| format!("{:.2}", r.wall));
    Ok(())
}
