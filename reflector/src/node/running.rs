//! `RunningReflector`: starting a reflector (identity, cache, QUIC endpoint, upstream, mesh,
//! wake and metrics tasks), its public handle, and stopping it.

use super::*;

/// Longest a stop waits for tasks and work in flight to end.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A reflector serving endpoints on QUIC (and metrics over HTTP when configured).
pub struct RunningReflector {
    /// Where endpoints connect (the bound address).
    pub addr: SocketAddr,
    /// Where /metrics is served, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The node's metrics (`oasis_served_bytes_total` and the reflector families).
    pub metrics: Arc<NodeMetrics>,
    /// The reflector's own counters, for in-process readers.
    pub stats: ReflectorMetrics,
    inner: Arc<Reflector>,
    endpoint: quinn::Endpoint,
    /// The reflector's long-lived tasks, each in a span named for it.
    tasks: JoinSet<()>,
    /// Ends every task of `tasks` but `serve` (which ends when the endpoint closes).
    cancel: CancellationToken,
    /// Work spawned on behalf of requests, by the node, the fetcher and the siblings.
    work: TaskTracker,
    mesh_task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Spawns `task` into `tasks` in a span `task = name`, ending when `cancel` fires.
fn spawn_task(
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
    name: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let cancel = cancel.clone();
    tasks.spawn(
        async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = task => {}
            }
        }
        .instrument(tracing::info_span!("task", task = name)),
    );
}

impl RunningReflector {
    /// Loads the identity, opens the cache, binds `listen`, connects upstream (in the
    /// background: the reflector serves what it has cached while upstream is away) and serves.
    pub async fn start(config: ReflectorConfig) -> anyhow::Result<RunningReflector> {
        config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let identity = load_identity(&config).await?;
        let node_metrics = Arc::new(NodeMetrics::new());
        let metrics = ReflectorMetrics::register(&node_metrics);
        let largest = u64::from(ChunkParams::default().max) + CHUNK_FRAME_OVERHEAD;
        let policy = Arc::new(
            PolicyControl::new(config.wan.clone(), largest, metrics.clone())
                .map_err(|e: PolicyError| anyhow::anyhow!("{e}"))?,
        );
        let (dir, cap, m, key) = (
            config.cache_dir(),
            config.cache_size,
            metrics.clone(),
            *identity.trust().manifest_key(),
        );
        let cache = Arc::new(
            tokio::task::spawn_blocking(move || Cache::open(&dir, cap, m, key))
                .await?
                .with_context(|| {
                    format!("opening the cache in {}", config.cache_dir().display())
                })?,
        );
        let up_endpoint =
            upstream::client_endpoint(&config.upstream, &identity, &TransportOptions::default())
                .await
                .context("setting up the upstream QUIC endpoint")?;
        let upstream =
            Arc::new(Upstream::new(config.upstream.clone(), up_endpoint, metrics.clone()));
        let work = TaskTracker::new();
        let fetcher = Arc::new(Fetcher::new(
            cache.clone(),
            upstream.clone(),
            policy.clone(),
            metrics.clone(),
            crate::fetcher::Batching {
                batch_max: config.batch_max_chunks,
                batch_delay: config.batch_delay,
                batches_in_flight: config.batches_in_flight,
            },
            work.clone(),
        ));
        let transport = config.limits.transport(&config.transport);
        let endpoint = net::server_endpoint(config.listen, &identity, &transport)
            .with_context(|| format!("cannot listen for QUIC on {}", config.listen))?;
        let addr = endpoint.local_addr().context("reading the bound address")?;
        let revocations =
            oasis_core::net::credentials::load_saved_revocations(&config.state, identity.trust());
        let (siblings, siblings_task, mesh_task) = start_mesh(
            &config,
            &identity,
            addr,
            &cache,
            &metrics,
            &node_metrics,
            &work,
            &revocations,
        )
        .await?;
        let metrics_addr = match config.metrics {
            Some(m) => Some(
                node_metrics
                    .clone()
                    .serve(m)
                    .await
                    .with_context(|| format!("cannot serve metrics on {m}"))?,
            ),
            None => None,
        };
        let (wake, wake_task) = {
            let policy = policy.clone();
            crate::wake::WakeNode::new(
                &identity,
                &config.state,
                cache.store.db(),
                addr,
                upstream.clone(),
                config.wake.clone(),
                Box::new(move || policy.timezone()),
                &node_metrics,
            )
            .context("setting up the wake state directory")?
        };
        let site = identity.info().site.clone().unwrap_or_default();
        let entitlements = Arc::new(crate::entitlements::SiteEntitlements::load(
            &config.state,
            *identity.trust().manifest_key(),
            &site,
        ));
        let (ahead, ahead_rx) = crate::pull_ahead::channel();
        let inner = Arc::new(Reflector {
            cfg: config.clone(),
            identity: identity.clone(),
            cache: cache.clone(),
            upstream: upstream.clone(),
            fetcher: fetcher.clone(),
            policy: policy.clone(),
            metrics: metrics.clone(),
            flights: Mutex::new(HashMap::new()),
            latest_flights: Mutex::new(HashMap::new()),
            chunk_lists: Mutex::new(HashMap::new()),
            siblings: siblings.clone(),
            wake: wake.clone(),
            revocations,
            entitlements: entitlements.clone(),
            index: crate::readers::LayerIndex::open(cache.store.db())
                .context("opening the chunk index of the cache")?,
            listed: tokio::sync::Mutex::new(None),
            tasks: work.clone(),
            ahead,
        });
        let pull_ahead = crate::pull_ahead::PullAheadTask {
            rx: ahead_rx,
            fetcher: fetcher.clone(),
            store: cache.store.clone(),
            policy: policy.clone(),
            miss_timeout: config.miss_timeout,
            tasks: work.clone(),
        };
        let (tasks, cancel) = spawn_tasks(
            &config,
            &inner,
            &endpoint,
            &node_metrics,
            wake_task,
            siblings_task,
            pull_ahead,
        );
        tracing::info!(
            %addr,
            upstream = %config.upstream,
            node = %identity.info(),
            metrics = ?metrics_addr,
            "reflector serving"
        );
        Ok(RunningReflector {
            addr,
            metrics_addr,
            metrics: node_metrics,
            stats: metrics,
            inner,
            endpoint,
            tasks,
            cancel,
            work,
            mesh_task,
        })
    }

    /// Stops serving and fetching at once: connections are closed, tasks told to end.
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"reflector shutting down");
        self.inner.upstream.close();
        if let Some(s) = &self.inner.siblings {
            s.close();
        }
        self.cancel.cancel();
        self.inner.fetcher.abort_all("the reflector is shutting down");
    }

    /// [`shutdown`](Self::shutdown), then waits (up to 10 s) until every task and every piece
    /// of work it spawned has ended, so that the cache is released and a new reflector can open
    /// the same state directory.
    pub async fn stop(mut self) {
        self.shutdown();
        let deadline = Instant::now() + STOP_WAIT;
        let tasks = &mut self.tasks;
        let ended = tokio::time::timeout_at(deadline.into(), async {
            while tasks.join_next().await.is_some() {}
        });
        if ended.await.is_err() {
            tracing::warn!(left = self.tasks.len(), "tasks still running after {STOP_WAIT:?}");
        }
        if let Some(t) = self.mesh_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.work.close();
        if tokio::time::timeout_at(deadline.into(), self.work.wait()).await.is_err() {
            tracing::warn!(left = self.work.len(), "work still in flight after {STOP_WAIT:?}");
        }
        let _ = self.inner.cache.store.db().flush_async().await;
        // Endpoints and the seed hear the close before the process exits.
        tokio::join!(net::drain(&self.endpoint), self.inner.upstream.drain());
    }

    /// Serves until SIGINT or SIGTERM; reloads the policy file on SIGHUP.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
            let stop = oasis_core::shutdown::shutdown_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the bandwidth policy");
                        // Success and refusal are logged by reload.
                        if let Ok(None) = self.reload_policy() {
                            tracing::info!("no policy file configured; nothing to reload");
                        }
                    }
                }
            }
        }
        #[cfg(not(unix))]
        oasis_core::shutdown::shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await;
        Ok(())
    }

    /// Re-reads the policy file and puts it in force; a bad file is refused (error returned and
    /// logged) and the policy in force stays. `Ok(None)` when no policy file is configured.
    pub fn reload_policy(&self) -> Result<Option<String>, PolicyError> {
        self.inner.policy.reload()
    }

    /// Puts `policy` in force now, without a file.
    pub fn set_policy(&self, policy: BandwidthPolicy) {
        self.inner.policy.set_policy(policy);
    }

    /// The WAN rate in force now (bytes/s); None = unlimited.
    pub fn wan_rate_now(&self) -> Option<u64> {
        self.inner.policy.limiter.rate_now()
    }

    /// The mesh handle (None when the mesh is off).
    pub fn mesh(&self) -> Option<&oasis_mesh::MeshHandle> {
        self.inner.siblings.as_ref().map(|s| &s.mesh)
    }

    /// Is the upstream connection up?
    pub fn upstream_connected(&self) -> bool {
        self.inner.upstream.is_connected()
    }

    /// Waits up to `within` until the reflector is connected to its upstream and holds its
    /// site's entitlement statement, as a reflector that has been running a while does: an
    /// endpoint's first request then goes straight upstream. Returns whether it got there.
    pub async fn wait_ready(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let held = self.inner.entitlements.wait(within).await.is_some();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        held && self.inner.upstream.wait(left).await.is_some()
    }

    /// The upstream connection's smoothed round trip, while it is up: what the fetcher's
    /// unpaid window grows with.
    pub fn upstream_rtt(&self) -> Option<std::time::Duration> {
        self.inner.upstream.current().map(|c| c.connection().rtt())
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The cache's chunk store (tests inspect and damage it).
    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.inner.cache.store
    }

    /// Is the chunk pinned (by any pinned layer, or as a body chunk of a cached manifest)?
    pub fn is_pinned(&self, id: &ChunkId) -> bool {
        self.inner.cache.is_pinned(id)
    }

    /// Pins a layer's chunks (cached now or later): they are never evicted. Also caches the
    /// manifest: its root (verified against `trust.pem`) and its body chunks. Returns false if
    /// the layer was pinned already.
    pub async fn pin_layer(&self, manifest: &SignedManifest) -> anyhow::Result<bool> {
        let (cache, sm) = (self.inner.cache.clone(), manifest.clone());
        let key = *self.inner.identity.trust().manifest_key();
        tokio::task::spawn_blocking(move || {
            let root = SignedRoot::open(&sm.to_bytes(), &key)?;
            let body = sm.manifest.body();
            if body.chunks != root.root.body {
                bail!(
                    "manifest {}: its entries do not encode to the body its root names",
                    root.label()
                );
            }
            // Held first: the body chunks are pinned as they go in.
            cache.hold_manifest(&root)?;
            for (c, data) in body.pieces() {
                if !cache.contains(&c.id) {
                    cache.put(&StoredChunk::encode_with_id(c.id, data))?;
                }
            }
            drop(body);
            cache.pin_layer(&root, &sm.manifest.unique_chunks())
        })
        .await?
    }

    /// Pins `name@version`, getting its manifest from the cache or upstream.
    pub async fn pin_layer_by_name(&self, name: &str, version: &str) -> anyhow::Result<bool> {
        let layer = self.inner.layer(name, Some(version)).await?;
        self.inner.pin(&layer).await
    }

    /// Removes a layer's pin; its chunks become evictable unless another pinned layer holds
    /// them. Returns false if it was not pinned.
    pub async fn unpin_layer(&self, name: &str, version: &str) -> anyhow::Result<bool> {
        self.inner.unpin(name, version).await
    }

    /// Pinned layers as (name, version).
    pub fn pinned_layers(&self) -> Vec<(String, String)> {
        self.inner.cache.pinned_layers()
    }

    /// Waits up to `within` until exactly one of `site` (the running reflectors of one site)
    /// holds the site's whole WAN rate (`oasis_wan_site_share` = 1): the site's WAN leader,
    /// three heartbeat rounds after the reflectors found each other. Its index in `site`.
    pub async fn wait_for_wan_leader(site: &[RunningReflector], within: Duration) -> Option<usize> {
        let t0 = Instant::now();
        loop {
            let full: Vec<usize> =
                (0..site.len()).filter(|i| site[*i].stats.wan_share.get() == 1.0).collect();
            if let [one] = full[..] {
                return Some(one);
            }
            if t0.elapsed() >= within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pulls every chunk of `name@version` (None: latest) the cache lacks, in the Background
    /// traffic class (it yields to endpoints waiting). Waits until done.
    pub async fn prefetch_layer(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> anyhow::Result<PrefetchReport> {
        self.inner.prefetch(name, version).await
    }
}

impl Drop for RunningReflector {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The reflector's identity from its state directory, refused unless it is a reflector's.
async fn load_identity(config: &ReflectorConfig) -> anyhow::Result<NodeIdentity> {
    let state = config.state.clone();
    let identity = tokio::task::spawn_blocking(move || NodeIdentity::load(&state))
        .await?
        .with_context(|| {
            format!(
                "loading the reflector identity from {} (written by `oasis-seed enroll \
                 --role reflector --out DIR`)",
                config.state.display()
            )
        })?;
    if identity.info().role != Role::Reflector {
        bail!(
            "{} holds the identity of {}, not of a reflector: enroll this box with \
             `oasis-seed enroll --role reflector`",
            config.state.display(),
            identity.info()
        );
    }
    Ok(identity)
}

/// Spawns the reflector's long-lived tasks, each in a span named for it (see [`spawn_task`]).
fn spawn_tasks(
    config: &ReflectorConfig,
    inner: &Arc<Reflector>,
    endpoint: &quinn::Endpoint,
    node_metrics: &Arc<NodeMetrics>,
    wake_task: crate::wake::WakeTask,
    siblings_task: Option<SiblingsTask>,
    pull_ahead: crate::pull_ahead::PullAheadTask,
) -> (JoinSet<()>, CancellationToken) {
    let (upstream, fetcher, cache, policy, wake, siblings) = (
        &inner.upstream,
        &inner.fetcher,
        &inner.cache,
        &inner.policy,
        &inner.wake,
        &inner.siblings,
    );
    let (mut tasks, cancel) = (JoinSet::new(), CancellationToken::new());
    spawn_task(&mut tasks, &cancel, "upstream", upstream.clone().run());
    spawn_task(&mut tasks, &cancel, "fetcher", fetcher.clone().run());
    spawn_task(&mut tasks, &cancel, "pull-ahead", pull_ahead.run());
    {
        let cache = cache.clone();
        spawn_task(&mut tasks, &cancel, "evictor", async move {
            loop {
                let c = cache.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || c.evict()).await {
                    tracing::error!(error = %e, "evictor failed");
                }
                tokio::select! {
                    _ = cache.evict_wanted.notified() => {}
                    _ = tokio::time::sleep(EVICT_INTERVAL) => {}
                }
            }
        });
    }
    {
        let (policy, every) = (policy.clone(), config.policy_poll);
        spawn_task(&mut tasks, &cancel, "policy-watch", async move { policy.watch(every).await });
    }
    if !config.assignments_poll.is_zero() {
        let (inner, every) = (inner.clone(), config.assignments_poll);
        spawn_task(&mut tasks, &cancel, "assignments", async move {
            let mut pinned_by_sync: Vec<(String, String)> = Vec::new();
            loop {
                match inner.sync_assignments(&mut pinned_by_sync).await {
                    Ok(n) => tracing::debug!(assigned = n, "site assignments synced"),
                    Err(e) => tracing::warn!(error = %e, "cannot sync site assignments"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }
    if let Some(task) = siblings_task {
        spawn_task(&mut tasks, &cancel, "siblings", task.run());
    }
    if let Some(s) = &siblings {
        let announce = crate::mesh_link::announce_cached(inner.clone(), s.clone());
        spawn_task(&mut tasks, &cancel, "mesh-announce", announce);
        let load = crate::mesh_link::load_loop(
            s.clone(),
            fetcher.clone(),
            policy.clone(),
            cache.clone(),
            node_metrics.clone(),
            config.mesh.as_ref().map_or(Duration::from_secs(1), |m| m.heartbeat),
        );
        spawn_task(&mut tasks, &cancel, "mesh-load", load);
        let every = config.wake.sync_every;
        let gossip = crate::inventory_gossip::run(wake.clone(), s.mesh.clone(), every);
        spawn_task(&mut tasks, &cancel, "inventory-gossip", gossip);
    }
    spawn_task(&mut tasks, &cancel, "wake", wake_task.run());
    let revocations = crate::revocations::run(
        upstream.clone(),
        inner.revocations.clone(),
        inner.identity.trust().clone(),
        config.state.clone(),
        crate::revocations::UPSTREAM_POLL,
    );
    spawn_task(&mut tasks, &cancel, "revocations", revocations);
    let entitlements = crate::entitlements::run(
        upstream.clone(),
        inner.entitlements.clone(),
        crate::entitlements::UPSTREAM_POLL,
    );
    spawn_task(&mut tasks, &cancel, "entitlements", entitlements);
    let renewal = crate::renewal::run(
        upstream.clone(),
        inner.identity.clone(),
        config.state.clone(),
        siblings.clone(),
        node_metrics.clone(),
    );
    spawn_task(&mut tasks, &cancel, "renewal", renewal);
    // Not cancelled: `serve` ends when the endpoint closes, once its connections have.
    tasks.spawn(
        net::serve(
            endpoint.clone(),
            {
                let source = Arc::new(ReflectorSource(inner.clone()));
                net::Router::new(source.clone())
                    .inventory(source)
                    .limits(config.limits.clone())
                    .revocations(inner.revocations.clone())
                    .access(Arc::new(super::ReflectorAccess(inner.clone())))
            },
            node_metrics.clone(),
        )
        .instrument(tracing::info_span!("task", task = "serve")),
    );
    (tasks, cancel)
}

/// Starts the mesh and the sibling logic when the config has a `[mesh]` section.
#[allow(clippy::too_many_arguments)]
async fn start_mesh(
    config: &ReflectorConfig,
    identity: &NodeIdentity,
    addr: SocketAddr,
    cache: &Arc<Cache>,
    metrics: &ReflectorMetrics,
    node_metrics: &Arc<NodeMetrics>,
    work: &TaskTracker,
    revocations: &oasis_core::pki::Revocations,
) -> anyhow::Result<(
    Option<Arc<Siblings>>,
    Option<SiblingsTask>,
    Option<JoinHandle<anyhow::Result<()>>>,
)> {
    Ok(match &config.mesh {
        None => (None, None, None),
        Some(m) => {
            let advertise = match m.advertise {
                Some(a) => a,
                None => crate::mesh_link::advertised_addr(addr, &config.upstream).await,
            };
            let mesh_config = oasis_mesh::MeshConfig {
                listen: m.listen.clone(),
                bootstrap: m.bootstrap.clone(),
                mdns: m.mdns,
                heartbeat: m.heartbeat,
                serving_addr: Some(advertise),
                revocations: revocations.clone(),
                ..oasis_mesh::MeshConfig::default()
            };
            let (handle, task) = oasis_mesh::Mesh::start(mesh_config, identity, &config.state)
                .context("starting the reflector mesh")?;
            node_metrics.with_registry(|r| handle.metrics().register(r));
            let sib_endpoint = net::client_endpoint(identity, &TransportOptions::default())
                .context("setting up the QUIC endpoint for siblings")?;
            tracing::info!(peer_id = %handle.peer_id(), %advertise, site = ?handle.site(), "mesh started");
            let settings = crate::siblings::SiblingSettings {
                peer_sites: config.peer_sites.clone(),
                delegate_timeout: config.miss_timeout * 6,
                sharing: m.wan_sharing,
                heartbeat: m.heartbeat,
            };
            let (s, siblings_task) =
                Siblings::new(handle, settings, cache, sib_endpoint, metrics.clone(), work.clone());
            (Some(s), Some(siblings_task), Some(task))
        }
    })
}
