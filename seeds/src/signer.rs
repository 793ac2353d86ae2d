//! What the seed signs while it serves, with the manifest key:
//! - "latest" statements (`manifest::Latest`): which version of a layer is the newest
//!   published, valid for the configured lifetime and reused for a tenth of it (a minute at
//!   most) while the latest stays the same. A
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
    /// The last statement made per layer: every fetch asks for one, and making one verifies
    /// the root (up to 4 MiB, sent to a separate signer), so a statement is reused for a
    /// tenth of its lifetime while the layer's latest stays the same.
    made: std::sync::Mutex<std::collections::HashMap<String, Made>>,
}

struct Made {
    root: [u8; 32],
    at: std::time::Instant,
    statement: Vec<u8>,
}

/// Longest a statement is reused.
const MAX_REUSE: Duration = Duration::from_secs(60);

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
        Ok(SeedSigner { keys, ttl, made: Default::default() })
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
        let digest = oasis_core::manifest::digest_of_signed(&root);
        let reuse = (self.ttl / 10).min(MAX_REUSE);
        let made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = made.get(name).filter(|m| m.root == digest && m.at.elapsed() < reuse) {
            return Ok(Some(m.statement.clone()));
        }
        drop(made);
        let statement = self.keys.latest(&root, self.ttl)?;
        let m = Made { root: digest, at: std::time::Instant::now(), statement: statement.clone() };
        self.made.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), m);
        Ok(Some(statement))
    }
}
