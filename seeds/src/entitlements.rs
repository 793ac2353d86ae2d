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
//! built here by [`site_statement`].

use crate::catalog::Catalog;
use crate::devices::Inventory;
use oasis_core::entitlement::Entitlements;
use oasis_core::pki::{PeerInfo, Role};
use oasis_core::store::ChunkStore;
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
pub enum EntitlementError {
    #[error("entitlements: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("entitlements: {0}")]
    Inventory(#[from] crate::devices::DeviceError),
}

fn plan_names(plan: &crate::devices::DevicePlan) -> impl Iterator<Item = String> + '_ {
    std::iter::once(plan.base.0.clone()).chain(plan.apps.iter().map(|(n, _)| n.clone()))
}

/// The statement of `site`: its assignments, and the layers of its devices' plans.
pub fn site_statement(store: &ChunkStore, site: &str) -> Result<Entitlements, EntitlementError> {
    let assigned = Catalog::open(store)?.list(Some(site))?;
    let devices = Inventory::open(store)?.site(site)?;
    Ok(Entitlements::new(
        site.to_string(),
        assigned.into_iter().map(|a| a.name),
        devices
            .into_iter()
            .filter_map(|d| d.plan.as_ref().map(|p| (d.name.clone(), plan_names(p).collect()))),
    ))
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

/// The layer names `peer` may fetch from the seed.
pub fn layers_of(
    store: &ChunkStore,
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
                let s = site_statement(store, site)?;
                names.extend(s.site_layers);
                names.extend(s.devices.into_iter().flat_map(|d| d.layers));
            }
        }
        // No node reaches the seed as a seed: a stolen seed identity fetches nothing.
        Role::Seed => {}
    }
    Ok(names)
}
