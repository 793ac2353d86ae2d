//! Layers of real size and shape: a manifest far larger than one frame passes a reflector and
//! arrives byte-identical, a second endpoint costs the WAN nothing, and a small change to a
//! large layer moves a small part of its manifest.

use oasis_core::manifest::BODY_CHUNKING;
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::wire::MAX_FRAME_BYTES;
use oasis_endpoint::{fetch, FetchOptions, FetchReport};
use oasis_testkit::{copy_tree, snapshot, wide_tree, TestSeed};
use std::net::SocketAddr;
use std::path::Path;

/// More entries than the 4 MiB frame that once had to hold a whole manifest could list.
const ENTRIES: usize = 60_000;

/// Entries of the delta test's layer: `ENTRIES`, or `OASIS_DELTA_ENTRIES` for a measurement at
/// another size (`OASIS_DELTA_ENTRIES=200000 cargo test --release -p oasis-tests --test
/// large_layers a_small_change -- --nocapture`).
fn delta_entries() -> usize {
    match std::env::var("OASIS_DELTA_ENTRIES") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("OASIS_DELTA_ENTRIES={v:?} is not a number")),
        Err(_) => ENTRIES,
    }
}

fn opts(state: &Path, from: SocketAddr, version: &str, into: &Path) -> FetchOptions {
    FetchOptions {
        state_dir: state.to_path_buf(),
        sources: vec![from],
        name: "usr".into(),
        version: Some(version.into()),
        into: into.to_path_buf(),
        streams: 8,
        progress: false,
    }
}

async fn fetch_as(
    seed: &TestSeed,
    endpoint: &str,
    from: SocketAddr,
    version: &str,
) -> anyhow::Result<(std::path::PathBuf, FetchReport)> {
    let state = seed.base().join(format!("node-{endpoint}"));
    if !state.exists() {
        seed.enroll(Role::Endpoint, endpoint)?;
    }
    let into = seed.base().join(format!("{endpoint}-root"));
    let r = fetch(&opts(&state, from, version, &into)).await?;
    Ok((into, r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_larger_than_a_frame_passes_a_reflector_byte_identical() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    wide_tree(&src, ENTRIES)?;
    let published = seed.publish("usr", "1", &src)?;
    let key = *NodeIdentity::load(&seed.data())?.trust().manifest_key();
    let sm = seed.seed.store.open_manifest("usr", Some("1"), &key)?.expect("published");
    assert!(sm.manifest.entries.len() >= ENTRIES, "{} entries", sm.manifest.entries.len());
    assert!(
        sm.root.body_len > MAX_FRAME_BYTES as u64,
        "the body ({} bytes) must exceed one frame for this test to mean anything",
        sm.root.body_len
    );
    assert!(sm.to_bytes().len() < MAX_FRAME_BYTES / 8, "root of {} bytes", sm.to_bytes().len());

    let refl = seed.reflector("refl", |_| {}).await?;
    let want = snapshot(&src);
    let (into, first) = fetch_as(&seed, "ep-a", refl.addr, "1").await?;
    assert_eq!(first.files, published.files);
    assert!(snapshot(&into) == want, "the tree fetched through the reflector differs");
    assert!(first.manifest_bytes > 0);

    // A second endpoint, empty cache and empty directory, through the same reflector: the
    // manifest's root and body and every chunk come from the reflector's cache.
    let wan_before = seed.served_bytes();
    let (into_b, second) = fetch_as(&seed, "ep-b", refl.addr, "1").await?;
    assert!(snapshot(&into_b) == want, "the second endpoint's tree differs");
    assert_eq!(second.manifest_bytes, first.manifest_bytes);
    assert_eq!(seed.served_bytes(), wan_before, "the second endpoint cost WAN bytes");
    refl.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_change_to_a_large_layer_moves_a_small_part_of_its_manifest() -> anyhow::Result<()>
{
    let seed = TestSeed::start().await?;
    let v1 = seed.base().join("v1");
    let entries = delta_entries();
    wide_tree(&v1, entries)?;
    seed.publish("usr", "1", &v1)?;
    // v2: 100 files spread over the whole layer get new content.
    let v2 = seed.base().join("v2");
    copy_tree(&v1, &v2)?;
    let mut files: Vec<_> = snapshot(&v2).into_keys().filter(|p| p.ends_with(".mo")).collect();
    files.sort();
    let step = files.len() / 100;
    for p in files.iter().step_by(step).take(100) {
        std::fs::write(v2.join(p), format!("changed {p}\n"))?;
    }
    seed.publish("usr", "2", &v2)?;

    let (into, first) = fetch_as(&seed, "ep", seed.seed.addr, "1").await?;
    assert!(snapshot(&into) == snapshot(&v1));
    let (into, second) = fetch_as(&seed, "ep", seed.seed.addr, "2").await?;
    assert!(snapshot(&into) == snapshot(&v2), "v2 differs after the delta");
    let key = *NodeIdentity::load(&seed.data())?.trust().manifest_key();
    let sm = seed.seed.store.open_manifest("usr", Some("2"), &key)?.expect("published");
    let root = sm.to_bytes().len() as u64;
    // Each changed entry costs at most the body chunk it falls in and a neighbour whose cut
    // moved, whatever the layer's size; the root is sent whole.
    let bound = root + 100 * 2 * BODY_CHUNKING.max as u64;
    eprintln!(
        "{} entries; manifest bytes: v1 {} (body {} plain), v2 with 100 files changed {} \
         (root {root}, bound {bound})",
        sm.manifest.entries.len(),
        first.manifest_bytes,
        sm.root.body_len,
        second.manifest_bytes
    );
    assert!(second.manifest_bytes <= bound, "{} > {bound}", second.manifest_bytes);
    assert!(
        second.manifest_bytes * 4 < first.manifest_bytes,
        "v2 moved {} manifest bytes, v1 {}",
        second.manifest_bytes,
        first.manifest_bytes
    );
    Ok(())
}
