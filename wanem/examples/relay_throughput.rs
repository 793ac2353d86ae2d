//! How fast can the relay itself go? Pushes paced UDP traffic through an emulator with a
//! long delay and no rate limit (so the heap holds a full RTT of packets) and reports the
//! delivered rate, the relay thread's CPU use, and any packet the relay lost on its own.
//!
//! ```text
//! cargo run --release -p oasis-wanem --example relay_throughput -- [--link 80ms] [--secs 3] [--len 1200] [Mbit/s ...]
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use oasis_wanem::{bind_udp, EmulatorThread, WanSpec};

fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else { return 0 };
    let i = h.split_whitespace().position(|c| c == "RcvbufErrors").unwrap_or(0);
    v.split_whitespace().nth(i).and_then(|x| x.parse().ok()).unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut link = "80ms".to_string();
    let mut secs = 3u64;
    let mut len = 1200usize;
    let mut rates = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--link" => link = args.next().expect("--link value"),
            "--secs" => secs = args.next().expect("--secs value").parse()?,
            "--len" => len = args.next().expect("--len value").parse()?,
            r => rates.push(r.parse::<u64>()?),
        }
    }
    if rates.is_empty() {
        rates = vec![100, 200, 400, 800];
    }
    let spec: WanSpec = link.parse()?;
    println!("link {spec}, {len}-byte datagrams, {secs} s per rate");
    println!(
        "{:>10} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "offered", "delivered", "pkts/s", "relay CPU", "relay drops", "rcvbuf errs"
    );
    for mbit in rates {
        let sink = bind_udp("127.0.0.1:0".parse()?)?;
        let sink_addr: SocketAddr = sink.local_addr()?;
        let wan = EmulatorThread::start("127.0.0.1:0".parse()?, sink_addr, spec.clone())?;
        let counter = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let (mut n, mut bytes) = (0u64, 0u64);
            while let Ok(Ok(k)) =
                tokio::time::timeout(Duration::from_secs(2), sink.recv(&mut buf)).await
            {
                n += 1;
                bytes += k as u64;
            }
            (n, bytes)
        });
        let client = bind_udp("127.0.0.1:0".parse()?)?;
        client.connect(wan.local_addr()).await?;
        let errs0 = udp_rcvbuf_errors();
        let cpu0 = wan.cpu_time();
        let payload = vec![0x5Au8; len];
        let per_ms = mbit as f64 * 1e6 / 8.0 / len as f64 / 1000.0;
        let t0 = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0u64;
        while t0.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64;
            while sent < due {
                client.send(&payload).await?;
                sent += 1;
            }
        }
        let send_time = t0.elapsed();
        wan.drain(Duration::from_secs(10)).await;
        let cpu = wan.cpu_time().zip(cpu0).map(|(a, b)| a - b);
        let c = wan.counters();
        let drops = wan.socket_drops();
        drop(wan);
        let (got, bytes) = counter.await?;
        let errs = udp_rcvbuf_errors() - errs0;
        let secs_f = send_time.as_secs_f64();
        println!(
            "{:>7} Mb {:>9.1} Mb {:>12.0} {:>9.1}% {:>12} {:>12}",
            mbit,
            bytes as f64 * 8.0 / secs_f / 1e6,
            got as f64 / secs_f,
            cpu.map(|c| c.as_secs_f64() / secs_f * 100.0).unwrap_or(f64::NAN),
            format!("{:?}", drops),
            errs,
        );
        if c.up.offered_packets != sent || got != c.up.delivered_packets {
            println!(
                "           overloaded: sent {sent}, relay read {}, delivered {}, sink got {got}",
                c.up.offered_packets, c.up.delivered_packets
            );
        }
    }
    Ok(())
}
