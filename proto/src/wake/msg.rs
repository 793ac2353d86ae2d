//! Bodies of the inventory and wake messages (`Register`, `Devices`, `Wake`, `WakeReport`):
//! pure encoding, no I/O. docs/protocol.md ("Device inventory and Wake-on-LAN") is normative.

use crate::wire::{get_str, malformed, need, put_str, WireError, MAX_NAME_BYTES};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most entries in one list (MACs, addresses, devices, wake targets).
pub const MAX_LIST: usize = 4096;
/// Most MAC or IP addresses one device may report.
pub const MAX_DEVICE_ADDRS: usize = 64;

/// An interface address with its prefix length, e.g. 10.1.2.7/24.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Checks the prefix length against the address family.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IpNet, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is too long for {addr}"));
        }
        Ok(IpNet { addr, prefix })
    }

    /// Is `other` on this subnet?
    pub fn contains(&self, other: IpAddr) -> bool {
        match (self.addr, other) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }

    /// Do both addresses sit on the same subnet (by this address's prefix)?
    pub fn same_subnet(&self, other: &IpNet) -> bool {
        self.contains(other.addr)
    }

    /// The IPv4 directed broadcast address of this subnet (None for IPv6, which has none).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(u32::from(self.prefix)).unwrap_or(0);
                Some(Ipv4Addr::from(u32::from(a) | host))
            }
            IpAddr::V6(_) => None,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected ADDR/PREFIX"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: {p:?} is not a prefix length"))?;
        IpNet::new(addr, prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a device tells about itself in `Register`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The node name (for endpoints and reflectors, the name in its certificate).
    pub name: String,
    /// "endpoint" or "reflector".
    pub role: String,
    /// Site; empty when the node has none.
    pub site: String,
    /// Agent version, e.g. "oasis-endpoint 0.1.0".
    pub agent_version: String,
    /// MAC addresses of its interfaces.
    pub macs: Vec<[u8; 6]>,
    /// IP addresses with prefix length.
    pub addrs: Vec<IpNet>,
    /// Where magic packets for this device must go instead of its subnet's broadcast address
    /// (an agent that listens for its own magic packet on a UDP port, as in test mode).
    pub wake_to: Option<SocketAddr>,
    /// QUIC address where this node accepts `Wake` requests (it can relay wakes for its subnet).
    pub relay: Option<SocketAddr>,
    /// Layers the device holds complete, as "name@version" (how a scheduled delivery learns
    /// that a machine has fetched).
    #[serde(default)]
    pub held: Vec<String>,
}

/// An inventory entry as listed by `Devices`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub info: DeviceInfo,
    /// Unix seconds of the last registration.
    pub last_seen: u64,
    /// The node that reported it (itself, or the reflector that forwarded it).
    pub reported_by: String,
}

/// One machine to wake, in a `Wake` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeTarget {
    /// Inventory name, for reports (may be empty).
    pub device: String,
    pub mac: [u8; 6],
    /// Destination; None = the relay's default (the broadcast address of its subnets, port 9).
    pub to: Option<SocketAddr>,
    /// SecureOn password: empty, 4 or 6 bytes.
    pub password: Vec<u8>,
}

/// What a relay did for one target, in a `WakeReport`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeSent {
    pub device: String,
    pub mac: [u8; 6],
    /// Destinations the packets went to ("ADDR:PORT", comma separated).
    pub sent_to: String,
    /// Packets sent (repeats included).
    pub packets: u8,
    /// Empty on success; why nothing was sent otherwise.
    pub error: String,
}

/// A list body element.
pub trait Item: Sized {
    const WHAT: &'static str;
    /// Fewest bytes one encoded item takes (to refuse counts the body cannot hold).
    const MIN_BYTES: usize;
    fn encode(&self, out: &mut BytesMut);
    fn decode(body: &mut Bytes) -> Result<Self, WireError>;
}

/// `u16 count | items`.
pub fn encode_list<T: Item>(out: &mut BytesMut, items: &[T]) {
    let n = items.len().min(MAX_LIST);
    out.put_u16(n as u16);
    for i in &items[..n] {
        i.encode(out);
    }
}

pub fn decode_list<T: Item>(body: &mut Bytes) -> Result<Vec<T>, WireError> {
    need(body, 2, T::WHAT)?;
    let n = body.get_u16() as usize;
    if n > MAX_LIST || n > body.len() / T::MIN_BYTES {
        return Err(malformed(T::WHAT, format!("count {n} exceeds the body or the limit")));
    }
    (0..n).map(|_| T::decode(body)).collect()
}

/// Strings longer than a name are cut (at a char boundary) rather than sent malformed.
fn put_short(out: &mut BytesMut, s: &str) {
    let mut end = s.len().min(MAX_NAME_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_str(out, &s[..end]);
}

fn put_opt_addr(out: &mut BytesMut, a: &Option<SocketAddr>) {
    put_short(out, &a.map(|a| a.to_string()).unwrap_or_default());
}

fn get_opt_addr(body: &mut Bytes, what: &'static str) -> Result<Option<SocketAddr>, WireError> {
    let s = get_str(body, what)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| malformed(what, format!("{s:?} is not ADDR:PORT")))
}

fn get_mac(body: &mut Bytes, what: &'static str) -> Result<[u8; 6], WireError> {
    need(body, 6, what)?;
    let mut m = [0u8; 6];
    body.copy_to_slice(&mut m);
    Ok(m)
}

impl DeviceInfo {
    pub fn encode(&self, out: &mut BytesMut) {
        put_short(out, &self.name);
        put_short(out, &self.role);
        put_short(out, &self.site);
        put_short(out, &self.agent_version);
        let macs = &self.macs[..self.macs.len().min(MAX_DEVICE_ADDRS)];
        out.put_u8(macs.len() as u8);
        for m in macs {
            out.put_slice(m);
        }
        let addrs = &self.addrs[..self.addrs.len().min(MAX_DEVICE_ADDRS)];
        out.put_u8(addrs.len() as u8);
        for a in addrs {
            match a.addr {
                IpAddr::V4(v4) => {
                    out.put_u8(4);
                    out.put_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.put_u8(6);
                    out.put_slice(&v6.octets());
                }
            }
            out.put_u8(a.prefix);
        }
        put_opt_addr(out, &self.wake_to);
        put_opt_addr(out, &self.relay);
        let held = &self.held[..self.held.len().min(MAX_DEVICE_ADDRS)];
        out.put_u8(held.len() as u8);
        for h in held {
            put_short(out, h);
        }
    }

    pub fn decode(body: &mut Bytes) -> Result<DeviceInfo, WireError> {
        const W: &str = "Register";
        let name = get_str(body, W)?;
        if name.is_empty() {
            return Err(malformed(W, "empty device name"));
        }
        let role = get_str(body, W)?;
        let site = get_str(body, W)?;
        let agent_version = get_str(body, W)?;
        need(body, 1, W)?;
        let n = body.get_u8() as usize;
        if n > MAX_DEVICE_ADDRS {
            return Err(malformed(W, format!("{n} MAC addresses exceed {MAX_DEVICE_ADDRS}")));
        }
        let macs = (0..n).map(|_| get_mac(body, W)).collect::<Result<Vec<_>, _>>()?;
        need(body, 1, W)?;
        let n = body.get_u8() as usize;
        if n > MAX_DEVICE_ADDRS {
            return Err(malformed(W, format!("{n} IP addresses exceed {MAX_DEVICE_ADDRS}")));
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            need(body, 1, W)?;
            let addr = match body.get_u8() {
                4 => {
                    need(body, 5, W)?;
                    let mut o = [0u8; 4];
                    body.copy_to_slice(&mut o);
                    IpAddr::V4(Ipv4Addr::from(o))
                }
                6 => {
                    need(body, 17, W)?;
                    let mut o = [0u8; 16];
                    body.copy_to_slice(&mut o);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
                f => return Err(malformed(W, format!("unknown address family {f}"))),
            };
            addrs.push(IpNet::new(addr, body.get_u8()).map_err(|e| malformed(W, e))?);
        }
        let wake_to = get_opt_addr(body, W)?;
        let relay = get_opt_addr(body, W)?;
        need(body, 1, W)?;
        let n = body.get_u8() as usize;
        if n > MAX_DEVICE_ADDRS {
            return Err(malformed(W, format!("{n} held layers exceed {MAX_DEVICE_ADDRS}")));
        }
        let held = (0..n).map(|_| get_str(body, W)).collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceInfo { name, role, site, agent_version, macs, addrs, wake_to, relay, held })
    }
}

impl Item for DeviceEntry {
    const WHAT: &'static str = "Devices";
    const MIN_BYTES: usize = 16;
    fn encode(&self, out: &mut BytesMut) {
        self.info.encode(out);
        out.put_u64(self.last_seen);
        put_short(out, &self.reported_by);
    }
    fn decode(body: &mut Bytes) -> Result<Self, WireError> {
        let info = DeviceInfo::decode(body)?;
        need(body, 8, Self::WHAT)?;
        let last_seen = body.get_u64();
        let reported_by = get_str(body, Self::WHAT)?;
        Ok(DeviceEntry { info, last_seen, reported_by })
    }
}

impl Item for WakeTarget {
    const WHAT: &'static str = "Wake";
    const MIN_BYTES: usize = 9;
    fn encode(&self, out: &mut BytesMut) {
        put_short(out, &self.device);
        out.put_slice(&self.mac);
        put_opt_addr(out, &self.to);
        let p = &self.password[..self.password.len().min(6)];
        out.put_u8(p.len() as u8);
        out.put_slice(p);
    }
    fn decode(body: &mut Bytes) -> Result<Self, WireError> {
        let device = get_str(body, Self::WHAT)?;
        let mac = get_mac(body, Self::WHAT)?;
        let to = get_opt_addr(body, Self::WHAT)?;
        need(body, 1, Self::WHAT)?;
        let n = body.get_u8() as usize;
        if !matches!(n, 0 | 4 | 6) {
            return Err(malformed(
                Self::WHAT,
                format!("SecureOn password of {n} bytes (0, 4 or 6)"),
            ));
        }
        need(body, n, Self::WHAT)?;
        let password = body.split_to(n).to_vec();
        Ok(WakeTarget { device, mac, to, password })
    }
}

impl Item for WakeSent {
    const WHAT: &'static str = "WakeReport";
    const MIN_BYTES: usize = 11;
    fn encode(&self, out: &mut BytesMut) {
        put_short(out, &self.device);
        out.put_slice(&self.mac);
        put_short(out, &self.sent_to);
        out.put_u8(self.packets);
        put_short(out, &self.error);
    }
    fn decode(body: &mut Bytes) -> Result<Self, WireError> {
        let device = get_str(body, Self::WHAT)?;
        let mac = get_mac(body, Self::WHAT)?;
        let sent_to = get_str(body, Self::WHAT)?;
        need(body, 1, Self::WHAT)?;
        let packets = body.get_u8();
        let error = get_str(body, Self::WHAT)?;
        Ok(WakeSent { device, mac, sent_to, packets, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{split_frame, Frame, MAX_FRAME_BYTES};

    fn roundtrip(f: Frame) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        assert_eq!(split_frame(&mut buf, MAX_FRAME_BYTES).unwrap().unwrap(), f);
        assert!(buf.is_empty());
    }

    fn device() -> DeviceInfo {
        DeviceInfo {
            name: "pc-1".into(),
            role: "endpoint".into(),
            site: "paris".into(),
            agent_version: "oasis-endpoint 0.1.0".into(),
            macs: vec![[0, 0x11, 0x22, 0x33, 0x44, 0x55]],
            addrs: vec!["10.1.2.7/24".parse().unwrap(), "fe80::1/64".parse().unwrap()],
            wake_to: Some("127.0.0.1:4009".parse().unwrap()),
            relay: None,
            held: vec!["base@2".into()],
        }
    }

    #[test]
    fn inventory_and_wake_frames_roundtrip() {
        roundtrip(Frame::Register { device: Box::new(device()) });
        roundtrip(Frame::Registered);
        roundtrip(Frame::GetDevices);
        roundtrip(Frame::Devices {
            devices: vec![DeviceEntry {
                info: device(),
                last_seen: 1_700_000_000,
                reported_by: "refl-1".into(),
            }],
        });
        roundtrip(Frame::Wake {
            targets: vec![
                WakeTarget {
                    device: "pc-1".into(),
                    mac: [1, 2, 3, 4, 5, 6],
                    to: None,
                    password: vec![],
                },
                WakeTarget {
                    device: String::new(),
                    mac: [1, 2, 3, 4, 5, 7],
                    to: Some("10.1.2.255:7".parse().unwrap()),
                    password: vec![9, 8, 7, 6],
                },
            ],
        });
        roundtrip(Frame::WakeReport {
            results: vec![WakeSent {
                device: "pc-1".into(),
                mac: [1, 2, 3, 4, 5, 6],
                sent_to: "10.1.2.255:9".into(),
                packets: 3,
                error: String::new(),
            }],
        });
    }

    #[test]
    fn register_matches_the_protocol_doc_example() {
        let d = DeviceInfo {
            name: "pc-1".into(),
            role: "endpoint".into(),
            site: "paris".into(),
            agent_version: "a".into(),
            macs: vec![[0, 0x11, 0x22, 0x33, 0x44, 0x55]],
            addrs: vec!["10.1.2.7/24".parse().unwrap()],
            ..Default::default()
        };
        let want = "00000028 10 0470632d31 08656e64706f696e74 057061726973 0161 \
                    01001122334455 01040a01020718 00 00 00";
        let want: String = want.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        assert_eq!(hex::encode(Frame::Register { device: Box::new(d) }.to_bytes()), want);
    }

    #[test]
    fn subnets_and_broadcasts() {
        let n: IpNet = "10.1.2.7/24".parse().unwrap();
        assert_eq!(n.broadcast(), Some(Ipv4Addr::new(10, 1, 2, 255)));
        assert!(n.contains("10.1.2.200".parse().unwrap()));
        assert!(!n.contains("10.1.3.1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.broadcast(), Some(Ipv4Addr::BROADCAST));
        assert!("10.0.0.1/33".parse::<IpNet>().is_err());
        assert!("10.0.0.1".parse::<IpNet>().is_err());
    }

    #[test]
    fn bad_password_length_is_malformed() {
        let mut b = BytesMut::new();
        WakeTarget { device: "x".into(), mac: [0; 6], to: None, password: vec![] }.encode(&mut b);
        let n = b.len();
        b[n - 1] = 5;
        b.extend_from_slice(&[0; 5]);
        assert!(WakeTarget::decode(&mut b.freeze()).is_err());
    }
}
