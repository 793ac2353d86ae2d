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

    /// Persists `changed` entries in the sled tree, then exports the whole inventory file.
    fn save_devices(&self, changed: &[DeviceEntry]) {
        let stored = changed.iter().try_for_each(|d| -> Result<(), String> {
            let v = serde_json::to_vec(d).map_err(|e| e.to_string())?;
            self.tree.insert(d.info.name.as_bytes(), v).map_err(|e| e.to_string())?;
            Ok(())
        });
        if let Err(e) = stored.and_then(|()| self.tree.flush().map(drop).map_err(|e| e.to_string()))
        {
            tracing::warn!(error = %e, "cannot store the device inventory");
        }
        let list: Vec<DeviceEntry> =
            self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        if let Err(e) = write_json(&self.dir.join("devices.json"), &list) {
            tracing::warn!(error = %e, "cannot write the device inventory file");
        }
    }

    /// Merges entries learnt elsewhere (the seed, a sibling) by last-seen; returns those that
    /// replaced what was known. This reflector's own entry is never taken from others.
    fn merge(&self, entries: Vec<DeviceEntry>) -> Vec<DeviceEntry> {
        let changed = self.merge_in_memory(entries);
        self.save_devices(&changed);
        changed
    }

    /// [`Self::merge`] without persisting: the caller saves once it has counted the change.
    fn merge_in_memory(&self, entries: Vec<DeviceEntry>) -> Vec<DeviceEntry> {
        let mut changed = Vec::new();
        {
            let mut d = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            for e in entries {
                if e.info.name != self.me.name
                    && oasis_core::wake::gossip::supersedes(d.get(&e.info.name), &e)
                {
                    d.insert(e.info.name.clone(), e.clone());
                    changed.push(e);
                }
            }
        }
        changed
    }

    /// From now on, registrations received here are gossiped to the site's other reflectors.
    pub fn set_mesh(&self, mesh: oasis_mesh::MeshHandle) {
        *self.mesh.lock().unwrap_or_else(|e| e.into_inner()) = Some(mesh);
    }

    /// Device records gossiped by a verified reflector of this site (checked by the mesh):
    /// merged by last-seen. Records of another site are ignored here too.
    pub fn learn_from_sibling(&self, sender: &str, records: &[InventoryRecord]) -> usize {
        let entries: Vec<DeviceEntry> = records
            .iter()
            .filter(|r| Some(&r.site) == self.me.site.as_ref() && r.check().is_ok())
            .map(InventoryRecord::to_entry)
            .collect();
        let changed = self.merge_in_memory(entries);
        if !changed.is_empty() {
            let names: Vec<&str> = changed.iter().map(|d| d.info.name.as_str()).collect();
            tracing::info!(from = %sender, devices = ?names, "inventory learnt from a sibling");
            // Counted before the inventory file shows it: whoever reads the file then the
            // metric sees both.
            self.metrics.gossip_learned.inc_by(changed.len() as u64);
            self.save_devices(&changed);
            // Scheduled runs see machines that came online at a sibling.
            self.changed.notify_one();
        }
        changed.len()
    }

    /// What this reflector gossips: every device of its site it knows, and itself.
    pub fn site_records(&self) -> Vec<InventoryRecord> {
        let mut out: Vec<InventoryRecord> = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|d| Some(&d.info.site) == self.me.site.as_ref())
            .map(InventoryRecord::from_entry)
            .collect();
        out.push(InventoryRecord::from_entry(&self.self_entry()));
        out
    }

    fn self_entry(&self) -> DeviceEntry {
        DeviceEntry {
            info: self.self_info(),
            last_seen: unix_now(),
            reported_by: self.me.name.clone(),
        }
    }

    /// This reflector's own registration.
    pub fn self_info(&self) -> DeviceInfo {
        let mut info = wol::iface::self_info(
            &self.me,
            concat!("oasis-reflector ", env!("CARGO_PKG_VERSION")),
            None,
            Some(self.relay_addr),
        );
        if let Some(a) = &self.settings.addrs {
            info.addrs = a.clone();
        }
        info
    }

    /// A `Register` from a peer: endpoints register themselves, siblings themselves.
    pub async fn register(&self, peer: &PeerInfo, mut info: DeviceInfo) -> Result<(), SourceError> {
        if info.name != peer.name {
            return Err(SourceError::Refused(format!(
                "{} may register only itself, not {:?}",
                peer.name, info.name
            )));
        }
        match peer.role {
            Role::Endpoint => {}
            Role::Reflector if self.same_site(peer) => {}
            _ => {
                return Err(SourceError::Refused(format!(
                    "{} {} may not register here",
                    peer.role, peer.name
                )))
            }
        }
        info.role = peer.role.to_string();
        info.site = peer.site.clone().unwrap_or_default();
        let name = info.name.clone();
        let entry = DeviceEntry { info, last_seen: unix_now(), reported_by: self.me.name.clone() };
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone(), entry.clone());
        if let Some(mesh) = &*self.mesh.lock().unwrap_or_else(|e| e.into_inner()) {
            mesh.announce_devices(vec![InventoryRecord::from_entry(&entry)]);
        }
        self.unsent.lock().unwrap_or_else(|e| e.into_inner()).insert(name.clone());
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), schedule::since_epoch(jiff::Timestamp::now()));
        self.metrics.registrations.inc();
        tracing::info!(device = %name, "device registered");
        self.save_devices(&[entry]);
        self.changed.notify_one();
        Ok(())
    }

    /// The site's assignments for an endpoint of the site (what a woken machine fetches).
    pub fn assignments(&self, peer: &PeerInfo) -> Vec<oasis_core::wire::Assignment> {
        if !self.same_site(peer) {
            return Vec::new();
        }
        self.assignments.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The site inventory, for siblings.
    pub fn devices(&self, peer: &PeerInfo) -> Result<Vec<DeviceEntry>, SourceError> {
        if !(peer.role == Role::Seed || peer.role == Role::Reflector && self.same_site(peer)) {
            return Err(SourceError::Refused(format!(
                "{} {} may not read this site's inventory",
                peer.role, peer.name
            )));
        }
        Ok(self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect())
    }

    /// A `Wake` from the seed or a sibling: send the packets from this box.
    pub async fn wake(
        &self,
        peer: &PeerInfo,
        targets: Vec<WakeTarget>,
    ) -> Result<Vec<WakeSent>, SourceError> {
        if !(peer.role == Role::Seed || peer.role == Role::Reflector && self.same_site(peer)) {
            return Err(SourceError::Refused(format!(
                "{} {} may not ask this reflector to wake machines",
                peer.role, peer.name
            )));
        }
        self.metrics.relayed.inc();
        tracing::info!(by = %peer.name, targets = targets.len(), "relaying a wake");
        Ok(self.send_here(targets).await)
    }

    async fn send_here(&self, targets: Vec<WakeTarget>) -> Vec<WakeSent> {
        let results = wol::relay::send_all(targets, self.settings.send).await;
        for r in &results {
            self.metrics.packets.inc_by(u64::from(r.packets));
        }
        results
    }

    fn endpoint(&self) -> Result<quinn::Endpoint, String> {
        let mut e = self.client_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ep) = &*e {
            return Ok(ep.clone());
        }
        let ep = net::client_endpoint(&self.identity, &TransportOptions::default())
            .map_err(|e| e.to_string())?;
        *e = Some(ep.clone());
        Ok(ep)
    }

    /// Pushes our own and unsent registrations to the seed and pulls the site's inventory.
    async fn sync_with_seed(&self) -> Result<Option<Client>, String> {
        let Some(client) = self.upstream.wait(Duration::from_secs(3)).await else {
            return Err(self.upstream.trouble());
        };
        client.register(&self.self_info()).await.map_err(|e| e.to_string())?;
        let unsent: Vec<String> =
            std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        for (i, name) in unsent.iter().enumerate() {
            let info = self
                .devices
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .map(|d| d.info.clone());
            let Some(info) = info else { continue };
            if let Err(e) = client.register(&info).await {
                if e.remote_code() == Some(oasis_core::wire::ErrorCode::Forbidden) {
                    // The seed will never take it (e.g. a device of another site): say so once.
                    tracing::warn!(device = %name, error = %e, "the seed refused a forwarded registration");
                    continue;
                }
                // Keep what is not forwarded yet for the next sync.
                let mut u = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
                u.extend(unsent[i..].iter().cloned());
                return Err(format!("forwarding the registration of {name}: {e}"));
            }
        }
        let site = client.devices().await.map_err(|e| e.to_string())?;
        self.merge(site);
        Ok(Some(client))
    }

    /// Sends the wakes for `names` through the relays on their subnets (this box when it is
    /// one of them); returns the failures as (name, reason).
    async fn wake_names(&self, names: &[String]) -> Vec<(String, String)> {
        let inventory: Vec<DeviceEntry> = {
            let mut v: Vec<DeviceEntry> =
                self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
            v.retain(|d| d.info.name != self.me.name);
            v.push(self.self_entry());
            v
        };
        let mut failures = Vec::new();
        let mut by_relay: BTreeMap<String, (Vec<route::RelayChoice>, Vec<WakeTarget>)> =
            BTreeMap::new();
        for n in names {
            match route::route(n, &inventory) {
                Ok(r) => {
                    let key = r.relays.iter().map(|c| c.name.clone()).collect::<Vec<_>>().join(",");
                    let slot =
                        by_relay.entry(key).or_insert_with(|| (r.relays.clone(), Vec::new()));
                    slot.1.push(r.target);
                }
                Err(e) => failures.push((n.clone(), e.to_string())),
            }
        }
        for (_, (relays, targets)) in by_relay {
            let mut problems = Vec::new();
            let mut sent = None;
            for relay in &relays {
                let r = if relay.name == self.me.name {
                    Ok(self.send_here(targets.clone()).await)
                } else {
                    self.ask_relay(relay, targets.clone()).await
                };
                match r {
                    Ok(results) => {
                        sent = Some(results);
                        break;
                    }
                    Err(e) => {
                        problems.push(format!("relay {} asleep or unreachable: {e}", relay.name))
                    }
                }
            }
            match sent {
                Some(results) => {
                    for r in results.into_iter().filter(|r| !r.error.is_empty()) {
                        failures.push((r.device, r.error));
                    }
                }
                None => {
                    for t in targets {
                        failures.push((t.device, problems.join("; ")));
                    }
                }
            }
        }
        failures
    }

    async fn ask_relay(
        &self,
        relay: &route::RelayChoice,
        targets: Vec<WakeTarget>,
    ) -> Result<Vec<WakeSent>, String> {
        let ep = self.endpoint()?;
        let c = tokio::time::timeout(Duration::from_secs(5), Client::connect(&ep, relay.addr))
            .await
            .map_err(|_| format!("no answer from {} within 5 s", relay.addr))?
            .map_err(|e| e.to_string())?;
        let r = c.wake(targets).await.map_err(|e| e.to_string());
        c.close();
        r
    }

    /// Starts runs for windows that are open, feeds them what the inventory shows, sends the
    /// wakes that are due and records the results.
    async fn drive_runs(&self, assignments: &[oasis_core::wire::Assignment]) {
        let now_ts = jiff::Timestamp::now();
        let now = schedule::since_epoch(now_ts);
        let tz_name = (self.timezone)();
        // The policy's own zone grammar (IANA names, "UTC", "+02:00"); the name passed it when
        // the policy was loaded.
        let tz = oasis_core::policy::time_zone(&tz_name).unwrap_or(jiff::tz::TimeZone::UTC);
        let devices: Vec<DeviceEntry> =
            self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        {
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            for a in assignments.iter().filter(|a| !a.window.is_empty()) {
                let (start, end) = match schedule::window_at(&a.window, &tz, now_ts) {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(layer = %a.name, error = %e, "assignment window refused");
                        continue;
                    }
                };
                let layer = format!("{}@{}", a.name, a.version);
                let start_s = start.as_second().max(0) as u64;
                if now_ts < start || runs.iter().any(|r| r.layer == layer && r.start == start_s) {
                    continue;
                }
                let machines: Vec<String> = devices
                    .iter()
                    .filter(|d| d.info.name != self.me.name && !d.info.macs.is_empty())
                    .filter(|d| d.info.role == "endpoint" || d.info.role == "reflector")
                    .map(|d| d.info.name.clone())
                    .collect();
                tracing::info!(%layer, window = %a.window, machines = machines.len(), "delivery window open: waking the site");
                let mut run = WakeRun::new(
                    machines,
                    schedule::since_epoch(start),
                    Some(schedule::since_epoch(end)),
                    self.settings.schedule,
                );
                // Machines that already hold the layer need no wake.
                for d in &devices {
                    if d.info.held.contains(&layer) {
                        run.delivered(&d.info.name, now);
                    }
                }
                runs.push(ActiveRun {
                    layer,
                    window: a.window.clone(),
                    start: start_s,
                    end: end.as_second().max(0) as u64,
                    run,
                    counted: BTreeSet::new(),
                });
            }
        }
        let mut to_wake: BTreeSet<String> = BTreeSet::new();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        {
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            for r in runs.iter_mut().filter(|r| !r.run.is_done()) {
                for d in &devices {
                    let Some(m) = r.run.results().iter().find(|m| m.name == d.info.name) else {
                        continue;
                    };
                    // Registered here after the wake, or (at a sibling) a later second.
                    let seen_after_wake = m.woken_at.is_some_and(|w| {
                        seen.get(&d.info.name).is_some_and(|t| t.as_secs_f64() >= w)
                            || d.last_seen as f64 > w.floor()
                    });
                    if seen_after_wake {
                        r.run.online(&d.info.name, now);
                        if d.info.role == "reflector" || d.info.held.contains(&r.layer) {
                            r.run.delivered(&d.info.name, now);
                        }
                    }
                }
                to_wake.extend(r.run.poll(now));
            }
        }
        if !to_wake.is_empty() {
            let names: Vec<String> = to_wake.into_iter().collect();
            tracing::info!(machines = ?names, "waking a batch");
            let failures = self.wake_names(&names).await;
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            for (name, reason) in failures {
                tracing::warn!(device = %name, %reason, "wake failed");
                for r in runs.iter_mut() {
                    r.run.wake_failed(&name, reason.clone());
                }
            }
        }
        self.record_runs();
    }

    fn record_runs(&self) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let mut active = 0;
        let mut out = Vec::new();
        for r in runs.iter_mut() {
            if !r.run.is_done() {
                active += 1;
            }
            for m in r.run.results() {
                let state = match m.state {
                    schedule::MachineState::Waiting => None,
                    schedule::MachineState::Woken => Some("woken"),
                    schedule::MachineState::Online => Some("online"),
                    schedule::MachineState::Delivered => Some("delivered"),
                    schedule::MachineState::Failed => Some("failed"),
                };
                // Count each machine once per stage it reached.
                let stages: &[&'static str] = match state {
                    Some("woken") => &["woken"],
                    Some("online") => &["woken", "online"],
                    Some("delivered") => &["woken", "online", "delivered"],
                    Some("failed") => &["failed"],
                    _ => &[],
                };
                for s in stages {
                    if *s == "woken" && m.wakes == 0 {
                        continue;
                    }
                    if r.counted.insert((m.name.clone(), s)) {
                        match *s {
                            "woken" => self.metrics.woken.inc(),
                            "online" => self.metrics.online.inc(),
                            "delivered" => self.metrics.delivered.inc(),
                            _ => self.metrics.failed.inc(),
                        };
                    }
                }
            }
            out.push(RunStatus {
                layer: r.layer.clone(),
                window: r.window.clone(),
                start: r.start,
                end: r.end,
                done: r.run.is_done(),
                machines: r
                    .run
                    .results()
                    .iter()
                    .map(|m: &MachineResult| serde_json::to_value(m).unwrap_or_default())
                    .collect(),
            });
        }
        self.metrics.runs_active.set(active);
        // Finished runs older than a day are dropped from memory.
        let cutoff = unix_now().saturating_sub(86_400);
        runs.retain(|r| !r.run.is_done() || r.end > cutoff);
        if let Err(e) = write_json(&self.dir.join("runs.json"), &out) {
            tracing::warn!(error = %e, "cannot write the wake run status");
        }
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

/// `oasis-reflector wake`: resolves each MAC or NAME (from this reflector's inventory file)
/// and sends from this box.
pub async fn wake_command(
    state: &Path,
    to: Option<&str>,
    password: Option<&str>,
    targets: &[String],
) -> anyhow::Result<Vec<WakeSent>> {
    let password = match password {
        Some(p) => p.parse::<wol::Password>()?.as_bytes().to_vec(),
        None => Vec::new(),
    };
    let to = match to {
        None => None,
        Some(s) => Some(parse_to(s)?),
    };
    let inventory: Vec<DeviceEntry> = match std::fs::read(devices_file(state)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let mut list = Vec::new();
    for t in targets {
        if let Ok(mac) = t.parse::<wol::Mac>() {
            list.push(WakeTarget {
                device: String::new(),
                mac: mac.0,
                to,
                password: password.clone(),
            });
            continue;
        }
        let Some(d) = inventory.iter().find(|d| &d.info.name == t) else {
            anyhow::bail!(
                "{t:?} is not a MAC address (e.g. 00:11:22:aa:bb:cc) and not a device in this \
                 reflector's inventory ({})",
                devices_file(state).display()
            );
        };
        let Some(mac) = d.info.macs.first() else {
            anyhow::bail!("device {t} reported no MAC address: it cannot be woken");
        };
        list.push(WakeTarget {
            device: t.clone(),
            mac: *mac,
            to: to.or_else(|| route::destination(d)),
            password: password.clone(),
        });
    }
    Ok(wol::relay::send_all(list, SendOptions::default()).await)
}

/// ADDR or ADDR:PORT (port 9 when absent).
pub fn parse_to(s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, wol::DEFAULT_PORT));
    }
    anyhow::bail!("--to {s:?}: expected ADDR or ADDR:PORT, e.g. 10.1.2.255 or 10.1.2.255:7")
}

/// `oasis-reflector wake-status`: the scheduled runs as last written.
pub fn read_runs(state: &Path) -> anyhow::Result<Vec<RunStatus>> {
    let path = runs_file(state);
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice(&b)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Runs `oasis-reflector wake`; returns the exit code (1 when any target was not sent).
pub fn cli_wake(
    state: &Path,
    to: Option<&str>,
    password: Option<&str>,
    targets: &[String],
    json: bool,
) -> i32 {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(wake_command(state, to, password, targets)) {
        Err(e) => {
            eprintln!("error: {e:#}");
            2
        }
        Ok(results) => {
            let failed = results.iter().filter(|r| !r.error.is_empty()).count();
            if json {
                let rows: Vec<serde_json::Value> = results.iter().map(sent_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for r in &results {
                    let who = if r.device.is_empty() {
                        wol::Mac(r.mac).to_string()
                    } else {
                        format!("{} ({})", r.device, wol::Mac(r.mac))
                    };
                    if r.error.is_empty() {
                        println!("woke {who}: {} packets to {}", r.packets, r.sent_to);
                    } else {
                        println!("FAILED {who}: {}", r.error);
                    }
                }
            }
            i32::from(failed > 0)
        }
    }
}

/// A wake result as JSON (MAC as text).
pub fn sent_json(r: &WakeSent) -> serde_json::Value {
    serde_json::json!({
        "device": r.device,
        "mac": wol::Mac(r.mac).to_string(),
        "sent_to": r.sent_to.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "packets": r.packets,
        "error": (!r.error.is_empty()).then_some(&r.error),
    })
}

/// Runs `oasis-reflector wake-status`.
pub fn cli_status(state: &Path, json: bool) -> i32 {
    let runs = match read_runs(state) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    if json {
        println!("{}", serde_json::to_string(&runs).unwrap_or_default());
        return 0;
    }
    if runs.is_empty() {
        println!("no scheduled wake runs");
    }
    for r in runs {
        println!(
            "{} window {} ({}){}",
            r.layer,
            r.window,
            jiff::Timestamp::from_second(r.start as i64).map(|t| t.to_string()).unwrap_or_default(),
            if r.done { "" } else { " in progress" }
        );
        for m in &r.machines {
            println!(
                "  {:<20} {:<10} wakes {:<2} {}",
                m["name"].as_str().unwrap_or(""),
                m["state"].as_str().unwrap_or(""),
                m["wakes"],
                m["reason"].as_str().unwrap_or("")
            );
        }
    }
    0
}
