//! One WAN budget per site: which reflector of a site pulls a chunk over the WAN, and what share
//! of the site's rate each reflector's limiter runs at.
//!
//! [`SiteWan`] is the state machine both the reflector (reflector/src/mesh_link.rs) and the
//! simulator (sim/src/engine/mesh.rs) run once a heartbeat: membership and leader from the
//! gossip view, the demand to publish, and the share of the site's rate, with its own timer
//! deadline. [`SitePlace`] answers the same questions for a single miss (which reflector pulls
//! this chunk) without the rounds' state.
//!
//! Two ways of sharing, chosen per site with the reflector's `wan_sharing` key:
//!
//! * [`WanSharing::Leader`] (the default): one reflector of the site — the rendezvous winner of
//!   the site's name over the live reflectors — pulls every chunk the site lacks, with the whole
//!   rate in one token bucket; the others ask it over the LAN. One bucket admits exactly the
//!   policy's rate, so the site's WAN use follows the cap however the misses are spread over the
//!   reflectors. Measured: 10 s windows within 2 % of the cap (docs/benchmarks.md).
//! * [`WanSharing::Spread`]: rendezvous hashing of each chunk id names its fetcher, so WAN work
//!   spreads over all reflectors, and the rate is divided by gossiped demand. Never above the
//!   cap, but each reflector gets a random part of a layer and the shares follow the queues a
//!   heartbeat or two late: 10 s windows ran 1–17 % below the cap. For sites whose WAN exceeds
//!   what one reflector can verify and store.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::gossip::{GossipView, PeerRef};

/// How the reflectors of a site share its WAN work and rate (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WanSharing {
    /// One reflector of the site pulls everything, at the site's whole rate.
    #[default]
    Leader,
    /// Chunks spread over the reflectors by rendezvous hashing, the rate divided by demand.
    Spread,
}

impl WanSharing {
    pub fn as_str(self) -> &'static str {
        match self {
            WanSharing::Leader => "leader",
            WanSharing::Spread => "spread",
        }
    }
}

impl fmt::Display for WanSharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WanSharing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "leader" => Ok(WanSharing::Leader),
            "spread" => Ok(WanSharing::Spread),
            other => Err(format!("{other:?} is not a WAN sharing mode (leader or spread)")),
        }
    }
}

/// The peer with the highest `blake3(peer || key)`: every node computes the same answer from the
/// same set, in any order, and losing one peer moves only that peer's keys.
fn rendezvous(key: &[u8; 32], peers: &[PeerRef]) -> Option<PeerRef> {
    peers
        .iter()
        .max_by_key(|p| {
            let mut h = blake3::Hasher::new();
            h.update(&p.0);
            h.update(key);
            (*h.finalize().as_bytes(), (*p).clone())
        })
        .cloned()
}

/// Rendezvous (highest random weight) choice of the one node of a site that pulls `chunk` over
/// the WAN under [`WanSharing::Spread`]: the peer with the highest `blake3(peer || chunk)`.
/// `site_peers` must include the local node; every node of the site computes the same answer
/// from the same live set. `None` only for an empty set.
pub fn wan_fetcher(chunk: &ChunkId, site_peers: &[PeerRef]) -> Option<PeerRef> {
    rendezvous(chunk.as_bytes(), site_peers)
}

/// The site's WAN leader under [`WanSharing::Leader`]: the peer with the highest
/// `blake3(peer || blake3("oasis site wan leader\0" || site))`. Stable while the live set is;
/// when the leader falls silent the next one by the same order takes over.
pub fn site_leader(site: &str, site_peers: &[PeerRef]) -> Option<PeerRef> {
    let mut h = blake3::Hasher::new();
    h.update(b"oasis site wan leader\0");
    h.update(site.as_bytes());
    rendezvous(h.finalize().as_bytes(), site_peers)
}

/// The node of the site that pulls `chunk` over the WAN under `sharing`.
pub fn site_fetcher(
    sharing: WanSharing,
    site: &str,
    chunk: &ChunkId,
    site_peers: &[PeerRef],
) -> Option<PeerRef> {
    match sharing {
        WanSharing::Leader => site_leader(site, site_peers),
        WanSharing::Spread => wan_fetcher(chunk, site_peers),
    }
}

/// Fraction (0..=1) of the site's WAN rate this node may use under [`WanSharing::Spread`],
/// given its own demand and the gossiped demands (bytes/s) of the other live nodes of the site.
/// Shares are proportional to demand, with a floor of a tenth of an equal share (at least 1
/// byte/s) so an idle node can start a transfer; with no demand anywhere every node gets an
/// equal share. The shares of all nodes computed from the same demands sum to 1.
pub fn site_share(my_demand: u64, peer_demands: &[u64]) -> f64 {
    let n = (peer_demands.len() + 1) as f64;
    let total: f64 = my_demand as f64 + peer_demands.iter().map(|d| *d as f64).sum::<f64>();
    let floor = (total / (10.0 * n)).max(1.0);
    let w = |d: u64| (d as f64).max(floor);
    let sum: f64 = w(my_demand) + peer_demands.iter().map(|d| w(*d)).sum::<f64>();
    w(my_demand) / sum
}

/// The share of a reflector that is not the site's leader under [`WanSharing::Leader`]: a tenth
/// of an equal share. It pulls over the WAN only when the leader cannot be reached, until the
/// leader's entry expires and another takes over.
pub fn fallback_share(site_size: usize) -> f64 {
    1.0 / (10.0 * site_size.max(1) as f64)
}

/// Share under [`WanSharing::Leader`]. `my_claim` is nonzero when this node has named itself the
/// leader in each of the last three rounds; `peer_claims` are the `wan_demand`s the other live
/// nodes of the site gossiped (a leader publishes the site's rate there, the others 0).
///
/// The leader takes the whole rate only while no other node claims it: a new leader waits until
/// the old one has seen it and stepped down (it steps down at once), so two buckets never run
/// at the full rate together. A node alone in its site is its leader too; it also waits its
/// three rounds, so reflectors started together that find each other within them never run at
/// the full rate side by side.
pub fn leader_share(my_claim: u64, peer_claims: &[u64]) -> f64 {
    if my_claim > 0 && peer_claims.iter().all(|c| *c == 0) {
        1.0
    } else {
        fallback_share(peer_claims.len() + 1)
    }
}

/// A reflector's WAN demands of the last rounds, turned into its share each heartbeat.
#[derive(Clone, Debug, Default)]
pub struct ShareRounds {
    /// Demands published two rounds ago and last round.
    published: [u64; 2],
}

impl ShareRounds {
    /// A node that has published `demand` for the last rounds (a site that has been up for a
    /// while).
    pub fn settled(demand: u64) -> ShareRounds {
        ShareRounds { published: [demand; 2] }
    }

    /// What to publish as `wan_demand` this round: under `Spread` the site's `rate` while `busy`
    /// (WAN work queued, or WAN bytes arrived since the last round), else 0; under `Leader` the
    /// rate while this node names itself the leader, else 0.
    pub fn demand(sharing: WanSharing, busy: bool, leader_is_me: bool, rate: u64) -> u64 {
        let on = match sharing {
            WanSharing::Spread => busy,
            WanSharing::Leader => leader_is_me,
        };
        if on {
            rate.max(1)
        } else {
            0
        }
    }

    /// Records `demand` as published this round and gives this round's share from the other
    /// live nodes' gossiped demands.
    ///
    /// Under `Spread` the share is computed from the smaller of the demands published in the
    /// two rounds before: a rise counts only once the siblings have received it with a heartbeat
    /// and lowered their shares. Under `Leader` the claim must also hold this round, so a node
    /// that sees another leader steps down at once.
    pub fn round(&mut self, sharing: WanSharing, demand: u64, peer_demands: &[u64]) -> f64 {
        let before = self.published[0].min(self.published[1]);
        self.published = [self.published[1], demand];
        match sharing {
            WanSharing::Spread => site_share(before, peer_demands),
            WanSharing::Leader => leader_share(before.min(demand), peer_demands),
        }
    }
}

/// Where one reflector stands in its site's WAN sharing: its site, the site's sharing mode and
/// its own peer. Enough to name the leader and each chunk's WAN fetcher from a gossip view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SitePlace {
    site: Option<String>,
    sharing: WanSharing,
    me: PeerRef,
}

impl SitePlace {
    /// `site`: `None` for a reflector that belongs to no site (it shares with nobody).
    pub fn new(site: Option<&str>, sharing: WanSharing, me: PeerRef) -> SitePlace {
        SitePlace { site: site.map(str::to_string), sharing, me }
    }

    pub fn site(&self) -> Option<&str> {
        self.site.as_deref()
    }

    pub fn sharing(&self) -> WanSharing {
        self.sharing
    }

    pub fn me(&self) -> &PeerRef {
        &self.me
    }

    /// The live reflectors of the site in `view` that gossip a serving address (the others
    /// cannot be asked for a chunk), with this one once whether or not the view lists it.
    /// Empty without a site.
    pub fn members(&self, view: &GossipView) -> Vec<PeerRef> {
        let Some(site) = &self.site else { return Vec::new() };
        let mut members: Vec<PeerRef> = view
            .live_peers(site)
            .into_iter()
            .filter(|p| *p != self.me)
            .filter(|p| view.peer(p).is_some_and(|r| r.serving_addr.is_some()))
            .collect();
        members.push(self.me.clone());
        members
    }

    /// The site's WAN leader in `view` (this node when it is alone; `None` without a site).
    pub fn leader(&self, view: &GossipView) -> Option<PeerRef> {
        site_leader(self.site.as_deref()?, &self.members(view))
    }

    /// The reflector of the site that pulls `chunk` over the WAN in `view` (`None` without a
    /// site: this node pulls everything it lacks).
    pub fn fetcher(&self, view: &GossipView, chunk: &ChunkId) -> Option<PeerRef> {
        site_fetcher(self.sharing, self.site.as_deref()?, chunk, &self.members(view))
    }

    /// The `wan_demand`s the other live reflectors of the site gossiped.
    fn peer_demands(&self, view: &GossipView) -> Vec<u64> {
        let Some(site) = &self.site else { return Vec::new() };
        view.live_peers(site)
            .iter()
            .filter(|p| **p != self.me)
            .filter_map(|p| view.peer(p).map(|r| r.load.wan_demand))
            .collect()
    }
}

/// What one round decides: the `wan_demand` to publish in this heartbeat and the share of the
/// site's rate to put in force on the WAN budget from now on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Round {
    pub demand: u64,
    pub share: f64,
    /// The share differs from the one before (the budget must be told).
    pub changed: bool,
}

/// One reflector's side of its site's WAN sharing, advanced one heartbeat round at a time.
///
/// Sans I/O: the caller calls [`SiteWan::round`] at [`SiteWan::next_round`] with the gossip view
/// as it stands (the other reflectors' last heartbeats), whether WAN work is waiting, and the
/// policy's rate; it publishes the demand in its heartbeat and sets the share on its budget.
#[derive(Clone, Debug)]
pub struct SiteWan {
    place: SitePlace,
    heartbeat: Duration,
    rounds: ShareRounds,
    share: f64,
    next_round: Duration,
}

impl SiteWan {
    /// A reflector that has just started: the whole rate is its own until the first round (due
    /// at once) names its share.
    pub fn new(place: SitePlace, heartbeat: Duration) -> SiteWan {
        SiteWan {
            place,
            heartbeat,
            rounds: ShareRounds::default(),
            share: 1.0,
            next_round: Duration::ZERO,
        }
    }

    pub fn place(&self) -> &SitePlace {
        &self.place
    }

    /// The share of the site's rate in force.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// When the next round is due (the caller's clock, as given to [`SiteWan::round`]).
    pub fn next_round(&self) -> Duration {
        self.next_round
    }

    /// The demand this node publishes with `view` as it stands: under `spread` the site's
    /// `rate` while `busy` (WAN work queued, or WAN bytes arrived since the last round), under
    /// `leader` the rate while the view names this node the leader; else 0.
    pub fn demand(&self, view: &GossipView, busy: bool, rate: u64) -> u64 {
        if self.place.site.is_none() {
            return 0;
        }
        let leader_is_me = self.place.leader(view).is_none_or(|l| l == self.place.me);
        ShareRounds::demand(self.place.sharing, busy, leader_is_me, rate)
    }

    /// One heartbeat round at `now`: the demand to publish and this round's share (see
    /// [`ShareRounds::round`]). A node without a site publishes 0 and keeps the whole rate.
    pub fn round(&mut self, now: Duration, view: &GossipView, busy: bool, rate: u64) -> Round {
        self.next_round = now + self.heartbeat;
        let demand = self.demand(view, busy, rate);
        let share = if self.place.site.is_none() {
            1.0
        } else {
            self.rounds.round(self.place.sharing, demand, &self.place.peer_demands(view))
        };
        let changed = (share - self.share).abs() > 1e-6;
        self.share = share;
        Round { demand, share, changed }
    }

    /// Puts this node where a site that has been up for a while with `view` stands: it has
    /// published the same demand (idle) for rounds, and holds the share the next round gives.
    /// For the simulator's start.
    pub fn settle(&mut self, view: &GossipView, rate: u64) -> Round {
        let demand = self.demand(view, false, rate);
        self.rounds = ShareRounds::settled(demand);
        let mut probe = self.clone();
        let round = probe.round(self.next_round, view, false, rate);
        self.share = round.share;
        round
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::EXPIRY_HEARTBEATS;

    fn p(n: u8) -> PeerRef {
        PeerRef(vec![n])
    }

    #[test]
    fn rendezvous_and_share() {
        let peers: Vec<PeerRef> = (0..5).map(p).collect();
        let mut counts = [0usize; 5];
        for i in 0..1000u32 {
            let c = ChunkId::of(&i.to_le_bytes());
            let w = wan_fetcher(&c, &peers).unwrap();
            // Order of the input does not matter.
            let mut rev = peers.clone();
            rev.reverse();
            assert_eq!(wan_fetcher(&c, &rev).unwrap(), w);
            counts[w.0[0] as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 120), "{counts:?}");
        assert_eq!(wan_fetcher(&ChunkId::of(b"x"), &[]), None);

        assert!((site_share(0, &[0, 0, 0]) - 0.25).abs() < 1e-9);
        let s = site_share(300, &[100]);
        assert!((s - 0.75).abs() < 1e-9);
        let idle = site_share(0, &[1000, 1000]);
        assert!(idle > 0.0 && idle < 0.1, "{idle}");
        let total = site_share(0, &[1000, 1000]) + 2.0 * site_share(1000, &[0, 1000]);
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn one_leader_per_site_for_every_chunk() {
        let peers: Vec<PeerRef> = (0..5).map(p).collect();
        let leader = site_leader("lyon", &peers).unwrap();
        let mut rev = peers.clone();
        rev.reverse();
        assert_eq!(site_leader("lyon", &rev).unwrap(), leader, "order does not matter");
        for i in 0..100u32 {
            let c = ChunkId::of(&i.to_le_bytes());
            assert_eq!(site_fetcher(WanSharing::Leader, "lyon", &c, &peers).unwrap(), leader);
            assert_eq!(
                site_fetcher(WanSharing::Spread, "lyon", &c, &peers),
                wan_fetcher(&c, &peers)
            );
        }
        // Losing a follower keeps the leader; losing the leader names one of the rest.
        let without: Vec<PeerRef> = peers.iter().filter(|x| **x != leader).cloned().collect();
        let next = site_leader("lyon", &without).unwrap();
        assert_ne!(next, leader);
        let follower = without.iter().find(|x| **x != next).unwrap().clone();
        let fewer: Vec<PeerRef> = peers.iter().filter(|x| **x != follower).cloned().collect();
        assert_eq!(site_leader("lyon", &fewer).unwrap(), leader);
        // Different sites spread their leaders over the peers.
        let leaders: std::collections::HashSet<PeerRef> =
            (0..40).map(|s| site_leader(&format!("site-{s}"), &peers).unwrap()).collect();
        assert!(leaders.len() >= 4, "{leaders:?}");
        assert_eq!(site_leader("lyon", &[]), None);
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [WanSharing::Leader, WanSharing::Spread] {
            assert_eq!(m.to_string().parse::<WanSharing>(), Ok(m));
        }
        let e = "fair".parse::<WanSharing>().unwrap_err();
        assert!(e.contains("\"fair\"") && e.contains("leader or spread"), "{e}");
        assert_eq!(WanSharing::default(), WanSharing::Leader);
    }

    /// Rounds of a site whose nodes all see each other's last published demand.
    fn site_rounds(
        rounds: &mut [ShareRounds],
        published: &mut [u64],
        leader: impl Fn(usize) -> bool,
    ) -> Vec<f64> {
        let seen = published.to_vec();
        (0..rounds.len())
            .map(|i| {
                let d = ShareRounds::demand(WanSharing::Leader, true, leader(i), 1000);
                let others: Vec<u64> =
                    seen.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, d)| *d).collect();
                published[i] = d;
                rounds[i].round(WanSharing::Leader, d, &others)
            })
            .collect()
    }

    /// Reflectors of one site, each with its own gossip view fed by the others' heartbeats, as
    /// the mesh delivers them: a round's demand reaches the others for their next round.
    struct Site {
        views: Vec<GossipView>,
        wan: Vec<SiteWan>,
        alive: Vec<bool>,
        seq: u64,
        now: Duration,
    }

    const HB: Duration = Duration::from_secs(1);

    impl Site {
        fn new(n: u8, sharing: WanSharing) -> Site {
            Site {
                views: (0..n).map(|_| GossipView::new(HB)).collect(),
                wan: (0..n)
                    .map(|i| SiteWan::new(SitePlace::new(Some("lyon"), sharing, p(i)), HB))
                    .collect(),
                alive: vec![true; n as usize],
                seq: 0,
                now: Duration::ZERO,
            }
        }

        /// One round of every live reflector; returns the shares.
        fn round(&mut self, busy: impl Fn(usize) -> bool) -> Vec<f64> {
            self.seq += 1;
            let mut shares = vec![0.0; self.wan.len()];
            let mut sent = Vec::new();
            for i in (0..self.wan.len()).filter(|i| self.alive[*i]) {
                assert!(self.wan[i].next_round() <= self.now);
                let r = self.wan[i].round(self.now, &self.views[i], busy(i), 1000);
                shares[i] = r.share;
                sent.push((i, r.demand));
            }
            for (from, demand) in sent {
                let msg = crate::gossip::GossipMsg {
                    seq: self.seq,
                    body: crate::gossip::Body::Heartbeat(crate::gossip::Heartbeat {
                        site: Some("lyon".into()),
                        serving_addr: Some(format!("10.0.0.{from}:7000")),
                        load: crate::gossip::Load { wan_demand: demand, ..Default::default() },
                        heartbeat_ms: 1000,
                    }),
                };
                for to in (0..self.wan.len()).filter(|t| *t != from && self.alive[*t]) {
                    self.views[to].apply(&msg, &p(from as u8), self.now).unwrap();
                }
            }
            self.now += HB;
            for v in &mut self.views {
                v.expire(self.now);
            }
            shares
        }

        /// Runs `rounds` busy rounds, checking that no two nodes ever hold the whole rate;
        /// the first round in which one does.
        fn first_full_round(&mut self, rounds: usize) -> Option<usize> {
            let mut first = None;
            for k in 0..rounds {
                let shares = self.round(|_| true);
                assert!(shares.iter().filter(|s| **s == 1.0).count() <= 1, "round {k}: {shares:?}");
                if first.is_none() && shares.contains(&1.0) {
                    first = Some(k);
                }
            }
            first
        }
    }

    #[test]
    fn the_site_wan_names_one_leader_at_the_whole_rate_and_hands_over_when_it_dies() {
        let mut site = Site::new(3, WanSharing::Leader);
        let full_at = site.first_full_round(6);
        // Alone at first, every node names itself; the views fill after a round and the
        // claims of the others hold everyone back until only the leader claims.
        assert!(full_at.is_some_and(|k| k <= 4), "{full_at:?}");
        let leader = site.wan[0].place().leader(&site.views[0]).unwrap();
        let l = leader.0[0] as usize;
        for (i, w) in site.wan.iter().enumerate() {
            assert_eq!(w.place().leader(&site.views[i]).as_ref(), Some(&leader), "views agree");
            assert_eq!(w.share() == 1.0, i == l, "only the leader runs at the rate");
            for c in 0..20u32 {
                let id = ChunkId::of(&c.to_le_bytes());
                assert_eq!(w.place().fetcher(&site.views[i], &id).as_ref(), Some(&leader));
            }
        }

        // The leader dies: after its entry expires, the next takes over, never two at once.
        site.alive[l] = false;
        let k = site.first_full_round(10).expect("a new leader takes the rate");
        assert!(k >= EXPIRY_HEARTBEATS as usize - 1, "not before the dead one expires: {k}");
        assert!(site.wan[l].share() == 1.0, "the dead one's own state is frozen");
        let live: Vec<usize> = (0..3).filter(|i| *i != l).collect();
        assert_eq!(live.iter().filter(|i| site.wan[**i].share() == 1.0).count(), 1);
    }

    #[test]
    fn spread_divides_the_rate_by_demand_and_a_siteless_node_keeps_it_all() {
        let mut site = Site::new(2, WanSharing::Spread);
        for _ in 0..4 {
            site.round(|i| i == 0);
        }
        let shares: Vec<f64> = site.wan.iter().map(SiteWan::share).collect();
        assert!(shares[0] > 0.9 && shares[1] < 0.1, "the busy one has the rate: {shares:?}");
        for _ in 0..4 {
            site.round(|_| true);
        }
        let shares: Vec<f64> = site.wan.iter().map(SiteWan::share).collect();
        assert!((shares[0] - 0.5).abs() < 1e-9 && (shares[1] - 0.5).abs() < 1e-9, "{shares:?}");

        let mut alone = SiteWan::new(SitePlace::new(None, WanSharing::Leader, p(9)), HB);
        let view = GossipView::new(HB);
        let r = alone.round(Duration::from_secs(5), &view, true, 1000);
        assert_eq!(r, Round { demand: 0, share: 1.0, changed: false });
        assert_eq!(alone.next_round(), Duration::from_secs(6), "its own timer deadline");
        assert_eq!(alone.place().fetcher(&view, &ChunkId::of(b"x")), None);
    }

    #[test]
    fn a_settled_site_starts_with_the_leader_at_the_rate() {
        let mut site = Site::new(3, WanSharing::Leader);
        for _ in 0..2 {
            site.round(|_| false);
        }
        // Fresh state machines over views that already list everyone.
        for i in 0..3 {
            site.wan[i] =
                SiteWan::new(SitePlace::new(Some("lyon"), WanSharing::Leader, p(i as u8)), HB);
        }
        // The views hold the others' last claims; settle as the simulator does at its start.
        let shares: Vec<f64> =
            (0..3).map(|i| site.wan[i].settle(&site.views[i], 1000).share).collect();
        assert_eq!(shares.iter().filter(|s| **s == 1.0).count(), 1, "{shares:?}");
        let next = site.round(|_| true);
        assert_eq!(next, shares, "the next round keeps the settled shares");
    }

    #[test]
    fn a_member_without_a_serving_address_is_not_asked() {
        let me = SitePlace::new(Some("lyon"), WanSharing::Leader, p(0));
        let mut view = GossipView::new(HB);
        let msg = |addr: Option<&str>| crate::gossip::GossipMsg {
            seq: 1,
            body: crate::gossip::Body::Heartbeat(crate::gossip::Heartbeat {
                site: Some("lyon".into()),
                serving_addr: addr.map(str::to_string),
                load: crate::gossip::Load::default(),
                heartbeat_ms: 1000,
            }),
        };
        view.apply(&msg(None), &p(1), Duration::ZERO).unwrap();
        view.apply(&msg(Some("10.0.0.2:7000")), &p(2), Duration::ZERO).unwrap();
        view.apply(&msg(Some("10.0.0.0:7000")), &p(0), Duration::ZERO).unwrap();
        let mut members = me.members(&view);
        members.sort();
        assert_eq!(members, vec![p(0), p(2)], "itself once, and the peer that serves");
    }

    #[test]
    fn a_leader_takes_the_whole_rate_and_hands_over_without_overlap() {
        assert_eq!(leader_share(1000, &[]), 1.0, "alone in its site");
        assert!((leader_share(0, &[]) - 0.1).abs() < 1e-12, "not yet claimed for three rounds");
        assert_eq!(leader_share(1000, &[0, 0]), 1.0);
        assert!((leader_share(0, &[1000, 0]) - 1.0 / 30.0).abs() < 1e-12);
        assert!(leader_share(1000, &[1000]) < 0.1, "two claimers: neither takes the rate");

        let mut rounds = vec![ShareRounds::default(); 3];
        let mut published = vec![0u64; 3];
        // Node 0 leads: it takes the rate once it has claimed for three rounds.
        let mut first_full = None;
        for k in 0..5 {
            let shares = site_rounds(&mut rounds, &mut published, |i| i == 0);
            assert!(shares.iter().sum::<f64>() <= 1.0 + 2.0 / 30.0 + 1e-9, "{shares:?}");
            if shares[0] == 1.0 && first_full.is_none() {
                first_full = Some(k);
            }
        }
        assert_eq!(first_full, Some(2));
        // Node 1 becomes the leader (node 0's view changed): at no round do two run at 1.
        let mut handed = false;
        for _ in 0..5 {
            let shares = site_rounds(&mut rounds, &mut published, |i| i == 1);
            assert!(shares.iter().filter(|s| **s == 1.0).count() <= 1, "{shares:?}");
            handed |= shares[1] == 1.0;
        }
        assert!(handed, "the new leader takes the rate");
    }
}
