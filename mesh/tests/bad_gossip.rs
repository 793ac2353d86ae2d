//! Gossip that does not decode, is oversized, claims impossible chunks, or comes from a peer
//! that is not an enrolled node is dropped and counted, never a crash.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use oasis_core::gossip::{Body, GossipMsg, Held, LayerAvailability, MAX_MESSAGE_BYTES};
use oasis_core::pki::{Role, SeedAuthority};
use oasis_mesh::libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use oasis_mesh::libp2p::swarm::SwarmEvent;
use oasis_mesh::libp2p::{identity::Keypair, noise, tcp, yamux, Swarm};
use oasis_mesh::{binding, peer_ref, Holding, MeshConfig};

const LAYER: [u8; 32] = [0x17; 32];

fn raw_swarm(key: Keypair) -> Swarm<gossipsub::Behaviour> {
    oasis_mesh::libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(100))
                .max_transmit_size(4 * MAX_MESSAGE_BYTES)
                .build()
                .unwrap();
            gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), cfg).unwrap()
        })
        .unwrap()
        .build()
}

/// Polls the swarm for `d`, returning whether `stop` matched an event first.
async fn pump(
    swarm: &mut Swarm<gossipsub::Behaviour>,
    d: Duration,
    mut stop: impl FnMut(&SwarmEvent<gossipsub::Event>) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => if stop(&ev) { return true },
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// A raw gossipsub peer with a fresh key, connected to `target` and subscribed to the mesh
/// topic, once the target's own subscription to it is seen. (The target also joins its site's
/// inventory topic, which may be announced first: waiting for the mesh topic itself keeps a
/// publish from finding no subscriber.)
async fn joined_raw(
    target: &oasis_mesh::MeshHandle,
    addr: oasis_mesh::libp2p::Multiaddr,
) -> (Swarm<gossipsub::Behaviour>, oasis_mesh::libp2p::PeerId, IdentTopic) {
    let key = Keypair::generate_ed25519();
    let raw_id = key.public().to_peer_id();
    let mut raw = raw_swarm(key);
    let topic = IdentTopic::new(oasis_mesh::TOPIC);
    raw.behaviour_mut().subscribe(&topic).unwrap();
    raw.dial(addr).unwrap();
    let (target_id, topic_hash) = (target.peer_id(), topic.hash());
    assert!(
        pump(&mut raw, Duration::from_secs(10), |ev| matches!(ev,
            SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, topic })
                if *peer_id == target_id && *topic == topic_hash))
        .await,
        "target never subscribed to the availability topic"
    );
    (raw, raw_id, topic)
}

fn availability(seq: u64, chunk_count: u32, held: Held) -> Vec<u8> {
    GossipMsg {
        seq,
        body: Body::Availability(vec![LayerAvailability { layer: LAYER, chunk_count, held }]),
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gossip_is_dropped_and_counted() {
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    let (target, target_task) = start(&id_t, &state_t, loopback_config(vec![], false)).await;
    target.learn_layer(LAYER, 10);
    let target_addr = addr_of(&target, false).await;

    // An enrolled raw peer that speaks gossipsub directly and sends crafted messages.
    let (id_raw, _state_raw) = net.enroll("raw", "lyon");
    let (mut raw, raw_id, topic) = joined_raw(&target, target_addr.clone()).await;
    let publish = |raw: &mut Swarm<gossipsub::Behaviour>, data: Vec<u8>| {
        raw.behaviour_mut().publish(topic.clone(), data).expect("publish");
    };

    // Before its hello: unverified.
    publish(&mut raw, availability(1, 10, Held::Complete));
    pump(&mut raw, Duration::from_millis(300), |_| false).await;
    let hello = binding::sign_binding(&id_raw, &raw_id).unwrap();
    publish(&mut raw, GossipMsg { seq: 2, body: Body::Hello(hello) }.encode());
    publish(&mut raw, b"\x01definitely not postcard \xff\xff\xff\xff\xff\xff\xff\xff".to_vec());
    publish(&mut raw, vec![0x63; 10]); // unknown format byte
    let mut big = vec![oasis_core::gossip::GOSSIP_FORMAT];
    big.resize(MAX_MESSAGE_BYTES + 1000, 0);
    publish(&mut raw, big);
    // Claims 12 chunks of a 10-chunk layer.
    publish(&mut raw, availability(3, 12, Held::Complete));
    // Bits beyond the layer's 10 chunks (bit 11 set).
    publish(&mut raw, availability(4, 10, Held::Bits { first: 0, bits: vec![0, 0b1000] }));
    // And one honest message, which must be applied.
    publish(&mut raw, availability(5, 10, Held::Bits { first: 0, bits: vec![0b1, 0] }));

    let m = target.metrics().clone();
    let ok = wait_for(Duration::from_secs(5), || {
        let m = m.clone();
        async move {
            m.dropped("unverified") >= 1
                && m.dropped("undecodable") >= 2
                && m.dropped("oversized") >= 1
                && m.dropped("impossible_chunks") >= 2
        }
    });
    tokio::select! {
        r = ok => { r.unwrap_or_else(|| panic!(
            "drops not counted: unverified {} undecodable {} oversized {} impossible {}",
            m.dropped("unverified"), m.dropped("undecodable"), m.dropped("oversized"),
            m.dropped("impossible_chunks"))); }
        _ = pump(&mut raw, Duration::from_secs(6), |_| false) => panic!("timeout"),
    }
    // Keep the raw swarm polled while we look at the view.
    let view = tokio::select! {
        v = async {
            wait_for(Duration::from_secs(3), || async {
                target.view().await.unwrap().holders(&LAYER, 0) == vec![peer_ref(&raw_id)]
            }).await.expect("honest record from the raw peer not applied");
            target.view().await.unwrap()
        } => v,
        _ = pump(&mut raw, Duration::from_secs(5), |_| false) => panic!("timeout"),
    };
    assert!(view.holders(&LAYER, 1).is_empty());
    println!(
        "dropped: unverified {} undecodable {} oversized {} impossible_chunks {}",
        m.dropped("unverified"),
        m.dropped("undecodable"),
        m.dropped("oversized"),
        m.dropped("impossible_chunks")
    );

    // A real mesh node whose certificate comes from another CA: its direct hello fails and the
    // connection is closed; it never enters the view.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue_auth = SeedAuthority::init(&rogue_dir.path().join("seed")).unwrap();
    let rogue_state = rogue_dir.path().join("rogue");
    let rogue_id =
        rogue_auth.enroll(Role::Reflector, "rogue", Some("lyon"), &rogue_state, false).unwrap();
    let (rogue, rogue_task) =
        start(&rogue_id, &rogue_state, loopback_config(vec![target_addr.clone()], false)).await;
    rogue.announce_layer(LAYER, 10, Holding::Complete);
    let rogue_ref = peer_ref(&rogue.peer_id());
    let t = Instant::now();
    let m2 = m.clone();
    wait_for(Duration::from_secs(8), || {
        let m = m2.clone();
        async move { m.dropped("bad_binding") >= 1 }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "rogue not refused: bad_binding {} unverified {}",
            m.dropped("bad_binding"),
            m.dropped("unverified")
        )
    });
    println!("rogue refused after {:?}: bad_binding {}", t.elapsed(), m.dropped("bad_binding"));
    let v = target.view().await.unwrap();
    assert!(v.peer(&rogue_ref).is_none());
    assert!(!v.holders(&LAYER, 5).contains(&rogue_ref));
    // The target is alive and well.
    assert!(!target_task.is_finished());
    target.shutdown();
    rogue.shutdown();
    target_task.await.unwrap().unwrap();
    rogue_task.await.unwrap().unwrap();
}

/// A neighbour that floods hellos (each signed anew, so each needs the full check) gets a
/// bounded number checked, off the swarm task; the target keeps gossiping with an honest
/// sibling meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_flood_is_rate_limited_and_the_mesh_keeps_working() {
    const FLOOD: u64 = 400;
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    let (target, target_task) = start(&id_t, &state_t, loopback_config(vec![], false)).await;
    let target_addr = addr_of(&target, false).await;
    let (id_raw, _) = net.enroll("flooder", "lyon");
    let (mut raw, raw_id, topic) = joined_raw(&target, target_addr.clone()).await;
    for seq in 0..FLOOD {
        // Valid, and a new signature each time: each takes the whole check. (Invalid ones would
        // get the flooder graylisted first: see the next test.)
        let hello = binding::sign_binding(&id_raw, &raw_id).unwrap();
        let msg = GossipMsg { seq: seq + 1, body: Body::Hello(hello) }.encode();
        raw.behaviour_mut().publish(topic.clone(), msg).expect("publish");
    }
    let m = target.metrics().clone();
    let checked = |m: &oasis_mesh::MeshMetrics| m.received("hello");
    let counted = |m: &oasis_mesh::MeshMetrics| {
        checked(m) + m.dropped("hello_busy") + m.dropped("hello_rate")
    };
    let all_seen = tokio::select! {
        r = wait_for(Duration::from_secs(8), || {
            let m = m.clone();
            async move { counted(&m) >= FLOOD }
        }) => r,
        _ = pump(&mut raw, Duration::from_secs(9), |_| false) => None,
    };
    println!(
        "flood of {FLOOD} hellos: checked {}, ignored as busy {}, over the rate {}",
        checked(&m),
        m.dropped("hello_busy"),
        m.dropped("hello_rate")
    );
    assert!(all_seen.is_some(), "not every flooded hello was accounted for: {}", counted(&m));
    assert!(
        checked(&m) <= u64::from(oasis_mesh::HELLOS_PER_NEIGHBOUR),
        "more hellos checked than one neighbour may start in a window"
    );
    assert!(m.dropped("hello_rate") > 0);

    // The target's task keeps working: a sibling that joins now learns what it announces.
    let (id_b, state_b) = net.enroll("sibling", "lyon");
    let (sibling, sibling_task) =
        start(&id_b, &state_b, loopback_config(vec![target_addr.clone()], false)).await;
    sibling.learn_layer(LAYER, 10);
    target.announce_layer(LAYER, 10, Holding::Complete);
    let target_ref = peer_ref(&target.peer_id());
    let learned = tokio::select! {
        r = wait_for(Duration::from_secs(8), || async {
            sibling.view().await.unwrap().holders(&LAYER, 3).contains(&target_ref)
        }) => r,
        _ = pump(&mut raw, Duration::from_secs(9), |_| false) => None,
    };
    assert!(learned.is_some(), "the sibling never learned the target's layer");
    assert!(!target_task.is_finished());
    target.shutdown();
    sibling.shutdown();
    target_task.await.unwrap().unwrap();
    sibling_task.await.unwrap().unwrap();
}

/// A flooder that comes back under many peer ids from one address gains nothing: hello checks
/// are limited per source address as well as per neighbour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_from_many_peer_ids_of_one_address_are_limited_together() {
    const PEERS: u64 = 8;
    const EACH: u64 = 30; // under the per-neighbour limit, so only the address limit applies
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    let (target, target_task) = start(&id_t, &state_t, loopback_config(vec![], false)).await;
    let target_addr = addr_of(&target, false).await;
    assert!(EACH < u64::from(oasis_mesh::HELLOS_PER_NEIGHBOUR));
    assert!(PEERS * EACH > u64::from(oasis_mesh::HELLOS_PER_ADDRESS));
    let mut flooders = Vec::new();
    for i in 0..PEERS {
        // A certificate of its own each, so that every check ends in a counted hello (one
        // certificate binds only a few peer ids).
        let (id, _) = net.enroll(&format!("flooder-{i}"), "lyon");
        let (mut raw, raw_id, topic) = joined_raw(&target, target_addr.clone()).await;
        flooders.push(tokio::spawn(async move {
            for seq in 0..EACH {
                let hello = binding::sign_binding(&id, &raw_id).unwrap();
                let msg = GossipMsg { seq: seq + 1, body: Body::Hello(hello) }.encode();
                raw.behaviour_mut().publish(topic.clone(), msg).expect("publish");
                // Slow enough that the checks at once (8) are not what turns them away.
                pump(&mut raw, Duration::from_millis(5), |_| false).await;
            }
            pump(&mut raw, Duration::from_secs(3), |_| false).await;
        }));
    }
    for f in flooders {
        f.await.unwrap();
    }
    let m = target.metrics().clone();
    println!(
        "{} hellos from {PEERS} peer ids of 127.0.0.1: checked {}, over the address rate {}, \
         over the neighbour rate {}, busy {}",
        PEERS * EACH,
        m.received("hello"),
        m.dropped("hello_rate_address"),
        m.dropped("hello_rate"),
        m.dropped("hello_busy")
    );
    assert!(
        m.received("hello") <= u64::from(oasis_mesh::HELLOS_PER_ADDRESS),
        "more hellos checked than one address may start in a window"
    );
    assert!(m.dropped("hello_rate_address") > 0, "the address limit never applied");
    assert_eq!(m.dropped("hello_rate"), 0, "no single neighbour went over its own limit");
    assert!(!target_task.is_finished());
    target.shutdown();
    target_task.await.unwrap().unwrap();
}

/// A neighbour that keeps passing on gossip this node rejects is graylisted by gossipsub's peer
/// scoring: after about nine rejections its messages are no longer taken at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_invalid_gossip_is_graylisted() {
    const SENT: u64 = 40;
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    let (target, target_task) = start(&id_t, &state_t, loopback_config(vec![], false)).await;
    let target_addr = addr_of(&target, false).await;
    let (mut raw, _, topic) = joined_raw(&target, target_addr).await;
    for i in 0..SENT {
        let garbage = format!("\x01not postcard {i} \u{ff}\u{ff}\u{ff}").into_bytes();
        raw.behaviour_mut().publish(topic.clone(), garbage).expect("publish");
        pump(&mut raw, Duration::from_millis(20), |_| false).await;
    }
    pump(&mut raw, Duration::from_millis(500), |_| false).await;
    let taken = target.metrics().dropped("undecodable");
    println!("{SENT} undecodable messages sent, {taken} taken before the sender was graylisted");
    assert!(taken >= 1, "none reached the application");
    assert!(taken < SENT / 2, "{taken} of {SENT} were still taken: the sender was not graylisted");
    assert!(!target_task.is_finished());
    target.shutdown();
    target_task.await.unwrap().unwrap();
}

/// One peer id holds at most a few connections to a mesh node: further dials are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_holds_at_most_a_few_connections() {
    use oasis_mesh::libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    const DIALS: u32 = 10;
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    let (target, target_task) = start(&id_t, &state_t, loopback_config(vec![], false)).await;
    let target_addr = addr_of(&target, false).await;
    let target_id = target.peer_id();
    let mut raw = raw_swarm(Keypair::generate_ed25519());
    for _ in 0..DIALS {
        let opts = DialOpts::peer_id(target_id)
            .addresses(vec![target_addr.clone()])
            .condition(PeerCondition::Always)
            .build();
        raw.dial(opts).unwrap();
    }
    let (mut open, mut refused) = (0i64, 0u32);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    loop {
        tokio::select! {
            ev = raw.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == target_id => {
                    open += 1
                }
                SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == target_id => {
                    open -= 1;
                    refused += 1;
                }
                SwarmEvent::OutgoingConnectionError { .. } => refused += 1,
                _ => {}
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    println!("{DIALS} dials: {open} connections open at the end, {refused} refused or closed");
    let cap = i64::from(oasis_mesh::MAX_CONNECTIONS_PER_PEER);
    assert!(open >= 1 && open <= cap, "{open} connections open from one peer id");
    assert!(refused >= DIALS - cap as u32, "only {refused} of {DIALS} dials were refused");
    assert!(!target_task.is_finished());
    target.shutdown();
    target_task.await.unwrap().unwrap();
}

#[test]
fn peer_id_is_stable_and_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let a = oasis_mesh::peer_id_of_state(dir.path()).unwrap();
    let b = oasis_mesh::peer_id_of_state(dir.path()).unwrap();
    assert_eq!(a, b);
    let mode =
        std::fs::metadata(dir.path().join(oasis_mesh::P2P_KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Joins the target's mesh as a raw gossipsub peer with a fresh key, says hello with `id`'s
/// certificate, and keeps the connection polled for `stay`.
async fn raw_hello(
    id: oasis_core::pki::NodeIdentity,
    target: oasis_mesh::libp2p::Multiaddr,
    target_id: oasis_mesh::libp2p::PeerId,
    stay: Duration,
) {
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let mut raw = raw_swarm(key);
    let topic = IdentTopic::new(oasis_mesh::TOPIC);
    raw.behaviour_mut().subscribe(&topic).unwrap();
    raw.dial(target).unwrap();
    let hash = topic.hash();
    let subscribed = pump(&mut raw, Duration::from_secs(10), |ev| {
        matches!(ev, SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, topic })
            if *peer_id == target_id && *topic == hash)
    })
    .await;
    assert!(subscribed, "target never subscribed");
    let hello = binding::sign_binding(&id, &me).unwrap();
    raw.behaviour_mut()
        .publish(topic, GossipMsg { seq: 1, body: Body::Hello(hello) }.encode())
        .expect("publish");
    pump(&mut raw, stay, |_| false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_binds_at_most_a_few_peer_ids_until_silent_ones_are_pruned() {
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    // A hello period of 3 x 1 s: a peer silent for 6 s is gone. Long enough that every raw
    // peer below has said hello before the first is pruned, even on a loaded machine.
    let config = oasis_mesh::MeshConfig {
        heartbeat: Duration::from_secs(1),
        reannounce_heartbeats: 1,
        ..loopback_config(vec![], false)
    };
    let (target, target_task) = start(&id_t, &state_t, config).await;
    let target_addr = addr_of(&target, false).await;
    let (id_raw, _state_raw) = net.enroll("one-key", "lyon");
    let n = oasis_mesh::MAX_BINDINGS_PER_NODE + 2;
    let peers: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(raw_hello(
                id_raw.clone(),
                target_addr.clone(),
                target.peer_id(),
                Duration::from_secs(3),
            ))
        })
        .collect();
    let m = target.metrics().clone();
    let refused = wait_for(Duration::from_secs(8), || {
        let m = m.clone();
        async move { m.dropped("too_many_bindings") >= 2 }
    })
    .await;
    let verified = m.received("hello");
    assert!(
        refused.is_some(),
        "{n} peer ids under one certificate: too_many_bindings {}, hellos accepted {verified}",
        m.dropped("too_many_bindings")
    );
    assert_eq!(verified as usize, oasis_mesh::MAX_BINDINGS_PER_NODE, "the first ones are in");
    for p in peers {
        p.await.unwrap();
    }
    // They said nothing for two hello periods: pruned, so the certificate binds a new peer id.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (refused, hellos) = (m.dropped("too_many_bindings"), m.received("hello"));
    raw_hello(id_raw.clone(), target_addr.clone(), target.peer_id(), Duration::from_secs(1)).await;
    assert_eq!(m.dropped("too_many_bindings"), refused, "no refusal once the others are gone");
    assert_eq!(m.received("hello"), hellos + 1);
    assert!(!target_task.is_finished());
    target.shutdown();
    target_task.await.unwrap().unwrap();
}

/// What a raw peer that joined `target`'s topics received within `d`: gossip messages, and
/// whether the connection was closed.
async fn listen_for(
    raw: &mut Swarm<gossipsub::Behaviour>,
    target_id: oasis_mesh::libp2p::PeerId,
    d: Duration,
) -> (usize, bool) {
    let (mut messages, mut closed) = (0, false);
    pump(raw, d, |ev| match ev {
        SwarmEvent::Behaviour(gossipsub::Event::Message { .. }) => {
            messages += 1;
            false
        }
        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
            if *peer_id == target_id =>
        {
            closed = true;
            true
        }
        _ => false,
    })
    .await;
    (messages, closed)
}

/// A stranger (a libp2p peer with no enrolled certificate) that finds a mesh node and
/// subscribes to its topics, the site's inventory included, is sent nothing, and is
/// disconnected once `stranger_timeout` has passed. A neighbour that proves a certificate on
/// the same node is sent the gossip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_sent_no_gossip_and_is_disconnected() {
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    let config = MeshConfig {
        heartbeat: Duration::from_millis(200),
        stranger_timeout: Duration::from_secs(3),
        ..loopback_config(vec![], false)
    };
    let (target, target_task) = start(&id_t, &state_t, config).await;
    target.learn_layer(LAYER, 10);
    let target_addr = addr_of(&target, false).await;
    let target_id = target.peer_id();
    let strangers = target.metrics().dropped("stranger");

    let (mut raw, _, _) = joined_raw(&target, target_addr.clone()).await;
    let inventory = IdentTopic::new(oasis_mesh::inventory_topic("lyon"));
    raw.behaviour_mut().subscribe(&inventory).unwrap();
    let joined = Instant::now();
    // Ten heartbeats and more go by: none reaches the stranger.
    let (messages, closed) = listen_for(&mut raw, target_id, Duration::from_millis(2500)).await;
    assert_eq!((messages, closed), (0, false), "the stranger got gossip, or was let go too early");
    let (messages, closed) = listen_for(&mut raw, target_id, Duration::from_secs(5)).await;
    assert_eq!(messages, 0);
    assert!(closed, "the stranger is still connected after the timeout");
    eprintln!("stranger disconnected {:.1} s after it joined", joined.elapsed().as_secs_f64());
    assert!(target.metrics().dropped("stranger") > strangers);

    // The same raw peer with a certificate (a gossip hello) is sent heartbeats.
    let (id_raw, _) = net.enroll("raw-enrolled", "lyon");
    let (mut raw, raw_id, topic) = joined_raw(&target, target_addr).await;
    let hello = binding::sign_binding(&id_raw, &raw_id).unwrap();
    raw.behaviour_mut()
        .publish(topic, GossipMsg { seq: 1, body: Body::Hello(hello) }.encode())
        .expect("publish");
    let (messages, closed) = listen_for(&mut raw, target_id, Duration::from_secs(3)).await;
    assert!(
        messages > 0 && !closed,
        "an enrolled neighbour got {messages} messages (closed {closed})"
    );
    target.shutdown();
    let _ = target_task.await;
}
