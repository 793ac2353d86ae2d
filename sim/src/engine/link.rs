//! What a site's WAN link allows (the congestion controller over the link model) and when its
//! delivery windows are open.

use super::*;

/// Opening/closing instants of one delivery window, precomputed up to the horizon.
pub(super) struct Sched {
    pub(super) open_at_start: bool,
    /// (virtual seconds, open after this edge)
    pub(super) edges: Vec<(f64, bool)>,
}

impl Sched {
    /// A delivery window's openings and closings over the run, in virtual seconds: the
    /// occurrences the reflector's `wake::schedule::window_at` finds, one after another.
    pub(super) fn new(
        window: &str,
        timezone: &str,
        start_unix: i64,
        horizon: f64,
    ) -> Result<Sched, String> {
        let tz = time_zone(timezone)?;
        let at = |s: i64| Timestamp::from_second(s).map_err(|e| e.to_string());
        // A run longer than the calendar goes (year 9999) stops at its end.
        let end = start_unix.saturating_add(horizon.ceil() as i64).saturating_add(1);
        let until = Timestamp::from_second(end).unwrap_or(Timestamp::MAX);
        let (open_at_start, edges) = window_edges(window, &tz, at(start_unix)?, until)?;
        let edges = edges.into_iter().map(|(t, o)| ((t.as_second() - start_unix) as f64, o));
        Ok(Sched { open_at_start, edges: edges.collect() })
    }

    /// Seconds of [a, b) during which the window is closed.
    pub(super) fn closed_within(&self, a: f64, b: f64) -> f64 {
        if b <= a {
            return 0.0;
        }
        let mut open = self.open_at_start;
        let mut t = 0.0f64;
        let mut closed = 0.0;
        for &(e, o) in self.edges.iter().chain(std::iter::once(&(f64::INFINITY, true))) {
            // [t, e) has state `open`
            let lo = t.max(a);
            let hi = e.min(b);
            if hi > lo && !open {
                closed += hi - lo;
            }
            if e >= b {
                break;
            }
            t = e;
            open = o;
        }
        closed
    }
}

/// What one upstream connection achieves on a group's WAN link: the real congestion
/// controller run over a packet-level model of the link ([`link_model::profile`]).
pub(super) struct SiteLink {
    /// Chunk data per second.
    pub(super) rate: f64,
    pub(super) profile: Option<Profile>,
}

impl SiteLink {
    pub(super) fn of(g: &crate::scenario::GroupSpec, seed: u64) -> SiteLink {
        if !g.wan_rate.is_finite() {
            return SiteLink { rate: f64::INFINITY, profile: None };
        }
        let rtt = Duration::from_secs_f64(2.0 * g.wan_latency_s);
        let link = link_model::Link::new(rtt, g.wan_rate, g.wan_loss);
        // The model runs on virtual time from any origin; the profile does not depend on it.
        let p = link_model::profile(&link, seed, std::time::Instant::now());
        SiteLink { rate: p.rate, profile: Some(p) }
    }

    /// Seconds a connection's start costs a transfer paced at `rate` bytes/s.
    pub(super) fn start_lag(&self, rate: f64) -> f64 {
        self.profile.as_ref().map_or(0.0, |p| p.start_lag(rate).as_secs_f64())
    }
}
