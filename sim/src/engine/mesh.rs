//! The site's mesh: heartbeats into each reflector's gossip view, WAN demand and shares.

use super::*;

impl Engine<'_> {
    /// One heartbeat round of the site's reflectors, as reflector/src/mesh_link.rs runs it:
    /// each live reflector publishes its WAN demand ([`ShareRounds::demand`]: under `spread`
    /// the policy rate while WAN work waits or WAN bytes arrived since the last round, under
    /// `leader` the rate while it is the site's leader; else 0) in a real [`Heartbeat`] applied
    /// to the [`GossipView`]; silent (dead) reflectors expire after three heartbeats; each
    /// computes its share with [`ShareRounds::round`] (reflector/src/siblings.rs `tick`) and
    /// sets it on its [`WanBudget`].
    pub(super) fn gossip_tick(&mut self, s: usize) {
        let now = self.now();
        let now_ns = self.now_ns;
        let now_d = Duration::from_nanos(now_ns);
        let unix = self.unix();
        let site = &mut self.sites[s];
        let Some(m) = site.mesh.as_mut() else { return };
        m.seq += 1;
        let mut mine = vec![0u64; site.refl.len()];
        let members: Vec<PeerRef> =
            site.alive.iter().map(|&r| m.peers[r as usize].clone()).collect();
        let leader = site_leader(&m.label, &members);
        for &r in &site.alive {
            let r = r as usize;
            let rf = &site.refl[r];
            let busy =
                rf.inflight > 0 || rf.poll_at > now_ns || !rf.demand.is_empty() || m.arrived[r];
            m.arrived[r] = false;
            let leader_is_me = leader.as_ref() == Some(&m.peers[r]);
            let demand = ShareRounds::demand(m.sharing, busy, leader_is_me, m.busy_demand);
            mine[r] = demand;
            let msg = GossipMsg {
                seq: m.seq,
                body: Body::Heartbeat(Heartbeat {
                    site: Some(m.label.clone()),
                    serving_addr: Some(format!("127.0.0.1:{}", 7000 + r)),
                    load: Load { wan_demand: demand, ..Load::default() },
                    heartbeat_ms: (m.heartbeat_s * 1000.0) as u32,
                }),
            };
            if let Err(e) = m.view.apply(&msg, &m.peers[r], now_d) {
                tracing::warn!(site = %site.name, error = %e, "simulated heartbeat refused");
            }
        }
        m.view.expire(now_d);
        let live = m.view.live_peers(&m.label);
        let mut raised = Vec::new();
        for &r in &site.alive {
            let r = r as usize;
            let demands: Vec<u64> = live
                .iter()
                .filter(|p| **p != m.peers[r])
                .filter_map(|p| m.view.peer(p).map(|x| x.load.wan_demand))
                .collect();
            let share = m.rounds[r].round(m.sharing, mine[r], &demands);
            if (share - m.share[r]).abs() > 1e-6 {
                site.refl[r].budget.set_share(share, now_d, unix);
                if share > m.share[r] {
                    raised.push(r);
                }
                m.share[r] = share;
            }
        }
        let more = site.eps.iter().any(|e| !e.done_at.is_finite() && e.failed.is_none());
        let next = now + m.heartbeat_s;
        if more && !site.alive.is_empty() {
            self.push(next, Ev::Gossip { site: s as u32 });
        }
        // A larger share may admit what waits on the budget now.
        for r in raised {
            self.fetch_loop(s, r);
        }
    }
}
