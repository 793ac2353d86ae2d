//! Scheduled delivery: a wake run per assignment whose delivery window is open, fed what the
//! inventory shows, and its per-machine results recorded in `STATE/wake/runs.json`.

use super::*;

impl WakeState {
    /// Starts runs for the assignments whose windows are open, feeds them what the inventory
    /// shows, and returns the machines whose wakes are due.
    pub(super) fn drive_runs(&mut self, fixed: &Fixed) -> Vec<String> {
        let now_ts = jiff::Timestamp::now();
        let now = schedule::since_epoch(now_ts);
        let tz_name = (self.timezone)();
        // The policy's own zone grammar (IANA names, "UTC", "+02:00"); the name passed it when
        // the policy was loaded.
        let tz = oasis_core::policy::time_zone(&tz_name).unwrap_or(jiff::tz::TimeZone::UTC);
        let devices: Vec<&DeviceEntry> = self.devices.values().collect();
        {
            let runs = &mut self.runs;
            for a in self.assignments.iter().filter(|a| !a.window.is_empty()) {
                let (start, end) = match schedule::window_at(&a.window, &tz, now_ts) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(layer = %a.name, error = %e, "assignment window refused");
                        continue;
                    }
                };
                let layer = format!("{}@{}", a.name, a.version);
                let start_s = start.as_second().max(0) as u64;
                if now_ts < start || runs.iter().any(|r| r.layer == layer && r.start == start_s) {
                    continue;
                }
                let machines: Vec<String> = devices
                    .iter()
                    .filter(|d| d.info.name != fixed.me.name && !d.info.macs.is_empty())
                    .filter(|d| d.info.role == "endpoint" || d.info.role == "reflector")
                    .map(|d| d.info.name.clone())
                    .collect();
                tracing::info!(%layer, window = %a.window, machines = machines.len(), "delivery window open: waking the site");
                let mut run = WakeRun::new(
                    machines,
                    schedule::since_epoch(start),
                    Some(schedule::since_epoch(end)),
                    fixed.settings.schedule,
                );
                // Machines that already hold the layer need no wake.
                for d in &devices {
                    if d.info.held.contains(&layer) {
                        run.delivered(&d.info.name, now);
                    }
                }
                runs.push(ActiveRun {
                    layer,
                    window: a.window.clone(),
                    start: start_s,
                    end: end.as_second().max(0) as u64,
                    run,
                    counted: BTreeSet::new(),
                });
            }
        }
        let mut to_wake: BTreeSet<String> = BTreeSet::new();
        let seen = &self.seen;
        for r in self.runs.iter_mut().filter(|r| !r.run.is_done()) {
            for d in &devices {
                let Some(m) = r.run.results().iter().find(|m| m.name == d.info.name) else {
                    continue;
                };
                // Registered here after the wake, or (at a sibling) a later second.
                let seen_after_wake = m.woken_at.is_some_and(|w| {
                    seen.get(&d.info.name).is_some_and(|t| t.as_secs_f64() >= w)
                        || d.last_seen as f64 > w.floor()
                });
                if seen_after_wake {
                    r.run.online(&d.info.name, now);
                    if d.info.role == "reflector" || d.info.held.contains(&r.layer) {
                        r.run.delivered(&d.info.name, now);
                    }
                }
            }
            to_wake.extend(r.run.poll(now));
        }
        to_wake.into_iter().collect()
    }

    /// The wakes of a batch that failed, as (machine, reason).
    pub(super) fn wake_failed(&mut self, failures: Vec<(String, String)>) {
        for (name, reason) in failures {
            tracing::warn!(device = %name, %reason, "wake failed");
            for r in self.runs.iter_mut() {
                r.run.wake_failed(&name, reason.clone());
            }
        }
    }

    /// Counts what the runs reached in the metrics and writes `runs.json`.
    pub(super) fn record_runs(&mut self, metrics: &WakeMetrics) {
        let mut active = 0;
        let mut out = Vec::new();
        for r in self.runs.iter_mut() {
            if !r.run.is_done() {
                active += 1;
            }
            for m in r.run.results() {
                let state = match m.state {
                    schedule::MachineState::Waiting => None,
                    schedule::MachineState::Woken => Some("woken"),
                    schedule::MachineState::Online => Some("online"),
                    schedule::MachineState::Delivered => Some("delivered"),
                    schedule::MachineState::Failed => Some("failed"),
                };
                // Count each machine once per stage it reached.
                let stages: &[&'static str] = match state {
                    Some("woken") => &["woken"],
                    Some("online") => &["woken", "online"],
                    Some("delivered") => &["woken", "online", "delivered"],
                    Some("failed") => &["failed"],
                    _ => &[],
                };
                for s in stages {
                    if *s == "woken" && m.wakes == 0 {
                        continue;
                    }
                    if r.counted.insert((m.name.clone(), s)) {
                        match *s {
                            "woken" => metrics.woken.inc(),
                            "online" => metrics.online.inc(),
                            "delivered" => metrics.delivered.inc(),
                            _ => metrics.failed.inc(),
                        };
                    }
                }
            }
            out.push(RunStatus {
                layer: r.layer.clone(),
                window: r.window.clone(),
                start: r.start,
                end: r.end,
                done: r.run.is_done(),
                machines: r
                    .run
                    .results()
                    .iter()
                    .map(|m: &MachineResult| serde_json::to_value(m).unwrap_or_default())
                    .collect(),
            });
        }
        metrics.runs_active.set(active);
        // Finished runs older than a day are dropped from memory.
        let cutoff = unix_now().saturating_sub(86_400);
        self.runs.retain(|r| !r.run.is_done() || r.end > cutoff);
        if let Err(e) = write_json(&self.dir.join("runs.json"), &out) {
            tracing::warn!(error = %e, "cannot write the wake run status");
        }
    }
}
