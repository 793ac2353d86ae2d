//! Scheduled delivery: the site's runs ([`Deliveries`], pure) driven with the clock, the
//! policy's zone and the inventory, their stages counted in the metrics and their results
//! written to `STATE/wake/runs.json`.

use super::*;
use oasis_core::wake::delivery::{Opening, Stage};

impl WakeState {
    /// Opens runs for the assignments whose windows are open, feeds them what the inventory
    /// shows, and returns the machines whose wakes are due.
    pub(super) fn drive_runs(&mut self, fixed: &Fixed) -> Vec<String> {
        let now = jiff::Timestamp::now();
        // The policy's own zone grammar (IANA names, "UTC", "+02:00"); the name passed it when
        // the policy was loaded.
        let tz =
            oasis_core::policy::time_zone(&(self.timezone)()).unwrap_or(jiff::tz::TimeZone::UTC);
        let devices: Vec<&DeviceEntry> = self.devices.values().collect();
        let me = &fixed.me.name;
        for o in self.deliveries.open(&self.assignments, &devices, me, &tz, now) {
            match o {
                Opening::Opened { layer, window, machines } if window.is_empty() => {
                    tracing::info!(%layer, machines, "assignment without a window: waking the site")
                }
                Opening::Opened { layer, window, machines } => {
                    tracing::info!(%layer, %window, machines, "delivery window open: waking the site")
                }
                Opening::Refused { layer, problem } => {
                    tracing::warn!(%layer, error = %problem, "assignment window refused")
                }
            }
        }
        self.deliveries.poll(&devices, &self.seen, now)
    }

    /// The wakes of a batch that failed, as (machine, reason).
    pub(super) fn wake_failed(&mut self, failures: Vec<(String, String)>) {
        for (name, reason) in failures {
            tracing::warn!(device = %name, %reason, "wake failed");
            self.deliveries.wake_failed(&name, &reason);
        }
    }

    /// Counts what the runs reached in the metrics and writes `runs.json`.
    pub(super) fn record_runs(&mut self, metrics: &WakeMetrics) {
        for (_, stage) in self.deliveries.new_stages() {
            match stage {
                Stage::Woken => metrics.woken.inc(),
                Stage::Online => metrics.online.inc(),
                Stage::Delivered => metrics.delivered.inc(),
                Stage::Failed => metrics.failed.inc(),
            };
        }
        let status = self.deliveries.status();
        metrics.runs_active.set(status.iter().filter(|r| !r.done).count() as i64);
        // Finished runs older than a day are dropped from memory.
        self.deliveries.retire(unix_now().saturating_sub(86_400));
        if let Err(e) = write_json(&self.dir.join("runs.json"), &status) {
            tracing::warn!(error = %e, "cannot write the wake run status");
        }
    }
}
