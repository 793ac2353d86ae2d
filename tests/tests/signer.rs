//! A seed serving without its private keys: `split-keys` moves the CA key and the manifest key to
//! a directory of their own, `oasis-seed signer` holds them behind a Unix socket, and
//! `serve --signer` signs through it. Real QUIC on 127.0.0.1, the real signer socket and the
//! real admin socket; the signer runs as a task of the test process (its socket is what
//! separates it, as it would separate two processes).

use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::pki::{self, NodeIdentity, RevokeTarget, Role, SeedAuthority};
use oasis_endpoint::{fetch, FetchOptions};
use oasis_seed::commands::StoreCommand;
use oasis_seed::keys::{daemon, Keys, SignerClient};
use oasis_seed::RunningSeed;
use oasis_testkit::{random_tree, snapshot, TestSeed, TreeSpec};
use std::path::Path;
use std::time::{Duration, Instant};

/// Statements live 10 s here, so the seed reuses one for at most a second.
const LATEST_TTL: Duration = Duration::from_secs(10);

async fn serve(data: &Path, signer: Option<&Path>) -> anyhow::Result<RunningSeed> {
    RunningSeed::start_with_limits(
        data,
        "127.0.0.1:0".parse()?,
        None,
        Default::default(),
        LATEST_TTL,
        signer,
    )
    .await
}

fn tree(dir: &Path, seed: u64) -> anyhow::Result<()> {
    random_tree(
        dir,
        seed,
        TreeSpec { small_files: 12, large_files: 1, large_size: 300_000, depth: 2 },
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_serves_publishes_renews_and_revokes_through_a_separate_signer() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let (data, keys) = (tmp.path().join("seed"), tmp.path().join("keys"));
    SeedAuthority::init(&data)?;
    let socket = tmp.path().join("signer.sock");

    // Before the split, DATA holds the keys: serving with a signer is refused, naming the way.
    let signer = daemon::start(&data, &socket, &[])?;
    let e = serve(&data, Some(&socket)).await.err().expect("DATA still holds the keys");
    assert!(format!("{e:#}").contains("split-keys"), "{e:#}");
    drop(signer);

    let written = SeedAuthority::split_keys(&data, &keys)?;
    let again = SeedAuthority::split_keys(&data, &tmp.path().join("again"));
    assert!(again.is_err(), "a second split finds no keys to move");
    assert!(written.iter().any(|p| p.ends_with(pki::CA_KEY_FILE)));
    for f in [pki::CA_KEY_FILE, pki::MANIFEST_KEY_FILE, pki::ISSUED_FILE] {
        assert!(!data.join(f).exists(), "{f} is still on the serving side");
    }
    // Without a signer the serving side cannot sign at all.
    let e = serve(&data, None).await.err().expect("no keys, no signer");
    assert!(format!("{e:#}").contains(pki::CA_KEY_FILE), "{e:#}");

    // Another seed's signer is refused at start.
    let other = tmp.path().join("other");
    SeedAuthority::init(&other)?;
    let foreign = daemon::start(&other, &tmp.path().join("other.sock"), &[])?;
    let e = serve(&data, Some(&foreign.socket)).await.err().expect("another seed's keys");
    assert!(format!("{e:#}").contains("another seed"), "{e:#}");

    let signer = daemon::start(&keys, &socket, &[])?;
    let running = serve(&data, Some(&socket)).await?;
    let auth = SeedAuthority::load(&keys)?;
    let seed = TestSeed::from_parts(running, auth, tmp.path());

    // Publishing goes through the running seed's admin socket, which has the signer sign.
    let v1 = tmp.path().join("v1");
    tree(&v1, 1)?;
    let publish = StoreCommand::Publish {
        name: "base".into(),
        version: "1".into(),
        kind: oasis_core::manifest::LayerKind::Base,
        chunking: Default::default(),
        src_dir: v1.clone(),
    };
    let assign = StoreCommand::Assign {
        site: "test".into(),
        layer: "base@1".into(),
        window: None,
        available: true,
    };
    let d = data.clone();
    tokio::task::spawn_blocking(move || {
        oasis_seed::admin::forward(&d, &publish, None)?;
        oasis_seed::admin::forward(&d, &assign, None)
    })
    .await??;

    // An endpoint fetches "latest": the manifest and the statement both verify against trust.pem.
    let state = seed.enroll(Role::Endpoint, "desk")?;
    let into = tmp.path().join("root");
    let opts = FetchOptions {
        state_dir: state.clone(),
        sources: vec![seed.seed.addr],
        name: "base".into(),
        version: None,
        into: into.clone(),
        streams: 4,
        progress: false,
    };
    let report = fetch(&opts).await?;
    assert_eq!(snapshot(&into), snapshot(&v1));
    let latest = report.latest.expect("a statement for latest");
    assert!(!latest.stale && latest.version == "1", "{latest:?}");

    // Renewal reaches the CA in the signer: a fresh certificate is refused as not due, by the CA.
    let id = NodeIdentity::load(&state)?;
    let (cert, csr) = id.renewal_request()?;
    let endpoint = net::client_endpoint(&id, &TransportOptions::default())?;
    let client = Client::connect(&endpoint, seed.seed.addr, &[Role::Seed]).await?;
    let e = client.renew(cert.into(), csr.into()).await.expect_err("not due");
    assert!(format!("{e:#}").contains("not due"), "{e:#}");
    client.close();

    // `revoke` on the keys host: the serving seed refuses the endpoint within seconds.
    let t0 = Instant::now();
    seed.auth.revoke(&RevokeTarget::Name { name: "desk".into(), role: None })?;
    let refused = loop {
        let client = Client::connect(&endpoint, seed.seed.addr, &[Role::Seed]).await;
        let asked = match client {
            Ok(c) => c.layers().await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = asked {
            assert!(format!("{e:#}").contains("revoked"), "{e:#}");
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still served 10 s after the revocation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("revoked at the keys host, refused by the serving seed after {refused:?}");

    // The signer stopped: no statement can be signed, so a fetch of latest goes on with the
    // seed's own word for it, reported unconfirmed with the reason; the seed stays up.
    drop(signer);
    tokio::time::sleep(LATEST_TTL / 10 + Duration::from_millis(100)).await;
    let other_ep = seed.enroll(Role::Endpoint, "kiosk")?;
    let unconfirmed =
        FetchOptions { state_dir: other_ep.clone(), into: tmp.path().join("k"), ..opts.clone() };
    let latest = fetch(&unconfirmed).await?.latest.expect("a fetch of latest reports on it");
    assert!(!latest.signed && latest.note.contains("signer"), "{latest:?}");
    let pinned = FetchOptions {
        state_dir: other_ep,
        version: Some("1".into()),
        into: tmp.path().join("k1"),
        ..opts.clone()
    };
    fetch(&pinned).await?;
    assert_eq!(snapshot(&tmp.path().join("k1")), snapshot(&v1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signer_signs_only_what_its_keys_vouch_for() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let v1 = seed.base().join("v1");
    tree(&v1, 2)?;
    seed.publish("base", "1", &v1)?;
    let keys = seed.base().join("keys");
    // The seed keeps serving with its loaded keys; the split copies them for this signer.
    std::fs::create_dir_all(&keys)?;
    for f in [pki::TRUST_FILE, pki::CA_CERT_FILE, pki::CA_KEY_FILE, pki::MANIFEST_KEY_FILE] {
        std::fs::copy(seed.data().join(f), keys.join(f))?;
    }
    let socket = seed.base().join("s.sock");
    let _signer = daemon::start(&keys, &socket, &[])?;
    let trust = seed.auth.trust().clone();
    let client =
        tokio::task::spawn_blocking(move || SignerClient::connect(&socket, trust)).await??;
    let root = seed.seed.store.manifest_bytes("base", Some("1"))?.expect("published");

    let (c, r) = (std::sync::Arc::new(client), root.clone());
    let c2 = c.clone();
    let statement =
        tokio::task::spawn_blocking(move || c2.latest(&r, Duration::from_secs(60))).await??;
    let latest = oasis_core::manifest::Latest::open(&statement, seed.auth.trust().manifest_key())?;
    assert_eq!((latest.version.as_str(), latest.expires - latest.issued), ("1", 60));

    // A root the manifest key never signed gets no statement, and garbage is not signed.
    let mut forged = root.to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let c2 = c.clone();
    let e = tokio::task::spawn_blocking(move || c2.latest(&forged, Duration::from_secs(60)))
        .await?
        .expect_err("a root with a broken signature");
    assert!(e.to_string().contains("root to vouch for"), "{e}");
    let c2 = c.clone();
    let e = tokio::task::spawn_blocking(move || c2.root_signer().sign_root(b"not a root"))
        .await?
        .expect_err("garbage");
    assert!(e.contains("does not decode"), "{e}");
    let c2 = c.clone();
    let e = tokio::task::spawn_blocking(move || c2.latest(&[], Duration::from_secs(100 * 86_400)))
        .await?
        .expect_err("a lifetime over 30 days");
    assert!(e.to_string().contains("latest_ttl"), "{e}");
    Ok(())
}
