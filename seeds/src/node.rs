//! A seed's data directory and a running seed server, for the binary, tests and the demo.
//!
//! Layout of DATA: trust.pem, ca.pem, ca.key, manifest.key, node.pem, node.key (written by
//! `oasis-seed init`; `split-keys` moves the two private keys away), and `store/` (the chunk
//! store with layers and manifests).

use crate::keys::{self, Keys, SignerClient};
use crate::signer::{SeedSigner, DEFAULT_LATEST_TTL};
use crate::source::SeedSource;
use anyhow::Context;
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, ServeLimits, TransportOptions};
use oasis_core::pki::{NodeIdentity, Revocations, SeedAuthority, TrustRoot};
use oasis_core::store::ChunkStore;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Instrument;

/// The keys a serving seed signs with: DATA's, or the signer's at `signer`, checked to be this
/// seed's. With a signer, DATA must hold no private key: an operator who split them off must not
/// be left with a copy on the serving host by mistake.
async fn open_keys(data: &Path, signer: Option<&Path>) -> anyhow::Result<Arc<dyn Keys>> {
    let Some(socket) = signer else {
        if !keys::holds_private_keys(data) && data.join(oasis_core::pki::TRUST_FILE).exists() {
            anyhow::bail!(
                "{} holds no {} (its private keys were split off to an `oasis-seed signer`): \
                 serve with --signer SOCKET",
                data.display(),
                oasis_core::pki::CA_KEY_FILE
            );
        }
        // Loading the authority proves DATA holds a complete root of trust.
        return Ok(Arc::new(SeedAuthority::load(data)?));
    };
    if keys::holds_private_keys(data) {
        anyhow::bail!(
            "{} still holds {} or {}: a seed serving with --signer keeps no private key on its \
             host; move them to the signer's directory with `oasis-seed split-keys`",
            data.display(),
            oasis_core::pki::CA_KEY_FILE,
            oasis_core::pki::MANIFEST_KEY_FILE
        );
    }
    let trust = TrustRoot::load(&data.join(oasis_core::pki::TRUST_FILE))?;
    let socket = socket.to_path_buf();
    let client =
        tokio::task::spawn_blocking(move || SignerClient::connect(&socket, trust)).await??;
    tracing::info!(signer = %client.socket().display(), "signing through a separate signer");
    Ok(Arc::new(client))
}

pub fn store_dir(data: &Path) -> PathBuf {
    data.join("store")
}

/// Opens the seed's chunk store, refusing a DATA that was never initialised.
pub fn open_store(data: &Path) -> anyhow::Result<ChunkStore> {
    if !data.join(oasis_core::pki::TRUST_FILE).exists() {
        anyhow::bail!(
            "{} is not a seed data directory (no trust.pem): run `oasis-seed init --data {}` first",
            data.display(),
            data.display()
        );
    }
    Ok(ChunkStore::open(&store_dir(data))?)
}

/// What a serving seed refuses peers by and renews certificates with.
#[derive(Default)]
pub struct Serving {
    pub revocations: Revocations,
    /// The CA key, here or in a signer; None: `Renew` is refused.
    pub authority: Option<Arc<dyn Keys>>,
}

/// A seed serving on QUIC (and metrics over HTTP when asked).
pub struct RunningSeed {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub store: Arc<ChunkStore>,
    pub metrics: Arc<NodeMetrics>,
    /// The revocation list the seed holds: what `oasis-seed revoke` last signed.
    pub revocations: Revocations,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    mesh: Option<crate::mesh::SeedMesh>,
    /// The mesh handle, for the task renewing the seed's certificate.
    mesh_for_renewal: Arc<OnceLock<oasis_mesh::MeshHandle>>,
    /// Following the revocation list and renewing the certificate: stopped with the seed.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningSeed {
    pub async fn start(
        data: &Path,
        listen: SocketAddr,
        metrics_listen: Option<SocketAddr>,
    ) -> anyhow::Result<RunningSeed> {
        Self::start_with_limits(
            data,
            listen,
            metrics_listen,
            ServeLimits::default(),
            DEFAULT_LATEST_TTL,
            None,
        )
        .await
    }

    /// [`RunningSeed::start`] holding peers to `limits`, its latest statements valid for
    /// `latest_ttl`, signing with the keys in DATA or, given `signer`, with those of the
    /// `oasis-seed signer` answering on that socket.
    pub async fn start_with_limits(
        data: &Path,
        listen: SocketAddr,
        metrics_listen: Option<SocketAddr>,
        limits: ServeLimits,
        latest_ttl: Duration,
        signer: Option<&Path>,
    ) -> anyhow::Result<RunningSeed> {
        let keys = open_keys(data, signer).await?;
        let mut identity = NodeIdentity::load(data)?;
        let (k, id, d) = (keys.clone(), identity.clone(), data.to_path_buf());
        if let Some(renewed) =
            tokio::task::spawn_blocking(move || crate::renewal::renew_if_due(&*k, &id, &d))
                .await??
        {
            identity = renewed;
        }
        let store = Arc::new(open_store(data)?);
        let signer = SeedSigner::new(keys.clone(), latest_ttl)
            .map_err(|e| anyhow::anyhow!("oasis-seed serve: {e}"))?;
        crate::admin::spawn(data, keys.clone(), store.clone()).with_context(|| {
            format!("cannot open the admin socket {}", crate::admin::socket_path(data).display())
        })?;
        let revocations = Revocations::default();
        let following = crate::revocations::follow(keys.clone(), revocations.clone()).await?;
        let signer = Some(Arc::new(signer));
        let serving = Serving { revocations, authority: Some(keys.clone()) };
        let (renewing, data) = (identity.clone(), data.to_path_buf());
        let mut seed =
            Self::start_with(identity, store, signer, listen, metrics_listen, limits, serving)
                .await?;
        seed.background.push(following);
        let (mesh, metrics) = (seed.mesh_for_renewal.clone(), seed.metrics.clone());
        seed.background.push(crate::renewal::spawn(keys, renewing, data, mesh, metrics));
        Ok(seed)
    }

    /// A seed over `store`; without `signer`, `GetLatest`, `GetSnapshot` and `GetPlan` are
    /// refused, and without `serving.authority`, `Renew`.
    pub async fn start_with(
        identity: NodeIdentity,
        store: Arc<ChunkStore>,
        signer: Option<Arc<SeedSigner>>,
        listen: SocketAddr,
        metrics_listen: Option<SocketAddr>,
        limits: ServeLimits,
        Serving { revocations, authority }: Serving,
    ) -> anyhow::Result<RunningSeed> {
        let transport = limits.transport(&TransportOptions::default());
        let endpoint = net::server_endpoint(listen, &identity, &transport)
            .with_context(|| format!("cannot listen for QUIC on {listen}"))?;
        let addr = endpoint.local_addr().context("reading the bound address")?;
        let metrics = Arc::new(NodeMetrics::new());
        metrics.certificate_expiry.set(identity.expires_at());
        let metrics_addr = match metrics_listen {
            Some(m) => Some(
                metrics
                    .clone()
                    .serve(m)
                    .await
                    .with_context(|| format!("cannot serve metrics on {m}"))?,
            ),
            None => None,
        };
        let readers = crate::readers::Readers::open(&store)?;
        let (r, st, key) = (readers.clone(), store.clone(), *identity.trust().manifest_key());
        let (layers, records) =
            tokio::task::spawn_blocking(move || r.backfill(&st, &key)).await??;
        if layers + records > 0 {
            tracing::info!(layers, records, "indexed who may read the chunks stored before");
        }
        let fleet = Arc::new(crate::entitlements::FleetCache::default());
        let source =
            Arc::new(SeedSource { store: store.clone(), signer, authority, fleet: fleet.clone() });
        let access = crate::readers::SeedReaders { readers, store: store.clone(), fleet };
        let router = net::Router::new(source.clone())
            .access(Arc::new(access))
            .inventory(source.clone())
            .backup(source)
            .limits(limits)
            .revocations(revocations.clone());
        let serving = net::serve(endpoint.clone(), router, metrics.clone());
        let task = tokio::spawn(serving.instrument(tracing::info_span!("task", task = "serve")));
        tracing::info!(%addr, node = %identity.info(), "seed serving");
        Ok(RunningSeed {
            addr,
            metrics_addr,
            store,
            metrics,
            revocations,
            endpoint,
            task,
            mesh: None,
            mesh_for_renewal: Arc::default(),
            background: Vec::new(),
        })
    }

    /// Joins the reflector mesh with the identity in `data` (see [`crate::mesh`]). Without a
    /// serving address in `settings`, the address the seed is bound to is published, unless
    /// it is unspecified (0.0.0.0 / ::).
    pub fn join_mesh(
        &mut self,
        data: &Path,
        mut settings: oasis_mesh::MeshConfig,
    ) -> anyhow::Result<&oasis_mesh::MeshHandle> {
        anyhow::ensure!(self.mesh.is_none(), "the seed is in the mesh already");
        if settings.serving_addr.is_none() {
            if self.addr.ip().is_unspecified() {
                tracing::warn!(
                    bound = %self.addr,
                    "the seed listens on an unspecified address: its serving address is not \
                     published in the mesh (give --advertise)"
                );
            } else {
                settings.serving_addr = Some(self.addr);
            }
        }
        settings.revocations = self.revocations.clone();
        let identity = NodeIdentity::load(data)?;
        let mesh = crate::mesh::SeedMesh::start(
            settings,
            &identity,
            data,
            self.store.clone(),
            &self.metrics,
        )?;
        let _ = self.mesh_for_renewal.set(mesh.handle.clone());
        Ok(&self.mesh.insert(mesh).handle)
    }

    /// The seed's mesh node, when it joined the mesh.
    pub fn mesh(&self) -> Option<&oasis_mesh::MeshHandle> {
        self.mesh.as_ref().map(|m| &m.handle)
    }

    /// Stops accepting and closes every connection at once (used by tests to kill a seed).
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"seed shutting down");
        self.task.abort();
        for t in &self.background {
            t.abort();
        }
        if let Some(m) = &self.mesh {
            m.shutdown();
        }
    }

    /// Serves until SIGINT or SIGTERM, then closes connections and lets them drain, so that
    /// reflectors and endpoints hear of it before the process exits.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        oasis_core::shutdown::shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown();
        oasis_core::net::drain(&self.endpoint).await;
        Ok(())
    }
}
