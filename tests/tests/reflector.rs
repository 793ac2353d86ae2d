//! The branch reflector with a real seed and real endpoints over QUIC on 127.0.0.1: one
//! upstream fetch per chunk however many endpoints want it, pins that survive eviction, WAN
//! policy reloads, a dying seed, and corrupt chunks on the reflector's disk.

use oasis_core::manifest::SignedManifest;
use oasis_core::metrics::sample_value;
use oasis_core::net::{Client, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::policy::unpaid::window_limit;
use oasis_core::policy::{BandwidthPolicy, TrafficClass};
use oasis_core::ChunkId;
use oasis_endpoint::{fetch, FetchOptions, FetchReport};
use oasis_reflector::{ConfigArgs, ReflectorConfig, RunningReflector, WanLimit};
use oasis_seed::signer::{SeedSigner, DEFAULT_LATEST_TTL};
use oasis_seed::RunningSeed;
use oasis_testkit::{
    get_verified, http_get, random_tree, snapshot, wait_until, CorruptingSource, TestSeed, TreeSpec,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A reflector enrolled by `seed`, listening on 127.0.0.1, with metrics.
async fn reflector(
    seed: &TestSeed,
    name: &str,
    tweak: impl FnOnce(&mut ReflectorConfig),
) -> anyhow::Result<RunningReflector> {
    seed.reflector(name, tweak).await
}

fn opts(
    state: &Path,
    from: SocketAddr,
    layer: &str,
    version: Option<&str>,
    into: &Path,
) -> FetchOptions {
    FetchOptions {
        state_dir: state.to_path_buf(),
        sources: vec![from],
        name: layer.into(),
        version: version.map(str::to_string),
        into: into.to_path_buf(),
        streams: 8,
        progress: false,
    }
}

/// A fresh endpoint (own state, empty cache) fetching `layer` from `from` into a new directory.
async fn fetch_fresh(
    seed: &TestSeed,
    name: &str,
    from: SocketAddr,
    layer: &str,
    version: Option<&str>,
) -> anyhow::Result<(PathBuf, FetchReport)> {
    let state = seed.enroll(Role::Endpoint, name)?;
    let into = seed.base().join(format!("{name}-root"));
    let r = fetch(&opts(&state, from, layer, version, &into)).await?;
    Ok((into, r))
}

async fn scrape(r: &RunningReflector, name: &str) -> anyhow::Result<f64> {
    let text = http_get(r.metrics_addr.expect("metrics on"), "/metrics").await?;
    sample_value(&text, name).ok_or_else(|| anyhow::anyhow!("{name} not in /metrics:\n{text}"))
}

fn manifest_of(seed: &TestSeed, name: &str, version: &str) -> anyhow::Result<SignedManifest> {
    let id = NodeIdentity::load(&seed.data())?;
    Ok(seed
        .seed
        .store
        .open_manifest(name, Some(version), id.trust().manifest_key())?
        .expect("published"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_endpoints_cause_one_upstream_fetch_per_chunk() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        21,
        TreeSpec { small_files: 60, large_files: 2, large_size: 3 << 20, depth: 4 },
    )?;
    let published = seed.publish("base", "1", &src)?;
    let refl = reflector(&seed, "refl", |_| {}).await?;
    let want = snapshot(&src);

    // Wave 1: twenty endpoints at once through a cold reflector.
    let mut states = Vec::new();
    for i in 0..20 {
        states.push(seed.enroll(Role::Endpoint, &format!("ep{i}"))?);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let into = seed.base().join(format!("w1-{i}"));
        let o = opts(state, refl.addr, "base", Some("1"), &into);
        tasks.push(tokio::spawn(async move { (into, fetch(&o).await) }));
    }
    for t in tasks {
        let (into, r) = t.await?;
        let r = r?;
        assert_eq!(r.bytes_network, published.stored_bytes);
        assert_eq!(r.chunks_refetched, 0);
        assert_eq!(snapshot(&into), want, "tree at {} differs", into.display());
    }
    let wave1 = t0.elapsed();
    let upstream = seed.scrape("oasis_served_bytes_total").await? as u64;
    // The layer's chunks and its manifest's body chunks, as stored.
    let stored = published.stored_bytes + seed.body("base", "1")?.1;
    eprintln!(
        "wave 1: {:.2} s; layer {stored} B stored ({} chunks); seed served {upstream} B ({:.3}x); \
         hits {} misses {} coalesced {}",
        wave1.as_secs_f64(),
        published.unique_chunks,
        upstream as f64 / stored as f64,
        refl.stats.cache_hits.get(),
        refl.stats.cache_misses.get(),
        refl.stats.coalesced.get(),
    );
    assert!(
        upstream as f64 <= 1.05 * stored as f64,
        "seed served {upstream} B for a layer of {stored} B stored"
    );
    assert!(upstream >= stored, "every chunk came through the reflector");
    assert_eq!(scrape(&refl, "oasis_upstream_bytes_total").await? as u64, upstream);
    assert!(scrape(&refl, "oasis_coalesced_total").await? > 0.0, "twenty endpoints coalesced");
    assert_eq!(
        scrape(&refl, "oasis_served_bytes_total").await? as u64,
        20 * stored,
        "each endpoint got the whole layer from the reflector"
    );
    assert_eq!(scrape(&refl, "oasis_cache_bytes").await? as u64, stored);
    assert_eq!(scrape(&refl, "oasis_wan_rate_limit_bytes_per_second").await?, 0.0);

    // Wave 2: twenty more endpoints with empty caches: no upstream traffic at all.
    let mut states = Vec::new();
    for i in 0..20 {
        states.push(seed.enroll(Role::Endpoint, &format!("ep2-{i}"))?);
    }
    let t1 = Instant::now();
    let mut tasks = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let into = seed.base().join(format!("w2-{i}"));
        let o = opts(state, refl.addr, "base", Some("1"), &into);
        tasks.push(tokio::spawn(async move { (into, fetch(&o).await) }));
    }
    for t in tasks {
        let (into, r) = t.await?;
        let r = r?;
        assert_eq!(r.bytes_network + r.manifest_body_bytes, stored);
        assert_eq!(snapshot(&into), want);
    }
    eprintln!("wave 2 (warm): {:.2} s", t1.elapsed().as_secs_f64());
    assert_eq!(seed.served_bytes(), upstream, "a warm reflector pulls nothing upstream");
    assert_eq!(refl.stats.upstream_bytes.get(), upstream);
    assert_eq!(refl.metrics.served_bytes.get(), 40 * stored);
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_chunk_cause_one_upstream_fetch() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        12,
        TreeSpec { small_files: 10, large_files: 1, large_size: 2 << 20, depth: 1 },
    )?;
    let published = seed.publish("base", "1", &src)?;
    let refl = reflector(&seed, "refl", |_| {}).await?;
    // Slow WAN, so that every client's requests arrive while the fetches are in flight.
    refl.set_policy(BandwidthPolicy::from_toml_str(
        "[wan]\nrate = \"1MB/s\"\nburst = \"64KiB\"\n",
        "test",
    )?);
    let ids: Vec<ChunkId> =
        manifest_of(&seed, "base", "1")?.manifest.unique_chunks().iter().map(|c| c.id).collect();
    // The manifest first, as an endpoint asks for it (the reflector learns which layer the
    // chunks are of); what follows is counted from here.
    {
        let identity = NodeIdentity::load(&seed.enroll(Role::Endpoint, "raw-manifest")?)?;
        let ep = oasis_core::net::client_endpoint(&identity, &TransportOptions::default())?;
        let client = Client::connect(&ep, refl.addr, oasis_core::net::accept::ANY).await?;
        client.manifest("base", Some("1")).await?;
        client.close();
    }
    let s = &refl.stats;
    let (upstream0, served0) = (s.upstream_chunks.get(), seed.served_bytes());
    let (hits0, misses0) = (s.cache_hits.get(), s.cache_misses.get());
    let mut tasks = Vec::new();
    // Twenty endpoints, each with its own identity (one node may hold only a few connections).
    for i in 0..20 {
        let identity = NodeIdentity::load(&seed.enroll(Role::Endpoint, &format!("raw-{i}"))?)?;
        let ep = oasis_core::net::client_endpoint(&identity, &TransportOptions::default())?;
        let (ids, addr) = (ids.clone(), refl.addr);
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&ep, addr, oasis_core::net::accept::ANY).await?;
            let got = get_verified(&client, ids).await?;
            client.close();
            anyhow::Ok(got)
        }));
    }
    for t in tasks {
        assert_eq!(t.await??, ids.len());
    }
    eprintln!(
        "{} chunks x 20 clients: {} upstream fetches, {} hits, {} misses, {} coalesced",
        ids.len(),
        s.upstream_chunks.get(),
        s.cache_hits.get(),
        s.cache_misses.get(),
        s.coalesced.get()
    );
    assert_eq!(
        s.upstream_chunks.get() - upstream0,
        ids.len() as u64,
        "exactly one upstream fetch per chunk"
    );
    assert_eq!(seed.served_bytes() - served0, published.stored_bytes);
    assert_eq!(s.cache_hits.get() + s.cache_misses.get() - hits0 - misses0, 20 * ids.len() as u64);
    assert!(s.coalesced.get() > 0);
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_honours_pins() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let a_src = seed.base().join("a");
    let b_src = seed.base().join("b");
    random_tree(
        &a_src,
        1,
        TreeSpec { small_files: 100, large_files: 1, large_size: 2 << 20, depth: 2 },
    )?;
    random_tree(
        &b_src,
        2,
        TreeSpec { small_files: 100, large_files: 2, large_size: 2 << 20, depth: 2 },
    )?;
    let a = seed.publish("pinned", "1", &a_src)?;
    let b = seed.publish("other", "1", &b_src)?;
    let cap = a.stored_bytes + b.stored_bytes / 3;
    let refl = reflector(&seed, "refl", |c| c.cache_size = Some(cap)).await?;

    // The site's layer is pinned before anything is cached.
    assert!(refl.pin_layer_by_name("pinned", "1").await?);
    assert!(!refl.pin_layer_by_name("pinned", "1").await?, "pinning twice is a no-op");
    assert_eq!(refl.pinned_layers(), vec![("pinned".to_string(), "1".to_string())]);
    let a_ids: Vec<_> = manifest_of(&seed, "pinned", "1")?.manifest.unique_chunks();
    assert!(a_ids.iter().all(|c| refl.is_pinned(&c.id)));

    fetch_fresh(&seed, "ep-a", refl.addr, "pinned", Some("1")).await?;
    let (into, _) = fetch_fresh(&seed, "ep-b", refl.addr, "other", Some("1")).await?;
    assert_eq!(snapshot(&into), snapshot(&b_src), "eviction never breaks a transfer");
    assert!(
        wait_until(Duration::from_secs(5), || refl.cache_stats().bytes <= cap).await,
        "cache stays over its cap: {:?}",
        refl.cache_stats()
    );
    let evictions = scrape(&refl, "oasis_evictions_total").await?;
    assert!(evictions > 0.0, "the cap forced evictions");
    for c in &a_ids {
        assert!(refl.store().contains(&c.id)?, "pinned chunk {} was evicted", c.id);
    }
    let stats = refl.cache_stats();
    eprintln!("cap {cap}: {stats:?}, {evictions} evictions");
    assert!(stats.pinned_bytes >= a.stored_bytes);

    // The pinned layer is served without going upstream.
    let before = seed.served_bytes();
    fetch_fresh(&seed, "ep-a2", refl.addr, "pinned", Some("1")).await?;
    assert_eq!(seed.served_bytes(), before, "pinned layer came from the cache");

    // Unpinned, its chunks are ordinary cache entries again and get evicted by new traffic.
    assert!(refl.unpin_layer("pinned", "1").await?);
    assert!(!refl.unpin_layer("pinned", "1").await?);
    assert!(a_ids.iter().all(|c| !refl.is_pinned(&c.id)));
    fetch_fresh(&seed, "ep-b2", refl.addr, "other", Some("1")).await?;
    assert!(wait_until(Duration::from_secs(5), || refl.cache_stats().bytes <= cap).await);
    let mut a_left = 0;
    for c in &a_ids {
        a_left += refl.store().contains(&c.id)? as usize;
    }
    assert!(a_left < a_ids.len(), "unpinned chunks became evictable");
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fills_the_cache_in_the_background() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let a_src = seed.base().join("a");
    let b_src = seed.base().join("b");
    random_tree(
        &a_src,
        31,
        TreeSpec { small_files: 60, large_files: 1, large_size: 1 << 20, depth: 2 },
    )?;
    random_tree(
        &b_src,
        32,
        TreeSpec { small_files: 60, large_files: 3, large_size: 8 << 20, depth: 2 },
    )?;
    let a = seed.publish("app", "1", &a_src)?;
    let b = seed.publish("base", "1", &b_src)?;
    let refl = reflector(&seed, "refl", |_| {}).await?;
    refl.set_policy(BandwidthPolicy::from_toml_str(
        "[wan]\nrate = \"4MB/s\"\nburst = \"256KiB\"\n",
        "test",
    )?);
    // Prefetch the big layer (several seconds at 4 MB/s) while an endpoint fetches the small one.
    let t0 = Instant::now();
    let prefetch = {
        let r = &refl;
        async move { r.prefetch_layer("base", Some("1")).await }
    };
    let endpoint = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let r = fetch_fresh(&seed, "ep-a", refl.addr, "app", Some("1")).await;
        (r, t.elapsed(), t0.elapsed())
    };
    let (report, (fetched, took, done_at)) = tokio::join!(prefetch, endpoint);
    let report = report?;
    let (into, _) = fetched?;
    assert_eq!(snapshot(&into), snapshot(&a_src));
    eprintln!(
        "prefetch of {} B took {:.1} s; meanwhile a {} B foreground fetch took {:.2} s",
        b.stored_bytes,
        report.seconds,
        a.stored_bytes,
        took.as_secs_f64()
    );
    assert_eq!(report.chunks_fetched + report.chunks_cached, b.unique_chunks);
    assert_eq!(report.chunks_failed + report.chunks_missing, 0, "{report:?}");
    assert!(done_at.as_secs_f64() < report.seconds, "foreground did not wait for the prefetch");
    // Everything is cached now: a second prefetch and an endpoint fetch pull nothing upstream.
    let pulled = refl.stats.upstream_bytes.get();
    let again = refl.prefetch_layer("base", Some("1")).await?;
    assert_eq!((again.chunks_fetched, again.chunks_cached), (0, b.unique_chunks));
    fetch_fresh(&seed, "ep-b", refl.addr, "base", Some("1")).await?;
    assert_eq!(refl.stats.upstream_bytes.get(), pulled);
    refl.stop().await;
    Ok(())
}

fn write_policy(path: &Path, rate: &str) -> anyhow::Result<()> {
    // Write then rename, as a careful operator (or config management) would.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("[wan]\nrate = \"{rate}\"\nburst = \"256KiB\"\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Upstream bytes per second over the next `over`.
async fn measure(refl: &RunningReflector, over: Duration) -> f64 {
    let counter = refl.stats.upstream_bytes.clone();
    oasis_testkit::measure_rate(move || counter.get(), over).await
}

/// As [`measure`], with the largest upstream round trip seen meanwhile (sampled every 20 ms).
async fn measure_with_rtt(refl: &RunningReflector, over: Duration) -> (f64, Duration) {
    let mut rtt = Duration::ZERO;
    let rate = measure(refl, over);
    tokio::pin!(rate);
    loop {
        rtt = rtt.max(refl.upstream_rtt().unwrap_or_default());
        tokio::select! {
            r = &mut rate => return (r, rtt),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_changes_the_rate_mid_transfer() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    // 4 x 12 MiB files, half random: about 25 MB as stored.
    random_tree(
        &src,
        5,
        TreeSpec { small_files: 20, large_files: 4, large_size: 12 << 20, depth: 2 },
    )?;
    let published = seed.publish("big", "1", &src)?;
    let policy = seed.base().join("policy.toml");
    write_policy(&policy, "2MB/s")?;
    let refl = reflector(&seed, "refl", |c| {
        c.wan = WanLimit::PolicyFile(policy.clone());
        c.policy_poll = Duration::from_millis(200);
    })
    .await?;
    assert_eq!(refl.wan_rate_now(), Some(2_000_000));
    assert_eq!(scrape(&refl, "oasis_wan_rate_limit_bytes_per_second").await?, 2e6);

    let state = seed.enroll(Role::Endpoint, "ep")?;
    let into = seed.base().join("root");
    let o = opts(&state, refl.addr, "big", Some("1"), &into);
    let transfer = tokio::spawn(async move { fetch(&o).await });

    // Measure only once the start-up burst (256 KiB plus the in-flight allowance) has gone
    // upstream: when the transfer starts depends on the reflector's first entitlement
    // statement and the manifest, not on a fixed delay.
    let upstream = refl.stats.upstream_bytes.clone();
    assert!(
        wait_until(Duration::from_secs(10), || upstream.get() > 1_000_000).await,
        "the transfer did not start"
    );
    let (slow, slow_rtt) = measure_with_rtt(&refl, Duration::from_secs(2)).await;

    // A bad file is refused; the rate in force stays.
    std::fs::write(&policy, "[wan]\nrate = \"fast\"\n")?;
    let err = refl.reload_policy().unwrap_err().to_string();
    assert!(err.contains("wan.rate"), "error names the key: {err}");
    assert_eq!(refl.wan_rate_now(), Some(2_000_000));
    tokio::time::sleep(Duration::from_millis(400)).await; // the watcher sees it too
    assert!(refl.stats.policy_reload_errors.get() >= 1);
    assert_eq!(refl.wan_rate_now(), Some(2_000_000));

    // A good file is picked up by the watcher, mid-transfer.
    write_policy(&policy, "8MB/s")?;
    assert!(
        wait_until(Duration::from_secs(3), || refl.wan_rate_now() == Some(8_000_000)).await,
        "policy change not picked up"
    );
    assert_eq!(scrape(&refl, "oasis_wan_rate_limit_bytes_per_second").await?, 8e6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fast, fast_rtt) = measure_with_rtt(&refl, Duration::from_millis(1500)).await;
    eprintln!(
        "upstream rate at 2 MB/s: {slow:.0} B/s; after reload to 8 MB/s: {fast:.0} B/s \
         (upstream RTT up to {slow_rtt:?}, {fast_rtt:?})"
    );
    // Over a window of T seconds the limiter admits at most rate*T + burst (raised to the
    // largest chunk frame, ~263 KB) + the chunks asked for and not yet paid for (the
    // foreground unpaid window: 125 ms of the rate plus two upstream round trips, which grow
    // when the machine is loaded): over 2 s at 2 MB/s on an idle loopback, 2.26 MB/s. (The
    // 10 s / 5% criterion is the ignored benchmark `wan_rate_holds_over_ten_seconds`.)
    let in_flight = |rate: u64, rtt: Duration| {
        let w = window_limit(TrafficClass::Foreground, Some(rate), 1.0, rtt);
        w.unwrap_or_default() as f64
    };
    let bound = 2e6 + (263_000.0 + in_flight(2_000_000, slow_rtt)) / 2.0;
    assert!(slow <= bound, "2 MB/s cap exceeded: {slow:.0} B/s > {bound:.0}");
    assert!(slow >= 2e6 * 0.6, "2 MB/s cap badly under-used: {slow:.0} B/s");
    let bound = 8e6 + (263_000.0 + in_flight(8_000_000, fast_rtt)) / 1.5;
    assert!(fast <= bound, "8 MB/s cap exceeded: {fast:.0} B/s > {bound:.0}");
    assert!(fast >= 2.0 * slow, "rate did not rise: {slow:.0} -> {fast:.0} B/s");

    let r = transfer.await??;
    assert_eq!(r.bytes_network, published.stored_bytes, "the transfer survived the reloads");
    assert_eq!(snapshot(&into), snapshot(&src));
    refl.stop().await;
    Ok(())
}

/// Not run by default (12 s of a 50 MB transfer): how close the long-run rate stays to the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn wan_rate_holds_over_ten_seconds() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        9,
        TreeSpec { small_files: 50, large_files: 8, large_size: 12 << 20, depth: 2 },
    )?;
    seed.publish("big", "1", &src)?;
    let refl = reflector(&seed, "refl", |c| c.wan = WanLimit::Flat(2_000_000)).await?;
    let state = seed.enroll(Role::Endpoint, "ep")?;
    let into = seed.base().join("root");
    let o = opts(&state, refl.addr, "big", Some("1"), &into);
    let transfer = tokio::spawn(async move { fetch(&o).await });
    // The flat policy's default 4 MiB burst goes first; measure after it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = measure(&refl, Duration::from_secs(10)).await;
    eprintln!("10 s average at a 2 MB/s cap: {rate:.0} B/s ({:+.2}%)", (rate / 2e6 - 1.0) * 100.0);
    assert!((rate / 2e6 - 1.0).abs() <= 0.05, "{rate:.0} B/s");
    transfer.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_dying_mid_transfer_leaves_the_cache_serving() -> anyhow::Result<()> {
    let ts = TestSeed::start().await?;
    let a_src = ts.base().join("a");
    let b_src = ts.base().join("b");
    random_tree(
        &a_src,
        3,
        TreeSpec { small_files: 100, large_files: 1, large_size: 1 << 20, depth: 2 },
    )?;
    random_tree(
        &b_src,
        4,
        TreeSpec { small_files: 50, large_files: 3, large_size: 4 << 20, depth: 2 },
    )?;
    ts.publish("a", "1", &a_src)?;
    let b = ts.publish("b", "1", &b_src)?;
    let refl = reflector(&ts, "refl", |c| {
        c.wan = WanLimit::Flat(4_000_000);
        c.miss_timeout = Duration::from_secs(2);
        c.latest_timeout = Duration::from_millis(500);
    })
    .await?;
    // Warm the cache with layer a, asking for "latest" so that it is recorded as such.
    let (_, r) = fetch_fresh(&ts, "ep-warm", refl.addr, "a", None).await?;
    assert_eq!(r.version, "1");
    let upstream_a = refl.stats.upstream_bytes.get();

    // Layer b is slow (4 MB/s); kill the seed in the middle of it.
    let state_b = ts.enroll(Role::Endpoint, "ep-b")?;
    let into_b = ts.base().join("b-root");
    let o = opts(&state_b, refl.addr, "b", Some("1"), &into_b);
    let transfer = tokio::spawn(async move { fetch(&o).await });
    assert!(
        wait_until(Duration::from_secs(10), || refl.stats.upstream_bytes.get()
            > upstream_a + b.stored_bytes / 4)
        .await
    );
    let (seed, base, tmp) = ts.into_parts();
    // The dead seed's count is read at the end: it may still send after this point.
    let (data, addr, store, first_metrics) =
        (base.join("seed"), seed.addr, seed.store.clone(), seed.metrics.clone());
    seed.shutdown();
    drop(seed);
    let died = Instant::now();
    let err = transfer.await?.expect_err("the only source lost its upstream");
    eprintln!("endpoint gave up after {:.1} s: {err:#}", died.elapsed().as_secs_f64());
    assert!(wait_until(Duration::from_secs(5), || !refl.upstream_connected()).await);

    // Cached layers are still served, and fast; "latest" falls back to the cached latest.
    let t = Instant::now();
    let state = base.join("ep-down");
    oasis_core::pki::SeedAuthority::load(&data)?.enroll(
        Role::Endpoint,
        "ep-down",
        Some("test"),
        &state,
        false,
    )?;
    let into = base.join("down-root");
    let r = fetch(&opts(&state, refl.addr, "a", None, &into)).await?;
    assert_eq!(r.version, "1");
    assert_eq!(snapshot(&into), snapshot(&a_src));
    eprintln!("cached layer served with the seed down in {:.2} s", t.elapsed().as_secs_f64());
    assert!(t.elapsed() < Duration::from_secs(5));

    // The seed comes back on the same address: the reflector reconnects and finishes b,
    // fetching only what it did not get before.
    let identity = NodeIdentity::load(&data)?;
    let mut restarted = None;
    for _ in 0..100 {
        match RunningSeed::start_with(
            identity.clone(),
            store.clone(),
            Some(Arc::new(SeedSigner::load(&data, DEFAULT_LATEST_TTL)?)),
            addr,
            None,
            Default::default(),
            Default::default(),
        )
        .await
        {
            Ok(s) => {
                restarted = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let seed2 = restarted.expect("the seed restarts on its address");
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(15), || refl.upstream_connected()).await,
        "reflector did not reconnect"
    );
    eprintln!("reconnected {:.1} s after the seed came back", back.elapsed().as_secs_f64());
    let into = base.join("b-root-2");
    let r = fetch(&opts(&state_b, refl.addr, "b", Some("1"), &into)).await?;
    assert_eq!(snapshot(&into), snapshot(&b_src));
    assert_eq!(r.chunks_refetched, 0);
    let upstream_b = refl.stats.upstream_bytes.get() - upstream_a;
    let seed_total = first_metrics.served_bytes.get() + seed2.metrics.served_bytes.get();
    eprintln!(
        "layer b: {} B stored, {upstream_b} B pulled upstream across the seed's death",
        b.stored_bytes
    );
    assert!(upstream_b as f64 <= 1.05 * b.stored_bytes as f64, "{upstream_b} B pulled");
    assert!(seed_total >= refl.stats.upstream_bytes.get());
    seed2.shutdown();
    refl.stop().await;
    drop(tmp);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_on_reflector_disk_is_refetched_never_served() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        8,
        TreeSpec { small_files: 100, large_files: 1, large_size: 2 << 20, depth: 2 },
    )?;
    seed.publish("base", "1", &src)?;
    let refl = reflector(&seed, "refl", |_| {}).await?;
    fetch_fresh(&seed, "ep-warm", refl.addr, "base", Some("1")).await?;
    let pulled = refl.stats.upstream_bytes.get();

    // Rot three chunks on the reflector's disk.
    let chunks = manifest_of(&seed, "base", "1")?.manifest.unique_chunks();
    let mut damaged = 0u64;
    for c in chunks.iter().step_by(chunks.len() / 3).take(3) {
        let (path, offset, len) = refl.store().chunk_location(&c.id)?.expect("cached");
        let mut bytes = std::fs::read(&path)?;
        bytes[offset as usize + len as usize / 2] ^= 0x55;
        damaged += len as u64;
        std::fs::write(&path, bytes)?;
    }

    let (into, r) = fetch_fresh(&seed, "ep-after", refl.addr, "base", Some("1")).await?;
    assert_eq!(snapshot(&into), snapshot(&src));
    assert_eq!(r.chunks_refetched, 0, "the endpoint never received a corrupt chunk");
    assert_eq!(refl.store().corrupt_dropped(), 3, "each damaged chunk was detected and dropped");
    assert_eq!(
        refl.stats.upstream_bytes.get() - pulled,
        damaged,
        "exactly the damaged chunks were fetched again"
    );
    for c in &chunks {
        assert!(refl.store().get(&c.id)?.is_some(), "cache is whole again");
    }
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunks_from_upstream_are_refetched_never_served() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        13,
        TreeSpec { small_files: 60, large_files: 1, large_size: 1 << 20, depth: 2 },
    )?;
    let published = seed.publish("base", "1", &src)?;
    let identity = NodeIdentity::load(&seed.data())?;
    let ep = oasis_core::net::server_endpoint(
        "127.0.0.1:0".parse()?,
        &identity,
        &TransportOptions::default(),
    )?;
    let flaky_addr = ep.local_addr()?;
    let flaky = Arc::new(CorruptingSource::new(&seed, true));
    let served = tokio::spawn(oasis_core::net::serve(
        ep.clone(),
        oasis_core::net::Router::new(flaky),
        Arc::new(oasis_core::metrics::NodeMetrics::new()),
    ));
    let refl = reflector(&seed, "refl", |c| c.upstream = flaky_addr.to_string()).await?;
    let (into, r) = fetch_fresh(&seed, "ep", refl.addr, "base", Some("1")).await?;
    assert_eq!(snapshot(&into), snapshot(&src));
    assert_eq!(r.chunks_refetched, 0, "the endpoint never saw a corrupt chunk");
    let s = &refl.stats;
    // The layer's chunks and its manifest's body chunks.
    let n = published.unique_chunks + seed.body("base", "1")?.0;
    assert_eq!(s.upstream_corrupt.get(), n, "every first delivery was caught");
    assert_eq!(s.upstream_chunks.get(), 2 * n, "and every chunk asked for once more");
    assert_eq!(refl.cache_stats().bytes, published.stored_bytes + seed.body("base", "1")?.1);
    refl.stop().await;
    ep.close(0u32.into(), b"done");
    served.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_survives_restart_and_check_reaches_upstream() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        6,
        TreeSpec { small_files: 50, large_files: 1, large_size: 1 << 20, depth: 2 },
    )?;
    let p = seed.publish("base", "1", &src)?;

    // `check` against the live seed, through the same flags as `serve`.
    let state = seed.enroll(Role::Reflector, "refl")?;
    let args = ConfigArgs {
        state: Some(state.clone()),
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(seed.seed.addr.to_string()),
        cache_size: Some("1GiB".into()),
        ..Default::default()
    };
    let report = oasis_reflector::check::check(&args).await;
    assert!(report.ok, "{}", report.render());
    assert!(report.render().contains("seed"), "{}", report.render());
    assert!(report.render().contains("WAN sharing leader"), "{}", report.render());
    // An endpoint identity is refused, with the fix spelled out.
    let ep_state = seed.enroll(Role::Endpoint, "not-a-reflector")?;
    let report =
        oasis_reflector::check::check(&ConfigArgs { state: Some(ep_state), ..args.clone() }).await;
    assert!(!report.ok);
    assert!(report.render().contains("--role reflector"), "{}", report.render());
    // Nothing listening upstream.
    let report = oasis_reflector::check::check_with_timeout(
        &ConfigArgs { upstream: Some("127.0.0.1:9".into()), ..args.clone() },
        Duration::from_secs(1),
    )
    .await;
    assert!(!report.ok);
    assert!(report.render().contains("PROBLEM  upstream"), "{}", report.render());

    let refl = reflector(&seed, "refl", |_| {}).await?;
    fetch_fresh(&seed, "ep1", refl.addr, "base", Some("1")).await?;
    refl.stop().await;
    seed.seed.shutdown();

    // A new process on the same state serves the cached layer with the seed gone.
    let refl = reflector(&seed, "refl", |c| c.miss_timeout = Duration::from_secs(1)).await?;
    assert_eq!(refl.cache_stats().bytes, p.stored_bytes + seed.body("base", "1")?.1);
    let (into, _) = fetch_fresh(&seed, "ep2", refl.addr, "base", Some("1")).await?;
    assert_eq!(snapshot(&into), snapshot(&src));
    assert_eq!(refl.stats.upstream_bytes.get(), 0);
    assert_eq!(refl.stats.cache_misses.get(), 0);
    refl.stop().await;
    Ok(())
}

/// Not run by default: a cold fetch through the reflector against one straight from the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn cold_fetch_throughput() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        9,
        TreeSpec { small_files: 200, large_files: 4, large_size: 16 << 20, depth: 2 },
    )?;
    let p = seed.publish("big", "1", &src)?;
    let refl = reflector(&seed, "refl", |_| {}).await?;
    let t = Instant::now();
    let (_, direct) = fetch_fresh(&seed, "ep-direct", seed.seed.addr, "big", Some("1")).await?;
    let d = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (_, via) = fetch_fresh(&seed, "ep-via", refl.addr, "big", Some("1")).await?;
    let v = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (_, warm) = fetch_fresh(&seed, "ep-warm", refl.addr, "big", Some("1")).await?;
    let w = t.elapsed().as_secs_f64();
    eprintln!(
        "layer {} B stored: direct {d:.2} s (net {:.2} s, {:.1} MB/s), cold via reflector {v:.2} s \
         (net {:.2} s, {:.1} MB/s), warm via reflector {w:.2} s (net {:.2} s, {:.1} MB/s)",
        p.stored_bytes,
        direct.seconds_network,
        p.stored_bytes as f64 / direct.seconds_network / 1e6,
        via.seconds_network,
        p.stored_bytes as f64 / via.seconds_network / 1e6,
        warm.seconds_network,
        p.stored_bytes as f64 / warm.seconds_network / 1e6,
    );
    refl.stop().await;
    Ok(())
}

/// A layer assigned to the reflector's site is pinned and prefetched on its own, so the first
/// endpoint finds the cache warm and causes no WAN traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_layers_are_pinned_and_prefetched() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        21,
        TreeSpec { small_files: 40, large_files: 1, large_size: 1 << 20, depth: 2 },
    )?;
    let published = seed.publish("base", "1", &src)?;
    let (_, body) = seed.body("base", "1")?;
    // The harness enrolls every node in site "test".
    oasis_seed::catalog::Catalog::open(&seed.seed.store)?.assign("test", "base", "1", None)?;
    let refl =
        reflector(&seed, "refl", |c| c.assignments_poll = Duration::from_millis(200)).await?;
    let pinned = wait_until(Duration::from_secs(20), || {
        refl.pinned_layers().contains(&("base".to_string(), "1".to_string()))
            && refl.stats.upstream_bytes.get() >= published.stored_bytes + body
    })
    .await;
    assert!(pinned, "assignment not pinned and prefetched: {:?}", refl.pinned_layers());
    assert_eq!(refl.stats.upstream_bytes.get(), published.stored_bytes + body);
    let (into, _) = fetch_fresh(&seed, "ep", refl.addr, "base", Some("1")).await?;
    assert_eq!(snapshot(&into), snapshot(&src));
    assert_eq!(
        refl.stats.upstream_bytes.get(),
        published.stored_bytes + body,
        "the endpoint hit a warm cache"
    );

    // Unassigning removes the pin at the next sync.
    oasis_seed::catalog::Catalog::open(&seed.seed.store)?.unassign("test", "base", None)?;
    let unpinned = wait_until(Duration::from_secs(10), || refl.pinned_layers().is_empty()).await;
    assert!(unpinned, "still pinned: {:?}", refl.pinned_layers());
    Ok(())
}

/// "Measured over any 10 s window the WAN rate stays within 5% above the configured
/// rate (after the burst); this holds with fifty concurrent endpoints". Fifty real endpoints
/// fetch one layer at once through a cold reflector capped at 1 MB/s; the upstream byte
/// counter is sampled every 100 ms and every 10 s window that starts after the burst and ends
/// before the last byte is checked. 1 MB/s and a 12.6 MB layer keep the test to ~13 s: the
/// fetcher's unpaid request window (256 KiB at this rate, reflector/src/fetcher.rs) is then
/// 2.6% of 10 s of traffic, inside the 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_endpoints_hold_the_wan_rate_over_any_ten_seconds() -> anyhow::Result<()> {
    use rand::{RngCore, SeedableRng};
    const RATE: f64 = 1e6;
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    std::fs::create_dir_all(&src)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(50);
    for i in 0..12 {
        // Incompressible: stored bytes = plain bytes, so the transfer lasts ~12.6 s.
        let mut data = vec![0u8; 1 << 20];
        rng.fill_bytes(&mut data);
        std::fs::write(src.join(format!("blob{i:02}.bin")), data)?;
    }
    let published = seed.publish("base", "1", &src)?;
    let mut policy =
        BandwidthPolicy::from_toml_str("[wan]\nrate = \"1MB/s\"\nburst = \"64KiB\"\n", "test")?;
    // What the reflector raises the burst to (the largest chunk as sent).
    let largest = oasis_core::chunk::ChunkParams::default().max as u64
        + oasis_reflector::policy::CHUNK_FRAME_OVERHEAD;
    policy.ensure_burst_covers(largest);
    let burst = policy.burst_bytes() as f64;
    let refl = reflector(&seed, "refl", |_| {}).await?;
    refl.set_policy(policy);

    let mut states = Vec::new();
    for i in 0..50 {
        states.push(seed.enroll(Role::Endpoint, &format!("ep{i:02}"))?);
    }
    let counter = refl.stats.upstream_bytes.clone();
    let sampler =
        oasis_testkit::RateSampler::start(move || counter.get(), Duration::from_millis(100));
    let mut tasks = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let into = seed.base().join(format!("root-{i:02}"));
        let o = opts(state, refl.addr, "base", Some("1"), &into);
        tasks.push(tokio::spawn(async move { (into, fetch(&o).await) }));
    }
    let mut roots = Vec::new();
    for t in tasks {
        let (into, r) = t.await?;
        assert_eq!(r?.bytes_network, published.stored_bytes);
        roots.push(into);
    }
    let samples = sampler.finish().await?;

    let total = refl.stats.upstream_bytes.get();
    assert!(total as f64 <= 1.05 * published.stored_bytes as f64, "{total} B pulled upstream");
    let first = samples.first_move().expect("bytes moved");
    let last = samples.last_move().expect("final sample");
    let windows = samples.windows(10.0, first + burst / RATE, last);
    let peak = windows.iter().copied().fold(0.0, f64::max);
    let low = windows.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = windows.iter().sum::<f64>() / windows.len().max(1) as f64;
    eprintln!(
        "50 endpoints, {} B stored, transfer {:.1} s: {} windows of 10 s after the {burst} B \
         burst, rate {:+.2}% .. {:+.2}% of the 1 MB/s cap",
        published.stored_bytes,
        last - first,
        windows.len(),
        (low / RATE - 1.0) * 100.0,
        (peak / RATE - 1.0) * 100.0
    );
    assert!(windows.len() >= 5, "the transfer was too short to measure 10 s windows");
    assert!(peak <= 1.05 * RATE, "a 10 s window ran at {peak:.0} B/s, over 1.05 x the cap");
    // The cap was what held the transfer back (else the check above proves nothing).
    assert!(mean >= 0.8 * RATE, "the WAN ran far below the cap: {mean:.0} B/s on average");
    let want = snapshot(&src);
    for r in &roots {
        assert_eq!(snapshot(r), want, "tree at {} differs", r.display());
    }
    refl.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lossy_reordering_jittery_wan_delivers_byte_identical_and_is_counted(
) -> anyhow::Result<()> {
    use oasis_wanem::{EmulatorThread, WanSpec};
    let seed = TestSeed::start().await?;
    let src = seed.base().join("wan-src");
    random_tree(
        &src,
        31,
        TreeSpec { small_files: 300, large_files: 3, large_size: 2 << 20, depth: 6 },
    )?;
    let published = seed.publish("wan", "1", &src)?;
    // 40 ms RTT, 2% random loss plus loss bursts, jitter, reordering, a 50 Mbit/s bottleneck.
    let spec: WanSpec =
        "40ms,2%,50Mbit,jitter=5ms,reorder=2%,ge=p:0.002/r:0.3/bad:30%,seed=11".parse()?;
    let wan = EmulatorThread::start("127.0.0.1:0".parse()?, seed.seed.addr, spec)?;
    let wan_addr = wan.local_addr().to_string();
    let refl = reflector(&seed, "r-wan", |c| c.upstream = wan_addr).await?;
    let (into, report) = fetch_fresh(&seed, "ep-wan", refl.addr, "wan", Some("1")).await?;
    assert_eq!(snapshot(&into), snapshot(&src), "the tree crossed the WAN byte-identical");
    assert_eq!(report.bytes_network, published.stored_bytes);

    let c = wan.counters();
    assert!(
        c.down.lost_packets > 10 && c.down.reordered_packets > 10,
        "the link lost and reordered packets on the way: {c:?}"
    );
    // What the reflector counts as WAN bytes is what the layer and its manifest body are
    // stored in; the emulator carried exactly that in chunk payload, plus QUIC's packet and
    // frame headers, the protocol's framing, the manifest root, the handshake and whatever was
    // sent again after a loss.
    let counted = refl.stats.upstream_bytes.get();
    let stored = published.stored_bytes + seed.body("wan", "1")?.1;
    assert_eq!(counted, stored, "the reflector counts each stored byte once");
    let carried = c.down.delivered_bytes;
    let root = refl.stats.upstream_manifest_bytes.get();
    println!(
        "emulated WAN: {} packets lost, {} reordered; carried {carried} B downstream for {counted} B \
         of chunks and a {root} B root ({:.3}x)",
        c.down.lost_packets,
        c.down.reordered_packets,
        carried as f64 / (counted + root) as f64
    );
    assert!(
        carried >= counted + root && carried <= (counted + root) * 110 / 100 + (64 << 10),
        "the emulator carried {carried} B downstream for {counted} B of chunks and a {root} B root"
    );
    refl.stop().await;
    Ok(())
}
