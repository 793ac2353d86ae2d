//! Scheduled wakes for a delivery window, as an I/O-free state machine.
//!
//! At the window's start the machines are woken in staggered batches (`batch_size` every
//! `batch_interval`, so a hundred machines do not start at once). A woken machine must come
//! online within `online_timeout` (it is woken again up to `rewakes` times), then hold the
//! layers within `deliver_timeout`; whatever is not done when the window ends fails with the
//! reason. The caller feeds events (wake sent, online, delivered) and asks [`WakeRun::poll`]
//! what to wake now; time is a `Duration` since any fixed origin (Unix epoch in the reflector,
//! virtual time in the simulator).

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Serialize;
use std::time::Duration;

/// How a delivery window's wakes are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Machines woken together.
    pub batch_size: usize,
    /// Time between the starts of two batches.
    pub batch_interval: Duration,
    /// How long a woken machine has to come online before it is woken again or failed.
    pub online_timeout: Duration,
    /// Extra wakes for a machine that did not come online.
    pub rewakes: u32,
    /// How long an online machine has to hold the layers.
    pub deliver_timeout: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            batch_size: 10,
            batch_interval: Duration::from_secs(30),
            online_timeout: Duration::from_secs(300),
            rewakes: 1,
            deliver_timeout: Duration::from_secs(3600),
        }
    }
}

impl ScheduleConfig {
    /// Batch size from a rate in machines per minute (at least one machine per batch).
    pub fn from_rate(per_minute: u32) -> ScheduleConfig {
        let per_minute = per_minute.max(1) as usize;
        let batches_per_minute = per_minute.min(6); // at most one batch every 10 s
        ScheduleConfig {
            batch_size: per_minute.div_ceil(batches_per_minute),
            batch_interval: Duration::from_secs(60 / batches_per_minute as u64),
            ..ScheduleConfig::default()
        }
    }
}

/// Where one machine stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Its batch has not come yet.
    Waiting,
    /// Magic packets sent; not online yet.
    Woken,
    /// It connected; the layers are not held yet.
    Online,
    /// It holds the layers.
    Delivered,
    Failed,
}

/// One machine's result, as shown by `wake status` and `--json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MachineResult {
    pub name: String,
    pub state: MachineState,
    /// Why it failed.
    pub reason: Option<String>,
    /// Batch number (0-based).
    pub batch: usize,
    /// Wakes sent (first wake and rewakes).
    pub wakes: u32,
    /// Times (seconds since the origin) of the first wake, coming online, delivery.
    pub woken_at: Option<f64>,
    pub online_at: Option<f64>,
    pub delivered_at: Option<f64>,
    #[serde(skip)]
    deadline: Option<Duration>,
}

/// One window's run over a set of machines.
#[derive(Clone, Debug)]
pub struct WakeRun {
    cfg: ScheduleConfig,
    start: Duration,
    end: Option<Duration>,
    machines: Vec<MachineResult>,
    ended: bool,
}

impl WakeRun {
    /// `names` in the order to wake them; `start`/`end` the window (end None: no end).
    pub fn new(
        names: Vec<String>,
        start: Duration,
        end: Option<Duration>,
        cfg: ScheduleConfig,
    ) -> WakeRun {
        let size = cfg.batch_size.max(1);
        let machines = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| MachineResult {
                name,
                state: MachineState::Waiting,
                reason: None,
                batch: i / size,
                wakes: 0,
                woken_at: None,
                online_at: None,
                delivered_at: None,
                deadline: None,
            })
            .collect();
        WakeRun { cfg, start, end, machines, ended: false }
    }

    fn batch_time(&self, batch: usize) -> Duration {
        self.start + self.cfg.batch_interval * batch as u32
    }

    fn find(&mut self, name: &str) -> Option<&mut MachineResult> {
        self.machines.iter_mut().find(|m| m.name == name)
    }

    /// Applies the clock: returns the machines to wake now (their batch came, or they did not
    /// come online in time and have rewakes left), fails the overdue, and closes the run at the
    /// window's end.
    pub fn poll(&mut self, now: Duration) -> Vec<String> {
        if self.ended {
            return Vec::new();
        }
        if self.end.is_some_and(|e| now >= e) {
            self.ended = true;
            for m in &mut self.machines {
                match m.state {
                    MachineState::Delivered | MachineState::Failed => {}
                    s => {
                        m.reason = Some(match s {
                            MachineState::Waiting => "window ended before its batch".into(),
                            MachineState::Woken => "window ended before it came online".into(),
                            _ => "window ended before it held the layers".into(),
                        });
                        m.state = MachineState::Failed;
                    }
                }
            }
            return Vec::new();
        }
        let mut wake = Vec::new();
        let cfg = self.cfg;
        for i in 0..self.machines.len() {
            let due = self.batch_time(self.machines[i].batch);
            let m = &mut self.machines[i];
            match m.state {
                MachineState::Waiting if now >= due => {
                    m.state = MachineState::Woken;
                    m.wakes = 1;
                    m.woken_at = Some(now.as_secs_f64());
                    m.deadline = Some(now + cfg.online_timeout);
                    wake.push(m.name.clone());
                }
                MachineState::Woken if m.deadline.is_some_and(|d| now >= d) => {
                    if m.wakes <= cfg.rewakes {
                        m.wakes += 1;
                        m.deadline = Some(now + cfg.online_timeout);
                        wake.push(m.name.clone());
                    } else {
                        m.state = MachineState::Failed;
                        m.reason = Some(format!(
                            "did not come online within {} s of {} wake(s)",
                            cfg.online_timeout.as_secs(),
                            m.wakes
                        ));
                    }
                }
                MachineState::Online if m.deadline.is_some_and(|d| now >= d) => {
                    m.state = MachineState::Failed;
                    m.reason = Some(format!(
                        "online but did not fetch the layers within {} s",
                        cfg.deliver_timeout.as_secs()
                    ));
                }
                _ => {}
            }
        }
        wake
    }

    /// The wake for `name` could not be sent (no relay, relay asleep, bad MAC): failed.
    pub fn wake_failed(&mut self, name: &str, reason: impl Into<String>) {
        if let Some(m) = self.find(name) {
            if m.state == MachineState::Woken {
                m.state = MachineState::Failed;
                m.reason = Some(reason.into());
            }
        }
    }

    /// `name` connected. A machine online before its batch needs no wake.
    pub fn online(&mut self, name: &str, now: Duration) {
        let t = self.cfg.deliver_timeout;
        if let Some(m) = self.find(name) {
            if matches!(m.state, MachineState::Waiting | MachineState::Woken) {
                m.state = MachineState::Online;
                m.online_at = Some(now.as_secs_f64());
                m.deadline = Some(now + t);
            }
        }
    }

    /// `name` holds the layers.
    pub fn delivered(&mut self, name: &str, now: Duration) {
        if let Some(m) = self.find(name) {
            if m.state != MachineState::Delivered {
                if m.online_at.is_none() {
                    m.online_at = Some(now.as_secs_f64());
                }
                m.state = MachineState::Delivered;
                m.reason = None;
                m.delivered_at = Some(now.as_secs_f64());
                m.deadline = None;
            }
        }
    }

    /// When `poll` next has something to do (None: nothing left).
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.is_done() {
            return None;
        }
        let mut next = self.end;
        for m in &self.machines {
            let t = match m.state {
                MachineState::Waiting => Some(self.batch_time(m.batch)),
                MachineState::Woken | MachineState::Online => m.deadline,
                _ => None,
            };
            next = match (next, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    /// Every machine delivered or failed (or the window is over).
    pub fn is_done(&self) -> bool {
        self.ended
            || self
                .machines
                .iter()
                .all(|m| matches!(m.state, MachineState::Delivered | MachineState::Failed))
    }

    pub fn results(&self) -> &[MachineResult] {
        &self.machines
    }

    pub fn start(&self) -> Duration {
        self.start
    }

    /// Counts per state: (waiting, woken, online, delivered, failed).
    pub fn counts(&self) -> [usize; 5] {
        let mut c = [0; 5];
        for m in &self.machines {
            c[m.state as usize] += 1;
        }
        c
    }
}

/// Parses a delivery window "HH:MM-HH:MM" (may wrap past midnight: 22:00-06:00): the one
/// parser the seed's catalog, the reflector and the simulator use. Errors name the window.
pub fn parse_window(w: &str) -> Result<(Time, Time), String> {
    window_times(w).map_err(|p| format!("window {w:?}: {p}"))
}

/// [`parse_window`] with the bare problem as the error, for callers that name the window
/// themselves (a scenario file's key).
pub fn window_times(w: &str) -> Result<(Time, Time), String> {
    let bad = || "expected HH:MM-HH:MM, e.g. 02:00-05:00".to_string();
    let (a, b) = w.split_once('-').ok_or_else(bad)?;
    let t = |s: &str| -> Result<Time, String> {
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if s.len() != 5 {
            return Err(bad());
        }
        let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        Time::new(h, m, 0, 0).map_err(|_| bad())
    };
    let (a, b) = (t(a)?, t(b)?);
    if a == b {
        return Err("start and end are the same".to_string());
    }
    Ok((a, b))
}

/// Whether `window` is open at `from`, and every instant in (`from`, `until`] at which it
/// opens (`true`) or closes (`false`), in order: the occurrences [`window_at`] gives one after
/// another, as a reflector meets them.
pub fn window_edges(
    window: &str,
    tz: &TimeZone,
    from: Timestamp,
    until: Timestamp,
) -> Result<(bool, Vec<(Timestamp, bool)>), String> {
    let (first_start, _) = window_at(window, tz, from)?;
    let open_at_start = first_start <= from;
    let mut edges = Vec::new();
    let mut now = from;
    loop {
        let (start, end) = window_at(window, tz, now)?;
        if start > now {
            if start > until {
                break;
            }
            edges.push((start, true));
        }
        if end > until {
            break;
        }
        edges.push((end, false));
        now = end;
    }
    Ok((open_at_start, edges))
}

/// The occurrence of `window` (in time zone `tz`) that is open at `now`, else the next one:
/// (start, end). A wrapped window (22:00-06:00) ends the next day.
pub fn window_at(
    window: &str,
    tz: &TimeZone,
    now: Timestamp,
) -> Result<(Timestamp, Timestamp), String> {
    let (a, b) = parse_window(window)?;
    let today = now.to_zoned(tz.clone()).date();
    let at = |d: jiff::civil::Date, t: Time| -> Result<Timestamp, String> {
        d.to_datetime(t)
            .to_zoned(tz.clone())
            .map(|z| z.timestamp())
            .map_err(|e| format!("window {window:?}: {e}"))
    };
    // The occurrence that started yesterday may still be open (wrapped windows).
    for days in [-1i64, 0, 1] {
        let d = today.checked_add(days.days()).map_err(|e| e.to_string())?;
        let start = at(d, a)?;
        let end_day = if b > a { d } else { d.checked_add(1.day()).map_err(|e| e.to_string())? };
        let end = at(end_day, b)?;
        if now < end {
            return Ok((start, end));
        }
    }
    Err(format!("window {window:?}: no occurrence found after {now}"))
}

/// A timestamp as a `Duration` since the Unix epoch (0 before it).
pub fn since_epoch(t: Timestamp) -> Duration {
    let ns = t.as_nanosecond();
    if ns <= 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pc-{i}")).collect()
    }

    #[test]
    fn window_edges_follow_each_occurrence_across_a_dst_change() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // Saturday 2025-03-29 12:00 local; clocks go forward on the Sunday night at 02:00.
        let from: Timestamp = "2025-03-29T12:00:00+01:00".parse().unwrap();
        let until: Timestamp = "2025-03-31T12:00:00+02:00".parse().unwrap();
        let (open, edges) = window_edges("22:00-06:00", &tz, from, until).unwrap();
        assert!(!open, "closed at noon");
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(
            edges,
            vec![
                (at("2025-03-29T22:00:00+01:00"), true),
                (at("2025-03-30T06:00:00+02:00"), false),
                (at("2025-03-30T22:00:00+02:00"), true),
                (at("2025-03-31T06:00:00+02:00"), false),
            ]
        );
        let (open, edges) =
            window_edges("22:00-06:00", &tz, at("2025-03-29T23:00:00+01:00"), until).unwrap();
        assert!(open, "open at 23:00");
        assert_eq!(edges[0], (at("2025-03-30T06:00:00+02:00"), false));
        assert_eq!(window_times("6pm"), Err("expected HH:MM-HH:MM, e.g. 02:00-05:00".into()));
        assert_eq!(
            parse_window("02:00-02:00"),
            Err("window \"02:00-02:00\": start and end are the same".into())
        );
    }

    #[test]
    fn batches_are_staggered_and_results_recorded() {
        let cfg = ScheduleConfig {
            batch_size: 2,
            batch_interval: secs(30),
            online_timeout: secs(60),
            rewakes: 1,
            deliver_timeout: secs(600),
        };
        let mut run = WakeRun::new(names(5), secs(1000), Some(secs(5000)), cfg);
        assert!(run.poll(secs(999)).is_empty(), "nothing before the window opens");
        assert_eq!(run.next_deadline(), Some(secs(1000)));
        assert_eq!(run.poll(secs(1000)), ["pc-0", "pc-1"]);
        assert!(run.poll(secs(1029)).is_empty());
        assert_eq!(run.poll(secs(1030)), ["pc-2", "pc-3"]);
        // pc-4 came online on its own before its batch: no wake needed.
        run.online("pc-4", secs(1031));
        assert!(run.poll(secs(1059)).is_empty());
        run.online("pc-0", secs(1040));
        run.delivered("pc-0", secs(1050));
        run.wake_failed("pc-3", "no relay on its subnet");
        // pc-1 did not come online: woken again after the timeout, then failed.
        assert_eq!(run.poll(secs(1060)), ["pc-1"]);
        assert_eq!(run.poll(secs(1090)), ["pc-2"]);
        run.online("pc-2", secs(1095));
        assert!(run.poll(secs(1119)).is_empty());
        assert!(run.poll(secs(1120)).is_empty());
        let r = run.results();
        assert_eq!(r[1].state, MachineState::Failed);
        assert!(r[1].reason.as_deref().unwrap().contains("did not come online"), "{:?}", r[1]);
        assert_eq!(r[1].wakes, 2);
        assert_eq!(r[0].state, MachineState::Delivered);
        assert_eq!(r[3].reason.as_deref(), Some("no relay on its subnet"));
        assert_eq!(r[4].wakes, 0);
        run.delivered("pc-4", secs(1200));
        // pc-2 is online but never fetches: failed at its delivery deadline.
        run.poll(secs(1095 + 600));
        assert_eq!(run.results()[2].state, MachineState::Failed);
        assert!(run.is_done());
        assert_eq!(run.counts(), [0, 0, 0, 2, 3]);
    }

    #[test]
    fn the_window_end_fails_the_rest() {
        let cfg = ScheduleConfig { batch_size: 1, batch_interval: secs(100), ..Default::default() };
        let mut run = WakeRun::new(names(3), secs(0), Some(secs(150)), cfg);
        assert_eq!(run.poll(secs(0)), ["pc-0"]);
        assert_eq!(run.poll(secs(100)), ["pc-1"]);
        run.poll(secs(150));
        assert!(run.is_done());
        let r = run.results();
        assert_eq!(r[2].reason.as_deref(), Some("window ended before its batch"));
        assert_eq!(r[0].reason.as_deref(), Some("window ended before it came online"));
    }

    #[test]
    fn windows_follow_the_site_time_zone() {
        let tz = TimeZone::get("Europe/Paris").unwrap();
        // 2026-01-15 00:30 UTC = 01:30 in Paris: the 02:00-05:00 window opens at 01:00 UTC.
        let now: Timestamp = "2026-01-15T00:30:00Z".parse().unwrap();
        let (s, e) = window_at("02:00-05:00", &tz, now).unwrap();
        assert_eq!(s, "2026-01-15T01:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(e, "2026-01-15T04:00:00Z".parse::<Timestamp>().unwrap());
        // Inside a wrapped window that opened yesterday.
        let now: Timestamp = "2026-01-15T03:00:00Z".parse().unwrap();
        let (s, e) = window_at("22:00-06:00", &tz, now).unwrap();
        assert_eq!(s, "2026-01-14T21:00:00Z".parse::<Timestamp>().unwrap());
        assert_eq!(e, "2026-01-15T05:00:00Z".parse::<Timestamp>().unwrap());
        // After today's window: tomorrow's.
        let now: Timestamp = "2026-01-15T06:00:00Z".parse().unwrap();
        let (s, _) = window_at("02:00-05:00", &tz, now).unwrap();
        assert_eq!(s, "2026-01-16T01:00:00Z".parse::<Timestamp>().unwrap());
        for bad in ["2:00-05:00", "25:00-01:00", "02:00", "02:00-02:00", "aa:bb-cc:dd"] {
            assert!(window_at(bad, &tz, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_become_batches() {
        let c = ScheduleConfig::from_rate(60);
        assert_eq!((c.batch_size, c.batch_interval), (10, secs(10)));
        let c = ScheduleConfig::from_rate(2);
        assert_eq!((c.batch_size, c.batch_interval), (1, secs(30)));
    }
}
