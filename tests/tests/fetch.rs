//! A real seed and endpoints over QUIC on 127.0.0.1: trees arrive byte-identical, a new
//! version moves only its changed chunks, and "latest" is what the seed signed: a replayed
//! older statement is refused, a reflector's kept copy past its lifetime is reported stale.

use oasis_core::compress::StoredChunk;
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, ContentSource, LatestAnswer, SourceError, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role, SeedAuthority};
use oasis_core::wire::LayerRef;
use oasis_core::ChunkId;
use oasis_endpoint::{fetch, FetchOptions};
use oasis_seed::RunningSeed;
use oasis_testkit::{copy_tree, mutate_tree, random_tree, snapshot, TestSeed, TreeSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn opts(state: &Path, seed: &TestSeed, version: &str, into: &Path) -> FetchOptions {
    FetchOptions {
        state_dir: state.to_path_buf(),
        sources: vec![seed.seed.addr],
        name: "base".into(),
        version: Some(version.into()),
        into: into.to_path_buf(),
        streams: 8,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_trees_arrive_byte_identical() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    random_tree(
        &src,
        7,
        TreeSpec { small_files: 2500, large_files: 2, large_size: 3 << 20, depth: 40 },
    )?;
    let published = seed.publish("base", "1", &src)?;
    assert!(published.files > 2500);

    // Two endpoints fetch at once, each into an empty directory with an empty cache.
    let mut tasks = Vec::new();
    for name in ["ep-a", "ep-b"] {
        let state = seed.enroll(Role::Endpoint, name)?;
        let into = seed.base().join(format!("{name}-root"));
        let o = opts(&state, &seed, "1", &into);
        tasks.push(tokio::spawn(async move { (into, fetch(&o).await) }));
    }
    let want = snapshot(&src);
    let (mut network, mut body) = (0, 0);
    for t in tasks {
        let (into, r) = t.await?;
        let r = r?;
        assert_eq!(r.files, published.files);
        assert_eq!(r.bytes, published.bytes);
        assert_eq!(r.bytes_reused, 0, "nothing to reuse in an empty dir with an empty cache");
        network += r.bytes_network;
        body += r.manifest_body_bytes;
        assert_eq!(snapshot(&into), want, "tree at {} differs from the source", into.display());
    }
    // Each endpoint pulled each unique chunk exactly once, as stored, and the manifest's body
    // chunks beside them.
    assert_eq!(network, 2 * published.stored_bytes);
    assert_eq!(seed.served_bytes(), network + body);
    assert_eq!(seed.scrape("oasis_served_bytes_total").await? as u64, network + body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_two_moves_only_changed_chunks() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let v1 = seed.base().join("v1");
    random_tree(
        &v1,
        11,
        TreeSpec { small_files: 300, large_files: 3, large_size: 4 << 20, depth: 5 },
    )?;
    let p1 = seed.publish("base", "1", &v1)?;
    let v2 = seed.base().join("v2");
    copy_tree(&v1, &v2)?;
    mutate_tree(&v2)?;
    let p2 = seed.publish("base", "2", &v2)?;
    assert!(p2.new_bytes > 0 && p2.new_bytes < p1.stored_bytes / 10, "v2 adds little: {p2:?}");

    let state = seed.enroll(Role::Endpoint, "ep")?;
    let root = seed.base().join("root");
    let r1 = fetch(&opts(&state, &seed, "1", &root)).await?;
    assert_eq!(r1.bytes_network, p1.stored_bytes);
    let before = seed.served_bytes();
    let r2 = fetch(&opts(&state, &seed, "2", &root)).await?;
    assert_eq!(snapshot(&root), snapshot(&v2));
    // Only chunks new in v2 crossed the network; everything else came from the cache.
    assert_eq!(r2.bytes_network, p2.new_bytes);
    assert_eq!(seed.served_bytes() - before, p2.new_bytes + r2.manifest_body_bytes);
    assert!(r2.bytes_reused > 0);

    // A second endpoint with an empty cache but v1 already on disk reuses those files.
    let state2 = seed.enroll(Role::Endpoint, "ep2")?;
    let root2 = seed.base().join("root2");
    copy_tree(&v1, &root2)?;
    let r3 = fetch(&opts(&state2, &seed, "2", &root2)).await?;
    assert_eq!(snapshot(&root2), snapshot(&v2));
    assert!(
        r3.bytes_network <= p2.new_bytes,
        "with v1 on disk only v2's new chunks should be fetched: {} > {}",
        r3.bytes_network,
        p2.new_bytes
    );
    assert!(r3.bytes_reused >= p1.unique_bytes / 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_version_is_fetched_when_none_is_named() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let v1 = seed.base().join("v1");
    random_tree(&v1, 3, TreeSpec { small_files: 20, large_files: 0, large_size: 0, depth: 2 })?;
    seed.publish("base", "1", &v1)?;
    let v2 = seed.base().join("v2");
    copy_tree(&v1, &v2)?;
    mutate_tree(&v2)?;
    seed.publish("base", "2", &v2)?;
    let state = seed.enroll(Role::Endpoint, "ep")?;
    let root = seed.base().join("root");
    let mut o = opts(&state, &seed, "x", &root);
    o.version = None;
    let r = fetch(&o).await?;
    assert_eq!(r.version, "2");
    assert_eq!(snapshot(&root), snapshot(&v2));
    let latest = r.latest.expect("a fetch of latest reports its statement");
    assert_eq!(latest.version, "2");
    assert!(!latest.stale && latest.note.is_empty(), "straight from the seed: {latest:?}");
    assert_eq!(latest.expires - latest.issued, 3600, "the seed's default lifetime");
    assert!(state.join("latest/base").exists(), "the newest statement seen is kept");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_through_a_warm_reflector_moves_only_its_statement_upstream(
) -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let v1 = seed.base().join("v1");
    random_tree(&v1, 5, TreeSpec { small_files: 20, large_files: 0, large_size: 0, depth: 2 })?;
    seed.publish("base", "1", &v1)?;
    let refl = seed.reflector("refl", |_| {}).await?;
    let via = |state: &Path, into: &Path| {
        let mut o = opts(state, &seed, "x", into);
        (o.version, o.sources) = (None, vec![refl.addr]);
        o
    };
    let roots = || refl.stats.upstream_manifest_bytes.get();
    let first = seed.enroll(Role::Endpoint, "first")?;
    assert_eq!(fetch(&via(&first, &seed.base().join("first"))).await?.version, "1");
    let (root_bytes, chunk_bytes) = (roots(), refl.stats.upstream_bytes.get());
    assert!(root_bytes > 0, "the cold reflector fetched the root");

    // The endpoint asks for the root of the latest beside the statement; the reflector holds
    // a version of the layer, so it answers from the statement and its cache.
    let second = seed.enroll(Role::Endpoint, "second")?;
    let into = seed.base().join("second");
    assert_eq!(fetch(&via(&second, &into)).await?.version, "1");
    assert_eq!(snapshot(&into), snapshot(&v1));
    assert_eq!((roots(), refl.stats.upstream_bytes.get()), (root_bytes, chunk_bytes));

    // A new version: the statement names it, and its root comes from upstream.
    let v2 = seed.base().join("v2");
    copy_tree(&v1, &v2)?;
    mutate_tree(&v2)?;
    seed.publish("base", "2", &v2)?;
    let into = seed.base().join("second-v2");
    assert_eq!(fetch(&via(&second, &into)).await?.version, "2");
    assert_eq!(snapshot(&into), snapshot(&v2));
    assert!(roots() > root_bytes, "v2's root came from upstream");
    Ok(())
}

/// Serves the seed's store, but answers `GetLatest` with a statement recorded earlier (or with
/// none), and calls version 1 its latest: what a cache that replays old answers, or someone
/// holding a reflector's key, could do.
struct Replay {
    inner: oasis_seed::source::SeedSource,
    statement: Option<bytes::Bytes>,
}

impl ContentSource for Replay {
    async fn manifest(
        &self,
        n: &str,
        v: Option<&str>,
    ) -> Result<Option<bytes::Bytes>, SourceError> {
        self.inner.manifest(n, v.or(Some("1"))).await
    }
    async fn latest(&self, _: &str) -> Result<Option<LatestAnswer>, SourceError> {
        match &self.statement {
            Some(s) => Ok(Some(LatestAnswer { statement: s.clone(), note: String::new() })),
            None => Err(SourceError::Unavailable("no statement kept".into())),
        }
    }
    async fn chunk(&self, id: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        self.inner.chunk(id).await
    }
    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        self.inner.have(ids).await
    }
    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        self.inner.layers().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_latest_is_refused_once_a_newer_one_was_seen() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let v1 = seed.base().join("v1");
    random_tree(&v1, 5, TreeSpec { small_files: 10, large_files: 0, large_size: 0, depth: 2 })?;
    seed.publish("base", "1", &v1)?;
    let signer = seed.signer();
    let old = signer.statement(&seed.seed.store, "base")?.expect("base is published");
    let v2 = seed.base().join("v2");
    copy_tree(&v1, &v2)?;
    mutate_tree(&v2)?;
    seed.publish("base", "2", &v2)?;

    let rogue = seed.enroll(Role::Reflector, "rogue")?;
    let id = NodeIdentity::load(&rogue)?;
    let serve = |statement: Option<bytes::Bytes>| -> anyhow::Result<std::net::SocketAddr> {
        let ep = net::server_endpoint("127.0.0.1:0".parse()?, &id, &TransportOptions::default())?;
        let addr = ep.local_addr()?;
        let inner = oasis_seed::source::SeedSource {
            store: seed.seed.store.clone(),
            signer: None,
            authority: None,
            fleet: Default::default(),
        };
        let router = net::Router::new(Arc::new(Replay { inner, statement }));
        tokio::spawn(net::serve(ep, router, Arc::new(NodeMetrics::new())));
        Ok(addr)
    };
    let replay_addr = serve(Some(old.into()))?;
    let unsigned_addr = serve(None)?;

    let latest_from = |state: &Path, from, into: &Path| {
        let mut o = opts(state, &seed, "x", into);
        (o.version, o.sources) = (None, vec![from]);
        o
    };
    // An endpoint that never saw version 2 cannot tell: it takes the replayed statement.
    let naive = seed.enroll(Role::Endpoint, "naive")?;
    let r = fetch(&latest_from(&naive, replay_addr, &seed.base().join("naive-root"))).await?;
    assert_eq!(r.version, "1");

    // One that saw version 2 as latest refuses it, and writes nothing.
    let state = seed.enroll(Role::Endpoint, "ep")?;
    let root = seed.base().join("root");
    let r = fetch(&latest_from(&state, seed.seed.addr, &root)).await?;
    assert_eq!(r.version, "2");
    let before = snapshot(&root);
    let err = fetch(&latest_from(&state, replay_addr, &root)).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("base@1 is the latest, but base@2 was seen as latest before")
            && msg.contains("a replayed, rolled-back or stale answer"),
        "{msg}"
    );
    assert_eq!(snapshot(&root), before, "nothing was written");

    // A source with no statement at all: its own latest is taken, unconfirmed, unless it is
    // lower than one seen.
    let r = fetch(&latest_from(&naive, unsigned_addr, &seed.base().join("naive-2"))).await?;
    let l = r.latest.expect("latest reported");
    assert!(!l.signed && l.version == "1", "{l:?}");
    assert!(l.warning("base").unwrap().contains("unconfirmed"), "{l:?}");
    let err = fetch(&latest_from(&state, unsigned_addr, &root)).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("without a signed statement") && msg.contains("base@2 was seen"), "{msg}");
    assert_eq!(snapshot(&root), before, "nothing was written");

    // Named explicitly, version 1 is still there for whoever asks for it.
    let mut o = opts(&state, &seed, "1", &seed.base().join("v1-root"));
    o.sources = vec![replay_addr];
    assert_eq!(fetch(&o).await?.version, "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_cut_off_from_the_seed_serves_its_kept_latest_reported_stale(
) -> anyhow::Result<()> {
    // A seed whose statements live one second.
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("seed");
    let auth = SeedAuthority::init(&data)?;
    let running = RunningSeed::start_with_limits(
        &data,
        "127.0.0.1:0".parse()?,
        None,
        Default::default(),
        Duration::from_secs(1),
        None,
    )
    .await?;
    let seed = TestSeed::from_parts(running, auth, tmp.path());
    let v1 = seed.base().join("v1");
    random_tree(&v1, 9, TreeSpec { small_files: 10, large_files: 0, large_size: 0, depth: 2 })?;
    seed.publish("base", "1", &v1)?;
    let refl = seed.reflector("refl", |c| c.latest_timeout = Duration::from_millis(300)).await?;

    let latest_via = |state: &Path, into: &Path| {
        let mut o = opts(state, &seed, "x", into);
        (o.version, o.sources) = (None, vec![refl.addr]);
        o
    };
    let first = seed.enroll(Role::Endpoint, "first")?;
    let r = fetch(&latest_via(&first, &seed.base().join("first-root"))).await?;
    let l = r.latest.expect("latest reported");
    assert_eq!((l.version.as_str(), l.note.as_str()), ("1", ""), "from the seed, through: {l:?}");
    assert_eq!(refl.stats.latest_served_cached.get(), 0);

    // The seed goes away and the statement the reflector kept expires.
    seed.seed.shutdown();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let late = seed.enroll(Role::Endpoint, "late")?;
    let root = seed.base().join("late-root");
    let r = fetch(&latest_via(&late, &root)).await?;
    assert_eq!(snapshot(&root), snapshot(&v1), "the reflector serves what it has");
    let l = r.latest.expect("latest reported");
    assert!(l.stale && l.stale_for_s >= 1, "{l:?}");
    assert!(l.note.contains("reflector refl answers with its kept copy"), "{l:?}");
    assert_eq!(refl.stats.latest_served_cached.get(), 1);
    let w = l.warning("base").expect("a stale statement is worth a warning");
    assert!(w.contains("the latest of base (1) is stale"), "{w}");
    Ok(())
}
