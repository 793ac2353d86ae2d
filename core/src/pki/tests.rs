use super::*;
use std::net::SocketAddr;

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn role_display_and_parse() {
    for role in Role::ALL {
        assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
    }
    assert_eq!("reflector".parse::<Role>().unwrap(), Role::Reflector);
    let err = "router".parse::<Role>().unwrap_err().to_string();
    assert!(err.contains("\"router\""), "{err}");
    assert_eq!(serde_json::to_string(&Role::Endpoint).unwrap(), "\"endpoint\"");
}

#[test]
fn init_then_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let auth = SeedAuthority::init(&data).unwrap();
    for f in
        [TRUST_FILE, CA_CERT_FILE, CA_KEY_FILE, MANIFEST_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE]
    {
        assert!(data.join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    for f in [CA_KEY_FILE, MANIFEST_KEY_FILE, NODE_KEY_FILE] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    // No temp files left behind.
    let leftovers: Vec<_> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let loaded = SeedAuthority::load(&data).unwrap();
    assert_eq!(loaded.trust(), auth.trust());
    assert_eq!(loaded.signing_key().to_bytes(), auth.signing_key().to_bytes());
    assert_eq!(TrustRoot::load(&data.join(TRUST_FILE)).unwrap(), *auth.trust());

    // The manifest key signs what the trust root verifies.
    use ed25519_dalek::{Signer, Verifier};
    let sig = loaded.signing_key().sign(b"manifest");
    auth.trust().manifest_key().verify(b"manifest", &sig).unwrap();

    // The seed's own identity.
    let seed = loaded.node_identity().unwrap();
    assert_eq!(*seed.info(), PeerInfo { role: Role::Seed, name: "seed".into(), site: None });
    assert_eq!(seed.trust(), auth.trust());

    // A loaded authority can issue certificates the trust root accepts.
    let node = loaded.issue(Role::Endpoint, "ep1", None).unwrap();
    node.check("issued cert", "issued key").unwrap();
}

#[test]
fn init_named_uses_given_seed_name() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init_named(dir.path(), "origin-1", Some("hq")).unwrap();
    let me = auth.node_identity().unwrap();
    assert_eq!(me.info().name, "origin-1");
    assert_eq!(me.info().site.as_deref(), Some("hq"));
    assert_eq!(me.info().role, Role::Seed);
}

#[test]
fn init_twice_refuses_and_overwrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    SeedAuthority::init(dir.path()).unwrap();
    let before: Vec<Vec<u8>> = [TRUST_FILE, CA_KEY_FILE, MANIFEST_KEY_FILE, NODE_KEY_FILE]
        .iter()
        .map(|f| fs::read(dir.path().join(f)).unwrap())
        .collect();
    let err = SeedAuthority::init(dir.path()).unwrap_err();
    assert!(matches!(err, IdentityError::AlreadyInitialized { .. }), "{err:?}");
    assert!(err.to_string().contains("already holds a root of trust"), "{err}");
    let after: Vec<Vec<u8>> = [TRUST_FILE, CA_KEY_FILE, MANIFEST_KEY_FILE, NODE_KEY_FILE]
        .iter()
        .map(|f| fs::read(dir.path().join(f)).unwrap())
        .collect();
    assert_eq!(before, after);

    // A single leftover secret also counts as an existing root of trust.
    let other = tempfile::tempdir().unwrap();
    fs::write(other.path().join(CA_KEY_FILE), b"x").unwrap();
    let err = SeedAuthority::init(other.path()).unwrap_err();
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    assert_eq!(fs::read(other.path().join(CA_KEY_FILE)).unwrap(), b"x");
}

#[test]
fn load_uninitialized_names_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = SeedAuthority::load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(TRUST_FILE) && msg.contains("oasis-seed init"), "{msg}");

    SeedAuthority::init(dir.path()).unwrap();
    fs::remove_file(dir.path().join(MANIFEST_KEY_FILE)).unwrap();
    let msg = SeedAuthority::load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains(MANIFEST_KEY_FILE) && msg.contains("oasis-seed init"), "{msg}");

    let msg = NodeIdentity::load(&dir.path().join("nope")).unwrap_err().to_string();
    assert!(msg.contains(TRUST_FILE) && msg.contains("enroll"), "{msg}");
}

#[test]
fn load_detects_mismatched_files() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    SeedAuthority::init(a.path()).unwrap();
    SeedAuthority::init(b.path()).unwrap();
    // manifest.key from another seed.
    fs::copy(b.path().join(MANIFEST_KEY_FILE), a.path().join(MANIFEST_KEY_FILE)).unwrap();
    let msg = SeedAuthority::load(a.path()).unwrap_err().to_string();
    assert!(msg.contains(MANIFEST_KEY_FILE) && msg.contains("does not match"), "{msg}");

    // A node state dir whose trust.pem comes from another seed.
    fs::copy(b.path().join(TRUST_FILE), a.path().join(TRUST_FILE)).unwrap();
    let msg = NodeIdentity::load(a.path()).unwrap_err().to_string();
    assert!(msg.contains(NODE_CERT_FILE) && msg.contains("not accepted by the CA"), "{msg}");

    // node.key from another node.
    fs::copy(b.path().join(NODE_CERT_FILE), a.path().join(NODE_CERT_FILE)).unwrap();
    let msg = NodeIdentity::load(a.path()).unwrap_err().to_string();
    assert!(msg.contains(NODE_KEY_FILE) && msg.contains("does not match"), "{msg}");
}

#[test]
fn enroll_writes_files_with_private_key_mode() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    let out = dir.path().join("nodes").join("r1");
    let issued = auth.enroll(Role::Reflector, "r1", Some("paris"), &out, false).unwrap();
    for f in [NODE_CERT_FILE, NODE_KEY_FILE, TRUST_FILE] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    assert_eq!(mode(&out.join(NODE_KEY_FILE)), 0o600);
    assert_eq!(
        fs::read_to_string(out.join(TRUST_FILE)).unwrap(),
        fs::read_to_string(dir.path().join("seed").join(TRUST_FILE)).unwrap()
    );

    let loaded = NodeIdentity::load(&out).unwrap();
    assert_eq!(loaded.info(), issued.info());
    assert_eq!(loaded.cert_der(), issued.cert_der());
    assert_eq!(loaded.trust(), auth.trust());

    // Second enroll into the same dir refuses without force and leaves the key alone.
    let key_before = fs::read(out.join(NODE_KEY_FILE)).unwrap();
    let err = auth.enroll(Role::Reflector, "r1", Some("paris"), &out, false).unwrap_err();
    assert!(matches!(err, IdentityError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(fs::read(out.join(NODE_KEY_FILE)).unwrap(), key_before);

    // With force it is replaced.
    let again = auth.enroll(Role::Endpoint, "e1", None, &out, true).unwrap();
    assert_ne!(fs::read(out.join(NODE_KEY_FILE)).unwrap(), key_before);
    #[cfg(unix)]
    assert_eq!(mode(&out.join(NODE_KEY_FILE)), 0o600);
    assert_eq!(NodeIdentity::load(&out).unwrap().info(), again.info());
}

#[test]
fn peer_info_from_cert_returns_what_was_issued() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(dir.path()).unwrap();
    for (role, name, site) in [
        (Role::Reflector, "refl-01", Some("site.a")),
        (Role::Endpoint, "host_7", None),
        (Role::Seed, "S", Some("x")),
    ] {
        let node = auth.issue(role, name, site).unwrap();
        let info = peer_info_from_cert(node.cert_der()).unwrap();
        assert_eq!(info, PeerInfo { role, name: name.into(), site: site.map(Into::into) });
        assert_eq!(node.info(), &info);
    }
    // The CA certificate is not a node certificate.
    let err = peer_info_from_cert(auth.trust().ca_der()).unwrap_err();
    assert!(err.to_string().contains("not an Oasis node certificate"), "{err}");
    // Garbage is refused.
    assert!(peer_info_from_cert(&CertificateDer::from(vec![1u8, 2, 3])).is_err());
}

#[test]
fn peer_info_needs_oasis_uri() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![NODE_SERVER_NAME.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let err = peer_info_from_cert(cert.der()).unwrap_err();
    assert!(err.to_string().contains("urn:oasis:node:"), "{err}");
}

#[test]
fn bad_names_refused() {
    for good in ["a", "r1", "Paris-2.east_1", &"x".repeat(64)] {
        validate_node_name("node name", good).unwrap();
    }
    for bad in ["", ".hidden", "a:b", "a/b", "a b", "é", &"x".repeat(65), "a\n"] {
        let err = validate_node_name("node name", bad).unwrap_err();
        assert!(matches!(err, NameError::InvalidName { .. }), "{bad:?}: {err:?}");
        assert!(err.to_string().starts_with("invalid node name"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(dir.path()).unwrap();
    assert!(auth.issue(Role::Endpoint, "bad:name", None).is_err());
    let err = auth.issue(Role::Endpoint, "ok", Some("bad site")).unwrap_err();
    assert!(err.to_string().contains("invalid site"), "{err}");
    let out = dir.path().join("out");
    assert!(auth.enroll(Role::Endpoint, "../x", None, &out, false).is_err());
    assert!(!out.join(NODE_KEY_FILE).exists());
    let other = tempfile::tempdir().unwrap();
    assert!(SeedAuthority::init_named(other.path(), ".seed", None).is_err());
    assert!(!other.path().join(TRUST_FILE).exists());
}

// --- QUIC handshakes -------------------------------------------------------------------

fn quinn_server(id: &NodeIdentity) -> quinn::Endpoint {
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(id.rustls_server_config().unwrap())
            .unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn quinn_client_config(crypto: Arc<rustls::ClientConfig>) -> quinn::ClientConfig {
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ))
}

/// Connects with `client` to a server endpoint; returns (client side, server side) results.
async fn handshake(
    server: &quinn::Endpoint,
    client: quinn::ClientConfig,
) -> (
    Result<quinn::Connection, quinn::ConnectionError>,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let addr: SocketAddr = server.local_addr().unwrap();
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            let incoming = server.accept().await.expect("server endpoint closed");
            incoming.await
        })
    };
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let client_side = endpoint.connect_with(client, addr, NODE_SERVER_NAME).unwrap().await;
    // In TLS 1.3 the client finishes before the server has checked its certificate, so a
    // refused client may see its connection closed only afterwards: wait for that.
    let client_side = match client_side {
        Ok(conn) => match tokio::time::timeout(Duration::from_millis(500), conn.closed()).await {
            Ok(reason) => Err(reason),
            Err(_) => Ok(conn),
        },
        Err(e) => Err(e),
    };
    let server_side = tokio::time::timeout(Duration::from_secs(10), accept)
        .await
        .expect("server handshake timed out")
        .unwrap();
    (client_side, server_side)
}

#[tokio::test]
async fn quic_handshake_between_reflector_and_seed() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    let seed = auth.node_identity().unwrap();
    let enrolled =
        auth.enroll(Role::Reflector, "r1", Some("lyon"), &dir.path().join("r1"), false).unwrap();
    // Use the identity as a reflector would: loaded from its state dir.
    let refl = NodeIdentity::load(&dir.path().join("r1")).unwrap();
    assert_eq!(refl.info(), enrolled.info());

    let server = quinn_server(&seed);
    let client = quinn_client_config(refl.rustls_client_config().unwrap());
    let (client_side, server_side) = handshake(&server, client).await;
    let client_conn = client_side.expect("client handshake");
    let server_conn = server_side.expect("server handshake");

    assert_eq!(peer_info(&client_conn).unwrap(), *seed.info());
    assert_eq!(
        peer_info(&server_conn).unwrap(),
        PeerInfo { role: Role::Reflector, name: "r1".into(), site: Some("lyon".into()) }
    );
    let alpn = server_conn
        .handshake_data()
        .unwrap()
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap()
        .protocol;
    assert_eq!(alpn.as_deref(), Some(ALPN));

    // And data flows.
    let (mut send, _recv) = client_conn.open_bi().await.unwrap();
    send.write_all(b"hello").await.unwrap();
    send.finish().unwrap();
    let (_s, mut recv) = server_conn.accept_bi().await.unwrap();
    assert_eq!(recv.read_to_end(100).await.unwrap(), b"hello");
    client_conn.close(0u32.into(), b"done");
}

#[tokio::test]
async fn quic_client_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    let rogue_auth = SeedAuthority::init(&dir.path().join("rogue")).unwrap();
    let seed = auth.node_identity().unwrap();
    // The rogue client trusts the real CA (so it accepts the seed) but its certificate comes
    // from the other CA: the seed must refuse it.
    let mut rogue = rogue_auth.issue(Role::Reflector, "r1", None).unwrap();
    rogue.trust = auth.trust().clone();

    let server = quinn_server(&seed);
    let client = quinn_client_config(rogue.rustls_client_config().unwrap());
    let (client_side, server_side) = handshake(&server, client).await;
    let err = server_side.expect_err("server accepted a client from another CA");
    assert!(
        matches!(err, quinn::ConnectionError::TransportError(_)),
        "unexpected server error: {err:?}"
    );
    client_side.expect_err("client connection survived being refused");
}

#[tokio::test]
async fn quic_client_without_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(dir.path()).unwrap();
    let seed = auth.node_identity().unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(auth.trust().ca_der().clone()).unwrap();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];

    let server = quinn_server(&seed);
    let (client_side, server_side) =
        handshake(&server, quinn_client_config(Arc::new(crypto))).await;
    server_side.expect_err("server accepted a client without certificate");
    client_side.expect_err("client connection survived being refused");
}

#[tokio::test]
async fn quic_server_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    let rogue_auth = SeedAuthority::init(&dir.path().join("rogue")).unwrap();
    let mut rogue_seed = rogue_auth.node_identity().unwrap();
    // The rogue server trusts our CA for clients but presents a certificate of its own CA.
    rogue_seed.trust = auth.trust().clone();
    let refl = auth.issue(Role::Reflector, "r1", None).unwrap();

    let server = quinn_server(&rogue_seed);
    let client = quinn_client_config(refl.rustls_client_config().unwrap());
    let (client_side, server_side) = handshake(&server, client).await;
    let err = client_side.expect_err("client accepted a server from another CA");
    assert!(
        matches!(err, quinn::ConnectionError::TransportError(_)),
        "unexpected client error: {err:?}"
    );
    server_side.expect_err("server side survived");
}

#[test]
fn revoking_records_it_and_signs_a_list_that_checks_only_against_our_ca() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    let a = auth.enroll(Role::Endpoint, "a", None, &dir.path().join("a"), false).unwrap();
    let b = auth.enroll(Role::Endpoint, "b", None, &dir.path().join("b"), false).unwrap();
    let crl_path = dir.path().join("seed").join(REVOKED_FILE);
    assert!(!crl_path.exists(), "no list before anything is revoked");

    // Nothing matches: an error naming it, and nothing written.
    let err = auth.revoke(&RevokeTarget::Name { name: "c".into(), role: None }).unwrap_err();
    assert!(err.to_string().contains("\"c\""), "{err}");
    assert!(!crl_path.exists());
    let err = auth.revoke(&RevokeTarget::Name { name: "a".into(), role: Some(Role::Reflector) });
    assert!(err.is_err(), "a is an endpoint, not a reflector");
    // The seed's own certificate is never revoked this way.
    assert!(auth.revoke(&RevokeTarget::Name { name: "seed".into(), role: None }).is_err());

    let revoked = auth.revoke(&RevokeTarget::Name { name: "a".into(), role: None }).unwrap();
    assert_eq!(revoked.len(), 1);
    let list = load_revocation_file(&crl_path, auth.trust()).unwrap().unwrap();
    assert_eq!((list.number(), list.len()), (1, 1));
    assert!(list.revokes(a.cert_der()) && !list.revokes(b.cert_der()));
    // Revoking what is revoked already is refused; by serial it works for the next one.
    assert!(auth.revoke(&RevokeTarget::Name { name: "a".into(), role: None }).is_err());
    let serial = cert_serial(b.cert_der()).unwrap();
    auth.revoke(&RevokeTarget::Serial(serial.to_uppercase())).unwrap();
    let list2 = load_revocation_file(&crl_path, auth.trust()).unwrap().unwrap();
    assert_eq!((list2.number(), list2.len()), (2, 2));

    let issued = auth.issued().unwrap();
    let names: Vec<_> =
        issued.iter().map(|c| (c.name.as_str(), c.role, c.revoked_at.is_some())).collect();
    assert_eq!(
        names,
        [("seed", Role::Seed, false), ("a", Role::Endpoint, true), ("b", Role::Endpoint, true)]
    );

    // A list signed by another CA does not check, nor does a damaged one.
    let other = tempfile::tempdir().unwrap();
    let other = SeedAuthority::init(other.path()).unwrap();
    let foreign = RevocationList::from_der(list2.der(), other.trust()).unwrap_err();
    // Every seed's CA has the same name: the signature is what tells them apart.
    assert!(foreign.to_string().contains("signature does not verify with the CA"), "{foreign}");
    let mut bent = list2.der().to_vec();
    let last = bent.len() - 3;
    bent[last] ^= 0x55;
    let bad = RevocationList::from_der(&bent, auth.trust()).unwrap_err();
    assert!(bad.to_string().contains("revocation list"), "{bad}");

    // A node moves only to higher numbers: an older list replayed changes nothing.
    let held = Revocations::default();
    assert!(held.offer(list2.clone()));
    assert!(!held.offer(list.clone()), "an older list replaced a newer one");
    assert_eq!(held.number(), 2);
    assert!(held.revokes(b.cert_der()));
}

#[test]
fn a_certificate_the_register_never_saw_is_revoked_from_itself() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    // `issue` records nothing: as a certificate issued before the seed kept its register.
    let old = auth.issue(Role::Reflector, "old-box", Some("lyon")).unwrap();
    let by_name = auth.revoke(&RevokeTarget::Name { name: "old-box".into(), role: None });
    assert!(by_name.unwrap_err().to_string().contains("--cert"), "the error names the way out");

    let revoked = auth.revoke(&RevokeTarget::Cert(old.cert_der().to_vec())).unwrap();
    assert_eq!((revoked[0].name.as_str(), revoked[0].site.as_deref()), ("old-box", Some("lyon")));
    let list = load_revocation_file(&dir.path().join("seed").join(REVOKED_FILE), auth.trust());
    assert!(list.unwrap().unwrap().revokes(old.cert_der()));
    let again = auth.revoke(&RevokeTarget::Cert(old.cert_der().to_vec())).unwrap_err();
    assert!(again.to_string().contains("revoked already"), "{again}");

    let other_dir = tempfile::tempdir().unwrap();
    let other = SeedAuthority::init(other_dir.path()).unwrap();
    let foreign = other.issue(Role::Endpoint, "x", None).unwrap();
    let err = auth.revoke(&RevokeTarget::Cert(foreign.cert_der().to_vec())).unwrap_err();
    assert!(err.to_string().contains("not issued by this seed's CA"), "{err}");
}

#[test]
fn renewal_is_refused_before_half_the_lifetime_and_for_a_revoked_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let auth = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    let lifetime = Duration::from_secs(3600);
    let a =
        auth.enroll_for(Role::Endpoint, "a", None, &dir.path().join("a"), false, lifetime).unwrap();
    let (cert, csr) = a.renewal_request().unwrap();
    let err = auth.renew(&cert, &csr).unwrap_err().to_string();
    assert!(err.contains("not due") && err.contains("3600 s"), "{err}");
    let issued = auth.issued().unwrap().len();

    auth.revoke(&RevokeTarget::Name { name: "a".into(), role: None }).unwrap();
    let err = auth.renew(&cert, &csr).unwrap_err().to_string();
    assert!(err.contains("revoked"), "{err}");
    assert_eq!(auth.issued().unwrap().len(), issued, "a refused renewal issued a certificate");
}

#[test]
fn splitting_the_keys_moves_them_whole_and_finishes_a_split_cut_off_part_way() {
    let dir = tempfile::tempdir().unwrap();
    let (data, keys) = (dir.path().join("seed"), dir.path().join("keys"));
    let auth = SeedAuthority::init(&data).unwrap();
    auth.enroll(Role::Endpoint, "a", None, &dir.path().join("a"), false).unwrap();
    let written = SeedAuthority::split_keys(&data, &keys).unwrap();
    assert_eq!(written.len(), 5, "two keys, the register, trust.pem and ca.pem: {written:?}");
    for f in [CA_KEY_FILE, MANIFEST_KEY_FILE, ISSUED_FILE] {
        assert!(!data.join(f).exists() && keys.join(f).exists(), "{f}");
    }
    assert_eq!(mode(&keys.join(CA_KEY_FILE)), 0o600);
    let moved = SeedAuthority::load(&keys).unwrap();
    assert_eq!(moved.trust(), auth.trust());
    assert_eq!(moved.issued().unwrap().len(), 2, "the register moved with the CA key");
    let again = SeedAuthority::split_keys(&data, &dir.path().join("k2")).unwrap_err();
    assert!(again.to_string().contains("no CA key to move"), "{again}");

    // Cut off after the copy, with manifest.key not yet removed: running it again finishes.
    fs::copy(keys.join(MANIFEST_KEY_FILE), data.join(MANIFEST_KEY_FILE)).unwrap();
    assert!(SeedAuthority::split_keys(&data, &keys).unwrap().is_empty());
    assert!(!data.join(MANIFEST_KEY_FILE).exists());
    assert!(SeedAuthority::load(&keys).is_ok());
}
