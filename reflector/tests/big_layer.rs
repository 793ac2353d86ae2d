//! A layer of a million entries through an `oasis-reflector serve` process, with the reflector's
//! peak resident memory measured by the kernel (VmHWM). Slow (a few minutes on two cores):
//! run it with `cargo test -p oasis-reflector --release --test big_layer -- --ignored
//! --nocapture`. `OASIS_BIG_LAYER_FILES` sets the number of files (default 1,000,000);
//! `OASIS_BIG_LAYER_WRAP` a command the reflector runs under (such as `heaptrack -o
//! /tmp/refl-{run}`, `{run}` being 1, then 2 after the restart).
//!
//! The reflector has the mesh on (its chunk index is part of what a layer costs), the layer is
//! assigned to its site (so it pins and prefetches it) while an endpoint fetches the manifest
//! and every file chunk through it; a second endpoint then fetches the manifest; then the
//! reflector restarts on its state (pins restored from the cached body) and serves it again.

mod common;

use common::{layer, World};
use oasis_core::net::Client;
use oasis_core::pki::Role;
use oasis_core::wire::Assignment;
use oasis_core::ChunkId;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

/// The reflector process; killed when dropped (also when the test fails).
struct Reflector(Child);

impl Drop for Reflector {
    fn drop(&mut self) {
        // SIGTERM to its process group (a wrapper's child too), so that it shuts down and a
        // profiler writes its file; SIGKILL if it is still there after a while.
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

impl Reflector {
    fn start(
        w: &World,
        state: &Path,
        listen: SocketAddr,
        log: &Path,
        run: u32,
    ) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let bin = env!("CARGO_BIN_EXE_oasis-reflector");
        let wrap = std::env::var("OASIS_BIG_LAYER_WRAP")
            .unwrap_or_default()
            .replace("{run}", &run.to_string());
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(words).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .process_group(0)
            .arg("serve")
            .arg("--state")
            .arg(state)
            .args(["--listen", &listen.to_string()])
            .args(["--upstream", &w.addr.to_string()])
            .args(["--p2p-listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--no-mdns"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Reflector(child))
    }

    /// (VmRSS, VmHWM) in bytes (of the wrapper, when there is one).
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        if !status.contains("VmRSS:") {
            return Ok((0, 0));
        }
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| anyhow::anyhow!("{name} not in /proc status"))?;
            let kb: u64 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
            Ok(kb * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?)
}

async fn connect(w: &World, name: &str, to: SocketAddr) -> anyhow::Result<Client> {
    let t0 = Instant::now();
    loop {
        match w.endpoint_client(name, to).await {
            Ok(c) => return Ok(c),
            Err(e) if t0.elapsed() > Duration::from_secs(60) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a million-entry layer; run with --ignored"]
async fn a_million_entry_layer_passes_under_one_gib() -> anyhow::Result<()> {
    let files: u64 = std::env::var("OASIS_BIG_LAYER_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t0 = Instant::now();
    let w = World::start().await?;
    let (m, data) = layer("huge", "1", files, 48);
    let p = w.publish(&m, data)?;
    let entries = m.entries.len();
    drop(m);
    eprintln!(
        "published {entries} entries: root {} B, body {} B in {} chunks, {} file chunks ({:.1} s)",
        p.root_bytes.len(),
        p.sm.root.body_len,
        p.body_chunks.len(),
        p.file_chunks.len(),
        t0.elapsed().as_secs_f64()
    );
    let state = w.enroll(Role::Reflector, "refl")?;
    *w.upstream.assigned.lock().unwrap() =
        vec![Assignment { name: "huge".into(), version: "1".into(), window: String::new() }];
    let listen = free_port()?;
    let log = w.dir.path().join("reflector.log");
    let refl = Reflector::start(&w, &state, listen, &log, 1)?;
    let key = w.manifest_key();

    let t1 = Instant::now();
    let a = connect(&w, "ep-a", listen).await?;
    let got = a.open_manifest("huge", Some("1"), &key, |_| None).await?;
    anyhow::ensure!(got.manifest.manifest.entries.len() == entries);
    drop(got);
    let (rss, _) = refl.memory()?;
    eprintln!(
        "manifest through the reflector in {:.1} s; RSS {:.0} MiB",
        t1.elapsed().as_secs_f64(),
        mib(rss)
    );
    let ids: Vec<ChunkId> = p.file_chunks.iter().map(|c| c.id).collect();
    let mut peak_seen = 0;
    for batch in ids.chunks(50_000) {
        anyhow::ensure!(a.plain_chunks(batch).await?.len() == batch.len());
        peak_seen = peak_seen.max(refl.memory()?.0);
    }
    eprintln!(
        "{} file chunks through the reflector in {:.1} s; RSS peak seen {:.0} MiB",
        ids.len(),
        t1.elapsed().as_secs_f64(),
        mib(peak_seen)
    );
    let before = w.sent();
    let b = connect(&w, "ep-b", listen).await?;
    b.open_manifest("huge", Some("1"), &key, |_| None).await?;
    let after = w.sent();
    assert_eq!((after.2, after.3), (before.2, before.3), "the second manifest cost no WAN bytes");
    // Let the assignment's pin and prefetch finish.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss, hwm) = refl.memory()?;
    eprintln!("first run: RSS {:.0} MiB, peak (VmHWM) {:.0} MiB", mib(rss), mib(hwm));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log_text.contains("layer pinned"), "the assignment was pinned:\n{log_text}");
    drop(refl);

    // A restart: the pins come back from the cached body, the cached layers are announced.
    let refl = Reflector::start(&w, &state, listen, &log, 2)?;
    let c = connect(&w, "ep-c", listen).await?;
    let before = w.sent();
    let got = c.open_manifest("huge", Some("1"), &key, |_| None).await?;
    anyhow::ensure!(got.manifest.digest == p.sm.digest);
    drop(got);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = w.sent();
    assert_eq!((after.2, after.3), (before.2, before.3), "after the restart: no WAN bytes");
    let (rss2, hwm2) = refl.memory()?;
    eprintln!("after restart: RSS {:.0} MiB, peak (VmHWM) {:.0} MiB", mib(rss2), mib(hwm2));
    assert!(hwm < GIB, "first run peaked at {:.0} MiB", mib(hwm));
    assert!(hwm2 < GIB, "restart peaked at {:.0} MiB", mib(hwm2));
    Ok(())
}
