//! The sources an endpoint fetches from and failover between them. With several sources, all
//! are probed before the first connection and tried best first ([`crate::discovery`]: own site,
//! own subnet, least loaded, the seed last; the given order breaks ties). A source that cannot be
//! reached within [`CONNECT_TIMEOUT`] is skipped, and once a source has been given up it is not
//! tried again.

use oasis_core::identity::{NodeIdentity, TrustRoot};
use oasis_core::manifest::SignedManifest;
use oasis_core::net::{self, Client, NetError, TransportOptions};
use std::net::SocketAddr;
use std::time::Duration;

/// How long to wait for one source's QUIC handshake before trying the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a manifest request may take (manifests can be large).
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a source was skipped or given up, for reports and error messages.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceFailure {
    pub addr: String,
    pub problem: String,
}

/// The ordered source list and the endpoint used to reach them.
pub struct Sources {
    endpoint: quinn::Endpoint,
    addrs: Vec<SocketAddr>,
    next: usize,
    pub failures: Vec<SourceFailure>,
    site: Option<String>,
    ranked: bool,
    /// Who we are, for the registration sent on every connection (issue #5).
    me: oasis_core::identity::PeerInfo,
}

impl Sources {
    /// Must be called within a tokio runtime.
    pub fn new(identity: &NodeIdentity, addrs: Vec<SocketAddr>) -> Result<Sources, NetError> {
        let opts = TransportOptions::default();
        // An IPv6 socket is dual-stack where the system allows it, so it reaches both families.
        let endpoint = match addrs.iter().find(|a| a.is_ipv6()) {
            Some(v6) => net::client_endpoint_for(*v6, identity, &opts)?,
            None => net::client_endpoint(identity, &opts)?,
        };
        Ok(Sources {
            endpoint,
            addrs,
            next: 0,
            failures: Vec::new(),
            site: identity.info().site.clone(),
            ranked: false,
            me: identity.info().clone(),
        })
    }

    /// Records that `addr` was given up and why.
    pub fn fail(&mut self, addr: SocketAddr, problem: impl std::fmt::Display) {
        let problem = problem.to_string();
        tracing::warn!(source = %addr, %problem, "giving up on source");
        self.failures.push(SourceFailure { addr: addr.to_string(), problem });
    }

    /// Connects to the next source in order that answers; None when none is left.
    pub async fn connect_next(&mut self) -> Option<Client> {
        if !self.ranked && self.addrs.len() > 1 {
            self.ranked = true;
            let ranked =
                crate::discovery::rank(&self.endpoint, self.site.as_deref(), &self.addrs).await;
            // A silent source stays as a last resort, but the user hears about it now.
            for p in ranked.iter().filter(|p| p.answered.is_none()) {
                self.fail(p.addr, "did not answer the probe; kept as a last resort");
            }
            self.addrs = ranked.into_iter().map(|p| p.addr).collect();
            tracing::info!(order = ?self.addrs, "sources ranked");
        }
        while let Some(&addr) = self.addrs.get(self.next) {
            self.next += 1;
            let attempt =
                tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&self.endpoint, addr));
            match attempt.await {
                Ok(Ok(client)) => {
                    tracing::info!(source = %addr, peer = %client.peer(), "connected");
                    crate::sleep::register(&client, &crate::sleep::agent_info(&self.me)).await;
                    return Some(client);
                }
                Ok(Err(e)) => self.fail(addr, e),
                Err(_) => self.fail(addr, format!("no answer within {CONNECT_TIMEOUT:?}")),
            }
        }
        None
    }

    /// Closes the endpoint. The close frames are queued at once and sent by the endpoint's
    /// driver task; the draining period after them (three probe timeouts, about 0.1 s on a LAN,
    /// during which a lost close frame would be sent again) runs in the background instead of
    /// holding up the caller: a fetch is done when its tree is committed. Measured on a 256 MiB
    /// fetch over loopback: the time outside the transfer fell from 0.15–0.19 s to 0.04 s.
    pub async fn close(self) {
        self.endpoint.close(0u32.into(), b"done");
        let endpoint = self.endpoint;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
}

/// Asks `client` for `name[@version]` and opens it against the trusted manifest key; checks the
/// answer is the layer asked for (a validly signed manifest of another layer or version is
/// refused as well).
pub async fn get_manifest(
    client: &Client,
    name: &str,
    version: Option<&str>,
    trust: &TrustRoot,
) -> anyhow::Result<SignedManifest> {
    let asked = match version {
        Some(v) => format!("{name}@{v}"),
        None => name.to_string(),
    };
    let bytes = match tokio::time::timeout(MANIFEST_TIMEOUT, client.manifest(name, version)).await {
        Err(_) => anyhow::bail!("no manifest within {MANIFEST_TIMEOUT:?}"),
        Ok(Err(e)) if e.is_not_found() => anyhow::bail!("layer {asked} not found"),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(b)) => b,
    };
    let key = *trust.manifest_key();
    let sm = tokio::task::spawn_blocking(move || SignedManifest::open(&bytes, &key))
        .await?
        .map_err(|e| anyhow::anyhow!("manifest refused: {e}"))?;
    let m = &sm.manifest;
    if m.name != name || version.is_some_and(|v| v != m.version) {
        anyhow::bail!("manifest refused: asked for {asked}, got a manifest for {}", m.label());
    }
    Ok(sm)
}
