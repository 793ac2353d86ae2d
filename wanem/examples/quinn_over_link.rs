//! A bare quinn 0.11 bulk transfer through the WAN emulator: one stream, one direction, the
//! server sending `--size-mb` to the client over an emulated link, for each congestion
//! controller and loss rate asked. A measurement, not a test.
//!
//! ```text
//! cargo run --release -p oasis-wanem --example quinn_over_link -- \
//!     [--size-mb 40] [--rtt 80ms] [--rate 100Mbit] [--loss 0,0.5,1] [--cc cubic,bbr,oasis] \
//!     [--windows oasis|quinn] [--extra "queue=256KiB,jitter=1ms"] [--timeout 240]
//! ```
//!
//! `--windows oasis` uses the flow-control windows of `oasis_core::net::TransportOptions`
//! (16 MiB per stream, 64 MiB per connection, 64 MiB send window); `--windows quinn` uses
//! quinn's defaults (1.25 MB per stream, unlimited per connection, 10 MB send window).
//! `--stream-window BYTES` overrides the per-stream receive window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use oasis_wanem::{EmulatorThread, WanSpec};
use quinn::congestion::{BbrConfig, CubicConfig, NewRenoConfig};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, EndpointConfig, TransportConfig, VarInt};

struct Opts {
    size: u64,
    rtt: String,
    rate: String,
    losses: Vec<String>,
    ccs: Vec<String>,
    windows: String,
    stream_window: Option<u64>,
    extra: String,
    timeout: Duration,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        size: 40_000_000,
        rtt: "80ms".into(),
        rate: "100Mbit".into(),
        losses: vec!["0".into(), "0.5".into(), "1".into()],
        ccs: vec!["cubic".into(), "bbr".into()],
        windows: "oasis".into(),
        stream_window: None,
        extra: String::new(),
        timeout: Duration::from_secs(240),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--size-mb" => o.size = (v()?.parse::<f64>()? * 1e6) as u64,
            "--rtt" => o.rtt = v()?,
            "--rate" => o.rate = v()?,
            "--loss" => o.losses = v()?.split(',').map(str::to_string).collect(),
            "--cc" => o.ccs = v()?.split(',').map(str::to_string).collect(),
            "--windows" => o.windows = v()?,
            "--stream-window" => o.stream_window = Some(v()?.parse()?),
            "--extra" => o.extra = v()?,
            "--timeout" => o.timeout = Duration::from_secs(v()?.parse()?),
            other => return Err(anyhow!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn transport(o: &Opts, cc: &str) -> anyhow::Result<Arc<TransportConfig>> {
    let mut t = TransportConfig::default();
    if o.windows == "oasis" {
        t.stream_receive_window(VarInt::from_u32(16 << 20))
            .receive_window(VarInt::from_u32(64 << 20))
            .send_window(64 << 20);
    }
    if let Some(w) = o.stream_window {
        t.stream_receive_window(VarInt::from_u64(w)?);
    }
    match cc {
        "cubic" => t.congestion_controller_factory(Arc::new(CubicConfig::default())),
        "bbr" => t.congestion_controller_factory(Arc::new(BbrConfig::default())),
        "newreno" => t.congestion_controller_factory(Arc::new(NewRenoConfig::default())),
        "oasis" => t.congestion_controller_factory(Arc::new(
            oasis_core::net::congestion::PipeConfig::new(),
        )),
        other => return Err(anyhow!("unknown congestion controller {other}")),
    };
    t.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    Ok(Arc::new(t))
}

/// A UDP socket with 4 MiB buffers, as Oasis nodes use.
fn udp(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

struct Outcome {
    result: Result<Duration, String>,
    server: Option<quinn::ConnectionStats>,
}

async fn run_one(
    o: &Opts,
    cc: &str,
    spec: &WanSpec,
) -> anyhow::Result<(Outcome, oasis_wanem::Counters, Option<u64>, Option<Duration>)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server_cfg = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key)?;
    server_cfg.transport_config(transport(o, cc)?);
    let runtime = quinn::default_runtime().ok_or_else(|| anyhow!("no async runtime"))?;
    let server = Endpoint::new(
        EndpointConfig::default(),
        Some(server_cfg),
        udp("127.0.0.1:0".parse()?)?,
        runtime.clone(),
    )?;
    let server_addr = server.local_addr()?;

    let wan = EmulatorThread::start("127.0.0.1:0".parse()?, server_addr, spec.clone())?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let crypto =
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto)?));
    client_cfg.transport_config(transport(o, cc)?);
    let mut client =
        Endpoint::new(EndpointConfig::default(), None, udp("127.0.0.1:0".parse()?)?, runtime)?;
    client.set_default_client_config(client_cfg);

    let size = o.size;
    let serve = tokio::spawn(async move {
        let conn = server.accept().await.ok_or_else(|| anyhow!("no connection"))?.await?;
        let res: anyhow::Result<()> = async {
            let (mut send, mut recv) = conn.accept_bi().await?;
            let mut req = [0u8; 8];
            recv.read_exact(&mut req).await?;
            let n = u64::from_be_bytes(req);
            let block = Bytes::from(vec![0x42u8; 1 << 20]);
            let mut left = n;
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                send.write_chunk(block.slice(..k)).await?;
                left -= k as u64;
            }
            send.finish()?;
            Ok(())
        }
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(60), conn.closed()).await;
        let stats = conn.stats();
        server.wait_idle().await;
        anyhow::Ok((res, stats))
    });

    let transfer = async {
        let conn = client.connect(wan.local_addr(), "localhost")?.await?;
        let t0 = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&size.to_be_bytes()).await?;
        send.finish()?;
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            got += chunk.bytes.len() as u64;
        }
        let dt = t0.elapsed();
        conn.close(0u32.into(), b"done");
        if got != size {
            return Err(anyhow!("got {got} of {size} bytes"));
        }
        anyhow::Ok(dt)
    };
    let result = match tokio::time::timeout(o.timeout, transfer).await {
        Ok(Ok(dt)) => Ok(dt),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("timed out after {:?}", o.timeout)),
    };
    client.close(0u32.into(), b"bye");
    let server_stats = match tokio::time::timeout(Duration::from_secs(70), serve).await {
        Ok(Ok(Ok((_, stats)))) => Some(stats),
        _ => None,
    };
    client.wait_idle().await;
    let counters = wan.counters();
    let drops = wan.socket_drops();
    let cpu = wan.cpu_time();
    Ok((Outcome { result, server: server_stats }, counters, drops, cpu))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let o = parse_args()?;
    println!(
        "quinn 0.11 bulk transfer of {:.1} MB, one stream, windows: {}{}",
        o.size as f64 / 1e6,
        o.windows,
        o.stream_window.map(|w| format!(", stream window {w}")).unwrap_or_default()
    );
    for cc in &o.ccs {
        for loss in &o.losses {
            let mut text = format!("{},{}%,{}", o.rtt, loss.trim_end_matches('%'), o.rate);
            if !o.extra.is_empty() {
                text = format!("{text},{}", o.extra);
            }
            let spec: WanSpec = text.parse().with_context(|| format!("link spec {text}"))?;
            let (out, c, drops, cpu) = run_one(&o, cc, &spec).await?;
            let d = c.down;
            let line = match &out.result {
                Ok(dt) => format!(
                    "{:>6.2} MB/s {:>6.1} Mbit/s in {:>6.2} s",
                    o.size as f64 / 1e6 / dt.as_secs_f64(),
                    o.size as f64 * 8.0 / 1e6 / dt.as_secs_f64(),
                    dt.as_secs_f64()
                ),
                Err(e) => format!("FAILED: {e}"),
            };
            println!(
                "{cc:>6} {spec:<28} {line}; offered {:.3}x the payload (down + up)",
                (d.offered_bytes + c.up.offered_bytes) as f64 / o.size as f64
            );
            let s = out.server.as_ref();
            println!(
                "        down: {} pkts delivered, {} lost on the path, {} dropped at the queue (peak {} KB); up: {} pkts; relay drops {:?}, relay CPU {:?}",
                d.delivered_packets,
                d.lost_packets,
                d.queue_dropped_packets,
                d.peak_queue_bytes / 1000,
                c.up.delivered_packets,
                drops,
                cpu.map(|c| format!("{:.2}s", c.as_secs_f64())).unwrap_or_default(),
            );
            if let Some(s) = s {
                println!(
                    "        server: sent {} pkts, {} lost (quinn), {} congestion events, final cwnd {} KB, rtt {:?}, mtu {}",
                    s.path.sent_packets,
                    s.path.lost_packets,
                    s.path.congestion_events,
                    s.path.cwnd / 1000,
                    s.path.rtt,
                    s.path.current_mtu
                );
            }
        }
    }
    Ok(())
}
