//! What the reflector lets each peer fetch ([`oasis_core::net::Access`]), from its site's
//! sealed entitlements (`crate::entitlements`) and the chunk index (`crate::readers`):
//! - an endpoint of this site: the layers the statement gives the site and the device, and
//!   the chunks of those layers; an endpoint of another site: nothing (its own site's
//!   reflectors serve it, on its own site's WAN);
//! - a reflector of this site: everything (a sibling holds what the site may have);
//! - a reflector of another site (chained below this one): what its own site's statement
//!   allows, asked of the upstream for it; and since this reflector pulls misses with its own
//!   identity, only what both sites may;
//! - anything else: nothing.

use super::Reflector;
use crate::entitlements::{Held, FIRST_WAIT};
use futures::future::{BoxFuture, FutureExt};
use oasis_core::entitlement::Entitlements;
use oasis_core::net::{Access, SourceError};
use oasis_core::pki::{PeerInfo, Role};
use oasis_core::ChunkId;
use std::sync::Arc;

pub struct ReflectorAccess(pub(super) Arc<Reflector>);

fn internal(e: impl std::fmt::Display) -> SourceError {
    SourceError::Internal(e.to_string())
}

/// How a peer is checked here.
enum Checked {
    Everything,
    Nothing,
    /// An endpoint of this site, against the statement held.
    Endpoint(Arc<Held>),
    /// A reflector of another site, against that site's statement.
    Site(Arc<Entitlements>),
}

/// The layers `peer`, an endpoint of the site, may fetch.
fn names_of(held: &Held, peer: &PeerInfo) -> Vec<String> {
    let s = &held.statement;
    s.site_layers.iter().chain(s.device_layers(&peer.name)).cloned().collect()
}

/// Every layer some node of a site may fetch.
fn site_names(s: &Entitlements) -> Vec<String> {
    let devices = s.devices.iter().flat_map(|d| d.layers.iter());
    let mut names: Vec<String> = s.site_layers.iter().chain(devices).cloned().collect();
    names.sort();
    names.dedup();
    names
}

impl ReflectorAccess {
    async fn checked(&self, peer: &PeerInfo) -> Result<Checked, SourceError> {
        let ents = &self.0.entitlements;
        let own_site = peer.site.as_deref() == Some(ents.site());
        match peer.role {
            Role::Reflector if own_site => Ok(Checked::Everything),
            Role::Reflector => {
                let Some(site) = peer.site.as_deref() else { return Ok(Checked::Nothing) };
                match ents.of_site(&self.0.upstream, site).await {
                    Some(s) => Ok(Checked::Site(s)),
                    None => Err(SourceError::Unavailable(format!(
                        "no entitlement statement of site {site} from upstream: {}",
                        self.0.upstream.trouble()
                    ))),
                }
            }
            Role::Seed => Ok(Checked::Nothing),
            Role::Endpoint if !own_site => Ok(Checked::Nothing),
            Role::Endpoint => match ents.wait(FIRST_WAIT).await {
                Some(held) => Ok(Checked::Endpoint(held)),
                None => Err(SourceError::Unavailable(format!(
                    "this reflector holds no entitlement statement for site {} yet: {}",
                    ents.site(),
                    self.0.upstream.trouble()
                ))),
            },
        }
    }

    /// The statement after asking the upstream for a newer one.
    async fn refreshed(&self) -> Option<Arc<Held>> {
        self.0.entitlements.refresh(&self.0.upstream).await;
        self.0.entitlements.current()
    }

    /// For each of `ids`, whether the index has it under one of `names`.
    async fn indexed(&self, names: &[String], ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        let (index, names, ids) = (self.0.index.clone(), names.to_vec(), ids.to_vec());
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            ids.iter().map(|id| index.in_layers(id, &names)).collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(internal)?
        .map_err(internal)
    }

    /// For each of `ids`, whether it is a chunk of a layer named in `names`, indexing first the
    /// cached manifests of those layers not indexed yet. Asks the upstream nothing.
    async fn read_cached(
        &self,
        names: &[String],
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, SourceError> {
        let flags = self.indexed(names, ids).await?;
        if flags.iter().all(|f| *f) {
            return Ok(flags);
        }
        self.0.index_cached_layers(names).await;
        self.indexed(names, ids).await
    }

    /// The same as [`Self::read_cached`], then indexing the manifests the upstream lists (an
    /// endpoint may have got a manifest elsewhere).
    async fn read_by_names(
        &self,
        names: &[String],
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, SourceError> {
        let flags = self.read_cached(names, ids).await?;
        if flags.iter().all(|f| *f) {
            return Ok(flags);
        }
        // Asked again even when another request did the listing, which it waited for.
        self.0.index_upstream_layers(names).await;
        self.indexed(names, ids).await
    }
}

impl Access for ReflectorAccess {
    fn may_fetch_layer<'a>(
        &'a self,
        peer: &'a PeerInfo,
        name: &'a str,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        async move {
            let held = match self.checked(peer).await? {
                Checked::Everything => return Ok(true),
                Checked::Nothing => return Ok(false),
                Checked::Site(s) => return Ok(s.site_may_fetch(name)),
                Checked::Endpoint(held) => held,
            };
            if held.statement.device_may_fetch(&peer.name, name) {
                return Ok(true);
            }
            // Perhaps assigned a moment ago: ask before refusing.
            let now = self.refreshed().await;
            Ok(now.is_some_and(|h| h.statement.device_may_fetch(&peer.name, name)))
        }
        .boxed()
    }

    fn may_read<'a>(
        &'a self,
        peer: &'a PeerInfo,
        ids: &'a [ChunkId],
    ) -> BoxFuture<'a, Result<Vec<bool>, SourceError>> {
        async move {
            let held = match self.checked(peer).await? {
                Checked::Everything => return Ok(vec![true; ids.len()]),
                Checked::Nothing => return Ok(vec![false; ids.len()]),
                Checked::Site(s) => return self.read_by_names(&site_names(&s), ids).await,
                Checked::Endpoint(held) => held,
            };
            // The first chunks of a layer whose manifest this reflector just fetched are found
            // by indexing that manifest, with no round trip to the upstream.
            let flags = self.read_cached(&names_of(&held, peer), ids).await?;
            if flags.iter().all(|f| *f) {
                return Ok(flags);
            }
            // Perhaps assigned a moment ago.
            let held = self.refreshed().await.unwrap_or(held);
            self.read_by_names(&names_of(&held, peer), ids).await
        }
        .boxed()
    }
}
