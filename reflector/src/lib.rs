//! The branch reflector: a site cache between endpoints and the seed.
//!
//! Endpoints talk to a reflector exactly as to a seed (`oasis/1` over mutually authenticated
//! QUIC). The reflector answers from its cache (`STATE/cache`, a core `ChunkStore`, verified on
//! every read) and fetches what it lacks from upstream: misses for the same chunk are coalesced
//! into one upstream fetch, misses are batched into pipelined GetChunks requests, every upstream
//! chunk is verified before it is cached or served, and every upstream pull is paid for in the
//! WAN limiter of the bandwidth policy first. A manifest is the seed's signed root, verified
//! against `trust.pem` before it is cached, and its body chunks, fetched and cached like any
//! other chunk (see [`node`]): a reflector cannot forge a layer.
//!
//! Modules: [`config`] (file + flags), [`cache`] (store + LRU ledger + pins), [`body`] (a
//! cached manifest body read entry by entry), [`fetcher`]
//! (coalescing, batching, pacing, verification), [`upstream`] (connection with backoff),
//! [`policy`] (WAN policy, reloads), [`metrics`], [`check`] (`oasis-reflector check`) and
//! [`node`] ([`RunningReflector`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use oasis_reflector::{ReflectorConfig, RunningReflector};
//! let mut cfg = ReflectorConfig::new("/var/lib/oasis-reflector", "0.0.0.0:7443".parse()?, "seed:7443");
//! cfg.cache_size = Some(200 << 30);
//! let r = RunningReflector::start(cfg).await?;
//! println!("serving on {}", r.addr);
//! r.run_until_signal().await
//! # }
//! ```

pub mod body;
pub mod cache;
pub mod check;
pub mod config;
pub mod entitlements;
pub mod fetcher;
mod inventory_gossip;
mod mesh_link;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod pull_ahead;
pub mod readers;
mod renewal;
pub mod revocations;
pub mod siblings;
pub mod upstream;
pub mod wake;

pub use cache::CacheStats;
pub use config::{ConfigArgs, MeshSettings, ReflectorConfig, WanLimit, WanSharing};
pub use metrics::ReflectorMetrics;
pub use node::{PrefetchReport, RunningReflector};
