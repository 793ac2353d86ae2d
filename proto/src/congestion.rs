//! The congestion controller of every Oasis QUIC connection: a delivery-rate controller that
//! fills a link with latency and random loss, and backs off when a link's queue grows while
//! its connection only carries background traffic.
//!
//! Loss-based controllers (Cubic, quinn's default) read every lost packet as congestion: on a
//! branch link with 0.5% random loss and 80 ms RTT they use a few percent of it (the Mathis
//! bound). quinn's experimental BBR ignores random loss but keeps twice the path's
//! bandwidth-delay product in flight, paced at 1.25 windows per RTT, so a bounded bottleneck
//! queue drops a large share of what it sends, and every drop is sent again over the WAN.
//!
//! This controller measures what the path delivers instead:
//! - **bandwidth**: bytes acknowledged per round trip (a round ends when a packet sent after
//!   it began is acknowledged), the maximum of the last [`BW_WINDOW_ROUNDS`] rounds; rounds in
//!   which the sender ran out of data only ever raise it;
//! - **base RTT**: the smallest RTT sample; after [`MIN_RTT_WINDOW`] the smallest of the last
//!   gain cycle replaces it (the cycle's draining round empties the queue, so a standing queue
//!   is never taken for path delay);
//! - **window**: bandwidth × base RTT (the bandwidth-delay product) × a gain that cycles once
//!   per round through [`PROBE_GAINS`]: one round at 1.25 to find more bandwidth, one below 1
//!   to drain what that queued, then 1.2 (ACKs arrive in batches, and a lost packet holds its
//!   place in the window until it is declared lost: on the emulated 80 ms, 1%-loss link, 1.1
//!   left 16% of the link unused, 1.2 leaves 14%, at a standing queue of a fifth of the RTT).
//!   quinn paces a window over one smoothed RTT, so the window is also the sending rate. The
//!   RTT in the product is never taken below [`MIN_BDP_RTT`]: under that, when ACKs come back
//!   depends on the hosts' scheduling more than on the path (a LAN, loopback).
//!
//! It starts like slow start (the window grows by what is acknowledged, doubling per round)
//! and leaves that start when the bandwidth stops growing by a quarter for
//! [`STARTUP_FLAT_ROUNDS`] rounds, as soon as [`STARTUP_DELAYED_ACKS`] acknowledgements in a
//! row come back more than an eighth of the base RTT late (the queue is filling: leave before
//! it overflows, taking the rate those acknowledgements arrived at as the bandwidth), or when a
//! round loses more than [`CONGESTION_LOSS`] of its packets. A receiver busy for a few
//! milliseconds delays every acknowledgement it owes at once, the oldest most, and a start
//! ended on that leaves the link at a fraction of its rate for seconds while the probing gain
//! finds the rest: when the delays fell along the row that ended it, the start resumes once
//! [`STARTUP_RESUME_ROUNDS`] probing rounds, each with the window the limit, saw no queue and
//! the bandwidth grew by [`STARTUP_GROWTH`] (at most [`STARTUP_RESUMES`] times a connection).
//!
//! Random loss of a few percent does not slow it; a round of at least
//! [`CONGESTION_MIN_DATAGRAMS`] that was not short of data and lost more than
//! [`CONGESTION_LOSS`] of its bytes is congestion: the bandwidth estimate falls to what that
//! round delivered, or by [`CONGESTION_KEEP`] at most. Persistent congestion (every packet of
//! several PTOs lost) starts over.
//!
//! **Yielding.** A connection whose [`YieldSwitch`] is on (it carries background prefetch only)
//! also keeps a LEDBAT window (RFC 6817): it grows while the queueing delay (a round's mean
//! RTT sample over the base) is under [`YIELD_TARGET`] and shrinks in proportion when it is
//! over. Another flow filling the bottleneck raises the delay, and the background window falls
//! to a few packets; when the other flow stops, the delay falls and the window doubles per
//! round back to the path's bandwidth-delay product.
//!
//! Everything here is arithmetic on the events quinn reports: no clock is read and nothing is
//! sent, so the simulator can drive the same code.

use quinn_proto::congestion::{Controller, ControllerFactory};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rounds whose delivery rate the bandwidth estimate is the maximum of.
pub const BW_WINDOW_ROUNDS: usize = 10;
/// How long a base-RTT sample stands before a newer, larger one may replace it.
pub const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Smallest RTT the bandwidth-delay product is computed with.
pub const MIN_BDP_RTT: Duration = Duration::from_millis(4);
/// Window gains over the bandwidth-delay product, one per round, cycled.
pub const PROBE_GAINS: [f64; 8] = [1.25, 0.95, 1.2, 1.2, 1.2, 1.2, 1.2, 1.2];
/// Startup ends after this many rounds without [`STARTUP_GROWTH`] times the bandwidth.
pub const STARTUP_FLAT_ROUNDS: u32 = 3;
/// Growth of the bandwidth estimate that says a start has not found the link's rate yet.
pub const STARTUP_GROWTH: f64 = 1.25;
/// Window, in datagrams, from which startup watches the RTT for a filling queue and counts
/// rounds without growth: twice the initial window, so that the first round, which measures
/// the handshake and the peer's ACK timing more than the path, never ends startup (at the
/// initial window itself, 4 lossy cells of the WAN matrix left startup early, filled no queue
/// and ran at 60-77% of the link where their neighbours ran at 75-87%).
pub const STARTUP_DELAY_MIN_DATAGRAMS: u64 = 2 * INITIAL_DATAGRAMS;
/// Datagrams a round must carry before its loss rate is read as congestion.
pub const CONGESTION_MIN_DATAGRAMS: u64 = 32;
/// Share of the bandwidth estimate a congested round keeps at least.
pub const CONGESTION_KEEP: f64 = 0.85;
/// Fewest datagrams a round must lose to count as congested, whatever its loss rate.
pub const CONGESTION_MIN_LOST_DATAGRAMS: u64 = 4;
/// Share of another flow's standing queue (the last gain cycle's smallest RTT over the base)
/// that the window counts as path delay.
pub const COMPETING_QUEUE_SHARE: f64 = 0.5;
/// Consecutive acknowledgements delayed by a filling queue that end startup.
pub const STARTUP_DELAYED_ACKS: u32 = 8;
/// Rounds after a delay-ended startup, each with the window the limit and no queue, after
/// which startup resumes: the delay was the receiver's, not a queue's.
pub const STARTUP_RESUME_ROUNDS: u32 = 2;
/// Times a connection's startup may resume.
pub const STARTUP_RESUMES: u32 = 3;
/// Share of a round's bytes lost above which the loss is read as congestion, not as the
/// random loss every radio and long-haul link has.
pub const CONGESTION_LOSS: f64 = 0.05;
/// Queueing delay a yielding connection aims for (LEDBAT's target; RFC 6817 allows up to 100 ms,
/// Windows' LEDBAT++ uses 60 ms; branch links queue less than that before they drop).
pub const YIELD_TARGET: Duration = Duration::from_millis(20);
/// How long a yielding connection grows gently after it last saw another flow's queue.
pub const YIELD_CALM: Duration = Duration::from_secs(2);
/// Initial window, in datagrams: 32, where RFC 9002 recommends 10 (quinn's controllers use 10).
///
/// Why more: a layer's transfer starts with a manifest body of tens of kilobytes and then
/// grows one doubling per round trip; at 150 ms every doubling costs 0.15 s. With 10 datagrams
/// a 57 KB body took three round trips and a 300 Mbit/s, 5 ms, 1%-loss Wi-Fi fetch of 128 MiB
/// reached 67-76% of its link; with 32, 79-87%, and the 150 ms WAN cells gain 3-4 points.
/// quinn paces the window over the smoothed RTT, which the handshake has measured, in bursts
/// of at most 10 datagrams (38 KB over 150 ms is 2 Mbit/s): the first flight does not land
/// on a branch link's queue at once.
const INITIAL_DATAGRAMS: u64 = 32;
/// Smallest window, in datagrams.
const MIN_DATAGRAMS: u64 = 4;
/// Datagrams of slack above the bandwidth-delay product: ACKs come in batches.
const SLACK_DATAGRAMS: u64 = 4;

/// Turns a connection's yielding on and off while it runs (see the module docs); one per
/// connection, shared by the server's request handler and the connection's controller.
#[derive(Debug, Default)]
pub struct YieldSwitch(AtomicBool);

impl YieldSwitch {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds [`PipeController`]s, each with a [`YieldSwitch`] of its own (off), which the
/// connection's owner reaches through [`PipeController::switch`]; or all sharing one given switch.
#[derive(Clone, Debug, Default)]
pub struct PipeConfig {
    switch: Option<Arc<YieldSwitch>>,
}

impl PipeConfig {
    /// A config whose controllers each get a switch of their own, off until turned on.
    pub fn new() -> PipeConfig {
        PipeConfig { switch: None }
    }

    /// A config whose controllers yield while `switch` is on (it must serve one connection,
    /// or connections that are to yield together).
    pub fn yielding(switch: Arc<YieldSwitch>) -> PipeConfig {
        PipeConfig { switch: Some(switch) }
    }
}

impl ControllerFactory for PipeConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let switch = self.switch.clone().unwrap_or_default();
        Box::new(PipeController(Pipe::new(now, current_mtu, Some(switch))))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Startup,
    /// Probing: index into [`PROBE_GAINS`].
    Probe(usize),
}

/// The controller's state and rules, driven by plain events (quinn's through
/// [`PipeController`], a simulated link's in tests and in the simulator).
#[derive(Clone, Debug)]
pub struct Pipe {
    mtu: u64,
    window: u64,
    mode: Mode,
    // The current round.
    max_sent: u64,
    round_end: u64,
    round_start: Instant,
    round_acked: u64,
    round_lost: u64,
    round_min_rtt: Option<Duration>,
    /// Sum and count of this round's RTT samples (the yield window reads their mean).
    round_rtt_sum: Duration,
    round_rtt_samples: u32,
    round_app_limited: bool,
    // Estimates.
    bw: VecDeque<u64>,
    startup_best: u64,
    startup_flat: u32,
    startup_delayed: u32,
    /// The first and the longest RTT sample of the delayed acknowledgements in a row, while
    /// startup counts them.
    startup_first_delayed: Duration,
    startup_peak_delayed: Duration,
    /// Startup ended on delayed acknowledgements that a queue does not explain, and no round
    /// since has seen a queue.
    startup_unconfirmed: bool,
    /// Rounds since then with the window the limit and no queue.
    startup_room_rounds: u32,
    /// The bandwidth estimate when that startup ended.
    startup_exit_bw: u64,
    startup_resumes: u32,
    min_rtt: Option<Duration>,
    min_rtt_at: Instant,
    cycle_min_rtt: Option<Duration>,
    /// The smallest RTT of the last whole gain cycle: over the base RTT only by a queue this
    /// connection's draining round could not empty, another flow's.
    last_cycle_min_rtt: Option<Duration>,
    // Yielding (LEDBAT).
    switch: Option<Arc<YieldSwitch>>,
    yield_window: u64,
    /// When a yielding round last saw the queue over the target (another flow is there).
    yield_pressure_at: Option<Instant>,
}

impl Pipe {
    pub fn new(now: Instant, mtu: u16, switch: Option<Arc<YieldSwitch>>) -> Pipe {
        let mtu = mtu as u64;
        Pipe {
            mtu,
            window: INITIAL_DATAGRAMS * mtu,
            mode: Mode::Startup,
            max_sent: 0,
            round_end: 0,
            round_start: now,
            round_acked: 0,
            round_lost: 0,
            round_min_rtt: None,
            round_rtt_sum: Duration::ZERO,
            round_rtt_samples: 0,
            round_app_limited: false,
            bw: VecDeque::with_capacity(BW_WINDOW_ROUNDS),
            startup_best: 0,
            startup_flat: 0,
            startup_delayed: 0,
            startup_first_delayed: Duration::ZERO,
            startup_peak_delayed: Duration::ZERO,
            startup_unconfirmed: false,
            startup_room_rounds: 0,
            startup_exit_bw: 0,
            startup_resumes: 0,
            min_rtt: None,
            min_rtt_at: now,
            cycle_min_rtt: None,
            last_cycle_min_rtt: None,
            switch,
            yield_window: INITIAL_DATAGRAMS * mtu,
            yield_pressure_at: None,
        }
    }

    fn min_window(&self) -> u64 {
        MIN_DATAGRAMS * self.mtu
    }

    /// Bandwidth estimate, bytes per second (0 before the first round).
    pub fn bandwidth(&self) -> u64 {
        self.bw.iter().copied().max().unwrap_or(0)
    }

    /// Base RTT estimate.
    pub fn base_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    fn yielding(&self) -> bool {
        self.switch.as_ref().is_some_and(|s| s.is_on())
    }

    /// Bandwidth-delay product × `gain`, plus slack; None before a first estimate.
    fn target(&self, gain: f64) -> Option<u64> {
        let (bw, base) = (self.bandwidth(), self.min_rtt?);
        if bw == 0 {
            return None;
        }
        // Beside a flow that keeps a standing queue (a loss-based download), the round trip is
        // the base plus that queue: a window of bandwidth × base would send below the rate it
        // measured, measure less, and shrink round after round to nothing. Part of that queue
        // counts; all of it would take the link from the other flow.
        let standing = match self.last_cycle_min_rtt {
            Some(m) if !self.yielding() => m.saturating_sub(base).mul_f64(COMPETING_QUEUE_SHARE),
            _ => Duration::ZERO,
        };
        let rtt = (base + standing).max(MIN_BDP_RTT);
        let bdp = bw as f64 * rtt.as_secs_f64();
        Some(((bdp * gain) as u64 + SLACK_DATAGRAMS * self.mtu).max(self.min_window()))
    }

    /// A congested round: the bandwidth estimate falls to what the round delivered, at least
    /// [`CONGESTION_KEEP`] of what it was (one bad round does not empty the pipe).
    fn congestion(&mut self, delivered: u64) {
        let keep = (self.bandwidth() as f64 * CONGESTION_KEEP) as u64;
        self.bw.clear();
        self.push_bw(delivered.max(keep));
    }

    /// Did this round lose more than random loss explains? A round of a few packets says
    /// nothing about the loss rate (one random loss in ten packets is 10%; two in forty, 5%,
    /// happen in one round of eleven at 1% random loss), and a round short of data did not fill
    /// any queue.
    fn heavy_loss(&self) -> bool {
        let (acked, lost) = (self.round_acked, self.round_lost);
        !self.round_app_limited
            && acked + lost >= CONGESTION_MIN_DATAGRAMS * self.mtu
            && lost >= CONGESTION_MIN_LOST_DATAGRAMS * self.mtu
            && (lost as f64) > CONGESTION_LOSS * (acked + lost) as f64
    }

    fn push_bw(&mut self, sample: u64) {
        if self.bw.len() == BW_WINDOW_ROUNDS {
            self.bw.pop_front();
        }
        self.bw.push_back(sample);
    }

    fn end_round(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.round_start);
        let acked = self.round_acked;
        let lost = self.round_lost;
        let sample =
            if elapsed.is_zero() { 0 } else { (acked as f64 / elapsed.as_secs_f64()) as u64 };
        // A round much shorter than the RTT (a few packets acknowledged at once) measures the
        // ACKs' spacing, not the path; a round short of data says only that the path carries
        // at least this much.
        let full_round = self.min_rtt.is_none_or(|base| elapsed >= base / 2);
        if full_round && (!self.round_app_limited || sample > self.bandwidth()) {
            self.push_bw(sample);
        }
        let congested = self.heavy_loss();
        let queue_delay = match (self.round_min_rtt, self.min_rtt) {
            (Some(r), Some(base)) => r.saturating_sub(base),
            _ => Duration::ZERO,
        };
        match self.mode {
            Mode::Startup => {
                let bw = self.bandwidth();
                if bw as f64 >= self.startup_best as f64 * STARTUP_GROWTH {
                    self.startup_best = bw;
                    self.startup_flat = 0;
                } else if !self.round_app_limited
                    && self.window >= STARTUP_DELAY_MIN_DATAGRAMS * self.mtu
                {
                    // A window of a few packets measures the handshake and the peer's ACK
                    // timing, not the path: a random loss or a delayed ACK there would end
                    // slow start at a fraction of a long path's rate.
                    self.startup_flat += 1;
                }
                if self.startup_flat >= STARTUP_FLAT_ROUNDS || congested {
                    tracing::trace!(
                        flat = self.startup_flat,
                        congested,
                        window = self.window,
                        "slow start ends at the round's end"
                    );
                    if congested {
                        self.congestion(sample);
                    }
                    // Begin with the draining round.
                    self.mode = Mode::Probe(1);
                }
            }
            Mode::Probe(i) => {
                if congested {
                    self.congestion(sample);
                }
                let next = (i + 1) % PROBE_GAINS.len();
                if next == 0 {
                    // A cycle's smallest RTT was taken in its draining round, with the queue
                    // empty: it replaces a base RTT too old to trust (the path may have
                    // changed) without ever reading a standing queue as path delay.
                    // Not while yielding: the draining round empties only this connection's
                    // queue, and the standing queue of the flow it yields to would become the
                    // base, so that it stopped yielding to that flow.
                    if now.saturating_duration_since(self.min_rtt_at) > MIN_RTT_WINDOW
                        && !self.yielding()
                    {
                        if let Some(m) = self.cycle_min_rtt {
                            self.min_rtt = Some(m);
                            self.min_rtt_at = now;
                        }
                    }
                    self.last_cycle_min_rtt = self.cycle_min_rtt;
                    self.cycle_min_rtt = None;
                }
                self.mode = Mode::Probe(next);
                if self.startup_unconfirmed && i != 1 {
                    self.check_startup_exit(queue_delay, congested);
                }
            }
        }
        if let Mode::Probe(i) = self.mode {
            if let Some(t) = self.target(PROBE_GAINS[i]) {
                self.window = t;
            }
        }
        tracing::trace!(
            mode = ?self.mode,
            sample,
            bw = self.bandwidth(),
            acked,
            lost,
            app_limited = self.round_app_limited,
            queue_ms = queue_delay.as_secs_f64() * 1e3,
            base_ms = self.min_rtt.map(|r| r.as_secs_f64() * 1e3),
            window = self.window,
            yield_window = self.yielding().then_some(self.yield_window),
            "round"
        );
        if self.yielding() {
            // The mean, not the minimum: a competitor's queue swings (a loss-based flow halves
            // and refills it), and a round's minimum catches its lowest point, where the
            // yielding window would grow while the queue stands half full.
            let mean_delay = match (self.round_rtt_samples, self.min_rtt) {
                (n, Some(base)) if n > 0 => (self.round_rtt_sum / n).saturating_sub(base),
                _ => queue_delay,
            };
            self.adjust_yield(now, mean_delay, congested);
        } else {
            self.yield_window = self.window;
        }
        self.round_start = now;
        self.round_end = self.max_sent;
        self.round_acked = 0;
        self.round_lost = 0;
        self.round_min_rtt = None;
        self.round_rtt_sum = Duration::ZERO;
        self.round_rtt_samples = 0;
        self.round_app_limited = false;
    }

    /// LEDBAT, once per round: over the target the window shrinks by up to half of itself in
    /// proportion to the excess, and halves on congestion. Under it, it grows by up to two
    /// datagrams a round while another flow was seen within [`YIELD_CALM`] (a loss-based flow
    /// that has just backed off leaves the queue short for a few seconds; growing by doubling
    /// then would take back the link it is about to reclaim), and by up to doubling once the
    /// path has been calm that long.
    fn adjust_yield(&mut self, now: Instant, queue_delay: Duration, congested: bool) {
        let target = YIELD_TARGET.as_secs_f64();
        let off = ((target - queue_delay.as_secs_f64()) / target).clamp(-1.0, 1.0);
        if off < 0.0 || congested {
            self.yield_pressure_at = Some(now);
        }
        let calm =
            self.yield_pressure_at.is_none_or(|t| now.saturating_duration_since(t) >= YIELD_CALM);
        let w = self.yield_window as f64;
        let mut next = match (off >= 0.0, calm) {
            (true, true) => w * (1.0 + off),
            (true, false) => w + off * 2.0 * self.mtu as f64,
            (false, _) => w * (1.0 + off / 2.0),
        };
        if congested {
            next = next.min(w / 2.0);
        }
        let cap = self.window.max(self.min_window());
        self.yield_window = (next as u64).clamp(self.min_window(), cap);
    }

    /// Packets up to `last_packet_number` were sent.
    pub fn on_sent(&mut self, last_packet_number: u64) {
        self.max_sent = self.max_sent.max(last_packet_number);
    }

    /// `bytes` sent at `sent` were acknowledged at `now`; `floor` is a lower bound of the
    /// path's RTT (quinn's minimum, which discounts the peer's ACK delay).
    pub fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        floor: Duration,
    ) {
        self.round_acked += bytes;
        self.round_app_limited |= app_limited;
        let sample = now.saturating_duration_since(sent).max(floor);
        self.round_min_rtt = Some(self.round_min_rtt.map_or(sample, |m| m.min(sample)));
        self.round_rtt_sum += sample;
        self.round_rtt_samples = self.round_rtt_samples.saturating_add(1);
        self.cycle_min_rtt = Some(self.cycle_min_rtt.map_or(sample, |m| m.min(sample)));
        if self.min_rtt.is_none_or(|m| sample <= m) {
            self.min_rtt = Some(sample);
            self.min_rtt_at = now;
        }
        if self.mode == Mode::Startup {
            self.startup_ack(now, sample, bytes, app_limited);
        }
    }

    /// Slow start's growth, and its end as soon as the queue fills: waiting for the round to
    /// end would send another round's growth into a queue that is already full.
    fn startup_ack(&mut self, now: Instant, sample: Duration, bytes: u64, app_limited: bool) {
        let base = self.min_rtt.unwrap_or(sample);
        // Below a few dozen packets in flight, the peer's delayed ACKs alone add more than
        // the threshold; a queue worth noticing needs a window of that size anyway.
        if self.window >= STARTUP_DELAY_MIN_DATAGRAMS * self.mtu
            && sample > base + Self::startup_queue(base)
        {
            if self.startup_delayed == 0 {
                (self.startup_first_delayed, self.startup_peak_delayed) = (sample, sample);
            }
            self.startup_peak_delayed = self.startup_peak_delayed.max(sample);
            self.startup_delayed += 1;
        } else {
            self.startup_delayed = 0;
        }
        if self.startup_delayed < STARTUP_DELAYED_ACKS {
            if !app_limited {
                self.window += bytes;
            }
            return;
        }
        // A filling queue delays each packet more than the one before it. A receiver that was
        // busy for a moment acknowledges at once what arrived meanwhile, the oldest first,
        // so the delays fall along the row, or from a peak (a queue was building when it
        // stalled): that start may resume.
        let shrinking = sample < self.startup_first_delayed
            || sample + Self::startup_queue(base) / 2 < self.startup_peak_delayed;
        tracing::trace!(
            ?sample,
            ?base,
            window = self.window,
            shrinking,
            "slow start ends: acks delayed"
        );
        self.leave_startup(now);
        self.startup_unconfirmed = shrinking && self.startup_resumes < STARTUP_RESUMES;
        self.startup_room_rounds = 0;
        self.startup_exit_bw = self.bandwidth();
    }

    /// The queue that delayed acknowledgements must show to end startup: an eighth of the
    /// base RTT, at least 4 ms.
    fn startup_queue(base: Duration) -> Duration {
        (base / 8).max(Duration::from_millis(4))
    }

    /// After startup ended on delayed acknowledgements, one probing round (not the draining
    /// one): a queue confirms the exit; the window the limit with no queue means the delay was
    /// the receiver's (a host busy for a few milliseconds delays every acknowledgement it owes
    /// at once), and the path has room the probing gain would take many rounds to find.
    fn check_startup_exit(&mut self, queue_delay: Duration, congested: bool) {
        let Some(base) = self.min_rtt else { return };
        let threshold = Self::startup_queue(base);
        if queue_delay >= threshold || congested {
            self.startup_unconfirmed = false;
            return;
        }
        if self.round_app_limited || self.yielding() || queue_delay >= threshold / 2 {
            return;
        }
        self.startup_room_rounds += 1;
        // And the rate still climbing as fast as the probing gain lets it: the link takes
        // more than what the start ended at.
        let climbing = self.bandwidth() as f64 >= STARTUP_GROWTH * self.startup_exit_bw as f64;
        if self.startup_room_rounds >= STARTUP_RESUME_ROUNDS && climbing {
            tracing::trace!(window = self.window, bw = self.bandwidth(), "slow start resumes");
            self.mode = Mode::Startup;
            self.startup_best = self.bandwidth();
            self.startup_flat = 0;
            self.startup_delayed = 0;
            self.startup_unconfirmed = false;
            self.startup_resumes += 1;
        }
    }

    /// Ends slow start in the middle of a round: the bottleneck is busy, so this round's acks
    /// so far arrived at its rate.
    fn leave_startup(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.round_start);
        if !elapsed.is_zero() {
            let rate = (self.round_acked as f64 / elapsed.as_secs_f64()) as u64;
            self.push_bw(rate);
        }
        self.mode = Mode::Probe(1);
        if let Some(t) = self.target(PROBE_GAINS[1]) {
            self.window = t;
        }
    }

    /// A batch of acknowledgements is complete; `largest_acked` is the largest packet number
    /// acknowledged so far.
    pub fn on_end_acks(&mut self, now: Instant, app_limited: bool, largest_acked: Option<u64>) {
        self.round_app_limited |= app_limited;
        if largest_acked.is_some_and(|pn| pn >= self.round_end) {
            self.end_round(now);
        }
    }

    /// `lost_bytes` were declared lost; `persistent`: everything sent over several PTOs was.
    pub fn on_loss(&mut self, now: Instant, persistent: bool, lost_bytes: u64) {
        self.round_lost += lost_bytes;
        // A queue that overflowed during slow start: on a path whose RTT is longer than its
        // queue, the delay signal comes back too late, and every ack until the round ends
        // would grow the window further into the drops.
        if self.mode == Mode::Startup && self.heavy_loss() {
            tracing::trace!(
                acked = self.round_acked,
                lost = self.round_lost,
                window = self.window,
                "slow start ends: heavy loss"
            );
            self.leave_startup(now);
        }
        if persistent {
            let keep = self.switch.clone();
            *self = Pipe::new(now, self.mtu as u16, keep);
            self.window = self.min_window();
        }
    }

    pub fn on_mtu(&mut self, mtu: u16) {
        self.mtu = mtu as u64;
        self.window = self.window.max(self.min_window());
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        if self.yielding() {
            self.window.min(self.yield_window).max(self.min_window())
        } else {
            self.window
        }
    }
}

/// [`Pipe`] as a quinn congestion controller.
#[derive(Clone, Debug)]
pub struct PipeController(pub Pipe);

impl PipeController {
    /// The controller's yield switch. quinn hands out copies of a connection's controller
    /// (`congestion_state`); a copy shares the switch with the live one.
    pub fn switch(&self) -> Option<Arc<YieldSwitch>> {
        self.0.switch.clone()
    }
}

impl Controller for PipeController {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, last_packet_number: u64) {
        self.0.on_sent(last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.0.on_ack(now, sent, bytes, app_limited, rtt.min());
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        _in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.0.on_end_acks(now, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.0.on_loss(now, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.0.on_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        self.0.window()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        INITIAL_DATAGRAMS * self.0.mtu
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

pub mod model;

#[cfg(test)]
mod tests;
