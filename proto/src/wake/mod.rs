//! Wake-on-LAN without I/O: the inventory and wake messages, who relays a wake, and the
//! delivery window's wake schedule. `oasis_core::wake` adds the packets and sockets.
//!
//! - [`delivery`]: a site's scheduled runs: one per opening of an assignment's window, fed
//!   what the inventory shows, the wakes due, each machine's stages counted once.
//! - [`msg`]: the inventory and wake message bodies of the wire protocol.
//! - [`route`]: which awake node on the target's subnet relays a wake (the seed never sends).
//! - [`schedule`]: staggered batches for a delivery window, waiting for machines to come online,
//!   per-machine results; a state machine driven by `now` so the simulator can run it.
//!
//! The records reflectors gossip about these devices are [`crate::gossip::inventory`]'s.

pub mod delivery;
pub mod msg;
pub mod route;
pub mod schedule;

pub use msg::{DeviceEntry, DeviceInfo, IpNet, WakeSent, WakeTarget};

/// The usual Wake-on-LAN port (discard); 7 (echo) is common too.
pub const DEFAULT_PORT: u16 = 9;
