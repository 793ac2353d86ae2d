//! The reflector mesh with real libp2p swarms and real QUIC on 127.0.0.1 (loopback has no
//! multicast: reflectors find each other through bootstrap addresses): one WAN pull per chunk
//! for a site of three reflectors, an endpoint surviving the loss of its reflector, one WAN
//! budget per site, and a sibling that serves corrupt chunks.

use oasis_core::metrics::sample_value;
use oasis_core::net::TransportOptions;
use oasis_core::pki::{NodeIdentity, Role};
use oasis_endpoint::{fetch, FetchOptions, FetchReport};
use oasis_mesh::libp2p::multiaddr::Protocol;
use oasis_mesh::libp2p::Multiaddr;
use oasis_mesh::{Holding, Mesh, MeshConfig};
use oasis_reflector::{ReflectorConfig, RunningReflector, WanLimit, WanSharing};
use oasis_testkit::{
    http_get, loopback_mesh, mesh_addr, random_tree, settle, snapshot, CorruptingSource,
    RateSampler, TestSeed, TreeSpec,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SITE: &str = "lyon";
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A reflector of `SITE` with the mesh on, bootstrapping from `bootstrap`.
async fn site_reflector(
    seed: &TestSeed,
    name: &str,
    bootstrap: Vec<Multiaddr>,
    tweak: impl FnOnce(&mut ReflectorConfig),
) -> anyhow::Result<RunningReflector> {
    let state = seed.base().join(format!("node-{name}"));
    if !state.join("node.key").exists() {
        seed.enroll_in_site(Role::Reflector, name, SITE)?;
    }
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, seed.seed.addr.to_string());
    cfg.metrics = Some("127.0.0.1:0".parse()?);
    cfg.assignments_poll = Duration::ZERO;
    cfg.mesh = Some(loopback_mesh(HEARTBEAT, bootstrap));
    tweak(&mut cfg);
    RunningReflector::start(cfg).await
}

/// Starts `n` reflectors of one site, each bootstrapping from the first.
async fn site_of(
    seed: &TestSeed,
    prefix: &str,
    n: usize,
    tweak: impl Fn(&mut ReflectorConfig),
) -> anyhow::Result<Vec<RunningReflector>> {
    let first = site_reflector(seed, &format!("{prefix}0"), vec![], &tweak).await?;
    let boot = mesh_addr(&first, false).await?;
    let mut out = vec![first];
    for i in 1..n {
        out.push(site_reflector(seed, &format!("{prefix}{i}"), vec![boot.clone()], &tweak).await?);
    }
    settle(&out, SITE, n - 1).await?;
    Ok(out)
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
    let src = seed.base().join(format!("src-{name}"));
    random_tree(&src, seed_n, spec)?;
    let report = seed.publish(name, "1", &src)?;
    seed.make_available(SITE, name, "1")?;
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
        let into = seed.base().join(format!("ep{i}-root"));
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
    let into = seed.base().join("ep-root");
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

/// Prefetch keeps its traffic class across the mesh: a sibling's prefetch that the site's WAN
/// leader pulls for it is pulled in the leader's background class. With `background_share = 0`
/// (no prefetch over the WAN) nothing moves; an endpoint's fetch of the same layer through the
/// same sibling goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siblings_prefetch_is_pulled_in_the_background_class() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 20, large_files: 1, large_size: 1 << 20, depth: 1 };
    let (src, published) = publish_tree(&seed, "pre", 28, spec)?;
    let policy = seed.base().join("policy-bg.toml");
    std::fs::write(&policy, "[wan]\nrate = \"20MB/s\"\nbackground_share = 0\n")?;
    let mut refls =
        site_of(&seed, "b", 2, |c| c.wan = WanLimit::PolicyFile(policy.clone())).await?;
    let leader = RunningReflector::wait_for_wan_leader(&refls, Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader took the rate"))?;
    let follower = refls.remove(1 - leader);
    let leader = refls.remove(0);
    let follower = Arc::new(follower);
    let f2 = follower.clone();
    let prefetch = tokio::spawn(async move { f2.prefetch_layer("pre", Some("1")).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_prefetch = seed.served_bytes();
    let delegated = follower.stats.sibling_delegated.get();
    // The endpoint's fetch through the follower: foreground, admitted at once.
    let state = seed.enroll_in_site(Role::Endpoint, "bep", SITE)?;
    let into = seed.base().join("bep-root");
    let r = fetch(&opts(&state, vec![follower.addr], "pre", &into)).await?;
    eprintln!(
        "WAN bytes while only a sibling's prefetch asked: {during_prefetch} (background_share \
         = 0); then the endpoint's fetch moved {} B over the WAN for {} B stored",
        seed.served_bytes(),
        published.stored_bytes
    );
    // The manifest itself is pulled in the foreground (nothing can be planned without it);
    // no layer chunk moves.
    let (_, body) = seed.body("pre", "1")?;
    assert_eq!(
        during_prefetch, body,
        "prefetch pulled more than the manifest's body over the WAN with background_share = 0"
    );
    let body_chunks = seed.body("pre", "1")?.0;
    assert!(delegated <= body_chunks, "{delegated} chunks delivered to the prefetch");
    assert_eq!(snapshot(&into), snapshot(&src));
    assert_eq!(r.bytes_network, published.stored_bytes);
    prefetch.abort();
    let _ = prefetch.await;
    leader.stop().await;
    if let Ok(f) = Arc::try_unwrap(follower) {
        f.stop().await;
    }
    Ok(())
}

/// `wan_sharing = "leader"`: the site's WAN leader dies mid-transfer. The endpoints (on the
/// other two reflectors) finish with intact trees, a survivor takes the whole rate once the dead
/// leader's entry has expired, never two buckets at the whole rate at once, and the WAN carries
/// the layer once plus at most what died with the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_site_wan_leader_hands_the_wan_to_a_sibling() -> anyhow::Result<()> {
    const RATE: u64 = 3_000_000;
    let seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 30, large_files: 4, large_size: 4 << 20, depth: 2 };
    let (src, published) = publish_tree(&seed, "lead", 27, spec)?;
    let mut refls = site_of(&seed, "l", 3, |c| c.wan = WanLimit::Flat(RATE)).await?;
    let leader = RunningReflector::wait_for_wan_leader(&refls, Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader took the rate"))?;
    let leader = refls.remove(leader);
    let mut fetches = Vec::new();
    for (i, r) in refls.iter().enumerate() {
        let state = seed.enroll_in_site(Role::Endpoint, &format!("lep{i}"), SITE)?;
        let into = seed.base().join(format!("lep{i}-root"));
        let o = opts(&state, vec![r.addr], "lead", &into);
        fetches.push(tokio::spawn(async move { fetch(&o).await.map(|r| (into, r)) }));
    }
    let t0 = Instant::now();
    while seed.served_bytes() < published.stored_bytes / 4 {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "transfer never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    leader.shutdown();
    let leader_pulled = leader.stats.upstream_bytes.get();
    // Watch the survivors' shares until the fetches end.
    let gauges: Vec<_> = refls.iter().map(|r| r.stats.wan_share.clone()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let watch = tokio::spawn(async move {
        let (mut took_over, mut most_at_full) = (None, 0usize);
        while !stop2.load(Ordering::Relaxed) {
            let full = gauges.iter().filter(|g| g.get() == 1.0).count();
            most_at_full = most_at_full.max(full);
            if full == 1 && took_over.is_none() {
                took_over = Some(killed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (took_over, most_at_full)
    });
    let want = snapshot(&src);
    for f in fetches {
        let (into, _) = f.await??;
        assert_eq!(snapshot(&into), want, "endpoint tree differs");
    }
    let done = killed_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (took_over, most_at_full) = watch.await?;
    let wan = seed.served_bytes() as f64 / published.stored_bytes as f64;
    let pulled: Vec<u64> = refls.iter().map(|r| r.stats.upstream_bytes.get()).collect();
    let from_siblings: Vec<u64> = refls.iter().map(|r| r.stats.sibling_bytes.get()).collect();
    eprintln!(
        "pulled over the WAN: leader {leader_pulled} B, survivors {pulled:?} B; from siblings \
         {from_siblings:?} B; layer {} B",
        published.stored_bytes
    );
    eprintln!(
        "leader killed after {:.1} of {:.1} MB; a survivor took the whole rate {:?} after the \
         kill (expiry 3 x {HEARTBEAT:?}, then 3 rounds); fetches done {:.1} s after the kill; \
         WAN carried {wan:.3}x the layer",
        published.stored_bytes as f64 / 4e6,
        published.stored_bytes as f64 / 1e6,
        took_over,
        done.as_secs_f64()
    );
    let took_over = took_over.ok_or_else(|| anyhow::anyhow!("no survivor took the site's rate"))?;
    // Expiry (3 heartbeats, counted from the last one heard) plus 3 rounds of claiming, and a
    // heartbeat of slack for the phases of the rounds.
    assert!(took_over <= HEARTBEAT * 8, "takeover took {took_over:?}");
    assert!(most_at_full <= 1, "two buckets at the whole rate");
    // What dies with the leader is sent again: what it had requested and the seed had sent
    // but it had not read. Measured on an idle machine (16 runs): the reflectors' own counters
    // add up to the layer exactly, the seed's to 1.00-1.14x; while a release build ran on the
    // same cores up to 1.29x (a survivor that waited out its patience pulled a few chunks
    // itself). The bound is two seconds of the site's rate, far below a second copy.
    let extra = seed.served_bytes().saturating_sub(published.stored_bytes);
    assert!(extra <= 2 * RATE, "the WAN carried {wan:.3}x the layer ({extra} B more)");
    drop(leader);
    for r in refls {
        r.stop().await;
    }
    Ok(())
}

/// The criterion: "A site with three reflectors and a site cap of R: the site's total
/// WAN rate stays within 5% of R." Three reflectors of a site under a 3 MB/s site cap, one
/// endpoint on each, all fetching one ~84 MB layer (about 28 s at the cap), with the default
/// `wan_sharing = "leader"`. The seed's served byte counter (the site's WAN) is sampled every
/// 100 ms, and every 10 s window that starts after the start-up and ends before the last byte
/// must be within 5% of R, above and below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_of_three_reflectors_uses_its_cap_within_five_percent() -> anyhow::Result<()> {
    site_cap(WanSharing::Leader, true).await
}

/// Not run by default (another ~30 s): `wan_sharing = "spread"` never exceeds the cap either,
/// but does not hold the lower bound (measured 10 s windows 1–17% below R; see
/// docs/benchmarks.md "Reflector mesh"): rendezvous hashing gives one reflector more of the
/// layer than its equal share lets it pull in step, and a reflector whose queue ran dry gets
/// its share back only two heartbeats later. Run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_site_of_three_spread_reflectors_holds_its_cap_over_every_ten_seconds(
) -> anyhow::Result<()> {
    site_cap(WanSharing::Spread, false).await
}

async fn site_cap(sharing: WanSharing, strict_low: bool) -> anyhow::Result<()> {
    const RATE: f64 = 3_000_000.0;
    const WINDOW: f64 = 10.0;
    let seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 40, large_files: 8, large_size: 10 << 20, depth: 2 };
    let (src, published) = publish_tree(&seed, "big", 23, spec)?;
    let policy = seed.base().join("policy.toml");
    std::fs::write(&policy, "[wan]\nrate = \"3MB/s\"\nburst = \"256KiB\"\n")?;
    let refls = site_of(&seed, "w", 3, |c| {
        c.wan = WanLimit::PolicyFile(policy.clone());
        if let Some(m) = c.mesh.as_mut() {
            m.wan_sharing = sharing;
        }
    })
    .await?;
    let served = seed.seed.metrics.served_bytes.clone();
    let sampler = RateSampler::start(move || served.get(), Duration::from_millis(100));
    let (share_stop, shares_seen) = watch_shares(&refls);
    let mut fetches = Vec::new();
    for (i, r) in refls.iter().enumerate() {
        let state = seed.enroll_in_site(Role::Endpoint, &format!("ep{i}"), SITE)?;
        let into = seed.base().join(format!("ep{i}-root"));
        let o = opts(&state, vec![r.addr], "big", &into);
        fetches.push(tokio::spawn(async move { fetch(&o).await.map(|r| (into, r)) }));
    }
    let want = snapshot(&src);
    for f in fetches {
        let (into, _) = f.await??;
        assert_eq!(snapshot(&into), want, "endpoint tree differs");
    }
    let samples = sampler.finish().await?;
    share_stop.store(true, Ordering::Relaxed);
    let shares_seen = shares_seen.await?;
    let first = samples.first_move().expect("bytes moved");
    let last = samples.last_move().expect("bytes moved");
    // Start-up: each reflector's bucket starts full (at most its burst, raised to the largest
    // chunk frame, ~263 KB) and the shares settle within two heartbeats (the first demands
    // reach the siblings with the next heartbeat; a rise counts one round later).
    let settle_s = 3.0 * 263_000.0 / RATE + 2.0 * HEARTBEAT.as_secs_f64();
    let windows = samples.windows(WINDOW, first + settle_s, last);
    let (low, peak) =
        windows.iter().fold((f64::INFINITY, 0.0f64), |(l, p), w| (l.min(*w), p.max(*w)));
    // Over a window of T seconds the site's limiters admit at most R*T plus, per reflector,
    // its bucket (at least the largest chunk frame, ~263 KB) and what it may have requested
    // but not yet paid for (1/8 s of its share, at least 256 KiB); the same allowance bounds
    // how far the bytes received can lag behind. A share change is applied from the next
    // heartbeat on, and the shares never add up to more than 1.
    let allowance = 3.0 * (256.0 * 1024.0 + 263_000.0) / WINDOW / RATE;
    eprintln!(
        "site of three reflectors ({sharing}), {RATE:.0} B/s site cap, {} B stored, transfer {:.1} s: {} \
         windows of {WINDOW} s, rate {:+.2}% .. {:+.2}% of the cap (token-bucket allowance \
         {:.1}%); share sums seen {:.3} .. {:.3}",
        published.stored_bytes,
        last - first,
        windows.len(),
        (low / RATE - 1.0) * 100.0,
        (peak / RATE - 1.0) * 100.0,
        allowance * 100.0,
        shares_seen.0,
        shares_seen.1,
    );
    assert!(windows.len() >= 10, "the transfer was too short to measure {WINDOW} s windows");
    assert!(
        peak <= RATE * (1.0 + allowance.min(0.05)),
        "site cap exceeded: a {WINDOW} s window ran at {peak:.0} B/s"
    );
    let mean = windows.iter().sum::<f64>() / windows.len() as f64;
    // The cap was what held the transfer back (else the check above proves nothing).
    assert!(mean >= 0.8 * RATE, "the site ran far below its cap: {mean:.0} B/s on average");
    if strict_low {
        assert!(low >= RATE * 0.95, "site cap under-used: a {WINDOW} s window ran at {low:.0} B/s");
    }
    let wan = seed.served_bytes() as f64 / published.stored_bytes as f64;
    assert!(wan <= 1.05, "the site's WAN carried {wan:.3}x the layer");
    for r in refls {
        r.stop().await;
    }
    Ok(())
}

/// Samples the sum of the three reflectors' WAN shares every 50 ms until told to stop; gives
/// the lowest and highest sum seen.
fn watch_shares(
    refls: &[RunningReflector],
) -> (Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<(f64, f64)>) {
    let gauges: Vec<_> = refls.iter().map(|r| r.stats.wan_share.clone()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let task = tokio::spawn(async move {
        let (mut low, mut high) = (f64::INFINITY, 0.0f64);
        while !stop2.load(Ordering::Relaxed) {
            let sum: f64 = gauges.iter().map(|g| g.get()).sum();
            (low, high) = (low.min(sum), high.max(sum));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (low, high)
    });
    (stop, task)
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
        oasis_core::net::Router::new(Arc::new(corrupt)),
        Arc::new(oasis_core::metrics::NodeMetrics::new()),
    ));
    let cfg = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse()?],
        bootstrap: vec![mesh_addr(&good, false).await?],
        mdns: false,
        heartbeat: HEARTBEAT,
        serving_addr: Some(ep.local_addr()?),
        ..MeshConfig::default()
    };
    let (bad, bad_task) = Mesh::start(cfg, &bad_id, &bad_state)?;
    let key = *NodeIdentity::load(&seed.data())?.trust().manifest_key();
    let mut digests = Vec::new();
    for layer in ["base", "other"] {
        let sm = seed.seed.store.open_manifest(layer, Some("1"), &key)?.expect("published");
        let count = sm.manifest.unique_chunks().len() as u32;
        bad.learn_layer(sm.digest, count);
        bad.announce_layer(sm.digest, count, Holding::Complete);
        digests.push(sm.digest);
    }
    settle(std::slice::from_ref(&good), SITE, 1).await?;
    // The claim reached the good reflector.
    let (t0, mesh) = (Instant::now(), good.mesh().expect("mesh on"));
    while mesh.view().await?.layer_peers(&digests[1]).is_empty() {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "availability never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let state = seed.enroll_in_site(Role::Endpoint, "ep", SITE)?;
    let into = seed.base().join("ep-root");
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
    assert_eq!(good.stats.upstream_bytes.get(), published.stored_bytes + seed.body("base", "1")?.1);
    // Once caught, the bad sibling is left out: another layer it claims to hold comes from the
    // WAN without a single request to it.
    let state2 = seed.enroll_in_site(Role::Endpoint, "ep2", SITE)?;
    let into2 = seed.base().join("ep2-root");
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
    let state = seed.base().join("node-stable");
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
        let (seed_dir, addr) = (seed.base().to_path_buf(), refl.addr);
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
    // Peer scoring graylists the flooder after about five rejected messages (an unverified
    // neighbour starts at -60, the graylist is at -80, each invalid message costs its count
    // squared): the rest of the flood is not even taken.
    let t0 = Instant::now();
    while mesh.metrics().dropped("undecodable") + mesh.metrics().dropped("unverified") < 5 {
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
    let sent = sent.load(Ordering::Relaxed);
    assert!(dropped >= 5, "the flood was counted");
    assert!(dropped * 2 < sent, "{dropped} of {sent} flooded messages were taken: not graylisted");
    assert_eq!(mesh.view().await?.len(), 0, "the flooder never became a mesh peer");
    refl.stop().await;
    Ok(())
}

/// The seed in the mesh: three reflectors given only the seed's address find each other
/// (Kademlia through the seed, then direct connections), see the seed's published layers
/// (gossiped as complete, and as Kademlia provider records), and do not take the seed for a
/// sibling: it is in no site, so it is never asked over the LAN and has no part in the site's
/// WAN fetching or shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflectors_bootstrapped_from_the_seed_alone_find_each_other() -> anyhow::Result<()> {
    let mut seed = TestSeed::start().await?;
    let spec = TreeSpec { small_files: 30, large_files: 1, large_size: 1 << 20, depth: 2 };
    let (src, published) = publish_tree(&seed, "base", 27, spec)?;
    let data = seed.data();
    let settings = MeshConfig {
        listen: loopback_mesh(HEARTBEAT, vec![]).listen,
        mdns: false,
        heartbeat: HEARTBEAT,
        ..MeshConfig::default()
    };
    let seed_mesh = seed.seed.join_mesh(&data, settings)?.clone();
    let seed_id = seed_mesh.peer_id();
    assert_eq!(oasis_mesh::peer_id_of_state(&data)?, seed_id, "`oasis-seed id` prints it");
    let seed_addr = {
        let t0 = Instant::now();
        loop {
            let a = seed_mesh.listen_addrs().await?;
            if let Some(a) = a.into_iter().find(|a| a.iter().any(|p| p == Protocol::QuicV1)) {
                break a.with(Protocol::P2p(seed_id));
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(5),
                "the seed's mesh never listened"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut refls = Vec::new();
    for i in 0..3 {
        refls.push(site_reflector(&seed, &format!("s{i}"), vec![seed_addr.clone()], |_| {}).await?);
    }
    let took = settle(&refls, SITE, 2).await?;
    let ids: Vec<_> = refls.iter().map(|r| r.mesh().expect("mesh on").peer_id()).collect();
    // Direct connections between the reflectors: they learned each other's addresses from
    // the seed (Kademlia) and identify, not from any configuration.
    let t0 = Instant::now();
    loop {
        let mut missing = 0;
        for (i, r) in refls.iter().enumerate() {
            let connected = r.mesh().expect("mesh on").connected_peers().await?;
            missing +=
                ids.iter().enumerate().filter(|(j, id)| *j != i && !connected.contains(id)).count();
        }
        if missing == 0 {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "{missing} reflector-to-reflector connections missing after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let direct = took.max(t0.elapsed());
    // The seed's layer: gossiped as complete, and a Kademlia provider record.
    let bytes = seed.seed.store.manifest_bytes("base", Some("1"))?.expect("published");
    let digest = oasis_core::manifest::digest_of_signed(&bytes);
    let seed_ref = oasis_mesh::peer_ref(&seed_id);
    for r in &refls {
        let mesh = r.mesh().expect("mesh on");
        let t0 = Instant::now();
        loop {
            let v = mesh.view().await?;
            // The serving address comes with the seed's heartbeat, which may follow its
            // availability: wait for both.
            let heard = v.peer(&seed_ref).is_some_and(|rec| rec.serving_addr.is_some());
            if heard
                && v.layer_peers(&digest)
                    .iter()
                    .any(|(p, n)| *p == seed_ref && *n == published.unique_chunks as u32)
            {
                let rec = v.peer(&seed_ref).expect("the seed is a live peer");
                assert_eq!(rec.site, None, "the seed belongs to no site's mesh");
                assert_eq!(rec.serving_addr.as_deref(), Some(seed.seed.addr.to_string().as_str()));
                assert!(!v.live_peers(SITE).contains(&seed_ref), "the seed is not a sibling");
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "the seed's layer or heartbeat never arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let providers = mesh.find_providers(digest).await?;
        assert!(
            providers.contains(&seed_id),
            "the seed provides the layer in Kademlia: {providers:?}"
        );
    }
    // Serving: the first endpoint's layer comes over the WAN (each chunk pulled by the site's
    // rendezvous fetcher; the seed is not asked as a sibling), the second's from siblings.
    let mut r1_wan_before = 0;
    for (i, r) in refls.iter().take(2).enumerate() {
        if i == 1 {
            r1_wan_before = r.stats.upstream_bytes.get();
            // The second asks once it has heard that the first holds the whole layer.
            let (first, t0) = (oasis_mesh::peer_ref(&ids[0]), Instant::now());
            while !r.mesh().expect("mesh on").view().await?.has_complete(&first, &digest) {
                anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "availability never came");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let state = seed.enroll_in_site(Role::Endpoint, &format!("ep{i}"), SITE)?;
        let into = seed.base().join(format!("ep{i}-root"));
        fetch(&opts(&state, vec![r.addr], "base", &into)).await?;
        assert_eq!(snapshot(&into), snapshot(&src));
    }
    // Every chunk crossed the WAN once, through a reflector's upstream path: had the seed been
    // taken for a sibling holder, chunks would have come from it as "sibling" bytes instead.
    let wan: u64 = refls.iter().map(|r| r.stats.upstream_bytes.get()).sum();
    let body = seed.body("base", "1")?.1;
    assert_eq!(
        wan,
        published.stored_bytes + body,
        "one WAN pull per chunk, through the upstream path"
    );
    let r0 = &refls[0].stats;
    assert_eq!(r0.upstream_bytes.get() + r0.sibling_bytes.get(), published.stored_bytes + body);
    assert_eq!(
        refls[1].stats.upstream_bytes.get(),
        r1_wan_before,
        "the second endpoint's layer came from the sibling that held it, not over the WAN"
    );
    eprintln!(
        "three reflectors bootstrapped from the seed alone: the site's three live and \
         connected to each other within {:.2} s",
        direct.as_secs_f64()
    );
    for r in refls {
        r.stop().await;
    }
    Ok(())
}
