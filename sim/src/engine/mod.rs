//! The discrete-event engine behind `oasis-sim run`.
//!
//! Virtual clock, no sleeps: events sit in a binary heap ordered by (time in ns, sequence
//! number), so a run is a pure function of the scenario and the seed.
//!
//! # What is the real code, what is modelled
//!
//! * **Real code** (from `oasis-proto`, not reimplemented): the WAN token bucket with its two
//!   classes and schedule windows ([`WanBudget`], one per reflector), the bandwidth policy
//!   parser and schedule ([`BandwidthPolicy`]), delivery windows (the occurrences
//!   [`window_edges`] finds with the reflector's `window_at`, in the site's [`time_zone`]), cache
//!   eviction with pins ([`CacheLedger`], one per reflector, assigned layers pinned), miss
//!   coalescing ([`MissTable`], one per site: one WAN pull per piece per site, however many
//!   endpoints wait for it), the reflector mesh's gossip ([`GossipView`] fed real heartbeats
//!   with each reflector's WAN demand, its [`SiteWan`] rounds and `WanBudget::set_share` splitting
//!   the site's rate, [`site_fetcher`] choosing the one reflector that pulls each piece: the
//!   site's leader, or under `wan_sharing = "spread"` rendezvous hashing of the piece), source
//!   selection (`oasis_proto::select::rank`, the endpoint's ranking of its sources, for the
//!   first choice and the failover) and scheduled delivery ([`Deliveries`], the reflector's wake
//!   task's state machine: a run per opening of an assignment's window and one at the first
//!   sight of an assignment without a window, fed the site's inventory; its runs' batches,
//!   online timeout, rewakes, failures with their reasons).
//! * **Sleep**: a sleeping endpoint comes online `wake_delay` + jitter after the first magic
//!   packet a delivery run sends it, or never (`never_wakes`); an awake one registers at once
//!   when woken. Its inventory entry lists the layers it finished.
//! * **Granularity**: a layer is a list of synthetic chunks (deterministic sizes with a
//!   FastCDC-like spread around `model.chunk_avg`), grouped in content order into *pulls* of
//!   about `model.pull_bytes` (default 4 MiB ≈ 64 chunks). The WAN moves, admits, caches,
//!   evicts and coalesces whole pulls: one `try_acquire` per pull, one ledger entry per pull.
//!   Sharing (with the previous version, between layers) is decided per pull. Setting
//!   `model.pull_bytes` to the chunk size gives chunk-level fidelity (fine for one branch; a
//!   4 GiB layer is then 65k pulls per site).
//! * **WAN link**: per site, a FIFO pipe at the rate one connection under the transport's
//!   congestion controller reaches on the site's link (`wan_rate`, `wan_latency`,
//!   `wan_loss`): [`link_model::profile`] runs the real controller
//!   (`oasis_proto::congestion::Pipe`) over a packet-level model of that link once per
//!   group, which also gives the time a fresh connection's slow start costs at the site's
//!   policy rate, added to a reflector's first transfer (and again after the link comes back).
//!   A reflector's connection carries its first request two round trips (2 × `wan_latency`
//!   each) after the reflector comes up: the handshake, then the site's entitlement statement;
//!   when its link comes back, one (the handshake) if it held a statement by then. The first
//!   byte of a pull arrives one round trip after it is asked for, and a layer's first pull one
//!   more (the manifest's signed root). A reflector keeps at most `model.fetch_concurrency`
//!   pulls unpaid and, under a rate, pays for each when it arrives and asks for no more unpaid
//!   bytes than the window allows ([`UpstreamFetch`], the reflector's fetcher's state machine:
//!   the queue of misses, the window and the payment rule). Pulls that hold a manifest's body
//!   come before any other pull of the layer.
//! * **Seed egress**: shared by all sites in simple fair share — a pull's rate is fixed when
//!   it starts at `min(link, seed_egress / sites transferring)`.
//! * **LAN**: endpoints are fluid flows sharing `lan_rate` equally (each capped at
//!   `endpoint_rate`), bounded by what the site's reflectors hold (the first missing pull at or
//!   after an endpoint's position); an endpoint that reaches a missing pull registers in the
//!   miss table and waits.
//! * **Classes**: a pull within `model.lookahead` bytes of the most advanced endpoint on its
//!   layer is foreground (an endpoint is about to ask for it); the rest is background prefetch
//!   (when the assignment allows prefetch).
//! * Every site is simulated individually (no replication of identical sites).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;
use oasis_proto::cache::{Begin, CacheLedger, MissTable};
use oasis_proto::congestion::model::{self as link_model, Profile};
use oasis_proto::gossip::{Body, GossipMsg, GossipView, Heartbeat, Load, PeerRef};
use oasis_proto::policy::unpaid::window_limit;
use oasis_proto::policy::{time_zone, BandwidthPolicy, Decision, TrafficClass, WanBudget};
use oasis_proto::select::{self, ProbeAnswer, SourceCandidate, LOAD_BUCKET};
use oasis_proto::site_wan::{site_fetcher, SitePlace, SiteWan};
use oasis_proto::upstream_fetch::UpstreamFetch;
use oasis_proto::wake::delivery::Deliveries;
use oasis_proto::wake::msg::{DeviceEntry, DeviceInfo};
use oasis_proto::wake::schedule::{window_edges, MachineResult, MachineState};
use oasis_proto::wire::Assignment;
use oasis_proto::ChunkId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::report::{Stats, WakeStats};
use crate::scenario::{FailureKind, Scenario};

mod content;
mod fetch;
mod finish;
mod link;
mod mesh;
mod setup;
mod site;
mod wake;

use content::choose;
pub use content::{build_content, content_from_chunks, Content, LayerData, Pull};
use fetch::{assign_fetchers, owner_of};
use finish::finish;
use link::{Sched, SiteLink};

const NONE: u32 = u32::MAX;

/// Waiter registered in the miss table by the fetcher itself.
const FETCHER: u32 = u32::MAX;

const NS: f64 = 1e9;

/// Round trips a new reflector's upstream connection takes before it carries a request: the
/// QUIC handshake, then the site's entitlement statement.
const CONNECT_ROUND_TRIPS: f64 = 2.0;
/// The same when the link comes back to a reflector that holds its statement (it keeps it
/// across connections): the handshake alone.
const RECONNECT_ROUND_TRIPS: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Fetch {
        site: u32,
        r: u32,
        token: u64,
    },
    Arrive {
        site: u32,
        tid: u64,
    },
    Lan {
        site: u32,
        gen: u64,
    },
    Wake {
        site: u32,
    },
    /// A woken endpoint has booted and comes online.
    Boot {
        site: u32,
        e: u32,
    },
    /// The site's delivery runs have something due ([`Deliveries::next_deadline`]).
    WakePoll {
        site: u32,
    },
    /// The site's reflectors exchange heartbeats and recompute their WAN shares.
    Gossip {
        site: u32,
    },
    Edge {
        site: u32,
        sl: u32,
        idx: u32,
    },
    ReflDown {
        site: u32,
        r: u32,
    },
    LinkDown {
        site: u32,
    },
    LinkUp {
        site: u32,
    },
}

struct Refl {
    alive: bool,
    budget: WanBudget,
    ledger: CacheLedger,
    holds: Vec<u64>,
    /// Pulls asked for and not yet paid (in flight, or arrived and waiting for the budget).
    inflight: usize,
    /// The queue of pulls endpoints missed (or whose transfer was cut), the unpaid window and
    /// the payment rule, as the reflector's fetcher keeps them; a pull is queued as (site
    /// layer, position).
    upstream: UpstreamFetch<(u32, u32)>,
    /// Bytes of the pulls that arrived and are not yet paid for, per class (indexed by
    /// `TrafficClass as usize`), in arrival order.
    unpaid: [VecDeque<u64>; 2],
    /// Its connection upstream has carried data (slow start is behind it).
    started: bool,
    /// When its connection upstream can first carry a request, virtual seconds: a reflector
    /// that comes up connects, one round trip for the handshake, and asks for its site's
    /// entitlement statement, one more, before it serves an endpoint's request (it must know
    /// what the endpoint may fetch); when its link comes back, the handshake alone if it held a
    /// statement by then.
    ready_at: f64,
    /// It held its site's statement when its link last went down.
    stated: bool,
    fg_registered: bool,
    poll_at: u64,
    cursor: Vec<u32>,
}

impl Refl {
    fn has(&self, p: u32) -> bool {
        self.holds[(p / 64) as usize] >> (p % 64) & 1 == 1
    }
    fn set(&mut self, p: u32, v: bool) {
        let w = &mut self.holds[(p / 64) as usize];
        if v {
            *w |= 1 << (p % 64);
        } else {
            *w &= !(1 << (p % 64));
        }
    }
}

struct SLayer {
    layer: usize,
    sched: Option<usize>,
    prefetch: bool,
    open: bool,
    opened: bool,
    open_until: f64,
    lead: u32,
    active: u32,
    /// When the layer's signed manifest root reaches the site, and the reflector that asked
    /// for it (once it has been asked for).
    root_at: Option<(f64, u32)>,
}

#[derive(Clone)]
struct Ep {
    refl: u32,
    wake_at: f64,
    pos: u32,
    progress: f64,
    k: u32,
    bound_k: u32,
    bound: f64,
    rate: f64,
    waiting_on: u32,
    blocked_until: f64,
    done_at: f64,
    failed: Option<String>,
    /// Asleep: comes online only `boot_s` after a magic packet (and never if `never`).
    asleep: bool,
    booting: bool,
    never: bool,
    boot_s: f64,
}

/// A pull to fetch: (site layer, position, pull, class, the queue it was taken from).
type Picked = (u32, u32, u32, TrafficClass, Option<TrafficClass>);

struct Transfer {
    tid: u64,
    r: u32,
    class: TrafficClass,
    sl: u32,
    k: u32,
    pull: u32,
    start: f64,
    end: f64,
    bytes: u64,
}

/// The gossip between the reflectors of a site with more than one (what each reflector's
/// `oasis_proto::gossip::GossipView` holds; one view stands for all of them, since they all
/// receive the same heartbeats).
struct Mesh {
    view: GossipView,
    /// Per pull: the reflector that pulls it over the WAN ([`site_fetcher`] over `assigned`).
    fetcher: Vec<u8>,
    /// The reflectors the fetchers were named over: those the view listed then.
    assigned: Vec<u32>,
    /// Each reflector's site-WAN state machine (its peer, the site label in heartbeats, the
    /// sharing mode; leader, demand, share).
    wan: Vec<SiteWan>,
    /// WAN bytes arrived at the reflector since its last heartbeat.
    arrived: Vec<bool>,
    seq: u64,
    heartbeat_s: f64,
    /// Demand of a busy reflector: the site's policy rate (as reflector/src/mesh_link.rs).
    busy_demand: u64,
}

/// Scheduled delivery of a site with sleeping endpoints, as its reflector runs it: [`Deliveries`]
/// over the site's assignments and inventory (its endpoints, named by their index).
struct SiteWake {
    deliveries: Deliveries,
    /// The site's assignments as the reflector holds them, in site-layer order.
    assignments: Vec<Assignment>,
    /// Each endpoint's inventory entry; `held` grows as it finishes layers.
    devices: Vec<DeviceEntry>,
    /// When each endpoint last registered after a wake, on the clock since the epoch.
    seen: BTreeMap<String, Duration>,
    tz: jiff::tz::TimeZone,
    /// Runs whose results were recorded (they finished), by index in `deliveries.runs()`.
    recorded: Vec<bool>,
    poll_at: u64,
    /// Each endpoint's result in the last run that included it, in virtual seconds.
    last: Vec<Option<MachineResult>>,
}

struct Site {
    name: String,
    mesh: Option<Mesh>,
    wake: Option<SiteWake>,
    group: usize,
    /// What a connection under the transport's controller moves over the link, bytes/s.
    link: f64,
    /// What a connection's slow start costs at the site's policy rate, seconds.
    start_lag: f64,
    rtt: f64,
    lan: f64,
    ep_rate: f64,
    cache_cap: u64,
    refl: Vec<Refl>,
    alive: Vec<u32>,
    held: Vec<u8>,
    fetching: Vec<u8>,
    misses: MissTable<u32>,
    layers: Vec<SLayer>,
    eps: Vec<Ep>,
    link_up: bool,
    link_free: f64,
    /// Has WAN work it could start (counted in the seed's fair share).
    wanting: bool,
    transfers: Vec<Transfer>,
    lan_last: f64,
    lan_gen: u64,
    // results
    wan_bytes: f64,
    wasted: f64,
    outside: f64,
    evicted: u64,
    pulls_started: u64,
    unique: u64,
    needed: u64,
    bins: Vec<f32>,
}

/// Per-site results: the site's [`Stats`] (`sites` = 1) and its WAN rate bins.
#[derive(Clone, Debug)]
pub struct SiteResult {
    pub name: String,
    pub group: usize,
    pub stats: Stats,
    pub bins: Vec<f32>,
    /// Each endpoint's record in the last wake run that included it (sites with sleepers;
    /// `name` is the endpoint's index at the site).
    pub wake_machines: Vec<MachineResult>,
}

/// Everything a run produces.
pub struct Outcome {
    pub sites: Vec<SiteResult>,
    pub group_caps: Vec<Vec<f64>>,
    pub bin_s: f64,
    pub sim_seconds: f64,
    pub events: u64,
    pub seed_peak_ratio: Option<f64>,
    pub total_bins: Vec<f64>,
    pub layer_chunks: u64,
    pub pulls: usize,
}

struct Engine<'a> {
    sc: &'a Scenario,
    c: &'a Content,
    scheds: Vec<Sched>,
    sites: Vec<Site>,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    now_ns: u64,
    next_tid: u64,
    active_sites: usize,
    wanting: usize,
    /// (schedule, edge index) openings already announced to every site using them.
    announced: Vec<(usize, u32)>,
    remaining: usize,
    lookahead_pulls: u32,
    events: u64,
}

fn ns(t: f64) -> u64 {
    if t <= 0.0 {
        0
    } else {
        (t * NS).ceil() as u64
    }
}

impl Engine<'_> {
    fn push(&mut self, t: f64, ev: Ev) {
        let t = ns(t).max(self.now_ns);
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn now(&self) -> f64 {
        self.now_ns as f64 / NS
    }

    fn unix(&self) -> i64 {
        self.sc.start_unix + (self.now_ns / 1_000_000_000) as i64
    }

    fn add_bins(bins: &mut Vec<f32>, bin_s: f64, a: f64, b: f64, bytes: f64) {
        if b <= a {
            let i = (a / bin_s) as usize;
            if bins.len() <= i {
                bins.resize(i + 1, 0.0);
            }
            bins[i] += bytes as f32;
            return;
        }
        let rate = bytes / (b - a);
        let (i0, i1) = ((a / bin_s) as usize, (b / bin_s) as usize);
        if bins.len() <= i1 {
            bins.resize(i1 + 1, 0.0);
        }
        for (i, bin) in bins.iter_mut().enumerate().take(i1 + 1).skip(i0) {
            let lo = a.max(i as f64 * bin_s);
            let hi = b.min((i + 1) as f64 * bin_s);
            if hi > lo {
                *bin += (rate * (hi - lo)) as f32;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Fetch { site, r, token } => {
                let (s, r) = (site as usize, r as usize);
                if self.sites[s].refl[r].poll_at != token {
                    return;
                }
                self.sites[s].refl[r].poll_at = 0;
                self.fetch_loop(s, r);
            }
            Ev::Arrive { site, tid } => {
                let s = site as usize;
                let Some(i) = self.sites[s].transfers.iter().position(|t| t.tid == tid) else {
                    return;
                };
                let t = self.sites[s].transfers.swap_remove(i);
                if self.sites[s].transfers.is_empty() {
                    self.active_sites -= 1;
                }
                {
                    let st = &mut self.sites[s];
                    // Paid for on arrival (its budget may make it wait): until then it holds
                    // its share of the window and its place among the pulls in flight.
                    st.refl[t.r as usize].unpaid[t.class as usize].push_back(t.bytes);
                    st.fetching[t.pull as usize] = 0;
                    if let Some(m) = st.mesh.as_mut() {
                        m.arrived[t.r as usize] = true;
                    }
                }
                self.insert_cached(s, t.r as usize, t.pull);
                // Its siblings that serve endpoints still fetching ask it for the pull and keep
                // a copy (reflector/src/siblings.rs caches what it relays), so a reflector's
                // death loses only what no live sibling has passed on yet.
                let relays: Vec<usize> = {
                    let st = &self.sites[s];
                    st.alive
                        .iter()
                        .map(|&r| r as usize)
                        .filter(|&r| r != t.r as usize)
                        .filter(|&r| {
                            st.eps.iter().any(|e| {
                                e.refl as usize == r && !e.done_at.is_finite() && e.failed.is_none()
                            })
                        })
                        .collect()
                };
                for r in relays {
                    self.insert_cached(s, r, t.pull);
                }
                let id = self.c.pulls[t.pull as usize].id;
                for w in self.sites[s].misses.complete(&id) {
                    if w != FETCHER && self.sites[s].eps[w as usize].waiting_on == t.pull {
                        self.sites[s].eps[w as usize].waiting_on = NONE;
                    }
                }
                self.site_update(s);
                self.kick_all(s);
            }
            Ev::Lan { site, gen } => {
                let s = site as usize;
                if self.sites[s].lan_gen != gen {
                    return;
                }
                self.site_update(s);
                self.kick_all(s);
            }
            Ev::Wake { site } => {
                let s = site as usize;
                self.site_update(s);
                self.kick_all(s);
            }
            Ev::Boot { site, e } => {
                let s = site as usize;
                let now = self.now();
                let ep = &mut self.sites[s].eps[e as usize];
                ep.asleep = false;
                ep.booting = false;
                ep.wake_at = now;
                self.registered(s, e as usize);
                self.wake_poll(s);
                self.site_update(s);
                self.kick_all(s);
            }
            Ev::WakePoll { site } => self.wake_poll(site as usize),
            Ev::Gossip { site } => self.gossip_tick(site as usize),
            Ev::Edge { site, sl, idx } => {
                let s = site as usize;
                let w = self.sites[s].layers[sl as usize].sched.expect("edge of a window");
                let (t, open) = self.scheds[w].edges[idx as usize];
                let next = self.scheds[w].edges.get(idx as usize + 1).map(|e| e.0);
                {
                    let l = &mut self.sites[s].layers[sl as usize];
                    l.open = open;
                    l.opened |= open;
                    l.open_until =
                        if open { next.unwrap_or(f64::INFINITY) } else { f64::NEG_INFINITY };
                }
                let _ = t;
                if open && !self.announced.contains(&(w, idx)) {
                    // Every site using this window opens now: count them all in the seed's
                    // fair share before the first one starts pulling.
                    self.announced.push((w, idx));
                    for o in 0..self.sites.len() {
                        let uses = self.sites[o].layers.iter().any(|l| l.sched == Some(w));
                        if uses && self.sites[o].link_up && !self.sites[o].alive.is_empty() {
                            self.set_wanting(o, true);
                        }
                    }
                }
                if let Some(nt) = next {
                    if nt <= self.sc.duration_s {
                        self.push(nt, Ev::Edge { site, sl, idx: idx + 1 });
                    }
                }
                if open {
                    self.open_deliveries(s);
                }
                self.site_update(s);
                self.kick_all(s);
            }
            Ev::ReflDown { site, r } => self.reflector_down(site as usize, r as usize),
            Ev::LinkDown { site } => {
                let s = site as usize;
                self.sites[s].link_up = false;
                self.abort(s, |_| true);
                let now = self.now();
                for rf in &mut self.sites[s].refl {
                    rf.stated |= rf.ready_at <= now;
                }
                self.drop_unkept_roots(s, None);
                self.set_wanting(s, false);
            }
            Ev::LinkUp { site } => {
                let s = site as usize;
                self.sites[s].link_up = true;
                self.sites[s].link_free = self.now();
                // Connections upstream start over.
                let (now, rtt) = (self.now(), self.sites[s].rtt);
                for rf in &mut self.sites[s].refl {
                    rf.started = false;
                    let trips = if rf.stated { RECONNECT_ROUND_TRIPS } else { CONNECT_ROUND_TRIPS };
                    rf.ready_at = now + trips * rtt;
                }
                self.site_update(s);
                self.kick_all(s);
            }
        }
    }
}

/// Runs a scenario with a seed.
pub fn simulate(sc: &Scenario, seed: u64) -> Outcome {
    simulate_content(sc, seed, build_content(sc, seed))
}

/// Runs a scenario on the given content (see [`content_from_chunks`]).
pub fn simulate_content(sc: &Scenario, seed: u64, c: Content) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let horizon = sc.duration_s;
    let avg_pull = c.layers.iter().map(|l| l.bytes()).sum::<u64>() as f64
        / c.layers.iter().map(|l| l.pulls.len()).sum::<usize>().max(1) as f64;
    let lookahead_pulls = ((sc.model.lookahead as f64 / avg_pull.max(1.0)).ceil() as u32).max(1);
    let setup = setup::build_sites(sc, seed, &c, &mut rng);

    let remaining = setup.sites.iter().map(|s| s.eps.len()).sum();
    let mut eng = Engine {
        sc,
        c: &c,
        scheds: setup.windows.scheds,
        sites: setup.sites,
        heap: BinaryHeap::new(),
        seq: 0,
        now_ns: 0,
        next_tid: 0,
        active_sites: 0,
        wanting: 0,
        announced: Vec::new(),
        remaining,
        lookahead_pulls,
        events: 0,
    };
    eng.schedule_start();

    let horizon_ns = ns(horizon);
    while let Some(Reverse((t, _, ev))) = eng.heap.pop() {
        if t > horizon_ns || eng.remaining == 0 {
            break;
        }
        eng.now_ns = t;
        eng.events += 1;
        eng.handle(ev);
    }
    let sim_seconds = if eng.remaining == 0 { eng.now() } else { horizon.max(eng.now()) };

    finish(eng, &setup.group_policies, sim_seconds, &c)
}
