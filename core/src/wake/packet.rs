//! Magic packets: parsing MACs and SecureOn passwords, sending with repeats, checking.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

pub use oasis_proto::wake::DEFAULT_PORT;
/// Packets sent per wake: UDP loses packets and a NIC in standby sees only what arrives.
pub const DEFAULT_REPEATS: u32 = 3;
/// Time between repeats.
pub const DEFAULT_SPACING: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WakeError {
    #[error("{0:?} is not a MAC address (expected six hex bytes, e.g. 00:11:22:aa:bb:cc)")]
    BadMac(String),
    #[error(
        "SecureOn password {0:?}: expected 4 or 6 bytes as hex, e.g. 0a0b0c0d or 0a:0b:0c:0d:0e:0f"
    )]
    BadPassword(String),
    #[error("sending the magic packet for {mac} to {to}: {problem}")]
    Send { mac: Mac, to: SocketAddr, problem: String },
}

/// A 6-byte MAC address. Parsed by `wol-rs` (which accepts `00:11:22:33:44:55`,
/// `00-11-22-33-44-55`, `0011.2233.4455`); shown as lowercase `00:11:22:33:44:55`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = WakeError;
    fn from_str(s: &str) -> Result<Mac, WakeError> {
        let bad = || WakeError::BadMac(s.to_string());
        // wol-rs (through eui48) is lenient about some junk; insist on hex digits and the usual
        // separators, and on six bytes' worth of digits, before asking it.
        let digits = s.chars().filter(|c| c.is_ascii_hexdigit()).count();
        if s.trim() != s
            || !s.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '-' | '.'))
            || !(6..=12).contains(&digits)
        {
            return Err(bad());
        }
        let m = wol_rs::MacAddr::from_str(s).map_err(|_| bad())?;
        Ok(Mac(m.0))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A SecureOn password: 4 or 6 bytes appended to the magic packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    pub fn new(bytes: &[u8]) -> Result<Password, WakeError> {
        if !matches!(bytes.len(), 4 | 6) {
            return Err(WakeError::BadPassword(hex::encode(bytes)));
        }
        Ok(Password(bytes.to_vec()))
    }

    /// An optional password from wire bytes (empty = none).
    pub fn from_wire(bytes: &[u8]) -> Result<Option<Password>, WakeError> {
        if bytes.is_empty() {
            return Ok(None);
        }
        Password::new(bytes).map(Some)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for Password {
    type Err = WakeError;
    fn from_str(s: &str) -> Result<Password, WakeError> {
        let clean: String = s.chars().filter(|c| !matches!(c, ':' | '-')).collect();
        let bytes = hex::decode(&clean).map_err(|_| WakeError::BadPassword(s.to_string()))?;
        Password::new(&bytes).map_err(|_| WakeError::BadPassword(s.to_string()))
    }
}

/// The magic packet: 6 x 0xFF, the MAC 16 times, then the password if any (102, 106 or 108
/// bytes), assembled by the `wol` crate.
pub fn magic_packet(mac: Mac, password: Option<&Password>) -> Vec<u8> {
    let target = wol_packet::MacAddress::new(mac.0);
    match password.map(|p| p.as_bytes()) {
        Some(p) if p.len() == 6 => {
            let mut buf = [0u8; 108];
            let mut token = [0u8; 6];
            token.copy_from_slice(p);
            wol_packet::fill_magic_packet_secure_on(
                &mut buf,
                target,
                wol_packet::SecureOn::new(token),
            );
            buf.to_vec()
        }
        other => {
            // The `wol` crate only knows 6-byte SecureOn tokens; a 4-byte password follows its
            // plain packet.
            let mut buf = [0u8; 102];
            wol_packet::fill_magic_packet(&mut buf, target);
            let mut v = buf.to_vec();
            v.extend_from_slice(other.unwrap_or(&[]));
            v
        }
    }
}

/// How many packets, how far apart.
#[derive(Clone, Copy, Debug)]
pub struct SendOptions {
    pub repeats: u32,
    pub spacing: Duration,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions { repeats: DEFAULT_REPEATS, spacing: DEFAULT_SPACING }
    }
}

/// Which library sent a packet (reported so operators can tell the paths apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    /// `wol-rs`: the plain packet to port 9.
    WolRs,
    /// The `wol` crate's packet over our own socket: other ports, SecureOn.
    Wol,
}

/// Sends `repeats` magic packets for `mac` to `to`, `spacing` apart. The plain packet to
/// IPv4 port 9 goes through wol-rs (blocking, on a blocking thread); anything else through a
/// broadcast-enabled UDP socket carrying the `wol` crate's packet.
pub async fn send(
    mac: Mac,
    to: SocketAddr,
    password: Option<&Password>,
    opts: SendOptions,
) -> Result<(u32, Sender), WakeError> {
    let err = |problem: String| WakeError::Send { mac, to, problem };
    let repeats = opts.repeats.max(1);
    let use_wol_rs = password.is_none() && to.port() == DEFAULT_PORT && to.is_ipv4();
    let socket = if use_wol_rs {
        None
    } else {
        let bind: SocketAddr = match to.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let s = tokio::net::UdpSocket::bind(bind).await.map_err(|e| err(e.to_string()))?;
        s.set_broadcast(true).map_err(|e| err(e.to_string()))?;
        Some(s)
    };
    let packet = magic_packet(mac, password);
    for i in 0..repeats {
        if i > 0 {
            tokio::time::sleep(opts.spacing).await;
        }
        match &socket {
            None => {
                let (m, ip) = (wol_rs::MacAddr(mac.0), to.ip());
                tokio::task::spawn_blocking(move || wol_rs::send_wol(m, Some(ip), None))
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .map_err(|e| err(e.to_string()))?;
            }
            Some(s) => {
                s.send_to(&packet, to).await.map_err(|e| err(e.to_string()))?;
            }
        }
    }
    tracing::info!(%mac, %to, packets = repeats, "magic packets sent");
    Ok((repeats, if use_wol_rs { Sender::WolRs } else { Sender::Wol }))
}

/// Checks a received datagram byte by byte: 6 x 0xFF, one MAC 16 times, then nothing or a 4- or
/// 6-byte password. Returns the MAC and the password.
pub fn check_packet(bytes: &[u8]) -> Result<(Mac, Vec<u8>), String> {
    let extra = match bytes.len() {
        102 => 0,
        106 => 4,
        108 => 6,
        n => return Err(format!("{n} bytes: a magic packet has 102, 106 or 108")),
    };
    if bytes[..6] != [0xff; 6] {
        return Err(format!("sync stream is {}, not ffffffffffff", hex::encode(&bytes[..6])));
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[6..12]);
    for i in 1..16 {
        let rep = &bytes[6 + i * 6..12 + i * 6];
        if rep != mac {
            return Err(format!("MAC repeat {} is {} not {}", i + 1, hex::encode(rep), Mac(mac)));
        }
    }
    Ok((Mac(mac), bytes[102..102 + extra].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        let want = Mac([0, 0x11, 0x22, 0xaa, 0xbb, 0xcc]);
        for s in ["00:11:22:aa:bb:cc", "00-11-22-AA-BB-CC", "0011.22aa.bbcc"] {
            assert_eq!(s.parse::<Mac>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string(), "00:11:22:aa:bb:cc");
        for bad in [
            "",
            "00:11:22:33:44",
            "00:11:22:33:44:55:66",
            "G0:01:11:34:88:99",
            "pc-1",
            " 00:11:22:33:44:55",
            "00:11:22:33:44:5g",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert!(e.to_string().contains("not a MAC address"), "{bad}: {e}");
        }
    }

    #[test]
    fn passwords_parse() {
        assert_eq!("0a0b0c0d".parse::<Password>().unwrap().as_bytes(), &[10, 11, 12, 13]);
        assert_eq!("01:02:03:04:05:06".parse::<Password>().unwrap().as_bytes().len(), 6);
        for bad in ["0a0b0c", "zz0b0c0d", "0102030405060708"] {
            assert!(bad.parse::<Password>().is_err(), "{bad}");
        }
    }

    #[test]
    fn packets_have_the_layout_and_check() {
        let mac = Mac([1, 2, 3, 4, 5, 6]);
        for (pw, len) in [(None, 102), (Some(vec![9, 9, 9, 9]), 106), (Some(vec![7; 6]), 108)] {
            let p = pw.as_deref().map(|b| Password::new(b).unwrap());
            let pkt = magic_packet(mac, p.as_ref());
            assert_eq!(pkt.len(), len);
            assert_eq!(&pkt[..6], &[0xff; 6]);
            assert_eq!(&pkt[96..102], &mac.0);
            assert_eq!(check_packet(&pkt).unwrap(), (mac, pw.unwrap_or_default()));
        }
        let mut pkt = magic_packet(mac, None);
        pkt[50] ^= 1;
        assert!(check_packet(&pkt).is_err());
        assert!(check_packet(&pkt[..100]).is_err());
    }
}
