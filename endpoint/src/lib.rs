//! Oasis endpoint: fetches signed layers from reflectors or the seed into a directory.
//!
//! [`fetch`] is the whole operation and is callable in-process (tests, demos); the binary
//! `oasis-endpoint` only parses arguments, sets up logging and prints the [`FetchReport`].
//!
//! Modules: [`sources`] (connecting, failover, the manifest), [`download`] (parallel verified
//! chunk download from one source), [`reuse`] (chunks already in the target directory),
//! [`tree_writer`] (checking the target and writing the tree), [`fetch`] (orchestration).

pub mod download;
pub mod fetch;
pub mod reuse;
pub mod sources;
pub mod tree_writer;

pub use fetch::{fetch, parse_layer, FetchOptions, FetchReport, DEFAULT_STREAMS};
