//! Manifests (format 2) through a reflector, against a stand-in seed over real QUIC on
//! 127.0.0.1: the root from upstream, the body through the chunk path and the cache, what
//! crosses the WAN for the first endpoint and for the second, body chunks that survive
//! eviction and come back when lost, pins across a restart with the seed gone, and roots that
//! must be refused or replaced.

mod common;

use common::{layer, wait_until, World};
use oasis_core::net::NetError;
use oasis_core::pki::Role;
use oasis_core::store::ChunkStore;
use oasis_core::ChunkId;
use oasis_mesh::libp2p::multiaddr::Protocol;
use oasis_mesh::libp2p::Multiaddr;
use oasis_reflector::{MeshSettings, ReflectorConfig, RunningReflector};
use std::time::{Duration, Instant};

async fn reflector(
    w: &World,
    name: &str,
    tweak: impl FnOnce(&mut ReflectorConfig),
) -> anyhow::Result<RunningReflector> {
    let state = w.enroll(Role::Reflector, name)?;
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, w.addr.to_string());
    cfg.assignments_poll = Duration::ZERO;
    tweak(&mut cfg);
    RunningReflector::start(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_comes_through_the_cache_and_a_second_endpoint_costs_no_wan() -> anyhow::Result<()>
{
    let w = World::start().await?;
    let (m, data) = layer("base", "1", 3000, 100);
    let p = w.publish(&m, data)?;
    assert!(p.body_chunks.len() > 10, "a body of several chunks");
    let refl = reflector(&w, "refl", |_| {}).await?;
    let key = w.manifest_key();

    let a = w.endpoint_client("ep-a", refl.addr).await?;
    let got = a.open_manifest("base", Some("1"), &key, |_| None).await?;
    assert_eq!(got.manifest.manifest, m);
    let first = w.sent();
    assert_eq!((first.0, first.1), (1, p.root_bytes.len() as u64), "one root from upstream");
    assert_eq!(
        (first.2, first.3),
        (p.body_chunks.len() as u64, p.body_stored_bytes),
        "each body chunk crossed the WAN once"
    );
    assert_eq!(refl.stats.upstream_bytes.get(), p.body_stored_bytes, "body bytes are WAN bytes");
    assert_eq!(refl.stats.upstream_manifest_bytes.get(), p.root_bytes.len() as u64);
    for c in &p.body_chunks {
        assert!(refl.store().contains(&c.id)?, "body chunk {} is cached", c.id);
        assert!(refl.is_pinned(&c.id), "body chunk {} is pinned", c.id);
    }

    // A second endpoint: root and body from the cache.
    let hits = refl.stats.cache_hits.get();
    let b = w.endpoint_client("ep-b", refl.addr).await?;
    let got = b.open_manifest("base", Some("1"), &key, |_| None).await?;
    assert_eq!(got.manifest.digest, p.sm.digest);
    assert_eq!(w.sent(), first, "the second endpoint cost 0 WAN bytes, manifest included");
    assert_eq!(refl.stats.cache_hits.get() - hits, p.body_chunks.len() as u64);

    // "latest" asks upstream which version that is (its root), and nothing more.
    let got = b.open_manifest("base", None, &key, |_| None).await?;
    assert_eq!(got.manifest.root.version, "1");
    let now = w.sent();
    assert_eq!((now.0, now.2), (2, first.2), "one more root, no body chunk");

    // The layer's files come through the same path.
    let ids: Vec<ChunkId> = p.file_chunks.iter().map(|c| c.id).collect();
    assert_eq!(a.plain_chunks(&ids).await?.len(), ids.len());
    assert_eq!(w.sent().2, first.2 + ids.len() as u64);
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_chunks_outlive_eviction_and_a_lost_one_is_fetched_again() -> anyhow::Result<()> {
    let w = World::start().await?;
    let (m, data) = layer("big", "1", 2000, 16 << 10);
    let p = w.publish(&m, data)?;
    let cap = p.body_stored_bytes + (2 << 20);
    let refl = reflector(&w, "refl", |c| c.cache_size = Some(cap)).await?;
    let key = w.manifest_key();

    let a = w.endpoint_client("ep-a", refl.addr).await?;
    a.open_manifest("big", Some("1"), &key, |_| None).await?;
    // 32 MiB of file chunks through a cache of about 2 MiB besides the body.
    let ids: Vec<ChunkId> = p.file_chunks.iter().map(|c| c.id).collect();
    for batch in ids.chunks(256) {
        a.plain_chunks(batch).await?;
    }
    assert!(
        wait_until(Duration::from_secs(10), || refl.cache_stats().bytes <= cap).await,
        "cache stays over its cap: {:?}",
        refl.cache_stats()
    );
    assert!(refl.stats.evictions.get() > 0, "the cap forced evictions");
    for c in &p.body_chunks {
        assert!(refl.store().contains(&c.id)?, "body chunk {} was evicted", c.id);
    }
    assert!(refl.cache_stats().pinned_bytes >= p.body_stored_bytes);

    // A body chunk lost anyway (here: removed behind the cache's back) costs that chunk.
    let lost = p.body_chunks[p.body_chunks.len() / 2];
    refl.store().remove(&lost.id)?;
    let before = w.sent();
    let b = w.endpoint_client("ep-b", refl.addr).await?;
    let got = b.open_manifest("big", Some("1"), &key, |_| None).await?;
    assert_eq!(got.manifest.digest, p.sm.digest);
    let after = w.sent();
    assert_eq!((after.0, after.2), (before.0, before.2 + 1), "only the lost chunk was fetched");
    assert!(refl.store().contains(&lost.id)?);
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_manifests_survive_a_restart_with_the_seed_gone() -> anyhow::Result<()> {
    let w = World::start().await?;
    let (m, data) = layer("app", "1", 1500, 64);
    let p = w.publish(&m, data)?;
    let refl = reflector(&w, "refl", |_| {}).await?;
    let key = w.manifest_key();
    assert!(refl.pin_layer_by_name("app", "1").await?);
    assert!(!refl.pin_layer_by_name("app", "1").await?, "pinning twice is a no-op");
    assert!(p.file_chunks.iter().all(|c| refl.is_pinned(&c.id)));
    let a = w.endpoint_client("ep-a", refl.addr).await?;
    a.open_manifest("app", None, &key, |_| None).await?;
    refl.stop().await;
    w.stop_upstream();

    let refl = reflector(&w, "refl", |c| {
        c.miss_timeout = Duration::from_secs(1);
        c.latest_timeout = Duration::from_millis(200);
    })
    .await?;
    assert_eq!(refl.pinned_layers(), vec![("app".to_string(), "1".to_string())]);
    assert!(p.file_chunks.iter().all(|c| refl.is_pinned(&c.id)), "pins restored from the body");
    assert!(p.body_chunks.iter().all(|c| refl.is_pinned(&c.id)), "body held again");
    let b = w.endpoint_client("ep-b", refl.addr).await?;
    let named = b.open_manifest("app", Some("1"), &key, |_| None).await?;
    let latest = b.open_manifest("app", None, &key, |_| None).await?;
    assert_eq!(named.manifest.manifest, m);
    assert_eq!(latest.manifest.digest, p.sm.digest, "the cached latest, upstream being gone");
    assert_eq!(refl.stats.upstream_bytes.get(), 0);

    assert!(refl.unpin_layer("app", "1").await?);
    assert!(p.file_chunks.iter().all(|c| !refl.is_pinned(&c.id)));
    assert!(p.body_chunks.iter().all(|c| refl.is_pinned(&c.id)), "the manifest is still held");
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_for_another_layer_is_refused_and_nothing_is_fetched_for_it() -> anyhow::Result<()> {
    let w = World::start().await?;
    let (m1, d1) = layer("base", "1", 200, 64);
    let (m2, d2) = layer("base", "2", 300, 64);
    w.publish(&m1, d1)?;
    let p2 = w.publish(&m2, d2)?;
    *w.upstream.lie.lock().unwrap() = Some(p2.root_bytes.clone().into());
    let refl = reflector(&w, "refl", |c| c.miss_timeout = Duration::from_secs(2)).await?;
    let a = w.endpoint_client("ep-a", refl.addr).await?;
    let err = a.manifest("base", Some("1")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, NetError::Remote { .. }), "{text}");
    assert!(text.contains("base@2") && text.contains("request for base@1"), "{text}");
    assert_eq!(w.sent().2, 0, "no body chunk was fetched for the wrong root");
    assert!(!refl.store().has_manifest("base", "1")? && !refl.store().has_manifest("base", "2")?);
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_format_1_manifest_is_fetched_again() -> anyhow::Result<()> {
    let w = World::start().await?;
    let (m, data) = layer("base", "1", 100, 64);
    let p = w.publish(&m, data)?;
    // What a reflector of the previous build left in its cache.
    let state = w.enroll(Role::Reflector, "refl")?;
    {
        let old = ChunkStore::open(&state.join("cache"))?;
        let mut v1 = b"OAS1".to_vec();
        v1.extend_from_slice(&[7u8; 200]);
        old.put_manifest_bytes("base", "1", &v1)?;
    }
    let refl = reflector(&w, "refl", |_| {}).await?;
    let a = w.endpoint_client("ep-a", refl.addr).await?;
    let got = a.open_manifest("base", Some("1"), &w.manifest_key(), |_| None).await?;
    assert_eq!(got.manifest.digest, p.sm.digest);
    assert_eq!(w.sent().0, 1, "the root came from upstream");
    assert_eq!(refl.store().manifest_bytes("base", Some("1"))?.as_deref(), Some(&p.root_bytes[..]));
    refl.stop().await;
    Ok(())
}

fn loopback_mesh(bootstrap: Vec<Multiaddr>) -> MeshSettings {
    MeshSettings {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr")],
        bootstrap,
        mdns: false,
        heartbeat: Duration::from_millis(300),
        advertise: None,
        wan_sharing: Default::default(),
    }
}

async fn mesh_addr(r: &RunningReflector) -> anyhow::Result<Multiaddr> {
    let mesh = r.mesh().expect("mesh on");
    let t0 = Instant::now();
    loop {
        if let Some(a) = mesh.listen_addrs().await?.into_iter().next() {
            return Ok(a.with(Protocol::P2p(mesh.peer_id())));
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(5), "mesh never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_pulls_a_manifest_once_and_siblings_learn_its_chunks() -> anyhow::Result<()> {
    let w = World::start().await?;
    let (m, data) = layer("base", "1", 2500, 256);
    let p = w.publish(&m, data)?;
    let key = w.manifest_key();
    let ra = reflector(&w, "refl-a", |c| c.mesh = Some(loopback_mesh(vec![]))).await?;
    let boot = mesh_addr(&ra).await?;
    let rb = reflector(&w, "refl-b", |c| c.mesh = Some(loopback_mesh(vec![boot]))).await?;
    let site = [ra, rb];
    RunningReflector::wait_for_wan_leader(&site, Duration::from_secs(15))
        .await
        .ok_or_else(|| anyhow::anyhow!("no WAN leader"))?;
    let [ra, rb] = site;

    // An endpoint of reflector A fetches the manifest and the files.
    let a = w.endpoint_client("ep-a", ra.addr).await?;
    a.open_manifest("base", Some("1"), &key, |_| None).await?;
    let ids: Vec<ChunkId> = p.file_chunks.iter().map(|c| c.id).collect();
    a.plain_chunks(&ids).await?;
    // An endpoint of reflector B: nothing more crosses the WAN.
    let before = w.sent();
    let b = w.endpoint_client("ep-b", rb.addr).await?;
    let got = b.open_manifest("base", Some("1"), &key, |_| None).await?;
    assert_eq!(got.manifest.digest, p.sm.digest);
    // Having read the body, B knows the layer, and what A announced of it (chunk indices from
    // the body A read) names A as the holder of its first and last chunks; likewise for the
    // body's chunks, gossiped as a layer of their own.
    let (a_peer, b_mesh) = (ra.mesh().expect("mesh").peer_id(), rb.mesh().expect("mesh"));
    let body = oasis_reflector::siblings::body_layer(&p.sm.digest);
    let checks = [
        (p.sm.digest, 0),
        (p.sm.digest, (p.file_chunks.len() - 1) as u32),
        (body, 0),
        (body, (p.body_chunks.len() - 1) as u32),
    ];
    let mut heard = false;
    let t0 = Instant::now();
    while !heard && t0.elapsed() < Duration::from_secs(10) {
        heard = true;
        for (layer, i) in checks {
            heard &= b_mesh.holders(layer, i).await?.iter().any(|h| h.peer_id == a_peer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(heard, "B learned that A holds the layer and its manifest body");
    b.plain_chunks(&ids).await?;
    let after = w.sent();
    let stats = |r: &RunningReflector| {
        let s = &r.stats;
        (s.upstream_chunks.get(), s.sibling_bytes.get(), s.sibling_delegated.get())
    };
    assert_eq!(
        (after.2, after.3),
        (before.2, before.3),
        "body and files came from the site, not the WAN; A (upstream chunks, sibling bytes, \
         delegated) {:?}, B {:?}, WAN leader {:?}",
        stats(&ra),
        stats(&rb),
        (ra.stats.wan_share.get(), rb.stats.wan_share.get())
    );
    assert_eq!(before.2, (p.body_chunks.len() + p.file_chunks.len()) as u64, "each chunk once");
    ra.stop().await;
    rb.stop().await;
    Ok(())
}
