//! Oasis endpoint: fetches signed layers from reflectors or the seed into a directory.
//!
//! [`fetch`] is the whole operation and is callable in-process (tests, demos); the binary
//! `oasis-endpoint` only parses arguments, sets up logging and prints the [`FetchReport`].
//!
//! Modules: [`sources`] (connecting, failover, the manifest), [`download`] (parallel verified
//! chunk download from one source), [`reuse`] (chunks already in the target directory),
//! [`tree_writer`] (checking the target and writing the tree), [`fetch`] (orchestration),
//! [`meta`] (owners, modes, times and extended attributes on every tree write).
//!
//! The device: [`device`] (state dir model, lock), [`compose`] (stacking layers),
//! [`snapshot`] (snapshot format and files), [`take`] (taking a snapshot), [`plan`] (what to
//! change), [`journal`] (crash-safe transactions), [`materialize`] (writing staged files from
//! the chunk store), [`layer_fetch`] (layers into the store), [`session`] (what every device
//! command shares), [`apply`], [`revert`] (revert, restore-file), [`retention`].

pub mod apply;
pub mod compose;
pub mod config;
pub mod device;
pub mod discovery;
pub mod download;
pub mod fetch;
pub mod journal;
pub mod latest;
pub mod layer_fetch;
pub mod materialize;
pub mod meta;
pub mod plan;
pub mod relay;
pub mod restore;
pub mod retention;
pub mod reuse;
pub mod revert;
pub mod session;
pub mod sleep;
pub mod snapshot;
pub mod sources;
pub mod take;
pub mod tree_writer;
pub mod upload;

pub use fetch::{
    fetch, fetch_with, parse_layer, Extraneous, FetchOptions, FetchReport, DEFAULT_STREAMS,
};

#[cfg(test)]
mod test_entries;
