//! The controller against the packet-level model of a branch link ([`super::model`]).

use super::model::{self, Competitor, Link, Outcome};
use super::*;

const MTU: u16 = 1200;

fn link(rtt_ms: u64, mbit: f64, loss_pct: f64) -> Link {
    Link::new(Duration::from_millis(rtt_ms), mbit * 1e6 / 8.0, loss_pct / 100.0)
}

/// The instant every test's pipe is built at and the model's virtual time counts from.
fn start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn simulate(
    pipe: &mut Pipe,
    link: &Link,
    competitor: Option<Competitor>,
    run: Duration,
    seed: u64,
) -> Outcome {
    model::simulate(pipe, start(), MTU, link, competitor, run, seed)
}

fn fill(rtt_ms: u64, loss_pct: f64) -> (f64, Outcome) {
    let link = link(rtt_ms, 100.0, loss_pct);
    let mut pipe = Pipe::new(start(), MTU, None);
    let run = Duration::from_secs(20);
    let out = simulate(&mut pipe, &link, None, run, rtt_ms ^ loss_pct.to_bits());
    (out.rate(Duration::from_secs(5), run) / link.rate, out)
}

#[test]
fn fills_a_lossy_long_link_and_sends_little_twice() {
    for (rtt, loss) in [(20, 0.0), (80, 0.5), (80, 1.0), (150, 1.0)] {
        let (share, out) = fill(rtt, loss);
        let overhead = out.sent as f64 / out.unique as f64;
        assert!(share >= 0.85, "{rtt} ms, {loss}% loss: {share:.2} of the bottleneck");
        assert!(
            overhead <= 1.0 + loss / 100.0 + 0.03,
            "{rtt} ms, {loss}% loss: sent {overhead:.3}x what arrived ({} queue drops)",
            out.queue_drops
        );
    }
}

#[test]
fn random_loss_does_not_end_slow_start_early_on_a_long_link() {
    // At 1% random loss, a round of forty packets loses two (5%) about one time in eleven,
    // and a few rounds of a small window look flat: neither may end slow start at a
    // fraction of the path, or a 150 ms link needs seconds more to fill.
    let link = link(150, 100.0, 1.0);
    let bucket = Duration::from_millis(100);
    for seed in 0..24 {
        let mut pipe = Pipe::new(start(), MTU, None);
        let out = simulate(&mut pipe, &link, None, Duration::from_secs(5), seed);
        let full =
            (0..50u32).map(|i| bucket * i).find(|&t| out.rate(t, t + bucket) >= 0.8 * link.rate);
        assert!(
            full.is_some_and(|t| t <= Duration::from_secs(3)),
            "seed {seed}: 80% of the link first reached at {full:?}"
        );
    }
}

#[test]
fn a_receiver_busy_for_a_moment_in_slow_start_does_not_keep_the_link_half_used() {
    // Acknowledgements held back by a busy receiver look like a queue filling, and slow start
    // ends on them; once the rounds show the window is the limit and there is no queue, the
    // link has room, and startup goes on. Without that, a 40 ms stall at the wrong moment put
    // 80% of the link at 1.8-2.4 s after the start at 80 ms and at 2.2-4 s at 150 ms, where
    // an undisturbed start gets there in 0.8 and 1 s.
    for rtt in [80u64, 150] {
        let run = |stall: Option<Duration>| {
            let mut link = link(rtt, 100.0, 0.0);
            link.receiver_stall = stall.map(|at| (at, Duration::from_millis(40)));
            let mut pipe = Pipe::new(start(), MTU, None);
            let out = simulate(&mut pipe, &link, None, Duration::from_secs(6), 1);
            let bucket = Duration::from_millis(100);
            let full = (0..60u32)
                .map(|i| bucket * i)
                .find(|&t| out.rate(t, t + bucket) >= 0.8 * link.rate)
                .expect("the link fills within 6 s");
            (full, out.sent as f64 / out.unique as f64)
        };
        let (undisturbed, _) = run(None);
        // Stalls in the first four round trips of the start, while the window is well below
        // the path's (a stall as the queue fills is a queue as well).
        for at in (0..16).map(|i| Duration::from_millis(60 + i * rtt / 4)) {
            let (full, overhead) = run(Some(at));
            let by = undisturbed + Duration::from_millis(6 * rtt);
            assert!(
                full <= by,
                "{rtt} ms, receiver busy at {at:?}: 80% of the link at {full:?}, not by {by:?}"
            );
            assert!(overhead <= 1.05, "{rtt} ms, busy at {at:?}: sent {overhead:.3}x");
        }
    }
}

#[test]
fn a_yielding_connection_backs_off_for_a_competitor_and_comes_back() {
    let link = link(80, 100.0, 0.0);
    let switch = Arc::new(YieldSwitch::default());
    switch.set(true);
    let mut pipe = Pipe::new(start(), MTU, Some(switch));
    let competitor = Competitor {
        rate: link.rate * 0.95,
        from: Duration::from_secs(8),
        to: Duration::from_secs(20),
    };
    let out = simulate(&mut pipe, &link, Some(competitor), Duration::from_secs(30), 3);
    let alone = out.rate(Duration::from_secs(4), Duration::from_secs(8)) / link.rate;
    let beside = out.rate(Duration::from_secs(10), Duration::from_secs(20)) / link.rate;
    let after = out.rate(Duration::from_secs(23), Duration::from_secs(30)) / link.rate;
    assert!(alone >= 0.8, "alone it fills the link: {alone:.2}");
    assert!(beside <= 0.10, "beside a competitor it keeps to a small share: {beside:.2}");
    assert!(after >= 0.8, "within 3 s of the competitor stopping it is back: {after:.2}");
}

#[test]
fn a_profile_tells_the_rate_and_the_start_a_longer_link_costs() {
    let short = model::profile(&link(20, 100.0, 0.0), 1, start());
    let long = model::profile(&link(150, 100.0, 1.0), 1, start());
    let wire = 100e6 / 8.0;
    for (name, p) in [("20 ms", &short), ("150 ms, 1%", &long)] {
        // Chunk data: the link less the datagrams' own bytes, the gain cycle and the loss.
        assert!(p.rate > 0.85 * wire && p.rate < 0.98 * wire, "{name}: {} B/s", p.rate);
    }
    let (a, b) = (short.start_lag(short.rate), long.start_lag(long.rate));
    assert!(b > a * 3, "slow start costs more round trips' time on a long link: {a:?} vs {b:?}");
    assert!(b < Duration::from_secs(3), "{b:?}");
    // A transfer paced well below the link reaches its pace in fewer rounds.
    assert!(long.start_lag(long.rate / 8.0) < b, "{:?} vs {b:?}", long.start_lag(long.rate / 8.0));
}
