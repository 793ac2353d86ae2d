//! What the tree benchmark measures against and with: counting a tree, `cp -a`, an rsync
//! daemon on 127.0.0.1, and the emulated WAN between the seed and the reflector.

use super::*;

/// Entries of a tree on disk, as `find` would count them below its root.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct TreeCount {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Regular files with more than one link.
    pub multi_linked: u64,
    pub bytes: u64,
}

pub fn count_tree(root: &Path) -> std::io::Result<TreeCount> {
    let mut c = TreeCount::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in std::fs::read_dir(&d)? {
            let p = de?.path();
            let md = std::fs::symlink_metadata(&p)?;
            c.entries += 1;
            let ft = md.file_type();
            if ft.is_dir() {
                c.dirs += 1;
                stack.push(p);
            } else if ft.is_symlink() {
                c.symlinks += 1;
            } else if ft.is_file() {
                use std::os::unix::fs::MetadataExt;
                c.files += 1;
                c.bytes += md.len();
                if md.nlink() > 1 {
                    c.multi_linked += 1;
                }
            }
        }
    }
    Ok(c)
}

pub(super) fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.stdin(Stdio::null()).status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(st.success(), "{cmd:?} failed ({st})");
    Ok(())
}

pub(super) fn timed_cmd(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    run_cmd(cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

pub(super) fn sync_disk() -> anyhow::Result<()> {
    run_cmd(&mut Command::new("sync"))
}

pub(super) fn remove(p: &Path) -> anyhow::Result<()> {
    if std::fs::symlink_metadata(p).is_ok() {
        std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

/// `cp -a src dst` (then `sync` if asked) into a fresh `dst`, after a `sync`; seconds.
pub(super) fn cp_a(src: &Path, dst: &Path, with_sync: bool) -> anyhow::Result<f64> {
    remove(dst)?;
    sync_disk()?;
    let script = if with_sync { "cp -a \"$0\" \"$1\" && sync" } else { "cp -a \"$0\" \"$1\"" };
    let s = timed_cmd(Command::new("sh").arg("-c").arg(script).arg(src).arg(dst))?;
    remove(dst)?;
    Ok(s)
}

pub(super) fn check_rsync() -> anyhow::Result<()> {
    let ok = Command::new("rsync")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    anyhow::ensure!(
        ok,
        "rsync is not installed: the tree benchmark's fetch reference is `rsync -a` from an \
         rsync daemon on 127.0.0.1; install it (e.g. `apt-get install -y rsync`)"
    );
    Ok(())
}

/// A TCP port free on 127.0.0.1 whose UDP twin is free too (QUIC listens on UDP).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 with its UDP twin free after 100 tries")
}

/// Waits until something accepts TCP connections on `addr`, or `child` exits (an error
/// carrying the end of its log), or `limit` passes.
pub(crate) fn wait_listening(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    log: &Path,
    limit: Duration,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            anyhow::bail!("{what} exited ({st}) before listening on {addr}: {}", log_tail(log));
        }
        anyhow::ensure!(
            t0.elapsed() < limit,
            "{what} did not listen on {addr} within {} s: {}",
            limit.as_secs(),
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
    format!("{} says: {tail}", log.display())
}

/// An rsync daemon on 127.0.0.1 serving `src` as module `tree`, read-only, as root so it
/// reads every file and sends owners as they are.
pub(super) struct RsyncDaemon {
    pub(super) child: Child,
    pub(super) port: u16,
}

impl RsyncDaemon {
    pub(super) fn start(src: &Path, work: &Path) -> anyhow::Result<RsyncDaemon> {
        let port = free_port()?;
        let conf = work.join("rsyncd.conf");
        let log = work.join("rsyncd.log");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nmax connections = 8\nlog file = {}\n\n[tree]\n    path = {}\n    \
                 read only = yes\n    uid = 0\n    gid = 0\n",
                log.display(),
                src.display()
            ),
        )?;
        let mut child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()))
            .arg("--port")
            .arg(port.to_string())
            .arg("--address")
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("rsyncd.stderr"))?)
            .spawn()
            .context("starting the rsync daemon")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if let Err(e) =
            wait_listening(addr, &mut child, "rsync --daemon", &log, Duration::from_secs(20))
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(RsyncDaemon { child, port })
    }

    /// `rsync -a rsync://127.0.0.1:PORT/tree/ dst/` into a fresh `dst`, after a `sync`; seconds.
    pub(super) fn fetch(&self, dst: &Path) -> anyhow::Result<f64> {
        remove(dst)?;
        sync_disk()?;
        let url = format!("rsync://127.0.0.1:{}/tree/", self.port);
        timed_cmd(Command::new("rsync").arg("-a").arg(url).arg(format!("{}/", dst.display())))
    }
}

impl Drop for RsyncDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The WAN side of a reflector: what it pulled from upstream, what the seed served.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(super) struct Wan {
    pub(super) reflector_upstream_bytes: u64,
    pub(super) reflector_upstream_chunks: u64,
    pub(super) seed_served_bytes: u64,
    pub(super) seed_served_chunks: u64,
}

impl Wan {
    pub(super) fn read(refl: &RunningReflector, seed: &RunningSeed) -> Wan {
        Wan {
            reflector_upstream_bytes: refl.stats.upstream_bytes.get(),
            reflector_upstream_chunks: refl.stats.upstream_chunks.get(),
            seed_served_bytes: seed.metrics.served_bytes.get(),
            seed_served_chunks: seed.metrics.served_chunks.get(),
        }
    }

    pub(super) fn since(self, before: Wan) -> Wan {
        Wan {
            reflector_upstream_bytes: self.reflector_upstream_bytes
                - before.reflector_upstream_bytes,
            reflector_upstream_chunks: self.reflector_upstream_chunks
                - before.reflector_upstream_chunks,
            seed_served_bytes: self.seed_served_bytes - before.seed_served_bytes,
            seed_served_chunks: self.seed_served_chunks - before.seed_served_chunks,
        }
    }

    pub(super) fn is_zero(&self) -> bool {
        self.reflector_upstream_bytes == 0
            && self.reflector_upstream_chunks == 0
            && self.seed_served_bytes == 0
            && self.seed_served_chunks == 0
    }
}
