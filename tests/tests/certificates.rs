//! Certificates with a real seed, real reflectors and real endpoints over QUIC on 127.0.0.1, and
//! real libp2p meshes. Revocation: a revoked endpoint is refused by the seed and by every
//! reflector of its site within seconds, its open connections are closed, a revoked reflector's
//! gossip is dropped by its siblings, the list crosses the mesh to a reflector cut off from the
//! seed, and enrolling a name again revokes the certificate it replaces. Renewal: endpoints
//! (through a reflector) and reflectors renew short-lived certificates before they expire and
//! keep working past the old ones' expiry.

use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::pki::{self, NodeIdentity, RevokeTarget, Role};
use oasis_testkit::{http_get, loopback_mesh, mesh_addr, settle, TestSeed};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// What a user would check first: can this node still talk to `addr`? Ok when a request is
/// answered, Err with the error text when the server refuses it.
async fn ask(state: &Path, addr: SocketAddr) -> Result<(), String> {
    let id = NodeIdentity::load(state).map_err(|e| e.to_string())?;
    let endpoint =
        net::client_endpoint(&id, &TransportOptions::default()).map_err(|e| e.to_string())?;
    let client = Client::connect(&endpoint, addr, &[Role::Seed, Role::Reflector])
        .await
        .map_err(|e| format!("{e:#}"))?;
    let r = client.layers().await.map(|_| ()).map_err(|e| format!("{e:#}"));
    client.close();
    r
}

/// Seconds from `t0` until `addr` refuses `state`'s node, polled; None if it never did within
/// `limit`.
async fn refused_after(
    state: &Path,
    addr: SocketAddr,
    t0: Instant,
    limit: Duration,
) -> Option<f64> {
    while t0.elapsed() < limit {
        if let Err(e) = ask(state, addr).await {
            assert!(e.contains("revoked"), "refused for another reason than revocation: {e}");
            return Some(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_endpoint_is_refused_by_the_seed_and_every_reflector_of_its_site_within_seconds(
) -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let r1 = seed.reflector("r1", |_| {}).await?;
    let r2 = seed.reflector("r2", |_| {}).await?;
    let bad = seed.enroll(Role::Endpoint, "stolen-laptop")?;
    let good = seed.enroll(Role::Endpoint, "desk")?;
    for addr in [seed.seed.addr, r1.addr, r2.addr] {
        ask(&bad, addr).await.map_err(anyhow::Error::msg)?;
    }
    // A connection open before the revocation is closed by it, not only new ones refused.
    let held = {
        let id = NodeIdentity::load(&bad)?;
        let endpoint = net::client_endpoint(&id, &TransportOptions::default())?;
        Client::connect(&endpoint, r1.addr, &[Role::Reflector]).await?
    };

    let t0 = Instant::now();
    let revoked =
        seed.auth.revoke(&RevokeTarget::Name { name: "stolen-laptop".into(), role: None })?;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].role, Role::Endpoint);

    let limit = Duration::from_secs(10);
    let at_seed = refused_after(&bad, seed.seed.addr, t0, limit).await;
    let at_r1 = refused_after(&bad, r1.addr, t0, limit).await;
    let at_r2 = refused_after(&bad, r2.addr, t0, limit).await;
    eprintln!("revoke to refusal: seed {at_seed:?} s, r1 {at_r1:?} s, r2 {at_r2:?} s");
    assert!(at_seed.is_some(), "the seed still serves the revoked endpoint after {limit:?}");
    assert!(at_r1.is_some(), "reflector r1 still serves the revoked endpoint after {limit:?}");
    assert!(at_r2.is_some(), "reflector r2 still serves the revoked endpoint after {limit:?}");
    let closed = held.connection().close_reason();
    assert!(
        closed.as_ref().is_some_and(|r| r.to_string().contains("revoked")),
        "the connection open before the revocation is not closed as revoked: {closed:?}"
    );

    // Everyone else is served as before.
    for addr in [seed.seed.addr, r1.addr, r2.addr] {
        ask(&good, addr).await.map_err(anyhow::Error::msg)?;
    }
    // What an operator sees on each reflector.
    for r in [&r1, &r2] {
        let text = http_get(r.metrics_addr.expect("metrics on"), "/metrics").await?;
        let metric = |name| oasis_core::metrics::sample_value(&text, name);
        assert_eq!(metric("oasis_revocation_list_number"), Some(1.0), "{text}");
        assert!(metric("oasis_revoked_peers_total").is_some_and(|n| n >= 1.0), "{text}");
        assert!(metric("oasis_certificate_expiry_seconds").is_some_and(|t| t > 1.7e9), "{text}");
    }
    // A reflector keeps the list it adopted, for a restart cut off from the seed.
    let saved = seed.base().join("node-r1").join(pki::REVOKED_FILE);
    let list = pki::load_revocation_file(&saved, seed.auth.trust())?;
    let bad_cert = NodeIdentity::load(&bad)?;
    assert!(list.is_some_and(|l| l.revokes(bad_cert.cert_der())), "r1 saved no list revoking it");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_a_name_again_revokes_the_certificate_it_replaces() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let old = seed.enroll(Role::Endpoint, "kiosk")?;
    ask(&old, seed.seed.addr).await.map_err(anyhow::Error::msg)?;
    // The same device enrolled again (a new disk, a leaked key): a new identity elsewhere.
    let new = seed.base().join("kiosk-again");
    seed.auth.enroll(Role::Endpoint, "kiosk", Some("test"), &new, false)?;

    let refused =
        refused_after(&old, seed.seed.addr, Instant::now(), Duration::from_secs(10)).await;
    assert!(refused.is_some(), "the replaced certificate is still accepted");
    ask(&new, seed.seed.addr).await.map_err(anyhow::Error::msg)?;

    let kiosk: Vec<_> = seed.auth.issued()?.into_iter().filter(|c| c.name == "kiosk").collect();
    assert_eq!(kiosk.len(), 2, "both certificates are in the register: {kiosk:?}");
    assert!(kiosk[0].revoked_at.is_some() && kiosk[1].revoked_at.is_none(), "{kiosk:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_reflectors_gossip_is_dropped_and_the_list_crosses_the_mesh() -> anyhow::Result<()>
{
    const SITE: &str = "lyon";
    let heartbeat = Duration::from_millis(500);
    let seed = TestSeed::start().await?;
    // `cut`: an upstream nobody answers at, so the list can reach it only over the mesh.
    let start = |name: &'static str, boot: Vec<_>, cut: bool| {
        let seed = &seed;
        async move {
            seed.enroll_in_site(Role::Reflector, name, SITE)?;
            seed.reflector(name, |c| {
                c.mesh = Some(loopback_mesh(heartbeat, boot));
                c.assignments_poll = Duration::ZERO;
                if cut {
                    c.upstream = "127.0.0.1:9".into();
                }
            })
            .await
        }
    };
    let r0 = start("r0", vec![], false).await?;
    let boot = vec![mesh_addr(&r0, false).await?];
    let rogue = start("rogue", boot.clone(), false).await?;
    let cut = start("cut-off", boot, true).await?;
    let refls = [r0, rogue, cut];
    settle(&refls, SITE, 2).await?;
    let [r0, rogue, cut] = refls;
    let rogue_id = oasis_mesh::peer_ref(&rogue.mesh().expect("mesh on").peer_id());

    let t0 = Instant::now();
    seed.auth.revoke(&RevokeTarget::Name { name: "rogue".into(), role: Some(Role::Reflector) })?;
    let sees_rogue = |r: &oasis_reflector::RunningReflector| {
        let (mesh, id) = (r.mesh().expect("mesh on").clone(), rogue_id.clone());
        async move { mesh.view().await.map(|v| v.live_peers(SITE).contains(&id)) }
    };
    let saved = seed.base().join("node-cut-off").join(pki::REVOKED_FILE);
    let rogue_cert = NodeIdentity::load(&seed.base().join("node-rogue"))?;
    let mut dropped_at = [None, None];
    let mut cut_has_list = None;
    while t0.elapsed() < Duration::from_secs(10) {
        for (i, r) in [&r0, &cut].into_iter().enumerate() {
            if dropped_at[i].is_none() && !sees_rogue(r).await? {
                dropped_at[i] = Some(t0.elapsed().as_secs_f64());
            }
        }
        if cut_has_list.is_none()
            && pki::load_revocation_file(&saved, seed.auth.trust())?
                .is_some_and(|l| l.revokes(rogue_cert.cert_der()))
        {
            cut_has_list = Some(t0.elapsed().as_secs_f64());
        }
        if dropped_at.iter().all(Option::is_some) && cut_has_list.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "revoke to rogue dropped: r0 {:?} s, cut-off {:?} s; list at cut-off {cut_has_list:?} s",
        dropped_at[0], dropped_at[1]
    );
    assert!(cut_has_list.is_some(), "the reflector cut off from the seed never got the list");
    assert!(dropped_at.iter().all(Option::is_some), "a sibling still takes the rogue's gossip");
    // The rogue keeps sending heartbeats and hellos: they stay dropped.
    tokio::time::sleep(heartbeat * 4).await;
    for r in [&r0, &cut] {
        assert!(!sees_rogue(r).await?, "the rogue came back into a sibling's view");
    }
    let text = http_get(r0.metrics_addr.expect("metrics on"), "/metrics").await?;
    let dropped =
        oasis_core::metrics::sample_value(&text, "oasis_gossip_dropped_total{reason=\"revoked\"}");
    assert!(dropped.is_some_and(|n| n >= 1.0), "no revoked drop counted:\n{text}");
    Ok(())
}

/// Copies a node's state directory as it is now (its certificate and key) into `to`.
fn copy_identity(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for f in [pki::NODE_CERT_FILE, pki::NODE_KEY_FILE, pki::TRUST_FILE] {
        std::fs::copy(from.join(f), to.join(f))?;
    }
    Ok(())
}

/// Sleeps until `unix` seconds (plus a margin) have passed.
async fn sleep_past(unix: i64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let until = Duration::from_secs(unix.max(0) as u64) + Duration::from_millis(1200);
    tokio::time::sleep(until.saturating_sub(now)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_renews_its_certificate_through_a_reflector_before_it_expires(
) -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    let spec =
        oasis_testkit::TreeSpec { small_files: 10, large_files: 1, large_size: 1 << 20, depth: 2 };
    oasis_testkit::random_tree(&src, 5, spec)?;
    seed.publish("base", "1", &src)?;
    let refl = seed.reflector("r1", |_| {}).await?;
    let state = seed.base().join("roamer");
    let lifetime = Duration::from_secs(12);
    seed.auth.enroll_for(Role::Endpoint, "roamer", Some("test"), &state, false, lifetime)?;
    let old = NodeIdentity::load(&state)?;
    let stale = seed.base().join("roamer-old-copy");
    copy_identity(&state, &stale)?;
    assert!(!old.renewal_due(), "a fresh certificate is not due for renewal");

    // Two thirds of its life gone (12 s, due under 4 s left, counted in whole seconds): the
    // next run renews it over its source, a reflector.
    sleep_past(old.expires_at() - 4).await;
    assert!(NodeIdentity::load(&state)?.renewal_due());
    let into = seed.base().join("roamer-root");
    let opts = oasis_endpoint::FetchOptions {
        state_dir: state.clone(),
        sources: vec![refl.addr],
        name: "base".into(),
        version: Some("1".into()),
        into,
        streams: 4,
        progress: false,
    };
    oasis_endpoint::fetch(&opts).await?;
    let renewed = NodeIdentity::load(&state)?;
    assert_ne!(renewed.cert_der(), old.cert_der(), "node.pem was not renewed");
    assert!(renewed.expires_at() > old.expires_at());
    assert_eq!(renewed.info(), old.info());
    let roamer: Vec<_> = seed.auth.issued()?.into_iter().filter(|c| c.name == "roamer").collect();
    assert_eq!(roamer.len(), 2, "{roamer:?}");
    assert!(roamer.iter().all(|c| c.revoked_at.is_none()), "a renewal revokes nothing: {roamer:?}");

    // Past the old certificate's expiry: the renewed node works, the old certificate does not.
    sleep_past(old.expires_at()).await;
    for addr in [refl.addr, seed.seed.addr] {
        ask(&state, addr).await.map_err(anyhow::Error::msg)?;
        let e = ask(&stale, addr).await.expect_err("an expired certificate was accepted");
        assert!(e.to_lowercase().contains("expired"), "{e}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_renews_its_own_certificate_and_serves_past_the_old_ones_expiry(
) -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let state = seed.base().join("node-short");
    let lifetime = Duration::from_secs(12);
    seed.auth.enroll_for(Role::Reflector, "short", Some("test"), &state, false, lifetime)?;
    let old = NodeIdentity::load(&state)?;
    let refl = seed.reflector("short", |_| {}).await?;
    sleep_past(old.expires_at()).await;
    let renewed = NodeIdentity::load(&state)?;
    assert!(renewed.expires_at() > old.expires_at(), "the reflector did not renew");
    // A new connection sees the renewed certificate: the old one would fail the handshake.
    let ep = seed.enroll(Role::Endpoint, "visitor")?;
    ask(&ep, refl.addr).await.map_err(anyhow::Error::msg)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_gives_up_a_source_whose_certificate_is_revoked() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("src");
    let spec = oasis_testkit::TreeSpec { small_files: 10, large_files: 0, large_size: 0, depth: 2 };
    oasis_testkit::random_tree(&src, 9, spec)?;
    seed.publish("base", "1", &src)?;
    let stolen = seed.reflector("stolen-box", |_| {}).await?;
    let state = seed.enroll(Role::Endpoint, "desk")?;
    let fetch_from = |sources: Vec<SocketAddr>, into: &str| oasis_endpoint::FetchOptions {
        state_dir: state.clone(),
        sources,
        name: "base".into(),
        version: Some("1".into()),
        into: seed.base().join(into),
        streams: 4,
        progress: false,
    };
    // The box serves the layer from its cache, as any reflector would.
    let before = oasis_endpoint::fetch(&fetch_from(vec![stolen.addr], "a")).await?;
    assert_eq!(before.source, stolen.addr.to_string());

    seed.auth.revoke(&RevokeTarget::Name { name: "stolen-box".into(), role: None })?;
    // The seed holds the new list within a second; the endpoint learns it from any source.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    oasis_endpoint::fetch(&fetch_from(vec![seed.seed.addr], "b")).await?;
    assert!(state.join(pki::REVOKED_FILE).exists(), "the endpoint kept no list");

    let after = oasis_endpoint::fetch(&fetch_from(vec![stolen.addr, seed.seed.addr], "c")).await?;
    assert_eq!(after.source, seed.seed.addr.to_string(), "fetched from the revoked box");
    let problems = format!("{:?}", after.source_problems);
    assert!(problems.contains("revoked"), "{problems}");
    Ok(())
}
