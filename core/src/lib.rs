//! Oasis core: what the seed, reflectors and endpoints share.
//!
//! Protocol framing (`wire`), chunking (`chunk`) and manifests (`manifest`) are pure: they take
//! bytes and return values, so the simulator can drive the same code without sockets. The
//! chunk store (`store`) and the QUIC transport (`net`) are the thin I/O shells around them.

pub mod backup;
pub mod cache;
pub mod chunk;
pub mod compress;
pub mod durable;
pub mod fsmeta;
pub mod gossip;
pub mod identity;
pub mod logging;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod packs;
pub mod policy;
pub mod select;
pub mod shutdown;
pub mod site_wan;
pub mod store;
pub mod wake;
pub mod wire;

pub use chunk::{ChunkId, ChunkParams};
