//! Byte counters sampled over time, and the rates they show.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Samples a byte counter every `every` until [`RateSampler::finish`]: for WAN rates measured
/// over sliding windows (the reflector's and the site's caps).
pub struct RateSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(f64, u64)>>,
}

impl RateSampler {
    /// Samples from now, times counted from now.
    pub fn start(counter: impl Fn() -> u64 + Send + 'static, every: Duration) -> RateSampler {
        RateSampler::start_at(Instant::now(), every, counter)
    }

    /// Samples from now, times counted from `t0` (several samplers on one time axis).
    pub fn start_at(
        t0: Instant,
        every: Duration,
        counter: impl Fn() -> u64 + Send + 'static,
    ) -> RateSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = vec![(t0.elapsed().as_secs_f64(), counter())];
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                samples.push((t0.elapsed().as_secs_f64(), counter()));
            }
            samples
        });
        RateSampler { stop, task }
    }

    /// Stops sampling; the samples as (seconds since the start, counter).
    pub async fn finish(self) -> anyhow::Result<Samples> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(Samples(self.task.await?))
    }
}

/// (seconds since the start, counter value) pairs, in time order.
pub struct Samples(pub Vec<(f64, u64)>);

impl Samples {
    /// When the counter first moved (None: it never did).
    pub fn first_move(&self) -> Option<f64> {
        let base = self.0.first()?.1;
        self.0.iter().find(|s| s.1 > base).map(|s| s.0)
    }

    /// When the counter reached its final value.
    pub fn last_move(&self) -> Option<f64> {
        let end = self.0.last()?.1;
        self.0.iter().find(|s| s.1 == end).map(|s| s.0)
    }

    /// Rates (per second) of every window of at least `len` seconds that starts at or after
    /// `from` and ends at or before `until`.
    pub fn windows(&self, len: f64, from: f64, until: f64) -> Vec<f64> {
        let mut out = Vec::new();
        for (i, &(t, b)) in self.0.iter().enumerate() {
            if t < from {
                continue;
            }
            let Some(&(t2, b2)) = self.0[i..].iter().find(|s| s.0 >= t + len) else { break };
            if t2 > until {
                break;
            }
            out.push(b2.saturating_sub(b) as f64 / (t2 - t));
        }
        out
    }
}

/// The counter's rate per second over the next `over`.
pub async fn measure_rate(counter: impl Fn() -> u64, over: Duration) -> f64 {
    let (b0, t0) = (counter(), Instant::now());
    tokio::time::sleep(over).await;
    counter().saturating_sub(b0) as f64 / t0.elapsed().as_secs_f64()
}

/// Rates over every window of `window` seconds between samples (start at each sample at or
/// after `from`, end at the first sample `window` later, windows ending after the counter
/// stopped growing are left out: the transfer was over). Returns (window start, bytes/s).
pub fn window_rates(samples: &[(f64, u64)], window: f64, from: f64) -> Vec<(f64, f64)> {
    let Some(&(_, last)) = samples.last() else { return Vec::new() };
    let end = samples.iter().find(|s| s.1 >= last).map_or(0.0, |s| s.0);
    let mut out = Vec::new();
    let mut j = 0;
    for (i, &(t, b)) in samples.iter().enumerate() {
        if t < from {
            continue;
        }
        j = j.max(i);
        while j < samples.len() && samples[j].0 < t + window {
            j += 1;
        }
        let Some(&(t2, b2)) = samples.get(j) else { break };
        if t2 > end {
            break;
        }
        out.push((t, (b2 - b) as f64 / (t2 - t)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_transfer_only() {
        // 1 MB/s for 20 s, then idle for 5 s.
        let s: Vec<(f64, u64)> =
            (0..=25).map(|t| (t as f64, (t.min(20) as u64) * 1_000_000)).collect();
        let w = window_rates(&s, 10.0, 1.0);
        assert_eq!(w.first().map(|x| x.0), Some(1.0));
        assert_eq!(w.last().map(|x| x.0), Some(10.0), "the last window ends when bytes stop");
        assert!(w.iter().all(|x| (x.1 - 1e6).abs() < 1.0));
        let samples = Samples(s);
        assert_eq!(samples.first_move(), Some(1.0));
        assert_eq!(samples.last_move(), Some(20.0));
        assert_eq!(samples.windows(10.0, 0.0, 20.0).len(), 11);
    }
}
