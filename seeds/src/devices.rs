//! The device inventory: every endpoint and reflector that registered (directly, or through
//! its site's reflector), with the plan of layers it should carry.
//!
//! Kept in the store's sled database (tree `devices`), keyed by device name, values JSON
//! [`DeviceRecord`]s. A registration updates what the device reports and keeps its plan;
//! `set_plan` changes only the plan. Device names are node names: unique across the fleet.

use oasis_core::net::SourceError;
use oasis_core::pki::{PeerInfo, Role};
use oasis_core::store::ChunkStore;
use oasis_core::wake::{DeviceEntry, DeviceInfo, IpNet, Mac};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("device {0} is not in the inventory (it registers when it connects)")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error("device inventory: {0}")]
    Index(#[from] sled::Error),
    #[error("device inventory record {name}: {source}")]
    Corrupt { name: String, source: serde_json::Error },
}

/// The layers a device should carry: one base, then app layers in order; (name, version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePlan {
    pub base: (String, String),
    pub apps: Vec<(String, String)>,
}

/// One device as the seed knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub name: String,
    /// "endpoint" or "reflector".
    #[serde(default)]
    pub role: String,
    /// MACs as "00:11:22:33:44:55".
    pub macs: Vec<String>,
    /// Addresses as "10.1.2.7/24".
    pub addrs: Vec<IpNet>,
    pub site: Option<String>,
    /// Unix seconds of the last registration.
    pub last_seen: u64,
    /// Unix seconds of the first registration.
    #[serde(default)]
    pub first_seen: u64,
    /// The node that sent the last registration (the device itself or its reflector).
    pub reported_by: String,
    #[serde(default)]
    pub agent_version: String,
    /// Where magic packets for it go instead of the subnet broadcast (agents in test mode).
    #[serde(default)]
    pub wake_to: Option<SocketAddr>,
    /// QUIC address where it relays wakes for its subnet (reflectors, relay endpoints).
    #[serde(default)]
    pub relay: Option<SocketAddr>,
    /// Layers the device reported holding, "name@version".
    #[serde(default)]
    pub held: Vec<String>,
    pub plan: Option<DevicePlan>,
}

impl DeviceRecord {
    /// Registered but without a plan yet.
    pub fn is_pending(&self) -> bool {
        self.plan.is_none()
    }

    /// The wire form (for reflectors syncing their site's inventory, and relay choice).
    pub fn to_entry(&self) -> DeviceEntry {
        DeviceEntry {
            info: DeviceInfo {
                name: self.name.clone(),
                role: self.role.clone(),
                site: self.site.clone().unwrap_or_default(),
                agent_version: self.agent_version.clone(),
                macs: self.macs.iter().filter_map(|m| m.parse::<Mac>().ok()).map(|m| m.0).collect(),
                addrs: self.addrs.clone(),
                wake_to: self.wake_to,
                relay: self.relay,
                held: self.held.clone(),
            },
            last_seen: self.last_seen,
            reported_by: self.reported_by.clone(),
        }
    }
}

/// The inventory tree. Cheap to open; clones share the tree.
#[derive(Clone)]
pub struct Inventory {
    tree: sled::Tree,
    /// Bumped at every change: plans and sites are entitlements (`crate::entitlements`).
    generation: sled::Tree,
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Inventory {
    pub fn open(store: &ChunkStore) -> Result<Inventory, DeviceError> {
        Ok(Inventory {
            tree: store.db().open_tree("devices")?,
            generation: crate::entitlements::generation_tree(store)?,
        })
    }

    fn decode(name: &[u8], v: &[u8]) -> Result<DeviceRecord, DeviceError> {
        serde_json::from_slice(v).map_err(|source| DeviceError::Corrupt {
            name: String::from_utf8_lossy(name).into_owned(),
            source,
        })
    }

    fn put(&self, r: &DeviceRecord) -> Result<(), DeviceError> {
        let v = serde_json::to_vec(r)
            .map_err(|source| DeviceError::Corrupt { name: r.name.clone(), source })?;
        let old = self.tree.insert(r.name.as_bytes(), v)?;
        // Registrations rewrite records all the time; only a new site or plan changes what
        // anyone may fetch.
        let old = old.and_then(|o| Self::decode(r.name.as_bytes(), &o).ok());
        if old.is_none_or(|o| o.site != r.site || o.plan != r.plan) {
            crate::entitlements::bump(&self.generation)?;
        }
        self.tree.flush()?;
        Ok(())
    }

    /// Records a registration at `now` (Unix seconds): what the device reports replaces what
    /// was known; its plan and first sighting stay.
    pub fn record(
        &self,
        info: &DeviceInfo,
        reported_by: &str,
        now: u64,
    ) -> Result<DeviceRecord, DeviceError> {
        oasis_core::pki::validate_node_name("device name", &info.name)
            .map_err(|e| DeviceError::Invalid(e.to_string()))?;
        if !info.site.is_empty() {
            oasis_core::pki::validate_node_name("site", &info.site)
                .map_err(|e| DeviceError::Invalid(e.to_string()))?;
        }
        let old = self.get(&info.name)?;
        let r = DeviceRecord {
            name: info.name.clone(),
            role: info.role.clone(),
            macs: info.macs.iter().map(|m| Mac(*m).to_string()).collect(),
            addrs: info.addrs.clone(),
            site: (!info.site.is_empty()).then(|| info.site.clone()),
            last_seen: now,
            first_seen: old.as_ref().map_or(now, |o| o.first_seen),
            reported_by: reported_by.to_string(),
            agent_version: info.agent_version.clone(),
            wake_to: info.wake_to,
            relay: info.relay,
            held: info.held.clone(),
            plan: old.and_then(|o| o.plan),
        };
        self.put(&r)?;
        Ok(r)
    }

    pub fn get(&self, device: &str) -> Result<Option<DeviceRecord>, DeviceError> {
        match self.tree.get(device.as_bytes())? {
            Some(v) => Self::decode(device.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Sets (replaces) a registered device's plan.
    pub fn set_plan(&self, device: &str, plan: DevicePlan) -> Result<DeviceRecord, DeviceError> {
        let mut r = self.get(device)?.ok_or_else(|| DeviceError::Unknown(device.to_string()))?;
        r.plan = Some(plan);
        self.put(&r)?;
        Ok(r)
    }

    /// Removes a device's plan (it becomes pending again).
    pub fn clear_plan(&self, device: &str) -> Result<DeviceRecord, DeviceError> {
        let mut r = self.get(device)?.ok_or_else(|| DeviceError::Unknown(device.to_string()))?;
        r.plan = None;
        self.put(&r)?;
        Ok(r)
    }

    /// A registered device's plan (None: registered, no plan yet); unknown device: error.
    pub fn plan(&self, device: &str) -> Result<Option<DevicePlan>, DeviceError> {
        Ok(self.get(device)?.ok_or_else(|| DeviceError::Unknown(device.to_string()))?.plan)
    }

    /// Every device ordered by name; `pending_only`: those without a plan.
    pub fn list(&self, pending_only: bool) -> Result<Vec<DeviceRecord>, DeviceError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let r = Self::decode(&k, &v)?;
            if !pending_only || r.is_pending() {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The devices of one site, ordered by name.
    pub fn site(&self, site: &str) -> Result<Vec<DeviceRecord>, DeviceError> {
        Ok(self.list(false)?.into_iter().filter(|r| r.site.as_deref() == Some(site)).collect())
    }

    /// Forgets a device; returns whether it was known.
    pub fn remove(&self, device: &str) -> Result<bool, DeviceError> {
        let had = self.tree.remove(device.as_bytes())?.is_some();
        if had {
            crate::entitlements::bump(&self.generation)?;
        }
        self.tree.flush()?;
        Ok(had)
    }
}

/// Checks a registration against the sender's certificate: an endpoint registers only itself,
/// in its own site; a reflector registers itself or devices of its own site (forwarded).
/// Returns the info with role and site filled in from the certificate where they are certain.
pub fn admit_registration(
    peer: &PeerInfo,
    mut info: DeviceInfo,
) -> Result<DeviceInfo, SourceError> {
    let refuse = |m: String| Err(SourceError::Refused(m));
    let peer_site = peer.site.clone().unwrap_or_default();
    match peer.role {
        Role::Endpoint => {
            if info.name != peer.name {
                return refuse(format!(
                    "endpoint {} may register only itself, not {:?}",
                    peer.name, info.name
                ));
            }
            info.role = Role::Endpoint.to_string();
            info.site = peer_site;
        }
        Role::Reflector => {
            if info.name == peer.name {
                info.role = Role::Reflector.to_string();
                info.site = peer_site;
            } else {
                if info.site != peer_site {
                    return refuse(format!(
                        "reflector {} of site {peer_site:?} may not register {} of site {:?}",
                        peer.name, info.name, info.site
                    ));
                }
                if info.role != Role::Endpoint.as_str() {
                    return refuse(format!(
                        "reflector {} may forward endpoint registrations only, not a {:?}",
                        peer.name, info.role
                    ));
                }
            }
        }
        Role::Seed => info.role = Role::Seed.to_string(),
    }
    Ok(info)
}

/// May `peer` rewrite the record of the device `info` names, given what is recorded now? A
/// device may always rewrite its own (its certificate names its site); a reflector forwarding
/// for a device may not move a device recorded in another site into its own, which would
/// send that device's wakes and plan to the wrong place.
pub fn may_rewrite(
    peer: &PeerInfo,
    info: &DeviceInfo,
    existing: Option<&DeviceRecord>,
) -> Result<(), SourceError> {
    let forwarded = peer.role == Role::Reflector && info.name != peer.name;
    match existing.and_then(|r| r.site.as_deref()) {
        Some(site) if forwarded && site != info.site => Err(SourceError::Refused(format!(
            "device {} is recorded in site {site:?}; reflector {} of site {:?} may not move it \
             (the device registers itself with the seed once to change its site)",
            info.name, peer.name, info.site
        ))),
        _ => Ok(()),
    }
}

/// The site whose inventory `peer` may read: a reflector's own site.
pub fn inventory_site(peer: &PeerInfo) -> Result<String, SourceError> {
    match (peer.role, &peer.site) {
        (Role::Reflector, Some(site)) => Ok(site.clone()),
        (Role::Reflector, None) => {
            Err(SourceError::Refused(format!("reflector {} has no site", peer.name)))
        }
        _ => Err(SourceError::Refused(format!(
            "{} {} may not read the inventory; reflectors read their site's",
            peer.role, peer.name
        ))),
    }
}

/// What `oasis-seed wake` did for one device.
#[derive(Clone, Debug, Serialize)]
pub struct WakeOutcome {
    pub device: String,
    pub mac: Option<String>,
    /// The relay that sent the packets (never the seed).
    pub relay: Option<String>,
    pub sent_to: Vec<String>,
    pub packets: u8,
    /// Why it was not sent: unknown device, no relay on its subnet, relays asleep.
    pub error: Option<String>,
    /// Relays tried before the one that sent, each with why it was passed over (asleep,
    /// unreachable, could not send).
    pub skipped: Vec<String>,
}

/// Wakes `names` through relays on their subnets, chosen from `inventory`; the seed sends no
/// magic packet itself. `endpoint` is a client endpoint with the seed's identity.
pub async fn wake_devices(
    endpoint: &quinn::Endpoint,
    inventory: &[DeviceRecord],
    names: &[String],
) -> Vec<WakeOutcome> {
    use oasis_core::wake::route;
    let mut out = Vec::new();
    for name in names {
        let mut o = WakeOutcome {
            device: name.clone(),
            mac: None,
            relay: None,
            sent_to: Vec::new(),
            packets: 0,
            error: None,
            skipped: Vec::new(),
        };
        let Some(target) = inventory.iter().find(|r| &r.name == name) else {
            o.error = Some(route::RouteError::UnknownDevice(name.clone()).to_string());
            out.push(o);
            continue;
        };
        // Relays come from the target's own site.
        let site: Vec<DeviceEntry> = inventory
            .iter()
            .filter(|r| r.site == target.site)
            .map(DeviceRecord::to_entry)
            .collect();
        let r = match route::route(name, &site) {
            Ok(r) => r,
            Err(e) => {
                o.error = Some(e.to_string());
                out.push(o);
                continue;
            }
        };
        o.mac = Some(Mac(r.target.mac).to_string());
        let mut problems = Vec::new();
        for relay in &r.relays {
            match ask_relay(endpoint, relay.addr, r.target.clone()).await {
                Ok(sent) => {
                    o.relay = Some(relay.name.clone());
                    o.sent_to = sent
                        .sent_to
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                    o.packets = sent.packets;
                    if !sent.error.is_empty() {
                        problems
                            .push(format!("relay {} could not send: {}", relay.name, sent.error));
                        continue;
                    }
                    o.skipped = std::mem::take(&mut problems);
                    break;
                }
                Err(e) => problems.push(format!(
                    "relay {} ({}) is asleep or unreachable: {e}",
                    relay.name, relay.addr
                )),
            }
        }
        if !problems.is_empty() {
            o.error = Some(problems.join("; "));
        }
        for s in &o.skipped {
            tracing::warn!(device = %o.device, "passed over: {s}");
        }
        out.push(o);
    }
    out
}

async fn ask_relay(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    target: oasis_core::wake::WakeTarget,
) -> Result<oasis_core::wake::WakeSent, String> {
    let connect = oasis_core::net::Client::connect(endpoint, addr, oasis_core::net::accept::RELAY);
    let c = tokio::time::timeout(std::time::Duration::from_secs(5), connect)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let r = c.wake(vec![target]).await.map_err(|e| e.to_string());
    c.close();
    r?.into_iter().next().ok_or_else(|| "the relay answered no result".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            role: "endpoint".into(),
            site: "paris".into(),
            agent_version: "oasis-endpoint 0.1.0".into(),
            macs: vec![[0, 0x11, 0x22, 0x33, 0x44, 0x55]],
            addrs: vec!["10.1.2.7/24".parse().unwrap()],
            ..Default::default()
        }
    }

    #[test]
    fn a_reflector_cannot_move_a_device_of_another_site_into_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let inv = Inventory::open(&store).unwrap();
        let peer = |role: Role, name: &str, site: &str| PeerInfo {
            role,
            name: name.into(),
            site: Some(site.into()),
        };
        let laptop = peer(Role::Endpoint, "pc-1", "paris");
        let own = admit_registration(&laptop, info("pc-1")).unwrap();
        inv.record(&own, "pc-1", 100).unwrap();
        let existing = inv.get("pc-1").unwrap();

        // A reflector of lyon forwards a registration claiming pc-1 is of lyon.
        let lyon = peer(Role::Reflector, "refl-lyon", "lyon");
        let mut forged = info("pc-1");
        forged.site = "lyon".into();
        let forged = admit_registration(&lyon, forged).unwrap();
        let e = may_rewrite(&lyon, &forged, existing.as_ref()).unwrap_err().to_string();
        assert!(e.contains("pc-1 is recorded in site \"paris\""), "{e}");
        // Paris's own reflector forwarding it, or the device itself moving, are fine.
        let paris = peer(Role::Reflector, "refl-paris", "paris");
        assert!(may_rewrite(&paris, &own, existing.as_ref()).is_ok());
        let moved =
            admit_registration(&peer(Role::Endpoint, "pc-1", "lyon"), info("pc-1")).unwrap();
        assert!(
            may_rewrite(&peer(Role::Endpoint, "pc-1", "lyon"), &moved, existing.as_ref()).is_ok()
        );
        assert!(may_rewrite(&lyon, &forged, None).is_ok(), "a device not yet recorded");
    }

    #[test]
    fn registrations_persist_and_keep_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let plan = DevicePlan {
            base: ("base".into(), "2".into()),
            apps: vec![("app".into(), "1".into())],
        };
        {
            let store = ChunkStore::open(dir.path()).unwrap();
            let inv = Inventory::open(&store).unwrap();
            inv.record(&info("pc-1"), "pc-1", 100).unwrap();
            inv.record(&info("pc-2"), "refl-1", 100).unwrap();
            assert_eq!(inv.list(true).unwrap().len(), 2);
            inv.set_plan("pc-1", plan.clone()).unwrap();
            assert!(matches!(inv.set_plan("nope", plan.clone()), Err(DeviceError::Unknown(_))));
            assert!(matches!(inv.plan("nope"), Err(DeviceError::Unknown(_))));
            // A later registration updates what the device reports but keeps its plan.
            let mut i = info("pc-1");
            i.addrs = vec!["10.1.2.8/24".parse().unwrap()];
            let r = inv.record(&i, "pc-1", 200).unwrap();
            assert_eq!((r.first_seen, r.last_seen), (100, 200));
        }
        let store = ChunkStore::open(dir.path()).unwrap();
        let inv = Inventory::open(&store).unwrap();
        assert_eq!(inv.plan("pc-1").unwrap(), Some(plan));
        assert_eq!(inv.plan("pc-2").unwrap(), None);
        let pending: Vec<_> = inv.list(true).unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(pending, ["pc-2"]);
        let r = inv.get("pc-1").unwrap().unwrap();
        assert_eq!(r.macs, ["00:11:22:33:44:55"]);
        assert_eq!(r.addrs[0].to_string(), "10.1.2.8/24");
        assert_eq!(r.to_entry().info.macs, vec![[0, 0x11, 0x22, 0x33, 0x44, 0x55]]);
        assert!(inv.record(&info("bad name!"), "x", 1).is_err());
    }
}
