//! Oasis without I/O: every codec and every decision the seed, reflectors, endpoints and the
//! simulator share.
//!
//! Nothing here opens a socket or a file, reads a clock or spawns a task: functions take bytes
//! and instants and return values, the way quinn-proto is to quinn. The daemons drive this code
//! on real time through `oasis-core`'s thin shells (chunk store, QUIC transport, WAN limiter,
//! wake sockets); the simulator drives the same code on a virtual clock. `oasis-core`
//! re-exports every module under its old path, so `oasis_core::manifest` is this crate's
//! [`manifest`].
//!
//! - Content: [`chunk`] (ids and cutting), [`compress`], [`manifest`].
//! - Codecs: [`wire`] (frames and requests), [`backup`] (snapshot and restore messages),
//!   [`seal`] (the seed's signature on a record or plan it hands a device),
//!   [`gossip`] (mesh messages and the peer view), [`wake::msg`] and [`gossip::inventory`].
//! - Decisions: [`policy`] (schedule, the WAN token bucket, the unpaid window), [`cache`]
//!   (ledger and miss table), [`pull_ahead`] (what a reflector asks for before a request's
//!   lookups reach it), [`select`] (which source serves), [`site_wan`] (who fetches for a
//!   site and its share), [`wake::schedule`] and [`wake::route`], [`congestion`] (the transport's
//!   controller and the link model the simulator predicts with).
//! - [`names`]: roles, node names and sites.

pub mod backup;
pub mod cache;
pub mod chunk;
pub mod compress;
pub mod congestion;
pub mod entitlement;
mod envelope;
pub mod file_errors;
pub mod gossip;
pub mod manifest;
pub mod names;
pub mod policy;
pub mod pull_ahead;
pub mod seal;
pub mod select;
pub mod site_wan;
pub mod units;
pub mod upstream_fetch;
pub mod wake;
pub mod wire;

pub use chunk::{ChunkId, ChunkParams};
