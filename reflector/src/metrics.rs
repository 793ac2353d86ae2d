//! The reflector's metric families, registered on the node's [`NodeMetrics`] (names get the
//! `oasis_` prefix, counters the `_total` suffix). `oasis_served_bytes_total` and the other
//! serving counters come from `NodeMetrics` itself.

use oasis_core::metrics::NodeMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

/// Counters and gauges of one reflector. Clones share the values.
#[derive(Clone, Debug, Default)]
pub struct ReflectorMetrics {
    /// `oasis_upstream_bytes_total`: chunk payload received from upstream, as sent (stored size).
    pub upstream_bytes: Counter,
    /// `oasis_upstream_manifest_bytes_total`: signed manifest roots received from upstream,
    /// bytes (their body chunks count in `upstream_bytes`).
    pub upstream_manifest_bytes: Counter,
    /// `oasis_upstream_chunks_total`: chunks received from upstream (good or bad).
    pub upstream_chunks: Counter,
    /// `oasis_upstream_corrupt_total`: upstream chunks that failed verification (refetched).
    pub upstream_corrupt: Counter,
    /// `oasis_upstream_errors_total`: upstream requests that failed (connection lost, timeout,
    /// error frame).
    pub upstream_errors: Counter,
    /// `oasis_upstream_connected`: 1 while a connection to the upstream is up.
    pub upstream_connected: Gauge,
    /// `oasis_upstream_pending_chunks`: chunks being fetched from upstream (queued or asked
    /// for, not yet here).
    pub upstream_pending: Gauge,
    /// `oasis_cache_hits_total`: chunk requests answered from the cache.
    pub cache_hits: Counter,
    /// `oasis_cache_misses_total`: chunk requests the cache could not answer (each request,
    /// whether it started an upstream fetch or joined one).
    pub cache_misses: Counter,
    /// `oasis_coalesced_total`: misses that joined an upstream fetch already in flight.
    pub coalesced: Counter,
    /// `oasis_miss_timeouts_total`: misses answered `Unavailable` because the upstream did not
    /// deliver in time.
    pub miss_timeouts: Counter,
    /// `oasis_cache_bytes`: bytes of cached chunks (as stored).
    pub cache_bytes: Gauge,
    /// `oasis_cache_chunks`: cached chunks.
    pub cache_chunks: Gauge,
    /// `oasis_cache_pinned_bytes`: bytes of cached chunks of pinned layers.
    pub cache_pinned_bytes: Gauge,
    /// `oasis_evictions_total`: chunks evicted to keep the cache under `cache_size`.
    pub evictions: Counter,
    /// `oasis_wan_rate_limit_bytes_per_second`: the WAN rate the policy allows now; 0 =
    /// unlimited.
    pub wan_rate_limit: Gauge,
    /// `oasis_policy_reloads_total`: successful policy reloads.
    pub policy_reloads: Counter,
    /// `oasis_policy_reload_errors_total`: policy files refused (the old policy stayed).
    pub policy_reload_errors: Counter,
    /// `oasis_sibling_bytes_total`: chunk payload received from reflectors of the same site.
    pub sibling_bytes: Counter,
    /// `oasis_peer_site_bytes_total`: chunk payload received from reflectors of other sites
    /// (`peer_sites`).
    pub peer_site_bytes: Counter,
    /// `oasis_sibling_corrupt_total`: chunks from siblings that failed verification.
    pub sibling_corrupt: Counter,
    /// `oasis_sibling_delegated_total`: misses served by the sibling rendezvous hashing named as
    /// the site's WAN fetcher of the chunk.
    pub sibling_delegated: Counter,
    /// `oasis_wan_site_share`: this reflector's share (0..1) of its site's WAN rate.
    pub wan_share: Gauge<f64, AtomicU64>,
    /// `oasis_latest_served_cached_total`: latest statements answered from the reflector's kept
    /// copy because upstream did not give one in time (the answer's note says so).
    pub latest_served_cached: Counter,
}

impl ReflectorMetrics {
    /// Creates the families and registers them on `node`.
    pub fn register(node: &NodeMetrics) -> ReflectorMetrics {
        let m = ReflectorMetrics::default();
        node.with_registry(|r| {
            r.register(
                "upstream_bytes",
                "Chunk payload bytes received from upstream, as sent (stored size)",
                m.upstream_bytes.clone(),
            );
            r.register(
                "upstream_manifest_bytes",
                "Signed manifest root bytes received from upstream (body chunks count in upstream_bytes)",
                m.upstream_manifest_bytes.clone(),
            );
            r.register(
                "upstream_chunks",
                "Chunks received from upstream",
                m.upstream_chunks.clone(),
            );
            r.register(
                "upstream_corrupt",
                "Upstream chunks that failed verification and were asked for again",
                m.upstream_corrupt.clone(),
            );
            r.register(
                "upstream_errors",
                "Upstream requests that failed (connection lost, timeout, error answer)",
                m.upstream_errors.clone(),
            );
            r.register(
                "upstream_connected",
                "1 while the connection to the upstream is up",
                m.upstream_connected.clone(),
            );
            r.register(
                "upstream_pending_chunks",
                "Chunks being fetched from upstream (queued or asked for, not yet here)",
                m.upstream_pending.clone(),
            );
            r.register(
                "cache_hits",
                "Chunk requests answered from the cache",
                m.cache_hits.clone(),
            );
            r.register(
                "cache_misses",
                "Chunk requests the cache could not answer (leaders and coalesced followers)",
                m.cache_misses.clone(),
            );
            r.register(
                "coalesced",
                "Misses that joined an upstream fetch already in flight",
                m.coalesced.clone(),
            );
            r.register(
                "miss_timeouts",
                "Misses answered Unavailable because the upstream did not deliver in time",
                m.miss_timeouts.clone(),
            );
            r.register("cache_bytes", "Bytes of cached chunks, as stored", m.cache_bytes.clone());
            r.register("cache_chunks", "Cached chunks", m.cache_chunks.clone());
            r.register(
                "cache_pinned_bytes",
                "Bytes of cached chunks that belong to pinned layers",
                m.cache_pinned_bytes.clone(),
            );
            r.register(
                "evictions",
                "Chunks evicted to keep the cache under cache_size",
                m.evictions.clone(),
            );
            r.register(
                "wan_rate_limit_bytes_per_second",
                "WAN rate the bandwidth policy allows now, bytes per second; 0 = unlimited",
                m.wan_rate_limit.clone(),
            );
            r.register(
                "policy_reloads",
                "Bandwidth policy reloads put in force",
                m.policy_reloads.clone(),
            );
            r.register(
                "policy_reload_errors",
                "Bandwidth policy files refused (the previous policy stayed in force)",
                m.policy_reload_errors.clone(),
            );
            r.register(
                "sibling_bytes",
                "Chunk payload bytes received from reflectors of the same site",
                m.sibling_bytes.clone(),
            );
            r.register(
                "peer_site_bytes",
                "Chunk payload bytes received from reflectors of other sites (peer_sites)",
                m.peer_site_bytes.clone(),
            );
            r.register(
                "sibling_corrupt",
                "Chunks from sibling reflectors that failed verification (the sibling is avoided)",
                m.sibling_corrupt.clone(),
            );
            r.register(
                "sibling_delegated",
                "Misses served by the sibling that pulls the chunk over the WAN for the site",
                m.sibling_delegated.clone(),
            );
            r.register(
                "wan_site_share",
                "This reflector's share of its site's WAN rate (1 without siblings)",
                m.wan_share.clone(),
            );
            m.wan_share.set(1.0);
            r.register(
                "latest_served_cached",
                "Latest statements answered from the kept copy because upstream did not answer in time",
                m.latest_served_cached.clone(),
            );
        });
        m
    }
}
