#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oasis_core::pki::{NodeIdentity, Role, SeedAuthority};
use oasis_mesh::libp2p::multiaddr::Protocol;
use oasis_mesh::libp2p::Multiaddr;
use oasis_mesh::{Mesh, MeshConfig, MeshHandle};
use tokio::task::JoinHandle;

pub struct Net {
    pub dir: tempfile::TempDir,
    pub auth: SeedAuthority,
}

impl Net {
    pub fn new() -> Net {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
        Net { dir, auth }
    }

    pub fn enroll(&self, name: &str, site: &str) -> (NodeIdentity, PathBuf) {
        let state = self.dir.path().join(name);
        let id = self.auth.enroll(Role::Reflector, name, Some(site), &state, false).unwrap();
        (id, state)
    }
}

pub fn loopback_config(bootstrap: Vec<Multiaddr>, quic: bool) -> MeshConfig {
    let mut listen: Vec<Multiaddr> = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    if quic {
        listen.push("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap());
    }
    MeshConfig { listen, bootstrap, mdns: false, ..MeshConfig::default() }
}

pub async fn start(
    identity: &NodeIdentity,
    state: &Path,
    config: MeshConfig,
) -> (MeshHandle, JoinHandle<anyhow::Result<()>>) {
    Mesh::start(config, identity, state).unwrap()
}

/// The node's listen address of the given transport ("tcp" or "quic"), with `/p2p/ID`.
pub async fn addr_of(h: &MeshHandle, quic: bool) -> Multiaddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let addrs = h.listen_addrs().await.unwrap();
        let found = addrs.into_iter().find(|a| {
            let is_quic = a.iter().any(|p| matches!(p, Protocol::QuicV1));
            is_quic == quic
        });
        if let Some(a) = found {
            return a.with(Protocol::P2p(h.peer_id()));
        }
        assert!(Instant::now() < deadline, "no listen address");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` every 20 ms until it is true; returns the time it took, or None at the deadline.
pub async fn wait_for<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
