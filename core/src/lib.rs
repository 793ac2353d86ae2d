//! Oasis core: what the seed, reflectors and endpoints share.
//!
//! The codecs and decisions are `oasis-proto`'s, without I/O, and are re-exported here under the
//! same names (`oasis_core::manifest` is `oasis_proto::manifest`). This crate adds the shells
//! that touch the world: the chunk store (`store`, `packs`), the QUIC transport (`net`), node
//! identities and TLS (`identity`), the WAN limiter on real time (`policy`), Wake-on-LAN sockets
//! (`wake`), file metadata (`fsmeta`), durable writes, logging and metrics.

pub use oasis_proto::{
    backup, cache, chunk, compress, entitlement, file_errors, gossip, manifest, names, pull_ahead,
    seal, select, site_wan, units, upstream_fetch, wire,
};

pub mod durable;
pub mod fsmeta;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod packs;
pub mod pki;
pub mod policy;
pub mod shutdown;
pub mod store;
pub mod wake;

pub use chunk::{ChunkId, ChunkParams};
