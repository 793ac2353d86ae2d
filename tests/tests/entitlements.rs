//! Entitlements over real QUIC on 127.0.0.1: an endpoint fetches the layers assigned to its
//! site or to its device and nothing else, from the seed and from its site's reflector; what it
//! may not fetch is refused with the same answer whether it exists or not; an assignment takes
//! effect at the reflector within seconds, and the reflector keeps enforcing with the seed gone
//! and after a restart.

use oasis_core::manifest::LayerKind;
use oasis_core::net::{self, accept, ChunkReply, Client, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::ChunkId;
use oasis_endpoint::{fetch, FetchOptions};
use oasis_testkit::{random_tree, snapshot, wait_until, TestSeed, TreeSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const TREE: TreeSpec =
    TreeSpec { small_files: 40, large_files: 1, large_size: 600 << 10, depth: 3 };

fn opts(state: &Path, source: SocketAddr, name: &str, into: &Path) -> FetchOptions {
    FetchOptions::new(state, vec![source], name, None, into)
}

async fn client(state: &Path, addr: SocketAddr) -> Client {
    let id = NodeIdentity::load(state).unwrap();
    let ep = net::client_endpoint(&id, &TransportOptions::default()).unwrap();
    Client::connect(&ep, addr, accept::CONTENT).await.unwrap()
}

/// What a `GetChunks` of `ids` gets: the chunks served, or the error's words.
async fn read_chunks(state: &Path, addr: SocketAddr, ids: Vec<ChunkId>) -> Result<usize, String> {
    let c = client(state, addr).await;
    let mut replies = c.chunks(ids).await.map_err(|e| e.to_string())?;
    let mut n = 0;
    while let Some(r) = replies.next().await.map_err(|e| format!("{e:#}"))? {
        n += matches!(r, ChunkReply::Chunk(_)) as usize;
    }
    Ok(n)
}

/// The answer with the layer's or chunk's own name taken out, to compare two refusals.
fn words(r: Result<usize, String>, name: &str) -> String {
    format!("{r:?}").replace(name, "NAME")
}

/// A chunk of layer `name` that no other layer of the seed holds.
fn file_chunk(seed: &TestSeed, name: &str) -> ChunkId {
    let key = seed.auth.trust().manifest_key();
    let chunks = |n: &str| {
        let m = seed.seed.store.open_manifest(n, Some("1"), key).unwrap().unwrap();
        m.manifest.unique_chunks().into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    let others: std::collections::HashSet<ChunkId> = ["base", "finance", "cad", "tools"]
        .into_iter()
        .filter(|n| *n != name && seed.seed.store.has_manifest(n, "1").unwrap())
        .flat_map(chunks)
        .collect();
    chunks(name).into_iter().find(|id| !others.contains(id)).expect("a chunk of its own")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_a_cannot_fetch_a_layer_assigned_only_to_site_b() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let base = seed.base().to_path_buf();
    for (i, name) in ["base", "finance", "cad"].into_iter().enumerate() {
        let src = base.join(format!("src-{name}"));
        random_tree(&src, i as u64 + 1, TREE)?;
        let kind = if name == "cad" { LayerKind::App } else { LayerKind::Base };
        seed.publish_as(name, "1", kind, &src)?;
    }
    // base for both sites, finance for site b only; cad for one device of site a (its plan).
    for site in ["a", "b"] {
        seed.make_available(site, "base", "1")?;
    }
    seed.make_available("b", "finance", "1")?;
    let ep_a = seed.enroll_in_site(Role::Endpoint, "ep-a", "a")?;
    let ep_cad = seed.enroll_in_site(Role::Endpoint, "ep-cad", "a")?;
    let ep_b = seed.enroll_in_site(Role::Endpoint, "ep-b", "b")?;
    seed.enroll_in_site(Role::Reflector, "refl-a", "a")?;
    seed.enroll_in_site(Role::Reflector, "refl-b", "b")?;
    let refl_a = seed.reflector("refl-a", |_| {}).await?;
    let refl_b = seed.reflector("refl-b", |_| {}).await?;
    client(&ep_cad, seed.seed.addr).await.plan().await?; // listed as pending
    oasis_seed::provision::provision(
        &seed.seed.store,
        seed.auth.trust(),
        "ep-cad",
        "base@1",
        &["cad@1".to_string()],
    )?;

    let at = |state: &Path, source: SocketAddr, name: &str| {
        let into = base.join(format!("into-{}-{name}-{}", source.port(), rand_suffix()));
        let o = opts(state, source, name, &into);
        async move { fetch(&o).await.map(|_| into).map_err(|e| format!("{e:#}")) }
    };
    // What each may fetch, from the seed and from its own site's reflector.
    for source in [seed.seed.addr, refl_a.addr] {
        let into = at(&ep_a, source, "base").await.expect("base is site a's");
        assert_eq!(snapshot(&into), snapshot(&base.join("src-base")));
        let e = at(&ep_a, source, "finance").await.expect_err("finance is site b's alone");
        assert!(e.contains("Forbidden") && e.contains("not assigned"), "{e}");
        let e2 = at(&ep_a, source, "no-such-layer").await.expect_err("unknown");
        assert_eq!(
            e.replace("finance", "NAME"),
            e2.replace("no-such-layer", "NAME"),
            "a refusal tells an existing layer from a missing one"
        );
        let e = at(&ep_a, source, "cad").await.expect_err("cad is ep-cad's, not ep-a's");
        assert!(e.contains("Forbidden"), "{e}");
    }
    let into = at(&ep_b, refl_b.addr, "finance").await.expect("finance is site b's");
    assert_eq!(snapshot(&into), snapshot(&base.join("src-finance")));
    // The device's own layer, from its reflector (once the statement there says so), and from
    // the seed.
    let t = Instant::now();
    loop {
        match at(&ep_cad, refl_a.addr, "cad").await {
            Ok(_) => break,
            Err(e) if t.elapsed() < Duration::from_secs(15) => {
                assert!(e.contains("Forbidden"), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the plan did not reach the reflector: {e}"),
        }
    }
    eprintln!("a new plan in effect at the reflector after {:.2} s", t.elapsed().as_secs_f64());
    at(&ep_cad, seed.seed.addr, "cad").await.expect("cad is in ep-cad's plan");
    // Another site's endpoint is not served by this site's reflector at all.
    let e = at(&ep_b, refl_a.addr, "base").await.expect_err("site b's endpoint at site a");
    assert!(e.contains("Forbidden"), "{e}");

    // Chunks, asked directly: a chunk of finance and a chunk stored nowhere get one answer.
    let theirs = file_chunk(&seed, "finance");
    let nowhere = ChunkId::of(b"a chunk of no layer");
    let ours = file_chunk(&seed, "base");
    for source in [seed.seed.addr, refl_a.addr] {
        let on_theirs = read_chunks(&ep_a, source, vec![theirs]).await;
        let on_nowhere = read_chunks(&ep_a, source, vec![nowhere]).await;
        assert_eq!(
            words(on_theirs.clone(), &theirs.to_string()),
            words(on_nowhere, &nowhere.to_string()),
            "the answer tells a stored chunk from a missing one"
        );
        let e = on_theirs.unwrap_err();
        assert!(e.contains("Forbidden") && e.contains("not readable"), "{e}");
        assert_eq!(read_chunks(&ep_a, source, vec![ours]).await, Ok(1));
        let c = client(&ep_a, source).await;
        assert_eq!(c.have(&[theirs, nowhere, ours]).await?, [false, false, true]);
        let listed: Vec<String> = c.layers().await?.into_iter().map(|l| l.name).collect();
        assert_eq!(listed, ["base"], "only what ep-a may fetch is listed");
    }
    // Site a's reflector holds cad (ep-cad fetched it through it): still not ep-a's to read,
    // and the answer is the one a chunk stored nowhere gets.
    let cads = file_chunk(&seed, "cad");
    assert!(refl_a.store().contains(&cads)?, "the reflector holds ep-cad's layer");
    assert_eq!(
        words(read_chunks(&ep_a, refl_a.addr, vec![cads]).await, &cads.to_string()),
        words(read_chunks(&ep_a, refl_a.addr, vec![nowhere]).await, &nowhere.to_string()),
    );
    assert_eq!(read_chunks(&ep_cad, refl_a.addr, vec![cads]).await, Ok(1));
    refl_a.stop().await;
    refl_b.stop().await;
    Ok(())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_reaches_the_reflector_in_seconds_and_holds_offline() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let base = seed.base().to_path_buf();
    for (i, name) in ["base", "tools"].into_iter().enumerate() {
        let src = base.join(format!("src-{name}"));
        random_tree(&src, i as u64 + 10, TREE)?;
        seed.publish(name, "1", &src)?;
    }
    seed.make_available("a", "base", "1")?;
    let ep = seed.enroll_in_site(Role::Endpoint, "ep-a", "a")?;
    seed.enroll_in_site(Role::Reflector, "refl-a", "a")?;
    let refl = seed.reflector("refl-a", |_| {}).await?;
    let (state, upstream) = (base.join("node-refl-a"), seed.seed.addr.to_string());
    let fetch_at = |source: SocketAddr, name: &'static str, n: u32| {
        let o = opts(&ep, source, name, &base.join(format!("into-{name}-{n}")));
        async move { fetch(&o).await.map_err(|e| format!("{e:#}")) }
    };
    fetch_at(refl.addr, "base", 0).await.expect("base is site a's");
    let e = fetch_at(refl.addr, "tools", 0).await.expect_err("tools is not assigned yet");
    assert!(e.contains("Forbidden"), "{e}");

    // Assigned: the reflector lets it through within seconds (its poll of the seed).
    oasis_seed::catalog::Catalog::open(&seed.seed.store)?.make_available("a", "tools", "1")?;
    let assigned = Instant::now();
    let mut n = 1;
    while fetch_at(refl.addr, "tools", n).await.is_err() {
        assert!(assigned.elapsed() < Duration::from_secs(10), "not in effect after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
    eprintln!(
        "assignment in effect at the reflector after {:.2} s",
        assigned.elapsed().as_secs_f64()
    );
    // Unassigned: refused again, cached or not.
    oasis_seed::catalog::Catalog::open(&seed.seed.store)?.unassign("a", "tools", None)?;
    let unassigned = Instant::now();
    while fetch_at(refl.addr, "tools", n).await.is_ok() {
        assert!(unassigned.elapsed() < Duration::from_secs(10), "still served after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
    eprintln!(
        "unassignment in effect at the reflector after {:.2} s",
        unassigned.elapsed().as_secs_f64()
    );

    // The seed goes; the reflector serves what is cached and assigned, refuses the rest, and
    // does so again after a restart with no seed to ask.
    let (running, _base, _tmp) = seed.into_parts();
    running.shutdown();
    drop(running);
    assert!(wait_until(Duration::from_secs(5), || !refl.upstream_connected()).await);
    refl.stop().await;
    let mut cfg = oasis_reflector::ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, upstream);
    cfg.metrics = None;
    let refl = oasis_reflector::RunningReflector::start(cfg).await?;
    fetch_at(refl.addr, "base", 100).await.expect("cached and assigned: served offline");
    let e = fetch_at(refl.addr, "tools", 100).await.expect_err("cached but unassigned");
    assert!(e.contains("Forbidden"), "{e}");
    refl.stop().await;
    Ok(())
}
