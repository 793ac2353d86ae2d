//! Background work of the mesh side: the address siblings reach us at, announcing what the
//! cache held at start, and the per-heartbeat load report and WAN share.

use crate::cache::Cache;
use crate::fetcher::Fetcher;
use crate::node::Reflector;
use crate::policy::PolicyControl;
use crate::siblings::Siblings;
use oasis_core::gossip::Load;
use oasis_core::metrics::NodeMetrics;
use oasis_core::site_wan::SiteWan;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `ip:port` siblings reach this reflector's QUIC service at: the bound address, or when it
/// is unspecified (0.0.0.0 / ::) the local address of the route towards the upstream.
pub async fn advertised_addr(bound: SocketAddr, upstream: &str) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    if let Ok(up) = crate::upstream::resolve(upstream).await {
        let any: SocketAddr = if up.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        // A connected UDP socket sends nothing; it only asks the kernel for the route.
        if let Ok(sock) = std::net::UdpSocket::bind(any) {
            if sock.connect(up).is_ok() {
                if let Ok(local) = sock.local_addr() {
                    if !local.ip().is_unspecified() {
                        return SocketAddr::new(local.ip(), bound.port());
                    }
                }
            }
        }
    }
    tracing::warn!(
        %bound,
        "cannot tell which address siblings reach this reflector at; set `advertise` in the config"
    );
    SocketAddr::new([127, 0, 0, 1].into(), bound.port())
}

/// Announces the layers whose manifests the cache holds (after a restart siblings learn at
/// once what this reflector has): each manifest's body chunks, and its files' chunks (one
/// layer's list at a time, read from its cached body; a layer whose body is not whole is
/// announced when it is next asked for).
pub(crate) async fn announce_cached(inner: Arc<Reflector>, s: Arc<Siblings>) {
    let cache = inner.cache.clone();
    let refs = match blocking(&cache, |c| Ok(c.layer_refs()?)).await {
        Ok(refs) => refs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list cached layers for the mesh");
            return;
        }
    };
    for r in &refs {
        let label = format!("{}@{}", r.name, r.version);
        if s.knows_layer(&r.digest).await {
            continue;
        }
        let (name, version) = (r.name.clone(), r.version.clone());
        let announced = match blocking(&cache, move |c| c.cached_root(&name, Some(&version))).await
        {
            Ok(Some(root)) => {
                s.learn_body(&root).await;
                let root = Arc::new(root);
                let r2 = root.clone();
                match blocking(&cache, move |c| Ok(c.layer_chunks(&r2)?)).await {
                    Ok(Some(chunks)) => {
                        Ok(s.learn_layer(root.digest, &label, Arc::new(chunks)).await)
                    }
                    Ok(None) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        match announced {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(layer = %label, "cached manifest is not whole; its files are announced when it is next asked for")
            }
            Err(e) => tracing::warn!(layer = %label, error = %e, "cached manifest not announced"),
        }
    }
    tracing::debug!(layers = refs.len(), "cached layers announced to the mesh");
}

/// Runs `f` on the cache off the async threads.
async fn blocking<T: Send + 'static>(
    cache: &Arc<Cache>,
    f: impl FnOnce(&Cache) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || f(&cache)).await?
}

/// Every heartbeat: publishes the load (open connections, serving rate, free cache, WAN
/// demand) and puts this reflector's share of the site's WAN rate in force. The task owns the
/// site-WAN state machine ([`SiteWan`]) and runs its rounds at the deadlines it sets.
pub(crate) async fn load_loop(
    s: Arc<Siblings>,
    fetcher: Arc<Fetcher>,
    policy: Arc<PolicyControl>,
    cache: Arc<Cache>,
    node: Arc<NodeMetrics>,
    every: Duration,
) {
    let origin = tokio::time::Instant::now();
    let mut wan = SiteWan::new(s.place().clone(), every);
    let (mut last_served, mut last_at) = (node.served_bytes.get(), Instant::now());
    let mut last_upstream = fetcher.upstream_bytes();
    loop {
        // A round that ran late moves the next one back rather than running two at once.
        tokio::time::sleep_until(origin + wan.next_round()).await;
        let served = node.served_bytes.get();
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        let serving_rate = ((served.saturating_sub(last_served)) as f64 / dt) as u64;
        (last_served, last_at) = (served, Instant::now());
        let stats = cache.stats();
        // Busy: WAN work waits or WAN bytes arrived since the last round (a queue that happens
        // to be empty at this instant is not idleness). Equal demands keep spread shares
        // stable: equal among the busy reflectors.
        let upstream = fetcher.upstream_bytes();
        let busy = fetcher.pending() > 0 || upstream > last_upstream;
        last_upstream = upstream;
        let rate = policy.limiter.policy().default_rate().unwrap_or(u64::from(u32::MAX));
        let round = wan.round(origin.elapsed(), &s.current_view(), busy, rate);
        s.mesh.update_load(Load {
            active_transfers: u32::try_from(node.connections.get().max(0)).unwrap_or(u32::MAX),
            serving_rate,
            free_cache: stats.cap.map_or(u64::MAX, |c| c.saturating_sub(stats.bytes)),
            wan_demand: round.demand,
        });
        if round.changed {
            let sharing = s.place().sharing();
            tracing::debug!(share = round.share, busy, %sharing, "WAN share of the site");
            policy.limiter.set_share(round.share);
            policy.update_gauge();
        }
        policy.set_share_metric(round.share);
    }
}
