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
//! One task owns all of this state ([`WakeTask`]: the inventory, the site's assignments, the
//! scheduled runs) and takes commands over a channel from the rest of the reflector through
//! [`WakeNode`] handles. Its network work (syncing with the seed, sending a batch of wakes
//! through the relays) runs as jobs beside the loop, so a slow seed or relay never holds up a
//! registration; the jobs report back to the loop, which alone changes the state.
//!
//! Modules: [`inventory`] (registrations, merging, sync with the seed), [`relay`] (sending
//! wakes here or through another relay), [`delivery`] (scheduled runs), [`cli`] (the commands
//! that read the exported files); this file holds the handle, the task, its settings and loop.

use crate::upstream::Upstream;
use oasis_core::gossip::InventoryRecord;
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, Client, SourceError, TransportOptions};
use oasis_core::pki::{NodeIdentity, PeerInfo, Role};
use oasis_core::wake::delivery::Deliveries;
use oasis_core::wake::schedule::{self, ScheduleConfig};
use oasis_core::wake::{
    self as wol, route, DeviceEntry, DeviceInfo, SendOptions, WakeSent, WakeTarget,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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

pub use oasis_core::wake::delivery::RunStatus;

/// The wake side of a running reflector as the other tasks reach it: a handle to the
/// [`WakeTask`] that owns the state. Relaying a wake needs none of that state and runs here.
#[derive(Clone)]
pub struct WakeNode {
    fixed: Arc<Fixed>,
    cmds: mpsc::Sender<Command>,
}

/// What the handle, the task and its jobs share, fixed at start.
struct Fixed {
    me: PeerInfo,
    identity: NodeIdentity,
    relay_addr: SocketAddr,
    upstream: Arc<Upstream>,
    settings: WakeSettings,
    metrics: WakeMetrics,
}

/// What the wake task owns.
struct WakeState {
    dir: PathBuf,
    devices: BTreeMap<String, DeviceEntry>,
    /// Persistent copy of `devices`.
    tree: sled::Tree,
    /// Where registrations received here are gossiped to the site's other reflectors.
    mesh: Option<oasis_mesh::MeshHandle>,
    /// Registrations received here and not forwarded to the seed yet.
    unsent: BTreeSet<String>,
    /// When each device last registered here (finer than the inventory's seconds).
    seen: BTreeMap<String, Duration>,
    timezone: Box<dyn Fn() -> String + Send + Sync>,
    /// The scheduled runs.
    deliveries: Deliveries,
    /// The site's assignments as last read from the seed (served to endpoints of the site).
    assignments: Vec<oasis_core::wire::Assignment>,
    /// For asking other relays to send wakes; made on first use.
    client_endpoint: Option<quinn::Endpoint>,
}

/// What the wake task is asked.
enum Command {
    /// A registration, checked by the handle; answered once it is stored.
    Register {
        entry: DeviceEntry,
        done: oneshot::Sender<()>,
    },
    Assignments(oneshot::Sender<Vec<oasis_core::wire::Assignment>>),
    Devices(oneshot::Sender<Vec<DeviceEntry>>),
    /// Records a sibling gossiped; answered with how many changed the inventory.
    FromSibling {
        sender: String,
        records: Vec<InventoryRecord>,
        learnt: oneshot::Sender<usize>,
    },
    /// The records this reflector gossips.
    SiteRecords(oneshot::Sender<Vec<InventoryRecord>>),
    SetMesh(oasis_mesh::MeshHandle),
}

/// The task that owns the wake state: see the module docs. [`WakeTask::run`] until stopped.
pub struct WakeTask {
    fixed: Arc<Fixed>,
    cmds: mpsc::Receiver<Command>,
    state: WakeState,
}

/// Commands waiting for the wake task; senders wait when it is this far behind.
const COMMAND_QUEUE: usize = 256;

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
    ) -> std::io::Result<(WakeNode, WakeTask)> {
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
        let fixed = Arc::new(Fixed {
            me: identity.info().clone(),
            identity: identity.clone(),
            relay_addr: reachable(listen),
            upstream,
            settings,
            metrics: WakeMetrics::register(node_metrics),
        });
        let state = WakeState {
            dir,
            devices,
            tree,
            mesh: None,
            unsent: BTreeSet::new(),
            seen: BTreeMap::new(),
            timezone,
            deliveries: Deliveries::new(fixed.settings.schedule),
            assignments: Vec::new(),
            client_endpoint: None,
        };
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        Ok((WakeNode { fixed: fixed.clone(), cmds: tx }, WakeTask { fixed, cmds: rx, state }))
    }

    /// Asks the wake task; `None` once it has stopped.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(command(tx)).await.ok()?;
        rx.await.ok()
    }

    /// From now on, registrations received here are gossiped to the site's other reflectors.
    pub async fn set_mesh(&self, mesh: oasis_mesh::MeshHandle) {
        // A stopped task has no registrations left to gossip.
        let _ = self.cmds.send(Command::SetMesh(mesh)).await;
    }
}

impl Fixed {
    fn same_site(&self, peer: &PeerInfo) -> bool {
        peer.site.is_some() && peer.site == self.me.site
    }
}

impl WakeTask {
    /// Takes commands, syncs the inventory with the seed and drives scheduled runs until the
    /// last handle is gone or the task is stopped. The jobs run in `JoinSet`s, so stopping the
    /// task stops them too.
    pub async fn run(mut self) {
        let fixed = self.fixed.clone();
        let mut last_sync: Option<Instant> = None;
        let mut last_sync_failed = false;
        let mut syncing: tokio::task::JoinSet<inventory::Synced> = tokio::task::JoinSet::new();
        // The registrations the running sync forwards, put back if it dies.
        let mut forwarding: Vec<String> = Vec::new();
        let mut waking: tokio::task::JoinSet<Vec<(String, String)>> = tokio::task::JoinSet::new();
        // A failed sync is retried for new registrations no sooner than this.
        let retry = fixed.settings.tick * 5;
        // Something changed since the loop last looked (a registration, a job's result, time).
        let mut changed = true;
        loop {
            let since = last_sync.map(|t| t.elapsed());
            let backoff = if last_sync_failed { retry } else { Duration::ZERO };
            let unsent_due = !self.state.unsent.is_empty() && since.is_none_or(|s| s >= backoff);
            if syncing.is_empty()
                && (since.is_none_or(|s| s >= fixed.settings.sync_every) || unsent_due)
            {
                let unsent = self.state.take_unsent();
                forwarding = unsent.iter().map(|(n, _)| n.clone()).collect();
                syncing.spawn(inventory::sync_with_seed(fixed.clone(), unsent));
            }
            if changed && fixed.settings.scheduled && waking.is_empty() {
                let names = self.state.drive_runs(&fixed);
                if !names.is_empty() {
                    tracing::info!(machines = ?names, "waking a batch");
                    let inventory = self.state.inventory_with(fixed.self_entry());
                    let endpoint = self.state.endpoint(&fixed);
                    waking.spawn(relay::wake_names(fixed.clone(), inventory, endpoint, names));
                }
                self.state.record_runs(&fixed.metrics);
            }
            let mut wait = if self.state.deliveries.active() {
                fixed.settings.tick
            } else {
                fixed.settings.sync_every.min(Duration::from_secs(60)).min(fixed.settings.tick * 5)
            };
            if !self.state.unsent.is_empty() && syncing.is_empty() {
                // Wake up when the registrations waiting may be forwarded.
                wait = wait.min(backoff.saturating_sub(since.unwrap_or_default()));
            }
            tokio::select! {
                command = self.cmds.recv() => match command {
                    Some(c) => changed = self.handle(c),
                    None => return,
                },
                Some(r) = syncing.join_next() => {
                    last_sync = Some(Instant::now());
                    changed = true;
                    match r {
                        Ok(synced) => last_sync_failed = !self.state.synced(&fixed.me.name, synced),
                        Err(e) => {
                            tracing::warn!(error = %e, "the sync with the seed failed");
                            self.state.unsent.extend(std::mem::take(&mut forwarding));
                            last_sync_failed = true;
                        }
                    }
                }
                Some(r) = waking.join_next() => {
                    changed = true;
                    match r {
                        Ok(failures) => self.state.wake_failed(failures),
                        Err(e) => tracing::warn!(error = %e, "sending a batch of wakes failed"),
                    }
                }
                _ = tokio::time::sleep(wait) => changed = true,
            }
        }
    }

    /// Answers a command; true when it changed what the loop acts on.
    fn handle(&mut self, command: Command) -> bool {
        let fixed = &self.fixed;
        match command {
            Command::Register { entry, done } => {
                self.state.register(entry, &fixed.metrics);
                let _ = done.send(());
                true
            }
            Command::Assignments(reply) => {
                let _ = reply.send(self.state.assignments.clone());
                false
            }
            Command::Devices(reply) => {
                let _ = reply.send(self.state.devices.values().cloned().collect());
                false
            }
            Command::FromSibling { sender, records, learnt } => {
                let n = self.state.learn_from_sibling(fixed, &sender, &records);
                let _ = learnt.send(n);
                n > 0
            }
            Command::SiteRecords(reply) => {
                let _ = reply.send(self.state.site_records(fixed));
                false
            }
            Command::SetMesh(mesh) => {
                self.state.mesh = Some(mesh);
                false
            }
        }
    }
}
