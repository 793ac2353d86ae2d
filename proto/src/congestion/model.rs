//! A packet-level model of a branch link, driven by the real [`Pipe`]: a bottleneck of fixed
//! rate with a tail-drop queue, propagation delay, random loss before the bottleneck, and
//! optionally a competing flow of constant rate through the same queue.
//!
//! The controller's tests run it to check what [`Pipe`] achieves; the simulator runs it once
//! per kind of site link ([`profile`]) to learn the rate a connection reaches on that link and
//! the time its start costs, so that its fluid model of the WAN predicts what the transport
//! does rather than what the link could do.
//!
//! The receiver acknowledges every second datagram, or [`MAX_ACK_DELAY`] after a lone one, as
//! QUIC receivers do by default. What it leaves out: pacing (a window is sent at once), loss
//! of acknowledgements, and MTU discovery (one datagram size throughout).

use super::Pipe;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// How long a receiver holds the acknowledgement of a lone datagram (QUIC's default).
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(25);
/// Width of the slots [`Outcome::delivered`] counts bytes in.
pub const SLOT: Duration = Duration::from_millis(10);
/// Datagram size of a connection after MTU discovery: quinn's default upper bound, which an
/// Ethernet path (and the WAN emulator on loopback) reaches within the first second.
pub const PROFILE_MTU: u16 = 1452;
/// Bytes of a full datagram that are not chunk data: the short header (flags, an 8-byte
/// connection id, packet number), the 16-byte AEAD tag, the STREAM frame's header, and the
/// ACK frames sent beside the data. The emulator's clean-link runs carry 1.028× the stored
/// bytes at this datagram size, which is 40 bytes of 1,452.
pub const PACKET_OVERHEAD: u16 = 40;

/// The link: bottleneck `rate` (bytes/s on the wire), `queue` bytes before it, `rtt`, and a
/// random `loss` fraction in front of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub rtt: Duration,
    pub rate: f64,
    pub queue: f64,
    pub loss: f64,
    /// The receiver acknowledges nothing from `.0` for `.1` (a host busy with other work),
    /// then everything that arrived meanwhile at once.
    pub receiver_stall: Option<(Duration, Duration)>,
}

impl Link {
    /// A link whose queue holds 50 ms of its rate (at least 64 KiB), as the WAN emulator's
    /// default queue does.
    pub fn new(rtt: Duration, rate: f64, loss: f64) -> Link {
        Link { rtt, rate, queue: (rate * 0.05).max(65536.0), loss, receiver_stall: None }
    }
}

/// A competitor sending `rate` bytes/s through the bottleneck from `from` until `to`.
#[derive(Clone, Debug)]
pub struct Competitor {
    pub rate: f64,
    pub from: Duration,
    pub to: Duration,
}

/// What a run delivered.
#[derive(Default, Debug)]
pub struct Outcome {
    /// Bytes of ours delivered per [`SLOT`].
    pub delivered: Vec<u64>,
    /// Bytes sent, retransmissions included.
    pub sent: u64,
    /// Bytes that arrived.
    pub unique: u64,
    /// Datagrams the bottleneck's full queue dropped.
    pub queue_drops: u64,
}

impl Outcome {
    /// Mean delivery rate from `from` to `to`, bytes/s.
    pub fn rate(&self, from: Duration, to: Duration) -> f64 {
        let (a, b) = (slot_of(from), slot_of(to).min(self.delivered.len()));
        self.delivered[a.min(b)..b].iter().sum::<u64>() as f64 / (to - from).as_secs_f64()
    }
}

fn slot_of(t: Duration) -> usize {
    (t.as_nanos() / SLOT.as_nanos()) as usize
}

/// A datagram of ours: its number, when it was sent, its size.
#[derive(Clone, Copy)]
struct Datagram {
    pn: u64,
    sent: Duration,
    bytes: u64,
}

enum Ev {
    /// A datagram reaches the receiver.
    Arrive(Datagram),
    /// The receiver's delayed-ACK timer of generation `gen` fires.
    AckTimer {
        gen: u64,
    },
    /// An acknowledgement of these datagrams reaches the sender.
    Ack(Vec<Datagram>),
    Lost {
        bytes: u64,
    },
    CompetitorSend,
}

/// Events in time order (ties in the order pushed).
#[derive(Default)]
struct Events {
    heap: BinaryHeap<Reverse<(Duration, u64)>>,
    payloads: HashMap<u64, Ev>,
    seq: u64,
}

impl Events {
    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.payloads.insert(self.seq, ev);
        self.heap.push(Reverse((at, self.seq)));
    }

    fn pop(&mut self) -> Option<(Duration, Ev)> {
        let Reverse((at, id)) = self.heap.pop()?;
        Some((at, self.payloads.remove(&id).expect("every event has a payload")))
    }
}

/// Runs a bulk sender of `mtu`-byte datagrams with `pipe` over `link` for `run`; `seed` draws
/// the random losses. `start` is the instant `pipe` was built at: the model's virtual time
/// counts from it (the model reads no clock).
pub fn simulate(
    pipe: &mut Pipe,
    start: Instant,
    mtu: u16,
    link: &Link,
    competitor: Option<Competitor>,
    run: Duration,
    seed: u64,
) -> Outcome {
    let t0 = start;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Outcome { delivered: vec![0; slot_of(run) + 1], ..Outcome::default() };
    let mut events = Events::default();
    // The bottleneck: when its queue is next empty (departure time of its last packet).
    let mut busy_until = Duration::ZERO;
    let enqueue = |now: Duration, bytes: u64, busy: &mut Duration| -> Option<Duration> {
        let start = (*busy).max(now);
        let backlog = (start - now).as_secs_f64() * link.rate;
        if backlog + bytes as f64 > link.queue {
            return None;
        }
        *busy = start + Duration::from_secs_f64(bytes as f64 / link.rate);
        Some(*busy)
    };
    let mtu = u64::from(mtu);
    let (mut now, mut in_flight, mut pn, mut largest_acked) = (Duration::ZERO, 0u64, 0u64, None);
    let one_way = link.rtt / 2;
    // When an acknowledgement made at `t` leaves the receiver.
    let ack_leaves = |t: Duration| match link.receiver_stall {
        Some((from, len)) if t >= from && t < from + len => from + len,
        _ => t,
    };
    // The receiver: datagrams not yet acknowledged, and its timer's generation.
    let (mut unacked, mut timer_gen): (Vec<Datagram>, u64) = (Vec::new(), 0);
    if let Some(c) = &competitor {
        events.push(c.from, Ev::CompetitorSend);
    }
    while now < run {
        // Send what the window allows.
        while in_flight + mtu <= pipe.window() {
            pn += 1;
            in_flight += mtu;
            out.sent += mtu;
            pipe.on_sent(pn);
            let lost = rng.gen::<f64>() < link.loss;
            match (lost, enqueue(now, mtu, &mut busy_until)) {
                (false, Some(departs)) => {
                    let d = Datagram { pn, sent: now, bytes: mtu };
                    events.push(departs + one_way, Ev::Arrive(d))
                }
                (_, departs) => {
                    if departs.is_none() {
                        out.queue_drops += 1;
                    }
                    // Detected a little over one RTT later, as packet-threshold loss
                    // detection does.
                    events.push(now + link.rtt + link.rtt / 8, Ev::Lost { bytes: mtu });
                }
            }
        }
        let Some((at, ev)) = events.pop() else { break };
        now = at;
        match ev {
            Ev::Arrive(d) => {
                if now < run {
                    out.unique += d.bytes;
                    out.delivered[slot_of(now)] += d.bytes;
                }
                unacked.push(d);
                timer_gen += 1;
                if unacked.len() >= 2 {
                    events.push(ack_leaves(now) + one_way, Ev::Ack(std::mem::take(&mut unacked)));
                } else {
                    events.push(now + MAX_ACK_DELAY, Ev::AckTimer { gen: timer_gen });
                }
            }
            Ev::AckTimer { gen } => {
                if gen == timer_gen && !unacked.is_empty() {
                    events.push(ack_leaves(now) + one_way, Ev::Ack(std::mem::take(&mut unacked)));
                }
            }
            Ev::Ack(datagrams) => {
                for d in &datagrams {
                    in_flight -= d.bytes;
                    pipe.on_ack(t0 + now, t0 + d.sent, d.bytes, false, link.rtt);
                    largest_acked = Some(largest_acked.map_or(d.pn, |l: u64| l.max(d.pn)));
                }
                pipe.on_end_acks(t0 + now, false, largest_acked);
            }
            Ev::Lost { bytes } => {
                in_flight -= bytes;
                pipe.on_loss(t0 + now, false, bytes);
            }
            Ev::CompetitorSend => {
                let c = competitor.as_ref().expect("scheduled only with a competitor");
                let _ = enqueue(now, mtu, &mut busy_until);
                let next = now + Duration::from_secs_f64(mtu as f64 / c.rate);
                if next < c.to {
                    events.push(next, Ev::CompetitorSend);
                }
            }
        }
    }
    out
}

/// What one connection under [`Pipe`] achieves on a link, as a fluid model can use it.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Chunk data per second once the connection has started.
    pub rate: f64,
    /// Chunk data arrived at the receiver by the end of each [`SLOT`] from when the sender
    /// began.
    curve: Vec<f64>,
    rtt: Duration,
}

impl Profile {
    /// The time the connection's start costs a transfer paced at `rate` (bytes/s of chunk
    /// data; the connection's own rate when that is lower): how much later it ends than a
    /// transfer at that rate whose first byte arrives one round trip after it is asked for.
    ///
    /// A sender held to `rate` delivers, by time t, the least over s ≤ t of what the
    /// unhindered connection delivered by s plus `rate` × (t − s); its lag behind `rate` × t
    /// is the largest s − delivered(s) / `rate`. The sender begins half a round trip after
    /// the request left, so half a round trip of that lag is the one any transfer has.
    pub fn start_lag(&self, rate: f64) -> Duration {
        let rate = rate.min(self.rate);
        if rate.is_nan() || rate <= 0.0 {
            return Duration::ZERO;
        }
        let slot = SLOT.as_secs_f64();
        let lag = self
            .curve
            .iter()
            .enumerate()
            .map(|(i, d)| (i + 1) as f64 * slot - d / rate)
            .fold(0.0, f64::max);
        Duration::from_secs_f64(lag).saturating_sub(self.rtt / 2)
    }
}

/// Runs a fresh [`Pipe`] over `link` and measures its [`Profile`]: long enough for slow start
/// to end on links up to a satellite hop, and for the gain cycle to settle. `origin` is any
/// instant; the model's virtual time counts from it.
pub fn profile(link: &Link, seed: u64, origin: Instant) -> Profile {
    let run = (link.rtt * 60).clamp(Duration::from_secs(2), Duration::from_secs(12));
    let mut pipe = Pipe::new(origin, PROFILE_MTU, None);
    let out = simulate(&mut pipe, origin, PROFILE_MTU, link, None, run, seed);
    let data = f64::from(PROFILE_MTU - PACKET_OVERHEAD) / f64::from(PROFILE_MTU);
    let mut curve = Vec::with_capacity(out.delivered.len());
    let mut sum = 0.0;
    for b in &out.delivered[..out.delivered.len() - 1] {
        sum += *b as f64 * data;
        curve.push(sum);
    }
    // The steady rate: the second half of the run, after slow start on every link here.
    let rate = out.rate(run / 2, run) * data;
    Profile { rate, curve, rtt: link.rtt }
}
