//! The outcome of a run: per-site results, charts and totals.

use super::*;

pub(super) fn finish(
    mut eng: Engine<'_>,
    policies: &[BandwidthPolicy],
    sim_seconds: f64,
    c: &Content,
) -> Outcome {
    let sc = eng.sc;
    let bin_s = sc.model.bin_s;
    let n_bins = eng
        .sites
        .iter()
        .map(|s| s.bins.len())
        .max()
        .unwrap_or(0)
        .max((sim_seconds / bin_s).ceil() as usize);
    // The policy's allowed rate per bin, per group (link rate where the policy is unlimited).
    let mut group_caps = Vec::new();
    for (gi, p) in policies.iter().enumerate() {
        let link = sc.groups[gi].wan_rate;
        let mut caps = Vec::with_capacity(n_bins);
        let mut edges: Vec<i64> = Vec::new();
        let end_unix = sc.start_unix + (n_bins as f64 * bin_s).ceil() as i64 + 1;
        let mut t = sc.start_unix;
        while let Some(e) = p.next_change_after(t) {
            if e > end_unix {
                break;
            }
            edges.push(e);
            t = e;
        }
        let rate_f = |u: i64| p.rate_at(u).map_or(link, |r| r as f64);
        let mut ei = 0;
        for b in 0..n_bins {
            let a = sc.start_unix as f64 + b as f64 * bin_s;
            let z = a + bin_s;
            let mut allowed = 0.0;
            let mut cur = a;
            while ei < edges.len() && (edges[ei] as f64) <= a {
                ei += 1;
            }
            let mut j = ei;
            while cur < z {
                let seg_end = if j < edges.len() { (edges[j] as f64).min(z) } else { z };
                allowed += rate_f(cur.floor() as i64) * (seg_end - cur);
                cur = seg_end;
                j += 1;
            }
            caps.push(allowed / bin_s);
        }
        group_caps.push(caps);
    }
    for s in 0..eng.sites.len() {
        eng.record_runs(s, true);
    }
    let mut total_bins = vec![0.0f64; n_bins];
    let mut sites_out = Vec::with_capacity(eng.sites.len());
    for site in eng.sites {
        let caps = &group_caps[site.group];
        let mut peak: f64 = 0.0;
        for (b, &v) in site.bins.iter().enumerate() {
            total_bins[b] += v as f64;
            let cap = caps.get(b).copied().unwrap_or(f64::INFINITY);
            if cap.is_finite() && cap > 0.0 {
                peak = peak.max(v as f64 / bin_s / cap);
            }
        }
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        let mut completions = Vec::new();
        let last = |e: usize| site.wake.as_ref().and_then(|w| w.last[e].as_ref());
        for (e, ep) in site.eps.iter().enumerate() {
            if ep.done_at.is_finite() {
                completions.push(ep.done_at);
                continue;
            }
            let reason = match &ep.failed {
                Some(r) => r.clone(),
                None if ep.wake_at > sim_seconds => match last(e) {
                    Some(m) if m.state == MachineState::Failed => format!(
                        "wake failed: {}",
                        m.reason.as_deref().unwrap_or("did not come online")
                    ),
                    _ => "asleep until the end of the simulation".into(),
                },
                None if !site.layers[ep.pos as usize].opened => {
                    "delivery window never opened".into()
                }
                None => "not finished within the simulated duration".into(),
            };
            *failures.entry(reason).or_default() += 1;
        }
        let mut wake = WakeStats::default();
        let wake_machines: Vec<MachineResult> =
            site.wake.iter().flat_map(|w| w.last.iter().flatten()).cloned().collect();
        for m in &wake_machines {
            wake.add_machine(m);
        }
        let mut completions_sorted = completions;
        completions_sorted.sort_by(f64::total_cmp);
        sites_out.push(SiteResult {
            stats: Stats {
                sites: 1,
                endpoints: site.eps.len(),
                wan_bytes: site.wan_bytes.round().max(0.0) as u64,
                wasted_wan_bytes: site.wasted.round() as u64,
                unique_bytes: site.unique,
                needed_bytes: site.needed,
                evicted_bytes: site.evicted,
                bytes_outside_windows: site.outside.round().max(0.0) as u64,
                completions: completions_sorted,
                failures,
                peak_wan_ratio: peak,
                coalesced_requests: site.misses.followers(),
                wan_pulls: site.pulls_started,
                wake,
            },
            bins: site.bins,
            wake_machines,
            name: site.name,
            group: site.group,
        });
    }
    let seed_peak_ratio = sc
        .seed_egress
        .is_finite()
        .then(|| total_bins.iter().fold(0.0f64, |m, &v| m.max(v / bin_s)) / sc.seed_egress);
    Outcome {
        sites: sites_out,
        group_caps,
        bin_s,
        sim_seconds,
        events: eng.events,
        seed_peak_ratio,
        total_bins,
        layer_chunks: c.layers.iter().map(|l| l.chunks).sum(),
        pulls: c.pulls.len(),
    }
}
