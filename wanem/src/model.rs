//! The link model of one direction, without any I/O: given the time a packet enters the link
//! and its size, decide whether it is dropped (and why) or when it comes out.
//!
//! Keeping the model pure lets the tests check loss statistics, bursts, queueing and ordering
//! on synthetic clocks (fast, exact, independent of machine load), and lets a simulator reuse
//! the same model without sockets. [`crate::Emulator`] wraps one `LinkModel` per direction.

use std::time::{Duration, Instant};

use crate::spec::{LinkSpec, Probability};

/// What happens to a packet offered to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped by the loss stage (Bernoulli or Gilbert–Elliott).
    Lost,
    /// Dropped at the bottleneck: the queue had no room (tail drop).
    QueueFull,
    /// Leaves the link at `at`. `reordered`: held back by the reorder stage, so packets
    /// offered after it may leave before it.
    Deliver {
        /// Delivery time.
        at: Instant,
        /// Held back by the reorder stage.
        reordered: bool,
    },
}

/// Exact packet and byte counts of one direction (bytes are UDP payload bytes, as a QUIC
/// endpoint counts them; the per-packet overhead only enters the rate model).
///
/// Every packet offered ends up in exactly one of delivered / lost / queue-dropped /
/// send-failed, or is still in flight, so at any snapshot
/// `offered = delivered + lost + queue_dropped + send_failed + in_flight`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    /// Packets that entered the link.
    pub offered_packets: u64,
    /// Their UDP payload bytes.
    pub offered_bytes: u64,
    /// Packets handed to the destination socket.
    pub delivered_packets: u64,
    /// Their bytes.
    pub delivered_bytes: u64,
    /// Packets dropped by the loss stage.
    pub lost_packets: u64,
    /// Their bytes.
    pub lost_bytes: u64,
    /// Packets dropped because the bottleneck queue was full.
    pub queue_dropped_packets: u64,
    /// Their bytes.
    pub queue_dropped_bytes: u64,
    /// Packets the operating system refused to send (e.g. nobody listening upstream).
    pub send_failed_packets: u64,
    /// Their bytes.
    pub send_failed_bytes: u64,
    /// Packets held back by the reorder stage (delivered or still in flight).
    pub reordered_packets: u64,
    /// Largest bottleneck backlog seen, in wire bytes (payload + overhead).
    pub peak_queue_bytes: u64,
}

impl DirectionCounters {
    /// Packets dropped for any reason.
    pub fn dropped_packets(&self) -> u64 {
        self.lost_packets + self.queue_dropped_packets + self.send_failed_packets
    }
    /// Bytes dropped for any reason.
    pub fn dropped_bytes(&self) -> u64 {
        self.lost_bytes + self.queue_dropped_bytes + self.send_failed_bytes
    }
    /// Packets accepted but not yet delivered.
    pub fn in_flight_packets(&self) -> u64 {
        self.offered_packets - self.delivered_packets - self.dropped_packets()
    }
    /// Bytes accepted but not yet delivered.
    pub fn in_flight_bytes(&self) -> u64 {
        self.offered_bytes - self.delivered_bytes - self.dropped_bytes()
    }
}

/// xoshiro256++ seeded through SplitMix64: small, fast, and fixed here rather than borrowed
/// from `rand`, so a seed gives the same decisions whatever version of `rand` is in the lock
/// file.
#[derive(Clone, Debug)]
pub(crate) struct Rng([u64; 4]);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut sm = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// True with probability `p`. Always consumes exactly one draw, so the n-th decision of a
    /// stage depends only on the seed and n, not on the probabilities used before.
    pub(crate) fn chance(&mut self, p: Probability) -> bool {
        let x = self.next_u64();
        if p.ppb() >= Probability::SCALE {
            return true;
        }
        let threshold = ((p.ppb() as u128) << 64) / Probability::SCALE as u128;
        (x as u128) < threshold
    }

    /// Uniform in `0..n` (n > 0), one draw.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

// Independent random streams per stage: changing the jitter does not change which packets
// are lost.
const STREAM_LOSS: u64 = 1;
const STREAM_GE: u64 = 2;
const STREAM_JITTER: u64 = 3;
const STREAM_REORDER: u64 = 4;

/// One direction of the link: the stages of the crate-level model, in order.
#[derive(Clone, Debug)]
pub struct LinkModel {
    spec: LinkSpec,
    direction: u64,
    loss_rng: Rng,
    ge_rng: Rng,
    jitter_rng: Rng,
    reorder_rng: Rng,
    ge_bad: bool,
    /// When the bottleneck finishes serializing every packet accepted so far.
    busy_until: Option<Instant>,
    /// Latest delivery time handed out to an in-order packet (FIFO clamp).
    last_delivery: Option<Instant>,
    /// Current segment of the jitter path: (start, offset ns) -> (end, offset ns).
    jitter_path: Option<(Instant, i64, Instant, i64)>,
    counters: DirectionCounters,
}

impl LinkModel {
    /// A model of `spec`. `direction` separates the random streams of the two directions
    /// (0 up, 1 down), so a symmetric spec does not lose the same packet numbers both ways.
    pub fn new(spec: LinkSpec, direction: u64) -> Self {
        let seed = spec.seed;
        let stream = |s: u64| Rng::new(seed, s + 16 * direction);
        LinkModel {
            loss_rng: stream(STREAM_LOSS),
            ge_rng: stream(STREAM_GE),
            jitter_rng: stream(STREAM_JITTER),
            reorder_rng: stream(STREAM_REORDER),
            spec,
            direction,
            ge_bad: false,
            busy_until: None,
            last_delivery: None,
            jitter_path: None,
            counters: DirectionCounters::default(),
        }
    }

    /// The spec in force.
    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Changes the link from `now` on. Packets already accepted keep their delivery times
    /// (they are already queued or on the wire); the next packet waits behind them and is
    /// then serialized at the new rate. Counters carry on. A changed seed restarts the
    /// random streams.
    pub fn set_spec(&mut self, spec: LinkSpec, _now: Instant) {
        if spec.jitter != self.spec.jitter {
            self.jitter_path = None;
        }
        if spec.seed != self.spec.seed {
            let fresh = LinkModel::new(spec.clone(), self.direction);
            self.loss_rng = fresh.loss_rng;
            self.ge_rng = fresh.ge_rng;
            self.jitter_rng = fresh.jitter_rng;
            self.reorder_rng = fresh.reorder_rng;
            self.ge_bad = false;
        }
        self.spec = spec;
    }

    /// Wire bytes waiting at (or being serialized by) the bottleneck at `now`.
    pub fn backlog_bytes(&self, now: Instant) -> u64 {
        match (self.busy_until, self.spec.rate) {
            (Some(busy), Some(rate)) if busy > now => {
                let bits = (busy - now).as_nanos() * rate as u128;
                bits.div_ceil(8_000_000_000) as u64
            }
            _ => 0,
        }
    }

    /// A packet of `len` UDP payload bytes enters the link at `now`.
    pub fn offer(&mut self, now: Instant, len: usize) -> Verdict {
        let len64 = len as u64;
        self.counters.offered_packets += 1;
        self.counters.offered_bytes += len64;

        // 1. Loss: the path loses a packet before it reaches the bottleneck, so a lost packet
        //    takes no room in the queue. Both stages draw every time (stable streams).
        let mut lost = self.loss_rng.chance(self.spec.loss);
        if let Some(ge) = self.spec.gilbert_elliott {
            let p_loss = if self.ge_bad { ge.loss_bad } else { ge.loss_good };
            lost |= self.ge_rng.chance(p_loss);
            let flip = if self.ge_bad { ge.r } else { ge.p };
            if self.ge_rng.chance(flip) {
                self.ge_bad = !self.ge_bad;
            }
        }
        if lost {
            self.counters.lost_packets += 1;
            self.counters.lost_bytes += len64;
            return Verdict::Lost;
        }

        // 2. Bottleneck: a FIFO queue drained at `rate`; the packet leaves the bottleneck when
        //    every byte before it and its own bytes have been serialized.
        let mut at = now;
        if let Some(rate) = self.spec.rate {
            let wire = len64 + self.spec.overhead as u64;
            let backlog = self.backlog_bytes(now);
            // An empty queue always takes a packet, however small the limit.
            if backlog > 0 && backlog + wire > self.spec.effective_queue() {
                self.counters.queue_dropped_packets += 1;
                self.counters.queue_dropped_bytes += len64;
                return Verdict::QueueFull;
            }
            let start = self.busy_until.filter(|b| *b > now).unwrap_or(now);
            let ns = (wire as u128 * 8_000_000_000).div_ceil(rate as u128);
            at = start + Duration::from_nanos(ns as u64);
            self.busy_until = Some(at);
            self.counters.peak_queue_bytes = self.counters.peak_queue_bytes.max(backlog + wire);
        }

        // 3. Propagation delay and jitter; in-order packets never overtake each other.
        let delay = self.spec.delay.as_nanos() as i128 + self.jitter_at(at) as i128;
        at += Duration::from_nanos(delay.max(0) as u64);
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }

        // 4. Reordering: a chosen packet is held back; the ones behind it pass.
        let reordered =
            self.reorder_rng.chance(self.spec.reorder) && !self.spec.reorder_delay.is_zero();
        if reordered {
            self.counters.reordered_packets += 1;
            at += self.spec.reorder_delay;
        } else {
            self.last_delivery = Some(at);
        }
        Verdict::Deliver { at, reordered }
    }

    /// The jitter offset (ns, within ±jitter) of a packet entering propagation at `t`.
    ///
    /// The offset follows a piecewise-linear path through random targets drawn uniformly in
    /// `[-jitter, +jitter]`, one every `4·jitter`. Its slope stays within ±1/2, so a packet
    /// entering later always comes out later: jitter never reorders, and the mean delay stays
    /// `delay` however dense the traffic. (Independent per-packet samples with FIFO order
    /// would push every packet of a dense flow to `delay + jitter`, as `tc netem` does with a
    /// rate or a FIFO child qdisc.)
    fn jitter_at(&mut self, t: Instant) -> i64 {
        let j = self.spec.jitter.as_nanos().min(i64::MAX as u128 / 8) as i64;
        if j == 0 {
            return 0;
        }
        let period = Duration::from_nanos(4 * j as u64);
        let rng = &mut self.jitter_rng;
        let mut draw = || rng.below(2 * j as u64 + 1) as i64 - j;
        let (mut ta, mut ja, mut tb, mut jb) = match self.jitter_path {
            Some(p) => p,
            None => (t, draw(), t + period, draw()),
        };
        if t >= tb {
            if t >= tb + period {
                // Idle for more than a segment: start afresh from an independent offset.
                (ta, ja) = (t, draw());
            } else {
                (ta, ja) = (tb, jb);
            }
            tb = ta + period;
            jb = draw();
        }
        self.jitter_path = Some((ta, ja, tb, jb));
        let into = t.saturating_duration_since(ta).as_nanos() as i128;
        (ja as i128 + (jb - ja) as i128 * into / period.as_nanos() as i128) as i64
    }

    /// Records a packet handed to its destination.
    pub fn delivered(&mut self, len: usize) {
        self.counters.delivered_packets += 1;
        self.counters.delivered_bytes += len as u64;
    }

    /// Records a packet the operating system refused to send.
    pub fn send_failed(&mut self, len: usize) {
        self.counters.send_failed_packets += 1;
        self.counters.send_failed_bytes += len as u64;
    }

    /// The counters so far.
    pub fn counters(&self) -> DirectionCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::GilbertElliott;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Offers `n` packets of `len` bytes, `gap` apart, and returns the verdicts.
    fn run(spec: LinkSpec, n: usize, len: usize, gap: Duration) -> (Vec<Verdict>, LinkModel) {
        let t0 = Instant::now();
        let mut m = LinkModel::new(spec, 0);
        let v = (0..n).map(|i| m.offer(t0 + gap * i as u32, len)).collect();
        (v, m)
    }

    fn lost_pattern(v: &[Verdict]) -> Vec<bool> {
        v.iter().map(|v| *v == Verdict::Lost).collect()
    }

    #[test]
    fn bernoulli_loss_rate_within_bounds() {
        for (pct, seed) in [(0.5, 1), (1.0, 2), (5.0, 3), (20.0, 4)] {
            let n = 20_000usize;
            let spec = LinkSpec::default().loss(Probability::percent(pct)).seed(seed);
            let (v, m) = run(spec, n, 1200, Duration::from_micros(100));
            let lost = v.iter().filter(|v| **v == Verdict::Lost).count() as f64;
            let p = pct / 100.0;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((lost - n as f64 * p).abs() < 5.0 * sd, "{pct}%: lost {lost} of {n}");
            assert_eq!(m.counters().lost_packets as f64, lost);
            assert_eq!(m.counters().lost_bytes as f64, lost * 1200.0);
        }
    }

    #[test]
    fn loss_extremes() {
        let (v, _) = run(LinkSpec::default(), 1000, 100, ms(1));
        assert!(v.iter().all(|v| matches!(v, Verdict::Deliver { .. })));
        let (v, _) = run(LinkSpec::default().loss(Probability::ONE), 1000, 100, ms(1));
        assert!(v.iter().all(|v| *v == Verdict::Lost));
    }

    #[test]
    fn gilbert_elliott_losses_come_in_bursts() {
        // p = 1%, r = 30%: mean burst 1/0.3 = 3.33 packets, mean loss 0.01/0.31 = 3.2%.
        let ge = GilbertElliott::new(Probability::fraction(0.01), Probability::fraction(0.3));
        let n = 20_000;
        let (v, _) = run(LinkSpec::default().gilbert_elliott(ge).seed(11), n, 1200, ms(1));
        let lost = lost_pattern(&v);
        let total = lost.iter().filter(|l| **l).count();
        let bursts = lost.windows(2).filter(|w| w[1] && !w[0]).count() + lost[0] as usize;
        let mean_burst = total as f64 / bursts as f64;
        assert!((2.6..4.2).contains(&mean_burst), "mean burst {mean_burst}");
        let rate = total as f64 / n as f64;
        assert!((0.022..0.043).contains(&rate), "loss rate {rate}");

        // The same average loss, independent: bursts barely longer than one packet.
        let (v, _) =
            run(LinkSpec::default().loss(Probability::fraction(0.032)).seed(11), n, 1200, ms(1));
        let lost = lost_pattern(&v);
        let total = lost.iter().filter(|l| **l).count();
        let bursts = lost.windows(2).filter(|w| w[1] && !w[0]).count() + lost[0] as usize;
        assert!((total as f64 / bursts as f64) < 1.1);
    }

    #[test]
    fn gilbert_elliott_partial_loss_in_bad_state() {
        let ge = GilbertElliott {
            p: Probability::fraction(0.05),
            r: Probability::fraction(0.2),
            loss_bad: Probability::percent(50.0),
            loss_good: Probability::percent(1.0),
        };
        let n = 20_000;
        let (v, _) = run(LinkSpec::default().gilbert_elliott(ge).seed(5), n, 1200, ms(1));
        let rate = lost_pattern(&v).iter().filter(|l| **l).count() as f64 / n as f64;
        let want = ge.mean_loss(); // 0.2*0.5 + 0.8*0.01 = 0.108
        assert!((rate - want).abs() < 0.02, "loss rate {rate}, want {want}");
    }

    #[test]
    fn loss_decisions_are_deterministic_per_seed() {
        let spec = LinkSpec::default().loss(Probability::percent(3.0)).gilbert_elliott(
            GilbertElliott::new(Probability::fraction(0.02), Probability::fraction(0.4)),
        );
        let (a, _) = run(spec.clone().seed(42), 5000, 1200, ms(1));
        let (b, _) = run(spec.clone().seed(42), 5000, 1200, ms(1));
        let (c, _) = run(spec.clone().seed(43), 5000, 1200, ms(1));
        assert_eq!(lost_pattern(&a), lost_pattern(&b));
        assert_ne!(lost_pattern(&a), lost_pattern(&c));
        // Other stages draw from their own streams: adding jitter, a rate or reordering does
        // not change which packets are lost.
        let busy = spec
            .clone()
            .seed(42)
            .jitter(ms(3))
            .rate(1_000_000_000)
            .reorder(Probability::percent(5.0), ms(2));
        let (d, _) = run(busy, 5000, 1200, ms(1));
        assert_eq!(lost_pattern(&a), lost_pattern(&d));
        // The two directions of one seed lose different packets.
        let t0 = Instant::now();
        let mut down = LinkModel::new(spec.seed(42), 1);
        let e: Vec<_> = (0..5000).map(|i| down.offer(t0 + ms(i), 1200)).collect();
        assert_ne!(lost_pattern(&a), lost_pattern(&e));
    }

    #[test]
    fn delay_and_fifo_jitter() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(LinkSpec::default().delay(ms(40)).jitter(ms(10)).seed(3), 0);
        let mut last = t0;
        let (mut min, mut max, mut sum) = (Duration::MAX, Duration::ZERO, Duration::ZERO);
        let n = 20_000u32;
        for i in 0..n {
            let now = t0 + Duration::from_micros(250) * i;
            let Verdict::Deliver { at, reordered } = m.offer(now, 1200) else { panic!() };
            assert!(!reordered);
            assert!(at >= last, "packet {i} overtook the one before it");
            last = at;
            min = min.min(at - now);
            max = max.max(at - now);
            sum += at - now;
        }
        assert!(min >= ms(30) && min < ms(31), "min delay {min:?}");
        assert!(max > ms(49) && max <= ms(50), "max delay {max:?}");
        let mean = sum / n;
        assert!(
            mean > Duration::from_micros(38_500) && mean < Duration::from_micros(41_500),
            "mean {mean:?}"
        );

        // Without jitter the delay is exact.
        let mut m = LinkModel::new(LinkSpec::default().delay(ms(40)), 0);
        assert_eq!(m.offer(t0, 100), Verdict::Deliver { at: t0 + ms(40), reordered: false });
    }

    #[test]
    fn reordering_only_when_asked() {
        let spec = LinkSpec::default().delay(ms(20)).jitter(ms(5)).seed(9);
        let t0 = Instant::now();
        let deliveries = |spec: LinkSpec| {
            let mut m = LinkModel::new(spec, 0);
            let v: Vec<Instant> = (0..10_000u32)
                .map(|i| match m.offer(t0 + Duration::from_micros(200) * i, 1000) {
                    Verdict::Deliver { at, .. } => at,
                    v => panic!("{v:?}"),
                })
                .collect();
            (v, m.counters().reordered_packets)
        };
        let (v, n) = deliveries(spec.clone());
        assert_eq!(n, 0);
        assert!(v.windows(2).all(|w| w[0] <= w[1]));

        let (v, n) = deliveries(spec.reorder(Probability::percent(5.0), ms(3)));
        assert!((400..600).contains(&n), "reordered {n}");
        let inversions = v.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 300, "inversions {inversions}");
    }

    #[test]
    fn bottleneck_serializes_at_the_rate() {
        // 10 Mbit/s, 1000-byte payloads + 28 overhead = 822.4 us each; all offered at once.
        let spec = LinkSpec::default().rate(10_000_000).queue(10 << 20);
        let t0 = Instant::now();
        let mut m = LinkModel::new(spec, 0);
        let mut at = Vec::new();
        for _ in 0..100 {
            let Verdict::Deliver { at: a, .. } = m.offer(t0, 1000) else { panic!() };
            at.push(a - t0);
        }
        assert_eq!(at[0], Duration::from_nanos(822_400));
        assert_eq!(at[99], Duration::from_nanos(822_400 * 100));
        assert_eq!(m.backlog_bytes(t0), 102_800);
        assert_eq!(m.counters().peak_queue_bytes, 102_800);
        // Half-way through, half the backlog is left.
        assert_eq!(m.backlog_bytes(t0 + Duration::from_nanos(822_400 * 50)), 51_400);
        // A packet arriving on an idle link only pays its own serialization.
        let later = t0 + Duration::from_secs(1);
        let Verdict::Deliver { at, .. } = m.offer(later, 1000) else { panic!() };
        assert_eq!(at - later, Duration::from_nanos(822_400));
    }

    #[test]
    fn queue_overflow_tail_drops() {
        // 15000-byte queue holds 14 packets of 1028 wire bytes; the rest of a burst is dropped.
        let spec = LinkSpec::default().rate(10_000_000).queue(15_000);
        let t0 = Instant::now();
        let (v, m) = {
            let mut m = LinkModel::new(spec, 0);
            let v: Vec<_> = (0..100).map(|_| m.offer(t0, 1000)).collect();
            (v, m)
        };
        let accepted = v.iter().filter(|v| matches!(v, Verdict::Deliver { .. })).count();
        assert_eq!(accepted, 14);
        assert!(v[14..].iter().all(|v| *v == Verdict::QueueFull));
        let c = m.counters();
        assert_eq!(c.queue_dropped_packets, 86);
        assert_eq!(c.queue_dropped_bytes, 86_000);
        assert_eq!(c.in_flight_packets(), 14);
        assert!(c.peak_queue_bytes <= 15_000);

        // Offered at exactly the rate, nothing is dropped even with a small queue.
        let spec = LinkSpec::default().rate(10_000_000).queue(3000);
        let (v, _) = run(spec, 1000, 1000, Duration::from_nanos(822_400));
        assert!(v.iter().all(|v| matches!(v, Verdict::Deliver { .. })));
        // At twice the rate, about half is dropped.
        let spec = LinkSpec::default().rate(10_000_000).queue(3000);
        let (v, _) = run(spec, 1000, 1000, Duration::from_nanos(411_200));
        let dropped = v.iter().filter(|v| **v == Verdict::QueueFull).count();
        assert!((490..=510).contains(&dropped), "dropped {dropped}");
    }

    #[test]
    fn default_queue_is_50ms_of_the_rate() {
        assert_eq!(LinkSpec::default().rate(100_000_000).effective_queue(), 625_000);
        assert_eq!(LinkSpec::default().rate(1_000_000).effective_queue(), 65_536);
    }

    #[test]
    fn rate_change_applies_behind_the_queued_packets() {
        let spec = LinkSpec::default().rate(10_000_000).queue(1 << 20);
        let t0 = Instant::now();
        let mut m = LinkModel::new(spec.clone(), 0);
        for _ in 0..10 {
            m.offer(t0, 1222); // 1250 wire bytes = 1 ms each
        }
        assert_eq!(m.backlog_bytes(t0), 12_500);
        m.set_spec(spec.clone().rate(20_000_000), t0);
        let Verdict::Deliver { at, .. } = m.offer(t0, 1222) else { panic!() };
        assert_eq!(at - t0, Duration::from_micros(10_500));
        // Removing the rate lets packets through at once, still behind the queued ones.
        m.set_spec(LinkSpec { rate: None, ..spec }, t0);
        let Verdict::Deliver { at, .. } = m.offer(t0 + ms(1), 1222) else { panic!() };
        assert_eq!(at - t0, Duration::from_micros(10_500));
        let Verdict::Deliver { at, .. } = m.offer(t0 + ms(20), 1222) else { panic!() };
        assert_eq!(at - t0, ms(20));
    }

    #[test]
    fn counters_add_up() {
        let spec = LinkSpec::default()
            .delay(ms(10))
            .loss(Probability::percent(2.0))
            .rate(5_000_000)
            .queue(20_000)
            .reorder(Probability::percent(1.0), ms(1))
            .seed(77);
        let t0 = Instant::now();
        let mut m = LinkModel::new(spec, 0);
        let mut pending = 0;
        for i in 0..5000u32 {
            if let Verdict::Deliver { .. } =
                m.offer(t0 + Duration::from_micros(500) * i, 100 + (i as usize % 1100))
            {
                pending += 1;
            }
        }
        let c = m.counters();
        assert!(c.lost_packets > 0 && c.queue_dropped_packets > 0);
        assert_eq!(c.in_flight_packets(), pending);
        assert_eq!(
            c.offered_packets,
            c.delivered_packets + c.lost_packets + c.queue_dropped_packets + pending
        );
    }
}
