//! The async shell around [`WanBudget`] for real time (tokio).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{BandwidthPolicy, Decision, TrafficClass, WanBudget};

/// Longest single sleep in [`WanLimiter::acquire`], so reloads, share changes and foreground
/// arrivals take effect quickly even if a notification is missed.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Shared, reloadable WAN limiter for real time. Cheap to clone; all clones share one budget.
///
/// Monotonic time comes from `tokio::time::Instant` (so tests can run on tokio's paused clock);
/// the wall clock that selects schedule windows is `SystemTime`, or — with
/// [`with_unix_anchor`](Self::with_unix_anchor) — a fixed unix time plus elapsed tokio time.
#[derive(Clone)]
pub struct WanLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    budget: Mutex<WanBudget>,
    /// Woken when a foreground waiter leaves, on reload and on share changes.
    notify: Notify,
    origin: Instant,
    /// `None`: `SystemTime::now()`; `Some(a)`: unix time `a` at `origin`, advancing with it.
    unix_anchor: Option<i64>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, WanBudget> {
        // The budget has no invariants a panicking holder could break half-way.
        self.budget.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> (Duration, i64) {
        let mono = self.origin.elapsed();
        let unix = match self.unix_anchor {
            Some(anchor) => anchor.saturating_add(mono.as_secs() as i64),
            None => system_unix_secs(),
        };
        (mono, unix)
    }
}

fn system_unix_secs() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - 1,
    }
}

/// Unregisters a foreground waiter when `acquire` returns or is cancelled.
struct ForegroundWait<'a> {
    inner: &'a Inner,
    registered: bool,
}

impl Drop for ForegroundWait<'_> {
    fn drop(&mut self) {
        if self.registered {
            self.inner.lock().foreground_waiting(-1);
            self.inner.notify.notify_waiters();
        }
    }
}

impl WanLimiter {
    /// A limiter under `policy`, with windows chosen by the system's wall clock.
    pub fn new(policy: BandwidthPolicy) -> Self {
        Self::build(policy, None)
    }

    /// A limiter whose wall clock is `unix_secs_at_start` now and advances with tokio time —
    /// for tests on tokio's paused clock and for replaying a schedule.
    pub fn with_unix_anchor(policy: BandwidthPolicy, unix_secs_at_start: i64) -> Self {
        Self::build(policy, Some(unix_secs_at_start))
    }

    fn build(policy: BandwidthPolicy, unix_anchor: Option<i64>) -> Self {
        let origin = Instant::now();
        let unix = unix_anchor.unwrap_or_else(system_unix_secs);
        let budget = WanBudget::new(&policy, Duration::ZERO, unix);
        WanLimiter {
            inner: Arc::new(Inner {
                budget: Mutex::new(budget),
                notify: Notify::new(),
                origin,
                unix_anchor,
            }),
        }
    }

    /// Waits until `bytes` may be sent in `class`, then takes their tokens.
    ///
    /// Loops on [`WanBudget::try_acquire`], sleeping `min(wait, 100 ms)` or until notified.
    /// A waiting foreground request is registered with the budget so background yields to it;
    /// it is unregistered when admitted or when this future is dropped (cancel-safe: a dropped
    /// call takes no tokens).
    pub async fn acquire(&self, class: TrafficClass, bytes: u64) {
        let inner = &*self.inner;
        let mut fg = ForegroundWait { inner, registered: false };
        loop {
            // Subscribe before looking, so a wake-up between the look and the sleep is not lost.
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let decision = {
                let (now, unix) = inner.now();
                let mut budget = inner.lock();
                let d = budget.try_acquire(class, bytes, now, unix);
                if matches!(d, Decision::Wait(_))
                    && class == TrafficClass::Foreground
                    && !fg.registered
                {
                    budget.foreground_waiting(1);
                    fg.registered = true;
                }
                d
            };
            match decision {
                Decision::Admit => return,
                Decision::Wait(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d.min(MAX_SLEEP)) => {}
                        _ = &mut notified => {}
                    }
                }
            }
        }
    }

    /// One non-blocking attempt (no waiter registration).
    pub fn try_acquire(&self, class: TrafficClass, bytes: u64) -> Decision {
        let (now, unix) = self.inner.now();
        self.inner.lock().try_acquire(class, bytes, now, unix)
    }

    /// Puts a new policy in force, keeping the bucket's state (see [`WanBudget::set_policy`]).
    /// Parse and validate first; on a bad file simply do not call this.
    pub fn reload(&self, policy: BandwidthPolicy) {
        let (now, unix) = self.inner.now();
        self.inner.lock().set_policy(&policy, now, unix);
        self.inner.notify.notify_waiters();
    }

    /// Sets this reflector's share of the site rate, in `(0, 1]`.
    pub fn set_share(&self, share: f64) {
        let (now, unix) = self.inner.now();
        self.inner.lock().set_share(share, now, unix);
        self.inner.notify.notify_waiters();
    }

    /// The effective rate allowed now in bytes/s (`None` = unlimited): the value for the
    /// `oasis_wan_rate_limit_bytes_per_second` gauge (see [`super::rate_metric_value`]).
    pub fn rate_now(&self) -> Option<u64> {
        let (_, unix) = self.inner.now();
        self.inner.lock().rate_at(unix)
    }

    /// Effective bucket capacity in bytes.
    pub fn burst_bytes(&self) -> u64 {
        self.inner.lock().burst_bytes()
    }

    /// Total bytes admitted so far in `class`.
    pub fn admitted_bytes(&self, class: TrafficClass) -> u64 {
        self.inner.lock().admitted_bytes(class)
    }

    /// A copy of the policy in force.
    pub fn policy(&self) -> BandwidthPolicy {
        self.inner.lock().policy().clone()
    }
}

impl std::fmt::Debug for WanLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanLimiter").field("budget", &*self.inner.lock()).finish()
    }
}
