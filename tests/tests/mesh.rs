//! The reflector mesh with real libp2p swarms and real QUIC on 127.0.0.1 (loopback has no
//! multicast: reflectors find each other through bootstrap addresses): one WAN pull per chunk
//! for a site of three reflectors, an endpoint surviving the loss of its reflector, one WAN
//! budget per site, and a sibling that serves corrupt chunks.

use oasis_core::identity::{NodeIdentity, Role};
use oasis_core::manifest::SignedManifest;
use oasis_core::metrics::sample_value;
use oasis_core::net::TransportOptions;
use oasis_endpoint::{fetch, FetchOptions, FetchReport};
use oasis_mesh::libp2p::multiaddr::Protocol;
use oasis_mesh::libp2p::Multiaddr;
use oasis_mesh::{Holding, Mesh, MeshConfig};
use oasis_reflector::{MeshSettings, ReflectorConfig, RunningReflector, WanLimit};
use oasis_tests::{http_get, random_tree, snapshot, CorruptingSource, TestSeed, TreeSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SITE: &str = "lyon";
const HEARTBEAT: Duration = Duration::from_millis(500);

fn loopback_mesh(bootstrap: Vec<Multiaddr>) -> MeshSettings {
    MeshSettings {
        listen: vec![
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("multiaddr"),
            "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"),
        ],
        bootstrap,
        mdns: false,
        heartbeat: HEARTBEAT,
        advertise: None,
    }
}

/// A reflector of `SITE` with the mesh on, bootstrapping from `bootstrap`.
async fn site_reflector(
    seed: &TestSeed,
    name: &str,
    bootstrap: Vec<Multiaddr>,
    tweak: impl FnOnce(&mut ReflectorConfig),
) -> anyhow::Result<RunningReflector> {
    let state = seed.dir.path().join(format!("node-{name}"));
    if !state.join("node.key").exists() {
        seed.enroll_in_site(Role::Reflector, name, SITE)?;
    }
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, seed.seed.addr.to_string());
    cfg.metrics = Some("127.0.0.1:0".parse()?);
    cfg.assignments_poll = Duration::ZERO;
    cfg.mesh = Some(loopback_mesh(bootstrap));
    tweak(&mut cfg);
    RunningReflector::start(cfg).await
}

/// The QUIC mesh address of a running reflector, with `/p2p/PEER_ID`.
async fn mesh_addr(r: &RunningReflector) -> anyhow::Result<Multiaddr> {
    let mesh = r.mesh().expect("mesh on");
    let t0 = Instant::now();
    loop {
        let addrs = mesh.listen_addrs().await?;
        if let Some(a) = addrs.into_iter().find(|a| a.iter().any(|p| p == Protocol::QuicV1)) {
            return Ok(a.with(Protocol::P2p(mesh.peer_id())));
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(5), "mesh never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `n` reflectors of one site, each bootstrapping from the first.
async fn site_of(
    seed: &TestSeed,
    prefix: &str,
    n: usize,
    tweak: impl Fn(&mut ReflectorConfig),
) -> anyhow::Result<Vec<RunningReflector>> {
    let first = site_reflector(seed, &format!("{prefix}0"), vec![], &tweak).await?;
    let boot = mesh_addr(&first).await?;
    let mut out = vec![first];
    for i in 1..n {
        out.push(site_reflector(seed, &format!("{prefix}{i}"), vec![boot.clone()], &tweak).await?);
    }
    settle(&out, n - 1).await?;
    Ok(out)
}

/// Waits until every reflector sees `peers` live siblings that publish a serving address.
async fn settle(refls: &[RunningReflector], peers: usize) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        let mut ok = true;
        for r in refls {
            let v = r.mesh().expect("mesh on").view().await?;
            let live = v
                .live_peers(SITE)
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

fn opts(state: &Path, sources: Vec<SocketAddr>, layer: &str, into: &Path) -> FetchOptions {
    let mut o = FetchOptions::new(state, sources, layer, Some("1".into()), into);
    o.streams = 8;
    o
}

async fn scrape(r: &RunningReflector, name: &str) -> anyhow::Result<f64> {
    let text = http_get(r.metrics_addr.expect("metrics on"), "/metrics").await?;
    sample_value(&text, name).ok_or_else(|| anyhow::anyhow!("{name} not in /metrics:\n{text}"))
}

fn publish_tree(
    seed: &TestSeed,
    name: &str,
    seed_n: u64,
    spec: TreeSpec,
) -> anyhow::Result<(PathBuf, oasis_seed::PublishReport)> {
    let src = seed.dir.path().join(format!("src-{name}"));
    random_tree(&src, seed_n, spec)?;
    let report = seed.publish(name, "1", &src)?;
    Ok((src, report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_reflectors_of_a_site_pull_each_chunk_once() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 80, large_files: 2, large_size: 2 << 20, depth: 3 };
    let (src, published) = publish_tree(&seed, "base", 21, spec)?;
    let refls = site_of(&seed, "r", 3, |_| {}).await?;
    let before = seed.scrape("oasis_served_bytes_total").await?;

    let mut fetches = Vec::new();
    for i in 0..10 {
        let state = seed.enroll_in_site(Role::Endpoint, &format!("ep{i}"), SITE)?;
        let into = seed.dir.path().join(format!("ep{i}-root"));
        let o = opts(&state, vec![refls[i % 3].addr], "base", &into);
        fetches.push(tokio::spawn(async move { fetch(&o).await.map(|r| (into, r)) }));
    }
    let want = snapshot(&src);
    for f in fetches {
        let (into, r) = f.await??;
        assert_eq!(snapshot(&into), want, "endpoint tree differs");
        assert_eq!(r.chunks_refetched, 0);
    }
    let wan = seed.scrape("oasis_served_bytes_total").await? - before;
    let ratio = wan / published.stored_bytes as f64;
    let mut sibling = 0.0;
    for r in &refls {
        sibling += scrape(r, "oasis_sibling_bytes_total").await?;
        assert_eq!(scrape(r, "oasis_peers").await?, 2.0, "each reflector sees its two siblings");
        let text = http_get(r.metrics_addr.expect("metrics"), "/metrics").await?;
        assert!(text.contains("oasis_gossip_messages_total"), "gossip counter exported");
    }
    eprintln!(
        "seed served {wan:.0} B for {} unique stored bytes: {ratio:.3}x; siblings exchanged \
         {sibling:.0} B",
        published.stored_bytes
    );
    assert!(ratio <= 1.05, "WAN carried {ratio:.3}x the layer's unique bytes");
    assert!(sibling > 0.0, "reflectors fetched from their siblings");
    for r in refls {
        r.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_survives_losing_its_reflector_mid_fetch() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 40, large_files: 3, large_size: 3 << 20, depth: 2 };
    let (src, published) = publish_tree(&seed, "app", 22, spec)?;
    // A WAN cap keeps the transfer going long enough to lose the reflector half-way.
    let refls = site_of(&seed, "k", 2, |c| c.wan = WanLimit::Flat(2_000_000)).await?;
    let state = seed.enroll_in_site(Role::Endpoint, "ep", SITE)?;
    let into = seed.dir.path().join("ep-root");
    let o = opts(&state, vec![refls[0].addr, refls[1].addr, seed.seed.addr], "app", &into);
    let transfer = tokio::spawn(async move { fetch(&o).await });
    let used = refls[0].metrics.clone();
    let t0 = Instant::now();
    while used.served_bytes.get() < published.stored_bytes / 4 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "transfer never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut refls = refls;
    let dead = refls.remove(0);
    let served_by_dead = dead.metrics.served_bytes.get();
    dead.shutdown();
    let r: FetchReport = transfer.await??;
    eprintln!(
        "reflector killed after serving {served_by_dead} of {} B; fetch completed via {:?}",
        published.stored_bytes, r.sources_used
    );
    assert_eq!(snapshot(&into), snapshot(&src));
    assert!(r.sources_used.len() >= 2, "the fetch moved to another source: {:?}", r.sources_used);
    assert_eq!(r.chunks_fetched, published.unique_chunks, "no chunk fetched twice");
    assert_eq!(r.bytes_network, published.stored_bytes, "no byte fetched twice");
    drop(dead);
    for r in refls {
        r.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_of_three_reflectors_shares_one_wan_budget() -> anyhow::Result<()> {
    let spec = TreeSpec { small_files: 40, large_files: 6, large_size: 6 << 20, depth: 2 };
    site_rate(spec, Duration::from_secs(3), None).await
}

/// Not run by default (about 40 MB through a 3 MB/s cap): the issue's criterion, the site's
/// rate within 5% of its cap, over a 10 s window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_site_of_three_reflectors_holds_its_cap_over_ten_seconds() -> anyhow::Result<()> {
    let spec = TreeSpec { small_files: 40, large_files: 8, large_size: 10 << 20, depth: 2 };
    site_rate(spec, Duration::from_secs(10), Some(0.05)).await
}

/// Three reflectors of a site under a 3 MB/s site cap, one endpoint on each, all fetching one
/// layer: the site's WAN rate over `window` after the start-up. `within`: also assert
/// |deviation| <= it.
async fn site_rate(spec: TreeSpec, window: Duration, within: Option<f64>) -> anyhow::Result<()> {
    const RATE: f64 = 3_000_000.0;
    let seed = TestSeed::start().await?;
    let (_src, published) = publish_tree(&seed, "big", 23, spec)?;
    let policy = seed.dir.path().join("policy.toml");
    std::fs::write(&policy, "[wan]\nrate = \"3MB/s\"\nburst = \"256KiB\"\n")?;
    let refls = site_of(&seed, "w", 3, |c| c.wan = WanLimit::PolicyFile(policy.clone())).await?;
    let mut fetches = Vec::new();
    for (i, r) in refls.iter().enumerate() {
        let state = seed.enroll_in_site(Role::Endpoint, &format!("ep{i}"), SITE)?;
        let into = seed.dir.path().join(format!("ep{i}-root"));
        let o = opts(&state, vec![r.addr], "big", &into);
        fetches.push(tokio::spawn(async move { fetch(&o).await }));
    }
    // Past the initial bursts (each reflector's bucket starts full) and the first share
    // exchange, then a window of several seconds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The seed's `oasis_served_bytes_total`, as an operator reads the WAN.
    let (b0, t0) = (seed.scrape("oasis_served_bytes_total").await?, Instant::now());
    tokio::time::sleep(window).await;
    let b1 = seed.scrape("oasis_served_bytes_total").await?;
    let secs = t0.elapsed().as_secs_f64();
    let rate = (b1 - b0) / secs;
    let deviation = rate / RATE - 1.0;
    let mut shares = Vec::new();
    for r in &refls {
        shares.push(scrape(r, "oasis_wan_site_share").await?);
    }
    eprintln!(
        "site WAN rate over {secs:.1} s with three reflectors under a {RATE:.0} B/s site cap: \
         {rate:.0} B/s ({:+.2}%); shares {shares:?}",
        deviation * 100.0
    );
    assert!(
        b1 < published.stored_bytes as f64,
        "the transfer was still running at the end of the window"
    );
    // As in the single-reflector test (reflector.rs): over a window of T seconds the site's
    // limiters admit at most R*T plus, per reflector, its bucket (at least the largest chunk
    // frame, ~263 KB) and what it may have requested but not yet paid for (1/8 s of its share,
    // at least 256 KiB); the same allowance bounds how far the bytes received can lag behind.
    let allowance = 3.0 * (256.0 * 1024.0 + 263_000.0) / secs / RATE;
    eprintln!(
        "allowance from buckets and in-flight windows over the window: {:.1}%",
        allowance * 100.0
    );
    assert!(
        deviation <= allowance,
        "site cap exceeded: {rate:.0} B/s ({:+.2}%)",
        deviation * 100.0
    );
    assert!(
        deviation >= -0.05 - allowance,
        "site cap badly under-used: {rate:.0} B/s ({:+.2}%)",
        deviation * 100.0
    );
    if let Some(w) = within {
        assert!(deviation.abs() <= w, "site rate {:+.2}% off its cap", deviation * 100.0);
    }
    let total: f64 = shares.iter().sum();
    assert!(total <= 1.0 + 1e-9, "shares add up to more than the site's rate: {shares:?}");
    for f in fetches {
        f.await??;
    }
    for r in refls {
        r.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_serving_corrupt_chunks_is_avoided() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 60, large_files: 1, large_size: 1 << 20, depth: 2 };
    let (src, published) = publish_tree(&seed, "base", 24, spec)?;
    let (src2, _) = publish_tree(&seed, "other", 26, spec)?;
    let good = site_reflector(&seed, "good", vec![], |_| {}).await?;

    // An enrolled reflector of the site whose mesh node claims the whole layer and whose QUIC
    // service sends every chunk corrupt.
    let bad_state = seed.enroll_in_site(Role::Reflector, "bad", SITE)?;
    let bad_id = NodeIdentity::load(&bad_state)?;
    let ep = oasis_core::net::server_endpoint(
        "127.0.0.1:0".parse()?,
        &bad_id,
        &TransportOptions::default(),
    )?;
    let corrupt = CorruptingSource::new(&seed, false);
    let asked = corrupt.asked.clone();
    let served = tokio::spawn(oasis_core::net::serve(
        ep.clone(),
        Arc::new(corrupt),
        Arc::new(oasis_core::metrics::NodeMetrics::new()),
    ));
    let cfg = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse()?],
        bootstrap: vec![mesh_addr(&good).await?],
        mdns: false,
        heartbeat: HEARTBEAT,
        serving_addr: Some(ep.local_addr()?),
        ..MeshConfig::default()
    };
    let (bad, bad_task) = Mesh::start(cfg, &bad_id, &bad_state)?;
    let key = *NodeIdentity::load(&seed.data())?.trust().manifest_key();
    let mut digests = Vec::new();
    for layer in ["base", "other"] {
        let bytes = seed.seed.store.manifest_bytes(layer, Some("1"))?.expect("published");
        let sm = SignedManifest::open(&bytes, &key)?;
        let count = sm.manifest.unique_chunks().len() as u32;
        bad.learn_layer(sm.digest, count);
        bad.announce_layer(sm.digest, count, Holding::Complete);
        digests.push(sm.digest);
    }
    settle(std::slice::from_ref(&good), 1).await?;
    // The claim reached the good reflector.
    let (t0, mesh) = (Instant::now(), good.mesh().expect("mesh on"));
    while mesh.view().await?.layer_peers(&digests[1]).is_empty() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "availability never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let state = seed.enroll_in_site(Role::Endpoint, "ep", SITE)?;
    let into = seed.dir.path().join("ep-root");
    let r = fetch(&opts(&state, vec![good.addr], "base", &into)).await?;
    assert_eq!(snapshot(&into), snapshot(&src), "the layer arrived intact");
    assert_eq!(r.chunks_refetched, 0, "the endpoint never received a corrupt chunk");
    let corrupt = good.stats.sibling_corrupt.get();
    let asked_now = asked.clone();
    let asked = asked.load(Ordering::Relaxed);
    eprintln!(
        "bad sibling asked for {asked} of {} chunks; {corrupt} corrupt chunks detected",
        published.unique_chunks
    );
    assert!(corrupt >= 1, "the corrupt chunk was detected");
    assert_eq!(good.stats.sibling_bytes.get(), 0, "no byte from the bad sibling was accepted");
    assert_eq!(good.stats.upstream_bytes.get(), published.stored_bytes);
    // Once caught, the bad sibling is left out: another layer it claims to hold comes from the
    // WAN without a single request to it.
    let state2 = seed.enroll_in_site(Role::Endpoint, "ep2", SITE)?;
    let into2 = seed.dir.path().join("ep2-root");
    fetch(&opts(&state2, vec![good.addr], "other", &into2)).await?;
    assert_eq!(snapshot(&into2), snapshot(&src2));
    assert_eq!(asked_now.load(Ordering::Relaxed), asked, "the bad sibling was asked again");
    bad.shutdown();
    let _ = bad_task.await;
    good.stop().await;
    ep.close(0u32.into(), b"done");
    served.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_id_is_stable_across_restarts() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let r = site_reflector(&seed, "stable", vec![], |_| {}).await?;
    let first = r.mesh().expect("mesh on").peer_id();
    r.stop().await;
    let state = seed.dir.path().join("node-stable");
    assert_eq!(oasis_mesh::peer_id_of_state(&state)?, first, "`id` prints the running id");
    let r = site_reflector(&seed, "stable", vec![], |_| {}).await?;
    assert_eq!(r.mesh().expect("mesh on").peer_id(), first, "same peer id after a restart");
    r.stop().await;
    Ok(())
}

/// A libp2p node that speaks gossipsub on the mesh topic but is not an enrolled node.
fn flooder() -> oasis_mesh::libp2p::Swarm<oasis_mesh::libp2p::gossipsub::Behaviour> {
    use oasis_mesh::libp2p::{gossipsub, identity::Keypair, noise, tcp, yamux};
    oasis_mesh::libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("tcp transport")
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .max_transmit_size(1 << 18)
                .build()
                .expect("gossipsub config");
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), cfg)
                .expect("gossipsub")
        })
        .expect("behaviour")
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gossip_flood_is_dropped_and_counted_while_serving_goes_on() -> anyhow::Result<()> {
    use futures::StreamExt;
    use oasis_mesh::libp2p::gossipsub::{Event, IdentTopic};
    use oasis_mesh::libp2p::swarm::SwarmEvent;
    let seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 200, large_files: 2, large_size: 2 << 20, depth: 2 };
    let (src, _) = publish_tree(&seed, "base", 25, spec)?;
    let refl = site_reflector(&seed, "flooded", vec![], |_| {}).await?;
    let mesh = refl.mesh().expect("mesh on").clone();
    let timed_fetch = |name: &'static str| {
        let (seed_dir, addr) = (seed.dir.path().to_path_buf(), refl.addr);
        let state = seed.enroll_in_site(Role::Endpoint, &format!("ep-{name}"), SITE);
        async move {
            let into = seed_dir.join(format!("{name}-root"));
            let t0 = Instant::now();
            fetch(&opts(&state?, vec![addr], "base", &into)).await?;
            anyhow::Ok((into, t0.elapsed()))
        }
    };
    timed_fetch("warm-up").await?; // fills the cache
    let (_, quiet) = timed_fetch("quiet").await?;

    // The flood: undecodable messages from a peer that is not enrolled, as fast as gossipsub
    // takes them.
    let tcp_addr = {
        let t0 = Instant::now();
        loop {
            let a = mesh
                .listen_addrs()
                .await?
                .into_iter()
                .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
            if let Some(a) = a {
                break a.with(Protocol::P2p(mesh.peer_id()));
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(5), "no TCP mesh address");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (stop2, sent2, target) = (stop.clone(), sent.clone(), mesh.peer_id());
    let flood = tokio::spawn(async move {
        let mut swarm = flooder();
        let topic = IdentTopic::new(oasis_mesh::TOPIC);
        swarm.behaviour_mut().subscribe(&topic).expect("subscribe");
        swarm.dial(tcp_addr).expect("dial");
        let mut subscribed = false;
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while !stop2.load(Ordering::Relaxed) {
            tokio::select! {
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(Event::Subscribed { peer_id, .. }) = ev {
                        subscribed |= peer_id == target;
                    }
                }
                _ = tick.tick(), if subscribed => {
                    for _ in 0..20 {
                        n += 1;
                        let mut junk = vec![0xee; 512];
                        junk[..8].copy_from_slice(&n.to_le_bytes());
                        if swarm.behaviour_mut().publish(topic.clone(), junk).is_ok() {
                            sent2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
    let t0 = Instant::now();
    while mesh.metrics().dropped("undecodable") + mesh.metrics().dropped("unverified") < 100 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(15), "the flood never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (into, flooded) = timed_fetch("flooded").await?;
    stop.store(true, Ordering::Relaxed);
    flood.await?;
    assert_eq!(snapshot(&into), snapshot(&src), "served intact under the flood");
    let dropped = mesh.metrics().dropped("undecodable") + mesh.metrics().dropped("unverified");
    let text = http_get(refl.metrics_addr.expect("metrics"), "/metrics").await?;
    assert!(text.contains("oasis_gossip_dropped_total{reason="), "drops exported:\n{text}");
    eprintln!(
        "flood: {} messages sent, {dropped} dropped and counted; warm fetch {:.0} ms quiet, \
         {:.0} ms under the flood ({:.2}x)",
        sent.load(Ordering::Relaxed),
        quiet.as_secs_f64() * 1e3,
        flooded.as_secs_f64() * 1e3,
        flooded.as_secs_f64() / quiet.as_secs_f64()
    );
    assert!(dropped >= 100, "the flood was counted");
    assert_eq!(mesh.view().await?.len(), 0, "the flooder never became a mesh peer");
    refl.stop().await;
    Ok(())
}
