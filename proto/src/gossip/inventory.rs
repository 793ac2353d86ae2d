//! Device inventory over the mesh gossip: reflectors of a site share the registrations each of
//! them received, so a sibling can wake a machine by name even when the seed is out of reach.
//!
//! Pure: no I/O, no clock (`now` is passed in). The record is carried as
//! [`Body::Inventory`](super::Body::Inventory) on the site's own inventory topic;
//! docs/protocol.md (section 12, "Device inventory gossip") is normative. The inventory itself
//! (entries, registrations) is [`crate::wake::msg`]'s.

use super::{GossipReject, MAX_ADDR_LEN, MAX_MESSAGE_BYTES};
use crate::names::{validate_node_name, PeerInfo, Role};
use crate::wake::msg::{DeviceEntry, DeviceInfo, IpNet, MAX_DEVICE_ADDRS};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Most device records in one inventory message.
pub const MAX_DEVICES_PER_MESSAGE: usize = 256;
/// Longest agent version string.
pub const MAX_AGENT_LEN: usize = 64;
/// Longest "name@version" of a held layer.
pub const MAX_HELD_LEN: usize = crate::wire::MAX_NAME_BYTES;
/// A record last seen further than this in the receiver's future is refused: it would otherwise
/// win every later merge by last-seen.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// One device as gossiped between the reflectors of its site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRecord {
    /// Node name of the device (a valid node name).
    pub name: String,
    /// "endpoint" or "reflector".
    pub role: String,
    /// The device's site: must be the sender's and the receiver's site.
    pub site: String,
    pub agent_version: String,
    pub macs: Vec<[u8; 6]>,
    /// Interface addresses as "ADDR/PREFIX".
    pub addrs: Vec<String>,
    /// "ip:port" where its magic packets go instead of the subnet broadcast.
    pub wake_to: Option<String>,
    /// "ip:port" where it accepts `Wake` requests (it relays wakes for its subnet).
    pub relay: Option<String>,
    /// Layers it holds complete, "name@version".
    pub held: Vec<String>,
    /// Unix seconds of its last registration (the merge key).
    pub last_seen: u64,
    /// The node that received that registration.
    pub reported_by: String,
}

fn check_addr(what: &str, name: &str, a: &Option<String>) -> Result<(), String> {
    if let Some(a) = a {
        if a.len() > MAX_ADDR_LEN || a.parse::<SocketAddr>().is_err() {
            return Err(format!("device {name}: {what} {a:?} is not ip:port"));
        }
    }
    Ok(())
}

impl InventoryRecord {
    /// The record of an inventory entry (lists beyond the limits are cut, as on the wire).
    pub fn from_entry(e: &DeviceEntry) -> InventoryRecord {
        let i = &e.info;
        InventoryRecord {
            name: i.name.clone(),
            role: i.role.clone(),
            site: i.site.clone(),
            agent_version: i.agent_version.chars().take(MAX_AGENT_LEN).collect(),
            macs: i.macs.iter().take(MAX_DEVICE_ADDRS).copied().collect(),
            addrs: i.addrs.iter().take(MAX_DEVICE_ADDRS).map(|a| a.to_string()).collect(),
            wake_to: i.wake_to.map(|a| a.to_string()),
            relay: i.relay.map(|a| a.to_string()),
            held: i.held.iter().take(MAX_DEVICE_ADDRS).cloned().collect(),
            last_seen: e.last_seen,
            reported_by: e.reported_by.clone(),
        }
    }

    /// The inventory entry of a record that passed [`InventoryRecord::check`].
    pub fn to_entry(&self) -> DeviceEntry {
        DeviceEntry {
            info: DeviceInfo {
                name: self.name.clone(),
                role: self.role.clone(),
                site: self.site.clone(),
                agent_version: self.agent_version.clone(),
                macs: self.macs.clone(),
                addrs: self.addrs.iter().filter_map(|a| a.parse::<IpNet>().ok()).collect(),
                wake_to: self.wake_to.as_deref().and_then(|a| a.parse().ok()),
                relay: self.relay.as_deref().and_then(|a| a.parse().ok()),
                held: self.held.clone(),
            },
            last_seen: self.last_seen,
            reported_by: self.reported_by.clone(),
        }
    }

    /// The entry a receiver whose clock reads `now` (Unix seconds) stores for a record it
    /// admitted: a `last_seen` ahead of its clock (within [`MAX_CLOCK_SKEW_SECS`], or the
    /// record was refused) is taken as now, so a sender whose clock runs fast does not win
    /// every merge by last-seen for minutes.
    pub fn admitted(&self, now: u64) -> DeviceEntry {
        let mut e = self.to_entry();
        e.last_seen = e.last_seen.min(now);
        e
    }

    /// Field bounds, independent of who sent it.
    pub fn check(&self) -> Result<(), String> {
        validate_node_name("device name", &self.name).map_err(|e| e.to_string())?;
        let n = &self.name;
        if self.role != "endpoint" && self.role != "reflector" {
            return Err(format!("device {n}: role {:?} is not endpoint or reflector", self.role));
        }
        validate_node_name("site", &self.site).map_err(|e| format!("device {n}: {e}"))?;
        validate_node_name("reporter", &self.reported_by)
            .map_err(|e| format!("device {n}: {e}"))?;
        if self.agent_version.len() > MAX_AGENT_LEN {
            return Err(format!("device {n}: agent version longer than {MAX_AGENT_LEN} bytes"));
        }
        for (what, len) in
            [("MAC", self.macs.len()), ("address", self.addrs.len()), ("layer", self.held.len())]
        {
            if len > MAX_DEVICE_ADDRS {
                return Err(format!("device {n}: {len} {what} entries exceed {MAX_DEVICE_ADDRS}"));
            }
        }
        for a in &self.addrs {
            if a.len() > MAX_ADDR_LEN || a.parse::<IpNet>().is_err() {
                return Err(format!("device {n}: address {a:?} is not ADDR/PREFIX"));
            }
        }
        check_addr("wake address", n, &self.wake_to)?;
        check_addr("relay address", n, &self.relay)?;
        if let Some(h) = self.held.iter().find(|h| h.is_empty() || h.len() > MAX_HELD_LEN) {
            return Err(format!("device {n}: held layer {h:?} is empty or too long"));
        }
        Ok(())
    }
}

/// Who may tell a node about devices, and which: only a verified reflector of the receiver's own
/// site, only about devices of that site, never from the receiver's future. `sender` is the
/// identity from the author's verified certificate; `now` is the receiver's Unix time in seconds.
pub fn admit_inventory(
    records: &[InventoryRecord],
    sender: &PeerInfo,
    my_site: Option<&str>,
    now: u64,
) -> Result<(), GossipReject> {
    let Some(site) = my_site else {
        return Err(GossipReject::WrongSite("this node has no site: it keeps no inventory".into()));
    };
    if sender.role != Role::Reflector || sender.site.as_deref() != Some(site) {
        return Err(GossipReject::WrongSender(format!(
            "{} {} (site {:?}) is not a reflector of site {site}: it may not gossip its inventory",
            sender.role, sender.name, sender.site
        )));
    }
    for r in records {
        if r.site != site {
            return Err(GossipReject::WrongSite(format!(
                "device {} is of site {:?}, not {site}",
                r.name, r.site
            )));
        }
        if r.last_seen > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(GossipReject::BadField(format!(
                "device {} last seen {} s in the future",
                r.name,
                r.last_seen - now
            )));
        }
    }
    Ok(())
}

/// Does `incoming` replace what is known (`existing`)? Newer last-seen wins; a tie keeps what is
/// there, so two reflectors that heard the same registration do not flap.
pub fn supersedes(existing: Option<&DeviceEntry>, incoming: &DeviceEntry) -> bool {
    existing.is_none_or(|e| e.last_seen < incoming.last_seen)
}

/// Splits records into inventory bodies whose encoded message stays below
/// [`MAX_MESSAGE_BYTES`] and [`MAX_DEVICES_PER_MESSAGE`] records. Records that fail
/// [`InventoryRecord::check`] are left out (the receiver would drop the whole message).
pub fn pack_inventory(records: Vec<InventoryRecord>) -> Vec<Vec<InventoryRecord>> {
    let valid: Vec<InventoryRecord> = records.into_iter().filter(|r| r.check().is_ok()).collect();
    // The exact encoded size (a record that cannot encode gets a body of its own).
    let size = |r: &InventoryRecord| postcard::to_stdvec(r).map_or(MAX_MESSAGE_BYTES, |b| b.len());
    super::pack_bounded(valid, size, MAX_DEVICES_PER_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{Body, GossipMsg, GOSSIP_FORMAT};
    use proptest::prelude::*;

    fn rec(name: &str, site: &str) -> InventoryRecord {
        InventoryRecord {
            name: name.into(),
            role: "endpoint".into(),
            site: site.into(),
            agent_version: "oasis-endpoint 0.1.0".into(),
            macs: vec![[2, 0, 0, 0, 0, 7]],
            addrs: vec!["10.1.2.7/24".into()],
            wake_to: Some("127.0.0.1:4009".into()),
            relay: None,
            held: vec!["base@1".into()],
            last_seen: 1_000,
            reported_by: "refl-a".into(),
        }
    }

    fn refl(name: &str, site: Option<&str>) -> PeerInfo {
        PeerInfo { role: Role::Reflector, name: name.into(), site: site.map(String::from) }
    }

    fn msg(records: Vec<InventoryRecord>) -> GossipMsg {
        GossipMsg { seq: 7, body: Body::Inventory(records) }
    }

    #[test]
    fn a_record_from_a_clock_that_runs_fast_is_taken_as_now() {
        let mut r = rec("pc-1", "lyon");
        r.last_seen = 1_000 + 120;
        assert_eq!(r.admitted(1_000).last_seen, 1_000);
        r.last_seen = 900;
        assert_eq!(r.admitted(1_000).last_seen, 900, "the past is kept as it is");
    }

    #[test]
    fn records_roundtrip_through_entries_and_messages() {
        let r = rec("pc-1", "lyon");
        assert_eq!(InventoryRecord::from_entry(&r.to_entry()), r);
        let m = msg(vec![r.clone(), rec("pc-2", "lyon")]);
        assert_eq!(GossipMsg::decode(&m.encode()).unwrap(), m);
        // The variant index on the wire: Inventory is the fourth body (3).
        assert_eq!(m.encode()[0], GOSSIP_FORMAT);
        assert_eq!(postcard::to_stdvec(&m.body).unwrap()[0], 3);
    }

    #[test]
    fn bad_fields_are_invalid() {
        type Spoil = fn(&mut InventoryRecord);
        let cases: Vec<(Spoil, &str)> = vec![
            (|r| r.name = "bad name!".into(), "device name"),
            (|r| r.role = "seed".into(), "role"),
            (|r| r.site = String::new(), "site"),
            (|r| r.reported_by = String::new(), "reporter"),
            (|r| r.addrs = vec!["10.1.2.7".into()], "ADDR/PREFIX"),
            (|r| r.addrs = vec!["10.1.2.7/40".into()], "ADDR/PREFIX"),
            (|r| r.relay = Some("nowhere".into()), "relay address"),
            (|r| r.wake_to = Some("1.2.3.4".into()), "wake address"),
            (|r| r.macs = vec![[0; 6]; 65], "MAC entries"),
            (|r| r.held = vec![String::new()], "held layer"),
            (|r| r.agent_version = "x".repeat(65), "agent version"),
        ];
        for (spoil, want) in cases {
            let mut r = rec("pc-1", "lyon");
            spoil(&mut r);
            let e = GossipMsg::decode(&msg(vec![rec("ok", "lyon"), r]).encode()).unwrap_err();
            assert_eq!(e.reason(), "invalid", "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        for n in [0, MAX_DEVICES_PER_MESSAGE + 1] {
            let recs = (0..n).map(|i| rec(&format!("pc-{i}"), "lyon")).collect();
            let e = GossipMsg::decode(&msg(recs).encode()).unwrap_err();
            assert_eq!(e.reason(), "invalid");
        }
    }

    #[test]
    fn only_reflectors_of_the_site_about_the_site_and_not_from_the_future() {
        let ok = [rec("pc-1", "lyon")];
        assert_eq!(
            admit_inventory(&ok, &refl("refl-b", Some("lyon")), Some("lyon"), 1_000),
            Ok(())
        );
        let reason = |records: &[InventoryRecord], sender: PeerInfo, mine: Option<&str>| {
            admit_inventory(records, &sender, mine, 1_000).unwrap_err().reason()
        };
        assert_eq!(reason(&ok, refl("refl-p", Some("paris")), Some("lyon")), "wrong_sender");
        assert_eq!(reason(&ok, refl("refl-x", None), Some("lyon")), "wrong_sender");
        let seed = PeerInfo { role: Role::Seed, name: "seed".into(), site: Some("lyon".into()) };
        assert_eq!(reason(&ok, seed, Some("lyon")), "wrong_sender");
        let ep = PeerInfo { role: Role::Endpoint, name: "pc-1".into(), site: Some("lyon".into()) };
        assert_eq!(reason(&ok, ep, Some("lyon")), "wrong_sender");
        assert_eq!(reason(&ok, refl("refl-b", Some("lyon")), None), "wrong_site");
        let foreign = [rec("pc-1", "lyon"), rec("pc-9", "paris")];
        assert_eq!(reason(&foreign, refl("refl-b", Some("lyon")), Some("lyon")), "wrong_site");
        let mut future = rec("pc-1", "lyon");
        future.last_seen = 1_000 + MAX_CLOCK_SKEW_SECS + 1;
        assert_eq!(reason(&[future], refl("refl-b", Some("lyon")), Some("lyon")), "invalid");
    }

    #[test]
    fn newer_last_seen_wins_and_ties_keep_what_is_there() {
        let old = rec("pc-1", "lyon").to_entry();
        let mut new = old.clone();
        new.last_seen += 1;
        assert!(supersedes(None, &old));
        assert!(supersedes(Some(&old), &new));
        assert!(!supersedes(Some(&new), &old));
        assert!(!supersedes(Some(&old), &old.clone()));
    }

    #[test]
    fn big_inventories_are_packed_below_the_limits() {
        let mut big = rec("pc-0", "lyon");
        big.held = (0..64).map(|i| format!("{}@{i}", "l".repeat(240))).collect();
        big.addrs = (0..64).map(|i| format!("fd00::{i:x}/64")).collect();
        let mut recs = vec![big.clone(); 40];
        recs.extend((0..3000).map(|i| rec(&format!("pc-{i}"), "lyon")));
        let mut bad = rec("bad", "lyon");
        bad.role = "seed".into();
        recs.push(bad);
        let bodies = pack_inventory(recs);
        let total: usize = bodies.iter().map(Vec::len).sum();
        assert_eq!(total, 3040, "all valid records, the invalid one left out");
        for b in bodies {
            assert!(b.len() <= MAX_DEVICES_PER_MESSAGE);
            let bytes = msg(b).encode();
            assert!(bytes.len() <= MAX_MESSAGE_BYTES, "{}", bytes.len());
            GossipMsg::decode(&bytes).unwrap();
        }
    }

    proptest! {
        #[test]
        fn inventory_decode_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
            cut in any::<usize>(),
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = msg(vec![rec("pc-1", "lyon"), rec("pc-2", "lyon")]).encode();
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            bytes.extend_from_slice(&tail);
            if let Ok(GossipMsg { body: Body::Inventory(records), .. }) = GossipMsg::decode(&bytes) {
                let _ = admit_inventory(&records, &refl("r", Some("lyon")), Some("lyon"), 0);
                for r in &records {
                    let e = r.to_entry();
                    prop_assert_eq!(e.info.addrs.len(), r.addrs.len());
                    let _ = supersedes(Some(&e), &e);
                }
            }
        }

        #[test]
        fn arbitrary_inventory_bodies_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            // Body index 3 (Inventory) then arbitrary bytes.
            let mut b = vec![GOSSIP_FORMAT, 1, 3];
            b.extend_from_slice(&bytes);
            let _ = GossipMsg::decode(&b);
        }
    }
}
