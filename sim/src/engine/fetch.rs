//! The reflector's WAN fetcher: which pull next, in which class, and moving it under the
//! site's budget and unpaid window.

use super::*;

/// The reflector that pulls pull `p` over the WAN (`alive` not empty).
pub(super) fn owner_of(mesh: Option<&Mesh>, alive: &[u32], p: u32) -> u32 {
    match mesh {
        Some(m) => u32::from(m.fetcher[p as usize]),
        None => alive[0],
    }
}

/// Which live reflector pulls each pull over the WAN: [`site_fetcher`] (the site's leader, or
/// rendezvous hashing of the pull's id, over the live reflectors' peer refs), as every
/// reflector of the site computes it.
pub(super) fn assign_fetchers(m: &mut Mesh, alive: &[u32], pulls: &[Pull]) {
    let members: Vec<PeerRef> =
        alive.iter().map(|&r| m.wan[r as usize].place().me().clone()).collect();
    let place = m.wan[alive[0] as usize].place();
    let (sharing, site) = (place.sharing(), place.site().unwrap_or_default());
    for (p, pull) in pulls.iter().enumerate() {
        let f = site_fetcher(sharing, site, &pull.id, &members)
            .and_then(|f| m.wan.iter().position(|w| *w.place().me() == f))
            .unwrap_or(alive[0] as usize);
        m.fetcher[p] = f as u8;
    }
}

impl Engine<'_> {
    pub(super) fn set_wanting(&mut self, s: usize, v: bool) {
        if self.sites[s].wanting != v {
            self.sites[s].wanting = v;
            if v {
                self.wanting += 1;
            } else {
                self.wanting -= 1;
            }
        }
    }

    /// The reflector of `site` that pulls pull `p` over the WAN (`site.alive` not empty).
    pub(super) fn owner(site: &Site, p: u32) -> u32 {
        owner_of(site.mesh.as_ref(), &site.alive, p)
    }

    /// The next pull reflector `r` should fetch: (site layer, position, pull, class, the queue
    /// it was taken from: put it back there if it does not go now).
    pub(super) fn pick(&mut self, s: usize, r: usize) -> Option<Picked> {
        let look = self.lookahead_pulls;
        let site = &mut self.sites[s];
        let c = self.c;
        // The queue first (misses and cut transfers), foreground before background, as the
        // fetcher takes it: a pull the site holds or fetches by now is dropped; one that
        // cannot go yet (its layer's window is closed, or nobody waits for it any more and its
        // layer is not prefetched) keeps its place.
        let mut found = None;
        let mut waiting: Vec<((u32, u32), TrafficClass)> = Vec::new();
        for from in [TrafficClass::Foreground, TrafficClass::Background] {
            while found.is_none() {
                let Some(&(sl, k)) = site.refl[r].upstream.take(from, 1, |_| true).first() else {
                    break;
                };
                let layer = &c.layers[site.layers[sl as usize].layer];
                let p = layer.pulls[k as usize];
                if site.held[p as usize] > 0 || site.fetching[p as usize] > 0 {
                    continue;
                }
                let sll = &site.layers[sl as usize];
                if sll.open {
                    let waited = site.misses.waiters(&c.pulls[p as usize].id) > 0;
                    let fg = waited || (sll.active > 0 && k <= sll.lead.saturating_add(look));
                    if fg || sll.prefetch {
                        let class =
                            if fg { TrafficClass::Foreground } else { TrafficClass::Background };
                        found = Some((sl, k, p, class, Some(from)));
                    }
                }
                if found.is_none() {
                    waiting.push(((sl, k), from));
                }
            }
        }
        for (id, class) in waiting.into_iter().rev() {
            site.refl[r].upstream.want_again(id, class);
        }
        if found.is_some() {
            return found;
        }
        if !site.alive.contains(&(r as u32)) {
            return None;
        }
        for sl in 0..site.layers.len() {
            let sll = &site.layers[sl];
            if !sll.open {
                continue;
            }
            let layer = &c.layers[sll.layer];
            // Until the manifest's body is in, its pulls are all there is to ask for.
            let n = if layer.body_held(&site.held) {
                layer.pulls.len() as u32
            } else {
                layer.body_pulls
            };
            let mut cur = site.refl[r].cursor[sl];
            while cur < n {
                let p = layer.pulls[cur as usize];
                if site.held[p as usize] > 0
                    || site.fetching[p as usize] > 0
                    || Self::owner(site, p) as usize != r
                {
                    cur += 1;
                    continue;
                }
                break;
            }
            site.refl[r].cursor[sl] = cur;
            if cur >= n {
                continue;
            }
            let fg = sll.active > 0 && cur <= sll.lead.saturating_add(look);
            if fg || sll.prefetch {
                let class = if fg { TrafficClass::Foreground } else { TrafficClass::Background };
                return Some((sl as u32, cur, layer.pulls[cur as usize], class, None));
            }
        }
        None
    }

    pub(super) fn fetch_loop(&mut self, s: usize, r: usize) {
        let now = self.now();
        {
            let site = &mut self.sites[s];
            if !site.refl[r].alive || !site.link_up || site.alive.is_empty() {
                return;
            }
            if site.refl[r].fg_registered {
                site.refl[r].budget.foreground_waiting(-1);
                site.refl[r].fg_registered = false;
            }
        }
        self.pay_arrived(s, r);
        let conc = self.sc.model.fetch_concurrency;
        loop {
            if self.sites[s].refl[r].inflight >= conc {
                break;
            }
            let Some((sl, k, p, class, queued)) = self.pick(s, r) else {
                if self.sites[s].transfers.is_empty() {
                    self.set_wanting(s, false);
                }
                break;
            };
            self.set_wanting(s, true);
            let bytes = self.c.pulls[p as usize].bytes;
            let busy = self.active_sites + usize::from(self.sites[s].transfers.is_empty());
            let share = self.sc.seed_egress / busy.max(self.wanting) as f64;
            let site = &mut self.sites[s];
            let rf = &site.refl[r];
            // The rate in force now, as the fetcher reads its limiter's (the bucket's own is
            // brought up to date only when it is paid from).
            let unix = self.sc.start_unix + now.floor() as i64;
            let limit = window_limit(
                class,
                rf.budget.rate_at(unix),
                rf.budget.policy().background_share(),
                Duration::from_secs_f64(site.rtt),
            );
            if !rf.upstream.fits(class, limit, bytes) {
                // The unpaid window is full: the next payment makes room.
                if let Some(from) = queued {
                    site.refl[r].upstream.want_again((sl, k), from);
                }
                break;
            }
            let rate = site.link.min(share);
            let asked = now.max(rf.ready_at);
            // The manifest's root comes first, one round trip; the pull is asked for once it
            // is in.
            let root_at = site.layers[sl as usize].root_at.map_or(asked + site.rtt, |(t, _)| t);
            let pull_asked = asked.max(root_at);
            let mut start = (pull_asked + site.rtt).max(site.link_free);
            if !rf.started {
                // A fresh connection's slow start.
                start = start.max(pull_asked + site.rtt + site.start_lag);
            }
            let end = start + bytes as f64 / rate;
            if site.layers[sl as usize].open_until < end {
                // Would run past the delivery window's end: wait for the next opening.
                if let Some(from) = queued {
                    site.refl[r].upstream.want_again((sl, k), from);
                }
                if site.transfers.is_empty() {
                    self.set_wanting(s, false);
                }
                break;
            }
            if queued.is_none() {
                site.refl[r].cursor[sl as usize] = k + 1;
            }
            let asker = site.layers[sl as usize].root_at.map_or(r as u32, |(_, by)| by);
            site.layers[sl as usize].root_at = Some((root_at, asker));
            self.start_transfer(s, r, sl, k, p, class, start, end);
        }
    }

    /// Pays for the pulls reflector `r` received, as its fetcher pays for each chunk when it
    /// arrives: foreground first (its payment waits as foreground, ahead of background), each
    /// class in arrival order; each paid one frees its share of the window. When the budget
    /// makes one wait, the loop runs again when it may be paid.
    fn pay_arrived(&mut self, s: usize, r: usize) {
        let now_ns = self.now_ns;
        let unix = self.sc.start_unix + self.now().floor() as i64;
        let rf = &mut self.sites[s].refl[r];
        'pay: loop {
            for class in [TrafficClass::Foreground, TrafficClass::Background] {
                let Some(&bytes) = rf.unpaid[class as usize].front() else { continue };
                match rf.budget.try_acquire(class, bytes, Duration::from_nanos(now_ns), unix) {
                    Decision::Admit => {
                        rf.unpaid[class as usize].pop_front();
                        rf.upstream.paid(class, bytes, bytes);
                        rf.inflight -= 1;
                        continue 'pay;
                    }
                    Decision::Wait(d) => {
                        if class == TrafficClass::Foreground {
                            rf.budget.foreground_waiting(1);
                            rf.fg_registered = true;
                        }
                        let t = now_ns + (d.as_nanos() as u64).max(1);
                        let pa = rf.poll_at;
                        if !(pa > now_ns && pa <= t) {
                            rf.poll_at = t;
                            self.seq += 1;
                            self.heap.push(Reverse((
                                t,
                                self.seq,
                                Ev::Fetch { site: s as u32, r: r as u32, token: t },
                            )));
                        }
                        return;
                    }
                }
            }
            return;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_transfer(
        &mut self,
        s: usize,
        r: usize,
        sl: u32,
        k: u32,
        p: u32,
        class: TrafficClass,
        start: f64,
        end: f64,
    ) {
        let bin_s = self.sc.model.bin_s;
        let site = &mut self.sites[s];
        if site.transfers.is_empty() {
            self.active_sites += 1;
        }
        let bytes = self.c.pulls[p as usize].bytes;
        site.link_free = end;
        site.fetching[p as usize] = (r + 1) as u8;
        let id = self.c.pulls[p as usize].id;
        if !site.misses.is_pending(&id) {
            site.misses.begin(id, FETCHER);
        }
        site.refl[r].inflight += 1;
        site.refl[r].upstream.asked(class, bytes);
        site.refl[r].started = true;
        self.next_tid += 1;
        let tid = self.next_tid;
        site.transfers.push(Transfer {
            tid,
            r: r as u32,
            class,
            sl,
            k,
            pull: p,
            start,
            end,
            bytes,
        });
        site.wan_bytes += bytes as f64;
        site.pulls_started += 1;
        Self::add_bins(&mut site.bins, bin_s, start, end, bytes as f64);
        if let Some(w) = site.layers[sl as usize].sched {
            let closed = self.scheds[w].closed_within(start, end);
            site.outside += bytes as f64 * closed / (end - start).max(1e-12);
        }
        self.push(end, Ev::Arrive { site: s as u32, tid });
    }

    /// Aborts transfers of `site` matching `which`; returns nothing, accounts partial bytes.
    pub(super) fn abort(&mut self, s: usize, which: impl Fn(&Transfer) -> bool) {
        let now = self.now();
        let bin_s = self.sc.model.bin_s;
        let site = &mut self.sites[s];
        let was_busy = !site.transfers.is_empty();
        let mut kept = Vec::new();
        let mut again: Vec<(usize, (u32, u32), TrafficClass)> = Vec::new();
        for t in std::mem::take(&mut site.transfers) {
            if !which(&t) {
                kept.push(t);
                continue;
            }
            let dur = (t.end - t.start).max(1e-12);
            let from = now.max(t.start);
            let unsent = t.bytes as f64 * ((t.end - from) / dur).clamp(0.0, 1.0);
            site.wan_bytes -= unsent;
            site.wasted += t.bytes as f64 - unsent;
            Self::add_bins(&mut site.bins, bin_s, from, t.end, -unsent);
            if let Some(w) = site.layers[t.sl as usize].sched {
                let closed = self.scheds[w].closed_within(from, t.end);
                site.outside -= unsent * closed / (t.end - from).max(1e-12);
            }
            site.refl[t.r as usize].inflight -= 1;
            site.refl[t.r as usize].upstream.not_coming(t.class, t.bytes);
            site.fetching[t.pull as usize] = 0;
            let id = self.c.pulls[t.pull as usize].id;
            site.misses.prune(&id, |&w| w != FETCHER);
            if !site.alive.is_empty() {
                again.push((Self::owner(site, t.pull) as usize, (t.sl, t.k), t.class));
            }
        }
        // Back at the front of the queue in the order they were asked for, as the fetcher
        // puts back a failed batch's unanswered chunks.
        for (o, id, class) in again.into_iter().rev() {
            site.refl[o].upstream.want_again(id, class);
        }
        site.link_free = kept.iter().map(|t| t.end).fold(now, f64::max);
        site.transfers = kept;
        if was_busy && site.transfers.is_empty() {
            self.active_sites -= 1;
        }
    }

    pub(super) fn insert_cached(&mut self, s: usize, r: usize, p: u32) {
        let now = Duration::from_nanos(self.now_ns);
        let c = self.c;
        let site = &mut self.sites[s];
        let pull = &c.pulls[p as usize];
        let refl = &mut site.refl[r];
        if refl.has(p) {
            return;
        }
        refl.ledger.insert(pull.id, pull.bytes, now);
        refl.set(p, true);
        site.held[p as usize] += 1;
        if refl.ledger.total_bytes() > site.cache_cap {
            for id in refl.ledger.evict_candidates(site.cache_cap) {
                if let Some(b) = refl.ledger.remove(&id) {
                    site.evicted += b;
                    let q = c.index[&id];
                    refl.set(q, false);
                    site.held[q as usize] -= 1;
                }
            }
        }
    }
}
