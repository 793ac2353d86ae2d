//! The catalog: which layer version goes to which site, and in which delivery window.
//!
//! Kept in the store's sled database (tree `assignments`), keyed `site\0layer name`, so a
//! site holds at most one version of each layer: assigning base@2 replaces base@1. The value
//! is `version \0 window [\0 available]`.
//!
//! An assignment is delivered (the site's reflectors pin and prefetch it, and wake its devices
//! in the window) unless it is only *available*: then the site's endpoints may fetch it when
//! they ask, and nothing is pushed. Both entitle the site's endpoints to the layer
//! (`crate::entitlements`).

use oasis_core::store::{ChunkStore, StoreError};
use oasis_core::wire::Assignment;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    Invalid(String),
    #[error("catalog: {0}")]
    Store(#[from] StoreError),
    #[error("catalog index: {0}")]
    Index(#[from] sled::Error),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteAssignment {
    pub site: String,
    pub name: String,
    pub version: String,
    /// "HH:MM-HH:MM" in the site's time zone, or empty for any time.
    pub window: String,
    /// Fetched on demand only: not delivered (`assign --available`).
    pub available: bool,
}

impl SiteAssignment {
    pub fn to_wire(&self) -> Assignment {
        Assignment {
            name: self.name.clone(),
            version: self.version.clone(),
            window: self.window.clone(),
        }
    }
}

/// Checks "HH:MM-HH:MM" (a window may wrap past midnight: 22:00-06:00) with the parser the
/// reflectors run the window with.
pub fn validate_window(w: &str) -> Result<(), String> {
    oasis_core::wake::schedule::parse_window(w).map(|_| ())
}

pub struct Catalog<'a> {
    store: &'a ChunkStore,
    tree: sled::Tree,
}

impl<'a> Catalog<'a> {
    pub fn open(store: &'a ChunkStore) -> Result<Catalog<'a>, CatalogError> {
        Ok(Catalog { tree: store.db().open_tree("assignments")?, store })
    }

    fn key(site: &str, name: &str) -> Vec<u8> {
        [site.as_bytes(), b"\0", name.as_bytes()].concat()
    }

    /// Assigns a published layer version to a site, to be delivered; returns the version it
    /// replaced, if any.
    pub fn assign(
        &self,
        site: &str,
        name: &str,
        version: &str,
        window: Option<&str>,
    ) -> Result<Option<String>, CatalogError> {
        self.put(site, name, version, window, false)
    }

    /// Makes a published layer version available to a site's endpoints on demand, without
    /// delivering it; returns the version it replaced, if any.
    pub fn make_available(
        &self,
        site: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<String>, CatalogError> {
        self.put(site, name, version, None, true)
    }

    fn put(
        &self,
        site: &str,
        name: &str,
        version: &str,
        window: Option<&str>,
        available: bool,
    ) -> Result<Option<String>, CatalogError> {
        oasis_core::pki::validate_node_name("site", site)
            .map_err(|e| CatalogError::Invalid(e.to_string()))?;
        if let Some(w) = window {
            validate_window(w).map_err(CatalogError::Invalid)?;
        }
        if !self.store.has_manifest(name, version)? {
            return Err(CatalogError::Invalid(format!(
                "layer {name}@{version} is not published; publish it before assigning it"
            )));
        }
        let mode: &[u8] = if available { b"\0available" } else { b"" };
        let value = [version.as_bytes(), b"\0", window.unwrap_or("").as_bytes(), mode].concat();
        let old = self.tree.insert(Self::key(site, name), value)?;
        crate::entitlements::bump(&crate::entitlements::generation_tree(self.store)?)?;
        self.tree.flush()?;
        Ok(old.map(|v| split_value(&v).0))
    }

    /// Removes a site's assignment of `name` (only if it is `version`, when given).
    pub fn unassign(
        &self,
        site: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<SiteAssignment, CatalogError> {
        let key = Self::key(site, name);
        let current = self.tree.get(&key)?.map(|v| split_value(&v));
        match current {
            Some((v, w, available)) if version.is_none_or(|want| want == v) => {
                self.tree.remove(&key)?;
                crate::entitlements::bump(&crate::entitlements::generation_tree(self.store)?)?;
                self.tree.flush()?;
                Ok(SiteAssignment {
                    site: site.into(),
                    name: name.into(),
                    version: v,
                    window: w,
                    available,
                })
            }
            Some((v, _, _)) => Err(CatalogError::Invalid(format!(
                "site {site} has {name}@{v} assigned, not {name}@{}",
                version.unwrap_or("")
            ))),
            None => Err(CatalogError::Invalid(format!("site {site} has no assignment of {name}"))),
        }
    }

    /// Every assignment, or one site's, ordered by site then layer name.
    pub fn list(&self, site: Option<&str>) -> Result<Vec<SiteAssignment>, CatalogError> {
        let iter = match site {
            Some(s) => self.tree.scan_prefix([s.as_bytes(), b"\0"].concat()),
            None => self.tree.iter(),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let (site, name) = key.split_once('\0').unwrap_or((&key, ""));
            let (version, window, available) = split_value(&v);
            out.push(SiteAssignment {
                site: site.into(),
                name: name.into(),
                version,
                window,
                available,
            });
        }
        Ok(out)
    }
}

fn split_value(v: &[u8]) -> (String, String, bool) {
    let s = String::from_utf8_lossy(v);
    let mut parts = s.split('\0');
    let version = parts.next().unwrap_or_default().to_string();
    let window = parts.next().unwrap_or_default().to_string();
    (version, window, parts.next() == Some("available"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert!(validate_window("02:00-05:00").is_ok());
        assert!(validate_window("22:00-06:00").is_ok());
        for bad in ["2:00-05:00", "25:00-01:00", "02:00", "02:00-02:00", "aa:bb-cc:dd"] {
            assert!(validate_window(bad).is_err(), "{bad}");
        }
    }
}
