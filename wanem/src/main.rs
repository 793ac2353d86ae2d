//! `oasis-wanem`: run the WAN emulator in front of a UDP (QUIC) server.
//!
//! ```text
//! oasis-wanem --listen 127.0.0.1:9000 --to 127.0.0.1:7443 --link "80ms,0.5%,100Mbit"
//! ```
//!
//! Clients connect to the `--listen` address instead of the server. Counters are logged every
//! `--stats` seconds and once more on Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use oasis_wanem::{Counters, Emulator, WanSpec};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "oasis-wanem",
    about = "Userspace WAN link emulator: a UDP relay with delay, loss, jitter, reordering and a bottleneck"
)]
struct Args {
    /// Address the clients send to.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The real server address.
    #[arg(long)]
    to: SocketAddr,
    /// Link spec: RTT, loss, rate and key=value items, e.g. "80ms,0.5%,100Mbit,jitter=2ms".
    #[arg(long, default_value = "0ms")]
    link: WanSpec,
    /// Seconds between counter logs (0: only at exit).
    #[arg(long, default_value_t = 5)]
    stats: u64,
}

fn log_counters(c: &Counters, drops: Option<u64>) {
    for (dir, d) in [("up", c.up), ("down", c.down)] {
        tracing::info!(
            dir,
            offered = d.offered_bytes,
            delivered = d.delivered_bytes,
            delivered_pkts = d.delivered_packets,
            lost_pkts = d.lost_packets,
            queue_dropped_pkts = d.queue_dropped_packets,
            send_failed_pkts = d.send_failed_packets,
            in_flight_pkts = d.in_flight_packets(),
            peak_queue = d.peak_queue_bytes,
            "counters"
        );
    }
    tracing::info!(flows = c.flows, socket_drops = ?drops, "relay");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let wan = Emulator::start(args.listen, args.to, args.link.clone())
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %wan.local_addr(), to = %args.to, link = %args.link, "relaying");
    let mut tick = tokio::time::interval(Duration::from_secs(args.stats.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick(), if args.stats > 0 => log_counters(&wan.counters(), wan.socket_drops()),
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                break;
            }
        }
    }
    log_counters(&wan.counters(), wan.socket_drops());
    wan.shutdown().await;
    Ok(())
}
