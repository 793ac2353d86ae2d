//! Relay choice: broadcasts do not cross routers, so a wake is sent by an awake node on the
//! target's own subnet, chosen from the inventory. The seed never sends magic packets itself.

use super::msg::{DeviceEntry, WakeTarget};
use super::DEFAULT_PORT;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("device {0} is not in the inventory")]
    UnknownDevice(String),
    #[error("device {0} reported no MAC address: it cannot be woken")]
    NoMac(String),
    #[error("device {0} reported no IP address: its subnet, and so a relay, is unknown")]
    NoAddress(String),
    #[error("no relay on the subnet of {device} ({nets}): no reflector or relay endpoint there")]
    NoRelay { device: String, nets: String },
}

/// Where to send, and whom to ask: the relays in order of preference.
#[derive(Clone, Debug)]
pub struct Route {
    pub target: WakeTarget,
    /// Relay candidates on the target's subnet: reflectors before endpoints, most recently seen
    /// first. The caller tries them in order; one that does not answer is asleep or gone.
    pub relays: Vec<RelayChoice>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayChoice {
    pub name: String,
    pub role: String,
    pub addr: SocketAddr,
}

/// The magic packet's destination for `d`: its declared wake address, else the directed
/// broadcast of its first IPv4 subnet on port 9, else None (the relay's own broadcast).
pub fn destination(d: &DeviceEntry) -> Option<SocketAddr> {
    d.info.wake_to.or_else(|| {
        d.info
            .addrs
            .iter()
            .find_map(|n| n.broadcast().map(|b| SocketAddr::new(IpAddr::V4(b), DEFAULT_PORT)))
    })
}

/// Chooses relays for one device. `inventory` holds every known device of the site (the
/// target included).
pub fn route(name: &str, inventory: &[DeviceEntry]) -> Result<Route, RouteError> {
    let target = inventory
        .iter()
        .find(|d| d.info.name == name)
        .ok_or_else(|| RouteError::UnknownDevice(name.to_string()))?;
    let mac = *target.info.macs.first().ok_or_else(|| RouteError::NoMac(name.to_string()))?;
    if target.info.addrs.is_empty() {
        return Err(RouteError::NoAddress(name.to_string()));
    }
    let mut relays: Vec<&DeviceEntry> = inventory
        .iter()
        .filter(|d| d.info.name != name && d.info.relay.is_some())
        .filter(|d| {
            d.info
                .addrs
                .iter()
                .any(|a| target.info.addrs.iter().any(|t| t.same_subnet(a) || a.same_subnet(t)))
        })
        .collect();
    relays.sort_by(|a, b| {
        (a.info.role != "reflector", std::cmp::Reverse(a.last_seen), &a.info.name).cmp(&(
            b.info.role != "reflector",
            std::cmp::Reverse(b.last_seen),
            &b.info.name,
        ))
    });
    if relays.is_empty() {
        let nets: Vec<String> = target.info.addrs.iter().map(|n| n.to_string()).collect();
        return Err(RouteError::NoRelay { device: name.to_string(), nets: nets.join(", ") });
    }
    Ok(Route {
        target: WakeTarget {
            device: name.to_string(),
            mac,
            to: destination(target),
            password: Vec::new(),
        },
        relays: relays
            .into_iter()
            .map(|d| RelayChoice {
                name: d.info.name.clone(),
                role: d.info.role.clone(),
                addr: d.info.relay.expect("filtered on relay"),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wake::msg::DeviceInfo;

    fn dev(name: &str, role: &str, net: &str, relay: Option<&str>, seen: u64) -> DeviceEntry {
        DeviceEntry {
            info: DeviceInfo {
                name: name.into(),
                role: role.into(),
                site: "s".into(),
                macs: vec![[2, 0, 0, 0, 0, name.len() as u8]],
                addrs: vec![net.parse().unwrap()],
                relay: relay.map(|r| r.parse().unwrap()),
                ..Default::default()
            },
            last_seen: seen,
            reported_by: name.into(),
        }
    }

    #[test]
    fn picks_a_relay_on_the_targets_subnet_reflectors_first() {
        let inv = vec![
            dev("pc-a", "endpoint", "10.1.0.5/24", None, 1),
            dev("pc-b", "endpoint", "10.2.0.5/24", None, 1),
            dev("refl-a", "reflector", "10.1.0.2/24", Some("10.1.0.2:7443"), 5),
            dev("relay-pc", "endpoint", "10.2.0.9/24", Some("10.2.0.9:7444"), 9),
            dev("refl-b", "reflector", "10.2.0.2/24", Some("10.2.0.2:7443"), 5),
        ];
        let r = route("pc-b", &inv).unwrap();
        let names: Vec<_> = r.relays.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["refl-b", "relay-pc"]);
        assert_eq!(r.target.to, Some("10.2.0.255:9".parse().unwrap()));
        let r = route("pc-a", &inv).unwrap();
        assert_eq!(r.relays[0].name, "refl-a");
        assert_eq!(r.relays.len(), 1);
    }

    #[test]
    fn a_sleeping_reflector_is_woken_by_its_sibling() {
        let inv = vec![
            dev("refl-1", "reflector", "10.1.0.2/24", Some("10.1.0.2:7443"), 5),
            dev("refl-2", "reflector", "10.1.0.3/24", Some("10.1.0.3:7443"), 5),
        ];
        let r = route("refl-2", &inv).unwrap();
        assert_eq!(r.relays.len(), 1);
        assert_eq!(r.relays[0].name, "refl-1");
    }

    #[test]
    fn unroutable_devices_are_errors() {
        let inv = vec![dev("pc-a", "endpoint", "10.1.0.5/24", None, 1)];
        assert_eq!(route("nope", &inv).unwrap_err(), RouteError::UnknownDevice("nope".into()));
        assert!(matches!(route("pc-a", &inv).unwrap_err(), RouteError::NoRelay { .. }));
    }
}
