//! The validated policy: a default rate, a burst, a background share, and weekly windows in
//! the site's time zone. Answers "what rate is in force at this instant" and "when does it next
//! change" for an instant given as UTC unix seconds; it never reads a clock.

use std::fmt;
use std::sync::Arc;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::PolicyError;
use crate::units::{fmt_bytes, fmt_rate};

/// Bucket size used by [`BandwidthPolicy::flat`] and [`BandwidthPolicy::unlimited`], and when a
/// policy file leaves `wan.burst` out.
pub const DEFAULT_BURST: u64 = 4 << 20;

/// Seconds in a (civil) day.
const DAY: u32 = 86_400;

/// How far ahead [`BandwidthPolicy::next_change_after`] looks. The schedule repeats weekly, so a
/// rate that does not change within 7 local days never changes; the extra days absorb a DST
/// shift and the partial day at either end.
const LOOKAHEAD_DAYS: i64 = 9;

/// A set of weekdays; bit 0 is Monday, bit 6 is Sunday.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaySet(pub(crate) u8);

impl DaySet {
    /// Every day of the week.
    pub const ALL: DaySet = DaySet(0x7f);
    /// Monday to Friday.
    pub const WEEKDAYS: DaySet = DaySet(0x1f);
    /// Saturday and Sunday.
    pub const WEEKEND: DaySet = DaySet(0x60);
    const NAMES: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    /// Whether the set holds the weekday `monday_zero` (0 = Monday … 6 = Sunday).
    pub fn contains(self, monday_zero: u8) -> bool {
        monday_zero < 7 && self.0 & (1 << monday_zero) != 0
    }
}

impl fmt::Display for DaySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DaySet::ALL => return f.write_str("all"),
            DaySet::WEEKDAYS => return f.write_str("mon-fri"),
            DaySet::WEEKEND => return f.write_str("sat,sun"),
            _ => {}
        }
        let mut first = true;
        for (i, name) in Self::NAMES.iter().enumerate() {
            if self.contains(i as u8) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// One `[[wan.window]]`: on `days`, from `start` to `end` local time, the rate is `rate`.
///
/// If `end <= start` the window wraps past midnight: it starts on one of `days` and runs into the
/// next morning (a Friday `22:00`–`06:00` window ends Saturday 06:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub(crate) days: DaySet,
    /// Seconds after local midnight, `0..86_400`.
    pub(crate) start: u32,
    /// Seconds after local midnight, `0..=86_400` (86 400 is `"24:00"`).
    pub(crate) end: u32,
    /// `None` = unlimited.
    pub(crate) rate: Option<u64>,
}

impl Window {
    /// The weekdays on which the window starts.
    pub fn days(&self) -> DaySet {
        self.days
    }
    /// Start, in seconds after local midnight.
    pub fn start_secs(&self) -> u32 {
        self.start
    }
    /// End, in seconds after local midnight (`86_400` = `"24:00"`); `<= start` wraps.
    pub fn end_secs(&self) -> u32 {
        self.end
    }
    /// The window's rate in bytes per second (`None` = unlimited).
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Whether local weekday `wd` (0 = Monday) at `sod` seconds after midnight is inside.
    fn contains(&self, wd: u8, sod: u32) -> bool {
        if self.start < self.end {
            self.days.contains(wd) && self.start <= sod && sod < self.end
        } else {
            let yesterday = (wd + 6) % 7;
            (self.days.contains(wd) && sod >= self.start)
                || (self.days.contains(yesterday) && sod < self.end)
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}-{} {}",
            self.days,
            fmt_hm(self.start),
            fmt_hm(self.end),
            fmt_rate(self.rate)
        )
    }
}

fn fmt_hm(secs: u32) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// The site's time zone: an IANA zone, UTC, or a fixed offset, with the name it was given as.
#[derive(Clone, Debug)]
pub(crate) struct SiteTimeZone {
    pub(crate) tz: TimeZone,
    pub(crate) name: Arc<str>,
}

impl SiteTimeZone {
    pub(crate) fn utc() -> Self {
        SiteTimeZone { tz: TimeZone::UTC, name: Arc::from("UTC") }
    }
}

/// A parsed and validated WAN bandwidth policy.
///
/// Built only by [`from_toml_str`](Self::from_toml_str) / [`load`](Self::load) (which validate
/// everything before returning, so a bad file never half-applies: the caller simply keeps the
/// policy it had), or by [`flat`](Self::flat) / [`unlimited`](Self::unlimited).
///
/// Cloning is cheap (the windows and the time zone are shared).
#[derive(Clone, Debug)]
pub struct BandwidthPolicy {
    pub(crate) tz: SiteTimeZone,
    /// Rate when no window matches (`None` = unlimited).
    pub(crate) default_rate: Option<u64>,
    /// Token bucket capacity in bytes (`>= 1`).
    pub(crate) burst: u64,
    /// Largest chunk the bucket must be able to admit (set by `ensure_burst_covers`): the burst
    /// never goes below it, not even when scaled down by a per-reflector share.
    pub(crate) burst_floor: u64,
    /// Fraction (0..=1) of the rate in force that background traffic may use.
    pub(crate) background_share: f64,
    /// First match wins.
    pub(crate) windows: Arc<[Window]>,
}

impl BandwidthPolicy {
    /// Parses and validates a policy file's text. `origin` names the file in error messages.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<BandwidthPolicy, PolicyError> {
        super::parse::parse_policy(text, origin)
    }

    /// One rate at all times (for `--wan-rate`), with a [`DEFAULT_BURST`] bucket. As with
    /// rsync's `--bwlimit`, `0` means no limit.
    pub fn flat(rate_bytes_per_s: u64) -> BandwidthPolicy {
        BandwidthPolicy {
            tz: SiteTimeZone::utc(),
            default_rate: (rate_bytes_per_s > 0).then_some(rate_bytes_per_s),
            burst: DEFAULT_BURST,
            burst_floor: 0,
            background_share: 1.0,
            windows: Arc::from(Vec::new()),
        }
    }

    /// The same policy with a bucket of `bytes` (what a file's `burst` key sets).
    pub fn with_burst(mut self, bytes: u64) -> BandwidthPolicy {
        self.burst = bytes;
        self
    }

    /// No limit at all.
    pub fn unlimited() -> BandwidthPolicy {
        Self::flat(0)
    }

    /// The rate in force at `unix_secs` (UTC unix seconds; the caller converts its own clock),
    /// in bytes per second; `None` = unlimited. This is the value the reflector exports as
    /// `oasis_wan_rate_limit_bytes_per_second` (see [`super::RATE_METRIC`]).
    ///
    /// Windows are tried in file order and the first one that contains the local time wins;
    /// if none does, `wan.rate` applies.
    pub fn rate_at(&self, unix_secs: i64) -> Option<u64> {
        if self.windows.is_empty() {
            return self.default_rate;
        }
        let (wd, sod) = self.local_weekday_and_second(unix_secs);
        self.windows.iter().find(|w| w.contains(wd, sod)).map_or(self.default_rate, |w| w.rate)
    }

    /// Token bucket capacity in bytes.
    pub fn burst_bytes(&self) -> u64 {
        self.burst
    }

    /// The rate used when no window matches (`None` = unlimited).
    pub fn default_rate(&self) -> Option<u64> {
        self.default_rate
    }

    /// Fraction (0..=1) of the rate in force that background (prefetch) traffic may use.
    pub fn background_share(&self) -> f64 {
        self.background_share
    }

    /// The schedule windows, in file order (first match wins).
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The time zone's name as configured (`"Europe/Berlin"`, `"UTC"`, `"+02:00"`).
    pub fn timezone(&self) -> &str {
        &self.tz.name
    }

    /// Raises the burst to at least `largest_chunk` — the largest chunk *as sent* (compressed
    /// frame plus header), since a token bucket smaller than a request could never admit it.
    /// Returns a note for the log when it had to raise it, `None` when the burst already
    /// covered it. The limit itself is never bypassed: a bigger bucket only allows a bigger
    /// initial burst, not a higher rate.
    pub fn ensure_burst_covers(&mut self, largest_chunk: u64) -> Option<String> {
        self.burst_floor = self.burst_floor.max(largest_chunk);
        if self.burst >= largest_chunk {
            return None;
        }
        let old = self.burst;
        self.burst = largest_chunk;
        Some(format!(
            "wan.burst {} is smaller than the largest chunk as sent ({}): raised to {} so that \
             chunk can be admitted at all",
            fmt_bytes(old),
            fmt_bytes(largest_chunk),
            fmt_bytes(largest_chunk)
        ))
    }

    /// The first instant (unix seconds) after `unix_secs` at which [`rate_at`](Self::rate_at)
    /// returns something different, or `None` if the rate never changes. Schedulers (and
    /// [`super::WanBudget`]) use it to re-evaluate the rate only at window edges.
    ///
    /// Handles windows that wrap past midnight and DST shifts (an edge inside a skipped hour
    /// takes effect at the shift; an edge inside a repeated hour takes effect both times).
    pub fn next_change_after(&self, unix_secs: i64) -> Option<i64> {
        if self.windows.is_empty() {
            return None;
        }
        let current = self.rate_at(unix_secs);
        let mut best: Option<i64> = None;
        let mut consider = |candidate: i64| {
            if candidate > unix_secs
                && best.is_none_or(|b| candidate < b)
                && self.rate_at(candidate) != current
            {
                best = Some(candidate);
            }
        };
        // The rate is piecewise constant; its breakpoints are among: every local instant that is
        // a window edge or a midnight (days change there), and every UTC-offset transition.
        // Any candidate superset works, so take all of them and keep the earliest that changes.
        let ts = timestamp(unix_secs);
        let horizon = unix_secs.saturating_add(LOOKAHEAD_DAYS * i64::from(DAY));
        let mut date: Option<Date> = self.tz.tz.to_datetime(ts).date().yesterday().ok();
        for _ in 0..=LOOKAHEAD_DAYS + 1 {
            let Some(d) = date else { break };
            let edges = std::iter::once(0)
                .chain(self.windows.iter().flat_map(|w| [w.start, w.end]))
                .filter(|&s| s < DAY);
            for secs in edges {
                let t =
                    Time::new((secs / 3600) as i8, (secs / 60 % 60) as i8, (secs % 60) as i8, 0)
                        .expect("seconds of a day form a valid time");
                let amb = self.tz.tz.to_ambiguous_timestamp(d.to_datetime(t));
                for at in [amb.earlier(), amb.later()].into_iter().flatten() {
                    consider(at.as_second());
                }
            }
            date = d.tomorrow().ok();
        }
        for tr in self.tz.tz.following(ts) {
            let at = tr.timestamp().as_second();
            if at > horizon {
                break;
            }
            consider(at);
        }
        best
    }

    /// Local weekday (0 = Monday) and second of the day at `unix_secs`.
    fn local_weekday_and_second(&self, unix_secs: i64) -> (u8, u32) {
        let offset = self.tz.tz.to_offset(timestamp(unix_secs)).seconds();
        let local = unix_secs.saturating_add(i64::from(offset));
        let days = local.div_euclid(i64::from(DAY));
        // 1970-01-01 was a Thursday (3 when Monday is 0).
        let wd = (days + 3).rem_euclid(7) as u8;
        (wd, local.rem_euclid(i64::from(DAY)) as u32)
    }
}

/// A jiff timestamp for `unix_secs`, clamped to jiff's supported range (years -9999..=9999).
fn timestamp(unix_secs: i64) -> Timestamp {
    let clamped = unix_secs
        .clamp(Timestamp::MIN.as_second() + 2 * 86_400, Timestamp::MAX.as_second() - 20 * 86_400);
    Timestamp::from_second(clamped).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl fmt::Display for BandwidthPolicy {
    /// One line for logs, e.g. `timezone Europe/Berlin; rate 10 MB/s; burst 4 MiB;
    /// background_share 1; window[0] mon-fri 08:00-18:00 2 MB/s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timezone {}; rate {}; burst {}; background_share {}",
            self.tz.name,
            fmt_rate(self.default_rate),
            fmt_bytes(self.burst),
            self.background_share
        )?;
        for (i, w) in self.windows.iter().enumerate() {
            write!(f, "; window[{i}] {w}")?;
        }
        Ok(())
    }
}
