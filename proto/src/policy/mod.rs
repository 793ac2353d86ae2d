//! WAN bandwidth policy: how fast a reflector may pull from upstream, and when.
//!
//! A policy file (see `config/bandwidth-policy.example.toml`) sets the WAN rate in bytes per
//! second with a burst size, and weekly schedule windows in the site's time zone (e.g. 2 MB/s in
//! business hours, 20 MB/s at night). Traffic comes in two classes: **foreground** (an endpoint
//! is waiting) is served first; **background** (prefetch) only uses what foreground leaves.
//!
//! # Layers
//!
//! * [`BandwidthPolicy`] — the parsed, validated file. Pure: it answers "which rate is in force
//!   at this instant" ([`BandwidthPolicy::rate_at`]) and "when does that next change"
//!   ([`BandwidthPolicy::next_change_after`]) for instants given as UTC unix seconds.
//!   Parsing either returns a complete policy or a [`PolicyError`], never half a policy: on a
//!   bad reload the caller keeps the policy it had.
//! * [`WanBudget`] — the two-class token bucket as a plain state machine. It does no I/O and
//!   reads no clock: every call takes `now` (a monotonic [`Duration`](std::time::Duration) since
//!   an arbitrary origin) and the matching unix seconds, and returns a [`Decision`]. The
//!   simulator drives it on a virtual clock, the reflector on real time (the quinn-proto /
//!   quinn split). No allocation and no locking per decision.
//! * The thin async shell for real time, `WanLimiter`, and reading a policy file live in
//!   `oasis_core::policy`.
//!
//! # Guarantees
//!
//! With burst `B` and rate `r`, the bytes admitted in any interval of length `T` are at most
//! `B + r·T` (exact integer arithmetic, rate changes at window edges included). So over any 10 s
//! window the measured rate is within 5 % of `r` once the burst is spent, and always when
//! `B <= r · 0.5 s`. A request larger than the bucket is admitted when the bucket is full and
//! leaves it in debt — it neither stalls nor bypasses the limit — but callers should make the
//! burst cover the largest chunk up front with [`BandwidthPolicy::ensure_burst_covers`].

mod budget;
mod parse;
mod schedule;
pub mod unpaid;

use crate::file_errors::position;
use std::path::PathBuf;

pub use budget::{Decision, TrafficClass, WanBudget};
pub use parse::{shown as shown_toml_value, time_zone};
pub use schedule::{BandwidthPolicy, DaySet, Window, DEFAULT_BURST};

/// Name of the gauge the reflector exports with [`BandwidthPolicy::rate_at`]: the WAN rate the policy allows now, in bytes per second.
pub const RATE_METRIC: &str = "oasis_wan_rate_limit_bytes_per_second";

/// Value for the [`RATE_METRIC`] gauge: the rate, or `+Inf` when unlimited.
pub fn rate_metric_value(rate: Option<u64>) -> f64 {
    rate.map_or(f64::INFINITY, |r| r as f64)
}

/// A policy file that cannot be used. Every message names the file, and where it can the line,
/// the key and the problem, e.g.
/// `policy.toml line 7: wan.window[1].start "25:00" is not a time (HH:MM)`.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read (by `oasis_core::policy::load`).
    #[error("cannot read bandwidth policy {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}{}: not valid TOML: {message}", position(*.line, *.column))]
    Syntax {
        /// The file name as given.
        origin: String,
        /// 1-based line of the error, if toml reported a position.
        line: Option<usize>,
        /// 1-based column (in characters) of the error.
        column: Option<usize>,
        /// toml's description.
        message: String,
    },
    /// Valid TOML, but a key is unknown, missing, or has a value that is not allowed.
    #[error("{origin}{}: {key} {problem}", position(*.line, None))]
    Invalid {
        /// The file name as given.
        origin: String,
        /// 1-based line of the offending key or value, when there is one to point at.
        line: Option<usize>,
        /// Full key path, e.g. `wan.window[1].start` (windows are counted from 0).
        key: String,
        /// What is wrong, e.g. `"25:00" is not a time (HH:MM)`.
        problem: String,
    },
}

impl PolicyError {
    /// The key the error is about (`None` for I/O and syntax errors).
    pub fn key(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Syntax { line, .. } | PolicyError::Invalid { line, .. } => *line,
            PolicyError::Io { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests;
