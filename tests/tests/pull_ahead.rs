//! A reflector pulls a long request's chunks from its upstream ahead of the request's lookups,
//! over a long link, up to the request's last chunk: what does not fit under the bound of
//! chunks pulled at once goes out as earlier pulls complete, instead of being left to the
//! lookups, a few chunks per round trip.

use oasis_core::net::{Client, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::ChunkId;
use oasis_reflector::pull_ahead::PULL_AHEAD_PENDING;
use oasis_testkit::{get_verified, random_tree, TestSeed, TreeSpec};
use oasis_wanem::{EmulatorThread, WanSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_request_is_pulled_ahead_to_its_end_over_a_long_link() -> anyhow::Result<()> {
    let seed = TestSeed::start().await?;
    let src = seed.base().join("ahead-src");
    // Small files of distinct random text: one chunk each, over a thousand of them.
    random_tree(&src, 5, TreeSpec { small_files: 1200, large_files: 0, large_size: 0, depth: 1 })?;
    seed.publish("ahead", "1", &src)?;
    let spec: WanSpec = "100ms,0%,100Mbit,seed=3".parse()?;
    let wan = EmulatorThread::start("127.0.0.1:0".parse()?, seed.seed.addr, spec)?;
    let wan_addr = wan.local_addr().to_string();
    let refl = seed.reflector("r-ahead", |c| c.upstream = wan_addr).await?;

    let identity = NodeIdentity::load(&seed.enroll(Role::Endpoint, "ep-ahead")?)?;
    let ep = oasis_core::net::client_endpoint(&identity, &TransportOptions::default())?;
    let client = Client::connect(&ep, refl.addr, oasis_core::net::accept::ANY).await?;
    let manifest =
        oasis_endpoint::sources::get_manifest(&client, "ahead", Some("1"), identity.trust())
            .await?
            .manifest;
    let ids: Vec<ChunkId> = manifest.unique_chunks().iter().map(|c| c.id).collect();
    assert!(ids.len() > 3 * PULL_AHEAD_PENDING, "{} chunks is too few to test", ids.len());

    // What the reflector is pulling, sampled against how far the pull has got.
    let stats = refl.stats.clone();
    let (upstream0, done) = (stats.upstream_chunks.get(), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let (stats, done) = (stats.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                samples
                    .push((stats.upstream_chunks.get() - upstream0, stats.upstream_pending.get()));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples
        })
    };
    // One request for every chunk, as a fetch with a single stream would make.
    let got = get_verified(&client, ids.clone()).await?;
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await?;
    assert_eq!(got, ids.len());
    assert_eq!(stats.upstream_chunks.get() - upstream0, ids.len() as u64, "each chunk once");

    // While more chunks are left than the bound, the reflector pulls about the bound's worth
    // at once; the lookups alone would have a handful in flight.
    let n = ids.len() as u64;
    let mut middle: Vec<i64> = samples
        .iter()
        .filter(|(arrived, _)| {
            *arrived >= PULL_AHEAD_PENDING as u64 && *arrived + 2 * PULL_AHEAD_PENDING as u64 <= n
        })
        .map(|(_, pending)| *pending)
        .collect();
    middle.sort_unstable();
    eprintln!(
        "{n} chunks over a 100 ms link: {} samples while more than {} were left, chunks being \
         pulled: min {:?}, median {:?}",
        middle.len(),
        2 * PULL_AHEAD_PENDING,
        middle.first(),
        middle.get(middle.len() / 2)
    );
    assert!(middle.len() >= 5, "too few samples in the middle of the pull: {}", middle.len());
    let median = middle[middle.len() / 2];
    assert!(
        median >= PULL_AHEAD_PENDING as i64 / 2,
        "only {median} chunks were being pulled at once in the middle of a long request (bound \
         {PULL_AHEAD_PENDING})"
    );
    client.close();
    refl.stop().await;
    Ok(())
}
