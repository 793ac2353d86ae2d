//! Wake-on-LAN: the one API the rest of Oasis uses to wake machines.
//!
//! - [`packet`]: MAC and SecureOn password parsing, the magic packet, sending it (with repeats)
//!   and checking a received one. The plain packet to port 9 goes out through `wol-rs`; other
//!   ports and SecureOn passwords through the `wol` crate's packet builders.
//! - [`relay`]: the UDP side of a wake relay.
//! - [`iface`]: this box's MAC and IP addresses, for registration and default destinations.
//! - [`route`], [`schedule`], [`gossip`], [`msg`]: the decisions and messages, without I/O, from
//!   `oasis_proto::wake`.

pub mod iface;
pub mod packet;
pub mod relay;

pub use oasis_proto::wake::{delivery, msg, route, schedule};
pub use oasis_proto::wake::{DeviceEntry, DeviceInfo, IpNet, WakeSent, WakeTarget};
pub use packet::{check_packet, send, Mac, Password, SendOptions, WakeError, DEFAULT_PORT};
