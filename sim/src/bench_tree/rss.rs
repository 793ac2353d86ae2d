//! `--only tree-rss`: the real binaries, each its own process, and their peak RSS.

use super::*;

/// Peak RSS (VmHWM) of a process in KiB, from `/proc/PID/status`; None once it has exited.
pub(super) fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A child process whose peak RSS is polled every 20 ms until it exits.
pub(crate) struct Watched {
    pub(crate) child: Child,
    pub(super) name: String,
    pub(super) started: Instant,
    pub(super) peak_kib: Arc<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) poller: Option<std::thread::JoinHandle<()>>,
    pub(crate) log: PathBuf,
}

impl Watched {
    pub(crate) fn spawn(name: &str, cmd: &mut Command, logs: &Path) -> anyhow::Result<Watched> {
        let log = logs.join(format!("{name}.log"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.join(format!("{name}.out")))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let (peak_kib, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s, pid) = (peak_kib.clone(), stop.clone(), child.id());
        let poller = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match vm_hwm_kib(pid) {
                    Some(k) => {
                        p.fetch_max(k, Ordering::Relaxed);
                    }
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Ok(Watched {
            child,
            name: name.into(),
            started: Instant::now(),
            peak_kib,
            stop,
            poller: Some(poller),
            log,
        })
    }

    /// [`Watched::spawn`] for a server, once it listens on `addr` (its metrics port).
    pub(crate) fn serve(
        name: &str,
        cmd: &mut Command,
        logs: &Path,
        addr: SocketAddr,
        limit: Duration,
    ) -> anyhow::Result<Watched> {
        let mut w = Watched::spawn(name, cmd, logs)?;
        let log = w.log.clone();
        wait_listening(addr, &mut w.child, name, &log, limit)?;
        Ok(w)
    }

    /// `oasis-seed serve` of `data` on free loopback ports, watched once it listens; and
    /// its port.
    pub(crate) fn seed(
        name: &str,
        bin: &Path,
        data: &Path,
        logs: &Path,
        limit: Duration,
    ) -> anyhow::Result<(Watched, u16)> {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--data"]).arg(data);
        Watched::on_free_ports(name, &mut cmd, logs, limit)
    }

    /// `oasis-reflector serve` of `state` under the seed on loopback port `upstream`, with
    /// `extra` arguments, on free loopback ports, watched once it listens; and its port.
    pub(crate) fn reflector(
        name: &str,
        bin: &Path,
        state: &Path,
        upstream: u16,
        extra: &[String],
        logs: &Path,
        limit: Duration,
    ) -> anyhow::Result<(Watched, u16)> {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--state"])
            .arg(state)
            .args(["--upstream", &format!("127.0.0.1:{upstream}")])
            .args(extra);
        Watched::on_free_ports(name, &mut cmd, logs, limit)
    }

    /// Serves `cmd` with `--listen` and `--metrics` on free loopback ports, watched once its
    /// metrics answer; and its listening port.
    fn on_free_ports(
        name: &str,
        cmd: &mut Command,
        logs: &Path,
        limit: Duration,
    ) -> anyhow::Result<(Watched, u16)> {
        let (port, metrics) = (free_port()?, free_port()?);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics", &format!("127.0.0.1:{metrics}")]);
        let w =
            Watched::serve(name, cmd, logs, SocketAddr::from(([127, 0, 0, 1], metrics)), limit)?;
        Ok((w, port))
    }

    pub(crate) fn peak_bytes(&self) -> u64 {
        if let Some(k) = vm_hwm_kib(self.child.id()) {
            self.peak_kib.fetch_max(k, Ordering::Relaxed);
        }
        self.peak_kib.load(Ordering::Relaxed) << 10
    }

    fn finish(&mut self) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        Measured {
            name: self.name.clone(),
            peak_rss_bytes: self.peak_kib.load(Ordering::Relaxed) << 10,
            wall_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Waits for a command that ends by itself.
    pub(crate) fn wait(mut self) -> anyhow::Result<Measured> {
        loop {
            // VmHWM only grows; the last reading before exit is the peak but for the
            // last 20 ms.
            self.peak_bytes();
            if let Some(st) = self.child.try_wait()? {
                let m = self.finish();
                anyhow::ensure!(
                    st.success(),
                    "{} failed ({st}): {}",
                    self.name,
                    log_tail(&self.log)
                );
                return Ok(m);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the peak of a server, then stops it with SIGTERM (SIGKILL after 20 s).
    pub(crate) fn stop(mut self) -> anyhow::Result<Measured> {
        let peak = self.peak_bytes();
        let mut m = self.finish();
        m.peak_rss_bytes = peak;
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let t0 = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(m)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs a command to its end, its output kept only for the error when it fails.
pub(crate) fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Measured {
    pub(super) name: String,
    pub(crate) peak_rss_bytes: u64,
    pub(super) wall_s: f64,
}

pub(super) fn bench_rss(
    args: &TreeBenchArgs,
    dir: &Path,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let bin_dir = exe.parent().context("this executable has no directory")?.to_path_buf();
    let bin = |name: &str| -> anyhow::Result<PathBuf> {
        let p = bin_dir.join(name);
        anyhow::ensure!(
            p.exists(),
            "{} not found next to {}: build the binaries first (cargo build --release -p \
             oasis-seed -p oasis-reflector -p oasis-endpoint -p oasis-sim)",
            p.display(),
            exe.display()
        );
        Ok(p)
    };
    let (seed_bin, refl_bin, ep_bin) =
        (bin("oasis-seed")?, bin("oasis-reflector")?, bin("oasis-endpoint")?);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let src = dir.join("src");
    say(
        json,
        &format!("tree-rss: writing a layer of {} entries in {}", args.entries, src.display()),
    );
    let made = generate_entries(&src, args.entries, args.tree_seed)?;
    say(
        json,
        &format!(
            "tree-rss: {} files ({} empty), {} dirs, {} symlinks; mean path {:.0} B; {:.1} s",
            made.files,
            made.empty_files,
            made.dirs,
            made.symlinks,
            made.mean_path_bytes,
            made.seconds
        ),
    );
    let data = dir.join("seed");
    let (refl_state, ep_state) = (dir.join("reflector"), dir.join("endpoint"));
    run_quiet(Command::new(&seed_bin).arg("init").arg("--data").arg(&data))?;
    for (role, name, out) in
        [("reflector", "rss-reflector", &refl_state), ("endpoint", "rss-endpoint", &ep_state)]
    {
        run_quiet(
            Command::new(&seed_bin)
                .args(["enroll", "--data"])
                .arg(&data)
                .args(["--role", role, "--name", name, "--site", "bench", "--out"])
                .arg(out),
        )?;
    }

    say(json, "tree-rss: oasis-seed publish");
    let publish = Watched::spawn(
        "publish",
        Command::new(&seed_bin)
            .args(["publish", "--data"])
            .arg(&data)
            .args(["--name", "rss", "--version", "1", "--json"])
            .arg(&src),
        &logs,
    )?
    .wait()?;
    run_quiet(Command::new(&seed_bin).args(["assign", "--data"]).arg(&data).args([
        "--site",
        "bench",
        "--available",
        "rss@1",
    ]))?;

    let limit = Duration::from_secs(120);
    let (seed, seed_port) = Watched::seed("seed-serve", &seed_bin, &data, &logs, limit)?;
    let no_mesh = ["--no-mesh".to_string()];
    let (refl, refl_port) = Watched::reflector(
        "reflector-serve",
        &refl_bin,
        &refl_state,
        seed_port,
        &no_mesh,
        &logs,
        limit,
    )?;
    let (seed_idle, refl_idle) = (seed.peak_bytes(), refl.peak_bytes());

    say(json, "tree-rss: oasis-endpoint fetch through the reflector");
    let into = dir.join("fetched");
    let fetch = Watched::spawn(
        "endpoint-fetch",
        Command::new(&ep_bin)
            .args(["fetch", "--state"])
            .arg(&ep_state)
            .args(["--from", &format!("127.0.0.1:{refl_port}")])
            .args(["--layer", "rss@1", "--into"])
            .arg(&into)
            .arg("--json"),
        &logs,
    )?
    .wait()?;
    let seed_m = seed.stop()?;
    let refl_m = refl.stop()?;
    let fetched = count_tree(&into)?;
    let report = |name: &str| -> serde_json::Value {
        std::fs::read_to_string(logs.join(format!("{name}.out")))
            .ok()
            .and_then(|s| serde_json::from_str(s.trim()).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let (publish_report, fetch_report) = (report("publish"), report("endpoint-fetch"));

    // The manifest's size, read from the seed's store now that the seed has stopped.
    let manifest = {
        let trust = TrustRoot::load(&data.join(oasis_core::pki::TRUST_FILE))?;
        let store = oasis_seed::node::open_store(&data)?;
        let sm = store
            .open_manifest("rss", Some("1"), trust.manifest_key())?
            .context("the rss layer is not in the seed's store")?;
        serde_json::json!({
            "entries": sm.root.entries,
            "signed_root_bytes": sm.to_bytes().len(),
            "body_bytes": sm.root.body_len,
            "body_chunks": sm.root.body.len(),
        })
    };
    let targets = [
        (&publish, RSS_TARGET_SEED),
        (&seed_m, RSS_TARGET_SEED),
        (&refl_m, RSS_TARGET_REFLECTOR),
        (&fetch, RSS_TARGET_ENDPOINT),
    ];
    if !json {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        println!(
            "tree-rss: a layer of {} entries ({} files, {} empty; {} dirs; {} symlinks; mean \
             path {:.0} B), each node its own process",
            args.entries,
            made.files,
            made.empty_files,
            made.dirs,
            made.symlinks,
            made.mean_path_bytes
        );
        println!("  {:<34} {:>10} {:>14} {:>10}  met?", "process", "wall", "peak RSS", "target");
        let row = |what: &str, m: &Measured, target: Option<u64>| {
            println!(
                "  {:<34} {:>8.1} s {:>10.0} MiB {:>10}  {}",
                what,
                m.wall_s,
                m.peak_rss_bytes as f64 / MIB,
                target.map_or("-".to_string(), |t| format!("< {:.0} GiB", gib(t))),
                match target {
                    Some(t) if m.peak_rss_bytes < t => "met",
                    Some(_) => "NOT MET",
                    None => "-",
                }
            )
        };
        row("oasis-seed publish", &publish, Some(RSS_TARGET_SEED));
        row("oasis-seed serve", &seed_m, Some(RSS_TARGET_SEED));
        row("oasis-reflector serve", &refl_m, Some(RSS_TARGET_REFLECTOR));
        row("oasis-endpoint fetch", &fetch, Some(RSS_TARGET_ENDPOINT));
        println!(
            "  serve processes before the fetch: seed {:.0} MiB, reflector {:.0} MiB",
            seed_idle as f64 / MIB,
            refl_idle as f64 / MIB
        );
        println!(
            "  manifest: {} entries; signed root {} B; body {} B in {} chunks",
            manifest["entries"],
            manifest["signed_root_bytes"],
            manifest["body_bytes"],
            manifest["body_chunks"]
        );
        if fetched.entries != made.entries() {
            println!(
                "  WARNING: the fetched tree has {} entries, the layer {}",
                fetched.entries,
                made.entries()
            );
        }
    }
    let out = serde_json::json!({
        "entries": args.entries,
        "generator": made,
        "manifest": manifest,
        "publish": publish,
        "seed_serve": seed_m,
        "reflector_serve": refl_m,
        "endpoint_fetch": fetch,
        "seed_before_fetch_rss_bytes": seed_idle,
        "reflector_before_fetch_rss_bytes": refl_idle,
        "targets": targets.iter().map(|(m, t)| serde_json::json!({
            "process": m.name, "peak_rss_bytes": m.peak_rss_bytes, "target_bytes": t,
            "pass": m.peak_rss_bytes < *t,
        })).collect::<Vec<_>>(),
        "fetched": fetched,
        "fetched_entries_match": fetched.entries == made.entries(),
        "publish_report": publish_report,
        "fetch_report": fetch_report,
    });
    Ok(out)
}
