//! Reflector meshes on loopback, which has no multicast: reflectors find each other through
//! bootstrap addresses.

use oasis_mesh::libp2p::multiaddr::Protocol;
use oasis_mesh::libp2p::Multiaddr;
use oasis_reflector::{MeshSettings, RunningReflector};
use std::time::{Duration, Instant};

/// Mesh settings listening on 127.0.0.1 (QUIC and TCP, any port), no mDNS, bootstrapping from
/// `bootstrap`.
pub fn loopback_mesh(heartbeat: Duration, bootstrap: Vec<Multiaddr>) -> MeshSettings {
    MeshSettings {
        listen: vec![
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr"),
            "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"),
        ],
        bootstrap,
        mdns: false,
        heartbeat,
        advertise: None,
        wan_sharing: Default::default(),
    }
}

/// A mesh address of a running reflector with `/p2p/PEER_ID` (`tcp`: the TCP one, else QUIC).
pub async fn mesh_addr(r: &RunningReflector, tcp: bool) -> anyhow::Result<Multiaddr> {
    let mesh = r.mesh().ok_or_else(|| anyhow::anyhow!("the reflector has no mesh"))?;
    let t0 = Instant::now();
    loop {
        let found = mesh.listen_addrs().await?.into_iter().find(|a| {
            a.iter()
                .any(|p| if tcp { matches!(p, Protocol::Tcp(_)) } else { p == Protocol::QuicV1 })
        });
        if let Some(a) = found {
            return Ok(a.with(Protocol::P2p(mesh.peer_id())));
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(5), "the mesh never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every reflector sees `peers` live siblings of `site` that publish a serving
/// address; how long that took.
pub async fn settle(
    refls: &[RunningReflector],
    site: &str,
    peers: usize,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let mut ok = true;
        for r in refls {
            let v = r.mesh().ok_or_else(|| anyhow::anyhow!("the reflector has no mesh"))?;
            let v = v.view().await?;
            let live = v
                .live_peers(site)
                .iter()
                .filter(|p| v.peer(p).is_some_and(|rec| rec.serving_addr.is_some()))
                .count();
            ok &= live >= peers;
        }
        if ok {
            return Ok(t0.elapsed());
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(20), "mesh did not settle in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
