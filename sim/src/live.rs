//! Real nodes on loopback for the demo, the reflector benchmark and the fidelity run: a seed,
//! reflectors under a WAN policy, endpoints, and a sampler of what crossed the WAN.
//!
//! Endpoints come in two kinds. [`full_fetch`] is `oasis-endpoint fetch` itself (tree on disk,
//! chunk cache). [`verify_fetch`] speaks the same protocol through the endpoint's own manifest
//! check ([`oasis_endpoint::sources::get_manifest`]) and verifies every chunk (decompress +
//! BLAKE3) but writes nothing: fifty endpoints writing a 256 MiB tree and its cache need
//! ~23 GB of disk, more than a shared build machine has free, and the benchmarks measure the
//! reflector, not the endpoints' disks.

use anyhow::Context;
use oasis_core::net::accept;
use oasis_core::net::{ChunkReply, Client, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role};
use oasis_core::ChunkId;
use oasis_endpoint::{fetch, FetchOptions, FetchReport};
use oasis_reflector::{ReflectorConfig, RunningReflector, WanLimit};
pub use oasis_testkit::{window_rates, RateSampler, Samples, TestSeed};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Chunks verified together off the async threads.
const VERIFY_GROUP: usize = 16;

/// Starts a reflector of `site` in front of `seed`, its WAN capped by `wan`.
pub async fn site_reflector(
    seed: &TestSeed,
    name: &str,
    site: &str,
    wan: WanLimit,
) -> anyhow::Result<RunningReflector> {
    let state = seed.enroll_in_site(Role::Reflector, name, site)?;
    let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, seed.seed.addr.to_string());
    cfg.wan = wan;
    // Assignments are not used here; endpoints pull on demand.
    cfg.assignments_poll = Duration::ZERO;
    RunningReflector::start(cfg).await
}

/// Where a site's WAN policy comes from.
pub enum SitePolicy<'a> {
    /// As the reflector reads it: `--wan-rate` or `--policy FILE`.
    Limit(WanLimit),
    /// A parsed policy put in force right after start (scenarios with an inline policy).
    Policy(&'a oasis_core::policy::BandwidthPolicy),
}

/// One site's reflectors. A single one runs without the mesh; several form a libp2p mesh on
/// loopback (no multicast there: each bootstraps from the first) and fetch from each other,
/// so the site pulls each chunk over its WAN once. Each is given the site's whole policy;
/// the mesh divides it between them. Returns once every one sees all its siblings.
pub async fn site_reflectors(
    seed: &TestSeed,
    site: &str,
    n: usize,
    wan: SitePolicy<'_>,
) -> anyhow::Result<Vec<RunningReflector>> {
    site_reflectors_via(seed, site, n, wan, seed.seed.addr).await
}

/// [`site_reflectors`] whose upstream is `upstream` (the site's end of an emulated WAN link
/// to the seed) instead of the seed itself.
pub async fn site_reflectors_via(
    seed: &TestSeed,
    site: &str,
    n: usize,
    wan: SitePolicy<'_>,
    upstream: SocketAddr,
) -> anyhow::Result<Vec<RunningReflector>> {
    use oasis_mesh::libp2p::multiaddr::Protocol;
    let mut out: Vec<RunningReflector> = Vec::new();
    let mut boot = Vec::new();
    for r in 0..n.max(1) {
        let state = seed.enroll_in_site(Role::Reflector, &format!("{site}-reflector{r}"), site)?;
        let mut cfg = ReflectorConfig::new(&state, "127.0.0.1:0".parse()?, upstream.to_string());
        cfg.assignments_poll = Duration::ZERO;
        if let SitePolicy::Limit(w) = &wan {
            cfg.wan = w.clone();
        }
        if n > 1 {
            cfg.mesh = Some(oasis_reflector::MeshSettings {
                listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse()?],
                bootstrap: boot.clone(),
                mdns: false,
                heartbeat: Duration::from_millis(500),
                advertise: None,
                wan_sharing: Default::default(),
            });
        }
        let refl = RunningReflector::start(cfg).await?;
        if let SitePolicy::Policy(p) = &wan {
            refl.set_policy((*p).clone());
        }
        if r == 0 && n > 1 {
            let mesh = refl.mesh().context("mesh on")?;
            let t0 = Instant::now();
            loop {
                let addrs = mesh.listen_addrs().await?;
                if let Some(a) = addrs.into_iter().find(|a| a.iter().any(|p| p == Protocol::QuicV1))
                {
                    boot.push(a.with(Protocol::P2p(mesh.peer_id())));
                    break;
                }
                anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "mesh never listened");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        out.push(refl);
    }
    if n > 1 {
        let t0 = Instant::now();
        loop {
            let mut ok = true;
            for r in &out {
                let v = r.mesh().context("mesh on")?.view().await?;
                let live = v
                    .live_peers(site)
                    .iter()
                    .filter(|p| v.peer(p).is_some_and(|rec| rec.serving_addr.is_some()))
                    .count();
                ok &= live + 1 >= n;
            }
            if ok {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "the reflectors of {site} did not find each other in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // As a site that has been up for a while: its WAN leader has taken the site's rate.
        RunningReflector::wait_for_wan_leader(&out, Duration::from_secs(30))
            .await
            .with_context(|| format!("no reflector of {site} took the site's WAN rate in 30 s"))?;
    }
    Ok(out)
}

/// Writes `size` bytes of sample layer data (the benchmark's mix) as 32 files under `root`.
pub fn write_layer(root: &Path, size: usize, seed: u64) -> anyhow::Result<()> {
    if root.exists() {
        std::fs::remove_dir_all(root)?;
    }
    std::fs::create_dir_all(root)?;
    let data = crate::sample::mixed_bytes(size, seed);
    for (i, part) in data.chunks(size.div_ceil(32).max(1)).enumerate() {
        std::fs::write(root.join(format!("part{i:02}.bin")), part)?;
    }
    Ok(())
}

/// What one endpoint's fetch moved.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EndpointRun {
    /// Seconds from the start of the wave to this endpoint's last verified chunk.
    pub done_at: f64,
    /// Plain bytes of the layer's unique chunks, verified.
    pub bytes_plain: u64,
    /// Chunk payload received (as sent).
    pub bytes_network: u64,
    pub chunks: u64,
}

/// An endpoint's fetch of every chunk of `name@version` from `from`, verified, written
/// nowhere: the manifest through the endpoint's own check, then the chunks in batches of 64
/// over `streams` concurrent requests, each decompressed and hashed off the async threads
/// while the next batch arrives.
pub async fn verify_fetch(
    state: &Path,
    from: SocketAddr,
    name: &str,
    version: &str,
    streams: usize,
    t0: Instant,
) -> anyhow::Result<EndpointRun> {
    let identity = NodeIdentity::load(state)?;
    let ep = oasis_core::net::client_endpoint(&identity, &TransportOptions::default())?;
    let client = Client::connect(&ep, from, accept::CONTENT).await?;
    let sm = oasis_endpoint::sources::get_manifest(&client, name, Some(version), identity.trust())
        .await?;
    let ids: Vec<ChunkId> = sm.manifest.unique_chunks().iter().map(|c| c.id).collect();
    let batches: std::collections::VecDeque<Vec<ChunkId>> =
        ids.chunks(64).map(<[ChunkId]>::to_vec).collect();
    let queue = std::sync::Mutex::new(batches);
    let errors = std::sync::atomic::AtomicU32::new(0);
    let worker = || async {
        let mut run = EndpointRun::default();
        let mut verifying: Option<tokio::task::JoinHandle<anyhow::Result<u64>>> = None;
        loop {
            let Some(batch) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                break;
            };
            let mut unanswered: std::collections::HashSet<ChunkId> =
                batch.iter().copied().collect();
            let mut got = Vec::with_capacity(VERIFY_GROUP);
            let result: anyhow::Result<()> = async {
                let mut replies = client.chunks(batch).await?;
                loop {
                    let next = replies.next().await?;
                    let done = next.is_none();
                    if let Some(r) = next {
                        unanswered.remove(&r.id());
                        match r {
                            ChunkReply::Chunk(c) => {
                                run.bytes_network += c.data.len() as u64;
                                run.chunks += 1;
                                got.push(c);
                            }
                            ChunkReply::Missing(id) => anyhow::bail!("{from} lacks chunk {id}"),
                        }
                    }
                    if got.len() == VERIFY_GROUP || (done && !got.is_empty()) {
                        // One group verifying while the next arrives bounds memory per stream.
                        if let Some(v) = verifying.take() {
                            run.bytes_plain += v.await??;
                        }
                        let group = std::mem::replace(&mut got, Vec::with_capacity(VERIFY_GROUP));
                        verifying = Some(tokio::spawn(verify(group)));
                    }
                    if done {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = result {
                // As the endpoint does: a failed request is asked again, a few times.
                let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= oasis_endpoint::download::MAX_REQUEST_ERRORS {
                    return Err(e.context(format!("{n} failed requests to {from}")));
                }
                tracing::warn!(source = %from, error = %e, "chunk request failed; asking again");
                if !got.is_empty() {
                    // Chunks that did arrive are kept.
                    if let Some(v) = verifying.take() {
                        run.bytes_plain += v.await??;
                    }
                    verifying = Some(tokio::spawn(verify(std::mem::take(&mut got))));
                }
                if !unanswered.is_empty() {
                    queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(unanswered.into_iter().collect());
                }
            }
        }
        if let Some(v) = verifying.take() {
            run.bytes_plain += v.await??;
        }
        anyhow::Ok(run)
    };
    let runs = futures::future::try_join_all((0..streams.max(1)).map(|_| worker())).await?;
    client.close();
    let mut total = EndpointRun { done_at: t0.elapsed().as_secs_f64(), ..Default::default() };
    for r in runs {
        total.bytes_plain += r.bytes_plain;
        total.bytes_network += r.bytes_network;
        total.chunks += r.chunks;
    }
    ep.close(0u32.into(), b"done");
    Ok(total)
}

/// Decompresses and hashes a group of chunks, at most one group per core at a time across the
/// process, as the endpoint's verification pool does: dozens of endpoints sharing this machine
/// must not crowd the reflector they measure off the CPU.
async fn verify(group: Vec<oasis_core::compress::StoredChunk>) -> anyhow::Result<u64> {
    static POOL: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    });
    let _permit = pool.acquire().await?;
    tokio::task::spawn_blocking(move || {
        let mut plain = 0u64;
        for c in group {
            plain += c.decode_verified()?.len() as u64;
        }
        Ok(plain)
    })
    .await?
}

/// `oasis-endpoint fetch` into `into` (tree on disk and chunk cache).
pub async fn full_fetch(
    state: &Path,
    sources: Vec<SocketAddr>,
    name: &str,
    version: &str,
    into: &Path,
) -> anyhow::Result<FetchReport> {
    let opts = FetchOptions {
        state_dir: state.to_path_buf(),
        sources,
        name: name.into(),
        version: Some(version.into()),
        into: into.to_path_buf(),
        streams: 8,
        progress: false,
    };
    fetch(&opts).await
}
