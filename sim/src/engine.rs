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
//!   with each reflector's WAN demand, [`ShareRounds`] and `WanBudget::set_share` splitting
//!   the site's rate, [`site_fetcher`] choosing the one reflector that pulls each piece: the
//!   site's leader, or under `wan_sharing = "spread"` rendezvous hashing of the piece), source
//!   selection (`oasis_proto::select::rank`, the endpoint's ranking of its sources, for the
//!   first choice and the failover) and scheduled wakes ([`WakeRun`]: batches, online timeout,
//!   rewakes, failures with their reasons).
//! * **Sleep**: a sleeping endpoint comes online `wake_delay` + jitter after the first magic
//!   packet its site's wake run sends it, or never (`never_wakes`). Runs start when the delivery
//!   window of the site's first windowed assignment opens (t = 0 without windows).
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
//!   The first byte of a pull arrives one round trip (2 × `wan_latency`) after it is admitted,
//!   and a layer's first pull one more (the manifest's signed root). A reflector keeps at most
//!   `model.fetch_concurrency` pulls in flight and, under a rate, no more bytes than the unpaid
//!   window of `oasis_proto::policy::unpaid` (the reflector's fetcher uses the same one). Pulls
//!   that hold a manifest's body come before any other pull of the layer.
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
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use oasis_proto::cache::{Begin, CacheLedger, MissTable};
use oasis_proto::congestion::model::{self as link_model, Profile};
use oasis_proto::gossip::{Body, GossipMsg, GossipView, Heartbeat, Load, PeerRef};
use oasis_proto::policy::unpaid::window_limit;
use oasis_proto::policy::{time_zone, BandwidthPolicy, Decision, TrafficClass, WanBudget};
use oasis_proto::select::{self, ProbeAnswer, SourceCandidate, LOAD_BUCKET};
use oasis_proto::site_wan::{site_fetcher, site_leader, ShareRounds, WanSharing};
use oasis_proto::wake::schedule::{
    window_edges, MachineResult, MachineState, ScheduleConfig, WakeRun,
};
use oasis_proto::ChunkId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::report::{Stats, WakeStats};
use crate::scenario::{FailureKind, Scenario};

const NONE: u32 = u32::MAX;
/// Waiter registered in the miss table by the fetcher itself.
const FETCHER: u32 = u32::MAX;
const NS: f64 = 1e9;

/// A unit of WAN transfer: consecutive chunks of a layer.
#[derive(Clone, Debug)]
pub struct Pull {
    pub id: ChunkId,
    pub bytes: u64,
    pub chunks: u32,
}

#[derive(Clone, Debug)]
pub struct LayerData {
    pub name: String,
    pub pulls: Vec<u32>,
    /// Prefix sums of pull sizes (len = pulls + 1).
    pub cum: Vec<u64>,
    /// Pulls already cached at every reflector (shared with the previous version).
    pub prev: Vec<u32>,
    /// The previous version's other pulls (cached, unpinned: first to be evicted).
    pub filler: Vec<u32>,
    pub chunks: u64,
    /// Its first pulls that hold the manifest's body: a reflector learns the layer's chunk
    /// ids from them, so it asks for no other pull before they are in.
    pub body_pulls: u32,
}

impl LayerData {
    fn bytes(&self) -> u64 {
        *self.cum.last().unwrap_or(&0)
    }
}

/// The synthetic content of a scenario.
pub struct Content {
    pub pulls: Vec<Pull>,
    pub layers: Vec<LayerData>,
    pub max_chunk: u64,
    pub index: HashMap<ChunkId, u32>,
}

fn pull_id(seed: u64, tag: &str, a: usize, b: usize) -> ChunkId {
    let mut h = blake3::Hasher::new();
    h.update(b"oasis-sim pull");
    h.update(&seed.to_le_bytes());
    h.update(tag.as_bytes());
    h.update(&(a as u64).to_le_bytes());
    h.update(&(b as u64).to_le_bytes());
    ChunkId(*h.finalize().as_bytes())
}

/// Selection sampling: exactly `k` of `n` indices, in order.
fn choose(rng: &mut StdRng, n: usize, k: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(k);
    let mut need = k.min(n);
    for i in 0..n {
        if need == 0 {
            break;
        }
        if rng.gen_range(0..(n - i)) < need {
            out.push(i);
            need -= 1;
        }
    }
    out
}

/// Builds deterministic synthetic layers: chunk sizes between avg/4 and 4·avg (exponential
/// spread, as content-defined chunking gives), grouped into pulls.
pub fn build_content(sc: &Scenario, seed: u64) -> Content {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6f61_7369_735f_6c61);
    let avg = sc.model.chunk_avg as f64;
    let (min, max) = (avg / 4.0, avg * 4.0);
    let mut pulls: Vec<Pull> = Vec::new();
    let mut layers: Vec<LayerData> = Vec::new();
    let mut max_chunk = 0u64;
    for (li, spec) in sc.layers.iter().enumerate() {
        let shared_f = spec.shared_with.map_or(0.0, |(_, f)| f);
        let own_bytes = (spec.size as f64 * (1.0 - shared_f)).round() as u64;
        let mut own: Vec<u32> = Vec::new();
        let mut chunks_total = 0u64;
        let (mut acc, mut acc_chunks, mut left) = (0u64, 0u32, own_bytes);
        while left > 0 {
            let x = min + (-(1.0 - rng.gen::<f64>()).ln()) * (avg - min);
            let c = (x.clamp(min, max) as u64).max(1).min(left);
            max_chunk = max_chunk.max(c);
            left -= c;
            acc += c;
            acc_chunks += 1;
            chunks_total += 1;
            if acc >= sc.model.pull_bytes || left == 0 {
                let k = own.len();
                pulls.push(Pull {
                    id: pull_id(seed, "layer", li, k),
                    bytes: acc,
                    chunks: acc_chunks,
                });
                own.push((pulls.len() - 1) as u32);
                acc = 0;
                acc_chunks = 0;
            }
        }
        // Pulls identical to pulls of an earlier layer, spliced in at random positions.
        let mut list = own.clone();
        if let Some((j, f)) = spec.shared_with {
            let other = &layers[j];
            let other_avg = other.bytes() as f64 / other.pulls.len().max(1) as f64;
            let want = ((spec.size as f64 * f) / other_avg.max(1.0)).round() as usize;
            let picked: Vec<u32> = choose(&mut rng, other.pulls.len(), want)
                .into_iter()
                .map(|i| other.pulls[i])
                .collect();
            chunks_total +=
                picked.iter().map(|&p| u64::from(pulls[p as usize].chunks)).sum::<u64>();
            let n = own.len() + picked.len();
            let positions = choose(&mut rng, n, picked.len());
            list = Vec::with_capacity(n);
            let (mut oi, mut si, mut pi) = (0, 0, 0);
            for i in 0..n {
                if pi < positions.len() && positions[pi] == i {
                    list.push(picked[si]);
                    si += 1;
                    pi += 1;
                } else {
                    list.push(own[oi]);
                    oi += 1;
                }
            }
        }
        // Shared with the previous version: already at every reflector.
        let n_prev = (spec.shared_with_previous * list.len() as f64).round() as usize;
        let prev: Vec<u32> =
            choose(&mut rng, list.len(), n_prev).into_iter().map(|i| list[i]).collect();
        let mut filler = Vec::new();
        if spec.shared_with_previous > 0.0 {
            let mut left = (spec.size as f64 * (1.0 - spec.shared_with_previous)) as u64;
            let mut k = 0;
            while left > 0 {
                let b = left.min(sc.model.pull_bytes.max(1));
                left -= b;
                pulls.push(Pull { id: pull_id(seed, "previous", li, k), bytes: b, chunks: 0 });
                filler.push((pulls.len() - 1) as u32);
                k += 1;
            }
        }
        let mut cum = Vec::with_capacity(list.len() + 1);
        cum.push(0);
        for &p in &list {
            cum.push(cum.last().copied().unwrap_or(0) + pulls[p as usize].bytes);
        }
        layers.push(LayerData {
            name: spec.name.clone(),
            pulls: list,
            cum,
            prev,
            filler,
            chunks: chunks_total,
            body_pulls: 0,
        });
    }
    let index = pulls.iter().enumerate().map(|(i, p)| (p.id, i as u32)).collect();
    Content { pulls, layers, max_chunk, index }
}

/// Opening/closing instants of one delivery window, precomputed up to the horizon.
struct Sched {
    open_at_start: bool,
    /// (virtual seconds, open after this edge)
    edges: Vec<(f64, bool)>,
}

impl Sched {
    /// A delivery window's openings and closings over the run, in virtual seconds: the
    /// occurrences the reflector's `wake::schedule::window_at` finds, one after another.
    fn new(window: &str, timezone: &str, start_unix: i64, horizon: f64) -> Result<Sched, String> {
        let tz = time_zone(timezone)?;
        let at = |s: i64| Timestamp::from_second(s).map_err(|e| e.to_string());
        let until = at(start_unix + horizon.ceil() as i64 + 1)?;
        let (open_at_start, edges) = window_edges(window, &tz, at(start_unix)?, until)?;
        let edges = edges.into_iter().map(|(t, o)| ((t.as_second() - start_unix) as f64, o));
        Ok(Sched { open_at_start, edges: edges.collect() })
    }

    /// Seconds of [a, b) during which the window is closed.
    fn closed_within(&self, a: f64, b: f64) -> f64 {
        if b <= a {
            return 0.0;
        }
        let mut open = self.open_at_start;
        let mut t = 0.0f64;
        let mut closed = 0.0;
        for &(e, o) in self.edges.iter().chain(std::iter::once(&(f64::INFINITY, true))) {
            // [t, e) has state `open`
            let lo = t.max(a);
            let hi = e.min(b);
            if hi > lo && !open {
                closed += hi - lo;
            }
            if e >= b {
                break;
            }
            t = e;
            open = o;
        }
        closed
    }
}

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
    /// The site's wake run has something due ([`WakeRun::next_deadline`]).
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
    inflight: usize,
    /// Bytes of the pulls in flight (bounded by the unpaid window under a rate).
    inflight_bytes: u64,
    /// Its connection upstream has carried data (slow start is behind it).
    started: bool,
    fg_registered: bool,
    poll_at: u64,
    cursor: Vec<u32>,
    /// (site layer, position) pulls to fetch first: endpoint misses and aborted transfers.
    demand: Vec<(u32, u32)>,
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
    /// The site has asked upstream for the layer's signed manifest root.
    root_asked: bool,
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

struct Transfer {
    tid: u64,
    r: u32,
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
    peers: Vec<PeerRef>,
    view: GossipView,
    /// The site label in heartbeats (a valid site name, whatever the scenario calls the site).
    label: String,
    /// Per pull: the reflector that pulls it over the WAN ([`site_fetcher`] over the live ones).
    fetcher: Vec<u8>,
    sharing: WanSharing,
    /// The WAN demands each reflector published in its last heartbeats.
    rounds: Vec<ShareRounds>,
    /// WAN bytes arrived at the reflector since its last heartbeat.
    arrived: Vec<bool>,
    share: Vec<f64>,
    seq: u64,
    heartbeat_s: f64,
    /// Demand of a busy reflector: the site's policy rate (as reflector/src/mesh_link.rs).
    busy_demand: u64,
}

/// Scheduled wakes of a site with sleeping endpoints: one [`WakeRun`] per opening of the
/// delivery window (one from t = 0 when the layers have no window).
struct SiteWake {
    cfg: ScheduleConfig,
    /// Site layer whose delivery window starts the runs.
    sl: Option<usize>,
    run: Option<WakeRun>,
    poll_at: u64,
    /// Each endpoint's result in the last run that included it.
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

    fn set_wanting(&mut self, s: usize, v: bool) {
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
    fn owner(site: &Site, p: u32) -> u32 {
        owner_of(site.mesh.as_ref(), &site.alive, p)
    }

    /// The next pull reflector `r` should fetch: (site layer, position, pull, class, from demand).
    fn pick(&mut self, s: usize, r: usize) -> Option<(u32, u32, u32, TrafficClass, bool)> {
        let look = self.lookahead_pulls;
        let site = &mut self.sites[s];
        let c = self.c;
        // Demand first.
        let mut i = 0;
        while i < site.refl[r].demand.len() {
            let (sl, k) = site.refl[r].demand[i];
            let layer = &c.layers[site.layers[sl as usize].layer];
            let p = layer.pulls[k as usize];
            if site.held[p as usize] > 0 || site.fetching[p as usize] > 0 {
                site.refl[r].demand.swap_remove(i);
                continue;
            }
            let sll = &site.layers[sl as usize];
            if sll.open {
                let waited = site.misses.waiters(&c.pulls[p as usize].id) > 0;
                let fg = waited || (sll.active > 0 && k <= sll.lead.saturating_add(look));
                if fg || sll.prefetch {
                    let class =
                        if fg { TrafficClass::Foreground } else { TrafficClass::Background };
                    return Some((sl, k, p, class, true));
                }
            }
            i += 1;
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
            let body = layer.pulls[..layer.body_pulls as usize].iter();
            // Until the manifest's body is in, its pulls are all there is to ask for.
            let n = if body.clone().all(|&p| site.held[p as usize] > 0) {
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
                return Some((sl as u32, cur, layer.pulls[cur as usize], class, false));
            }
        }
        None
    }

    fn fetch_loop(&mut self, s: usize, r: usize) {
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
        let conc = self.sc.model.fetch_concurrency;
        loop {
            if self.sites[s].refl[r].inflight >= conc {
                break;
            }
            let Some((sl, k, p, class, from_demand)) = self.pick(s, r) else {
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
            let limit = window_limit(
                class,
                rf.budget.current_rate(),
                rf.budget.policy().background_share(),
                Duration::from_secs_f64(site.rtt),
            );
            if rf.inflight_bytes > 0 && limit.is_some_and(|l| rf.inflight_bytes + bytes > l) {
                // The unpaid window is full: the next arrival makes room.
                break;
            }
            let rate = site.link.min(share);
            let mut start = (now + site.rtt).max(site.link_free);
            if !rf.started {
                // A fresh connection's slow start.
                start = start.max(now + site.rtt + site.start_lag);
            }
            if !site.layers[sl as usize].root_asked {
                // The manifest's root comes first, one round trip.
                start += site.rtt;
            }
            let end = start + bytes as f64 / rate;
            if site.layers[sl as usize].open_until < end {
                // Would run past the delivery window's end: wait for the next opening.
                if site.transfers.is_empty() {
                    self.set_wanting(s, false);
                }
                break;
            }
            let unix = self.sc.start_unix + now.floor() as i64;
            match site.refl[r].budget.try_acquire(
                class,
                bytes,
                Duration::from_nanos(self.now_ns),
                unix,
            ) {
                Decision::Admit => {
                    if from_demand {
                        site.refl[r].demand.retain(|&(a, b)| (a, b) != (sl, k));
                    } else {
                        site.refl[r].cursor[sl as usize] = k + 1;
                    }
                    self.start_transfer(s, r, sl, k, p, start, end);
                }
                Decision::Wait(d) => {
                    if class == TrafficClass::Foreground {
                        site.refl[r].budget.foreground_waiting(1);
                        site.refl[r].fg_registered = true;
                    }
                    let t = self.now_ns + (d.as_nanos() as u64).max(1);
                    let pa = site.refl[r].poll_at;
                    if !(pa > self.now_ns && pa <= t) {
                        site.refl[r].poll_at = t;
                        self.seq += 1;
                        self.heap.push(Reverse((
                            t,
                            self.seq,
                            Ev::Fetch { site: s as u32, r: r as u32, token: t },
                        )));
                    }
                    break;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_transfer(
        &mut self,
        s: usize,
        r: usize,
        sl: u32,
        k: u32,
        p: u32,
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
        site.refl[r].inflight_bytes += bytes;
        site.refl[r].started = true;
        site.layers[sl as usize].root_asked = true;
        self.next_tid += 1;
        let tid = self.next_tid;
        site.transfers.push(Transfer { tid, r: r as u32, sl, k, pull: p, start, end, bytes });
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
    fn abort(&mut self, s: usize, which: impl Fn(&Transfer) -> bool) {
        let now = self.now();
        let bin_s = self.sc.model.bin_s;
        let site = &mut self.sites[s];
        let was_busy = !site.transfers.is_empty();
        let mut kept = Vec::new();
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
            site.refl[t.r as usize].inflight_bytes -= t.bytes;
            site.fetching[t.pull as usize] = 0;
            let id = self.c.pulls[t.pull as usize].id;
            site.misses.prune(&id, |&w| w != FETCHER);
            if !site.alive.is_empty() {
                let o = Self::owner(site, t.pull) as usize;
                site.refl[o].demand.push((t.sl, t.k));
            }
        }
        site.link_free = kept.iter().map(|t| t.end).fold(now, f64::max);
        site.transfers = kept;
        if was_busy && site.transfers.is_empty() {
            self.active_sites -= 1;
        }
    }

    fn insert_cached(&mut self, s: usize, r: usize, p: u32) {
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

    /// Advances the LAN fluid model of site `s` to now and re-plans it.
    fn site_update(&mut self, s: usize) {
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
        let mut done_now: Vec<usize> = Vec::new();
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
                    ep.progress = 0.0;
                    ep.k = 0;
                    ep.bound_k = 0;
                    ep.waiting_on = NONE;
                    if ep.pos >= n_layers {
                        ep.done_at = now;
                        self.remaining -= 1;
                        done_now.push(ei);
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
                            site.refl[o as usize].demand.push((ep.pos, ep.bound_k));
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
        if !done_now.is_empty() {
            let now_d = Duration::from_nanos(self.now_ns);
            if let Some(run) = self.sites[s].wake.as_mut().and_then(|w| w.run.as_mut()) {
                for e in done_now {
                    run.delivered(&e.to_string(), now_d);
                }
                self.wake_poll(s);
            }
        }
    }

    /// Starts a wake run over the site's unfinished endpoints (its delivery window opened).
    fn start_wake_run(&mut self, s: usize) {
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
    fn wake_poll(&mut self, s: usize) {
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
    fn end_wake_run(&mut self, s: usize) {
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

    /// One heartbeat round of the site's reflectors, as reflector/src/mesh_link.rs runs it:
    /// each live reflector publishes its WAN demand ([`ShareRounds::demand`]: under `spread`
    /// the policy rate while WAN work waits or WAN bytes arrived since the last round, under
    /// `leader` the rate while it is the site's leader; else 0) in a real [`Heartbeat`] applied
    /// to the [`GossipView`]; silent (dead) reflectors expire after three heartbeats; each
    /// computes its share with [`ShareRounds::round`] (reflector/src/siblings.rs `tick`) and
    /// sets it on its [`WanBudget`].
    fn gossip_tick(&mut self, s: usize) {
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

    /// Picks (with `oasis_proto::select::rank`, as the endpoint ranks its probed sources) the
    /// reflector endpoint `e` uses: the site's reflectors are its sources, all of its site and
    /// subnet; a dead one does not answer the probe; the probe time of a live one stands for
    /// its load, here one [`LOAD_BUCKET`] per endpoint it serves. None: no reflector answers.
    fn choose_reflector(site: &Site, e: usize) -> Option<u32> {
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

    fn kick_all(&mut self, s: usize) {
        for i in 0..self.sites[s].alive.len() {
            let r = self.sites[s].alive[i] as usize;
            self.fetch_loop(s, r);
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
                    st.refl[t.r as usize].inflight -= 1;
                    st.refl[t.r as usize].inflight_bytes -= t.bytes;
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
                let now_d = Duration::from_nanos(self.now_ns);
                let now = self.now();
                let st = &mut self.sites[s];
                let ep = &mut st.eps[e as usize];
                ep.asleep = false;
                ep.booting = false;
                ep.wake_at = now;
                if let Some(run) = st.wake.as_mut().and_then(|w| w.run.as_mut()) {
                    run.online(&e.to_string(), now_d);
                }
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
                let wakes_here =
                    self.sites[s].wake.as_ref().is_some_and(|w| w.sl == Some(sl as usize));
                if open && wakes_here {
                    self.start_wake_run(s);
                }
                self.site_update(s);
                self.kick_all(s);
            }
            Ev::ReflDown { site, r } => self.reflector_down(site as usize, r as usize),
            Ev::LinkDown { site } => {
                let s = site as usize;
                self.sites[s].link_up = false;
                self.abort(s, |_| true);
                self.set_wanting(s, false);
            }
            Ev::LinkUp { site } => {
                let s = site as usize;
                self.sites[s].link_up = true;
                self.sites[s].link_free = self.now();
                // Connections upstream start over.
                for rf in &mut self.sites[s].refl {
                    rf.started = false;
                }
                self.site_update(s);
                self.kick_all(s);
            }
        }
    }

    fn reflector_down(&mut self, s: usize, r: usize) {
        if r >= self.sites[s].refl.len() || !self.sites[s].refl[r].alive {
            return;
        }
        let now = self.now();
        self.site_update(s);
        self.sites[s].refl[r].alive = false;
        self.sites[s].alive.retain(|&a| a as usize != r);
        self.abort(s, |t| t.r as usize == r);
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
        let demand = std::mem::take(&mut site.refl[r].demand);
        if site.alive.is_empty() {
            for ep in site.eps.iter_mut() {
                if ep.failed.is_none() && !ep.done_at.is_finite() {
                    ep.failed = Some("no reflector alive at the site".into());
                    self.remaining -= 1;
                }
            }
            return;
        }
        // The survivors split the dead one's pulls by rendezvous hashing over the live set
        // (siblings.rs: a sibling that does not answer is skipped and the chunk pulled by the
        // asker, so the new split holds from the death on). Their WAN shares follow the
        // gossip: the dead one's heartbeat expires after three intervals (`gossip_tick`).
        if let Some(m) = site.mesh.as_mut() {
            assign_fetchers(m, &site.alive, &self.c.pulls);
        }
        for &a in &site.alive {
            site.refl[a as usize].cursor.iter_mut().for_each(|c| *c = 0);
        }
        let c = self.c;
        for (sl, k) in demand {
            let p = c.layers[site.layers[sl as usize].layer].pulls[k as usize];
            let o = Self::owner(site, p) as usize;
            site.refl[o].demand.push((sl, k));
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

/// The reflector that pulls pull `p` over the WAN (`alive` not empty).
fn owner_of(mesh: Option<&Mesh>, alive: &[u32], p: u32) -> u32 {
    match mesh {
        Some(m) => u32::from(m.fetcher[p as usize]),
        None => alive[0],
    }
}

/// Which live reflector pulls each pull over the WAN: [`site_fetcher`] (the site's leader, or
/// rendezvous hashing of the pull's id, over the live reflectors' peer refs), as every
/// reflector of the site computes it.
fn assign_fetchers(m: &mut Mesh, alive: &[u32], pulls: &[Pull]) {
    let members: Vec<PeerRef> = alive.iter().map(|&r| m.peers[r as usize].clone()).collect();
    for (p, pull) in pulls.iter().enumerate() {
        let f = site_fetcher(m.sharing, &m.label, &pull.id, &members)
            .and_then(|f| m.peers.iter().position(|x| *x == f))
            .unwrap_or(alive[0] as usize);
        m.fetcher[p] = f as u8;
    }
}

/// Content of real layers: `chunks[i]` holds the unique chunks (id, size as sent) of the
/// scenario's layer `i` in manifest order, the first `body[i]` of them the manifest's body
/// chunks (a reflector fetches those first: they name the rest), grouped in that order into
/// pulls of about
/// `model.pull_bytes` (a pull of one chunk carries the chunk's id). The run then moves exactly
/// the bytes a live run of the same layers moves (`oasis-sim fidelity`). Sharing with a
/// previous version or between layers comes from the chunks themselves, not from the
/// scenario's `shared_*` keys.
pub fn content_from_chunks(
    sc: &Scenario,
    chunks: &[Vec<(ChunkId, u64)>],
    body: &[usize],
) -> Content {
    let mut pulls: Vec<Pull> = Vec::new();
    let mut index: HashMap<ChunkId, u32> = HashMap::new();
    let mut layers = Vec::new();
    let mut max_chunk = 0;
    for (li, list) in chunks.iter().enumerate() {
        let mut own: Vec<u32> = Vec::new();
        let mut group: Vec<(ChunkId, u64)> = Vec::new();
        let mut acc = 0;
        let body_chunks = body.get(li).copied().unwrap_or(0);
        let mut body_pulls = 0;
        for (i, &(id, len)) in list.iter().enumerate() {
            max_chunk = max_chunk.max(len);
            group.push((id, len));
            acc += len;
            // A pull ends at the body's end too: the body's pulls are exactly its chunks.
            if acc < sc.model.pull_bytes && i + 1 < list.len() && i + 1 != body_chunks {
                continue;
            }
            if i < body_chunks {
                body_pulls += 1;
            }
            let pid = if group.len() == 1 {
                group[0].0
            } else {
                let mut h = blake3::Hasher::new();
                h.update(b"oasis-sim pull of chunks");
                for (id, _) in &group {
                    h.update(&id.0);
                }
                ChunkId(*h.finalize().as_bytes())
            };
            let p = *index.entry(pid).or_insert_with(|| {
                pulls.push(Pull { id: pid, bytes: acc, chunks: group.len() as u32 });
                (pulls.len() - 1) as u32
            });
            own.push(p);
            group.clear();
            acc = 0;
        }
        let mut cum = Vec::with_capacity(own.len() + 1);
        cum.push(0);
        for &p in &own {
            cum.push(cum.last().copied().unwrap_or(0) + pulls[p as usize].bytes);
        }
        layers.push(LayerData {
            name: sc.layers.get(li).map_or_else(|| format!("layer{li}"), |l| l.name.clone()),
            pulls: own,
            cum,
            prev: Vec::new(),
            filler: Vec::new(),
            chunks: list.len() as u64,
            body_pulls,
        });
    }
    Content { pulls, layers, max_chunk, index }
}

/// Runs a scenario with a seed.
pub fn simulate(sc: &Scenario, seed: u64) -> Outcome {
    simulate_content(sc, seed, build_content(sc, seed))
}

/// What one upstream connection achieves on a group's WAN link: the real congestion
/// controller run over a packet-level model of the link ([`link_model::profile`]).
struct SiteLink {
    /// Chunk data per second.
    rate: f64,
    profile: Option<Profile>,
}

impl SiteLink {
    fn of(g: &crate::scenario::GroupSpec, seed: u64) -> SiteLink {
        if !g.wan_rate.is_finite() {
            return SiteLink { rate: f64::INFINITY, profile: None };
        }
        let rtt = Duration::from_secs_f64(2.0 * g.wan_latency_s);
        let link = link_model::Link::new(rtt, g.wan_rate, g.wan_loss);
        // The model runs on virtual time from any origin; the profile does not depend on it.
        let p = link_model::profile(&link, seed, std::time::Instant::now());
        SiteLink { rate: p.rate, profile: Some(p) }
    }

    /// Seconds a connection's start costs a transfer paced at `rate` bytes/s.
    fn start_lag(&self, rate: f64) -> f64 {
        self.profile.as_ref().map_or(0.0, |p| p.start_lag(rate).as_secs_f64())
    }
}

/// Runs a scenario on the given content (see [`content_from_chunks`]).
pub fn simulate_content(sc: &Scenario, seed: u64, c: Content) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let horizon = sc.duration_s;
    let n_pulls = c.pulls.len();
    let avg_pull = c.layers.iter().map(|l| l.bytes()).sum::<u64>() as f64
        / c.layers.iter().map(|l| l.pulls.len()).sum::<usize>().max(1) as f64;
    let lookahead_pulls = ((sc.model.lookahead as f64 / avg_pull.max(1.0)).ceil() as u32).max(1);

    // Delivery window schedules, shared by (window, timezone).
    let mut sched_index: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut scheds: Vec<Sched> = Vec::new();
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
            let mut layers: Vec<SLayer> = Vec::new();
            for a in &sc.assignments {
                if !a.sites.matches(&g.name, &name) || layers.iter().any(|l| l.layer == a.layer) {
                    continue;
                }
                let sched = a.window.as_ref().map(|w| {
                    let key = (w.clone(), g.timezone.clone());
                    *sched_index.entry(key).or_insert_with(|| {
                        let sched = Sched::new(w, &g.timezone, sc.start_unix, horizon);
                        scheds.push(sched.expect("validated when parsed"));
                        scheds.len() - 1
                    })
                });
                let (open, open_until) = match sched {
                    None => (true, f64::INFINITY),
                    Some(w) if scheds[w].open_at_start => {
                        (true, scheds[w].edges.first().map_or(f64::INFINITY, |e| e.0))
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
                    root_asked: false,
                });
            }
            let nr = g.reflectors.max(1);
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
                        inflight_bytes: 0,
                        started: false,
                        fg_registered: false,
                        poll_at: 0,
                        cursor: vec![0; layers.len()],
                        demand: Vec::new(),
                    }
                })
                .collect();
            // Pins for assigned layers, then the previous version's content.
            let mut unique = 0u64;
            let mut needed = 0u64;
            seen.iter_mut().for_each(|x| *x = false);
            let mut held = vec![0u8; n_pulls];
            for l in &layers {
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
            for l in &layers {
                let ld = &c.layers[l.layer];
                for &p in ld.prev.iter().chain(ld.filler.iter()) {
                    prev_set[p as usize] = true;
                    for (ri, rf) in refl.iter_mut().enumerate() {
                        if !rf.has(p) {
                            rf.ledger.insert(
                                c.pulls[p as usize].id,
                                c.pulls[p as usize].bytes,
                                Duration::ZERO,
                            );
                            rf.set(p, true);
                            held[p as usize] += 1;
                        }
                        let _ = ri;
                    }
                }
            }
            for l in &layers {
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
                if rf.ledger.total_bytes() > g.cache {
                    for id in rf.ledger.evict_candidates(g.cache) {
                        if let Some(b) = rf.ledger.remove(&id) {
                            evicted += b;
                            let q = c.index[&id];
                            rf.set(q, false);
                            held[q as usize] -= 1;
                        }
                    }
                }
            }
            // Endpoints: a shuffled `asleep` fraction sleeps until woken by the site's wake
            // run; it then boots in wake_delay (+ jitter), or never (probability never_wakes).
            let ne = if layers.is_empty() { 0 } else { g.endpoints };
            let n_asleep = (g.asleep * ne as f64).round() as usize;
            let asleep: Vec<usize> = choose(&mut rng, ne, n_asleep);
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
            let link = &links[gi];
            let mesh = (nr > 1).then(|| {
                let site_no = sites.len();
                let busy_demand = policy.default_rate().unwrap_or(u64::from(u32::MAX)).max(1);
                let label = format!("site-{site_no}");
                let peers: Vec<PeerRef> = (0..nr)
                    .map(|r| PeerRef(format!("{name}/reflector-{r}").into_bytes()))
                    .collect();
                // The site has been up for a while when the run starts: under `leader` the
                // leader has claimed the rate for rounds; under `spread` no demand yet anywhere.
                let leader = site_leader(&label, &peers);
                let claims: Vec<u64> = peers
                    .iter()
                    .map(|p| {
                        let lead = leader.as_ref() == Some(p);
                        ShareRounds::demand(g.wan_sharing, false, lead, busy_demand)
                    })
                    .collect();
                let rounds: Vec<ShareRounds> =
                    claims.iter().map(|c| ShareRounds::settled(*c)).collect();
                let share: Vec<f64> = (0..nr)
                    .map(|r| {
                        let others: Vec<u64> =
                            (0..nr).filter(|o| *o != r).map(|o| claims[o]).collect();
                        rounds[r].clone().round(g.wan_sharing, claims[r], &others)
                    })
                    .collect();
                for (rf, s) in refl.iter_mut().zip(&share) {
                    rf.budget.set_share(*s, Duration::ZERO, sc.start_unix);
                }
                let mut m = Mesh {
                    peers,
                    view: GossipView::new(Duration::from_secs_f64(g.mesh_heartbeat_s)),
                    label,
                    fetcher: vec![0; n_pulls],
                    sharing: g.wan_sharing,
                    rounds,
                    arrived: vec![false; nr],
                    share,
                    seq: 0,
                    heartbeat_s: g.mesh_heartbeat_s,
                    busy_demand,
                };
                let all: Vec<u32> = (0..nr as u32).collect();
                assign_fetchers(&mut m, &all, &c.pulls);
                m
            });
            let wake = (n_asleep > 0).then(|| SiteWake {
                cfg: g.wake,
                sl: layers.iter().position(|l| l.sched.is_some()),
                run: None,
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
                rtt: 2.0 * g.wan_latency_s,
                lan: g.lan_rate,
                ep_rate: g.endpoint_rate,
                cache_cap: g.cache,
                alive: (0..nr as u32).collect(),
                refl: std::mem::take(&mut refl),
                held,
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
                evicted,
                pulls_started: 0,
                unique,
                needed,
                bins: Vec::new(),
            });
        }
    }

    let remaining = sites.iter().map(|s| s.eps.len()).sum();
    let mut eng = Engine {
        sc,
        c: &c,
        scheds,
        sites,
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

    // Initial events. Sites with work at t=0 count in the seed's fair share from the start.
    for s in 0..eng.sites.len() {
        if eng.sites[s].needed > 0 && eng.sites[s].layers.iter().any(|l| l.open) {
            eng.set_wanting(s, true);
        }
        let site = &mut eng.sites[s];
        for e in 0..site.eps.len() {
            site.eps[e].refl = Engine::choose_reflector(site, e).unwrap_or(NONE);
        }
        if site.mesh.is_some() && !site.eps.is_empty() {
            eng.push(0.0, Ev::Gossip { site: s as u32 });
        }
        // Wakes start with the delivery window (now if it is open or there is none).
        if let Some(w) = &eng.sites[s].wake {
            if w.sl.is_none_or(|sl| eng.sites[s].layers[sl].open) {
                eng.start_wake_run(s);
            }
        }
        for sl in 0..eng.sites[s].layers.len() {
            if let Some(w) = eng.sites[s].layers[sl].sched {
                if let Some(&(t, _)) = eng.scheds[w].edges.first() {
                    eng.push(t, Ev::Edge { site: s as u32, sl: sl as u32, idx: 0 });
                }
            }
        }
        eng.push(0.0, Ev::Wake { site: s as u32 });
    }
    for f in &sc.failures {
        for s in 0..eng.sites.len() {
            let g = &sc.groups[eng.sites[s].group];
            if !f.sites.matches(&g.name, &eng.sites[s].name) {
                continue;
            }
            match f.kind {
                FailureKind::ReflectorDown { reflector, at_s } => {
                    eng.push(at_s, Ev::ReflDown { site: s as u32, r: reflector as u32 })
                }
                FailureKind::WanDown { from_s, to_s } => {
                    eng.push(from_s, Ev::LinkDown { site: s as u32 });
                    eng.push(to_s, Ev::LinkUp { site: s as u32 });
                }
            }
        }
    }

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

    finish(eng, &group_policies, sim_seconds, &c)
}

fn finish(
    mut eng: Engine<'_>,
    policies: &[BandwidthPolicy],
    sim_seconds: f64,
    c: &Content,
) -> Outcome {
    let sc = eng.sc;
    let bin_s = sc.model.bin_s;
    let n_bins = eng
        .sites
        .iter()
        .map(|s| s.bins.len())
        .max()
        .unwrap_or(0)
        .max((sim_seconds / bin_s).ceil() as usize);
    // The policy's allowed rate per bin, per group (link rate where the policy is unlimited).
    let mut group_caps = Vec::new();
    for (gi, p) in policies.iter().enumerate() {
        let link = sc.groups[gi].wan_rate;
        let mut caps = Vec::with_capacity(n_bins);
        let mut edges: Vec<i64> = Vec::new();
        let end_unix = sc.start_unix + (n_bins as f64 * bin_s).ceil() as i64 + 1;
        let mut t = sc.start_unix;
        while let Some(e) = p.next_change_after(t) {
            if e > end_unix {
                break;
            }
            edges.push(e);
            t = e;
        }
        let rate_f = |u: i64| p.rate_at(u).map_or(link, |r| r as f64);
        let mut ei = 0;
        for b in 0..n_bins {
            let a = sc.start_unix as f64 + b as f64 * bin_s;
            let z = a + bin_s;
            let mut allowed = 0.0;
            let mut cur = a;
            while ei < edges.len() && (edges[ei] as f64) <= a {
                ei += 1;
            }
            let mut j = ei;
            while cur < z {
                let seg_end = if j < edges.len() { (edges[j] as f64).min(z) } else { z };
                allowed += rate_f(cur.floor() as i64) * (seg_end - cur);
                cur = seg_end;
                j += 1;
            }
            caps.push(allowed / bin_s);
        }
        group_caps.push(caps);
    }
    for s in 0..eng.sites.len() {
        eng.end_wake_run(s);
    }
    let mut total_bins = vec![0.0f64; n_bins];
    let mut sites_out = Vec::with_capacity(eng.sites.len());
    for site in eng.sites {
        let caps = &group_caps[site.group];
        let mut peak: f64 = 0.0;
        for (b, &v) in site.bins.iter().enumerate() {
            total_bins[b] += v as f64;
            let cap = caps.get(b).copied().unwrap_or(f64::INFINITY);
            if cap.is_finite() && cap > 0.0 {
                peak = peak.max(v as f64 / bin_s / cap);
            }
        }
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        let mut completions = Vec::new();
        let last = |e: usize| site.wake.as_ref().and_then(|w| w.last[e].as_ref());
        for (e, ep) in site.eps.iter().enumerate() {
            if ep.done_at.is_finite() {
                completions.push(ep.done_at);
                continue;
            }
            let reason = match &ep.failed {
                Some(r) => r.clone(),
                None if ep.wake_at > sim_seconds => match last(e) {
                    Some(m) if m.state == MachineState::Failed => format!(
                        "wake failed: {}",
                        m.reason.as_deref().unwrap_or("did not come online")
                    ),
                    _ => "asleep until the end of the simulation".into(),
                },
                None if !site.layers[ep.pos as usize].opened => {
                    "delivery window never opened".into()
                }
                None => "not finished within the simulated duration".into(),
            };
            *failures.entry(reason).or_default() += 1;
        }
        let mut wake = WakeStats::default();
        let wake_machines: Vec<MachineResult> =
            site.wake.iter().flat_map(|w| w.last.iter().flatten()).cloned().collect();
        for m in &wake_machines {
            wake.add_machine(m);
        }
        let mut completions_sorted = completions;
        completions_sorted.sort_by(f64::total_cmp);
        sites_out.push(SiteResult {
            stats: Stats {
                sites: 1,
                endpoints: site.eps.len(),
                wan_bytes: site.wan_bytes.round().max(0.0) as u64,
                wasted_wan_bytes: site.wasted.round() as u64,
                unique_bytes: site.unique,
                needed_bytes: site.needed,
                evicted_bytes: site.evicted,
                bytes_outside_windows: site.outside.round().max(0.0) as u64,
                completions: completions_sorted,
                failures,
                peak_wan_ratio: peak,
                coalesced_requests: site.misses.followers(),
                wan_pulls: site.pulls_started,
                wake,
            },
            bins: site.bins,
            wake_machines,
            name: site.name,
            group: site.group,
        });
    }
    let seed_peak_ratio = sc
        .seed_egress
        .is_finite()
        .then(|| total_bins.iter().fold(0.0f64, |m, &v| m.max(v / bin_s)) / sc.seed_egress);
    Outcome {
        sites: sites_out,
        group_caps,
        bin_s,
        sim_seconds,
        events: eng.events,
        seed_peak_ratio,
        total_bins,
        layer_chunks: c.layers.iter().map(|l| l.chunks).sum(),
        pulls: c.pulls.len(),
    }
}
