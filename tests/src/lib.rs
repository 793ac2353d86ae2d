//! Shared harness for the workspace integration tests: a real seed on 127.0.0.1, enrolled
//! nodes, random trees, and tree comparison.

use oasis_core::manifest::LayerKind;
use oasis_core::pki::{Role, SeedAuthority};
use oasis_seed::{publish, PublishOptions, PublishReport, RunningSeed};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct TestSeed {
    pub dir: tempfile::TempDir,
    pub seed: RunningSeed,
}

impl TestSeed {
    pub async fn start() -> anyhow::Result<TestSeed> {
        let dir = tempfile::tempdir()?;
        SeedAuthority::init(&dir.path().join("seed"))?;
        let seed = RunningSeed::start(
            &dir.path().join("seed"),
            "127.0.0.1:0".parse()?,
            Some("127.0.0.1:0".parse()?),
        )
        .await?;
        Ok(TestSeed { dir, seed })
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("seed")
    }

    pub fn publish(&self, name: &str, version: &str, src: &Path) -> anyhow::Result<PublishReport> {
        let auth = SeedAuthority::load(&self.data())?;
        let opts = PublishOptions {
            name: name.into(),
            version: version.into(),
            kind: LayerKind::Base,
            chunking: Default::default(),
            progress: false,
        };
        Ok(publish(&self.seed.store, auth.signing_key(), src, &opts)?.1)
    }

    /// Enrolls a node and returns its state directory.
    pub fn enroll(&self, role: Role, name: &str) -> anyhow::Result<PathBuf> {
        let out = self.dir.path().join(format!("node-{name}"));
        SeedAuthority::load(&self.data())?.enroll(role, name, Some("test"), &out, false)?;
        Ok(out)
    }

    /// Enrolls a node of `site` and returns its state directory.
    pub fn enroll_in_site(&self, role: Role, name: &str, site: &str) -> anyhow::Result<PathBuf> {
        let out = self.dir.path().join(format!("node-{name}"));
        SeedAuthority::load(&self.data())?.enroll(role, name, Some(site), &out, false)?;
        Ok(out)
    }

    /// A reflector enrolled by this seed (role reflector, site "test"), listening on 127.0.0.1
    /// with metrics, its upstream this seed; `tweak` adjusts the configuration first.
    pub async fn reflector(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut oasis_reflector::ReflectorConfig),
    ) -> anyhow::Result<oasis_reflector::RunningReflector> {
        let state = self.dir.path().join(format!("node-{name}"));
        if !state.join("node.key").exists() {
            self.enroll(Role::Reflector, name)?;
        }
        let mut cfg = oasis_reflector::ReflectorConfig::new(
            &state,
            "127.0.0.1:0".parse()?,
            self.seed.addr.to_string(),
        );
        cfg.metrics = Some("127.0.0.1:0".parse()?);
        tweak(&mut cfg);
        oasis_reflector::RunningReflector::start(cfg).await
    }

    /// The manifest body of `name@version` as the seed stores it: (distinct body chunks,
    /// their stored bytes). Bodies move as chunks, so the byte counts of a fetch include them.
    pub fn body(&self, name: &str, version: &str) -> anyhow::Result<(u64, u64)> {
        let key = *oasis_core::pki::NodeIdentity::load(&self.data())?.trust().manifest_key();
        let bytes = self
            .seed
            .store
            .manifest_bytes(name, Some(version))?
            .ok_or_else(|| anyhow::anyhow!("{name}@{version} is not published"))?;
        let chunks =
            oasis_core::manifest::SignedRoot::open(&bytes, &key)?.root.unique_body_chunks();
        let mut stored = 0;
        for c in &chunks {
            let (_, _, len) = self
                .seed
                .store
                .chunk_location(&c.id)?
                .ok_or_else(|| anyhow::anyhow!("body chunk {} is not in the store", c.id))?;
            stored += u64::from(len);
        }
        Ok((chunks.len() as u64, stored))
    }

    pub fn served_bytes(&self) -> u64 {
        self.seed.metrics.served_bytes.get()
    }

    /// `oasis_served_bytes_total` as scraped over HTTP, the way an operator reads it.
    pub async fn scrape(&self, name: &str) -> anyhow::Result<f64> {
        let addr = self.seed.metrics_addr.expect("metrics enabled");
        let text = http_get(addr, "/metrics").await?;
        oasis_core::metrics::sample_value(&text, name)
            .ok_or_else(|| anyhow::anyhow!("metric {name} not in /metrics output:\n{text}"))
    }
}

/// A minimal HTTP/1.0 GET, so tests read metrics through the real endpoint.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(out))
}

/// Shape of a random tree.
#[derive(Clone, Copy)]
pub struct TreeSpec {
    pub small_files: usize,
    pub large_files: usize,
    pub large_size: usize,
    pub depth: usize,
}

/// Writes a random tree: many small files, a few large ones, empty files, symlinks (relative
/// and absolute, dangling included), and a deep directory chain. Deterministic per seed.
pub fn random_tree(root: &Path, seed: u64, spec: TreeSpec) -> std::io::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root)?;
    let dirs = ["etc", "usr/bin", "usr/lib/x86_64", "var/cache", "opt/app/share"];
    for d in dirs {
        std::fs::create_dir_all(root.join(d))?;
    }
    for i in 0..spec.small_files {
        let d = dirs[i % dirs.len()];
        let len = rng.gen_range(0..6000);
        let data: Vec<u8> = (0..len).map(|_| rng.gen_range(b'a'..=b'z')).collect();
        let p = root.join(d).join(format!("f{i}.txt"));
        std::fs::write(&p, data)?;
        if i % 7 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    for i in 0..spec.large_files {
        let mut data = vec![0u8; spec.large_size];
        // Half random, half repetitive text: realistic compressibility.
        rng.fill(&mut data[..spec.large_size / 2]);
        for (j, b) in data[spec.large_size / 2..].iter_mut().enumerate() {
            *b = b"oasis layer data "[j % 17];
        }
        std::fs::write(root.join(format!("usr/lib/x86_64/big{i}.so")), data)?;
    }
    std::fs::write(root.join("etc/empty"), b"")?;
    std::os::unix::fs::symlink("../usr/bin", root.join("etc/bin-link"))?;
    std::os::unix::fs::symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime"))?;
    std::os::unix::fs::symlink("does-not-exist", root.join("var/dangling"))?;
    let mut deep = root.join("deep");
    for i in 0..spec.depth {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep)?;
    std::fs::write(deep.join("bottom.txt"), b"the bottom of a deep tree\n")?;
    Ok(())
}

/// Flips bytes in a copy of the tree so that a few chunks change (for v2 publishes).
pub fn mutate_tree(root: &Path) -> std::io::Result<()> {
    let big = root.join("usr/lib/x86_64/big0.so");
    if big.exists() {
        let mut data = std::fs::read(&big)?;
        let mid = data.len() / 3;
        data[mid..mid + 100].fill(0x42);
        std::fs::write(&big, data)?;
    }
    std::fs::write(root.join("etc/added-in-v2.conf"), b"new = true\n")?;
    Ok(())
}

/// What a tree holds, for comparison: path -> (kind, mode, content hash or link target).
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for de in std::fs::read_dir(&dir).expect("readable") {
            let de = de.expect("entry");
            let p = de.path();
            let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            if rel.contains(".oasis-tmp") {
                out.insert(rel, "LEFTOVER TEMP FILE".into());
                continue;
            }
            let md = std::fs::symlink_metadata(&p).expect("stat");
            let mode = md.permissions().mode() & 0o7777;
            let v = if md.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).expect("link").display())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {mode:o}")
            } else {
                let data = std::fs::read(&p).expect("read");
                format!("file {mode:o} {} {}", data.len(), blake3::hash(&data).to_hex())
            };
            out.insert(rel, v);
        }
    }
    out
}

/// Everything a tree holds that a restore must give back: [`snapshot`]'s kind, mode, content
/// and link target, plus owner, mtime to the nanosecond, extended attributes, and which paths
/// share an inode (named by the first path of the group).
pub fn snapshot_meta(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = snapshot(root);
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for (rel, v) in out.iter_mut() {
        let p = root.join(rel);
        let md = std::fs::symlink_metadata(&p).expect("stat");
        let xattrs = oasis_core::fsmeta::read_xattrs(&p).expect("xattrs");
        let xattrs: Vec<String> =
            xattrs.iter().map(|x| format!("{}={}", x.name, hex_of(&x.value))).collect();
        let mut extra = format!(
            " owner {}:{} mtime {}.{:09} xattrs [{}]",
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            xattrs.join(" ")
        );
        if md.is_file() && md.nlink() > 1 {
            // Paths come in sorted order, so the first of an inode's names is the group's name.
            let first = inodes.entry((md.dev(), md.ino())).or_insert_with(|| rel.clone());
            extra.push_str(&format!(" inode-of {first}"));
        }
        v.push_str(&extra);
    }
    out
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A wide, shallow tree of `entries` entries shaped like a Linux `/usr/share`: directories of
/// a few hundred small files with realistic path lengths, a third of them empty. Cheap to
/// write and to publish, and its manifest is far larger than its content.
pub fn wide_tree(root: &Path, entries: usize) -> std::io::Result<()> {
    let per_dir = 250;
    let mut made = 0;
    let mut d = 0;
    while made < entries {
        let dir = root.join(format!("usr/share/locale-{d:04}/LC_MESSAGES"));
        std::fs::create_dir_all(&dir)?;
        made += if d == 0 { 4 } else { 2 };
        for i in 0..per_dir.min(entries.saturating_sub(made)) {
            let p = dir.join(format!("package-{i:05}-translations.mo"));
            if i % 3 == 0 {
                std::fs::write(&p, b"")?;
            } else {
                std::fs::write(&p, format!("msgid {d} {i}\n"))?;
            }
            made += 1;
        }
        d += 1;
    }
    Ok(())
}

pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status()?;
    if !status.success() {
        return Err(std::io::Error::other("cp -a failed"));
    }
    Ok(())
}

/// A seed's chunk source that flips one bit in the middle of the chunks it serves: every time,
/// or only the first time each chunk is asked for. Counts the chunk requests it answers.
pub struct CorruptingSource {
    inner: oasis_seed::source::SeedSource,
    pub asked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    first_time_only: bool,
    sent: std::sync::Mutex<std::collections::HashSet<oasis_core::ChunkId>>,
}

impl CorruptingSource {
    pub fn new(seed: &TestSeed, first_time_only: bool) -> CorruptingSource {
        CorruptingSource {
            inner: oasis_seed::source::SeedSource { store: seed.seed.store.clone() },
            asked: Default::default(),
            first_time_only,
            sent: Default::default(),
        }
    }
}

impl oasis_core::net::ContentSource for CorruptingSource {
    async fn manifest(
        &self,
        n: &str,
        v: Option<&str>,
    ) -> Result<Option<bytes::Bytes>, oasis_core::net::SourceError> {
        self.inner.manifest(n, v).await
    }

    async fn chunk(
        &self,
        id: oasis_core::ChunkId,
    ) -> Result<Option<oasis_core::compress::StoredChunk>, oasis_core::net::SourceError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut c = self.inner.chunk(id).await?;
        let corrupt = !self.first_time_only || self.sent.lock().unwrap().insert(id);
        if let (true, Some(c)) = (corrupt, c.as_mut()) {
            let mut data = c.data.to_vec();
            let mid = data.len() / 2;
            data[mid] ^= 0x01;
            c.data = bytes::Bytes::from(data);
        }
        Ok(c)
    }

    async fn have(
        &self,
        ids: &[oasis_core::ChunkId],
    ) -> Result<Vec<bool>, oasis_core::net::SourceError> {
        self.inner.have(ids).await
    }

    async fn layers(
        &self,
    ) -> Result<Vec<oasis_core::wire::LayerRef>, oasis_core::net::SourceError> {
        self.inner.layers().await
    }
}

/// Samples a byte counter every `every` from now until [`RateSampler::finish`]: for WAN rates
/// measured over sliding windows (the reflector's and the site's caps).
pub struct RateSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(f64, u64)>>,
}

impl RateSampler {
    pub fn start(
        counter: impl Fn() -> u64 + Send + 'static,
        every: std::time::Duration,
    ) -> RateSampler {
        let t0 = std::time::Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = vec![(0.0, counter())];
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                samples.push((t0.elapsed().as_secs_f64(), counter()));
            }
            samples
        });
        RateSampler { stop, task }
    }

    /// Stops sampling; the samples as (seconds since start, counter).
    pub async fn finish(self) -> anyhow::Result<Samples> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Samples(self.task.await?))
    }
}

/// (seconds since the start, counter value) pairs, in time order.
pub struct Samples(pub Vec<(f64, u64)>);

impl Samples {
    /// When the counter first moved (None: it never did).
    pub fn first_move(&self) -> Option<f64> {
        let base = self.0.first()?.1;
        self.0.iter().find(|s| s.1 > base).map(|s| s.0)
    }

    /// When the counter reached its final value.
    pub fn last_move(&self) -> Option<f64> {
        let end = self.0.last()?.1;
        self.0.iter().find(|s| s.1 == end).map(|s| s.0)
    }

    /// Rates (per second) of every window of at least `len` seconds that starts at or after
    /// `from` and ends at or before `until`.
    pub fn windows(&self, len: f64, from: f64, until: f64) -> Vec<f64> {
        let mut out = Vec::new();
        for (i, &(t, b)) in self.0.iter().enumerate() {
            if t < from {
                continue;
            }
            let Some(&(t2, b2)) = self.0[i..].iter().find(|s| s.0 >= t + len) else { break };
            if t2 > until {
                break;
            }
            out.push(b2.saturating_sub(b) as f64 / (t2 - t));
        }
        out
    }
}

/// The counter's rate per second over the next `over`.
pub async fn measure_rate(counter: impl Fn() -> u64, over: std::time::Duration) -> f64 {
    let (b0, t0) = (counter(), std::time::Instant::now());
    tokio::time::sleep(over).await;
    counter().saturating_sub(b0) as f64 / t0.elapsed().as_secs_f64()
}
