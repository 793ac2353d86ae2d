//! The connection to the upstream (the seed): kept up by one task that reconnects with
//! exponential backoff (capped), and shared by everything that asks upstream.

use crate::metrics::ReflectorMetrics;
use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::pki::NodeIdentity;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// First wait before reconnecting after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

pub struct Upstream {
    /// `HOST:PORT` as configured.
    pub target: String,
    endpoint: quinn::Endpoint,
    client: watch::Sender<Option<Client>>,
    origin: Instant,
    /// Milliseconds since `origin` of the last chunk answer received (0 = never).
    last_progress_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    metrics: ReflectorMetrics,
}

/// Resolves `HOST:PORT` to its first address.
pub async fn resolve(target: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    match tokio::net::lookup_host(target).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("{target} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {target}: {e}")),
    }
}

/// A client endpoint able to reach `target` (dual-stack when the target is IPv6 or unknown).
pub async fn client_endpoint(
    target: &str,
    identity: &NodeIdentity,
    opts: &TransportOptions,
) -> Result<quinn::Endpoint, net::NetError> {
    match resolve(target).await {
        Ok(addr) => net::client_endpoint_for(addr, identity, opts),
        // Unknown for now: an IPv6 socket is dual-stack where the system allows it.
        Err(_) => net::client_endpoint_for("[::1]:1".parse().expect("valid"), identity, opts)
            .or_else(|_| net::client_endpoint(identity, opts)),
    }
}

/// Connects to `target` with `endpoint`, resolving the name first.
pub async fn connect(endpoint: &quinn::Endpoint, target: &str) -> Result<Client, String> {
    let addr = resolve(target).await?;
    Client::connect(endpoint, addr, oasis_core::net::accept::CONTENT)
        .await
        .map_err(|e| e.to_string())
}

impl Upstream {
    pub fn new(target: String, endpoint: quinn::Endpoint, metrics: ReflectorMetrics) -> Self {
        Upstream {
            target,
            endpoint,
            client: watch::Sender::new(None),
            origin: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            metrics,
        }
    }

    /// Keeps a connection up until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match connect(&self.endpoint, &self.target).await {
                Ok(client) => {
                    tracing::info!(upstream = %self.target, peer = %client.peer(), "connected to upstream");
                    let since = Instant::now();
                    self.client.send_replace(Some(client.clone()));
                    self.metrics.upstream_connected.set(1);
                    let reason = client.connection().closed().await;
                    self.client.send_replace(None);
                    self.metrics.upstream_connected.set(0);
                    if reason == quinn::ConnectionError::LocallyClosed {
                        // This reflector is stopping: it closed the connection itself.
                        tracing::debug!(upstream = %self.target, "upstream connection closed here");
                        return;
                    }
                    let why = format!("connection to {} lost: {reason}", self.target);
                    tracing::warn!(upstream = %self.target, reason = %reason, "upstream connection lost; reconnecting");
                    self.set_error(why);
                    if since.elapsed() >= STABLE_AFTER {
                        backoff = MIN_BACKOFF;
                    }
                }
                Err(e) => {
                    tracing::warn!(upstream = %self.target, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach upstream");
                    self.set_error(e);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// Why the upstream is (or was last) unusable.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The connection if it is up now.
    pub fn current(&self) -> Option<Client> {
        self.client.borrow().clone().filter(|c| c.connection().close_reason().is_none())
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Waits up to `timeout` for a connection.
    pub async fn wait(&self, timeout: Duration) -> Option<Client> {
        let mut rx = self.client.subscribe();
        let wait = async {
            loop {
                if let Some(c) = rx.borrow_and_update().clone() {
                    if c.connection().close_reason().is_none() {
                        return Some(c);
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Drops a connection that misbehaves (timed out answers): the run task reconnects.
    pub fn reset(&self, client: &Client, why: &str) {
        tracing::warn!(upstream = %self.target, reason = why, "dropping the upstream connection");
        client.connection().close(1u32.into(), b"upstream not answering");
    }

    /// Records that upstream delivered something.
    pub fn progress(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_progress_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Did upstream deliver anything within `d`?
    pub fn progressed_within(&self, d: Duration) -> bool {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        last > 0 && self.origin.elapsed().as_millis() as u64 <= last + d.as_millis() as u64
    }

    /// A short description of why a miss could not be served.
    pub fn trouble(&self) -> String {
        if self.is_connected() {
            format!("upstream {} is connected but did not deliver in time", self.target)
        } else {
            match self.last_error() {
                Some(e) => format!("upstream {} unreachable ({e})", self.target),
                None => format!("upstream {} not connected yet", self.target),
            }
        }
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"reflector shutting down");
    }

    /// Waits for the closed connection to drain (see [`net::drain`]).
    pub async fn drain(&self) {
        net::drain(&self.endpoint).await;
    }
}
