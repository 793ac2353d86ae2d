//! Entitlements: which layers the nodes of a site may fetch. The seed decides them (a site's
//! assignments, and the layers each of its devices' plans names); it checks every request it
//! serves against them itself, and hands each reflector its site's statement, sealed with the
//! manifest key, so that the reflector enforces the same rules for its endpoints, offline too.
//!
//! A layer is named here by its name alone: every version of a layer is readable by whoever
//! may read one (a device moving from base@1 to base@2 reads both, and a revert reads the old).
//!
//! Encoding: postcard of [`Entitlements`], names sorted and distinct (a canonical form, so the
//! BLAKE3 of the bytes names the content: `GetEntitlements` asks "newer than this digest?").
//! The seal (`seal::Sealed::Entitlements`) covers the site and that digest.

use crate::seal::{Seal, SealError, Sealed};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// Largest encoded statement: a site of some 20,000 devices, each with a plan of a few layers.
pub const MAX_ENTITLEMENTS_BYTES: usize = 2 << 20;

/// What the nodes of one site may fetch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    pub site: String,
    /// The seed's count of changes to its catalog and inventory when it made the statement:
    /// a reflector takes a statement only with a higher count than the one it holds, so an
    /// older statement replayed changes nothing (the seed's clock plays no part).
    pub generation: u64,
    /// Layer names assigned to the whole site: every endpoint of the site may fetch them.
    pub site_layers: Vec<String>,
    /// Layer names one device may fetch beside the site's (its plan), by device name.
    pub devices: Vec<DeviceLayers>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLayers {
    pub device: String,
    pub layers: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntitlementError {
    #[error("entitlement statement: {0}")]
    Malformed(String),
    #[error("entitlement statement: {0}")]
    Seal(#[from] SealError),
    #[error("entitlement statement is for site {got}, not {want}")]
    OtherSite { got: String, want: String },
}

impl Entitlements {
    /// The canonical statement: every list sorted, no name twice, devices with no layer of
    /// their own left out.
    pub fn new(
        site: String,
        generation: u64,
        site_layers: impl IntoIterator<Item = String>,
        devices: impl IntoIterator<Item = (String, Vec<String>)>,
    ) -> Entitlements {
        let sorted = |v: Vec<String>| {
            let mut v = v;
            v.sort();
            v.dedup();
            v
        };
        let mut devices: Vec<DeviceLayers> = devices
            .into_iter()
            .map(|(device, layers)| DeviceLayers { device, layers: sorted(layers) })
            .filter(|d| !d.layers.is_empty())
            .collect();
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        devices.dedup_by(|b, a| {
            if a.device == b.device {
                a.layers.append(&mut b.layers);
                true
            } else {
                false
            }
        });
        for d in &mut devices {
            d.layers = sorted(std::mem::take(&mut d.layers));
        }
        Entitlements {
            site,
            generation,
            site_layers: sorted(site_layers.into_iter().collect()),
            devices,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a statement always serializes")
    }

    /// BLAKE3 of the encoding: what `GetEntitlements` compares and the seal covers.
    pub fn digest_of(encoded: &[u8]) -> [u8; 32] {
        *blake3::hash(encoded).as_bytes()
    }

    /// Decodes a statement and checks its form (size, canonical order, name lengths).
    pub fn decode(bytes: &[u8]) -> Result<Entitlements, EntitlementError> {
        let bad = |p: String| EntitlementError::Malformed(p);
        if bytes.len() > MAX_ENTITLEMENTS_BYTES {
            return Err(bad(format!(
                "{} bytes, over the limit of {MAX_ENTITLEMENTS_BYTES}",
                bytes.len()
            )));
        }
        let e: Entitlements =
            postcard::from_bytes(bytes).map_err(|_| bad("does not decode".into()))?;
        let names = e.site_layers.iter().chain(e.devices.iter().flat_map(|d| &d.layers));
        for n in names.chain(e.devices.iter().map(|d| &d.device)).chain([&e.site]) {
            if n.is_empty() || n.len() > crate::wire::MAX_NAME_BYTES {
                return Err(bad(format!("a name of {} bytes", n.len())));
            }
        }
        let canonical = Entitlements::new(
            e.site.clone(),
            e.generation,
            e.site_layers.clone(),
            e.devices.iter().map(|d| (d.device.clone(), d.layers.clone())),
        );
        if canonical != e || canonical.encode() != bytes {
            return Err(bad("not in canonical form (sorted, distinct names)".into()));
        }
        Ok(e)
    }

    /// Opens a statement for `site` sent with its seal, checked against the manifest key.
    pub fn open(
        statement: &[u8],
        seal: &[u8],
        key: &VerifyingKey,
        site: &str,
    ) -> Result<(Entitlements, Seal), EntitlementError> {
        let e = Entitlements::decode(statement)?;
        if e.site != site {
            return Err(EntitlementError::OtherSite { got: e.site, want: site.into() });
        }
        let want = Sealed::Entitlements {
            site: e.site.clone(),
            digest: Entitlements::digest_of(statement),
        };
        let seal = Seal::check(seal, key, &want)?;
        Ok((e, seal))
    }

    /// Whether device `device` of this site may fetch layer `name`: the site's layers, and the
    /// device's own.
    pub fn device_may_fetch(&self, device: &str, name: &str) -> bool {
        self.site_layers.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
            || self.device_layers(device).binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }

    /// The layers `device` may fetch beside the site's.
    pub fn device_layers(&self, device: &str) -> &[String] {
        match self.devices.binary_search_by(|d| d.device.as_str().cmp(device)) {
            Ok(i) => &self.devices[i].layers,
            Err(_) => &[],
        }
    }

    /// Every layer name some node of the site may fetch (what the site's reflectors may).
    pub fn site_may_fetch(&self, name: &str) -> bool {
        self.site_layers.iter().any(|n| n == name)
            || self.devices.iter().any(|d| d.layers.iter().any(|n| n == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn statement() -> Entitlements {
        Entitlements::new(
            "branch-1".into(),
            3,
            ["base".into(), "office".into(), "base".into()],
            [
                ("pc-2".into(), vec!["cad".into()]),
                ("pc-1".into(), vec!["vpn".into(), "cad".into()]),
                ("pc-3".into(), vec![]),
            ],
        )
    }

    #[test]
    fn a_device_may_fetch_its_sites_layers_and_its_own() {
        let e = statement();
        assert_eq!(e.site_layers, ["base", "office"]);
        assert_eq!(e.devices.len(), 2, "a device without layers of its own is left out");
        assert!(e.device_may_fetch("pc-1", "base"));
        assert!(e.device_may_fetch("pc-1", "vpn"));
        assert!(!e.device_may_fetch("pc-2", "vpn"), "pc-1's layer is not pc-2's");
        assert!(!e.device_may_fetch("pc-9", "cad"));
        assert!(!e.device_may_fetch("pc-1", "finance"));
        assert!(e.site_may_fetch("vpn") && !e.site_may_fetch("finance"));
    }

    #[test]
    fn statements_round_trip_only_sealed_canonical_and_for_the_site() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let e = statement();
        let bytes = e.encode();
        let seal = |site: &str, b: &[u8]| {
            Seal {
                sealed: Sealed::Entitlements {
                    site: site.into(),
                    digest: Entitlements::digest_of(b),
                },
                issued: 5,
            }
            .sign(&key)
        };
        let vk = key.verifying_key();
        let (back, s) = Entitlements::open(&bytes, &seal("branch-1", &bytes), &vk, "branch-1")
            .expect("a sealed statement opens");
        assert_eq!((back, s.issued), (e.clone(), 5));
        assert!(matches!(
            Entitlements::open(&bytes, &seal("branch-1", &bytes), &vk, "branch-2"),
            Err(EntitlementError::OtherSite { .. })
        ));
        // A statement changed after sealing does not open.
        let mut more = e.clone();
        more.site_layers.push("zzz".into());
        let more = more.encode();
        assert!(matches!(
            Entitlements::open(&more, &seal("branch-1", &bytes), &vk, "branch-1"),
            Err(EntitlementError::Seal(SealError::Mismatch { .. }))
        ));
        // Out of order: refused, so that one content has one digest.
        let mut unsorted = e.clone();
        unsorted.site_layers.reverse();
        let unsorted = unsorted.encode();
        assert!(matches!(
            Entitlements::decode(&unsorted),
            Err(EntitlementError::Malformed(m)) if m.contains("canonical")
        ));
        assert!(Entitlements::decode(b"\xff\xff").is_err());
    }
}
