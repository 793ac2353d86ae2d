//! The unpaid window: chunk bytes a reflector has asked upstream for and not yet paid for in
//! its [`WanBudget`](super::WanBudget).
//!
//! A chunk's size as sent is known only when it arrives, so a reflector pays for each chunk on
//! arrival. What it may ask for before paying is bounded: 1/8 s of the policy's rate for
//! background, and for foreground that plus two round trips (so a long link still has a
//! round trip of requests in flight at the policy's rate). Background shares its window with
//! foreground; foreground has its own. Without a rate there is no window.
//!
//! Each reflector's [`UpstreamFetch`](crate::upstream_fetch::UpstreamFetch) keeps one
//! [`UnpaidWindow`], in the reflector's fetcher and in the simulator alike.

use super::TrafficClass;
use std::time::Duration;

/// Smallest window under a rate limit (so a large chunk can always be requested).
pub const MIN_WINDOW: u64 = 256 << 10;
/// Largest upstream RTT the foreground window grows with (a satellite hop; a stalled
/// connection's estimate must not open the window without bound).
pub const MAX_WINDOW_RTT: Duration = Duration::from_millis(1000);
/// Initial estimate of a chunk's size as sent.
pub const INITIAL_ESTIMATE: u64 = 64 << 10;

/// The window for `class` at policy rate `rate` (None: unlimited) with `background_share`
/// of it open to background, over a link of round trip `rtt`: bytes, or None for no limit.
pub fn window_limit(
    class: TrafficClass,
    rate: Option<u64>,
    background_share: f64,
    rtt: Duration,
) -> Option<u64> {
    let rate = rate?;
    // A rate of zero lets nothing be asked for, since it could never be paid for. No policy
    // parses to one today (rates are at least 1 B/s); this keeps the window safe if one does.
    if rate == 0 || (class == TrafficClass::Background && background_share <= 0.0) {
        return Some(0);
    }
    let span = match class {
        TrafficClass::Foreground => Duration::from_millis(125) + 2 * rtt.min(MAX_WINDOW_RTT),
        TrafficClass::Background => Duration::from_millis(125),
    };
    Some(((rate as f64 * span.as_secs_f64()) as u64).max(MIN_WINDOW))
}

/// Bytes requested and not yet paid for, per class, estimated with a running average of
/// chunk sizes as sent.
#[derive(Debug, Clone)]
pub struct UnpaidWindow {
    fg: u64,
    bg: u64,
    estimate: u64,
}

impl Default for UnpaidWindow {
    fn default() -> UnpaidWindow {
        UnpaidWindow { fg: 0, bg: 0, estimate: INITIAL_ESTIMATE }
    }
}

impl UnpaidWindow {
    /// The running average of chunk sizes as sent.
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// How many chunks of `class` may be requested now under `limit` (None = no limit), at
    /// most `max`.
    pub fn room(&self, class: TrafficClass, limit: Option<u64>, max: usize) -> usize {
        let Some(limit) = limit else { return max };
        if limit == 0 {
            return 0;
        }
        let used = self.used(class);
        if used == 0 {
            // Always let one batch go, however large the estimate.
            return max.min((limit / self.estimate.max(1)).max(1) as usize);
        }
        (limit.saturating_sub(used) / self.estimate.max(1)).min(max as u64) as usize
    }

    /// Unpaid bytes that count against `class`'s window: foreground's own; background's and
    /// foreground's together for background.
    pub fn used(&self, class: TrafficClass) -> u64 {
        match class {
            TrafficClass::Foreground => self.fg,
            TrafficClass::Background => self.fg + self.bg,
        }
    }

    /// `bytes` of `class` were requested.
    pub fn add(&mut self, class: TrafficClass, bytes: u64) {
        match class {
            TrafficClass::Foreground => self.fg += bytes,
            TrafficClass::Background => self.bg += bytes,
        }
    }

    /// `bytes` of `class` were paid for, or will not come.
    pub fn release(&mut self, class: TrafficClass, bytes: u64) {
        match class {
            TrafficClass::Foreground => self.fg = self.fg.saturating_sub(bytes),
            TrafficClass::Background => self.bg = self.bg.saturating_sub(bytes),
        }
    }

    /// A chunk of `actual` bytes as sent arrived.
    pub fn observe(&mut self, actual: u64) {
        self.estimate = ((self.estimate * 7 + actual) / 8).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_unpaid_bytes() {
        let mut w = UnpaidWindow { fg: 0, bg: 0, estimate: 100 };
        let fg = TrafficClass::Foreground;
        let bg = TrafficClass::Background;
        assert_eq!(w.room(fg, None, 64), 64, "no limit: a full batch");
        assert_eq!(w.room(fg, Some(1000), 64), 10);
        w.add(bg, 800);
        assert_eq!(w.room(bg, Some(1000), 64), 2);
        assert_eq!(w.room(fg, Some(1000), 64), 10, "foreground has its own window");
        w.add(fg, 1000);
        assert_eq!(w.room(fg, Some(1000), 64), 0);
        assert_eq!(w.room(bg, Some(1000), 64), 0);
        w.release(fg, 300);
        assert_eq!(w.room(fg, Some(1000), 64), 3);
        // An estimate above the window still lets one chunk go when nothing is outstanding.
        let w = UnpaidWindow { fg: 0, bg: 0, estimate: 5000 };
        assert_eq!(w.room(fg, Some(1000), 64), 1);
        // A window of 0 (background stopped by the policy) lets nothing go.
        assert_eq!(w.room(bg, Some(0), 64), 0);
    }

    #[test]
    fn foreground_keeps_two_round_trips_of_the_rate_in_flight() {
        let fg = TrafficClass::Foreground;
        let bg = TrafficClass::Background;
        let rtt = Duration::from_millis(150);
        assert_eq!(window_limit(fg, None, 1.0, rtt), None);
        // 8 MB/s: 1/8 s + 300 ms of it.
        assert_eq!(window_limit(fg, Some(8_000_000), 1.0, rtt), Some(3_400_000));
        assert_eq!(window_limit(bg, Some(8_000_000), 1.0, rtt), Some(1_000_000));
        assert_eq!(window_limit(bg, Some(8_000_000), 0.0, rtt), Some(0));
        assert_eq!(window_limit(fg, Some(0), 1.0, rtt), Some(0), "paused: nothing goes");
        assert_eq!(window_limit(fg, Some(1000), 1.0, rtt), Some(MIN_WINDOW));
        let far = window_limit(fg, Some(8_000_000), 1.0, Duration::from_secs(30));
        assert_eq!(far, Some(17_000_000), "the RTT counts up to {MAX_WINDOW_RTT:?}");
    }
}
