//! Scheduled delivery: the site's [`Deliveries`] (the reflector's wake task's state machine)
//! driven with the virtual clock, the site's time zone and its endpoints as the inventory.

use super::*;

impl Engine<'_> {
    /// The virtual clock as the wall clock the reflector reads.
    fn wall_clock(&self) -> Timestamp {
        let ns = i128::from(self.sc.start_unix) * 1_000_000_000 + i128::from(self.now_ns);
        Timestamp::from_nanosecond(ns).unwrap_or(Timestamp::MAX)
    }

    /// Opens the runs of the site's assignments whose windows are open now (or that have no
    /// window and were not seen yet), then drives them.
    pub(super) fn open_deliveries(&mut self, s: usize) {
        let now = self.wall_clock();
        let Some(w) = self.sites[s].wake.as_mut() else { return };
        let devices: Vec<&DeviceEntry> = w.devices.iter().collect();
        w.deliveries.open(&w.assignments, &devices, "reflector", &w.tz, now);
        self.wake_poll(s);
    }

    /// Endpoint `e` registers with its reflector (it came online, or answered a wake).
    pub(super) fn registered(&mut self, s: usize, e: usize) {
        let now = since_epoch_of(self.wall_clock());
        if let Some(w) = self.sites[s].wake.as_mut() {
            w.seen.insert(e.to_string(), now);
        }
    }

    /// Drives the site's runs: feeds them the inventory (what each endpoint finished, who
    /// registered since its wake), sends the wakes that are due (a sleeping endpoint boots
    /// `boot_s` after its first packet, unless it never wakes; an awake one registers at
    /// once), records the runs that finished and schedules the next poll.
    pub(super) fn wake_poll(&mut self, s: usize) {
        let now_ns = self.now_ns;
        let now = self.wall_clock();
        let start_unix = self.sc.start_unix;
        let c = self.c;
        let site = &mut self.sites[s];
        let Some(w) = site.wake.as_mut() else { return };
        for (e, ep) in site.eps.iter().enumerate() {
            let finished = if ep.done_at.is_finite() { site.layers.len() } else { ep.pos as usize };
            let held = &mut w.devices[e].info.held;
            for sl in held.len()..finished {
                let a = &w.assignments[sl];
                debug_assert_eq!(a.name, c.layers[site.layers[sl].layer].name);
                held.push(format!("{}@{}", a.name, a.version));
            }
        }
        let mut boots: Vec<(u32, f64)> = Vec::new();
        loop {
            let devices: Vec<&DeviceEntry> = w.devices.iter().collect();
            let due = w.deliveries.poll(&devices, &w.seen, now);
            if due.is_empty() {
                break;
            }
            for name in due {
                let Ok(e) = name.parse::<usize>() else { continue };
                let ep = &mut site.eps[e];
                if !ep.asleep {
                    w.seen.insert(name, since_epoch_of(now));
                } else if !ep.never && !ep.booting {
                    ep.booting = true;
                    boots.push((e as u32, ep.boot_s));
                }
            }
        }
        let next = w.deliveries.next_deadline().map(|d| {
            (d.as_nanos() as u64).saturating_sub(start_unix.max(0) as u64 * 1_000_000_000)
        });
        let mut poll = None;
        if let Some(t) = next.filter(|&t| w.poll_at <= now_ns || t < w.poll_at) {
            w.poll_at = t.max(now_ns + 1);
            poll = Some(w.poll_at);
        }
        self.record_runs(s, false);
        if let Some(t) = poll {
            self.seq += 1;
            self.heap.push(Reverse((t, self.seq, Ev::WakePoll { site: s as u32 })));
        }
        let now = self.now();
        for (e, b) in boots {
            self.push(now + b, Ev::Boot { site: s as u32, e });
        }
    }

    /// Records the results of the site's finished runs (with `all`, of every run in the order
    /// they opened: the simulation ends, and a machine's newest run has the last word), each
    /// machine's latest in virtual seconds. A machine that will never
    /// come online and was failed by a run (not merely cut off by the window's end, after
    /// which the next opening tries again) has failed for good.
    pub(super) fn record_runs(&mut self, s: usize, all: bool) {
        let start = self.sc.start_unix as f64;
        let site = &mut self.sites[s];
        let Some(w) = site.wake.as_mut() else { return };
        let runs = w.deliveries.runs();
        w.recorded.resize(runs.len(), false);
        for (i, r) in runs.iter().enumerate() {
            if !all && (w.recorded[i] || !r.run.is_done()) {
                continue;
            }
            w.recorded[i] = true;
            for m in r.run.results() {
                let Ok(e) = m.name.parse::<usize>() else { continue };
                let mut m = m.clone();
                for t in [&mut m.woken_at, &mut m.online_at, &mut m.delivered_at] {
                    *t = t.map(|t| t - start);
                }
                let ep = &mut site.eps[e];
                let cut_off = !r.window.is_empty()
                    && m.reason.as_deref().is_some_and(|r| r.starts_with("window ended"));
                if m.state == MachineState::Failed
                    && ep.asleep
                    && ep.never
                    && !cut_off
                    && ep.failed.is_none()
                    && !ep.done_at.is_finite()
                {
                    ep.failed = Some(format!(
                        "wake failed: {}",
                        m.reason.as_deref().unwrap_or("did not come online")
                    ));
                    self.remaining -= 1;
                }
                w.last[e] = Some(m);
            }
        }
    }
}

/// `t` on the clock since the epoch that [`Deliveries`] keeps.
fn since_epoch_of(t: Timestamp) -> Duration {
    oasis_proto::wake::schedule::since_epoch(t)
}
