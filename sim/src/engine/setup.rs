//! Building a run: each site's layers and windows, reflectors with their budgets and warm
//! caches, endpoints (some asleep), its mesh; then the events the run starts with.

use super::*;

/// Delivery window schedules, shared by (window, timezone).
#[derive(Default)]
pub(super) struct Windows {
    index: BTreeMap<(String, String), usize>,
    pub(super) scheds: Vec<Sched>,
}

impl Windows {
    fn of(&mut self, window: &str, timezone: &str, start_unix: i64, horizon: f64) -> usize {
        let key = (window.to_string(), timezone.to_string());
        let scheds = &mut self.scheds;
        *self.index.entry(key).or_insert_with(|| {
            let sched = Sched::new(window, timezone, start_unix, horizon);
            scheds.push(sched.expect("validated when parsed"));
            scheds.len() - 1
        })
    }
}

/// What the sites start with.
pub(super) struct Setup {
    pub(super) sites: Vec<Site>,
    pub(super) windows: Windows,
    pub(super) group_policies: Vec<BandwidthPolicy>,
}

/// Builds every site of the scenario; `rng` draws which endpoints sleep and how they wake.
pub(super) fn build_sites(sc: &Scenario, seed: u64, c: &Content, rng: &mut StdRng) -> Setup {
    let n_pulls = c.pulls.len();
    let mut windows = Windows::default();
    let mut group_policies: Vec<BandwidthPolicy> = Vec::new();
    for g in &sc.groups {
        let mut p = g.policy.as_ref().unwrap_or(&sc.policy).policy.clone();
        p.ensure_burst_covers(c.max_chunk);
        group_policies.push(p);
    }
    let links: Vec<SiteLink> = sc.groups.iter().map(|g| SiteLink::of(g, seed)).collect();

    let mut sites = Vec::with_capacity(sc.total_sites());
    let mut seen = vec![false; n_pulls];
    for (gi, g) in sc.groups.iter().enumerate() {
        for i in 0..g.count {
            let name = g.site_name(i);
            let (layers, assignments) = site_layers(sc, g, &name, c, &mut windows);
            let nr = g.reflectors.max(1);
            let rtt = 2.0 * g.wan_latency_s;
            let policy = &group_policies[gi];
            let mut refl: Vec<Refl> = (0..nr)
                .map(|_| {
                    let budget = WanBudget::new(policy, Duration::ZERO, sc.start_unix);
                    Refl {
                        alive: true,
                        budget,
                        ledger: CacheLedger::new(),
                        holds: vec![0; n_pulls.div_ceil(64)],
                        inflight: 0,
                        upstream: UpstreamFetch::new(),
                        unpaid: [VecDeque::new(), VecDeque::new()],
                        started: false,
                        ready_at: CONNECT_ROUND_TRIPS * rtt,
                        stated: false,
                        fg_registered: false,
                        poll_at: 0,
                        cursor: vec![0; layers.len()],
                    }
                })
                .collect();
            let warm = warm_caches(c, g.cache, &layers, &mut refl, &mut seen);
            let ne = if layers.is_empty() { 0 } else { g.endpoints };
            let (eps, n_asleep) = endpoints(g, ne, rng);
            let link = &links[gi];
            let mesh = (nr > 1).then(|| site_mesh(sc, g, &name, sites.len(), policy, &mut refl, c));
            let wake = (n_asleep > 0).then(|| SiteWake {
                deliveries: Deliveries::new(g.wake),
                assignments,
                devices: (0..ne).map(|e| inventory_entry(e, &name)).collect(),
                seen: BTreeMap::new(),
                tz: time_zone(&g.timezone).unwrap_or(jiff::tz::TimeZone::UTC),
                recorded: Vec::new(),
                poll_at: 0,
                last: vec![None; ne],
            });
            sites.push(Site {
                name,
                mesh,
                wake,
                group: gi,
                link: link.rate,
                start_lag: link
                    .start_lag(policy.default_rate().map_or(f64::INFINITY, |r| r as f64)),
                rtt,
                lan: g.lan_rate,
                ep_rate: g.endpoint_rate,
                cache_cap: g.cache,
                alive: (0..nr as u32).collect(),
                refl: std::mem::take(&mut refl),
                held: warm.held,
                fetching: vec![0; n_pulls],
                misses: MissTable::new(),
                layers,
                eps,
                link_up: true,
                link_free: 0.0,
                wanting: false,
                transfers: Vec::new(),
                lan_last: 0.0,
                lan_gen: 0,
                wan_bytes: 0.0,
                wasted: 0.0,
                outside: 0.0,
                evicted: warm.evicted,
                pulls_started: 0,
                unique: warm.unique,
                needed: warm.needed,
                bins: Vec::new(),
            });
        }
    }
    Setup { sites, windows, group_policies }
}

/// The layers assigned to site `name` of group `g`, each with its delivery window, and the
/// same as the reflector's assignments.
fn site_layers(
    sc: &Scenario,
    g: &crate::scenario::GroupSpec,
    name: &str,
    c: &Content,
    windows: &mut Windows,
) -> (Vec<SLayer>, Vec<Assignment>) {
    let mut layers: Vec<SLayer> = Vec::new();
    let mut assignments = Vec::new();
    for a in &sc.assignments {
        if !a.sites.matches(&g.name, name) || layers.iter().any(|l| l.layer == a.layer) {
            continue;
        }
        assignments.push(Assignment {
            name: c.layers[a.layer].name.clone(),
            version: "1".into(),
            window: a.window.clone().unwrap_or_default(),
        });
        let sched =
            a.window.as_ref().map(|w| windows.of(w, &g.timezone, sc.start_unix, sc.duration_s));
        let (open, open_until) = match sched {
            None => (true, f64::INFINITY),
            Some(w) if windows.scheds[w].open_at_start => {
                (true, windows.scheds[w].edges.first().map_or(f64::INFINITY, |e| e.0))
            }
            Some(_) => (false, f64::NEG_INFINITY),
        };
        layers.push(SLayer {
            layer: a.layer,
            sched,
            prefetch: a.prefetch,
            open,
            opened: open,
            open_until,
            lead: 0,
            active: 0,
            root_at: None,
        });
    }
    (layers, assignments)
}

/// What a site's caches hold before the run, in bytes.
struct Warm {
    /// Per pull, how many of the site's reflectors hold it.
    held: Vec<u8>,
    /// The assigned layers' distinct bytes.
    unique: u64,
    /// Of those, what no reflector holds (the previous version lacks).
    needed: u64,
    /// What the cache cap evicted from the start.
    evicted: u64,
}

/// Pins the assigned layers in every reflector's cache, fills the caches with the previous
/// version's content, and evicts what is over the cap. `seen` is scratch space of one flag per
/// pull.
fn warm_caches(
    c: &Content,
    cache_cap: u64,
    layers: &[SLayer],
    refl: &mut [Refl],
    seen: &mut [bool],
) -> Warm {
    let n_pulls = c.pulls.len();
    // Pins for assigned layers, then the previous version's content.
    let mut unique = 0u64;
    let mut needed = 0u64;
    seen.iter_mut().for_each(|x| *x = false);
    let mut held = vec![0u8; n_pulls];
    for l in layers {
        let ld = &c.layers[l.layer];
        for &p in &ld.pulls {
            for rf in refl.iter_mut() {
                rf.ledger.pin(c.pulls[p as usize].id);
            }
        }
    }
    let mut prev_set = vec![false; 0];
    if layers.iter().any(|l| !c.layers[l.layer].prev.is_empty()) {
        prev_set = vec![false; n_pulls];
    }
    for l in layers {
        let ld = &c.layers[l.layer];
        for &p in ld.prev.iter().chain(ld.filler.iter()) {
            prev_set[p as usize] = true;
            for rf in refl.iter_mut() {
                if !rf.has(p) {
                    rf.ledger.insert(
                        c.pulls[p as usize].id,
                        c.pulls[p as usize].bytes,
                        Duration::ZERO,
                    );
                    rf.set(p, true);
                    held[p as usize] += 1;
                }
            }
        }
    }
    for l in layers {
        for &p in &c.layers[l.layer].pulls {
            if !seen[p as usize] {
                seen[p as usize] = true;
                unique += c.pulls[p as usize].bytes;
                if prev_set.get(p as usize) != Some(&true) {
                    needed += c.pulls[p as usize].bytes;
                }
            }
        }
    }
    // Over the cache cap from the start: evict the previous version's leftovers.
    let mut evicted = 0;
    for rf in refl.iter_mut() {
        if rf.ledger.total_bytes() > cache_cap {
            for id in rf.ledger.evict_candidates(cache_cap) {
                if let Some(b) = rf.ledger.remove(&id) {
                    evicted += b;
                    let q = c.index[&id];
                    rf.set(q, false);
                    held[q as usize] -= 1;
                }
            }
        }
    }
    Warm { held, unique, needed, evicted }
}

/// Endpoint `e`'s entry in its site's inventory: a machine with a MAC, holding nothing yet.
fn inventory_entry(e: usize, site: &str) -> DeviceEntry {
    DeviceEntry {
        info: DeviceInfo {
            name: e.to_string(),
            role: "endpoint".into(),
            site: site.into(),
            agent_version: String::new(),
            macs: vec![[2, 0, 0, 0, 0, 1]],
            addrs: Vec::new(),
            wake_to: None,
            relay: None,
            held: Vec::new(),
        },
        last_seen: 0,
        reported_by: "reflector".into(),
    }
}

/// A site's `ne` endpoints: a shuffled `asleep` fraction sleeps until woken by the site's wake
/// run; it then boots in wake_delay (+ jitter), or never (probability never_wakes). Returns
/// them and how many sleep.
fn endpoints(g: &crate::scenario::GroupSpec, ne: usize, rng: &mut StdRng) -> (Vec<Ep>, usize) {
    let n_asleep = (g.asleep * ne as f64).round() as usize;
    let asleep: Vec<usize> = choose(rng, ne, n_asleep);
    let mut eps = Vec::with_capacity(ne);
    let mut ai = 0;
    for _ in 0..ne {
        let e = eps.len();
        let (mut wake_at, mut boot_s, mut never) = (0.0, 0.0, false);
        let sleeps = ai < asleep.len() && asleep[ai] == e;
        if sleeps {
            ai += 1;
            wake_at = f64::INFINITY;
            boot_s = g.wake_delay_s + g.wake_jitter_s * rng.gen::<f64>();
            never = rng.gen::<f64>() < g.never_wakes;
        }
        eps.push(Ep {
            refl: NONE,
            asleep: sleeps,
            booting: false,
            never,
            boot_s,
            wake_at,
            pos: 0,
            progress: 0.0,
            k: 0,
            bound_k: 0,
            bound: 0.0,
            rate: 0.0,
            waiting_on: NONE,
            blocked_until: 0.0,
            done_at: f64::INFINITY,
            failed: None,
        });
    }
    (eps, n_asleep)
}

/// The mesh of a site of several reflectors, as it stands when the run starts: the site has
/// been up for a while, so every view lists every reflector, under `leader` the leader has
/// claimed the rate for rounds, and under `spread` no reflector has demand yet. Sets each
/// reflector's budget share accordingly ([`SiteWan::settle`]).
fn site_mesh(
    sc: &Scenario,
    g: &crate::scenario::GroupSpec,
    name: &str,
    site_no: usize,
    policy: &BandwidthPolicy,
    refl: &mut [Refl],
    c: &Content,
) -> Mesh {
    let nr = refl.len();
    let busy_demand = policy.default_rate().unwrap_or(u64::from(u32::MAX)).max(1);
    let label = format!("site-{site_no}");
    let heartbeat = Duration::from_secs_f64(g.mesh_heartbeat_s);
    let peers: Vec<PeerRef> =
        (0..nr).map(|r| PeerRef(format!("{name}/reflector-{r}").into_bytes())).collect();
    let mut wan: Vec<SiteWan> = peers
        .iter()
        .map(|p| SiteWan::new(SitePlace::new(Some(&label), g.wan_sharing, p.clone()), heartbeat))
        .collect();
    let mut view = GossipView::new(heartbeat);
    let heartbeat_msg = |seq: u64, r: usize, demand: u64| GossipMsg {
        seq,
        body: Body::Heartbeat(Heartbeat {
            site: Some(label.clone()),
            serving_addr: Some(format!("127.0.0.1:{}", 7000 + r)),
            load: Load { wan_demand: demand, ..Load::default() },
            heartbeat_ms: (g.mesh_heartbeat_s * 1000.0) as u32,
        }),
    };
    // First who is in the site, then what each has claimed for rounds in the view that gives.
    let publish = |view: &mut GossipView, seq: u64, demands: &[u64]| {
        for (r, d) in demands.iter().enumerate() {
            view.apply(&heartbeat_msg(seq, r, *d), &peers[r], Duration::ZERO)
                .expect("a simulated heartbeat is well formed");
        }
    };
    publish(&mut view, 1, &vec![0; nr]);
    let claims: Vec<u64> = wan.iter().map(|w| w.demand(&view, false, busy_demand)).collect();
    publish(&mut view, 2, &claims);
    let seq = 2;
    for (rf, w) in refl.iter_mut().zip(wan.iter_mut()) {
        let settled = w.settle(&view, busy_demand);
        rf.budget.set_share(settled.share, Duration::ZERO, sc.start_unix);
    }
    let mut m = Mesh {
        view,
        fetcher: vec![0; c.pulls.len()],
        assigned: Vec::new(),
        wan,
        arrived: vec![false; nr],
        seq,
        heartbeat_s: g.mesh_heartbeat_s,
        busy_demand,
    };
    let all: Vec<u32> = (0..nr as u32).collect();
    assign_fetchers(&mut m, &all, &c.pulls);
    m.assigned = all;
    m
}

impl Engine<'_> {
    /// The events a run starts with: sites with work at t=0 count in the seed's fair share from
    /// the start; endpoints pick a reflector; gossip, wake runs (when their window is open or
    /// there is none), window edges and the scenario's failures are scheduled.
    pub(super) fn schedule_start(&mut self) {
        for s in 0..self.sites.len() {
            if self.sites[s].needed > 0 && self.sites[s].layers.iter().any(|l| l.open) {
                self.set_wanting(s, true);
            }
            let site = &mut self.sites[s];
            for e in 0..site.eps.len() {
                site.eps[e].refl = Engine::choose_reflector(site, e).unwrap_or(NONE);
            }
            if site.mesh.is_some() && !site.eps.is_empty() {
                self.push(0.0, Ev::Gossip { site: s as u32 });
            }
            self.open_deliveries(s);
            for sl in 0..self.sites[s].layers.len() {
                if let Some(w) = self.sites[s].layers[sl].sched {
                    if let Some(&(t, _)) = self.scheds[w].edges.first() {
                        self.push(t, Ev::Edge { site: s as u32, sl: sl as u32, idx: 0 });
                    }
                }
            }
            self.push(0.0, Ev::Wake { site: s as u32 });
        }
        let sc = self.sc;
        for f in &sc.failures {
            for s in 0..self.sites.len() {
                let g = &sc.groups[self.sites[s].group];
                if !f.sites.matches(&g.name, &self.sites[s].name) {
                    continue;
                }
                match f.kind {
                    FailureKind::ReflectorDown { reflector, at_s } => {
                        self.push(at_s, Ev::ReflDown { site: s as u32, r: reflector as u32 })
                    }
                    FailureKind::WanDown { from_s, to_s } => {
                        self.push(from_s, Ev::LinkDown { site: s as u32 });
                        self.push(to_s, Ev::LinkUp { site: s as u32 });
                    }
                }
            }
        }
    }
}
