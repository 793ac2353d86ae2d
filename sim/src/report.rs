//! Results of a simulation: the summary table, the JSON object, the CSV time series and the
//! SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use oasis_core::wake::schedule::{MachineResult, MachineState};
use serde_json::{json, Value};

use crate::engine::{Outcome, SiteResult};
use crate::scenario::Scenario;

/// What the sites' scheduled wake runs recorded (each machine's last run), as the reflector's
/// `oasis_wake_*` counters count it: woken = a magic packet was sent to it (awake machines
/// too, as the reflector does), online = it came online, delivered = it held the layers,
/// failed = the run gave up on it, with the run's reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WakeStats {
    pub machines: u64,
    pub woken: u64,
    pub online: u64,
    pub delivered: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
}

impl WakeStats {
    pub fn add_machine(&mut self, m: &MachineResult) {
        self.machines += 1;
        self.woken += u64::from(m.wakes > 0);
        self.online += u64::from(m.online_at.is_some());
        self.delivered += u64::from(m.state == MachineState::Delivered);
        if m.state == MachineState::Failed {
            self.failed += 1;
            let reason = m.reason.clone().unwrap_or_else(|| "unknown".into());
            *self.failures.entry(reason).or_default() += 1;
        }
    }

    pub fn add(&mut self, o: &WakeStats) {
        self.machines += o.machines;
        self.woken += o.woken;
        self.online += o.online;
        self.delivered += o.delivered;
        self.failed += o.failed;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "machines": self.machines,
            "woken": self.woken,
            "online": self.online,
            "delivered": self.delivered,
            "failed": self.failed,
            "failures": self.failures,
        })
    }
}

/// Aggregated figures over some set of sites (one site's in [`SiteResult::stats`]).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub sites: usize,
    pub endpoints: usize,
    pub wan_bytes: u64,
    pub wasted_wan_bytes: u64,
    pub unique_bytes: u64,
    pub needed_bytes: u64,
    pub evicted_bytes: u64,
    pub bytes_outside_windows: u64,
    pub completions: Vec<f64>,
    pub failures: BTreeMap<String, u64>,
    pub peak_wan_ratio: f64,
    pub coalesced_requests: u64,
    pub wan_pulls: u64,
    /// Scheduled wakes (sites with sleeping endpoints).
    pub wake: WakeStats,
}

impl Stats {
    pub fn add(&mut self, s: &Stats) {
        self.sites += s.sites;
        self.endpoints += s.endpoints;
        self.wan_bytes += s.wan_bytes;
        self.wasted_wan_bytes += s.wasted_wan_bytes;
        self.unique_bytes += s.unique_bytes;
        self.needed_bytes += s.needed_bytes;
        self.evicted_bytes += s.evicted_bytes;
        self.bytes_outside_windows += s.bytes_outside_windows;
        self.completions.extend_from_slice(&s.completions);
        for (k, v) in &s.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.peak_wan_ratio = self.peak_wan_ratio.max(s.peak_wan_ratio);
        self.coalesced_requests += s.coalesced_requests;
        self.wan_pulls += s.wan_pulls;
        self.wake.add(&s.wake);
    }

    pub fn of(sites: &[&SiteResult]) -> Stats {
        if let [one] = sites {
            return one.stats.clone();
        }
        let mut st = Stats::default();
        for s in sites {
            st.add(&s.stats);
        }
        st.completions.sort_by(f64::total_cmp);
        st
    }

    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Nearest-rank percentile of completion times (completed endpoints only).
    pub fn pct(&self, q: f64) -> Option<f64> {
        let n = self.completions.len();
        if n == 0 {
            return None;
        }
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        Some(self.completions[i])
    }

    pub fn to_json(&self) -> Value {
        let r = |x: Option<f64>| x.map(|v| (v * 1000.0).round() / 1000.0);
        json!({
            "sites": self.sites,
            "endpoints": self.endpoints,
            "wan_bytes": self.wan_bytes,
            "wasted_wan_bytes": self.wasted_wan_bytes,
            "unique_bytes": self.unique_bytes,
            "needed_bytes": self.needed_bytes,
            "wan_over_unique": ratio(self.wan_bytes, self.unique_bytes),
            "evicted_bytes": self.evicted_bytes,
            "completion_p50_s": r(self.pct(0.5)),
            "completion_p95_s": r(self.pct(0.95)),
            "completion_max_s": r(self.completions.last().copied()),
            "completed_endpoints": self.completions.len(),
            "peak_wan_ratio": (self.peak_wan_ratio * 10000.0).round() / 10000.0,
            "bytes_outside_windows": self.bytes_outside_windows,
            "failed_endpoints": self.failed(),
            "failures": self.failures,
            "wan_pulls": self.wan_pulls,
            "coalesced_requests": self.coalesced_requests,
            "wake": self.wake.to_json(),
        })
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| ((a as f64 / b as f64) * 10000.0).round() / 10000.0)
}

/// How many of the slowest sites each group lists.
const TOP_SITES: usize = 3;
/// Up to this many sites, every site is listed in the JSON and the table.
const LIST_ALL: usize = 20;

fn slowest(sites: &[&SiteResult]) -> Vec<usize> {
    let key = |s: &SiteResult| {
        (s.stats.failed(), s.stats.completions.iter().copied().fold(0.0, f64::max))
    };
    let mut idx: Vec<usize> = (0..sites.len()).collect();
    idx.sort_by(|&a, &b| {
        let (fa, ma) = key(sites[a]);
        let (fb, mb) = key(sites[b]);
        fb.cmp(&fa).then(mb.total_cmp(&ma)).then(a.cmp(&b))
    });
    idx
}

/// The run's report as one JSON object.
pub fn to_json(sc: &Scenario, o: &Outcome, seed: u64, policy: &str, wall: f64) -> Value {
    let all: Vec<&SiteResult> = o.sites.iter().collect();
    let total = Stats::of(&all);
    let mut tj = total.to_json();
    let t = tj.as_object_mut().expect("object");
    t.insert("sim_seconds".into(), json!((o.sim_seconds * 1000.0).round() / 1000.0));
    t.insert("wall_seconds".into(), json!((wall * 1000.0).round() / 1000.0));
    t.insert("events".into(), json!(o.events));
    t.insert(
        "seed_peak_ratio".into(),
        json!(o.seed_peak_ratio.map(|r| (r * 10000.0).round() / 10000.0)),
    );
    t.insert("peak_rss_mib".into(), json!(peak_rss_mib()));
    let mut groups = Vec::new();
    for (gi, g) in sc.groups.iter().enumerate() {
        let members: Vec<&SiteResult> = o.sites.iter().filter(|s| s.group == gi).collect();
        let mut gj = Stats::of(&members).to_json();
        let top: Vec<Value> =
            slowest(&members).into_iter().take(TOP_SITES).map(|i| site_json(members[i])).collect();
        let m = gj.as_object_mut().expect("object");
        m.insert("name".into(), json!(g.name));
        m.insert("top_sites".into(), json!(top));
        groups.push(gj);
    }
    let mut out = json!({
        "scenario": sc.name,
        "file": sc.origin,
        "seed": seed,
        "policy": policy,
        "model": {
            "chunk_avg": sc.model.chunk_avg,
            "pull_bytes": sc.model.pull_bytes,
            "layer_chunks": o.layer_chunks,
            "pulls": o.pulls,
            "bin_seconds": o.bin_s,
        },
        "total": tj,
        "groups": groups,
    });
    if o.sites.len() <= LIST_ALL {
        out.as_object_mut()
            .expect("object")
            .insert("sites".into(), o.sites.iter().map(site_json).collect());
    }
    out
}

fn site_json(s: &SiteResult) -> Value {
    let mut v = Stats::of(&[s]).to_json();
    let m = v.as_object_mut().expect("object");
    m.remove("sites");
    m.insert("name".into(), json!(s.name));
    v
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

pub fn fmt_bytes(b: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

pub fn fmt_secs(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) => {
            let s = s.round() as u64;
            format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        }
    }
}

fn table_row(out: &mut String, name: &str, st: &Stats) {
    let _ = writeln!(
        out,
        "{:<22} {:>6} {:>7} {:>11} {:>11} {:>6} {:>9} {:>9} {:>9} {:>6} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6}",
        truncate(name, 22),
        st.sites,
        st.endpoints,
        fmt_bytes(st.wan_bytes as f64),
        fmt_bytes(st.unique_bytes as f64),
        ratio(st.wan_bytes, st.unique_bytes).map_or("-".into(), |r| format!("{r:.2}")),
        fmt_secs(st.pct(0.5)),
        fmt_secs(st.pct(0.95)),
        fmt_secs(st.completions.last().copied()),
        format!("{:.2}", st.peak_wan_ratio),
        fmt_bytes(st.bytes_outside_windows as f64),
        st.failed(),
        st.wake.woken,
        st.wake.online,
        st.wake.delivered,
        st.wake.failed,
    );
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// The human summary table.
pub fn summary(sc: &Scenario, o: &Outcome, seed: u64, policy: &str, wall: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {} ({}), seed {seed}, policy {policy}\n{} sites, {} layer chunks in {} pulls of ~{}",
        sc.name,
        sc.origin,
        o.sites.len(),
        o.layer_chunks,
        o.pulls,
        fmt_bytes(sc.model.pull_bytes as f64)
    );
    let _ = writeln!(
        out,
        "\n{:<22} {:>6} {:>7} {:>11} {:>11} {:>6} {:>9} {:>9} {:>9} {:>6} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "site / group",
        "sites",
        "endpts",
        "WAN",
        "unique",
        "ratio",
        "p50",
        "p95",
        "max",
        "peak",
        "outside",
        "failed",
        "woken",
        "online",
        "deliv",
        "wfail"
    );
    let all: Vec<&SiteResult> = o.sites.iter().collect();
    if o.sites.len() <= LIST_ALL {
        for s in &o.sites {
            table_row(&mut out, &s.name, &Stats::of(&[s]));
        }
    } else {
        for (gi, g) in sc.groups.iter().enumerate() {
            let members: Vec<&SiteResult> = o.sites.iter().filter(|s| s.group == gi).collect();
            table_row(&mut out, &format!("[{}]", g.name), &Stats::of(&members));
            for i in slowest(&members).into_iter().take(TOP_SITES) {
                table_row(&mut out, &format!("  {}", members[i].name), &Stats::of(&[members[i]]));
            }
        }
    }
    let total = Stats::of(&all);
    table_row(&mut out, "TOTAL", &total);
    let _ = writeln!(
        out,
        "\nratio = WAN bytes / unique layer bytes; peak = highest {}s WAN rate of a site / its policy rate",
        o.bin_s
    );
    if total.wake.machines > 0 {
        let _ = writeln!(
            out,
            "scheduled wakes (woken/online/deliv/wfail): {} machines in wake runs, {} woken, {} online, {} delivered, {} failed",
            total.wake.machines,
            total.wake.woken,
            total.wake.online,
            total.wake.delivered,
            total.wake.failed
        );
        for (k, v) in &total.wake.failures {
            let _ = writeln!(out, "  {v:>7}  {k}");
        }
    }
    if !total.failures.is_empty() {
        let _ = writeln!(out, "failed endpoints:");
        for (k, v) in &total.failures {
            let _ = writeln!(out, "  {v:>7}  {k}");
        }
    }
    let _ = writeln!(
        out,
        "seed egress peak / cap: {}; coalesced requests: {}; evicted: {}; wasted WAN (aborted): {}",
        o.seed_peak_ratio.map_or("- (unlimited)".into(), |r| format!("{r:.2}")),
        total.coalesced_requests,
        fmt_bytes(total.evicted_bytes as f64),
        fmt_bytes(total.wasted_wan_bytes as f64),
    );
    let _ = writeln!(
        out,
        "virtual time {}, {} events, wall {:.2}s, peak RSS {}",
        fmt_secs(Some(o.sim_seconds)),
        o.events,
        wall,
        peak_rss_mib().map_or("?".into(), |m| format!("{m:.0} MiB"))
    );
    out
}

/// Sites drawn in the charts and the CSV: the scenario's `chart_sites`, else the first site of
/// each group (at most 4) and the slowest site.
pub fn chart_sites(sc: &Scenario, o: &Outcome) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    if !sc.chart_sites.is_empty() {
        for n in &sc.chart_sites {
            for (i, s) in o.sites.iter().enumerate() {
                if (&s.name == n || &sc.groups[s.group].name == n)
                    && !out.contains(&i)
                    && out.len() < 8
                {
                    out.push(i);
                }
            }
        }
        return out;
    }
    for gi in 0..sc.groups.len() {
        if let Some(i) = o.sites.iter().position(|s| s.group == gi) {
            if out.len() < 4 {
                out.push(i);
            }
        }
    }
    let all: Vec<&SiteResult> = o.sites.iter().collect();
    if let Some(&i) = slowest(&all).first() {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Writes timeseries.csv, wan_rate.svg and completion_cdf.svg into `dir`.
pub fn write_outputs(dir: &Path, sc: &Scenario, o: &Outcome) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let chosen = chart_sites(sc, o);
    let bin = o.bin_s;
    let n = o.total_bins.len();
    let mut done: Vec<f64> =
        o.sites.iter().flat_map(|s| s.stats.completions.iter().copied()).collect();
    done.sort_by(f64::total_cmp);
    let endpoints: usize = o.sites.iter().map(|s| s.stats.endpoints).sum();
    let mut group_bins = vec![vec![0.0f64; n]; sc.groups.len()];
    for s in &o.sites {
        for (b, &v) in s.bins.iter().enumerate() {
            group_bins[s.group][b] += v as f64;
        }
    }
    let mut csv = String::from("t_s,wan_total_Bps,seed_egress_cap_Bps,endpoints_done,endpoints");
    for g in &sc.groups {
        let _ = write!(csv, ",wan_group_{}_Bps", g.name);
    }
    for &i in &chosen {
        let _ = write!(csv, ",wan_site_{}_Bps,cap_site_{}_Bps", o.sites[i].name, o.sites[i].name);
    }
    csv.push('\n');
    let mut di = 0;
    for b in 0..n {
        let t = b as f64 * bin;
        while di < done.len() && done[di] <= t + bin {
            di += 1;
        }
        let cap = if sc.seed_egress.is_finite() {
            format!("{:.0}", sc.seed_egress)
        } else {
            String::new()
        };
        let _ = write!(csv, "{t},{:.0},{cap},{di},{endpoints}", o.total_bins[b] / bin);
        for gb in &group_bins {
            let _ = write!(csv, ",{:.0}", gb[b] / bin);
        }
        for &i in &chosen {
            let s = &o.sites[i];
            let v = s.bins.get(b).copied().unwrap_or(0.0) as f64 / bin;
            let cap = o.group_caps[s.group].get(b).copied().unwrap_or(f64::NAN);
            let _ = write!(csv, ",{v:.0},{cap:.0}");
        }
        csv.push('\n');
    }
    std::fs::write(dir.join("timeseries.csv"), csv)?;

    let series: Vec<(String, Vec<(f64, f64)>)> = chosen
        .iter()
        .flat_map(|&i| {
            let s = &o.sites[i];
            let rate: Vec<(f64, f64)> = (0..n)
                .map(|b| {
                    (
                        b as f64 * bin / 3600.0,
                        s.bins.get(b).copied().unwrap_or(0.0) as f64 / bin / 1e6,
                    )
                })
                .collect();
            let cap: Vec<(f64, f64)> = (0..n)
                .map(|b| {
                    (
                        b as f64 * bin / 3600.0,
                        o.group_caps[s.group].get(b).copied().unwrap_or(0.0) / 1e6,
                    )
                })
                .collect();
            [(format!("{} WAN", s.name), rate), (format!("{} policy cap", s.name), cap)]
        })
        .collect();
    line_chart(
        &dir.join("wan_rate.svg"),
        &format!("{}: WAN rate per site ({}s bins)", sc.name, bin),
        "hours",
        "MB/s",
        &series,
    )?;
    let total = endpoints.max(1) as f64;
    // At most ~2,000 points (a step per completion would be 50,000 for a big fleet).
    let step = done.len().div_ceil(2000).max(1);
    let cdf: Vec<(f64, f64)> = std::iter::once((0.0, 0.0))
        .chain(
            done.iter()
                .enumerate()
                .filter(|(i, _)| (i + 1) % step == 0 || i + 1 == done.len())
                .map(|(i, &t)| (t / 3600.0, (i + 1) as f64 / total)),
        )
        .collect();
    line_chart(
        &dir.join("completion_cdf.svg"),
        &format!("{}: endpoints complete (fraction of {endpoints})", sc.name),
        "hours",
        "fraction done",
        &[("completed".to_string(), cdf)],
    )?;
    Ok(())
}

/// A line chart with plotters' SVG backend.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let xmax = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(0.0f64, f64::max).max(1e-3);
    let ymax =
        series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(1e-3) * 1.1;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("chart {}: {e}", path.display());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(|x| e(&x))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
