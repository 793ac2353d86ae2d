//! A node that stops mid-transfer tells its peers at once, over a WAN with latency too.

use oasis_core::net::{self, ChunkReply, Client, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::policy::TrafficClass;
use oasis_endpoint::{fetch, FetchOptions};
use oasis_testkit::{random_tree, wait_until, TestSeed, TreeSpec};
use oasis_wanem::{EmulatorThread, WanSpec};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn stored_len(r: &ChunkReply) -> u64 {
    match r {
        ChunkReply::Chunk(c) => c.data.len() as u64,
        ChunkReply::Missing(_) => 0,
    }
}

/// Over a 40 ms link the seed's congestion window is full for most of a bulk transfer. A
/// connection closed in that state must still send CONNECTION_CLOSE; otherwise the reflector
/// holds a dead upstream until its answer timeout (10 s) and every miss waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seed_stopping_mid_transfer_over_a_wan_tells_its_reflector_at_once() -> anyhow::Result<()>
{
    let ts = TestSeed::start().await?;
    let src = ts.base().join("src");
    random_tree(
        &src,
        41,
        TreeSpec { small_files: 20, large_files: 4, large_size: 16 << 20, depth: 2 },
    )?;
    let published = ts.publish("big", "1", &src)?;
    let spec: WanSpec = "40ms,0%,100Mbit,seed=3".parse()?;
    let wan = EmulatorThread::start("127.0.0.1:0".parse()?, ts.seed.addr, spec)?;
    let wan_addr = wan.local_addr().to_string();
    let refl = ts.reflector("r-wan", |c| c.upstream = wan_addr).await?;

    let state = ts.enroll(Role::Endpoint, "ep")?;
    let o = FetchOptions {
        state_dir: state,
        sources: vec![refl.addr],
        name: "big".into(),
        version: Some("1".into()),
        into: ts.base().join("root"),
        streams: 8,
        progress: false,
    };
    let transfer = tokio::spawn(async move { fetch(&o).await });
    assert!(
        wait_until(Duration::from_secs(20), || refl.stats.upstream_bytes.get()
            > published.stored_bytes / 8)
        .await,
        "the transfer did not get going"
    );
    let (seed, _base, _tmp) = ts.into_parts();
    seed.shutdown();
    let stopped = Instant::now();
    let told = wait_until(Duration::from_secs(3), || !refl.upstream_connected()).await;
    let after = stopped.elapsed();
    eprintln!(
        "reflector saw the seed's close after {:.0} ms, {} of {} B pulled",
        after.as_secs_f64() * 1000.0,
        refl.stats.upstream_bytes.get(),
        published.stored_bytes
    );
    assert!(told, "the reflector still holds the stopped seed's connection after 3 s");
    assert!(
        refl.stats.upstream_bytes.get() < published.stored_bytes,
        "the seed stopped mid-transfer"
    );
    transfer.abort();
    drop(seed);
    refl.stop().await;
    Ok(())
}

/// The same at the protocol level, where the seed always has answer bytes queued: six
/// connections each ask for every chunk of a 64 MiB layer, so each is held back by congestion
/// control or pacing at almost any moment. Each must hear the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_closed_while_sending_flat_out_still_tell_their_peers() -> anyhow::Result<()> {
    const PULLERS: usize = 6;
    let ts = TestSeed::start().await?;
    let src = ts.base().join("src");
    random_tree(
        &src,
        43,
        TreeSpec { small_files: 0, large_files: 4, large_size: 16 << 20, depth: 1 },
    )?;
    let published = ts.publish("bulk", "1", &src)?;
    let seed_id = NodeIdentity::load(&ts.data())?;
    let key = seed_id.trust().manifest_key();
    let manifest = ts.seed.store.open_manifest("bulk", Some("1"), key)?.expect("published");
    let ids: Vec<_> = manifest.manifest.unique_chunks().iter().map(|c| c.id).collect();
    let spec: WanSpec = "40ms,0%,100Mbit,seed=5".parse()?;
    let wan = EmulatorThread::start("127.0.0.1:0".parse()?, ts.seed.addr, spec)?;
    // Receive windows larger than the layer, so that nothing but congestion control and pacing
    // hold the seed back.
    let opts = TransportOptions {
        stream_receive_window: 256 << 20,
        receive_window: 256 << 20,
        ..TransportOptions::default()
    };

    let mut pullers = Vec::new();
    for i in 0..PULLERS {
        let identity = NodeIdentity::load(&ts.enroll(Role::Reflector, &format!("puller-{i}"))?)?;
        let ep = net::client_endpoint(&identity, &opts)?;
        let client = Client::connect(&ep, wan.local_addr(), net::accept::CONTENT).await?;
        let replies = client.chunks_in(ids.clone(), TrafficClass::Foreground).await?;
        let got = Arc::new(AtomicU64::new(0));
        pullers.push((ep, client, replies, got));
    }
    let mut tasks = Vec::new();
    for (ep, client, mut replies, got) in pullers {
        let counter = got.clone();
        let task = tokio::spawn(async move {
            // Reads until the answer fails (the close arrives) or ends.
            let end = loop {
                match replies.next().await {
                    Ok(Some(r)) => counter.fetch_add(stored_len(&r), Ordering::Relaxed),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                };
            };
            (end, client.connection().close_reason(), ep)
        });
        tasks.push((task, got));
    }
    let started = |t: &[(tokio::task::JoinHandle<_>, Arc<AtomicU64>)]| {
        t.iter().all(|(_, got)| got.load(Ordering::Relaxed) >= 2 << 20)
    };
    assert!(
        wait_until(Duration::from_secs(20), || started(&tasks)).await,
        "the answers did not get going"
    );

    let (seed, _base, _tmp) = ts.into_parts();
    seed.shutdown();
    let stopped = Instant::now();
    for (i, (task, got)) in tasks.into_iter().enumerate() {
        let left = Duration::from_secs(3).saturating_sub(stopped.elapsed());
        let ended = tokio::time::timeout(left, task).await;
        let got = got.load(Ordering::Relaxed);
        eprintln!(
            "connection {i}: {:.0} ms after the stop, {got} of {} B received: {ended:?}",
            stopped.elapsed().as_secs_f64() * 1000.0,
            published.stored_bytes
        );
        let Ok(Ok((Some(_), Some(_), _))) = ended else {
            panic!("connection {i} did not hear the close within 3 s: {ended:?}");
        };
        assert!(got < published.stored_bytes, "connection {i} got the whole layer first");
    }
    drop(seed);
    Ok(())
}
