//! What the seed signs while it serves, with the manifest key:
//! - "latest" statements (`manifest::Latest`): which version of a layer is the newest
//!   published, signed afresh for every request and valid for the configured lifetime. A
//!   reflector keeps the last one it received and hands it out while the seed is out of reach;
//!   once that copy is past its lifetime, endpoints report it as stale;
//! - seals (`seal::Seal`) on the snapshot records and plans it hands devices.

use crate::keys::{KeyError, Keys};
use oasis_core::seal::Sealed;
use oasis_core::store::ChunkStore;
use std::sync::Arc;
use std::time::Duration;

/// How long a statement stays fresh by default (`oasis-seed serve --latest-ttl`): a reflector cut
/// off from the seed for longer than this serves stale answers, and its endpoints say so.
pub const DEFAULT_LATEST_TTL: Duration = Duration::from_secs(3600);
/// Shortest and longest lifetime accepted.
pub const MIN_LATEST_TTL: Duration = Duration::from_secs(1);
pub const MAX_LATEST_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Signs latest statements and seals, with the seed's keys wherever they are.
pub struct SeedSigner {
    keys: Arc<dyn Keys>,
    ttl: Duration,
}

/// Refuses a lifetime outside [`MIN_LATEST_TTL`]..=[`MAX_LATEST_TTL`], naming the setting.
pub fn check_ttl(ttl: Duration) -> Result<(), String> {
    if (MIN_LATEST_TTL..=MAX_LATEST_TTL).contains(&ttl) {
        Ok(())
    } else {
        Err(format!(
            "latest_ttl must be between {} s and {} days (is {} s)",
            MIN_LATEST_TTL.as_secs(),
            MAX_LATEST_TTL.as_secs() / 86_400,
            ttl.as_secs_f64()
        ))
    }
}

impl SeedSigner {
    pub fn new(keys: Arc<dyn Keys>, ttl: Duration) -> Result<SeedSigner, String> {
        check_ttl(ttl)?;
        Ok(SeedSigner { keys, ttl })
    }

    /// The signer of the seed whose data directory is `data` (its own keys).
    pub fn load(data: &std::path::Path, ttl: Duration) -> anyhow::Result<SeedSigner> {
        let auth = oasis_core::pki::SeedAuthority::load(data)?;
        SeedSigner::new(Arc::new(auth), ttl).map_err(anyhow::Error::msg)
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A seal on `sealed`, issued now. Blocking with a separate signer.
    pub fn seal(&self, sealed: Sealed) -> Result<Vec<u8>, KeyError> {
        self.keys.seal(&sealed)
    }

    /// The encoded statement for `name` now, or None when no version of it is published.
    /// Blocking (store reads, and the signer when separate).
    pub fn statement(&self, store: &ChunkStore, name: &str) -> Result<Option<Vec<u8>>, KeyError> {
        let unavailable = |e: oasis_core::store::StoreError| KeyError::Unavailable(e.to_string());
        let Some(version) = store.latest_version(name).map_err(unavailable)? else {
            return Ok(None);
        };
        let Some(root) = store.manifest_bytes(name, Some(&version)).map_err(unavailable)? else {
            return Ok(None);
        };
        self.keys.latest(&root, self.ttl).map(Some)
    }
}
