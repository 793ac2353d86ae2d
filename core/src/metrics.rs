//! Prometheus metrics in text format, served at http://ADDR/metrics.
//!
//! One `NodeMetrics` per process holds every counter a node exposes; crates add their own
//! families to `registry` before serving.

use axum::{routing::get, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

pub struct NodeMetrics {
    registry: Mutex<Registry>,
    /// Bytes of chunk payload sent (as sent on the wire, i.e. stored/compressed size).
    pub served_bytes: Counter,
    pub served_chunks: Counter,
    /// Requests refused with an error frame (malformed, too large, not found...).
    pub request_errors: Counter,
    pub connections: Gauge,
    /// Uploaded chunk payload bytes accepted (as sent, i.e. stored/compressed size).
    pub upload_bytes: Counter,
    /// Uploaded chunks accepted, and how many of them were new to the store.
    pub upload_chunks: Counter,
    pub upload_new_chunks: Counter,
    /// Connections refused at the handshake (the server's total) or closed after it (one
    /// peer's share): [`crate::net::ServeLimits`].
    pub refused_connections: Counter,
    /// Connections refused before the handshake because their source address was turned away
    /// within [`crate::net::ServeLimits::source_ban`].
    pub banned_connections: Counter,
    /// Answers reset because the peer took none of their bytes for the write-stall limit.
    pub stalled_answers: Counter,
    /// Connections refused, or closed, because the peer's certificate is revoked.
    pub revoked_peers: Counter,
    /// The CRL number of the revocation list held (0: none).
    pub revocation_list: Gauge,
    /// When this node's certificate expires (Unix seconds): renewal moves it on.
    pub certificate_expiry: Gauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("oasis");
        let served_bytes = Counter::default();
        let served_chunks = Counter::default();
        let request_errors = Counter::default();
        let connections = Gauge::default();
        registry.register(
            "served_bytes",
            "Bytes of chunk payload sent to peers, as sent on the wire",
            served_bytes.clone(),
        );
        registry.register("served_chunks", "Chunks sent to peers", served_chunks.clone());
        registry.register(
            "request_errors",
            "Requests answered with an error frame",
            request_errors.clone(),
        );
        registry.register("connections", "Open peer connections", connections.clone());
        let (upload_bytes, upload_chunks, upload_new_chunks) =
            (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "upload_bytes",
            "Bytes of uploaded chunk payload accepted, as sent on the wire",
            upload_bytes.clone(),
        );
        registry.register("upload_chunks", "Uploaded chunks accepted", upload_chunks.clone());
        registry.register(
            "upload_new_chunks",
            "Uploaded chunks new to the device that sent them (the seed's store may hold one \
             already, from a layer or another device)",
            upload_new_chunks.clone(),
        );
        let (refused_connections, stalled_answers) = (Counter::default(), Counter::default());
        registry.register(
            "refused_connections",
            "Connections refused over the server's connection limits",
            refused_connections.clone(),
        );
        let banned_connections = Counter::default();
        registry.register(
            "banned_connections",
            "Connections refused before the handshake: their source address (IP and port) was \
             turned away within source_ban",
            banned_connections.clone(),
        );
        registry.register(
            "stalled_answers",
            "Answers reset because the peer stopped reading them",
            stalled_answers.clone(),
        );
        let (revoked_peers, revocation_list, certificate_expiry) =
            (Counter::default(), Gauge::default(), Gauge::default());
        registry.register(
            "revoked_peers",
            "Connections refused or closed because the peer's certificate is revoked",
            revoked_peers.clone(),
        );
        registry.register(
            "revocation_list_number",
            "CRL number of the revocation list this node holds (0: none)",
            revocation_list.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "When this node's certificate expires, in Unix seconds",
            certificate_expiry.clone(),
        );
        NodeMetrics {
            registry: Mutex::new(registry),
            served_bytes,
            served_chunks,
            request_errors,
            connections,
            upload_bytes,
            upload_chunks,
            upload_new_chunks,
            refused_connections,
            banned_connections,
            stalled_answers,
            revoked_peers,
            revocation_list,
            certificate_expiry,
        }
    }

    /// Lets a crate add its own metric families (names get the `oasis_` prefix).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }

    /// Serves /metrics on `addr` until the process ends. Returns the bound address.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let m = self.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        );
        tokio::spawn(
            async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            }
            .instrument(tracing::info_span!("task", task = "metrics", addr = %bound)),
        );
        Ok(bound)
    }
}

/// Reads one sample value (e.g. `oasis_served_bytes_total`) out of a text exposition.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}
