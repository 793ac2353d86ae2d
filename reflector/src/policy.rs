//! The WAN policy in force: loading, reloading (file change, SIGHUP, API) and the rate gauge.
//!
//! A reload parses and validates the whole file first; a bad file is refused with an error
//! naming the file, line and key, logged, counted in `oasis_policy_reload_errors_total`, and the
//! policy in force stays. A good one is swapped into the [`WanLimiter`] without touching
//! transfers in flight (the bucket keeps its tokens).

use crate::config::WanLimit;
use crate::metrics::ReflectorMetrics;
use oasis_core::policy::{BandwidthPolicy, PolicyError, WanLimiter};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Bytes of a chunk frame's header (type, id, encoding, plain length) on top of its payload.
pub const CHUNK_FRAME_OVERHEAD: u64 = 42;

pub struct PolicyControl {
    pub limiter: WanLimiter,
    source: WanLimit,
    /// Largest chunk as sent the bucket must admit (grows with the manifests seen).
    largest_chunk: AtomicU64,
    /// The policy as loaded, before `ensure_burst_covers`.
    base: Mutex<BandwidthPolicy>,
    /// Modification time and length of the policy file when last loaded.
    stamp: Mutex<Option<(SystemTime, u64)>>,
    metrics: ReflectorMetrics,
}

/// `(mtime, len)` of a file, to notice changes.
fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let md = std::fs::metadata(path).ok()?;
    Some((md.modified().ok()?, md.len()))
}

/// A one-line description of a policy for logs and `check`.
pub fn describe(p: &BandwidthPolicy) -> String {
    let rate = |r: Option<u64>| r.map_or("unlimited".to_string(), |r| format!("{r} B/s"));
    let mut s = format!("rate {} (burst {} B", rate(p.default_rate()), p.burst_bytes());
    if !p.windows().is_empty() {
        s.push_str(&format!(", {} window(s) in {}", p.windows().len(), p.timezone()));
    }
    s.push(')');
    s
}

impl PolicyControl {
    /// Loads the initial policy. A bad policy file is an error here (nothing to fall back on).
    pub fn new(
        source: WanLimit,
        largest_chunk: u64,
        metrics: ReflectorMetrics,
    ) -> Result<PolicyControl, PolicyError> {
        let (base, stamp) = match &source {
            WanLimit::Unlimited => (BandwidthPolicy::unlimited(), None),
            WanLimit::Flat(r) => (BandwidthPolicy::flat(*r), None),
            WanLimit::PolicyFile(p) => {
                let stamp = file_stamp(p);
                (oasis_core::policy::load(p)?, stamp)
            }
        };
        let mut effective = base.clone();
        if let Some(note) = effective.ensure_burst_covers(largest_chunk) {
            tracing::info!("{note}");
        }
        tracing::info!(policy = %describe(&effective), "WAN policy in force");
        let control = PolicyControl {
            limiter: WanLimiter::new(effective),
            source,
            largest_chunk: AtomicU64::new(largest_chunk),
            base: Mutex::new(base),
            stamp: Mutex::new(stamp),
            metrics,
        };
        control.update_gauge();
        Ok(control)
    }

    /// The policy file, if the limit comes from one.
    /// The site time zone of the policy in force (delivery windows are read in it).
    pub fn timezone(&self) -> String {
        self.base.lock().unwrap_or_else(|e| e.into_inner()).timezone().to_string()
    }

    pub fn file(&self) -> Option<&PathBuf> {
        match &self.source {
            WanLimit::PolicyFile(p) => Some(p),
            _ => None,
        }
    }

    /// Sets `oasis_wan_rate_limit_bytes_per_second` from the rate in force now (0 = unlimited).
    pub fn update_gauge(&self) {
        let rate = self.limiter.rate_now().unwrap_or(0);
        self.metrics.wan_rate_limit.set(i64::try_from(rate).unwrap_or(i64::MAX));
    }

    fn install(&self, base: BandwidthPolicy) -> BandwidthPolicy {
        let mut effective = base.clone();
        if let Some(note) =
            effective.ensure_burst_covers(self.largest_chunk.load(Ordering::Relaxed))
        {
            tracing::info!("{note}");
        }
        *self.base.lock().unwrap_or_else(|e| e.into_inner()) = base;
        self.limiter.reload(effective.clone());
        self.update_gauge();
        effective
    }

    /// Puts `policy` in force now (API and tests); transfers in flight continue.
    pub fn set_policy(&self, policy: BandwidthPolicy) {
        let effective = self.install(policy);
        self.metrics.policy_reloads.inc();
        tracing::info!(policy = %describe(&effective), "WAN policy replaced");
    }

    /// Re-reads the policy file. On error the policy in force stays and the error is returned
    /// (and logged). Without a policy file there is nothing to reload: `Ok(None)`.
    pub fn reload(&self) -> Result<Option<String>, PolicyError> {
        let Some(path) = self.file() else { return Ok(None) };
        let stamp = file_stamp(path);
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
        match oasis_core::policy::load(path) {
            Ok(p) => {
                let effective = self.install(p);
                self.metrics.policy_reloads.inc();
                let d = describe(&effective);
                tracing::info!(file = %path.display(), policy = %d, "WAN policy reloaded");
                Ok(Some(d))
            }
            Err(e) => {
                self.metrics.policy_reload_errors.inc();
                tracing::error!(
                    file = %path.display(),
                    error = %e,
                    "bandwidth policy refused; the previous policy stays in force"
                );
                Err(e)
            }
        }
    }

    /// Reloads if the file's modification time or length changed since the last load.
    pub fn reload_if_changed(&self) {
        let Some(path) = self.file() else { return };
        let now = file_stamp(path);
        let last = *self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != last {
            let _ = self.reload();
        }
    }

    /// Records this reflector's share of the site's WAN rate (`oasis_wan_site_share`).
    pub fn set_share_metric(&self, share: f64) {
        self.metrics.wan_share.set(share);
    }

    /// Raises the burst floor when a layer with bigger chunks shows up.
    pub fn note_chunk_size(&self, largest_as_sent: u64) {
        let prev = self.largest_chunk.fetch_max(largest_as_sent, Ordering::Relaxed);
        if largest_as_sent > prev {
            let base = self.base.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if base.burst_bytes() < largest_as_sent {
                self.install(base);
            }
        }
    }

    /// Polls the file every `every` (zero: only updates the gauge each second).
    pub async fn watch(&self, every: Duration) {
        let tick = if every.is_zero() { Duration::from_secs(1) } else { every };
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if !every.is_zero() {
                self.reload_if_changed();
            }
            // Schedule windows change the rate without any reload.
            self.update_gauge();
        }
    }
}
