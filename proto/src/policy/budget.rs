//! The WAN token bucket with two traffic classes, as a pure state machine.
//!
//! # Why not `governor`
//!
//! `governor` (GCRA) can be driven by a caller-set clock, but its model does not fit this
//! budget cleanly:
//! * a `Quota` is fixed for the life of a `RateLimiter`, and its state (the theoretical arrival
//!   time) can be neither read nor set. Schedule windows change the rate several times a day and
//!   reloads change it at any time; rebuilding the limiter at each edge would hand out a fresh
//!   full burst every time and drop any debt, so tokens could not be carried across changes;
//! * its quota is "one cell per `Duration`" in whole nanoseconds. With byte-sized cells any rate
//!   above 1 GB/s is unrepresentable and e.g. 600 MB/s (1.67 ns) rounds to 1 GB/s; with 1 KiB
//!   cells the byte counts no longer add up exactly;
//! * `check_n(n)` refuses `n` larger than the burst outright (`InsufficientCapacity`) — the
//!   stall this module avoids — and it has no notion of two classes with priority.
//!
//! The bucket here is a few lines of exact integer arithmetic instead: tokens are kept in
//! nano-bytes (bytes × 10⁹), so refilling `rate` bytes/s for `dt` nanoseconds adds exactly
//! `rate · dt` and nothing is ever rounded in the limiter's favour or against it.
//!
//! # Classes
//!
//! * **Foreground** is admitted as soon as the main bucket holds its bytes.
//! * **Background** is admitted only when no foreground request is registered as waiting (see
//!   [`WanBudget::foreground_waiting`]), when the main bucket would still hold a reserve of half
//!   its capacity afterwards (so a foreground request arriving while prefetch saturates the link
//!   finds tokens at once instead of queueing behind it), and when a second bucket refilled at
//!   `background_share × rate` allows it. The reserve costs prefetch no throughput: it only keeps
//!   the bucket from being drained to zero by prefetch.

use std::time::Duration;

use super::schedule::BandwidthPolicy;

/// Nanoseconds per second, and nano-bytes per byte.
const NS: u64 = 1_000_000_000;
const NB: i128 = 1_000_000_000;

/// Longest wait ever returned. Used when background is disabled (`background_share = 0`), so a
/// virtual-clock caller still re-polls now and then.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Rate edges applied one by one before falling back to "jump to now" after a long idle gap.
const MAX_EDGES_PER_STEP: usize = 16;

/// Which class a transfer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficClass {
    /// An endpoint is waiting for these bytes. Served first.
    Foreground,
    /// Prefetch: uses only what foreground leaves.
    Background,
}

/// The budget's answer to [`WanBudget::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The bytes may be sent now; their tokens have been taken.
    Admit,
    /// Not now. Ask again no earlier than `now + d`: the earliest moment the request could be
    /// admitted if nothing else arrives (never past the next rate change, so the caller
    /// re-evaluates at window edges). Nothing has been taken.
    Wait(Duration),
}

/// The WAN token bucket with two classes, on a caller-supplied clock.
///
/// `now` is a monotonic [`Duration`] since any origin the caller likes (it must not go
/// backwards; if it does, time is treated as standing still). `unix_secs_now` is the matching
/// wall-clock time in UTC unix seconds, used only to find the schedule window in force.
///
/// * The rate is looked up only at construction, on `set_policy` / `set_share`, and when
///   `unix_secs_now` passes the next window edge; a decision in between is a few integer
///   operations, with no allocation, lock or clock read — cheap enough for a 1,000-site
///   simulation on a virtual clock.
/// * Since unix time comes in whole seconds, a window edge is placed within the second before
///   it is first seen; that uncertain second is refilled at the lower of the two rates, so a
///   drop in rate may count from up to 1 s early and a rise from up to 1 s late, and the limit
///   is never exceeded.
/// * While the rate in force is unlimited everything is admitted at once (both classes), and
///   the next limited period starts with a full bucket.
#[derive(Clone, Debug)]
pub struct WanBudget {
    policy: BandwidthPolicy,
    share: f64,
    /// Effective (share-scaled) rate in force; `None` = unlimited.
    rate: Option<u64>,
    /// Effective background refill rate (0 = background paused).
    bg_rate: u64,
    /// Effective bucket capacity in bytes.
    cap: u64,
    /// Unix seconds from which `rate` was computed, and when it next changes.
    computed_at: i64,
    valid_until: Option<i64>,
    /// Buckets, in nano-bytes; negative = debt from a request larger than the bucket.
    tokens: i128,
    bg_tokens: i128,
    /// Monotonic nanoseconds of the last refill.
    last: u64,
    fg_waiting: u64,
    admitted: [u64; 2],
}

impl WanBudget {
    /// A full bucket under `policy` at `now`.
    pub fn new(policy: &BandwidthPolicy, now: Duration, unix_secs_now: i64) -> WanBudget {
        let mut b = WanBudget {
            policy: policy.clone(),
            share: 1.0,
            rate: None,
            bg_rate: 0,
            cap: 1,
            computed_at: unix_secs_now,
            valid_until: None,
            tokens: 0,
            bg_tokens: 0,
            last: nanos(now),
            fg_waiting: 0,
            admitted: [0; 2],
        };
        b.recompute_cap();
        b.tokens = b.cap_nb();
        b.bg_tokens = b.cap_nb();
        b.apply_rate_at(unix_secs_now);
        b
    }

    /// Swaps in a reloaded policy without losing state: the time up to `now` is accounted at
    /// the old rate, then tokens (and debt) carry over, clamped to the new capacity.
    pub fn set_policy(&mut self, policy: &BandwidthPolicy, now: Duration, unix_secs_now: i64) {
        self.advance(nanos(now), unix_secs_now);
        self.policy = policy.clone();
        self.recompute_cap();
        self.apply_rate_at(unix_secs_now);
    }

    /// Sets this reflector's share of the site's rate, a fraction in `(0, 1]` (values outside
    /// are clamped; NaN means 1). Rate, background rate and burst are scaled by it; the burst
    /// never drops below the largest chunk given to
    /// [`BandwidthPolicy::ensure_burst_covers`]. Time up to `now` is accounted at the old share.
    pub fn set_share(&mut self, share: f64, now: Duration, unix_secs_now: i64) {
        self.advance(nanos(now), unix_secs_now);
        self.share = if share.is_nan() { 1.0 } else { share.clamp(f64::MIN_POSITIVE, 1.0) };
        self.recompute_cap();
        self.apply_rate_at(unix_secs_now);
    }

    /// Asks to send `bytes` now in `class`. [`Decision::Admit`] takes the tokens;
    /// [`Decision::Wait`] takes nothing. Foreground is never delayed by background: background
    /// is refused while any foreground request is registered as waiting, and keeps a reserve.
    pub fn try_acquire(
        &mut self,
        class: TrafficClass,
        bytes: u64,
        now: Duration,
        unix_secs_now: i64,
    ) -> Decision {
        self.advance(nanos(now), unix_secs_now);
        let Some(rate) = self.rate else {
            self.admitted[class as usize] += bytes;
            return Decision::Admit;
        };
        let cap = self.cap;
        let cost = i128::from(bytes) * NB;
        let decision = match class {
            TrafficClass::Foreground => {
                let need = i128::from(bytes.min(cap)) * NB;
                if self.tokens >= need {
                    self.tokens -= cost;
                    Decision::Admit
                } else {
                    Decision::Wait(refill_time(need - self.tokens, rate))
                }
            }
            TrafficClass::Background => {
                if self.bg_rate == 0 {
                    return Decision::Wait(MAX_WAIT);
                }
                let reserve = cap / 2;
                let need_main = i128::from(bytes.saturating_add(reserve).min(cap)) * NB;
                let need_bg = i128::from(bytes.min(cap)) * NB;
                if self.fg_waiting == 0 && self.tokens >= need_main && self.bg_tokens >= need_bg {
                    self.tokens -= cost;
                    self.bg_tokens -= cost;
                    Decision::Admit
                } else {
                    let main = refill_time(need_main - self.tokens, rate);
                    let bg = refill_time(need_bg - self.bg_tokens, self.bg_rate);
                    // While foreground waits, look again soon: it may be served any moment.
                    let floor =
                        if self.fg_waiting > 0 { Duration::from_millis(1) } else { Duration::ZERO };
                    Decision::Wait(main.max(bg).max(floor))
                }
            }
        };
        match decision {
            Decision::Admit => self.admitted[class as usize] += bytes,
            Decision::Wait(d) => return Decision::Wait(self.clip_to_edge(d, unix_secs_now)),
        }
        decision
    }

    /// Registers (`+1`) or unregisters (`-1`) a foreground request that is waiting, so
    /// background yields to it. The async shell calls this around its waits.
    pub fn foreground_waiting(&mut self, delta: i64) {
        self.fg_waiting = self.fg_waiting.saturating_add_signed(delta);
    }

    /// Foreground requests currently registered as waiting.
    pub fn foreground_waiters(&self) -> u64 {
        self.fg_waiting
    }

    /// The effective rate (bytes/s, share applied) in force as of the last call; `None` =
    /// unlimited.
    pub fn current_rate(&self) -> Option<u64> {
        self.rate
    }

    /// The effective rate (share applied) at any instant, without touching the bucket.
    pub fn rate_at(&self, unix_secs: i64) -> Option<u64> {
        self.policy.rate_at(unix_secs).map(|r| scale(r, self.share))
    }

    /// Effective bucket capacity in bytes (share applied, never below the largest chunk).
    pub fn burst_bytes(&self) -> u64 {
        self.cap
    }

    /// Tokens in the main bucket as of the last call, in whole bytes (negative = debt).
    pub fn tokens(&self) -> i64 {
        (self.tokens / NB) as i64
    }

    /// Total bytes admitted so far in `class`.
    pub fn admitted_bytes(&self, class: TrafficClass) -> u64 {
        self.admitted[class as usize]
    }

    /// The policy in force.
    pub fn policy(&self) -> &BandwidthPolicy {
        &self.policy
    }

    /// This reflector's share of the site rate.
    pub fn share(&self) -> f64 {
        self.share
    }

    fn cap_nb(&self) -> i128 {
        i128::from(self.cap) * NB
    }

    fn recompute_cap(&mut self) {
        let scaled = if self.share >= 1.0 {
            self.policy.burst
        } else {
            (self.policy.burst as f64 * self.share).ceil() as u64
        };
        self.cap = scaled.max(self.policy.burst_floor).max(1);
        let cap = self.cap_nb();
        self.tokens = self.tokens.min(cap);
        self.bg_tokens = self.bg_tokens.min(cap);
    }

    /// Takes the rate in force at `unix` (and when it next changes) from the policy.
    fn apply_rate_at(&mut self, unix: i64) {
        let was_unlimited = self.rate.is_none();
        self.rate = self.rate_at(unix);
        self.bg_rate = match self.rate {
            Some(r) if self.policy.background_share > 0.0 => {
                ((r as f64 * self.policy.background_share) as u64).clamp(1, r)
            }
            _ => 0,
        };
        if was_unlimited && self.rate.is_some() {
            // Nothing was metered while unlimited: start the limited period with a full bucket.
            self.tokens = self.cap_nb();
            self.bg_tokens = self.cap_nb();
        }
        self.computed_at = unix;
        self.valid_until = self.policy.next_change_after(unix);
    }

    /// Brings the buckets up to `now`, switching rates at the schedule edges passed since.
    fn advance(&mut self, now: u64, unix_now: i64) {
        let now = now.max(self.last);
        let mut edges = 0;
        while unix_now < self.computed_at || self.valid_until.is_some_and(|e| unix_now >= e) {
            match self.valid_until {
                Some(edge)
                    if edges < MAX_EDGES_PER_STEP
                        && unix_now >= edge
                        && edge > self.computed_at =>
                {
                    // The caller's unix seconds are whole, so the edge happened somewhere in the
                    // second before `late`. Refill that uncertain second at the lower of the
                    // two rates so the limit holds whichever way it falls.
                    let back = u64::try_from(unix_now - edge).unwrap_or(0).saturating_mul(NS);
                    let late = now.saturating_sub(back).max(self.last);
                    let early = late.saturating_sub(NS).max(self.last);
                    let old = self.rate;
                    let new = self.rate_at(edge);
                    if lower(new, old) {
                        self.refill_to(early);
                        self.apply_rate_at(edge);
                        self.refill_to(late);
                    } else {
                        self.refill_to(late);
                        self.apply_rate_at(edge);
                    }
                    edges += 1;
                }
                _ => {
                    // Wall clock stepped back, or a very long gap: re-anchor at now.
                    self.refill_to(now);
                    self.apply_rate_at(unix_now);
                    break;
                }
            }
        }
        self.refill_to(now);
    }

    fn refill_to(&mut self, t: u64) {
        if t <= self.last {
            return;
        }
        let dt = i128::from(t - self.last);
        let cap = self.cap_nb();
        self.tokens = match self.rate {
            Some(r) => self.tokens.saturating_add(i128::from(r).saturating_mul(dt)).min(cap),
            None => cap,
        };
        self.bg_tokens = match self.rate {
            Some(_) => {
                self.bg_tokens.saturating_add(i128::from(self.bg_rate).saturating_mul(dt)).min(cap)
            }
            None => cap,
        };
        self.last = t;
    }

    /// Never ask the caller to sleep past the next rate change.
    fn clip_to_edge(&self, d: Duration, unix_now: i64) -> Duration {
        let d = d.min(MAX_WAIT);
        match self.valid_until {
            Some(edge) if edge > unix_now => d.min(Duration::from_secs((edge - unix_now) as u64)),
            _ => d,
        }
    }
}

/// Whether rate `a` is lower than rate `b` (`None` = unlimited).
fn lower(a: Option<u64>, b: Option<u64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Time for a deficit of `deficit` nano-bytes to refill at `rate` bytes/s, rounded up.
fn refill_time(deficit: i128, rate: u64) -> Duration {
    if deficit <= 0 {
        return Duration::ZERO;
    }
    let rate = i128::from(rate.max(1));
    let ns = (deficit + rate - 1) / rate;
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn scale(rate: u64, share: f64) -> u64 {
    if share >= 1.0 {
        rate
    } else {
        ((rate as f64 * share) as u64).max(1)
    }
}
