//! The device model: which IT layers are applied on a device root, their manifests, the
//! settings, and the lock that keeps two agents off one device.
//!
//! `STATE_DIR/device/state.json` holds the root, the applied layers (base first) and settings;
//! `STATE_DIR/device/manifests/NAME@VERSION` the signed manifest root of each applied layer and
//! `NAME@VERSION.body` its body (the entries; a million of them make about 100 MB, so they are
//! a file of their own, not a value in the chunk store's database). Both are checked whenever
//! they are read: the root against the trusted manifest key, the body against the chunk ids
//! the root names. Paths named by an applied layer are
//! IT's; every other path under the root is the user's.

use crate::journal::device_dir;
use crate::snapshot::{write_durably, AppliedLayer};
use anyhow::{bail, Context};
use oasis_core::manifest::{LayerManifest, SignedManifest, SignedRoot};
use oasis_core::pki::NodeIdentity;
use oasis_core::store::ChunkStore;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Snapshots kept when no retention is configured.
pub const DEFAULT_KEEP: u32 = 10;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device root (recorded by the first apply, or given with --root).
    pub root: Option<PathBuf>,
    /// Applied IT layers, base first.
    pub layers: Vec<AppliedLayer>,
    /// Retention: snapshots kept (older ones are deleted after each new snapshot).
    #[serde(default)]
    pub snapshot_keep: Option<u32>,
}

impl DeviceState {
    fn path(state_dir: &Path) -> PathBuf {
        device_dir(state_dir).join("state.json")
    }

    pub fn load(state_dir: &Path) -> anyhow::Result<DeviceState> {
        let p = Self::path(state_dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not a valid device state", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeviceState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("device state serializes");
        v.push(b'\n');
        v
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(device_dir(state_dir))?;
        write_durably(&Self::path(state_dir), &self.to_bytes())
            .with_context(|| format!("writing {}", Self::path(state_dir).display()))
    }

    pub fn keep(&self) -> u32 {
        self.snapshot_keep.unwrap_or(DEFAULT_KEEP)
    }

    /// The root to work on: `given` (checked against the recorded one) or the recorded one.
    pub fn root(&self, given: Option<&Path>) -> anyhow::Result<PathBuf> {
        match (given, &self.root) {
            (Some(g), Some(r)) if !same_path(g, r) => bail!(
                "--root {} differs from the device root recorded in the state dir ({}); \
                 one state dir manages one device",
                g.display(),
                r.display()
            ),
            (Some(g), _) => Ok(absolute(g)),
            (None, Some(r)) => Ok(r.clone()),
            (None, None) => bail!("no device root known yet: give --root ROOT"),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn same_path(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| absolute(p));
    canon(a) == canon(b)
}

fn manifest_path(state_dir: &Path, name: &str, version: &str) -> PathBuf {
    device_dir(state_dir).join("manifests").join(format!("{name}@{version}"))
}

fn body_path(root: &Path) -> PathBuf {
    let mut p = root.as_os_str().to_owned();
    p.push(".body");
    PathBuf::from(p)
}

/// Keeps the signed manifest of a layer about to be applied: the body first, then the root
/// (a root on disk always has its body beside it). Kept files that already hold this
/// manifest are not written again.
pub fn save_manifest(state_dir: &Path, sm: &SignedManifest) -> anyhow::Result<()> {
    let m = &sm.manifest;
    let p = manifest_path(state_dir, &m.name, &m.version);
    let bp = body_path(&p);
    std::fs::create_dir_all(p.parent().expect("has a parent"))?;
    let root = sm.to_bytes();
    let same_root = std::fs::read(&p).is_ok_and(|b| b == root);
    let same_body = std::fs::metadata(&bp).is_ok_and(|md| md.len() == sm.root.body_len);
    if same_root && same_body {
        return Ok(());
    }
    write_durably(&bp, &m.encode_body()).with_context(|| format!("writing {}", bp.display()))?;
    write_durably(&p, &root).with_context(|| format!("writing {}", p.display()))
}

/// A layer's manifest kept by an earlier apply, verified against the trusted key and the
/// root's body chunk ids; None when not kept.
pub fn load_manifest(
    state_dir: &Path,
    identity: &NodeIdentity,
    name: &str,
    version: &str,
) -> anyhow::Result<Option<SignedManifest>> {
    let p = manifest_path(state_dir, name, version);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    let root = SignedRoot::open(&bytes, identity.trust().manifest_key())
        .with_context(|| format!("kept manifest {}", p.display()))?;
    root.check_request(name, Some(version))
        .with_context(|| format!("kept manifest {}", p.display()))?;
    let bp = body_path(&p);
    let body = std::fs::read(&bp)
        .with_context(|| format!("reading the body of kept manifest {}", bp.display()))?;
    let sm = root
        .assemble_body(&body)
        .with_context(|| format!("kept manifest body {}", bp.display()))?;
    Ok(Some(sm))
}

/// The manifests of the layers in `state`, base first.
pub fn applied_manifests(
    state_dir: &Path,
    identity: &NodeIdentity,
    state: &DeviceState,
) -> anyhow::Result<Vec<LayerManifest>> {
    state
        .layers
        .iter()
        .map(|l| {
            load_manifest(state_dir, identity, &l.name, &l.version)?
                .map(|sm| sm.manifest)
                .with_context(|| {
                    format!(
                        "the manifest of applied layer {} is missing from the state dir",
                        l.label()
                    )
                })
        })
        .collect()
}

/// Exclusive use of one state dir's device (flock on `STATE_DIR/device/lock`, released when
/// dropped or when the process dies).
pub struct DeviceLock {
    _file: std::fs::File,
}

impl DeviceLock {
    pub fn acquire(state_dir: &Path) -> anyhow::Result<DeviceLock> {
        let dir = device_dir(state_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let p = dir.join("lock");
        let f = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .with_context(|| format!("opening {}", p.display()))?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DeviceLock { _file: f }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => bail!(
                "another oasis-endpoint is working on this device (state dir {} is locked)",
                state_dir.display()
            ),
            Err(e) => {
                Err(std::io::Error::from(e)).with_context(|| format!("locking {}", p.display()))
            }
        }
    }
}

/// The endpoint's chunk store (`STATE_DIR/cache`).
pub fn open_store(state_dir: &Path) -> anyhow::Result<ChunkStore> {
    let dir = state_dir.join("cache");
    ChunkStore::open(&dir).map_err(|e| {
        if e.is_locked() {
            anyhow::anyhow!("the chunk store {} is in use by another process", dir.display())
        } else {
            anyhow::Error::new(e).context(format!("opening the chunk store {}", dir.display()))
        }
    })
}

/// The enrolled endpoint's name, for snapshots (empty when the identity cannot be read).
pub fn device_name(identity: Option<&NodeIdentity>) -> String {
    identity.map(|i| i.info().name.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oasis_core::manifest::{Entry, LayerKind, Node, MANIFEST_FORMAT};
    use oasis_core::pki::{Role, SeedAuthority};

    /// A manifest of a million entries (a whole OS image) is kept and read back whole: the root
    /// and the body as files of their own, the body checked against the root on reading.
    #[test]
    fn a_million_entry_manifest_is_saved_and_loaded() {
        let d = tempfile::tempdir().unwrap();
        let authority = SeedAuthority::init(&d.path().join("seed")).unwrap();
        let state = d.path().join("state");
        authority.enroll(Role::Endpoint, "ep", None, &state, false).unwrap();
        let identity = NodeIdentity::load(&state).unwrap();
        let t = std::time::Instant::now();
        let mut entries = Vec::with_capacity(1_000_001);
        entries.push(Entry::new("usr", 0o755, Node::Dir));
        for i in 0..1_000_000u32 {
            let path = format!("usr/f{i:07}");
            entries.push(Entry::new(path, 0o644, Node::File { size: 0, chunks: vec![] }));
        }
        let m = LayerManifest {
            format: MANIFEST_FORMAT,
            name: "base".into(),
            version: "1".into(),
            kind: LayerKind::Base,
            chunking: Default::default(),
            created: 1,
            entries,
        };
        let (sm, _) = m.sign(authority.signing_key());
        drop(m);
        save_manifest(&state, &sm).unwrap();
        let root = manifest_path(&state, "base", "1");
        let root_len = std::fs::metadata(&root).unwrap().len();
        let body_len = std::fs::metadata(body_path(&root)).unwrap().len();
        assert!(root_len < 4 << 20 && body_len > 10 << 20, "root {root_len}, body {body_len}");
        let loaded = load_manifest(&state, &identity, "base", "1").unwrap().unwrap();
        assert_eq!(loaded.digest, sm.digest);
        assert_eq!(loaded.manifest.entries.len(), 1_000_001);
        eprintln!("1M entries built, saved and loaded in {:?}", t.elapsed());

        // A damaged body is refused, naming the file.
        let mut body = std::fs::read(body_path(&root)).unwrap();
        let mid = body.len() / 2;
        body[mid] ^= 1;
        std::fs::write(body_path(&root), &body).unwrap();
        let err = load_manifest(&state, &identity, "base", "1").unwrap_err();
        assert!(format!("{err:#}").contains("base@1.body"), "{err:#}");
        assert!(load_manifest(&state, &identity, "base", "2").unwrap().is_none());
    }
}
