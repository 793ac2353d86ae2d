//! Wake-on-LAN: the one API the rest of Oasis uses to wake machines.
//!
//! - [`packet`]: MAC and SecureOn password parsing, the magic packet, sending it (with repeats)
//!   and checking a received one. The plain packet to port 9 goes out through `wol-rs`; other
//!   ports and SecureOn passwords through the `wol` crate's packet builders.
//! - [`route`]: which awake node on the target's subnet relays a wake (the seed never sends).
//! - [`schedule`]: staggered batches for a delivery window, waiting for machines to come online,
//!   per-machine results; an I/O-free state machine driven by `now` so the simulator can run it.
//! - [`iface`]: this box's MAC and IP addresses, for registration and default destinations.
//! - [`gossip`]: device inventory records shared between the reflectors of a site over the mesh.
//! - [`msg`]: the inventory and wake message bodies of the wire protocol.

pub mod gossip;
pub mod iface;
pub mod msg;
pub mod packet;
pub mod relay;
pub mod route;
pub mod schedule;

pub use msg::{DeviceEntry, DeviceInfo, IpNet, WakeSent, WakeTarget};
pub use packet::{check_packet, send, Mac, Password, SendOptions, WakeError, DEFAULT_PORT};
