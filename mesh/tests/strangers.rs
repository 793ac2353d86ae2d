//! The mesh is closed to strangers. A libp2p node that joins a reflector's mesh without proving
//! an enrolled certificate on the hello exchange is given nothing, not even the site's
//! inventory, and is disconnected; an enrolled node that does the exchange, on the same
//! reflector in the same run, gets its gossip.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use oasis_core::gossip::{Body, GossipMsg, InventoryRecord, MAX_MESSAGE_BYTES};
use oasis_mesh::admission::HelloCodec;
use oasis_mesh::libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use oasis_mesh::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use oasis_mesh::libp2p::{identity::Keypair, noise, request_response, tcp, yamux, Swarm};
use oasis_mesh::{binding, MeshConfig};

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "oasis_mesh::libp2p::swarm::derive_prelude")]
struct Raw {
    gossipsub: gossipsub::Behaviour,
    exchange: request_response::Behaviour<HelloCodec>,
}

fn raw_node(key: Keypair) -> Swarm<Raw> {
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
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), cfg).unwrap();
            Raw { gossipsub, exchange: oasis_mesh::admission::exchange() }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// What a visitor got.
#[derive(Debug, Default)]
struct Visit {
    /// Gossip messages received, all topics.
    messages: usize,
    /// Of them, on the site's inventory topic.
    inventory: usize,
    /// The reflector closed the connection.
    disconnected: bool,
}

/// Joins the mesh at `target` as a raw node of key `key` subscribed to the mesh topic and
/// lyon's inventory topic, for `stay`. With `hello`, it asks and answers the hello exchange
/// with it; without, it stays silent on it, as a node of another implementation would.
async fn visit(
    target: oasis_mesh::libp2p::Multiaddr,
    key: Keypair,
    hello: Option<Vec<u8>>,
    stay: Duration,
) -> Visit {
    let mut raw = raw_node(key);
    let inventory = IdentTopic::new(oasis_mesh::inventory_topic("lyon"));
    raw.behaviour_mut().gossipsub.subscribe(&IdentTopic::new(oasis_mesh::TOPIC)).unwrap();
    raw.behaviour_mut().gossipsub.subscribe(&inventory).unwrap();
    raw.dial(target).unwrap();
    let mut got = Visit::default();
    let deadline = tokio::time::Instant::now() + stay;
    loop {
        let ev = tokio::select! {
            ev = raw.select_next_some() => ev,
            _ = tokio::time::sleep_until(deadline) => return got,
        };
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if let Some(h) = &hello {
                    raw.behaviour_mut().exchange.send_request(&peer_id, h.clone());
                }
            }
            SwarmEvent::ConnectionClosed { num_established: 0, .. } => got.disconnected = true,
            SwarmEvent::Behaviour(RawEvent::Exchange(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) => {
                if let Some(h) = &hello {
                    let _ = raw.behaviour_mut().exchange.send_response(channel, h.clone());
                }
            }
            SwarmEvent::Behaviour(RawEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                got.messages += 1;
                if message.topic == inventory.hash() {
                    got.inventory += 1;
                }
            }
            _ => {}
        }
    }
}

fn device(n: u64) -> InventoryRecord {
    InventoryRecord {
        name: format!("pc-{n}"),
        role: "endpoint".into(),
        site: "lyon".into(),
        agent_version: "1".into(),
        macs: vec![[2, 0, 0, 0, 0, n as u8]],
        addrs: vec!["10.0.0.9/24".into()],
        wake_to: None,
        relay: None,
        held: Vec::new(),
        last_seen: 1_700_000_000 + n,
        reported_by: "target".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_nothing_and_is_disconnected_while_an_enrolled_node_is_served() {
    let net = Net::new();
    let (id_t, state_t) = net.enroll("target", "lyon");
    let config = MeshConfig {
        heartbeat: Duration::from_millis(300),
        batch_interval: Duration::from_millis(100),
        ..loopback_config(vec![], false)
    };
    let (target, task) = start(&id_t, &state_t, config).await;
    let addr = addr_of(&target, false).await;
    // The site's inventory changes all along: every new record is published to the topic.
    let announcer = {
        let target = target.clone();
        tokio::spawn(async move {
            for n in 0.. {
                target.announce_devices(vec![device(n)]);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // An enrolled reflector of lyon, raw, doing the exchange: the control that gossip flows.
    let (id_f, _state_f) = net.enroll("friend", "lyon");
    let key = Keypair::generate_ed25519();
    let hello = binding::sign_binding(&id_f, &key.public().to_peer_id()).unwrap();
    let hello = GossipMsg { seq: 0, body: Body::Hello(hello) }.encode();
    let friend = tokio::spawn(visit(addr.clone(), key, Some(hello), Duration::from_secs(14)));
    // Strangers: one with no certificate at all, one that sends a hello signed by a key of its
    // own (not an enrolled node's).
    let stranger = tokio::spawn(visit(
        addr.clone(),
        Keypair::generate_ed25519(),
        None,
        Duration::from_secs(14),
    ));
    let forged = {
        let other = oasis_core::pki::SeedAuthority::init(&net.dir.path().join("other-ca")).unwrap();
        let id = other
            .enroll(
                oasis_core::pki::Role::Reflector,
                "forger",
                Some("lyon"),
                &net.dir.path().join("forger"),
                false,
            )
            .unwrap();
        // Signed for some other peer id: it cannot bind the visitor's either way.
        let h =
            binding::sign_binding(&id, &Keypair::generate_ed25519().public().to_peer_id()).unwrap();
        let bytes = GossipMsg { seq: 0, body: Body::Hello(h) }.encode();
        let key = Keypair::generate_ed25519();
        tokio::spawn(visit(addr.clone(), key, Some(bytes), Duration::from_secs(14)))
    };
    let (friend, stranger, forged) =
        (friend.await.unwrap(), stranger.await.unwrap(), forged.await.unwrap());
    announcer.abort();
    println!("friend {friend:?}\nstranger {stranger:?}\nforged {forged:?}");
    assert!(friend.messages > 0 && friend.inventory > 0, "the enrolled node is served: {friend:?}");
    assert!(!friend.disconnected, "the enrolled node stays: {friend:?}");
    for (who, v) in [("stranger", &stranger), ("forged hello", &forged)] {
        assert_eq!(v.messages, 0, "{who} received gossip: {v:?}");
        assert!(v.disconnected, "{who} was not disconnected: {v:?}");
    }
    let m = target.metrics();
    assert!(m.dropped("not_admitted") >= 1, "the silent stranger is dropped at the grace's end");
    assert!(m.dropped("bad_binding") >= 1, "the forged hello is refused");
    assert!(!task.is_finished());
    target.shutdown();
    task.await.unwrap().unwrap();
}
