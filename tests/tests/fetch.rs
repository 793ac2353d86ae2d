//! A real seed and endpoints over QUIC on 127.0.0.1: trees arrive byte-identical, and a new
//! version moves only its changed chunks.

use oasis_core::pki::Role;
use oasis_endpoint::{fetch, FetchOptions};
use oasis_testkit::{copy_tree, mutate_tree, random_tree, snapshot, TestSeed, TreeSpec};
use std::path::Path;

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
    Ok(())
}
