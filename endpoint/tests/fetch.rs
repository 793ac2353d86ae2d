//! `fetch()` end to end against in-process QUIC servers with injected faults.

mod common;

use common::*;
use oasis_core::identity::Role;
use oasis_core::manifest::{Entry, Node};
use oasis_endpoint::{fetch, FetchOptions};
use std::net::SocketAddr;

fn opts(
    pki: &Pki,
    sources: Vec<SocketAddr>,
    version: Option<&str>,
    into: &std::path::Path,
) -> FetchOptions {
    FetchOptions {
        state_dir: pki.state.clone(),
        sources,
        name: "app".into(),
        version: version.map(str::to_string),
        into: into.to_path_buf(),
        streams: 4,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_then_refetch_then_fetch_elsewhere_from_cache() {
    let pki = pki();
    let l = sample_layer("1");
    let (addr, _src) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&l]));
    let into = pki.dir.path().join("out");

    let r = fetch(&opts(&pki, vec![addr], Some("1"), &into)).await.unwrap();
    assert_tree(&into, &l);
    assert_eq!((r.layer.as_str(), r.version.as_str()), ("app", "1"));
    assert_eq!(r.chunks_total, l.chunks.len() as u64);
    assert_eq!(r.chunks_fetched, r.chunks_total);
    assert_eq!(r.bytes_reused, 0);
    assert_eq!(r.files, 5);
    assert_eq!(r.bytes, l.manifest.total_bytes());
    assert!(r.bytes_network > 0 && r.bytes_fetched < r.bytes, "dup content fetched once");
    assert_eq!(r.source, addr.to_string());
    let json = serde_json::to_value(&r).unwrap();
    for k in [
        "layer",
        "version",
        "digest",
        "files",
        "bytes",
        "bytes_network",
        "bytes_reused",
        "chunks_fetched",
        "chunks_refetched",
        "seconds",
    ] {
        assert!(json.get(k).is_some(), "report has {k}");
    }

    // Again into the same directory: everything is already there.
    let r = fetch(&opts(&pki, vec![addr], None, &into)).await.unwrap();
    assert_eq!(r.chunks_fetched, 0);
    assert_eq!(r.bytes_network, 0);
    assert_eq!(r.files_unchanged, 5);
    assert_eq!(r.files_written, 0);
    assert_eq!(r.bytes_from_local_files, r.bytes_reused);
    assert_eq!(r.chunks_from_local_files, r.chunks_total);
    assert_tree(&into, &l);

    // Into a fresh directory: everything comes from the cache.
    let other = pki.dir.path().join("other");
    let r = fetch(&opts(&pki, vec![addr], Some("1"), &other)).await.unwrap();
    assert_eq!(r.chunks_fetched, 0);
    assert_eq!(r.chunks_from_cache, r.chunks_total);
    assert_eq!(r.bytes_reused, r.bytes_from_cache);
    assert_tree(&other, &l);
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime_and_updates_a_tree() {
    let pki = pki();
    let v1 = sample_layer("1");
    // v2: one file edited, one removed from the layer, one added.
    let mut tool = noise(1, 300_000);
    tool[150_000] ^= 1;
    let v2 = layer(
        "app",
        "2",
        vec![
            Item::Dir("bin", 0o755),
            Item::File("bin/tool", 0o755, tool),
            Item::Dir("etc", 0o755),
            Item::File("etc/config", 0o644, b"key = value2\n".to_vec()),
            Item::File("new", 0o644, noise(3, 20_000)),
        ],
    );
    let (addr, _src) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&v1, &v2]));
    let into = pki.dir.path().join("out");
    fetch(&opts(&pki, vec![addr], Some("1"), &into)).await.unwrap();
    // Fresh state for v2 so reuse comes from local files, not the cache.
    std::fs::remove_dir_all(pki.state.join("cache")).unwrap();
    let r = fetch(&opts(&pki, vec![addr], None, &into)).await.unwrap();
    assert_eq!(r.version, "2", "latest");
    assert_tree(&into, &v2);
    assert!(into.join("dup").exists(), "files the layer does not list are left alone");
    assert!(r.chunks_from_local_files > 0);
    assert!(r.chunks_fetched <= 3 + 1 + 5, "only edited regions fetched: {r:?}");
    assert!(r.bytes_fetched < 60_000, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunks_are_discarded_and_fetched_again() {
    let pki = pki();
    let l = sample_layer("1");
    let src = MemSource::new(&pki, &[&l]);
    let ids: Vec<_> = l.chunks.keys().copied().take(5).collect();
    for id in &ids {
        src.faults.corrupt.lock().unwrap().insert(*id, 1);
    }
    let (addr, _src) = serve(&pki, Role::Seed, "seed", src);
    let into = pki.dir.path().join("out");
    let r = fetch(&opts(&pki, vec![addr], None, &into)).await.unwrap();
    assert_eq!(r.chunks_refetched, 5);
    assert_eq!(r.chunks_fetched, r.chunks_total);
    assert_tree(&into, &l);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_corrupt_or_missing_chunks_come_from_the_next_source() {
    let pki = pki();
    let l = sample_layer("1");
    let mut bad = MemSource::new(&pki, &[&l]);
    let mut ids = l.chunks.keys().copied();
    let corrupt = ids.next().unwrap();
    let missing = ids.next().unwrap();
    bad.faults.corrupt.lock().unwrap().insert(corrupt, u32::MAX);
    bad.faults.missing.insert(missing);
    let (reflector, _r) = serve(&pki, Role::Reflector, "r1", bad);
    let (seed, _s) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&l]));
    let into = pki.dir.path().join("out");
    let r = fetch(&opts(&pki, vec![reflector, seed], Some("1"), &into)).await.unwrap();
    assert_tree(&into, &l);
    assert_eq!(r.source, reflector.to_string());
    assert_eq!(r.sources_used, vec![reflector.to_string(), seed.to_string()]);
    assert_eq!(r.chunks_refetched, 3, "three attempts at the reflector");
    assert_eq!(r.chunks_missing_answers, 1);
    assert_eq!(r.chunks_fetched, r.chunks_total);

    // With no second source the fetch fails naming the chunk, and writes nothing.
    let pki2 = common::pki();
    let only = MemSource::new(&pki2, &[&l]);
    only.faults.corrupt.lock().unwrap().insert(corrupt, u32::MAX);
    let (addr, _o) = serve(&pki2, Role::Seed, "seed", only);
    let into2 = pki2.dir.path().join("out");
    let err = fetch(&opts(&pki2, vec![addr], None, &into2)).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&corrupt.to_hex()) && msg.contains("corrupt"), "{msg}");
    assert!(!into2.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dying_mid_fetch_is_continued_from_the_next_without_starting_over() {
    let pki = pki();
    let l = layer("app", "1", vec![Item::File("big", 0o644, noise(11, 2_000_000))]);
    let mut dying = MemSource::new(&pki, &[&l]);
    dying.faults.die_after = Some(200);
    let (first, _d) = serve(&pki, Role::Reflector, "r1", dying);
    let (seed, seed_src) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&l]));
    let into = pki.dir.path().join("out");
    let r = fetch(&opts(&pki, vec![first, seed], None, &into)).await.unwrap();
    assert_tree(&into, &l);
    assert_eq!(r.sources_used, vec![first.to_string(), seed.to_string()]);
    assert_eq!(r.chunks_fetched, r.chunks_total);
    let from_seed = seed_src.served.load(std::sync::atomic::Ordering::SeqCst) as u64;
    assert!(
        from_seed < r.chunks_total,
        "the seed served only the rest: {from_seed} of {}",
        r.chunks_total
    );
    assert!(!r.source_problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_first_source_is_skipped() {
    let pki = pki();
    let l = sample_layer("1");
    let (seed, _s) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&l]));
    // Bound but never answering.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let into = pki.dir.path().join("out");
    let r =
        fetch(&opts(&pki, vec![silent.local_addr().unwrap(), seed], None, &into)).await.unwrap();
    assert_tree(&into, &l);
    assert_eq!(r.source, seed.to_string());
    assert_eq!(r.source_problems.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_and_nothing_is_written() {
    let pki = pki();
    let l = sample_layer("1");
    let into = pki.dir.path().join("out");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let good = pki.sign(&l.manifest);
    let mut unsafe_m = l.manifest.clone();
    unsafe_m.entries.push(Entry { path: "../escape".into(), mode: 0o644, node: Node::Dir });
    let cases: Vec<(&str, bytes::Bytes)> = vec![
        ("wrong key", bytes::Bytes::from(l.manifest.sign(&key).to_bytes())),
        ("unsigned", bytes::Bytes::from(l.manifest.encode())),
        ("truncated", good.slice(..good.len() / 2)),
        ("unsafe path", pki.sign(&unsafe_m)),
    ];
    for (what, bytes) in cases {
        let mut src = MemSource::new(&pki, &[&l]);
        src.manifests.insert(("app".into(), "1".into()), bytes);
        let (addr, _s) = serve(&pki, Role::Seed, "seed", src);
        let err = fetch(&opts(&pki, vec![addr], Some("1"), &into)).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("manifest"), "{what}: {msg}");
        assert!(!into.exists(), "{what}: nothing written");
    }
    // A validly signed manifest of another version is refused too.
    let v2 = sample_layer("2");
    let mut src = MemSource::new(&pki, &[&l]);
    src.manifests.insert(("app".into(), "1".into()), pki.sign(&v2.manifest));
    let (addr, _s) = serve(&pki, Role::Seed, "seed", src);
    let err = fetch(&opts(&pki, vec![addr], Some("1"), &into)).await.unwrap_err();
    assert!(format!("{err:#}").contains("got a manifest for app@2"), "{err:#}");
    // Unknown layer.
    let (addr, _s) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&l]));
    let err = fetch(&opts(&pki, vec![addr], Some("9"), &into)).await.unwrap_err();
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
    assert!(!into.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_target_is_refused_before_downloading() {
    let pki = pki();
    let l = sample_layer("1");
    let (addr, src) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&l]));
    let into = pki.dir.path().join("out");
    std::fs::create_dir(&into).unwrap();
    std::os::unix::fs::symlink("/tmp", into.join("etc")).unwrap();
    let err = fetch(&opts(&pki, vec![addr], None, &into)).await.unwrap_err();
    assert!(format!("{err:#}").contains("would write through a symlink"), "{err:#}");
    assert_eq!(listing(&into), vec!["etc".to_string()]);
    assert_eq!(src.served.load(std::sync::atomic::Ordering::SeqCst), 0, "no chunk downloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_entry_is_fetched_again_while_writing() {
    let pki = pki();
    let l = sample_layer("1");
    let (addr, _s) = serve(&pki, Role::Seed, "seed", MemSource::new(&pki, &[&l]));
    let a = pki.dir.path().join("a");
    fetch(&opts(&pki, vec![addr], None, &a)).await.unwrap();
    // Rot every byte of every pack in the cache, and of every file of the first tree (the
    // cache refers to the chunks written there instead of copying them), keeping each file's
    // size and modification time so that only the hash check can notice.
    let mut rotted = 0;
    let packs = std::fs::read_dir(pki.state.join("cache/packs")).unwrap();
    let files = ["bin/tool", "etc/config", "a/b/c/d/deep.bin", "dup"].map(|f| a.join(f));
    for p in packs.map(|f| f.unwrap().path()).chain(files) {
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let b: Vec<u8> = std::fs::read(&p).unwrap().iter().map(|x| x ^ 0xff).collect();
        std::fs::write(&p, b).unwrap();
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
        rotted += 1;
    }
    assert!(rotted > 0);
    let b = pki.dir.path().join("b");
    let r = fetch(&opts(&pki, vec![addr], None, &b)).await.unwrap();
    assert_tree(&b, &l);
    assert_eq!(r.chunks_fetched, r.chunks_total);
    assert_eq!(r.chunks_from_cache, 0);
}
