//! The emulator over real UDP sockets on 127.0.0.1: delay, loss, rate, queue drops, ordering,
//! counters, runtime changes, several clients, shutdown.
//!
//! Timing assertions are one-sided where the machine may be loaded (2 cores, other builds):
//! lower bounds are tight (the emulator never delivers early), upper bounds loose.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use oasis_wanem::{bind_udp, Emulator, LinkSpec, Probability, WanSpec};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn lo() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A UDP echo server on 127.0.0.1; returns its address.
async fn echo_server() -> SocketAddr {
    let sock = bind_udp(lo()).unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A UDP sink on 127.0.0.1 that records the sequence number (first 4 bytes) and arrival time
/// of every packet; returns its address and a receiver of the records.
async fn sink() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<(u32, usize, Instant)>) {
    let sock = bind_udp(lo()).unwrap();
    let addr = sock.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf).await {
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            if tx.send((seq, n, Instant::now())).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn packet(seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0xA5u8; len];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Round-trip times of `n` sequential pings through `wan`.
async fn pings(wan: &Emulator, n: usize) -> Vec<Duration> {
    let c = bind_udp(lo()).unwrap();
    c.connect(wan.local_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let mut rtts = Vec::new();
    for i in 0..n as u32 {
        let t = Instant::now();
        c.send(&packet(i, 32)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf)).await;
        let n = got.expect("ping lost on a lossless link").unwrap();
        assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), i);
        assert_eq!(n, 32);
        rtts.push(t.elapsed());
    }
    rtts
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn drained(wan: &Emulator) {
    assert!(wan.drain(Duration::from_secs(10)).await, "did not drain: {:?}", wan.counters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtt_is_applied() {
    let server = echo_server().await;
    let wan = Emulator::start(lo(), server, "40ms".parse().unwrap()).await.unwrap();
    let rtts = pings(&wan, 15).await;
    assert!(rtts.iter().all(|r| *r >= ms(40)), "{rtts:?}");
    assert!(median(rtts.clone()) < ms(40 + 25), "{rtts:?}");

    // Asymmetric: 5 ms up, 35 ms down, same round trip.
    wan.set_spec("40ms,up.delay=5ms,down.delay=35ms".parse().unwrap());
    assert_eq!(wan.spec().up.delay, ms(5));
    let rtts = pings(&wan, 10).await;
    assert!(rtts.iter().all(|r| *r >= ms(40)), "{rtts:?}");
    assert!(median(rtts) < ms(40 + 25));

    drained(&wan).await;
    let c = wan.counters();
    assert_eq!(c.up.offered_packets, 25);
    assert_eq!(c.up.delivered_packets, 25);
    assert_eq!(c.down.delivered_packets, 25);
    assert_eq!(c.down.delivered_bytes, 25 * 32);
    assert_eq!(c.flows, 2, "one flow per client socket");
    assert_eq!(wan.socket_drops(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_spec_change_makes_the_link_worse_and_better() {
    let server = echo_server().await;
    let wan = Emulator::start(lo(), server, "10ms".parse().unwrap()).await.unwrap();
    let fast = median(pings(&wan, 8).await);
    assert!(fast >= ms(10));
    wan.set_spec("120ms".parse().unwrap());
    let slow = pings(&wan, 5).await;
    assert!(slow.iter().all(|r| *r >= ms(120)), "{slow:?}");
    // A dead link: everything is lost, and counted as such.
    wan.set_spec("10ms,100%".parse().unwrap());
    let c = bind_udp(lo()).unwrap();
    c.connect(wan.local_addr()).await.unwrap();
    for i in 0..20 {
        c.send(&packet(i, 100)).await.unwrap();
    }
    let mut buf = [0u8; 200];
    assert!(tokio::time::timeout(ms(100), c.recv(&mut buf)).await.is_err());
    wan.set_spec("10ms".parse().unwrap());
    let again = median(pings(&wan, 8).await);
    assert!(again >= ms(10) && again < ms(10 + 25), "{again:?}");
    drained(&wan).await;
    let k = wan.counters();
    assert_eq!(k.up.lost_packets, 20);
    assert_eq!(k.up.offered_packets, 8 + 5 + 20 + 8);
    assert_eq!(k.down.delivered_packets, 8 + 5 + 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_over_sockets_matches_the_counters_exactly() {
    let (addr, mut rx) = sink().await;
    let spec: WanSpec = "2ms,10%,seed=3".parse().unwrap();
    let n = 5000u32;
    let run = |spec: WanSpec| async move {
        let wan = Emulator::start(lo(), addr, spec).await.unwrap();
        let c = bind_udp(lo()).unwrap();
        c.connect(wan.local_addr()).await.unwrap();
        for i in 0..n {
            c.send(&packet(i, 200)).await.unwrap();
            if i % 64 == 63 {
                tokio::task::yield_now().await;
            }
        }
        drained(&wan).await;
        let counters = wan.counters();
        assert_eq!(wan.socket_drops(), Some(0));
        counters
    };
    let c1 = run(spec.clone()).await;
    tokio::time::sleep(ms(50)).await;
    let mut first = Vec::new();
    while let Ok(r) = rx.try_recv() {
        first.push(r.0);
    }
    assert_eq!(c1.up.offered_packets, n as u64);
    assert_eq!(first.len() as u64, c1.up.delivered_packets, "sink got what the emulator delivered");
    assert_eq!(c1.up.delivered_bytes, first.len() as u64 * 200);
    assert_eq!(c1.up.offered_packets, c1.up.delivered_packets + c1.up.lost_packets);
    let p = c1.up.lost_packets as f64 / n as f64;
    assert!((0.085..0.115).contains(&p), "loss {p}");
    // In order (no reordering asked), and the same seed loses the same packets.
    assert!(first.windows(2).all(|w| w[0] < w[1]));
    let c2 = run(spec).await;
    tokio::time::sleep(ms(50)).await;
    let mut second = Vec::new();
    while let Ok(r) = rx.try_recv() {
        second.push(r.0);
    }
    assert_eq!(c2, c1);
    assert_eq!(first, second, "same seed, same loss decisions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_throughput() {
    // 40 Mbit/s, 1172-byte payloads (1200 wire bytes = 240 us each), 1000 packets sent as
    // fast as possible into a queue large enough for all: 240 ms of serialization.
    let (addr, mut rx) = sink().await;
    let wan =
        Emulator::start(lo(), addr, "0ms,0%,40Mbit,queue=4MiB".parse().unwrap()).await.unwrap();
    let c = bind_udp(lo()).unwrap();
    c.connect(wan.local_addr()).await.unwrap();
    let t0 = Instant::now();
    for i in 0..1000u32 {
        c.send(&packet(i, 1172)).await.unwrap();
    }
    drained(&wan).await;
    let mut got = Vec::new();
    while got.len() < 1000 {
        got.push(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap());
    }
    let span = got[999].2 - t0;
    // Never faster than the rate (minus one timer tick of batching)...
    assert!(span >= ms(240 - 2), "1000 packets in {span:?}");
    // ...and not much slower (loose: a loaded machine).
    let mbit = 1000.0 * 1200.0 * 8.0 / span.as_secs_f64() / 1e6;
    assert!(mbit > 20.0, "{mbit} Mbit/s");
    let k = wan.counters();
    assert_eq!(k.up.delivered_packets, 1000);
    assert_eq!(k.up.queue_dropped_packets, 0);
    assert!(k.up.peak_queue_bytes > 100_000, "the burst queued: {}", k.up.peak_queue_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_drops_are_counted() {
    // 2 Mbit/s (4.1 ms per packet) with a 12 KiB queue; a burst of 300 x 1000 bytes
    // overflows it unless the burst took over a second to reach the emulator.
    let (addr, mut rx) = sink().await;
    let wan =
        Emulator::start(lo(), addr, "4ms,0%,2Mbit,queue=12KiB".parse().unwrap()).await.unwrap();
    let c = bind_udp(lo()).unwrap();
    c.connect(wan.local_addr()).await.unwrap();
    for i in 0..300u32 {
        c.send(&packet(i, 1000)).await.unwrap();
    }
    drained(&wan).await;
    let k = wan.counters().up;
    assert!(k.queue_dropped_packets > 100, "{k:?}");
    assert!(k.peak_queue_bytes <= 12 * 1024);
    assert_eq!(k.offered_packets, 300);
    assert_eq!(k.offered_packets, k.delivered_packets + k.queue_dropped_packets);
    assert_eq!(k.offered_bytes, k.delivered_bytes + k.queue_dropped_bytes);
    tokio::time::sleep(ms(20)).await;
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, k.delivered_packets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_add_up_both_ways_with_every_stage_on() {
    let server = echo_server().await;
    let spec: WanSpec =
        "20ms,2%,20Mbit,queue=20KB,jitter=3ms,reorder=2%,reorder_delay=4ms,ge=p:0.01/r:0.5,seed=5"
            .parse()
            .unwrap();
    let wan = Emulator::start(lo(), server, spec).await.unwrap();
    let c = bind_udp(lo()).unwrap();
    c.connect(wan.local_addr()).await.unwrap();
    let recv = {
        let c2 = std::sync::Arc::new(c);
        let r = c2.clone();
        let h = tokio::spawn(async move {
            let mut buf = vec![0u8; 2000];
            let (mut pkts, mut bytes) = (0u64, 0u64);
            while let Ok(Ok(n)) = tokio::time::timeout(ms(500), r.recv(&mut buf)).await {
                pkts += 1;
                bytes += n as u64;
            }
            (pkts, bytes)
        });
        for i in 0..3000u32 {
            c2.send(&packet(i, 64 + (i as usize * 7) % 1300)).await.unwrap();
            if i % 50 == 49 {
                tokio::time::sleep(ms(1)).await;
            }
        }
        h
    };
    drained(&wan).await;
    let (pkts, bytes) = recv.await.unwrap();
    let k = wan.counters();
    for d in [k.up, k.down] {
        assert_eq!(d.in_flight_packets(), 0);
        assert_eq!(
            d.offered_packets,
            d.delivered_packets + d.lost_packets + d.queue_dropped_packets
        );
        assert_eq!(d.offered_bytes, d.delivered_bytes + d.lost_bytes + d.queue_dropped_bytes);
        assert_eq!(d.send_failed_packets, 0);
    }
    assert_eq!(k.up.offered_packets, 3000);
    assert!(
        k.up.lost_packets > 0 && k.up.queue_dropped_packets > 0 && k.up.reordered_packets > 0,
        "{k:?}"
    );
    // What came up went back down: the echo server answered every delivered packet.
    assert_eq!(k.down.offered_packets, k.up.delivered_packets);
    assert_eq!(k.down.offered_bytes, k.up.delivered_bytes);
    // And the client received exactly what the down link delivered.
    assert_eq!((pkts, bytes), (k.down.delivered_packets, k.down.delivered_bytes));
    assert_eq!(wan.socket_drops(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_happens_only_when_asked() {
    async fn order(spec: &str) -> (usize, u64) {
        let (addr, mut rx) = sink().await;
        let wan = Emulator::start(lo(), addr, spec.parse().unwrap()).await.unwrap();
        let c = bind_udp(lo()).unwrap();
        c.connect(wan.local_addr()).await.unwrap();
        for i in 0..1000u32 {
            c.send(&packet(i, 100)).await.unwrap();
            if i % 20 == 19 {
                tokio::time::sleep(ms(1)).await;
            }
        }
        drained(&wan).await;
        let mut seqs = Vec::new();
        while seqs.len() < 1000 {
            seqs.push(
                tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap().0,
            );
        }
        (seqs.windows(2).filter(|w| w[1] < w[0]).count(), wan.counters().up.reordered_packets)
    }
    assert_eq!(order("10ms,jitter=5ms").await, (0, 0));
    let (inversions, reordered) = order("10ms,jitter=5ms,reorder=5%,reorder_delay=10ms").await;
    assert!(reordered > 20, "{reordered}");
    assert!(inversions > 10, "{inversions}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_get_their_own_answers() {
    let server = echo_server().await;
    let wan = Emulator::start(lo(), server, "10ms,0%,50Mbit".parse().unwrap()).await.unwrap();
    let mut tasks = Vec::new();
    for k in 0..4u32 {
        let to = wan.local_addr();
        tasks.push(tokio::spawn(async move {
            let c = bind_udp(lo()).unwrap();
            c.connect(to).await.unwrap();
            let mut buf = [0u8; 64];
            for i in 0..10u32 {
                let tag = k * 1000 + i;
                c.send(&packet(tag, 40)).await.unwrap();
                let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(n, 40);
                assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), tag);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = wan.counters();
    assert_eq!(c.flows, 4);
    assert_eq!(c.down.delivered_packets, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_release_the_port() {
    let server = echo_server().await;
    let wan = Emulator::start(lo(), server, "5ms".parse().unwrap()).await.unwrap();
    let addr = wan.local_addr();
    pings(&wan, 2).await;
    wan.shutdown().await;
    // The port is free again: a new emulator can take it.
    let wan = Emulator::start(addr, server, "5ms".parse().unwrap()).await.unwrap();
    pings(&wan, 2).await;
    drop(wan);
    let mut rebound = None;
    for _ in 0..50 {
        if let Ok(s) = std::net::UdpSocket::bind(addr) {
            rebound = Some(s);
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    assert!(rebound.is_some(), "port {addr} still taken after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursty_loss_over_sockets() {
    let (addr, mut rx) = sink().await;
    let spec = WanSpec::both(
        LinkSpec::default()
            .gilbert_elliott(oasis_wanem::GilbertElliott::new(
                Probability::fraction(0.02),
                Probability::fraction(0.25),
            ))
            .seed(8),
    );
    let wan = Emulator::start(lo(), addr, spec).await.unwrap();
    let c = bind_udp(lo()).unwrap();
    c.connect(wan.local_addr()).await.unwrap();
    let n = 4000u32;
    for i in 0..n {
        c.send(&packet(i, 100)).await.unwrap();
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    drained(&wan).await;
    tokio::time::sleep(ms(30)).await;
    let mut got = vec![false; n as usize];
    while let Ok((s, _, _)) = rx.try_recv() {
        got[s as usize] = true;
    }
    let lost: Vec<bool> = got.iter().map(|g| !g).collect();
    let total = lost.iter().filter(|l| **l).count();
    let bursts = lost.windows(2).filter(|w| w[1] && !w[0]).count() + lost[0] as usize;
    assert_eq!(total as u64, wan.counters().up.lost_packets);
    let mean = total as f64 / bursts as f64;
    assert!(mean > 2.5, "mean burst {mean} (configured 4)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_on_its_own_thread() {
    let server = echo_server().await;
    let wan = oasis_wanem::EmulatorThread::start(lo(), server, "30ms".parse().unwrap()).unwrap();
    let rtts = pings(&wan, 5).await;
    assert!(rtts.iter().all(|r| *r >= ms(30)), "{rtts:?}");
    // The relay thread counts a packet just after it sends it, so the last echo can reach
    // the client before its count is made: give the thread a moment on a loaded machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while wan.counters().down.delivered_packets < 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(ms(5)).await;
    }
    assert_eq!(wan.counters().down.delivered_packets, 5);
    let cpu = wan.cpu_time();
    assert!(cfg!(not(target_os = "linux")) || cpu.is_some());
    let addr = wan.local_addr();
    drop(wan); // stops the relay and joins its thread
    assert!(std::net::UdpSocket::bind(addr).is_ok(), "port released once the thread is joined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_reach_their_own_servers_through_one_bottleneck() {
    // Two servers behind one emulated link: each route's packets reach its own server and the
    // answers come back from the address the client sent to; both share the queue, so a burst
    // on one delays the other's packets behind it.
    let a = echo_server().await;
    let (b, mut b_rx) = sink().await;
    let wan =
        Emulator::start_routes(&[(lo(), a), (lo(), b)], "0ms,0%,8Mbit,queue=1MiB".parse().unwrap())
            .await
            .unwrap();
    let [to_a, to_b] = [wan.local_addrs()[0], wan.local_addrs()[1]];
    assert_ne!(to_a, to_b);
    // 200 x 1000 bytes to the sink: 200 ms of the 8 Mbit/s link.
    let cb = bind_udp(lo()).unwrap();
    cb.connect(to_b).await.unwrap();
    for i in 0..200u32 {
        cb.send(&packet(i, 972)).await.unwrap();
    }
    // A ping to the echo server right behind the burst waits for it in the shared queue.
    let ca = bind_udp(lo()).unwrap();
    ca.connect(to_a).await.unwrap();
    let t = Instant::now();
    ca.send(&packet(7, 32)).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), ca.recv(&mut buf)).await.unwrap().unwrap();
    let waited = t.elapsed();
    assert_eq!((n, u32::from_be_bytes(buf[..4].try_into().unwrap())), (32, 7));
    assert!(waited >= ms(150), "the ping waited behind the other route's burst: {waited:?}");
    drained(&wan).await;
    let mut got = 0;
    while let Ok(Some(_)) = tokio::time::timeout(ms(50), b_rx.recv()).await {
        got += 1;
    }
    assert_eq!(got, 200, "every packet of the burst reached the sink");
    let k = wan.counters();
    assert_eq!(k.up.delivered_packets, 201);
    assert_eq!(k.down.delivered_packets, 1);
    assert_eq!(k.flows, 2);
}
