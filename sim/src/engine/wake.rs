//! Scheduled wakes: the site's wake run, its polls and its end.

use super::*;

impl Engine<'_> {
    /// Starts a wake run over the site's unfinished endpoints (its delivery window opened).
    pub(super) fn start_wake_run(&mut self, s: usize) {
        self.end_wake_run(s);
        let now_d = Duration::from_nanos(self.now_ns);
        let site = &mut self.sites[s];
        let Some(w) = site.wake.as_mut() else { return };
        let end =
            w.sl.map(|sl| site.layers[sl].open_until)
                .filter(|e| e.is_finite())
                .map(|e| Duration::from_nanos(ns(e)));
        let names: Vec<String> = site
            .eps
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.done_at.is_finite() && e.failed.is_none())
            .map(|(i, _)| i.to_string())
            .collect();
        if names.is_empty() {
            return;
        }
        w.run = Some(WakeRun::new(names, now_d, end, w.cfg));
        w.poll_at = 0;
        self.wake_poll(s);
    }

    /// Drives the site's wake run: sends the wakes that are due (a sleeping endpoint boots
    /// `boot_s` after its first packet, unless it never wakes; an awake one answers at once),
    /// and schedules the next poll.
    pub(super) fn wake_poll(&mut self, s: usize) {
        let now_ns = self.now_ns;
        let now_d = Duration::from_nanos(now_ns);
        let site = &mut self.sites[s];
        let Some(w) = site.wake.as_mut() else { return };
        let Some(run) = w.run.as_mut() else { return };
        let mut boots: Vec<(u32, f64)> = Vec::new();
        for name in run.poll(now_d) {
            let Ok(e) = name.parse::<usize>() else { continue };
            let ep = &mut site.eps[e];
            if !ep.asleep {
                run.online(&name, now_d);
            } else if !ep.never && !ep.booting {
                ep.booting = true;
                boots.push((e as u32, ep.boot_s));
            }
        }
        let done = run.is_done();
        let next = run.next_deadline().map(|d| d.as_nanos() as u64);
        let mut poll = None;
        if let Some(t) = next.filter(|&t| !done && (w.poll_at <= now_ns || t < w.poll_at)) {
            w.poll_at = t.max(now_ns + 1);
            poll = Some(w.poll_at);
        }
        if done {
            self.end_wake_run(s);
        }
        if let Some(t) = poll {
            self.seq += 1;
            self.heap.push(Reverse((t, self.seq, Ev::WakePoll { site: s as u32 })));
        }
        let now = self.now();
        for (e, b) in boots {
            self.push(now + b, Ev::Boot { site: s as u32, e });
        }
    }

    /// Records the results of the site's finished (or superseded) wake run. A machine that
    /// will never come online and was failed by it (not merely cut off by the window's end,
    /// after which the next opening tries again) has failed for good.
    pub(super) fn end_wake_run(&mut self, s: usize) {
        let site = &mut self.sites[s];
        let Some(w) = site.wake.as_mut() else { return };
        let Some(run) = w.run.take() else { return };
        for m in run.results() {
            let Ok(e) = m.name.parse::<usize>() else { continue };
            w.last[e] = Some(m.clone());
            let ep = &mut site.eps[e];
            let cut_off = w.sl.is_some()
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
        }
    }
}
