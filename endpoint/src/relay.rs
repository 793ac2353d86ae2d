//! `oasis-endpoint relay`: an awake endpoint relaying wakes for its subnet where no reflector
//! sits on it. It serves only `Wake` (from the seed or a reflector of its site) on QUIC
//! ([`oasis_core::wake::relay::RelayService`]) and registers with its sources as a relay, again
//! every `every`, so the inventory sees it awake (relays are tried most recently seen first).

use anyhow::Context;
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::accept;
use oasis_core::net::{self, Client, TransportOptions};
use oasis_core::pki::NodeIdentity;
use oasis_core::wake::relay::RelayService;
use oasis_core::wake::{self as wol, IpNet, SendOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long one registration with a source may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What `oasis-endpoint relay` is given.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    pub state: PathBuf,
    /// QUIC address to serve `Wake` on.
    pub listen: SocketAddr,
    /// Where to register (the site's reflector or the seed); the first that accepts is used.
    pub sources: Vec<SocketAddr>,
    /// Registration interval.
    pub every: Duration,
    /// Addresses to register instead of the interfaces' (`--addr`, for a box whose interface
    /// addresses are not its LAN addresses, e.g. in a container).
    pub addrs: Option<Vec<IpNet>>,
    /// Packets per wake and their spacing.
    pub send: SendOptions,
}

/// A running relay listener.
pub struct RelayListener {
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
    service: Arc<RelayService>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Registers `info` with the first source that accepts it; the error names every failure.
async fn register_once(
    ep: &quinn::Endpoint,
    sources: &[SocketAddr],
    info: &wol::DeviceInfo,
) -> Result<SocketAddr, String> {
    let mut problems = Vec::new();
    for &s in sources {
        let attempt = async {
            let c = Client::connect(ep, s, accept::CONTENT).await.map_err(|e| e.to_string())?;
            let r = c.register(info).await.map_err(|e| e.to_string());
            c.close();
            r
        };
        match tokio::time::timeout(REGISTER_TIMEOUT, attempt).await {
            Ok(Ok(())) => return Ok(s),
            Ok(Err(e)) => problems.push(format!("{s}: {e}")),
            Err(_) => problems.push(format!("{s}: no answer within {REGISTER_TIMEOUT:?}")),
        }
    }
    Err(problems.join("; "))
}

impl RelayListener {
    /// Serves `Wake` on `opts.listen` and keeps registering as a relay with `opts.sources`.
    pub async fn start(opts: RelayOptions) -> anyhow::Result<RelayListener> {
        let identity = NodeIdentity::load(&opts.state).with_context(|| {
            format!("loading the endpoint identity from {}", opts.state.display())
        })?;
        let endpoint = net::server_endpoint(opts.listen, &identity, &TransportOptions::default())
            .with_context(|| format!("cannot listen for QUIC on {}", opts.listen))?;
        let addr = endpoint.local_addr()?;
        let client = net::client_endpoint(&identity, &TransportOptions::default())
            .context("setting up the QUIC client endpoint")?;
        let mut info = wol::iface::self_info(
            identity.info(),
            concat!("oasis-endpoint ", env!("CARGO_PKG_VERSION")),
            None,
            Some(addr),
        );
        if let Some(a) = &opts.addrs {
            info.addrs = a.clone();
        }
        let service = Arc::new(RelayService::new(identity.info().clone(), opts.send));
        let revocations = net::credentials::load_saved_revocations(&opts.state, identity.trust());
        let router = net::Router::new(Arc::new(net::Refuse))
            .inventory(service.clone())
            .revocations(revocations);
        let serving = net::serve(endpoint.clone(), router, Arc::new(NodeMetrics::new()));
        let mut tasks =
            vec![tokio::spawn(serving.instrument(tracing::info_span!("task", task = "serve")))];
        let registering = async move {
            loop {
                match register_once(&client, &opts.sources, &info).await {
                    Ok(s) => tracing::debug!(source = %s, "registered as a relay"),
                    Err(e) => tracing::warn!(error = %e, "cannot register as a relay"),
                }
                tokio::time::sleep(opts.every).await;
            }
        };
        tasks.push(tokio::spawn(
            registering.instrument(tracing::info_span!("task", task = "relay-register")),
        ));
        tracing::info!(%addr, "relaying wakes");
        Ok(RelayListener { addr, endpoint, service, tasks })
    }

    /// Magic packets sent for others so far.
    pub fn packets_sent(&self) -> u64 {
        self.service.packets_sent()
    }

    /// Stops serving: from now on the relay does not answer, like a machine gone to sleep.
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"relay stopping");
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for RelayListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}
