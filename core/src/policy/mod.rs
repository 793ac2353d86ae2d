//! WAN bandwidth policy on real time and real files. What the policy says and the token bucket
//! that enforces it are pure and live in `oasis_proto::policy` (re-exported here); this module
//! adds the two pieces that touch the world:
//!
//! * [`load`] reads and parses a policy file;
//! * [`WanLimiter`] is the thin async shell for real time: `Arc<Mutex<WanBudget>>` plus a
//!   `tokio::sync::Notify`, with [`WanLimiter::acquire`] sleeping on the budget's answers.

mod limiter;

use std::path::Path;

pub use limiter::WanLimiter;
pub use oasis_proto::policy::*;

/// Reads and parses a policy file. Errors name the file, and where they can the line and key.
pub fn load(path: &Path) -> Result<BandwidthPolicy, PolicyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| PolicyError::Io { path: path.to_path_buf(), source })?;
    BandwidthPolicy::from_toml_str(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests;
