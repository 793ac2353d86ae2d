//! `oasis-sim bench --only hostile`: a seed and a reflector, each its own release process, serve
//! honest endpoints while hostile clients on 127.0.0.1 attack both, and the same honest load
//! without them for reference. Reports the honest throughput kept, every honest fetch that
//! failed (none may), what the attackers got, and the servers' peak RSS.
//!
//! The attackers: connections opened without end; slow readers (a whole layer asked for, read a
//! kibibyte every 100 ms); garbage frames and huge length claims; snapshot records claimed at
//! 1 GiB (as much as the seed's assembly budget); and a flood of mesh hellos at the reflector,
//! each signed anew. They run in this process, on the same two cores as the servers and the
//! honest endpoints: an attacker elsewhere would cost the servers less.

use crate::bench_tree::refs::free_port;
use crate::bench_tree::rss::{run_quiet, Watched};
use crate::bench_tree::say;
use anyhow::Context;
use futures::StreamExt;
use oasis_core::backup::{PutSnapshot, RecordRef};
use oasis_core::compress::StoredChunk;
use oasis_core::gossip::{Body, GossipMsg, MAX_MESSAGE_BYTES};
use oasis_core::manifest::ChunkRef;
use oasis_core::net::{self, accept, Client, TransportOptions};
use oasis_core::pki::NodeIdentity;
use oasis_core::wire::Frame;
use oasis_core::ChunkId;
use oasis_endpoint::{fetch, FetchOptions};
use oasis_mesh::libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use oasis_mesh::libp2p::{identity::Keypair, noise, tcp, yamux, Multiaddr, Swarm};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, clap::Args)]
pub struct HostileBenchArgs {
    /// `--only hostile`: seconds of honest fetching in each phase (calm, then under attack).
    #[arg(long, default_value_t = 20)]
    pub hostile_seconds: u64,
    /// `--only hostile`: size of the layer the honest endpoints fetch, MiB.
    #[arg(long, default_value_t = 32)]
    pub hostile_layer_mib: usize,
    /// `--only hostile`: which attacks run (comma-separated): connections, slow, garbage,
    /// records, hellos.
    #[arg(long, default_value = "connections,slow,garbage,records,hellos", value_delimiter = ',')]
    pub hostile_attacks: Vec<String>,
}

/// Honest fetches per phase: two endpoints through the reflector, one from the seed.
const HONEST: [(&str, bool); 3] = [("honest-0", true), ("honest-1", true), ("honest-2", false)];

/// What the attackers did and what they got, counted as they go.
#[derive(Default)]
struct Tally {
    connections_opened: AtomicU64,
    connections_refused: AtomicU64,
    garbage_streams: AtomicU64,
    garbage_answered: AtomicU64,
    slow_streams: AtomicU64,
    slow_bytes_read: AtomicU64,
    records_claimed: AtomicU64,
    records_refused: AtomicU64,
    hellos_sent: AtomicU64,
}

impl Tally {
    fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "connections_opened": g(&self.connections_opened),
            "connections_refused": g(&self.connections_refused),
            "garbage_streams": g(&self.garbage_streams),
            "garbage_answered_with_an_error": g(&self.garbage_answered),
            "slow_streams": g(&self.slow_streams),
            "slow_bytes_read": g(&self.slow_bytes_read),
            "records_claimed": g(&self.records_claimed),
            "records_refused": g(&self.records_refused),
            "hellos_sent": g(&self.hellos_sent),
        })
    }
}

struct Phase {
    bytes: u64,
    fetches: u64,
    failures: Vec<String>,
    seconds: f64,
    /// CPU seconds over the phase: the seed, the reflector, and this process (the honest
    /// endpoints, and the attackers when they run).
    cpu: [f64; 3],
}

/// CPU seconds used so far by the seed, the reflector and this process.
fn cpu_now(pids: [u32; 2]) -> [f64; 3] {
    let of = |p: &str| crate::bench::cpu_seconds_of(p).unwrap_or(0.0);
    [of(&pids[0].to_string()), of(&pids[1].to_string()), of("self")]
}

impl Phase {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

pub async fn run(
    args: &HostileBenchArgs,
    dir: &Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let bins = exe.parent().context("this executable has no directory")?.to_path_buf();
    let (seed_bin, refl_bin) = (bins.join("oasis-seed"), bins.join("oasis-reflector"));
    for b in [&seed_bin, &refl_bin] {
        anyhow::ensure!(
            b.exists(),
            "{} not found: build the binaries first (cargo build --release -p oasis-seed -p \
             oasis-reflector -p oasis-sim)",
            b.display()
        );
    }
    let dir = dir.join("hostile");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let data = dir.join("seed");
    run_quiet(Command::new(&seed_bin).arg("init").arg("--data").arg(&data))?;
    let enroll = |role: &str, name: &str| -> anyhow::Result<PathBuf> {
        let out = dir.join(name);
        run_quiet(
            Command::new(&seed_bin)
                .args(["enroll", "--data"])
                .arg(&data)
                .args(["--role", role, "--name", name, "--site", "bench", "--out"])
                .arg(&out),
        )?;
        Ok(out)
    };
    let refl_state = enroll("reflector", "refl")?;
    let honest: Vec<(PathBuf, bool)> = HONEST
        .iter()
        .map(|(n, via)| Ok((enroll("endpoint", n)?, *via)))
        .collect::<anyhow::Result<_>>()?;
    let hostile_ep = NodeIdentity::load(&enroll("endpoint", "hostile-ep")?)?;
    let hostile_refl = NodeIdentity::load(&enroll("reflector", "hostile-refl")?)?;

    let src = dir.join("layer");
    std::fs::create_dir_all(&src)?;
    let size = args.hostile_layer_mib << 20;
    for (i, part) in crate::sample::mixed_bytes(size, 7).chunks(size.div_ceil(8)).enumerate() {
        std::fs::write(src.join(format!("part{i}.bin")), part)?;
    }
    run_quiet(
        Command::new(&seed_bin)
            .args(["publish", "--data"])
            .arg(&data)
            .args(["--name", "bench", "--version", "1"])
            .arg(&src),
    )?;
    run_quiet(Command::new(&seed_bin).args(["assign", "--data"]).arg(&data).args([
        "--site",
        "bench",
        "--available",
        "bench@1",
    ]))?;

    let limit = Duration::from_secs(60);
    let (mut seed, seed_port) = Watched::seed("seed", &seed_bin, &data, &logs, limit)?;
    let p2p_port = free_port()?;
    let mesh =
        ["--p2p-listen".to_string(), format!("/ip4/127.0.0.1/tcp/{p2p_port}"), "--no-mdns".into()];
    let (mut refl, refl_port) =
        Watched::reflector("reflector", &refl_bin, &refl_state, seed_port, &mesh, &logs, limit)?;
    let seed_addr: SocketAddr = ([127, 0, 0, 1], seed_port).into();
    let refl_addr: SocketAddr = ([127, 0, 0, 1], refl_port).into();

    // Warm the reflector: the phases measure serving, not the first pull over the "WAN".
    say(json, "hostile: warming the reflector's cache");
    let warm = honest_fetch(&honest[0].0, refl_addr, &dir.join("warm"), 0).await?;
    let idle_rss = (seed.peak_bytes(), refl.peak_bytes());

    let secs = Duration::from_secs(args.hostile_seconds.max(1));
    say(json, &format!("hostile: calm phase, {} s of honest fetches", secs.as_secs()));
    let pids = [seed.child.id(), refl.child.id()];
    let calm = honest_phase(&honest, seed_addr, refl_addr, &dir.join("calm"), secs, pids).await;
    let calm_rss = (seed.peak_bytes(), refl.peak_bytes());

    say(json, "hostile: attack phase");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let ids: Vec<ChunkId> = warm.into_iter().take(oasis_core::wire::MAX_IDS_PER_REQUEST).collect();
    let on = |a: &str| args.hostile_attacks.iter().any(|x| x == a);
    for a in &args.hostile_attacks {
        anyhow::ensure!(
            ["connections", "slow", "garbage", "records", "hellos"].contains(&a.as_str()),
            "--hostile-attacks: unknown attack {a:?} (connections, slow, garbage, records, hellos)"
        );
    }
    let mut attackers = tokio::task::JoinSet::new();
    for target in [seed_addr, refl_addr] {
        if on("connections") {
            let (id, stop, tally) = (hostile_ep.clone(), stop.clone(), tally.clone());
            attackers.spawn(flood_connections(target, id, stop, tally));
        }
        if on("slow") {
            let (id, stop, tally) = (hostile_ep.clone(), stop.clone(), tally.clone());
            attackers.spawn(slow_reader(target, id, ids.clone(), stop, tally));
        }
        for kind in (0..3).filter(|_| on("garbage")) {
            attackers.spawn(garbage(target, hostile_ep.clone(), kind, stop.clone(), tally.clone()));
        }
    }
    if on("records") {
        attackers.spawn(huge_records(seed_addr, hostile_ep.clone(), stop.clone(), tally.clone()));
    }
    if on("hellos") {
        let refl_peer = oasis_mesh::peer_id_of_state(&refl_state)?;
        let p2p: Multiaddr = format!("/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{refl_peer}").parse()?;
        attackers.spawn(hello_flood(p2p, hostile_refl.clone(), stop.clone(), tally.clone()));
    }
    // Let the attack build up before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attacked =
        honest_phase(&honest, seed_addr, refl_addr, &dir.join("attacked"), secs, pids).await;
    stop.store(true, Ordering::Relaxed);
    let mut attacker_errors = Vec::new();
    while let Some(r) = attackers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => attacker_errors.push(format!("{e:#}")),
            Err(e) => attacker_errors.push(e.to_string()),
        }
    }
    let alive = (seed.child.try_wait()?.is_none(), refl.child.try_wait()?.is_none());
    let seed_m = seed.stop()?;
    let refl_m = refl.stop()?;

    let kept = attacked.mb_s() / calm.mb_s().max(1e-9);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let out = serde_json::json!({
        "layer_bytes": size,
        "seconds_per_phase": secs.as_secs(),
        "calm": {"mb_s": calm.mb_s(), "fetches": calm.fetches, "failures": calm.failures,
                 "cpu_seconds": {"seed": calm.cpu[0], "reflector": calm.cpu[1], "endpoints_and_attackers": calm.cpu[2]}},
        "attacked": {"mb_s": attacked.mb_s(), "fetches": attacked.fetches, "failures": attacked.failures,
                 "cpu_seconds": {"seed": attacked.cpu[0], "reflector": attacked.cpu[1], "endpoints_and_attackers": attacked.cpu[2]}},
        "honest_throughput_kept": kept,
        "attacks": args.hostile_attacks,
        "attackers": tally.json(),
        "attacker_errors": attacker_errors,
        "servers_alive": {"seed": alive.0, "reflector": alive.1},
        "peak_rss_bytes": {
            "seed": {"idle": idle_rss.0, "calm": calm_rss.0, "whole_run": seed_m.peak_rss_bytes},
            "reflector": {"idle": idle_rss.1, "calm": calm_rss.1, "whole_run": refl_m.peak_rss_bytes},
        },
    });
    if !json {
        println!(
            "hostile: honest fetches of a {} MiB layer (2 endpoints through the reflector, 1 from the seed), {} s per phase",
            args.hostile_layer_mib,
            secs.as_secs()
        );
        println!(
            "  calm:     {:.0} MB/s, {} fetches, {} failed",
            calm.mb_s(),
            calm.fetches,
            calm.failures.len()
        );
        println!(
            "  attacked: {:.0} MB/s, {} fetches, {} failed = {:.0}% kept (goal 80%)",
            attacked.mb_s(),
            attacked.fetches,
            attacked.failures.len(),
            100.0 * kept
        );
        for (name, p) in [("calm", &calm), ("attacked", &attacked)] {
            println!(
                "  CPU per second, {name}: seed {:.2}, reflector {:.2}, honest endpoints{} {:.2} (2 cores in all)",
                p.cpu[0] / p.seconds,
                p.cpu[1] / p.seconds,
                if name == "attacked" { " + attackers" } else { "" },
                p.cpu[2] / p.seconds
            );
        }
        for f in calm.failures.iter().chain(&attacked.failures) {
            println!("  honest fetch failed: {f}");
        }
        println!("  attackers: {}", tally.json());
        for e in &attacker_errors {
            println!("  attacker stopped early: {e}");
        }
        println!(
            "  peak RSS: seed {:.0} MiB (idle {:.0}, calm {:.0}), reflector {:.0} MiB (idle {:.0}, calm {:.0}); both alive at the end: {}",
            mib(seed_m.peak_rss_bytes),
            mib(idle_rss.0),
            mib(calm_rss.0),
            mib(refl_m.peak_rss_bytes),
            mib(idle_rss.1),
            mib(calm_rss.1),
            alive.0 && alive.1
        );
    }
    Ok(out)
}

/// One fetch of the layer into `into`, with an empty cache and directory; returns the layer's
/// chunk ids.
async fn honest_fetch(
    state: &Path,
    from: SocketAddr,
    into: &Path,
    n: u64,
) -> anyhow::Result<Vec<ChunkId>> {
    let _ = std::fs::remove_dir_all(state.join("cache"));
    let into = into.join(n.to_string());
    let r = fetch(&FetchOptions {
        state_dir: state.to_path_buf(),
        sources: vec![from],
        name: "bench".into(),
        version: Some("1".into()),
        into: into.clone(),
        streams: 8,
        progress: false,
    })
    .await?;
    let _ = std::fs::remove_dir_all(&into);
    anyhow::ensure!(r.bytes > 0, "an empty fetch");
    let id = NodeIdentity::load(state)?;
    let ep = client_endpoint(&id)?;
    let c = Client::connect(&ep, from, accept::CONTENT).await?;
    let sm = oasis_endpoint::sources::get_manifest(&c, "bench", Some("1"), id.trust()).await?;
    c.close();
    ep.close(0u32.into(), b"done");
    Ok(sm.manifest.unique_chunks().into_iter().map(|c| c.id).collect())
}

/// Every honest endpoint fetching the layer again and again for `secs`.
async fn honest_phase(
    honest: &[(PathBuf, bool)],
    seed: SocketAddr,
    refl: SocketAddr,
    dir: &Path,
    secs: Duration,
    pids: [u32; 2],
) -> Phase {
    let t0 = Instant::now();
    let cpu0 = cpu_now(pids);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (state, via_reflector)) in honest.iter().enumerate() {
        let (state, from) = (state.clone(), if *via_reflector { refl } else { seed });
        let into = dir.join(format!("ep{i}"));
        tasks.spawn(async move {
            let (mut bytes, mut fetches, mut failures) = (0u64, 0u64, Vec::new());
            let mut n = 0;
            while t0.elapsed() < secs {
                n += 1;
                let _ = std::fs::remove_dir_all(state.join("cache"));
                let o = FetchOptions {
                    state_dir: state.clone(),
                    sources: vec![from],
                    name: "bench".into(),
                    version: Some("1".into()),
                    into: into.join(n.to_string()),
                    streams: 8,
                    progress: false,
                };
                match fetch(&o).await {
                    Ok(r) => {
                        bytes += r.bytes;
                        fetches += 1;
                    }
                    Err(e) => failures.push(format!("{from}: {e:#}")),
                }
                let _ = std::fs::remove_dir_all(&o.into);
            }
            (bytes, fetches, failures)
        });
    }
    let mut p = Phase { bytes: 0, fetches: 0, failures: Vec::new(), seconds: 0.0, cpu: [0.0; 3] };
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((b, f, e)) => {
                p.bytes += b;
                p.fetches += f;
                p.failures.extend(e);
            }
            Err(e) => p.failures.push(format!("honest task: {e}")),
        }
    }
    p.seconds = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_now(pids);
    p.cpu = [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2]];
    p
}

fn client_endpoint(id: &NodeIdentity) -> anyhow::Result<quinn::Endpoint> {
    Ok(net::client_endpoint(id, &TransportOptions::default())?)
}

/// Opens connections without end and holds every one it gets.
async fn flood_connections(
    target: SocketAddr,
    id: NodeIdentity,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let ep = client_endpoint(&id)?;
    let mut held = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let c = tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect(&ep, target, accept::CONTENT),
        )
        .await;
        match c {
            Ok(Ok(c)) => {
                tally.connections_opened.fetch_add(1, Ordering::Relaxed);
                held.push(c);
            }
            _ => {
                tally.connections_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Connections the server closed (over its limits) count as refused and are let go.
        held.retain(|c| {
            let gone = c.connection().close_reason().is_some();
            if gone {
                tally.connections_refused.fetch_add(1, Ordering::Relaxed);
            }
            !gone
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ep.close(0u32.into(), b"done");
    Ok(())
}

/// Asks for the whole layer on several streams and reads a kibibyte every 100 ms.
async fn slow_reader(
    target: SocketAddr,
    id: NodeIdentity,
    ids: Vec<ChunkId>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let ep = client_endpoint(&id)?;
    let request = Frame::GetChunks { ids }.to_bytes();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect(&ep, target, accept::CONTENT),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut streams = Vec::new();
        for _ in 0..8 {
            let Ok((mut send, recv)) = c.connection().open_bi().await else { break };
            if send.write_all(&request).await.is_err() || send.finish().is_err() {
                break;
            }
            tally.slow_streams.fetch_add(1, Ordering::Relaxed);
            streams.push(recv);
        }
        let mut buf = vec![0u8; 1024];
        while !stop.load(Ordering::Relaxed) && !streams.is_empty() {
            let mut open = Vec::new();
            for mut r in streams {
                // None or an error: finished, or reset by the server's write deadline.
                if let Ok(Some(n)) = r.read(&mut buf).await {
                    tally.slow_bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    open.push(r);
                }
            }
            streams = open;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.close();
    }
    ep.close(0u32.into(), b"done");
    Ok(())
}

/// Streams of garbage: random bytes (`kind` 0), a length prefix claiming 4 GiB (1), and a
/// GetChunks claiming 16,384 ids with a handful sent (2).
async fn garbage(
    target: SocketAddr,
    id: NodeIdentity,
    kind: u8,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let ep = client_endpoint(&id)?;
    let mut rng = crate::sample::SplitMix(u64::from(kind) + 1);
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match &client {
            Some(c) => c,
            None => match Client::connect(&ep, target, accept::CONTENT).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let bytes: Vec<u8> = match kind {
            0 => (0..256).map(|_| rng.next_u64() as u8).collect(),
            1 => [&0xFFFF_FFF0u32.to_be_bytes()[..], &[0x02], &[0u8; 64]].concat(),
            _ => {
                let mut b = (1u32 + 4 + 32 * 16_384).to_be_bytes().to_vec();
                b.push(0x02);
                b.extend_from_slice(&16_384u32.to_be_bytes());
                b.extend_from_slice(&[0xAB; 32 * 4]);
                b
            }
        };
        let Ok((mut send, mut recv)) = c.connection().open_bi().await else {
            client = None;
            continue;
        };
        tally.garbage_streams.fetch_add(1, Ordering::Relaxed);
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
        if let Ok(Ok(answer)) =
            tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(64 << 10)).await
        {
            if answer.get(4) == Some(&oasis_core::wire::frame_type::ERROR) {
                tally.garbage_answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    ep.close(0u32.into(), b"done");
    Ok(())
}

/// Uploads one chunk of the largest size records are cut into (256 KiB), then claims records
/// of 1 GiB made of it, again and again, with the digest those bytes really have: the seed must
/// read, hash and hold the whole claim before it finds the record does not decode.
async fn huge_records(
    seed: SocketAddr,
    id: NodeIdentity,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let ep = client_endpoint(&id)?;
    let device = id.info().name.clone();
    let c = Client::connect(&ep, seed, accept::SEED).await?;
    let mut rng = crate::sample::SplitMix(99);
    const PIECE: u32 = 256 << 10;
    let block: Vec<u8> = (0..PIECE).map(|_| rng.next_u64() as u8).collect();
    let chunk = StoredChunk::encode(&block);
    let cid = chunk.id;
    c.put_chunks(&[chunk], None).await.context("uploading the record's one chunk")?;
    let count = (1u32 << 30) / PIECE;
    let mut hasher = blake3::Hasher::new();
    for _ in 0..count {
        hasher.update(&block);
    }
    let digest = *hasher.finalize().as_bytes();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let record = RecordRef {
            len: 1 << 30,
            digest,
            chunks: vec![ChunkRef { id: cid, len: PIECE }; count as usize],
        };
        tally.records_claimed.fetch_add(1, Ordering::Relaxed);
        let req = PutSnapshot { device: device.clone(), id: format!("huge-{n}"), record };
        if c.put_snapshot(req).await.is_err() {
            tally.records_refused.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.close();
    ep.close(0u32.into(), b"done");
    Ok(())
}

/// A raw gossipsub peer (no Oasis mesh code) that says hello with a genuine reflector
/// certificate, signed anew every time, as fast as it can publish.
async fn hello_flood(
    target: Multiaddr,
    id: NodeIdentity,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let key = Keypair::generate_ed25519();
    let me = key.public().to_peer_id();
    let mut swarm: Swarm<gossipsub::Behaviour> =
        oasis_mesh::libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
            .with_behaviour(|key| {
                let cfg = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(100))
                    .max_transmit_size(4 * MAX_MESSAGE_BYTES)
                    .build()
                    .expect("a valid gossipsub config");
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), cfg)
                    .expect("a gossipsub behaviour")
            })?
            .build();
    let topic = IdentTopic::new(oasis_mesh::TOPIC);
    swarm.behaviour_mut().subscribe(&topic)?;
    swarm.dial(target)?;
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = swarm.select_next_some() => {}
            _ = tick.tick() => {
                seq += 1;
                let hello = oasis_mesh::binding::sign_binding(&id, &me)?;
                let msg = GossipMsg { seq, body: Body::Hello(hello) }.encode();
                if swarm.behaviour_mut().publish(topic.clone(), msg).is_ok() {
                    tally.hellos_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}
