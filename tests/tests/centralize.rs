//! Centralization, restore and provisioning with a real seed and real endpoints over
//! QUIC on 127.0.0.1: uploads send only what the seed lacks, resume after a break, each restore
//! mode rebuilds exactly what it promises, and a pending device is provisioned end to end.

use oasis_core::backup::RecordRef;
use oasis_core::manifest::LayerKind;
use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::pki::{Role, SeedAuthority};
use oasis_core::ChunkId;
use oasis_endpoint::apply::{self, ApplyOptions};
use oasis_endpoint::restore::{self, ProvisionOptions, RestoreMode, RestoreOptions};
use oasis_endpoint::session::Session;
use oasis_endpoint::snapshot::Snapshot;
use oasis_endpoint::upload::{self, UploadOptions};
use oasis_testkit::{random_tree, snapshot as tree, TestSeed, TreeSpec};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

const SMALL: TreeSpec =
    TreeSpec { small_files: 120, large_files: 1, large_size: 600 << 10, depth: 4 };

fn publish_kind(seed: &TestSeed, name: &str, version: &str, kind: LayerKind, src: &Path) {
    seed.publish_as(name, version, kind, src).unwrap();
}

/// An app layer's tree: a few files under opt/office.
fn app_tree(root: &Path) {
    std::fs::create_dir_all(root.join("opt/office/bin")).unwrap();
    std::fs::write(root.join("opt/office/bin/office"), b"#!/bin/sh\necho office\n").unwrap();
    std::fs::write(root.join("opt/office/README"), vec![b'o'; 70_000]).unwrap();
}

/// User data: a profile under home/alice and a user-installed application under opt/userapp.
fn user_files(root: &Path, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("home/alice/docs")).unwrap();
    std::fs::create_dir_all(root.join("opt/userapp")).unwrap();
    for i in 0..20 {
        let data: Vec<u8> = (0..rng.gen_range(100..20_000)).map(|_| rng.gen()).collect();
        std::fs::write(root.join(format!("home/alice/docs/d{i}.bin")), data).unwrap();
    }
    std::fs::write(root.join("home/alice/.profile"), b"export EDITOR=vi\n").unwrap();
    let big: Vec<u8> = (0..400_000).map(|_| rng.gen()).collect();
    std::fs::write(root.join("home/alice/photo.raw"), big).unwrap();
    std::fs::write(root.join("opt/userapp/tool"), b"user's own tool\n").unwrap();
}

fn enroll(seed: &TestSeed, name: &str, dir: &str) -> PathBuf {
    let out = seed.base().join(dir);
    SeedAuthority::load(&seed.data())
        .unwrap()
        .enroll(Role::Endpoint, name, Some("test"), &out, false)
        .unwrap();
    out
}

async fn apply_layers(seed: &TestSeed, state: &Path, root: &Path, base: &str, apps: &[&str]) {
    let p = |s: &str| apply::parse_exact(s, "layer").unwrap();
    apply::apply(&ApplyOptions {
        state_dir: state.to_path_buf(),
        sources: vec![seed.seed.addr],
        root: root.to_path_buf(),
        base: p(base),
        apps: apps.iter().map(|a| p(a)).collect(),
        streams: 4,
        progress: false,
        allow_downgrade: false,
    })
    .await
    .unwrap();
}

async fn take_snapshot(state: &Path) -> Snapshot {
    let state = state.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let s = Session::open(&state, None, false)?;
        Ok::<_, anyhow::Error>(s.snapshot("test", false, false)?.0)
    })
    .await
    .unwrap()
    .unwrap()
}

/// Every id the seed must hold for `snap`: file chunks and record chunks.
fn needed_ids(snap: &Snapshot, device: &str) -> HashSet<ChunkId> {
    let record = upload::to_record(snap, device);
    let (rref, _) = RecordRef::cut(&record.encode());
    record.unique_chunks().iter().map(|c| c.id).chain(rref.chunks.iter().map(|c| c.id)).collect()
}

fn only(t: &BTreeMap<String, String>, keep: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    t.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

struct Fixture {
    seed: TestSeed,
    state: PathBuf,
    root: PathBuf,
    base_src: PathBuf,
    app_src: PathBuf,
}

/// A seed with base@1, base@2 and office@1, and device laptop-1 running base@1 + office@1 with
/// user files.
async fn fixture() -> Fixture {
    let seed = TestSeed::start().await.unwrap();
    let base_src = seed.base().join("base1");
    random_tree(&base_src, 1, SMALL).unwrap();
    publish_kind(&seed, "base", "1", LayerKind::Base, &base_src);
    let base2 = seed.base().join("base2");
    oasis_testkit::copy_tree(&base_src, &base2).unwrap();
    oasis_testkit::mutate_tree(&base2).unwrap();
    std::fs::remove_file(base2.join("etc/empty")).unwrap();
    publish_kind(&seed, "base", "2", LayerKind::Base, &base2);
    let app_src = seed.base().join("office1");
    app_tree(&app_src);
    publish_kind(&seed, "office", "1", LayerKind::App, &app_src);

    let state = enroll(&seed, "laptop-1", "laptop-state");
    let root = seed.base().join("laptop-root");
    std::fs::create_dir_all(&root).unwrap();
    user_files(&root, 9);
    apply_layers(&seed, &state, &root, "base@1", &["office@1"]).await;
    Fixture { seed, state, root, base_src, app_src }
}

fn upload_opts(f: &Fixture) -> UploadOptions {
    UploadOptions::new(&f.state, f.seed.seed.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_upload_sends_only_changed_chunks() {
    let f = fixture().await;
    let s1 = take_snapshot(&f.state).await;
    let r1 = upload::upload(&upload_opts(&f)).await.unwrap();
    let metric = |name: &str| {
        let m = &f.seed.seed.metrics;
        match name {
            "bytes" => m.upload_bytes.get(),
            "chunks" => m.upload_chunks.get(),
            _ => m.upload_new_chunks.get(),
        }
    };
    assert_eq!(r1.snapshot, s1.id.to_string());
    assert_eq!(r1.filed.files, r1.files);
    // Layer files dedupe against the published layers' chunks: the seed had them already.
    assert!(r1.chunks_at_seed > 0, "layer chunks are already at the seed");
    assert_eq!(r1.chunks_sent, r1.chunks_total - r1.chunks_at_seed);
    assert_eq!(metric("bytes"), r1.bytes_sent, "seed counted what the endpoint sent");
    assert_eq!(metric("chunks"), r1.chunks_sent);

    // Change one user file a little and add one; the second upload sends just those chunks
    // and the record chunks that changed.
    let doc = f.root.join("home/alice/docs/d3.bin");
    let mut data = std::fs::read(&doc).unwrap();
    data.extend_from_slice(b"one more paragraph");
    std::fs::write(&doc, data).unwrap();
    std::fs::write(f.root.join("home/alice/new.txt"), b"written after the first upload\n").unwrap();
    let s2 = take_snapshot(&f.state).await;
    let (bytes_before, chunks_before) = (metric("bytes"), metric("chunks"));
    // What the seed holds now: the layers' chunks and the first snapshot's.
    let at_seed: HashSet<ChunkId> = f.seed.seed.store.ids().map(|r| r.unwrap().0).collect();
    assert!(needed_ids(&s1, "laptop-1").is_subset(&at_seed));
    let r2 = upload::upload(&upload_opts(&f)).await.unwrap();

    let expected: HashSet<ChunkId> =
        needed_ids(&s2, "laptop-1").into_iter().filter(|id| !at_seed.contains(id)).collect();
    assert!(!expected.is_empty());
    assert_eq!(r2.chunks_sent as usize, expected.len(), "exactly the new chunks are sent");
    assert_eq!(metric("chunks") - chunks_before, r2.chunks_sent);
    assert_eq!(metric("bytes") - bytes_before, r2.bytes_sent);
    assert!(
        r2.bytes_sent * 10 < r1.bytes_sent,
        "second upload {} bytes vs first {}",
        r2.bytes_sent,
        r1.bytes_sent
    );
    eprintln!(
        "upload 1: {} of {} chunks sent, {} bytes on the wire; upload 2: {} chunks, {} bytes ({:.2}% of the first)",
        r1.chunks_sent,
        r1.chunks_total,
        r1.bytes_sent,
        r2.chunks_sent,
        r2.bytes_sent,
        100.0 * r2.bytes_sent as f64 / r1.bytes_sent as f64
    );
    // Both snapshots are filed, oldest first, and the latest is the second.
    let ep = client(&f.seed, &f.state).await;
    let list = ep.snapshots("laptop-1").await.unwrap();
    assert_eq!(
        list.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        [r1.filed.id, r2.filed.id.clone()]
    );
    let (latest, _, _) = ep.snapshot("laptop-1", None).await.unwrap();
    assert_eq!(latest.id, r2.filed.id);
}

async fn client(seed: &TestSeed, state: &Path) -> Client {
    let id = oasis_core::pki::NodeIdentity::load(state).unwrap();
    let ep = net::client_endpoint(&id, &TransportOptions::default()).unwrap();
    Client::connect(&ep, seed.seed.addr, oasis_core::net::accept::SEED).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_restore_mode_rebuilds_what_it_promises() {
    let f = fixture().await;
    take_snapshot(&f.state).await;
    upload::upload(&upload_opts(&f)).await.unwrap();
    let original = tree(&f.root);
    let user_part = |p: &str| p.starts_with("home") || p.starts_with("opt/userapp");

    // full: the whole device, byte for byte, on a replacement machine with a fresh state dir.
    let state = enroll(&f.seed, "laptop-1", "replacement-full");
    let new_root = f.seed.base().join("restored-full");
    let r = restore::restore(&RestoreOptions::new(
        &state,
        f.seed.seed.addr,
        "laptop-1",
        &new_root,
        RestoreMode::Full,
    ))
    .await
    .unwrap();
    assert_eq!(tree(&new_root), original, "full restore is the whole device");
    assert_eq!(r.layers, ["base@1", "office@1"]);
    // The new state dir knows the layers: an update applies in place, keeping user files.
    apply_layers(&f.seed, &state, &new_root, "base@2", &["office@1"]).await;
    let after = tree(&new_root);
    assert_eq!(only(&after, user_part), only(&original, user_part));
    assert!(!after.contains_key("etc/empty"), "base@2 dropped etc/empty");
    assert!(after.contains_key("etc/added-in-v2.conf"));

    // user: the profile and data only; nothing of IT's, not the user's own applications.
    let state = enroll(&f.seed, "laptop-1", "replacement-user");
    let new_root = f.seed.base().join("restored-user");
    restore::restore(&RestoreOptions::new(
        &state,
        f.seed.seed.addr,
        "laptop-1",
        &new_root,
        RestoreMode::User,
    ))
    .await
    .unwrap();
    assert_eq!(tree(&new_root), only(&original, |p| p.starts_with("home")));

    // apps-and-user: the layers assigned now (base@2 + office@1) plus everything the user owned.
    let auth = SeedAuthority::load(&f.seed.data()).unwrap();
    let state = enroll(&f.seed, "laptop-1", "replacement-apps");
    let new_root = f.seed.base().join("restored-apps");
    let pending = restore::provision(&ProvisionOptions {
        state_dir: state.clone(),
        seed: f.seed.seed.addr,
        sources: vec![],
        root: new_root.clone(),
        wait: None,
        streams: 4,
        progress: false,
    })
    .await;
    assert!(format!("{:#}", pending.unwrap_err()).contains("pending"));
    oasis_seed::provision::provision(
        &f.seed.seed.store,
        auth.trust(),
        "laptop-1",
        "base@2",
        &["office@1".into()],
    )
    .unwrap();
    let r = restore::restore(&RestoreOptions::new(
        &state,
        f.seed.seed.addr,
        "laptop-1",
        &new_root,
        RestoreMode::AppsAndUser,
    ))
    .await
    .unwrap();
    assert_eq!(r.layers, ["base@2", "office@1"]);
    let got = tree(&new_root);
    let mut want = tree(&f.seed.base().join("base2"));
    want.extend(tree(&f.app_src));
    want.extend(only(&original, user_part));
    assert_eq!(got, want, "apps-and-user = assigned layers + user data and applications");
    let _ = &f.base_src;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_device_is_provisioned_to_a_complete_device() {
    let seed = TestSeed::start().await.unwrap();
    let base_src = seed.base().join("base1");
    random_tree(&base_src, 3, SMALL).unwrap();
    publish_kind(&seed, "base", "1", LayerKind::Base, &base_src);
    let app_src = seed.base().join("office1");
    app_tree(&app_src);
    publish_kind(&seed, "office", "1", LayerKind::App, &app_src);
    let state = enroll(&seed, "kiosk-7", "kiosk-state");
    let root = seed.base().join("kiosk-root");
    let opts = ProvisionOptions {
        state_dir: state.clone(),
        seed: seed.seed.addr,
        sources: vec![],
        root: root.clone(),
        wait: None,
        streams: 4,
        progress: false,
    };
    // Unknown to the seed: asking for its plan lists it as pending.
    let e = restore::provision(&opts).await.unwrap_err();
    assert!(format!("{e:#}").contains("pending"), "{e:#}");
    let auth = SeedAuthority::load(&seed.data()).unwrap();
    let cmd = |c| oasis_seed::commands::execute(&c, &auth, &seed.seed.store, None).unwrap();
    let pending = cmd(oasis_seed::commands::StoreCommand::Devices { pending: true });
    assert_eq!(pending[0]["name"], "kiosk-7");
    // Provisioning checks kinds: an app layer is no base.
    assert!(oasis_seed::provision::provision(
        &seed.seed.store,
        auth.trust(),
        "kiosk-7",
        "office@1",
        &[]
    )
    .is_err());
    cmd(oasis_seed::commands::StoreCommand::Provision {
        device: "kiosk-7".into(),
        base: "base@1".into(),
        apps: vec!["office@1".into()],
    });
    assert!(cmd(oasis_seed::commands::StoreCommand::Devices { pending: true })
        .as_array()
        .unwrap()
        .is_empty());
    // The endpoint, started on an empty root, waits for nothing now and builds the device.
    let r = restore::provision(&ProvisionOptions {
        wait: Some(std::time::Duration::from_millis(100)),
        ..opts
    })
    .await
    .unwrap();
    assert_eq!(r.layers, ["base@1", "office@1"]);
    let mut want = tree(&base_src);
    want.extend(tree(&app_src));
    assert_eq!(tree(&root), want, "the device holds exactly its assigned layers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_resumes_without_resending() {
    let f = fixture().await;
    // 1.5 MB of incompressible user data, so the upload takes a few seconds at 1 MB/s.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let big: Vec<u8> = (0..1_500_000).map(|_| rng.gen()).collect();
    std::fs::write(f.root.join("home/alice/video.raw"), big).unwrap();
    take_snapshot(&f.state).await;
    let policy = oasis_core::policy::BandwidthPolicy::from_toml_str(
        "[wan]\nrate = \"1MB/s\"\nburst = \"64KiB\"\n",
        "test policy",
    )
    .unwrap();
    let mut slow = upload_opts(&f);
    slow.policy = Some(policy);
    slow.streams = 1;
    let m = f.seed.seed.metrics.clone();
    let task = tokio::spawn(async move { upload::upload(&slow).await });
    // Break the upload once part of it is stored at the seed.
    while m.upload_new_chunks.get() < 4 {
        assert!(!task.is_finished(), "upload finished before it could be interrupted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stored_before = m.upload_new_chunks.get();

    let r = upload::upload(&upload_opts(&f)).await.unwrap();
    assert!(r.chunks_at_seed >= stored_before, "the retry's have-query finds what was stored");
    assert_eq!(r.chunks_sent, r.chunks_total - r.chunks_at_seed);
    // No chunk crossed twice: every accepted chunk was new to the seed.
    assert_eq!(m.upload_chunks.get(), m.upload_new_chunks.get());
    assert_eq!(m.upload_new_chunks.get(), stored_before + r.chunks_sent);
    eprintln!(
        "resume: {stored_before} chunks stored before the break, {} sent after, {} already at the seed",
        r.chunks_sent, r.chunks_at_seed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_foreign_devices_are_refused() {
    use oasis_core::compress::StoredChunk;
    use oasis_core::wire::ErrorCode;
    let seed = TestSeed::start().await.unwrap();
    let a = enroll(&seed, "laptop-a", "a");
    let ca = client(&seed, &a).await;
    let before = seed.seed.store.totals().unwrap();

    // A chunk whose bytes do not hash to its id: typed error, nothing stored.
    let mut bad = StoredChunk::encode(b"honest bytes");
    bad.data = bytes::Bytes::from_static(b"forged bytes");
    bad.plain_len = 12;
    let e = ca.put_chunks(&[bad], None).await.unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::Malformed), "{e}");
    assert_eq!(seed.seed.store.totals().unwrap(), before, "nothing stored");

    // An oversized chunk frame: refused from its length prefix, nothing stored.
    {
        use bytes::BufMut;
        let (mut send, mut recv) = ca.connection().open_bi().await.unwrap();
        let mut req = bytes::BytesMut::new();
        oasis_core::wire::Frame::PutChunks { count: 1 }.encode(&mut req);
        req.put_u32((oasis_core::wire::MAX_FRAME_BYTES + 1) as u32);
        req.put_u8(oasis_core::wire::frame_type::CHUNK);
        req.put_slice(&[0u8; 4096]);
        let _ = send.write_all(&req).await;
        let _ = send.finish();
        let answer = recv.read_to_end(1 << 16).await.unwrap();
        let frame = oasis_core::wire::split_frame(&mut bytes::BytesMut::from(&answer[..]), 1 << 16)
            .unwrap()
            .unwrap();
        assert!(
            matches!(frame, oasis_core::wire::Frame::Error { code: ErrorCode::TooLarge, .. }),
            "{frame:?}"
        );
        assert_eq!(seed.seed.store.totals().unwrap(), before, "nothing stored");
    }

    // Another device's snapshots: forbidden. Own device with none: not found.
    let e = ca.snapshots("laptop-b").await.unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "{e}");
    let e = ca.snapshot("laptop-a", None).await.unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::NotFound), "{e}");
    // A record whose chunks were never uploaded is not filed.
    let e = ca
        .put_snapshot(oasis_core::backup::PutSnapshot {
            device: "laptop-a".into(),
            id: "1".into(),
            record: RecordRef {
                len: 5,
                digest: [0; 32],
                chunks: vec![oasis_core::manifest::ChunkRef { id: ChunkId::of(b"x"), len: 5 }],
            },
        })
        .await
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::NotFound), "{e}");
    assert!(ca.snapshots("laptop-a").await.unwrap().is_empty());

    // Reflectors do not upload.
    let r = seed.enroll(Role::Reflector, "refl").unwrap();
    let cr = client(&seed, &r).await;
    let e = cr.put_chunks(&[StoredChunk::encode(b"x")], None).await.unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::Forbidden), "{e}");
    // The server is still up and answering.
    assert!(ca.snapshots("laptop-a").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_survives_a_seed_restart() {
    let mut f = fixture().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let big: Vec<u8> = (0..1_500_000).map(|_| rng.gen()).collect();
    std::fs::write(f.root.join("home/alice/video.raw"), big).unwrap();
    take_snapshot(&f.state).await;
    let mut slow = upload_opts(&f);
    slow.policy = Some(
        oasis_core::policy::BandwidthPolicy::from_toml_str(
            "[wan]\nrate = \"1MB/s\"\nburst = \"64KiB\"\n",
            "test policy",
        )
        .unwrap(),
    );
    slow.streams = 1;
    let m = f.seed.seed.metrics.clone();
    let task = tokio::spawn(async move { upload::upload(&slow).await });
    while m.upload_new_chunks.get() < 4 {
        assert!(!task.is_finished(), "upload finished before the seed could be restarted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The seed goes away mid-upload and comes back on the same address with the same store.
    let data = f.seed.data();
    let signer = f.seed.signer();
    let old = f.seed.seed;
    old.shutdown();
    let (store, addr) = (old.store.clone(), old.addr);
    drop(old);
    let stored_before = m.upload_new_chunks.get();
    // The old socket is released once its connections are gone.
    let mut tries = 0;
    f.seed.seed = loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let identity = oasis_core::pki::NodeIdentity::load(&data).unwrap();
        match oasis_seed::RunningSeed::start_with(
            identity,
            store.clone(),
            Some(signer.clone()),
            addr,
            None,
            Default::default(),
            Default::default(),
        )
        .await
        {
            Ok(s) => break s,
            Err(e) if tries < 30 => {
                tries += 1;
                eprintln!("restart: {e:#}");
            }
            Err(e) => panic!("cannot restart the seed: {e:#}"),
        }
    };
    let r = task.await.unwrap().unwrap();
    assert!(r.attempts >= 2, "the upload reconnected ({} attempts)", r.attempts);
    let m2 = &f.seed.seed.metrics;
    assert!(m2.upload_new_chunks.get() > 0, "the rest went to the restarted seed");
    assert_eq!(m2.upload_chunks.get(), m2.upload_new_chunks.get(), "nothing stored was resent");
    let ep = client(&f.seed, &f.state).await;
    assert_eq!(ep.snapshots("laptop-1").await.unwrap().len(), 1);
    eprintln!(
        "seed restart: {stored_before} chunks stored before, {} after, {} attempts",
        m2.upload_new_chunks.get(),
        r.attempts
    );
}

/// A server on 127.0.0.1 answering with the real seed's store, content, inventory and backups
/// alike, under the identity in `state`, signing with `signer`: what someone holding that
/// node's key could run.
fn impostor(
    seed: &TestSeed,
    state: &Path,
    signer: std::sync::Arc<oasis_seed::signer::SeedSigner>,
) -> std::net::SocketAddr {
    let id = oasis_core::pki::NodeIdentity::load(state).unwrap();
    let ep =
        net::server_endpoint("127.0.0.1:0".parse().unwrap(), &id, &TransportOptions::default())
            .unwrap();
    let addr = ep.local_addr().unwrap();
    let source = std::sync::Arc::new(oasis_seed::source::SeedSource {
        store: seed.seed.store.clone(),
        signer: Some(signer),
        authority: None,
        fleet: Default::default(),
    });
    let router = net::Router::new(source.clone()).inventory(source.clone()).backup(source);
    tokio::spawn(net::serve(
        ep,
        router,
        std::sync::Arc::new(oasis_core::metrics::NodeMetrics::new()),
    ));
    addr
}

/// A server with the seed's TLS key but not its manifest key (a serving host the signing key
/// was split off, or a stolen TLS key) cannot hand a device a record or a plan of its making.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_plans_without_the_seeds_seal_are_refused_before_anything_is_written() {
    let f = fixture().await;
    take_snapshot(&f.state).await;
    upload::upload(&UploadOptions::new(&f.state, f.seed.seed.addr)).await.unwrap();
    let auth = SeedAuthority::load(&f.seed.data()).unwrap();
    oasis_seed::provision::provision(&f.seed.seed.store, auth.trust(), "laptop-1", "base@2", &[])
        .unwrap();
    // Another seed's keys: a manifest key this device does not trust.
    let other = tempfile::tempdir().unwrap();
    let forger = oasis_seed::signer::SeedSigner::new(
        std::sync::Arc::new(SeedAuthority::init(other.path()).unwrap()),
        oasis_seed::signer::DEFAULT_LATEST_TTL,
    )
    .unwrap();
    let fake = impostor(&f.seed, &f.seed.data(), std::sync::Arc::new(forger));
    let state = enroll(&f.seed, "laptop-1", "forged-state");

    let new_root = f.seed.base().join("restored-from-forger");
    let e = restore::restore(&RestoreOptions::new(
        &state,
        fake,
        "laptop-1",
        &new_root,
        RestoreMode::Full,
    ))
    .await
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("refused") && e.contains("signature does not verify"), "{e}");
    assert!(!new_root.exists(), "nothing is written before the record's seal checks");

    let provision_root = f.seed.base().join("provisioned-by-forger");
    let e = restore::provision(&ProvisionOptions {
        state_dir: state.clone(),
        seed: fake,
        sources: vec![f.seed.seed.addr],
        root: provision_root.clone(),
        wait: None,
        streams: 2,
        progress: false,
    })
    .await
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("the plan for this device refused"), "{e}");
    assert!(!provision_root.exists());

    // The real seed's seals check, for the same device and the same request.
    let r = restore::restore(&RestoreOptions::new(
        &state,
        f.seed.seed.addr,
        "laptop-1",
        &new_root,
        RestoreMode::Full,
    ))
    .await
    .unwrap();
    assert!(r.files > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_key_posing_as_the_seed_is_refused_before_any_request() {
    let f = fixture().await;
    take_snapshot(&f.state).await;
    let stolen = enroll(&f.seed, "stolen-laptop", "stolen-state");
    let fake = impostor(&f.seed, &stolen, f.seed.signer());
    let refused = |e: anyhow::Error, accepted: &str| {
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!("{fake} is endpoint stolen-laptop@test, but this connection accepts only a {accepted}")),
            "{e}"
        );
    };
    let served = f.seed.seed.metrics.served_bytes.get();

    // The device's own data and plan go to the seed alone.
    let e = upload::upload(&UploadOptions::new(&f.state, fake)).await.unwrap_err();
    refused(e, "seed");
    let new_root = f.seed.base().join("restored-by-impostor");
    let e = restore::restore(&RestoreOptions::new(
        &f.state,
        fake,
        "laptop-1",
        &new_root,
        RestoreMode::Full,
    ))
    .await
    .unwrap_err();
    refused(e, "seed");
    assert!(!new_root.exists(), "nothing is written before the server is known to be the seed");
    let provision_root = f.seed.base().join("provisioned-by-impostor");
    let e = restore::provision(&ProvisionOptions {
        state_dir: f.state.clone(),
        seed: fake,
        sources: vec![fake],
        root: provision_root.clone(),
        wait: None,
        streams: 2,
        progress: false,
    })
    .await
    .unwrap_err();
    refused(e, "seed");
    assert!(!provision_root.exists());

    // Layers come from the seed or a reflector, never from another endpoint.
    let into = f.seed.base().join("fetched-from-impostor");
    let e = oasis_endpoint::fetch(&oasis_endpoint::FetchOptions {
        state_dir: f.state.clone(),
        sources: vec![fake],
        name: "base".into(),
        version: Some("1".into()),
        into: into.clone(),
        streams: 2,
        progress: false,
    })
    .await
    .unwrap_err();
    refused(e, "seed or reflector");
    assert!(!into.exists());

    // A reflector is no seed either: it may not receive a device's backup.
    let refl = f.seed.reflector("refl-1", |_| {}).await.unwrap();
    let e = upload::upload(&UploadOptions::new(&f.state, refl.addr)).await.unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("is reflector refl-1@test, but this connection accepts only a seed"), "{e}");
    assert_eq!(f.seed.seed.metrics.served_bytes.get(), served, "the real seed was never asked");
    refl.stop().await;
}

/// The answer `state`'s node gets to `GetChunks` of `ids` from the seed: the first chunk's bytes,
/// or the error's text.
async fn read_chunks(seed: &TestSeed, state: &Path, ids: Vec<ChunkId>) -> Result<usize, String> {
    let c = client(seed, state).await;
    let mut replies = c.chunks(ids).await.map_err(|e| e.to_string())?;
    let mut n = 0;
    while let Some(r) = replies.next().await.map_err(|e| format!("{e:#}"))? {
        n += matches!(r, oasis_core::net::ChunkReply::Chunk(_)) as usize;
    }
    Ok(n)
}

/// The confirmation-of-file oracle, asked directly: one device asks about a chunk that only
/// another device's backup holds, and gets the answer it gets for a chunk stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_devices_backup_chunks_are_unreadable_and_their_existence_unknowable() {
    let f = fixture().await;
    take_snapshot(&f.state).await;
    upload::upload(&upload_opts(&f)).await.unwrap();
    // photo.raw is laptop-1's alone (random bytes): in its backup, in no layer.
    let snap = take_snapshot(&f.state).await;
    let layer_ids: HashSet<ChunkId> = {
        let mut ids = HashSet::new();
        for (n, v) in [("base", "1"), ("base", "2"), ("office", "1")] {
            let key = f.seed.auth.trust().manifest_key();
            let m = f.seed.seed.store.open_manifest(n, Some(v), key).unwrap().unwrap();
            ids.extend(m.manifest.unique_chunks().iter().map(|c| c.id));
        }
        ids
    };
    let private: Vec<ChunkId> =
        needed_ids(&snap, "laptop-1").into_iter().filter(|id| !layer_ids.contains(id)).collect();
    assert!(!private.is_empty());
    let theirs = private[0];
    assert!(f.seed.seed.store.contains(&theirs).unwrap(), "the seed holds laptop-1's chunk");
    let nowhere = ChunkId::of(b"a chunk no device ever had");
    let shared = *layer_ids.iter().next().unwrap();

    // The owner reads it; another endpoint and a reflector cannot, and cannot tell it exists.
    assert_eq!(read_chunks(&f.seed, &f.state, vec![theirs]).await, Ok(1));
    let other = enroll(&f.seed, "desk-2", "desk-2-state");
    let refl = f.seed.enroll(Role::Reflector, "refl-1").unwrap();
    for state in [&other, &refl] {
        let on_theirs = read_chunks(&f.seed, state, vec![theirs]).await;
        let on_nowhere = read_chunks(&f.seed, state, vec![nowhere]).await;
        assert_eq!(on_theirs, on_nowhere, "the answer tells a stored chunk from a missing one");
        if state == &other {
            // An endpoint's request is refused whole.
            let e = on_theirs.unwrap_err();
            assert!(e.contains("Forbidden") && e.contains("not readable"), "{e}");
        } else {
            // A reflector's batch is served around it: the chunk is "missing".
            assert_eq!(on_theirs, Ok(0));
            let mixed = read_chunks(&f.seed, state, vec![theirs, nowhere, shared]).await;
            assert_eq!(mixed, Ok(1), "the readable chunk of the batch is served");
        }
        let c = client(&f.seed, state).await;
        assert_eq!(c.have(&[theirs, nowhere]).await.unwrap(), [false, false]);
        // Layer chunks stay the fleet's.
        assert_eq!(c.have(&[shared]).await.unwrap(), [true]);
        assert_eq!(read_chunks(&f.seed, state, vec![shared]).await, Ok(1));
    }
    let c = client(&f.seed, &f.state).await;
    assert_eq!(c.have(&[theirs, nowhere]).await.unwrap(), [true, false], "the owner's view");

    // Naming another device's chunk in a snapshot without sending its bytes claims nothing:
    // the seed asks for the chunk to be uploaded.
    // desk-2 files laptop-1's entries as its own, as if it had learnt their hashes.
    let mut record = upload::to_record(&snap, "desk-2");
    record.layers.clear();
    record.entries.retain(|e| match &e.entry.node {
        oasis_core::manifest::Node::File { chunks, .. } => chunks.iter().any(|c| c.id == theirs),
        _ => false,
    });
    for e in &mut record.entries {
        e.layer = None;
        e.entry.path = "stolen".into();
    }
    assert_eq!(record.entries.len(), 1);
    let (rref, pieces) = RecordRef::cut(&record.encode());
    let c = client(&f.seed, &other).await;
    let sent: Vec<_> =
        pieces.iter().map(|(_, b)| oasis_core::compress::StoredChunk::encode(b)).collect();
    c.put_chunks(&sent, None).await.unwrap();
    let e = c
        .put_snapshot(oasis_core::backup::PutSnapshot {
            device: "desk-2".into(),
            id: record.id.clone(),
            record: rref,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("upload them first"), "{e}");
    assert_eq!(
        read_chunks(&f.seed, &other, vec![theirs]).await,
        read_chunks(&f.seed, &other, vec![nowhere]).await,
        "still unreadable"
    );
}
