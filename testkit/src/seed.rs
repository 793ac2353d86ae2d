//! A real seed on 127.0.0.1 with its authority, and the nodes it enrolls.

use anyhow::Context;
use oasis_core::manifest::{ChunkRef, LayerKind, SignedRoot};
use oasis_core::pki::{Role, SeedAuthority};
use oasis_core::ChunkId;
use oasis_seed::{publish, PublishOptions, PublishReport, RunningSeed};
use std::path::{Path, PathBuf};

/// A running seed in `base/seed`, serving on 127.0.0.1 with metrics, and its authority.
pub struct TestSeed {
    /// The temporary directory `base` is, when the kit made it (removed on drop).
    _tmp: Option<tempfile::TempDir>,
    /// Where the seed and every node it enrolls keep their state.
    pub base: PathBuf,
    pub seed: RunningSeed,
    pub auth: SeedAuthority,
}

impl TestSeed {
    /// A seed in a fresh temporary directory.
    pub async fn start() -> anyhow::Result<TestSeed> {
        let tmp = tempfile::tempdir()?;
        let mut s = TestSeed::start_in(tmp.path()).await?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// A seed in `base/seed` (`base` is kept: runs that leave their nodes for inspection).
    pub async fn start_in(base: &Path) -> anyhow::Result<TestSeed> {
        let data = base.join("seed");
        let auth = SeedAuthority::init(&data).context("initialising the seed")?;
        let seed =
            RunningSeed::start(&data, "127.0.0.1:0".parse()?, Some("127.0.0.1:0".parse()?)).await?;
        Ok(TestSeed::from_parts(seed, auth, base))
    }

    /// A signer of latest statements with this seed's key and the default lifetime (for
    /// servers a test builds over the seed's store).
    pub fn signer(&self) -> std::sync::Arc<oasis_seed::signer::SeedSigner> {
        std::sync::Arc::new(
            oasis_seed::signer::SeedSigner::load(
                &self.data(),
                oasis_seed::signer::DEFAULT_LATEST_TTL,
            )
            .expect("the seed's keys load, and the default lifetime is valid"),
        )
    }

    /// A seed started elsewhere (with its own options), its state under `base/seed`.
    pub fn from_parts(seed: RunningSeed, auth: SeedAuthority, base: &Path) -> TestSeed {
        TestSeed { _tmp: None, base: base.to_path_buf(), seed, auth }
    }

    /// Takes the running seed out (to stop it or start another on its data) with the base
    /// directory and, when the kit made it, the temporary directory that holds it: keep that
    /// alive while the state is used.
    pub fn into_parts(self) -> (RunningSeed, PathBuf, Option<tempfile::TempDir>) {
        (self.seed, self.base, self._tmp)
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The seed's data directory.
    pub fn data(&self) -> PathBuf {
        self.base.join("seed")
    }

    fn publish_options(name: &str, version: &str) -> PublishOptions {
        TestSeed::publish_options_of(name, version, LayerKind::Base)
    }

    fn publish_options_of(name: &str, version: &str, kind: LayerKind) -> PublishOptions {
        PublishOptions {
            name: name.into(),
            version: version.into(),
            kind,
            chunking: Default::default(),
            progress: false,
        }
    }

    /// Publishes the tree at `src` as a layer of `kind`, available to site "test" like
    /// [`TestSeed::publish`].
    pub fn publish_as(
        &self,
        name: &str,
        version: &str,
        kind: LayerKind,
        src: &Path,
    ) -> anyhow::Result<PublishReport> {
        let opts = TestSeed::publish_options_of(name, version, kind);
        let report = publish(&self.seed.store, self.auth.signing_key(), src, &opts)?.1;
        self.make_available("test", name, version)?;
        Ok(report)
    }

    /// Publishes the tree at `src` as base layer `name@version`, available to site "test"
    /// (the site [`TestSeed::enroll`] puts nodes in; nothing is delivered).
    pub fn publish(&self, name: &str, version: &str, src: &Path) -> anyhow::Result<PublishReport> {
        self.publish_as(name, version, LayerKind::Base, src)
    }

    /// Makes `name@version` available to the endpoints of `site` (an entitlement, without
    /// delivery: `oasis-seed assign --available`), unless the site has `name` assigned already
    /// (a test's own assignment stays as the test made it).
    pub fn make_available(&self, site: &str, name: &str, version: &str) -> anyhow::Result<()> {
        let catalog = oasis_seed::catalog::Catalog::open(&self.seed.store)?;
        if !catalog.list(Some(site))?.iter().any(|a| a.name == name) {
            catalog.make_available(site, name, version)?;
        }
        Ok(())
    }

    /// [`TestSeed::publish`] off the async threads.
    pub async fn publish_blocking(
        &self,
        name: &str,
        version: &str,
        src: &Path,
    ) -> anyhow::Result<PublishReport> {
        let opts = TestSeed::publish_options(name, version);
        let (store, key, src) =
            (self.seed.store.clone(), self.auth.signing_key().clone(), src.to_owned());
        let report =
            tokio::task::spawn_blocking(move || publish(&store, &key, &src, &opts)).await??.1;
        self.make_available("test", name, version)?;
        Ok(report)
    }

    /// Enrolls a node of site "test" and returns its state directory (`base/node-NAME`).
    pub fn enroll(&self, role: Role, name: &str) -> anyhow::Result<PathBuf> {
        self.enroll_in_site(role, name, "test")
    }

    /// Enrolls a node of `site` and returns its state directory (`base/node-NAME`).
    pub fn enroll_in_site(&self, role: Role, name: &str, site: &str) -> anyhow::Result<PathBuf> {
        let out = self.base.join(format!("node-{name}"));
        self.auth.enroll(role, name, Some(site), &out, false)?;
        Ok(out)
    }

    /// A reflector enrolled by this seed (role reflector, site "test" unless enrolled before),
    /// listening on 127.0.0.1 with metrics, its upstream this seed; `tweak` adjusts the
    /// configuration first.
    pub async fn reflector(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut oasis_reflector::ReflectorConfig),
    ) -> anyhow::Result<oasis_reflector::RunningReflector> {
        let state = self.base.join(format!("node-{name}"));
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

    /// The distinct body chunks of the manifest of `name@version`, as the seed stores it.
    fn body_chunks(&self, name: &str, version: &str) -> anyhow::Result<Vec<ChunkRef>> {
        let bytes = self
            .seed
            .store
            .manifest_bytes(name, Some(version))?
            .with_context(|| format!("{name}@{version} is not published"))?;
        Ok(SignedRoot::open(&bytes, self.auth.trust().manifest_key())?.root.unique_body_chunks())
    }

    /// Stored (as sent) size of chunk `id` in the seed's store.
    fn stored_len(&self, id: &ChunkId) -> anyhow::Result<u64> {
        let (_, _, len) = self
            .seed
            .store
            .chunk_location(id)?
            .with_context(|| format!("chunk {id} is not in the seed's store"))?;
        Ok(u64::from(len))
    }

    /// The manifest body of `name@version` as the seed stores it: (distinct body chunks,
    /// their stored bytes). Bodies move as chunks, so the byte counts of a fetch include them.
    pub fn body(&self, name: &str, version: &str) -> anyhow::Result<(u64, u64)> {
        let chunks = self.body_chunks(name, version)?;
        let mut stored = 0;
        for c in &chunks {
            stored += self.stored_len(&c.id)?;
        }
        Ok((chunks.len() as u64, stored))
    }

    /// Stored bytes of the manifest body chunks of `name@version` that `previous` did not
    /// have: what a site holding the previous version pulls for the new manifest's body.
    pub fn new_body_bytes(
        &self,
        name: &str,
        version: &str,
        previous: Option<&str>,
    ) -> anyhow::Result<u64> {
        let old: std::collections::HashSet<ChunkId> = match previous {
            Some(p) => self.body_chunks(name, p)?.into_iter().map(|c| c.id).collect(),
            None => Default::default(),
        };
        let mut sum = 0;
        for c in self.body_chunks(name, version)?.into_iter().filter(|c| !old.contains(&c.id)) {
            sum += self.stored_len(&c.id)?;
        }
        Ok(sum)
    }

    /// Stored size (as sent on the wire) of every unique chunk of `name@version`, its
    /// manifest's body chunks first, then the layer's in manifest order.
    pub fn stored_chunks(&self, name: &str, version: &str) -> anyhow::Result<Vec<(ChunkId, u64)>> {
        Ok(self.stored_layer(name, version)?.0)
    }

    /// As [`TestSeed::stored_chunks`], and how many of them, first in the list, are the
    /// manifest's body chunks.
    pub fn stored_layer(
        &self,
        name: &str,
        version: &str,
    ) -> anyhow::Result<(Vec<(ChunkId, u64)>, usize)> {
        let m = self
            .seed
            .store
            .open_manifest(name, Some(version), self.auth.trust().manifest_key())?
            .context("layer not published")?;
        let mut out = Vec::new();
        // The manifest's body chunks first: a reflector pulls them before any chunk of the
        // layer, through the same path.
        let body = m.root.unique_body_chunks();
        for c in body.iter().copied().chain(m.manifest.unique_chunks()) {
            out.push((c.id, self.stored_len(&c.id)?));
        }
        Ok((out, body.len()))
    }

    /// Bytes the seed has served.
    pub fn served_bytes(&self) -> u64 {
        self.seed.metrics.served_bytes.get()
    }

    /// A metric's value as scraped over HTTP, the way an operator reads it.
    pub async fn scrape(&self, name: &str) -> anyhow::Result<f64> {
        let addr = self.seed.metrics_addr.context("metrics enabled")?;
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
