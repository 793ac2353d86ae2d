//! Twenty real reflector meshes on 127.0.0.1 (no multicast on loopback: bootstrap addresses).

mod common;

use std::time::{Duration, Instant};

use common::*;
use oasis_core::gossip::Load;
use oasis_mesh::{peer_ref, Holding};

const N: usize = 20;
const LAYER: [u8; 32] = [0x42; 32];
const CHUNKS: u32 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reflectors_availability_and_expiry() {
    let net = Net::new();
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    // Node 0 is the hub of a star (nodes 1..=10); nodes 11.. form a chain hanging off node 10.
    // Odd nodes bootstrap over QUIC, even ones over TCP.
    for i in 0..N {
        let (id, state) = net.enroll(&format!("r{i}"), "lyon");
        let bootstrap = match i {
            0 => vec![],
            1..=10 => vec![addr_of(&handles[0], i % 2 == 1).await],
            _ => vec![addr_of(&handles[i - 1], i % 2 == 1).await],
        };
        let (h, t) = start(&id, &state, loopback_config(bootstrap, true)).await;
        h.update_load(Load { active_transfers: i as u32, ..Load::default() });
        handles.push(h);
        tasks.push(t);
    }

    // Every node sees the 19 others (hellos verified, heartbeats flowing).
    let handles_ref = &handles;
    let settled = wait_for(Duration::from_secs(15), || async move {
        for h in handles_ref {
            if h.view().await.unwrap().len() < N - 1 {
                return false;
            }
        }
        true
    })
    .await;
    let mut sizes = Vec::new();
    for h in &handles {
        sizes.push(h.view().await.unwrap().len());
    }
    let settled = settled.unwrap_or_else(|| panic!("mesh did not settle; view sizes {sizes:?}"));
    println!("mesh of {N} settled in {settled:?}");

    for h in &handles {
        h.learn_layer(LAYER, CHUNKS);
    }
    // Give the learn_layer commands a moment (they are processed in order with queries anyway).
    tokio::time::sleep(Duration::from_millis(50)).await;

    // A layer still arriving: chunks 0..=9 held.
    let announcer = 15;
    let me = peer_ref(&handles[announcer].peer_id());
    let mut bitmap = vec![0u8; CHUNKS.div_ceil(8) as usize];
    bitmap[0] = 0xff;
    bitmap[1] = 0b11;
    handles[announcer].announce_layer(LAYER, CHUNKS, Holding::Partial(bitmap));
    let me_ref = &me;
    let reached = wait_for(Duration::from_secs(5), || async move {
        for (i, h) in handles_ref.iter().enumerate() {
            if i == announcer {
                continue;
            }
            let v = h.view().await.unwrap();
            if !v.holders(&LAYER, 9).contains(me_ref) || v.holders(&LAYER, 10).contains(me_ref) {
                return false;
            }
        }
        true
    })
    .await;
    let reached = reached.expect("availability did not reach every node within 5 s");
    println!(
        "PROPAGATION: new layer availability reached all {} other nodes in {:?} (announce batch {:?})",
        N - 1,
        reached,
        oasis_mesh::MeshConfig::default().batch_interval
    );

    // The layer completes: one more update.
    let t1 = Instant::now();
    handles[announcer].announce_layer(LAYER, CHUNKS, Holding::Complete);
    let complete = wait_for(Duration::from_secs(5), || async move {
        for (i, h) in handles_ref.iter().enumerate() {
            if i != announcer && !h.view().await.unwrap().holders(&LAYER, 99).contains(me_ref) {
                return false;
            }
        }
        true
    })
    .await
    .expect("completion did not propagate");
    println!("PROPAGATION: completion reached all nodes in {complete:?} ({:?})", t1.elapsed());

    // Holders are ordered least loaded first: node 3 (load 3) before node 15 (load 15).
    handles[3].announce_layer(LAYER, CHUNKS, Holding::Complete);
    let h3 = peer_ref(&handles[3].peer_id());
    let h3_ref = &h3;
    wait_for(Duration::from_secs(5), || async move {
        handles_ref[0].view().await.unwrap().holders(&LAYER, 50)
            == vec![h3_ref.clone(), me_ref.clone()]
    })
    .await
    .expect("holders not ordered by load");
    let peers = handles[0].holders(LAYER, 50).await.unwrap();
    assert_eq!(peers[0].peer_id, handles[3].peer_id());
    assert_eq!(peers[0].site.as_deref(), Some("lyon"));

    // Kademlia provider records: node 0 finds the announcers.
    let providers = handles[19].find_providers(LAYER).await.unwrap();
    println!("kad providers of the layer seen from node 19: {}", providers.len());

    // Rendezvous: every node of the site picks the same WAN fetcher for a chunk.
    // Each node decides with its own view, as a reflector's siblings do.
    let chunk = oasis_core::ChunkId::of(b"some chunk");
    let mut chosen = Vec::new();
    for h in &handles {
        let mut members = h.view().await.unwrap().live_peers("lyon");
        members.push(peer_ref(&h.peer_id()));
        let spread = oasis_core::site_wan::WanSharing::Spread;
        chosen.push(oasis_core::site_wan::site_fetcher(spread, "lyon", &chunk, &members));
    }
    assert!(chosen[0].is_some());
    assert!(chosen.iter().all(|c| *c == chosen[0]), "one WAN fetcher per chunk: {chosen:?}");

    // Kill node 15 (abort, no goodbye): it vanishes from every view within 3 heartbeats.
    let killed = tasks[announcer].abort_handle();
    let t_kill = Instant::now();
    killed.abort();
    let gone = wait_for(Duration::from_secs(8), || async move {
        for (i, h) in handles_ref.iter().enumerate() {
            if i == announcer {
                continue;
            }
            let v = h.view().await.unwrap();
            if v.peer(me_ref).is_some() || v.holders(&LAYER, 0).contains(me_ref) {
                return false;
            }
        }
        true
    })
    .await
    .expect("killed node did not expire within 8 s");
    let bound = oasis_mesh::MeshConfig::default().heartbeat * 3;
    println!("EXPIRY: killed node vanished from all views {gone:?} after the kill (bound {bound:?} + one batch)");
    assert!(t_kill.elapsed() <= bound + Duration::from_millis(1500), "expiry took {gone:?}");
    assert!(handles[0].metrics().received("availability") > 0);

    for h in &handles {
        h.shutdown();
    }
}
