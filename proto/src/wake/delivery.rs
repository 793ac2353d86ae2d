//! Scheduled delivery for one site: a wake run per assignment whose delivery window opens (and
//! one when an assignment without a window is first seen), fed what the site's inventory shows,
//! the machines whose wakes are due, and each machine's progress counted once per stage.
//!
//! Pure: the reflector's wake task passes the clock, the zone and the inventory in, sends the
//! wakes [`Deliveries::poll`] returns and reports the failures back. The per-run logic
//! (batches, the online timeout, rewakes) is [`WakeRun`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::msg::DeviceEntry;
use super::schedule::{since_epoch, window_at, MachineState, ScheduleConfig, WakeRun};
use crate::wire::Assignment;

/// A stage a machine reaches in a run, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Woken,
    Online,
    Delivered,
    Failed,
}

/// One run: the opening of one assignment's delivery window, or the first sight of an
/// assignment without one.
#[derive(Clone, Debug)]
pub struct ActiveRun {
    /// "name@version".
    pub layer: String,
    /// Empty for an assignment without a window (its run has no end).
    pub window: String,
    /// Unix seconds of the window's start and end (no end: an assignment without a window).
    pub start: u64,
    pub end: Option<u64>,
    pub run: WakeRun,
    /// Stages already counted, per machine.
    counted: BTreeSet<(String, Stage)>,
}

/// One run as persisted and shown (`STATE/wake/runs.json`, `oasis-reflector wake-status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunStatus {
    /// "name@version".
    pub layer: String,
    pub window: String,
    /// Unix seconds of the window's start and end (null: an assignment without a window).
    pub start: u64,
    pub end: Option<u64>,
    pub done: bool,
    pub machines: Vec<serde_json::Value>,
}

/// What [`Deliveries::open`] did with an assignment, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opening {
    /// Its window opened (`window` empty: an assignment without one was first seen): a run
    /// over `machines` machines.
    Opened { layer: String, window: String, machines: usize },
    /// Its window cannot be read.
    Refused { layer: String, problem: String },
}

/// The site's scheduled runs.
#[derive(Clone, Debug)]
pub struct Deliveries {
    cfg: ScheduleConfig,
    runs: Vec<ActiveRun>,
    /// Per assignment without a window ("name@version"), the machines a run was opened for.
    at_once: BTreeMap<String, BTreeSet<String>>,
}

/// Can `d` be woken for a delivery: it has a MAC, takes layers (an endpoint or a reflector),
/// and is not the node that schedules.
fn wakeable(d: &DeviceEntry, me: &str) -> bool {
    d.info.name != me
        && !d.info.macs.is_empty()
        && (d.info.role == "endpoint" || d.info.role == "reflector")
}

impl Deliveries {
    pub fn new(cfg: ScheduleConfig) -> Deliveries {
        Deliveries { cfg, runs: Vec::new(), at_once: BTreeMap::new() }
    }

    pub fn runs(&self) -> &[ActiveRun] {
        &self.runs
    }

    /// A run is still going.
    pub fn active(&self) -> bool {
        self.runs.iter().any(|r| !r.run.is_done())
    }

    /// When a run next has something due (a batch, an online or delivery timeout, a window's
    /// end), on the clock since the epoch; None while no run is going.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.runs.iter().filter_map(|r| r.run.next_deadline()).min()
    }

    /// Opens a run for every assignment whose delivery window is open at `now` in `tz` and
    /// has no run for this opening yet, over every machine of `devices` that can be woken
    /// (`me` is the node that schedules). Machines that already hold the layer are delivered
    /// at once; they need no wake. A run opened after its window started paces its batches
    /// from `now`, not from the window's start. An assignment without a window means "as soon
    /// as possible": a run without an end opens over the machines that lack the layer and no
    /// run of it covered yet, so machines the inventory learns later get theirs (a node that
    /// starts over wakes again those that still lack the layer).
    pub fn open(
        &mut self,
        assignments: &[Assignment],
        devices: &[&DeviceEntry],
        me: &str,
        tz: &TimeZone,
        now: Timestamp,
    ) -> Vec<Opening> {
        let mut out = Vec::new();
        for a in assignments {
            let layer = format!("{}@{}", a.name, a.version);
            let mut machines: Vec<String> =
                devices.iter().filter(|d| wakeable(d, me)).map(|d| d.info.name.clone()).collect();
            let (start, end) = if a.window.is_empty() {
                let covered = self.at_once.entry(layer.clone()).or_default();
                let lacking = |d: &&&DeviceEntry| !d.info.held.contains(&layer);
                let lack: BTreeSet<&str> =
                    devices.iter().filter(lacking).map(|d| d.info.name.as_str()).collect();
                machines.retain(|m| lack.contains(m.as_str()) && !covered.contains(m));
                if machines.is_empty() {
                    continue;
                }
                covered.extend(machines.iter().cloned());
                (now, None)
            } else {
                let (start, end) = match window_at(&a.window, tz, now) {
                    Ok(w) => w,
                    Err(e) => {
                        out.push(Opening::Refused { layer, problem: e.to_string() });
                        continue;
                    }
                };
                let start_s = start.as_second().max(0) as u64;
                if now < start || self.runs.iter().any(|r| r.layer == layer && r.start == start_s) {
                    continue;
                }
                (start, Some(end))
            };
            out.push(Opening::Opened {
                layer: layer.clone(),
                window: a.window.clone(),
                machines: machines.len(),
            });
            let run_end = end.map(since_epoch);
            let paced_from = since_epoch(start.max(now));
            let mut run = WakeRun::new(machines, paced_from, run_end, self.cfg);
            for d in devices.iter().filter(|d| d.info.held.contains(&layer)) {
                run.delivered(&d.info.name, since_epoch(now));
            }
            self.runs.push(ActiveRun {
                layer,
                window: a.window.clone(),
                start: start.as_second().max(0) as u64,
                end: end.map(|e| e.as_second().max(0) as u64),
                run,
                counted: BTreeSet::new(),
            });
        }
        out
    }

    /// Feeds the runs in progress what the inventory shows at `now` and returns the machines
    /// whose wakes are due, each once. A woken machine is online once it has registered since
    /// its wake: here (`seen`, on the caller's clock since the epoch) or at a sibling (its
    /// entry's `last_seen`, a later second). A machine has its layer once it reports holding
    /// it, woken or not (one that fetched before its batch needs no wake); a reflector once it
    /// is online (it fetches for its site by itself).
    pub fn poll(
        &mut self,
        devices: &[&DeviceEntry],
        seen: &BTreeMap<String, Duration>,
        now: Timestamp,
    ) -> Vec<String> {
        let now = since_epoch(now);
        let by_name: BTreeMap<&str, &DeviceEntry> =
            devices.iter().map(|d| (d.info.name.as_str(), *d)).collect();
        let mut to_wake: BTreeSet<String> = BTreeSet::new();
        for r in self.runs.iter_mut().filter(|r| !r.run.is_done()) {
            // What changed, collected first: a run's machines are looked up by name to change.
            let (mut online, mut delivered) = (Vec::new(), Vec::new());
            for m in r.run.results() {
                if m.state == MachineState::Delivered {
                    continue;
                }
                let Some(d) = by_name.get(m.name.as_str()) else { continue };
                if d.info.held.contains(&r.layer) {
                    delivered.push(m.name.clone());
                    continue;
                }
                let seen_after_wake = m.woken_at.is_some_and(|w| {
                    seen.get(&m.name).is_some_and(|t| t.as_secs_f64() >= w)
                        || d.last_seen as f64 > w.floor()
                });
                if seen_after_wake {
                    if matches!(m.state, MachineState::Waiting | MachineState::Woken) {
                        online.push(m.name.clone());
                    }
                    if d.info.role == "reflector" {
                        delivered.push(m.name.clone());
                    }
                }
            }
            for name in online {
                r.run.online(&name, now);
            }
            for name in delivered {
                r.run.delivered(&name, now);
            }
            to_wake.extend(r.run.poll(now));
        }
        to_wake.into_iter().collect()
    }

    /// A wake for `name` could not be sent.
    pub fn wake_failed(&mut self, name: &str, reason: &str) {
        for r in self.runs.iter_mut() {
            r.run.wake_failed(name, reason);
        }
    }

    /// The stages machines reached since the last call, each machine once per stage and run
    /// (a machine delivered at once was never woken, and is counted as delivered only).
    pub fn new_stages(&mut self) -> Vec<(String, Stage)> {
        let mut out = Vec::new();
        for r in self.runs.iter_mut() {
            for m in r.run.results() {
                let stages: &[Stage] = match m.state {
                    MachineState::Waiting => &[],
                    MachineState::Woken => &[Stage::Woken],
                    MachineState::Online => &[Stage::Woken, Stage::Online],
                    MachineState::Delivered => &[Stage::Woken, Stage::Online, Stage::Delivered],
                    MachineState::Failed => &[Stage::Failed],
                };
                for &s in stages {
                    if s == Stage::Woken && m.wakes == 0 {
                        continue;
                    }
                    if r.counted.insert((m.name.clone(), s)) {
                        out.push((m.name.clone(), s));
                    }
                }
            }
        }
        out
    }

    /// Every run as shown.
    pub fn status(&self) -> Vec<RunStatus> {
        self.runs
            .iter()
            .map(|r| RunStatus {
                layer: r.layer.clone(),
                window: r.window.clone(),
                start: r.start,
                end: r.end,
                done: r.run.is_done(),
                machines: r
                    .run
                    .results()
                    .iter()
                    .map(|m| serde_json::to_value(m).unwrap_or_default())
                    .collect(),
            })
            .collect()
    }

    /// Forgets finished runs whose window ended before `before` (Unix seconds); a finished run
    /// without a window, once it started before then.
    pub fn retire(&mut self, before: u64) {
        self.runs.retain(|r| !r.run.is_done() || r.end.unwrap_or(r.start) > before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::msg::DeviceInfo;

    fn device(name: &str, role: &str, macs: bool, held: &[&str], last_seen: u64) -> DeviceEntry {
        DeviceEntry {
            info: DeviceInfo {
                name: name.into(),
                role: role.into(),
                site: "lyon".into(),
                agent_version: String::new(),
                macs: if macs { vec![[2, 0, 0, 0, 0, 1]] } else { Vec::new() },
                addrs: Vec::new(),
                wake_to: None,
                relay: None,
                held: held.iter().map(|h| h.to_string()).collect(),
            },
            last_seen,
            reported_by: "refl".into(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn night() -> Vec<Assignment> {
        vec![Assignment { name: "base".into(), version: "2".into(), window: "22:00-04:00".into() }]
    }

    #[test]
    fn a_window_opens_one_run_over_the_machines_that_can_be_woken() {
        let cfg = ScheduleConfig { batch_size: 2, ..ScheduleConfig::default() };
        let mut d = Deliveries::new(cfg);
        let inv = [
            device("refl", "reflector", true, &[], 0),
            device("ep1", "endpoint", true, &[], 0),
            device("ep2", "endpoint", true, &["base@2"], 0),
            device("ep3", "endpoint", false, &[], 0),
            device("printer", "other", true, &[], 0),
            device("refl2", "reflector", true, &[], 0),
        ];
        let devices: Vec<&DeviceEntry> = inv.iter().collect();
        let tz = TimeZone::UTC;
        assert!(d.open(&night(), &devices, "refl", &tz, at("2026-12-06T21:00:00Z")).is_empty());
        let opened = d.open(&night(), &devices, "refl", &tz, at("2026-12-06T22:00:05Z"));
        assert_eq!(
            opened,
            vec![Opening::Opened {
                layer: "base@2".into(),
                window: "22:00-04:00".into(),
                machines: 3
            }],
            "ep1, ep2 and refl2: not itself, not without a MAC, not a printer"
        );
        assert!(
            d.open(&night(), &devices, "refl", &tz, at("2026-12-06T23:00:00Z")).is_empty(),
            "one run per opening"
        );
        let run = &d.runs()[0];
        assert_eq!(run.end, Some(run.start + 6 * 3600));
        let state = |d: &Deliveries, n: &str| {
            d.runs()[0].run.results().iter().find(|m| m.name == n).map(|m| m.state)
        };
        assert_eq!(state(&d, "ep2"), Some(MachineState::Delivered), "it holds the layer");

        // Batches of two: ep1 now (ep2 of its batch needs no wake), refl2 a batch later, paced
        // from the run's opening (5 s into the window), not from the window's start.
        let seen = BTreeMap::new();
        assert_eq!(d.poll(&devices, &seen, at("2026-12-06T22:00:06Z")), vec!["ep1"]);
        assert!(d.poll(&devices, &seen, at("2026-12-06T22:00:07Z")).is_empty(), "once");
        assert!(d.poll(&devices, &seen, at("2026-12-06T22:00:31Z")).is_empty());
        assert_eq!(d.poll(&devices, &seen, at("2026-12-06T22:00:35Z")), vec!["refl2"]);

        // ep1 registers here after its wake and reports the layer; refl2 is seen at a sibling.
        let mut seen = BTreeMap::new();
        seen.insert("ep1".to_string(), since_epoch(at("2026-12-06T22:01:00Z")));
        let later = [
            device("ep1", "endpoint", true, &["base@2"], 0),
            device("refl2", "reflector", true, &[], at("2026-12-06T22:02:00Z").as_second() as u64),
        ];
        let devices: Vec<&DeviceEntry> = later.iter().collect();
        assert!(d.poll(&devices, &seen, at("2026-12-06T22:03:00Z")).is_empty());
        assert_eq!(state(&d, "ep1"), Some(MachineState::Delivered));
        assert_eq!(state(&d, "refl2"), Some(MachineState::Delivered), "a reflector online fetches");
        assert!(!d.active(), "everyone has the layer");

        let mut stages = d.new_stages();
        stages.sort();
        let expect =
            |n: &str, s: &[Stage]| s.iter().map(|s| (n.to_string(), *s)).collect::<Vec<_>>();
        let mut want = [
            expect("ep1", &[Stage::Woken, Stage::Online, Stage::Delivered]),
            expect("ep2", &[Stage::Online, Stage::Delivered]),
            expect("refl2", &[Stage::Woken, Stage::Online, Stage::Delivered]),
        ]
        .concat();
        want.sort();
        assert_eq!(stages, want, "delivered at once was never woken");
        assert!(d.new_stages().is_empty(), "each stage is counted once");

        // The next night opens a new run; the finished one is forgotten a day after it ended.
        let opened = d.open(&night(), &devices, "refl", &tz, at("2026-12-07T22:00:00Z"));
        assert_eq!(opened.len(), 1);
        d.retire(at("2026-12-08T00:00:00Z").as_second() as u64);
        assert_eq!(d.runs().len(), 1, "the first run ended 2026-12-07T04:00");
        assert_eq!(d.status()[0].start, at("2026-12-07T22:00:00Z").as_second() as u64);
    }

    #[test]
    fn failed_wakes_and_bad_windows_are_reported() {
        let mut d = Deliveries::new(ScheduleConfig::default());
        let inv = [device("ep1", "endpoint", true, &[], 0)];
        let devices: Vec<&DeviceEntry> = inv.iter().collect();
        let mut a = night();
        a.push(Assignment {
            name: "apps".into(),
            version: "1".into(),
            window: "25:00-26:00".into(),
        });
        let opened = d.open(&a, &devices, "refl", &TimeZone::UTC, at("2026-12-06T22:00:00Z"));
        assert_eq!(opened.len(), 2, "{opened:?}");
        assert!(
            matches!(&opened[1], Opening::Refused { layer, .. } if layer == "apps@1"),
            "{opened:?}"
        );
        assert_eq!(d.runs().len(), 1);
        assert_eq!(d.poll(&devices, &BTreeMap::new(), at("2026-12-06T22:00:01Z")), vec!["ep1"]);
        d.wake_failed("ep1", "no relay on its subnet");
        let m = &d.runs()[0].run.results()[0];
        assert_eq!(m.state, MachineState::Failed);
        assert_eq!(m.reason.as_deref(), Some("no relay on its subnet"));
        assert_eq!(d.new_stages(), vec![("ep1".to_string(), Stage::Failed)]);
    }

    #[test]
    fn an_assignment_without_a_window_wakes_each_machine_that_lacks_it_once() {
        let cfg = ScheduleConfig { batch_size: 1, ..ScheduleConfig::default() };
        let mut d = Deliveries::new(cfg);
        let tools =
            vec![Assignment { name: "tools".into(), version: "1".into(), window: String::new() }];
        let tz = TimeZone::UTC;
        // Nobody to wake yet (the inventory is still empty): no run, and none spent.
        assert!(d.open(&tools, &[], "refl", &tz, at("2026-12-06T10:00:00Z")).is_empty());
        assert_eq!(d.next_deadline(), None);

        let inv = [
            device("ep1", "endpoint", true, &[], 0),
            device("ep2", "endpoint", true, &[], 0),
            device("ep3", "endpoint", true, &[], 0),
            device("ep0", "endpoint", true, &["tools@1"], 0),
        ];
        let devices: Vec<&DeviceEntry> = inv.iter().collect();
        let t0 = at("2026-12-06T10:00:05Z");
        let opened = d.open(&tools, &devices, "refl", &tz, t0);
        assert_eq!(
            opened,
            vec![Opening::Opened { layer: "tools@1".into(), window: String::new(), machines: 3 }],
            "ep0 holds it already"
        );
        assert!(d.open(&tools, &devices, "refl", &tz, at("2026-12-07T10:00:00Z")).is_empty());
        assert_eq!(d.runs().len(), 1, "one run, whenever it is looked at again");
        assert_eq!(d.status()[0].end, None, "no window, no end");
        assert_eq!(d.next_deadline(), Some(since_epoch(t0)), "the first batch is due at once");

        assert_eq!(d.poll(&devices, &BTreeMap::new(), t0), vec!["ep1"]);
        let next = d.next_deadline().expect("the next batch");
        assert_eq!(next, since_epoch(t0) + cfg.batch_interval);

        // ep2 fetched by itself before its batch: delivered, never woken.
        let later = [
            device("ep1", "endpoint", true, &[], 0),
            device("ep2", "endpoint", true, &["tools@1"], 0),
            device("ep3", "endpoint", true, &[], 0),
        ];
        let devices: Vec<&DeviceEntry> = later.iter().collect();
        let t1 = Timestamp::from_duration(next.try_into().unwrap()).unwrap();
        assert!(d.poll(&devices, &BTreeMap::new(), t1).is_empty(), "ep2 needs no wake");
        let ep2 = d.runs()[0].run.results().iter().find(|m| m.name == "ep2").unwrap().clone();
        assert_eq!((ep2.state, ep2.wakes), (MachineState::Delivered, 0));
        let t2 = Timestamp::from_duration((next + cfg.batch_interval).try_into().unwrap()).unwrap();
        assert_eq!(d.poll(&devices, &BTreeMap::new(), t2), vec!["ep3"]);

        // A machine the inventory learns later gets a run of its own; the others none again.
        let ep4 = device("ep4", "endpoint", true, &[], 0);
        let more = [later[0].clone(), later[1].clone(), later[2].clone(), ep4];
        let devices: Vec<&DeviceEntry> = more.iter().collect();
        let opened = d.open(&tools, &devices, "refl", &tz, t2);
        assert_eq!(
            opened,
            vec![Opening::Opened { layer: "tools@1".into(), window: String::new(), machines: 1 }]
        );
        assert_eq!(d.poll(&devices, &BTreeMap::new(), t2), vec!["ep4"]);

        // Finished a day ago: forgotten, and not opened again.
        for n in ["ep1", "ep3"] {
            d.runs[0].run.delivered(n, since_epoch(t2));
        }
        d.runs[1].run.delivered("ep4", since_epoch(t2));
        assert!(!d.active());
        d.retire(at("2026-12-08T00:00:00Z").as_second() as u64);
        assert!(d.runs().is_empty());
        assert!(d.open(&tools, &devices, "refl", &tz, at("2026-12-08T00:00:01Z")).is_empty());
    }
}
