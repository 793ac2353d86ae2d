//! This box's network interfaces: MACs and addresses to register, broadcast addresses to send to.

use super::msg::IpNet;
use network_interface::{Addr, NetworkInterface, NetworkInterfaceConfig};
use std::net::{IpAddr, Ipv4Addr};

/// MACs and addresses of this box's interfaces (loopback and all-zero MACs left out).
#[derive(Clone, Debug, Default)]
pub struct LocalInterfaces {
    pub macs: Vec<[u8; 6]>,
    pub addrs: Vec<IpNet>,
    /// IPv4 broadcast addresses of the non-loopback subnets.
    pub broadcasts: Vec<Ipv4Addr>,
}

fn prefix_of(mask: IpAddr) -> u8 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones() as u8,
        IpAddr::V6(m) => u128::from(m).count_ones() as u8,
    }
}

/// Reads the interfaces; an error reading them gives an empty list (logged), since a device
/// that cannot tell its addresses can still register by name.
pub fn local_interfaces() -> LocalInterfaces {
    let list = match NetworkInterface::show() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list network interfaces");
            return LocalInterfaces::default();
        }
    };
    let mut out = LocalInterfaces::default();
    for i in list {
        if let Some(mac) = i.mac_addr.as_deref().and_then(|m| m.parse::<super::Mac>().ok()) {
            if mac.0 != [0; 6] && !out.macs.contains(&mac.0) {
                out.macs.push(mac.0);
            }
        }
        for a in &i.addr {
            let (ip, mask, bcast) = match a {
                Addr::V4(v) => (IpAddr::V4(v.ip), v.netmask.map(IpAddr::V4), v.broadcast),
                Addr::V6(v) => (IpAddr::V6(v.ip), v.netmask.map(IpAddr::V6), None),
            };
            if ip.is_loopback() {
                continue;
            }
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let net = IpNet { addr: ip, prefix: mask.map(prefix_of).unwrap_or(max) };
            if !out.addrs.contains(&net) {
                out.addrs.push(net);
            }
            if let Some(b) = bcast.or_else(|| net.broadcast().filter(|_| net.prefix < 31)) {
                if !out.broadcasts.contains(&b) {
                    out.broadcasts.push(b);
                }
            }
        }
    }
    out
}

/// This node's own registration: name, role and site from its certificate, MACs and
/// addresses from its interfaces.
pub fn self_info(
    node: &crate::pki::PeerInfo,
    agent_version: &str,
    wake_to: Option<std::net::SocketAddr>,
    relay: Option<std::net::SocketAddr>,
) -> super::DeviceInfo {
    let local = local_interfaces();
    super::DeviceInfo {
        name: node.name.clone(),
        role: node.role.to_string(),
        site: node.site.clone().unwrap_or_default(),
        agent_version: agent_version.to_string(),
        macs: local.macs,
        addrs: local.addrs,
        wake_to,
        relay,
        held: Vec::new(),
    }
}
