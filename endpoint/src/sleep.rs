//! Registration with the inventory, and the "asleep" test mode.
//!
//! Every connection to a source starts with a `Register` (name, MACs, addresses, site, agent
//! version, and the layers this endpoint holds), so the site's reflector and the seed know the
//! machine and can wake it. `oasis-endpoint sleep` stands in for a machine in standby: it
//! registers, then waits on a UDP port until its own magic packet arrives (checked byte by
//! byte), and then wakes: connects, fetches the layers assigned to its site and registers again
//! reporting them held, which is how a scheduled delivery learns it was delivered.

use crate::{fetch, FetchOptions, FetchReport};
use anyhow::Context;
use oasis_core::net::{Client, NetError};
use oasis_core::pki::{NodeIdentity, PeerInfo};
use oasis_core::wake::{self as wol, DeviceInfo, Mac};
use oasis_core::wire::ErrorCode;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a registration may take before the connection is used without it.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// What this process adds to its registration (set by `sleep` and `relay` modes).
#[derive(Clone, Debug, Default)]
pub struct Announce {
    /// Report this MAC instead of the interfaces' (a test machine standing in for a NIC).
    pub mac: Option<[u8; 6]>,
    pub wake_to: Option<SocketAddr>,
    pub relay: Option<SocketAddr>,
    pub held: Vec<String>,
}

static ANNOUNCE: Mutex<Option<Announce>> = Mutex::new(None);

/// Sets what later registrations of this process report.
pub fn set_announce(a: Announce) {
    *ANNOUNCE.lock().unwrap_or_else(|e| e.into_inner()) = Some(a);
}

/// This endpoint's registration.
pub fn agent_info(me: &PeerInfo) -> DeviceInfo {
    let a = ANNOUNCE.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
    let mut info = wol::iface::self_info(
        me,
        concat!("oasis-endpoint ", env!("CARGO_PKG_VERSION")),
        a.wake_to,
        a.relay,
    );
    if let Some(m) = a.mac {
        info.macs = vec![m];
    }
    info.held = a.held;
    info
}

/// Registers with the source just connected to. A source without an inventory (it answers
/// Forbidden) is fine; other failures are logged, never fatal to a fetch.
pub async fn register(client: &Client, info: &DeviceInfo) {
    match tokio::time::timeout(REGISTER_TIMEOUT, client.register(info)).await {
        Ok(Ok(())) => tracing::debug!(source = %client.remote_addr(), "registered"),
        Ok(Err(NetError::Remote { code: ErrorCode::Forbidden, message, .. })) => {
            tracing::debug!(source = %client.remote_addr(), %message, "source keeps no inventory")
        }
        Ok(Err(e)) => {
            tracing::warn!(source = %client.remote_addr(), error = %e, "registration failed")
        }
        Err(_) => {
            tracing::warn!(source = %client.remote_addr(), "registration not answered in time")
        }
    }
}

/// Waits on `sock` for a magic packet for one of `macs` (with `password` when given). Other
/// datagrams are logged and ignored. Returns the MAC and the sender.
pub async fn wait_for_magic_packet(
    sock: &tokio::net::UdpSocket,
    macs: &[[u8; 6]],
    password: Option<&wol::Password>,
) -> std::io::Result<(Mac, SocketAddr)> {
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        match wol::check_packet(&buf[..n]) {
            Ok((mac, pw)) if macs.contains(&mac.0) => {
                if let Some(want) = password {
                    if pw != want.as_bytes() {
                        tracing::warn!(%from, %mac, "magic packet with the wrong SecureOn password ignored");
                        continue;
                    }
                }
                return Ok((mac, from));
            }
            Ok((mac, _)) => tracing::debug!(%from, %mac, "magic packet for another machine"),
            Err(e) => tracing::debug!(%from, problem = %e, "not a magic packet"),
        }
    }
}

/// Options of `oasis-endpoint sleep`.
#[derive(Clone, Debug)]
pub struct SleepOptions {
    pub state_dir: PathBuf,
    pub sources: Vec<SocketAddr>,
    /// UDP address the "NIC" listens on for its magic packet.
    pub listen: SocketAddr,
    pub mac: Option<[u8; 6]>,
    pub password: Option<wol::Password>,
    /// Layers to fetch on waking; empty = the site's assignments.
    pub layers: Vec<String>,
    /// Each layer goes to INTO/NAME.
    pub into: PathBuf,
    pub streams: usize,
}

/// What `sleep` did.
#[derive(Debug, serde::Serialize)]
pub struct SleepReport {
    pub mac: String,
    pub woken_by: String,
    pub slept_seconds: f64,
    pub fetched: Vec<FetchReport>,
}

/// Registers, sleeps until the magic packet arrives, then fetches and registers the layers held.
pub async fn sleep(opts: &SleepOptions) -> anyhow::Result<SleepReport> {
    let identity = NodeIdentity::load(&opts.state_dir).with_context(|| {
        format!("loading the endpoint identity from {}", opts.state_dir.display())
    })?;
    let sock = tokio::net::UdpSocket::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen for magic packets on {}", opts.listen))?;
    let wake_to = sock.local_addr()?;
    let mut announce = Announce { mac: opts.mac, wake_to: Some(wake_to), ..Default::default() };
    set_announce(announce.clone());
    let macs = agent_info(identity.info()).macs;
    anyhow::ensure!(
        !macs.is_empty(),
        "this box reports no MAC address to be woken at: give one with --mac"
    );
    // Announce ourselves (the connect registers), then drop the connection: a sleeping machine
    // keeps none.
    {
        let mut sources =
            crate::sources::Sources::new(&identity, &opts.state_dir, opts.sources.clone())?;
        let client = sources
            .connect_next()
            .await
            .with_context(|| "no source answered; cannot register before sleeping")?;
        client.close();
        sources.close().await;
    }
    tracing::info!(listen = %wake_to, mac = %Mac(macs[0]), "asleep: waiting for the magic packet");
    let slept = Instant::now();
    let (mac, from) = wait_for_magic_packet(&sock, &macs, opts.password.as_ref()).await?;
    let slept_seconds = slept.elapsed().as_secs_f64();
    tracing::info!(%mac, %from, "magic packet received: waking up");
    drop(sock);
    let layers = if opts.layers.is_empty() {
        let mut sources =
            crate::sources::Sources::new(&identity, &opts.state_dir, opts.sources.clone())?;
        let client = sources.connect_next().await.context("no source answered after waking")?;
        let a = client.assignments().await?;
        client.close();
        sources.close().await;
        a.into_iter().map(|a| format!("{}@{}", a.name, a.version)).collect()
    } else {
        opts.layers.clone()
    };
    let mut fetched = Vec::new();
    for l in &layers {
        let (name, version) = crate::parse_layer(l);
        let f = FetchOptions {
            state_dir: opts.state_dir.clone(),
            sources: opts.sources.clone(),
            name: name.clone(),
            version,
            into: opts.into.join(&name),
            streams: opts.streams,
            progress: false,
        };
        let r = fetch(&f).await.with_context(|| format!("fetching {l} after waking"))?;
        announce.held.push(format!("{}@{}", r.layer, r.version));
        fetched.push(r);
    }
    // Tell the inventory what we hold now.
    set_announce(announce);
    let mut sources =
        crate::sources::Sources::new(&identity, &opts.state_dir, opts.sources.clone())?;
    if let Some(c) = sources.connect_next().await {
        c.close();
    }
    sources.close().await;
    Ok(SleepReport { mac: mac.to_string(), woken_by: from.to_string(), slept_seconds, fetched })
}
