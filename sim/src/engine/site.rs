//! A site's LAN: endpoints following what the reflectors hold, their choice of reflector, and
//! a reflector going down.

use super::*;

impl Engine<'_> {
    /// Advances the LAN fluid model of site `s` to now and re-plans it.
    pub(super) fn site_update(&mut self, s: usize) {
        let now = self.now();
        let c = self.c;
        let ep_cap = self.sites[s].ep_rate;
        let site = &mut self.sites[s];
        let dt = now - site.lan_last;
        if dt > 0.0 {
            for ep in site.eps.iter_mut() {
                if ep.rate > 0.0 {
                    ep.progress = ep.progress.max((ep.progress + ep.rate * dt).min(ep.bound));
                }
            }
        }
        site.lan_last = now;
        for l in site.layers.iter_mut() {
            l.lead = 0;
            l.active = 0;
        }
        let mut flowing = 0usize;
        let mut kicks: Vec<u32> = Vec::new();
        // A layer finished by some endpoint: the site's deliveries see it in the inventory.
        let mut held_more = false;
        let n_layers = site.layers.len() as u32;
        for (ei, ep) in site.eps.iter_mut().enumerate() {
            ep.rate = 0.0;
            if ep.failed.is_some()
                || ep.done_at.is_finite()
                || now < ep.wake_at
                || now < ep.blocked_until
            {
                continue;
            }
            loop {
                let sl = &mut site.layers[ep.pos as usize];
                if !sl.opened {
                    break;
                }
                let layer = &c.layers[sl.layer];
                let n = layer.pulls.len() as u32;
                while ep.k < n && (layer.cum[ep.k as usize + 1] as f64) <= ep.progress + 0.5 {
                    ep.k += 1;
                }
                if ep.k >= n {
                    ep.pos += 1;
                    held_more = true;
                    ep.progress = 0.0;
                    ep.k = 0;
                    ep.bound_k = 0;
                    ep.waiting_on = NONE;
                    if ep.pos >= n_layers {
                        ep.done_at = now;
                        self.remaining -= 1;
                        break;
                    }
                    continue;
                }
                sl.active += 1;
                sl.lead = sl.lead.max(ep.k);
                ep.bound_k = ep.bound_k.max(ep.k);
                while ep.bound_k < n && site.held[layer.pulls[ep.bound_k as usize] as usize] > 0 {
                    ep.bound_k += 1;
                }
                ep.bound = layer.cum[ep.bound_k as usize] as f64;
                if ep.progress >= ep.bound - 0.5 {
                    let p = layer.pulls[ep.bound_k as usize];
                    if ep.waiting_on != p {
                        ep.waiting_on = p;
                        if site.misses.begin(c.pulls[p as usize].id, ei as u32) == Begin::Leader
                            && site.fetching[p as usize] == 0
                            && !site.alive.is_empty()
                        {
                            let o = owner_of(site.mesh.as_ref(), &site.alive, p);
                            let miss = (ep.pos, ep.bound_k);
                            site.refl[o as usize].upstream.want(miss, TrafficClass::Foreground);
                            if !kicks.contains(&o) {
                                kicks.push(o);
                            }
                        }
                    }
                } else {
                    ep.rate = 1.0; // marked flowing; set below
                    flowing += 1;
                }
                break;
            }
        }
        let mut next = f64::INFINITY;
        if flowing > 0 {
            let each = (site.lan / flowing as f64).min(ep_cap);
            for ep in site.eps.iter_mut() {
                if ep.rate > 0.0 {
                    ep.rate = each;
                    next = next.min((ep.bound - ep.progress) / each);
                }
            }
        }
        if next.is_finite() {
            site.lan_gen += 1;
            let gen = site.lan_gen;
            let t = now + next.max(0.0) + 1e-9;
            self.push(t, Ev::Lan { site: s as u32, gen });
        }
        if held_more {
            self.wake_poll(s);
        }
    }

    /// Picks (with `oasis_proto::select::rank`, as the endpoint ranks its probed sources) the
    /// reflector endpoint `e` uses: the site's reflectors are its sources, all of its site and
    /// subnet; a dead one does not answer the probe; the probe time of a live one stands for
    /// its load, here one [`LOAD_BUCKET`] per endpoint it serves. None: no reflector answers.
    pub(super) fn choose_reflector(site: &Site, e: usize) -> Option<u32> {
        let mut served = vec![0u32; site.refl.len()];
        for (i, ep) in site.eps.iter().enumerate() {
            let serving = !ep.done_at.is_finite() && ep.failed.is_none();
            if i != e && serving && ep.refl != NONE && site.refl[ep.refl as usize].alive {
                served[ep.refl as usize] += 1;
            }
        }
        let cands: Vec<SourceCandidate<'_>> = site
            .refl
            .iter()
            .enumerate()
            .map(|(r, rf)| SourceCandidate {
                position: r,
                answered: rf.alive.then(|| ProbeAnswer {
                    is_seed: false,
                    site: Some(site.name.as_str()),
                    same_subnet: true,
                    latency: LOAD_BUCKET * served[r],
                }),
            })
            .collect();
        let best = *select::rank(&cands, Some(site.name.as_str())).first()?;
        cands[best].answered.is_some().then_some(best as u32)
    }

    pub(super) fn kick_all(&mut self, s: usize) {
        for i in 0..self.sites[s].alive.len() {
            let r = self.sites[s].alive[i] as usize;
            self.fetch_loop(s, r);
        }
    }

    /// Names the fetchers of the site's pulls anew over `members` (the reflectors its gossip
    /// view lists), and hands the misses that waited on a reflector no longer listed to the
    /// new fetchers.
    pub(super) fn reassign(&mut self, s: usize, members: Vec<u32>) {
        let c = self.c;
        let site = &mut self.sites[s];
        let Some(m) = site.mesh.as_mut() else { return };
        assign_fetchers(m, &members, &c.pulls);
        m.assigned = members;
        let gone: Vec<usize> =
            (0..site.refl.len()).filter(|r| !m.assigned.contains(&(*r as u32))).collect();
        for &a in &site.alive {
            site.refl[a as usize].cursor.iter_mut().for_each(|c| *c = 0);
        }
        for r in gone {
            for ((sl, k), class) in site.refl[r].upstream.drain_queued() {
                let p = c.layers[site.layers[sl as usize].layer].pulls[k as usize];
                let o = Self::owner(site, p) as usize;
                site.refl[o].upstream.want((sl, k), class);
            }
        }
        self.kick_all(s);
    }

    /// Forgets the manifest roots site `s` no longer has once a connection is gone: with
    /// `None` its link's (every root still on its way, and every root whose body is not all
    /// in, since a reflector keeps a manifest only once its body is), with `Some(r)` reflector
    /// `r`'s (the roots it asked for that are still on their way).
    pub(super) fn drop_unkept_roots(&mut self, s: usize, r: Option<usize>) {
        let now = self.now();
        let site = &mut self.sites[s];
        for l in &mut site.layers {
            let Some((at, by)) = l.root_at else { continue };
            let lost = match r {
                None => at > now || !self.c.layers[l.layer].body_held(&site.held),
                Some(r) => at > now && by as usize == r,
            };
            if lost {
                l.root_at = None;
            }
        }
    }

    pub(super) fn reflector_down(&mut self, s: usize, r: usize) {
        if r >= self.sites[s].refl.len() || !self.sites[s].refl[r].alive {
            return;
        }
        let now = self.now();
        self.site_update(s);
        self.sites[s].refl[r].alive = false;
        self.sites[s].alive.retain(|&a| a as usize != r);
        self.abort(s, |t| t.r as usize == r);
        self.drop_unkept_roots(s, Some(r));
        let failover = self.sc.model.failover_s;
        let site = &mut self.sites[s];
        // Its cache is gone.
        let n_pulls = self.c.pulls.len() as u32;
        for p in 0..n_pulls {
            if site.refl[r].has(p) {
                site.held[p as usize] -= 1;
            }
        }
        site.refl[r].holds.iter_mut().for_each(|w| *w = 0);
        site.refl[r].ledger = CacheLedger::new();
        if site.alive.is_empty() {
            for ep in site.eps.iter_mut() {
                if ep.failed.is_none() && !ep.done_at.is_finite() {
                    ep.failed = Some("no reflector alive at the site".into());
                    self.remaining -= 1;
                }
            }
            return;
        }
        // The dead one keeps its pulls, and the misses waiting on them, until the survivors'
        // view lets its heartbeat expire (three intervals) and names their new fetchers
        // (`gossip_tick` → `reassign`), as the reflectors' siblings wait for the leader until
        // their view names the next one. Without a mesh the one survivor pulls everything.
        if site.mesh.is_none() {
            let a = site.alive[0] as usize;
            for (id, class) in site.refl[r].upstream.drain_queued() {
                site.refl[a].upstream.want(id, class);
            }
        }
        for ep in site.eps.iter_mut() {
            ep.bound_k = ep.k;
            ep.waiting_on = NONE;
            if ep.refl as usize == r {
                ep.refl = NONE;
            }
        }
        // Its endpoints fail over: each ranks the site's reflectors again (the dead one does
        // not answer the probe) and switches after `failover_delay`.
        for i in 0..site.eps.len() {
            if site.eps[i].refl == NONE {
                site.eps[i].refl = Self::choose_reflector(site, i).unwrap_or(NONE);
                site.eps[i].blocked_until = site.eps[i].blocked_until.max(now + failover);
            }
        }
        self.push(now + failover, Ev::Wake { site: s as u32 });
        self.site_update(s);
        self.kick_all(s);
    }
}
