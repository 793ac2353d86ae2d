//! The datacenter seed: publishes layers into its chunk store and serves them.

pub mod admin;
pub mod catalog;
pub mod commands;
pub mod devices;
pub mod entitlements;
pub mod ingest;
pub mod keys;
pub mod mesh;
pub mod node;
pub mod provision;
pub mod readers;
pub mod renewal;
pub mod revocations;
pub mod signer;
pub mod snapshots;
pub mod source;

pub use ingest::{publish, PublishOptions, PublishReport};
pub use mesh::SeedMesh;
pub use node::RunningSeed;
