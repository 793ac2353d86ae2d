//! Wake-on-LAN on the reflector: the site's device inventory, relaying wakes for the seed and
//! siblings, and scheduled delivery (waking the site's machines when an assignment's delivery
//! window opens, in staggered batches, and recording per machine what happened).
//!
//! The inventory holds the registrations this reflector received (forwarded to the seed), the
//! site's inventory pulled from the seed, and what the site's other reflectors gossip over the
//! mesh ([`crate::inventory_gossip`]), merged by last-seen. It persists in the reflector's sled
//! database (tree `devices`, JSON [`DeviceEntry`] values keyed by name) and is exported to
//! `STATE/wake/devices.json` for `oasis-reflector wake`, which runs beside the serving reflector
//! and so cannot open its sled database. Scheduled runs go to `STATE/wake/runs.json` (read by
//! `oasis-reflector wake-status`); both files are replaced atomically.
//!
//! Modules: [`inventory`] (registrations, merging, sync with the seed), [`relay`] (sending
//! wakes here or through another relay), [`delivery`] (scheduled runs), [`cli`] (the commands
//! that read the exported files); this file holds the node, its settings and its loop.

use crate::upstream::Upstream;
use oasis_core::gossip::InventoryRecord;
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, Client, SourceError, TransportOptions};
use oasis_core::pki::{NodeIdentity, PeerInfo, Role};
use oasis_core::wake::schedule::{self, MachineResult, ScheduleConfig, WakeRun};
use oasis_core::wake::{
    self as wol, route, DeviceEntry, DeviceInfo, SendOptions, WakeSent, WakeTarget,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

mod cli;
mod delivery;
mod inventory;
mod relay;

pub use cli::*;

/// How the reflector paces scheduled wakes and syncs its inventory.
#[derive(Clone, Debug)]
pub struct WakeSettings {
    /// Batches, timeouts and rewakes of scheduled wakes.
    pub schedule: ScheduleConfig,
    /// Packets per wake and their spacing.
    pub send: SendOptions,
    /// How often the inventory is synced with the seed and windows are checked (while a run is
    /// active, runs are driven every `tick`).
    pub sync_every: Duration,
    pub tick: Duration,
    /// Scheduled delivery on or off.
    pub scheduled: bool,
    /// Addresses to register instead of the interfaces' (a box whose interface addresses are
    /// not its LAN addresses, e.g. behind NAT or in a container).
    pub addrs: Option<Vec<wol::IpNet>>,
}

impl Default for WakeSettings {
    fn default() -> Self {
        WakeSettings {
            schedule: ScheduleConfig::default(),
            send: SendOptions::default(),
            sync_every: Duration::from_secs(30),
            tick: Duration::from_secs(1),
            scheduled: true,
            addrs: None,
        }
    }
}

/// `oasis_wake_*` metrics.
#[derive(Clone, Default)]
struct WakeMetrics {
    packets: Counter,
    woken: Counter,
    online: Counter,
    delivered: Counter,
    failed: Counter,
    relayed: Counter,
    registrations: Counter,
    gossip_learned: Counter,
    runs_active: Gauge,
}

impl WakeMetrics {
    fn register(node: &NodeMetrics) -> WakeMetrics {
        let m = WakeMetrics::default();
        node.with_registry(|r| {
            r.register("wake_packets", "Magic packets sent by this node", m.packets.clone());
            r.register("wake_machines_woken", "Machines woken by scheduled runs", m.woken.clone());
            r.register(
                "wake_machines_online",
                "Machines that came online in scheduled runs",
                m.online.clone(),
            );
            r.register(
                "wake_machines_delivered",
                "Machines that fetched their layers in scheduled runs",
                m.delivered.clone(),
            );
            r.register(
                "wake_machines_failed",
                "Machines that failed in scheduled runs",
                m.failed.clone(),
            );
            r.register("wake_relayed", "Wake requests relayed for other nodes", m.relayed.clone());
            r.register(
                "device_registrations",
                "Device registrations received",
                m.registrations.clone(),
            );
            r.register(
                "device_gossip_learned",
                "Inventory entries learnt or updated from the site's other reflectors over the mesh",
                m.gossip_learned.clone(),
            );
            r.register(
                "wake_runs_active",
                "Scheduled wake runs in progress",
                m.runs_active.clone(),
            );
        });
        m
    }
}

/// One scheduled run as persisted and shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunStatus {
    /// "name@version".
    pub layer: String,
    pub window: String,
    /// Unix seconds of the window's start and end.
    pub start: u64,
    pub end: u64,
    pub done: bool,
    pub machines: Vec<serde_json::Value>,
}

struct ActiveRun {
    layer: String,
    window: String,
    start: u64,
    end: u64,
    run: WakeRun,
    /// Which machines' online/delivery/failure were counted in the metrics.
    counted: BTreeSet<(String, &'static str)>,
}

/// The wake side of a running reflector.
pub struct WakeNode {
    me: PeerInfo,
    identity: NodeIdentity,
    dir: PathBuf,
    relay_addr: SocketAddr,
    devices: Mutex<BTreeMap<String, DeviceEntry>>,
    /// Persistent copy of `devices`.
    tree: sled::Tree,
    /// Where registrations received here are gossiped to the site's other reflectors.
    mesh: Mutex<Option<oasis_mesh::MeshHandle>>,
    unsent: Mutex<BTreeSet<String>>,
    /// When each device last registered here (finer than the inventory's seconds).
    seen: Mutex<BTreeMap<String, Duration>>,
    upstream: Arc<Upstream>,
    settings: WakeSettings,
    timezone: Box<dyn Fn() -> String + Send + Sync>,
    runs: Mutex<Vec<ActiveRun>>,
    /// The site's assignments as last read from the seed (served to endpoints of the site).
    assignments: Mutex<Vec<oasis_core::wire::Assignment>>,
    metrics: WakeMetrics,
    changed: Notify,
    client_endpoint: Mutex<Option<quinn::Endpoint>>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The address others reach this reflector's QUIC server at: `listen`, with an unspecified IP
/// replaced by the first address of this box.
fn reachable(listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = wol::iface::local_interfaces()
        .addrs
        .iter()
        .map(|n| n.addr)
        .find(|a| a.is_ipv4() == listen.is_ipv4())
        .unwrap_or(if listen.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        });
    SocketAddr::new(ip, listen.port())
}

/// Writes `value` as JSON to `path` durably (a reflector's wake tasks may write the same file
/// at once).
fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    oasis_core::durable::write_durably(path, &serde_json::to_vec_pretty(value)?)
}

pub fn devices_file(state: &Path) -> PathBuf {
    state.join("wake").join("devices.json")
}

pub fn runs_file(state: &Path) -> PathBuf {
    state.join("wake").join("runs.json")
}

impl WakeNode {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: &NodeIdentity,
        state: &Path,
        db: &sled::Db,
        listen: SocketAddr,
        upstream: Arc<Upstream>,
        settings: WakeSettings,
        timezone: Box<dyn Fn() -> String + Send + Sync>,
        node_metrics: &NodeMetrics,
    ) -> std::io::Result<WakeNode> {
        let dir = state.join("wake");
        std::fs::create_dir_all(&dir)?;
        let tree = db.open_tree("devices").map_err(std::io::Error::other)?;
        let mut devices = BTreeMap::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(std::io::Error::other)?;
            match serde_json::from_slice::<DeviceEntry>(&v) {
                Ok(d) => {
                    devices.insert(d.info.name.clone(), d);
                }
                // One damaged record loses that device until it registers again, not the rest.
                Err(e) => {
                    tracing::warn!(device = %String::from_utf8_lossy(&k), error = %e, "damaged inventory record dropped")
                }
            }
        }
        if devices.is_empty() {
            // An inventory from before the sled tree (only the exported file) is a good start.
            let old: Vec<DeviceEntry> = std::fs::read(devices_file(state))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            for d in old {
                devices.insert(d.info.name.clone(), d);
            }
        }
        Ok(WakeNode {
            tree,
            mesh: Mutex::new(None),
            me: identity.info().clone(),
            identity: identity.clone(),
            dir,
            relay_addr: reachable(listen),
            devices: Mutex::new(devices),
            unsent: Mutex::new(BTreeSet::new()),
            seen: Mutex::new(BTreeMap::new()),
            upstream,
            settings,
            timezone,
            runs: Mutex::new(Vec::new()),
            assignments: Mutex::new(Vec::new()),
            metrics: WakeMetrics::register(node_metrics),
            changed: Notify::new(),
            client_endpoint: Mutex::new(None),
        })
    }

    fn same_site(&self, peer: &PeerInfo) -> bool {
        peer.site.is_some() && peer.site == self.me.site
    }

    /// From now on, registrations received here are gossiped to the site's other reflectors.
    pub fn set_mesh(&self, mesh: oasis_mesh::MeshHandle) {
        *self.mesh.lock().unwrap_or_else(|e| e.into_inner()) = Some(mesh);
    }

    /// Syncs the inventory and drives scheduled runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut last_sync: Option<std::time::Instant> = None;
        let mut assignments = Vec::new();
        loop {
            let due = last_sync.is_none_or(|t| t.elapsed() >= self.settings.sync_every)
                || !self.unsent.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
            if due {
                match self.sync_with_seed().await {
                    Ok(Some(client)) => {
                        last_sync = Some(std::time::Instant::now());
                        match client.assignments().await {
                            Ok(a) => {
                                *self.assignments.lock().unwrap_or_else(|e| e.into_inner()) =
                                    a.clone();
                                assignments = a;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot read site assignments"),
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        last_sync = Some(std::time::Instant::now());
                        tracing::warn!(error = %e, "cannot sync the device inventory with the seed");
                    }
                }
            }
            if self.settings.scheduled {
                self.drive_runs(&assignments).await;
            }
            let active = self
                .runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|r| !r.run.is_done());
            let wait = if active {
                self.settings.tick
            } else {
                self.settings.sync_every.min(Duration::from_secs(60)).min(self.settings.tick * 5)
            };
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
