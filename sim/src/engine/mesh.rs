//! The site's mesh: heartbeats into each reflector's gossip view, WAN demand and shares.

use super::*;

impl Engine<'_> {
    /// One heartbeat round of the site's reflectors, as reflector/src/mesh_link.rs runs it:
    /// each live reflector runs its [`SiteWan`] round on the gossip view as it stands (the
    /// others' last heartbeats; busy while WAN work waits or WAN bytes arrived since the last
    /// round), sets the share on its [`WanBudget`] and publishes its demand in a real
    /// [`Heartbeat`] applied to the [`GossipView`]; silent (dead) reflectors expire after three
    /// heartbeats.
    pub(super) fn gossip_tick(&mut self, s: usize) {
        let now_ns = self.now_ns;
        let now_d = Duration::from_nanos(now_ns);
        let unix = self.unix();
        let site = &mut self.sites[s];
        let Some(m) = site.mesh.as_mut() else { return };
        m.seq += 1;
        let mut raised = Vec::new();
        let mut sent = Vec::new();
        for &r in &site.alive {
            let r = r as usize;
            let rf = &mut site.refl[r];
            let busy =
                rf.inflight > 0 || rf.poll_at > now_ns || rf.upstream.queued() > 0 || m.arrived[r];
            m.arrived[r] = false;
            let before = m.wan[r].share();
            let round = m.wan[r].round(now_d, &m.view, busy, m.busy_demand);
            if round.changed {
                rf.budget.set_share(round.share, now_d, unix);
                if round.share > before {
                    raised.push(r);
                }
            }
            sent.push((r, round.demand));
        }
        for (r, demand) in sent {
            let msg = GossipMsg {
                seq: m.seq,
                body: Body::Heartbeat(Heartbeat {
                    site: m.wan[r].place().site().map(str::to_string),
                    serving_addr: Some(format!("127.0.0.1:{}", 7000 + r)),
                    load: Load { wan_demand: demand, ..Load::default() },
                    heartbeat_ms: (m.heartbeat_s * 1000.0) as u32,
                }),
            };
            if let Err(e) = m.view.apply(&msg, m.wan[r].place().me(), now_d) {
                tracing::warn!(site = %site.name, error = %e, "simulated heartbeat refused");
            }
        }
        m.view.expire(now_d);
        // The reflectors the view lists (a dead one until its heartbeat expires): when that
        // changes, the pulls get new fetchers.
        let listed = site.alive.first().map(|&a| m.wan[a as usize].place().members(&m.view));
        let mut members: Vec<u32> = listed
            .unwrap_or_default()
            .iter()
            .filter_map(|p| m.wan.iter().position(|w| w.place().me() == p).map(|r| r as u32))
            .collect();
        members.sort_unstable();
        let reassign = (members != m.assigned && !members.is_empty()).then_some(members);
        let more = site.eps.iter().any(|e| !e.done_at.is_finite() && e.failed.is_none());
        // The site's reflectors run their rounds together, at the deadline their state
        // machines set.
        let next = site.alive.iter().map(|&r| m.wan[r as usize].next_round()).min();
        if let Some(next) = next.filter(|_| more) {
            self.push(next.as_secs_f64(), Ev::Gossip { site: s as u32 });
        }
        if let Some(members) = reassign {
            self.reassign(s, members);
        }
        // A larger share may admit what waits on the budget now.
        for r in raised {
            self.fetch_loop(s, r);
        }
    }
}
