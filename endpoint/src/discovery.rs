//! Choosing among several sources: every candidate is probed at once (QUIC handshake, which
//! proves who it is from its certificate, then one small `Have` request whose answer time stands
//! for how loaded it is), and the answering ones are ordered: reflectors of the endpoint's own
//! site first, then those on its own subnet, then the least loaded, the seed last. The order
//! given by the user breaks ties. Candidates that do not answer are left at the end (they are
//! tried, and given up, only if everything before them failed).

use oasis_core::net::accept;
use oasis_core::net::Client;
use oasis_core::pki::Role;
use oasis_core::select::{ProbeAnswer, SourceCandidate};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a probe (handshake plus one request) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a probe found out about one candidate.
#[derive(Clone, Debug)]
pub struct Probe {
    pub addr: SocketAddr,
    /// Given position (user preference).
    pub position: usize,
    /// None: did not answer within [`PROBE_TIMEOUT`].
    pub answered: Option<Answer>,
}

#[derive(Clone, Debug)]
pub struct Answer {
    pub role: Role,
    pub site: Option<String>,
    pub same_subnet: bool,
    /// Time of one `Have` request after the handshake.
    pub latency: Duration,
}

impl Probe {
    /// What the pure ranking in `oasis_core::select` needs to know of this probe.
    fn candidate(&self) -> SourceCandidate<'_> {
        SourceCandidate {
            position: self.position,
            answered: self.answered.as_ref().map(|a| ProbeAnswer {
                is_seed: a.role == Role::Seed,
                site: a.site.as_deref(),
                same_subnet: a.same_subnet,
                latency: a.latency,
            }),
        }
    }

    /// Sort key: answering first; then own site, own subnet, least loaded; seed last; then
    /// the given order ([`oasis_core::select::rank_key`]).
    fn key(&self, my_site: Option<&str>) -> (bool, bool, bool, bool, u128, usize) {
        oasis_core::select::rank_key(&self.candidate(), my_site)
    }
}

/// Are `a` and `b` on the same subnet (/24 for IPv4, /64 for IPv6; loopback counts as one)?
pub fn same_subnet(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (a.is_loopback() && b.is_loopback()) || a.octets()[..3] == b.octets()[..3]
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..4] == b.segments()[..4],
        _ => false,
    }
}

/// The local address the system would use to reach `remote` (no packet is sent).
fn local_ip_towards(remote: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match remote {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = std::net::UdpSocket::bind(any).ok()?;
    sock.connect(remote).ok()?;
    Some(sock.local_addr().ok()?.ip())
}

async fn probe(endpoint: &quinn::Endpoint, addr: SocketAddr, position: usize) -> Probe {
    let attempt = async {
        let client = Client::connect(endpoint, addr, accept::CONTENT).await.ok()?;
        let t0 = Instant::now();
        let answered = client.have(&[]).await.is_ok();
        let latency = t0.elapsed();
        let peer = client.peer().clone();
        client.close();
        answered.then(|| Answer {
            role: peer.role,
            site: peer.site,
            same_subnet: local_ip_towards(addr).is_some_and(|l| same_subnet(l, addr.ip())),
            latency,
        })
    };
    let answered = tokio::time::timeout(PROBE_TIMEOUT, attempt).await.ok().flatten();
    Probe { addr, position, answered }
}

/// Probes `candidates` at once and returns them best first (see the module docs).
pub async fn rank(
    endpoint: &quinn::Endpoint,
    my_site: Option<&str>,
    candidates: &[SocketAddr],
) -> Vec<Probe> {
    let probes = candidates.iter().enumerate().map(|(i, a)| probe(endpoint, *a, i));
    let mut out = futures::future::join_all(probes).await;
    out.sort_by_key(|p| p.key(my_site));
    for p in &out {
        match &p.answered {
            Some(a) => {
                tracing::debug!(source = %p.addr, role = ?a.role, site = ?a.site, same_subnet = a.same_subnet, latency_ms = a.latency.as_secs_f64() * 1e3, "source probed")
            }
            None => tracing::info!(source = %p.addr, "source did not answer the probe"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(pos: usize, role: Role, site: Option<&str>, subnet: bool, ms: u64) -> Probe {
        Probe {
            addr: SocketAddr::from(([10, 0, 0, pos as u8], 7443)),
            position: pos,
            answered: Some(Answer {
                role,
                site: site.map(str::to_string),
                same_subnet: subnet,
                latency: Duration::from_millis(ms),
            }),
        }
    }

    #[test]
    fn own_site_then_subnet_then_load_seed_last() {
        let mut v = [
            answered(0, Role::Seed, None, true, 1),
            Probe { addr: SocketAddr::from(([10, 0, 0, 9], 1)), position: 1, answered: None },
            answered(2, Role::Reflector, Some("paris"), true, 1),
            answered(3, Role::Reflector, Some("lyon"), false, 1),
            answered(4, Role::Reflector, Some("lyon"), true, 40),
            answered(5, Role::Reflector, Some("lyon"), true, 2),
        ];
        v.sort_by_key(|p| p.key(Some("lyon")));
        let order: Vec<usize> = v.iter().map(|p| p.position).collect();
        assert_eq!(order, vec![5, 4, 3, 2, 0, 1]);
    }

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("10.1.2.3"), ip("10.1.2.200")));
        assert!(!same_subnet(ip("10.1.2.3"), ip("10.1.3.3")));
        assert!(same_subnet(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(same_subnet(ip("fd00:1:2:3::1"), ip("fd00:1:2:3::99")));
        assert!(!same_subnet(ip("10.1.2.3"), ip("fd00::1")));
    }
}
