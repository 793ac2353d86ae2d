//! What the seed's entitlement decisions are made from: the catalog (layers assigned to a site)
//! and the inventory (the layers each device's plan names).
//!
//! - An endpoint may fetch the layers assigned to its site (its certificate's) and those its
//!   own plan names.
//! - A reflector may fetch what any endpoint of its site may: the site's layers and every
//!   plan of the site's devices.
//! - Anything else (a seed identity, a node without a site and without a plan): nothing.
//!
//! Layers are named by name alone: every version of an entitled layer may be fetched. The same
//! rules reach reflectors as a sealed statement ([`oasis_core::entitlement::Entitlements`]),
//! built here ([`Fleet::site`]).
//!
//! A site's statement reads the whole inventory (devices are keyed by name, not site), so the
//! serving seed keeps every site's statement in a [`FleetCache`], built in one pass and built
//! again only after a change: the catalog and the inventory bump a counter (sled tree
//! `entitlements_generation`) at every write, and the cache compares it at each use.

use crate::catalog::Catalog;
use crate::devices::Inventory;
use oasis_core::entitlement::Entitlements;
use oasis_core::pki::{PeerInfo, Role};
use oasis_core::store::ChunkStore;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

const GENERATION_TREE: &str = "entitlements_generation";
const GENERATION_KEY: &[u8] = b"g";

/// The tree holding the change counter.
pub(crate) fn generation_tree(store: &ChunkStore) -> Result<sled::Tree, sled::Error> {
    store.db().open_tree(GENERATION_TREE)
}

/// Marks the catalog or the inventory changed.
pub(crate) fn bump(tree: &sled::Tree) -> Result<(), sled::Error> {
    tree.update_and_fetch(GENERATION_KEY, |old| {
        let n = old.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes);
        Some((n + 1).to_be_bytes().to_vec())
    })?;
    Ok(())
}

fn generation(tree: &sled::Tree) -> Result<u64, sled::Error> {
    Ok(tree
        .get(GENERATION_KEY)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Every site's statement, from one pass over the catalog and the inventory.
pub struct Fleet {
    generation: u64,
    sites: HashMap<String, Arc<Entitlements>>,
    /// Seals made on the statements of this generation, by site: a reflector asking again
    /// with an old digest costs no new signature.
    seals: Mutex<HashMap<String, bytes::Bytes>>,
}

impl Fleet {
    fn build(store: &ChunkStore, generation: u64) -> Result<Fleet, EntitlementError> {
        let mut layers: HashMap<String, Vec<String>> = HashMap::new();
        for a in Catalog::open(store)?.list(None)? {
            layers.entry(a.site).or_default().push(a.name);
        }
        let mut plans: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
        for d in Inventory::open(store)?.list(false)? {
            if let (Some(site), Some(plan)) = (d.site.clone(), d.plan.as_ref()) {
                plans.entry(site).or_default().push((d.name.clone(), plan_names(plan).collect()));
            }
        }
        let mut sites = HashMap::new();
        for site in layers.keys().chain(plans.keys()).cloned().collect::<BTreeSet<_>>() {
            let e = Entitlements::new(
                site.clone(),
                generation,
                layers.remove(&site).unwrap_or_default(),
                plans.remove(&site).unwrap_or_default(),
            );
            sites.insert(site, Arc::new(e));
        }
        Ok(Fleet { generation, sites, seals: Mutex::new(HashMap::new()) })
    }

    /// The statement of `site` (empty when nothing is assigned there).
    pub fn site(&self, site: &str) -> Arc<Entitlements> {
        self.sites.get(site).cloned().unwrap_or_else(|| {
            let none = Vec::<String>::new();
            Arc::new(Entitlements::new(site.to_string(), self.generation, none, Vec::new()))
        })
    }

    /// The seal made on `site`'s statement of this generation, if one was.
    pub fn seal_of(&self, site: &str) -> Option<bytes::Bytes> {
        self.seals.lock().unwrap_or_else(|e| e.into_inner()).get(site).cloned()
    }

    pub fn keep_seal(&self, site: &str, seal: bytes::Bytes) {
        self.seals.lock().unwrap_or_else(|e| e.into_inner()).insert(site.to_string(), seal);
    }
}

/// The [`Fleet`] as of the last change. Blocking.
#[derive(Default)]
pub struct FleetCache {
    cached: Mutex<Option<(u64, Arc<Fleet>)>>,
}

impl FleetCache {
    pub fn get(&self, store: &ChunkStore) -> Result<Arc<Fleet>, EntitlementError> {
        let now = generation(&generation_tree(store)?)?;
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, fleet)) = cached.as_ref() {
            if *g == now {
                return Ok(fleet.clone());
            }
        }
        // Built under the lock: concurrent askers wait for one pass instead of each making one.
        let fleet = Arc::new(Fleet::build(store, now)?);
        *cached = Some((now, fleet.clone()));
        Ok(fleet)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EntitlementError {
    #[error("entitlements: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("entitlements: {0}")]
    Inventory(#[from] crate::devices::DeviceError),
    #[error("entitlements: {0}")]
    Index(#[from] sled::Error),
}

fn plan_names(plan: &crate::devices::DevicePlan) -> impl Iterator<Item = String> + '_ {
    std::iter::once(plan.base.0.clone()).chain(plan.apps.iter().map(|(n, _)| n.clone()))
}

/// The layer names the endpoint `device` may fetch, by its inventory record (its site and
/// plan); none when it is not in the inventory.
pub fn layers_of_device(
    store: &ChunkStore,
    device: &str,
) -> Result<BTreeSet<String>, EntitlementError> {
    let mut names = BTreeSet::new();
    let Some(record) = Inventory::open(store)?.get(device)? else { return Ok(names) };
    if let Some(site) = record.site.as_deref() {
        names.extend(Catalog::open(store)?.list(Some(site))?.into_iter().map(|a| a.name));
    }
    if let Some(plan) = &record.plan {
        names.extend(plan_names(plan));
    }
    Ok(names)
}

/// The layer names `peer` may fetch from the seed, a reflector's from `fleet`.
pub fn layers_of(
    store: &ChunkStore,
    fleet: &FleetCache,
    peer: &PeerInfo,
) -> Result<BTreeSet<String>, EntitlementError> {
    let mut names = BTreeSet::new();
    match peer.role {
        Role::Endpoint => {
            if let Some(site) = peer.site.as_deref() {
                names.extend(Catalog::open(store)?.list(Some(site))?.into_iter().map(|a| a.name));
            }
            let record = Inventory::open(store)?.get(&peer.name)?;
            if let Some(plan) = record.and_then(|r| r.plan) {
                names.extend(plan_names(&plan));
            }
        }
        Role::Reflector => {
            if let Some(site) = peer.site.as_deref() {
                let s = fleet.get(store)?.site(site);
                names.extend(s.site_layers.iter().cloned());
                names.extend(s.devices.iter().flat_map(|d| d.layers.iter().cloned()));
            }
        }
        // No node reaches the seed as a seed: a stolen seed identity fetches nothing.
        Role::Seed => {}
    }
    Ok(names)
}
