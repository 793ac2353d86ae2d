//! `revert SNAPSHOT` (the whole device back to a snapshot: every path, mode, owner, extended
//! attribute, symlink, hard link and time, and the layers applied then) and `restore-file PATH --from SNAPSHOT` (one file or
//! directory back, nothing else touched). Both snapshot the device first, so they can be
//! undone the same way, and change it through the journal.

use crate::device::DeviceState;
use crate::session::{Changes, Session};
use crate::snapshot::{SnapEntry, Snapshot, SnapshotDir};
use anyhow::{bail, Context};
use oasis_core::manifest::{Entry, Node};
use std::collections::HashSet;
use std::path::Path;

#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreReport {
    /// The snapshot restored from.
    pub from: u64,
    /// What was restored ("" = the whole device).
    pub path: String,
    /// The snapshot taken before (undo with `revert` to it).
    pub snapshot_before: u64,
    pub layers: Vec<String>,
    #[serde(flatten)]
    pub changes: Changes,
    pub snapshots_pruned: Vec<u64>,
    pub recovered: Option<String>,
    pub seconds: f64,
}

/// Every chunk the snapshot's files need must be in the store before anything changes.
fn check_chunks<'a>(
    s: &Session,
    entries: impl Iterator<Item = &'a Entry>,
    id: u64,
) -> anyhow::Result<()> {
    for e in entries {
        if let Node::File { chunks, .. } = &e.node {
            for c in chunks {
                if !s.store.contains(&c.id)? {
                    bail!(
                        "snapshot {id} cannot be restored: chunk {} of {} is missing from the \
                         chunk store; nothing was changed",
                        c.id,
                        e.path
                    );
                }
            }
        }
    }
    Ok(())
}

pub use oasis_core::manifest::detach_hardlinks;

/// Makes the root exactly the snapshot's tree and the applied layers the snapshot's layers.
pub fn revert(s: &mut Session, arg: &str) -> anyhow::Result<RestoreReport> {
    let t0 = std::time::Instant::now();
    let dir = SnapshotDir::new(&s.state_dir);
    let id = dir.resolve(arg)?;
    let snap: Snapshot = dir.load(id)?;
    check_chunks(s, snap.entries.iter().map(|e| &e.entry), id)?;
    for l in &snap.layers {
        crate::device::load_manifest(&s.state_dir, &s.identity, &l.name, &l.version)?
            .with_context(|| {
                format!("snapshot {id} needs the manifest of {}, which is gone", l.label())
            })?;
    }
    let (current, before) = s.snapshot(&format!("before revert to {id}"), false, true)?;
    let targets: Vec<Entry> = snap.entries.iter().map(|e| e.entry.clone()).collect();
    let keep: HashSet<&str> = snap.entries.iter().map(|e| e.entry.path.as_str()).collect();
    let remove: Vec<String> = current
        .entries
        .iter()
        .filter(|e| !keep.contains(e.entry.path.as_str()))
        .map(|e| e.entry.path.clone())
        .collect();
    let state_after = DeviceState { layers: snap.layers.clone(), ..s.state.clone() };
    let changes =
        s.transact(&current, &targets, &remove, Some(state_after), &format!("revert to {id}"))?;
    let pruned = s.prune()?;
    Ok(RestoreReport {
        from: id,
        path: String::new(),
        snapshot_before: before.id,
        layers: snap.layers.iter().map(|l| l.label()).collect(),
        changes,
        snapshots_pruned: pruned.deleted,
        recovered: s.recovered.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// PATH as a snapshot path: relative to the root, or absolute inside it.
pub fn relative_path(root: &Path, path: &Path) -> anyhow::Result<String> {
    let rel = if path.is_absolute() {
        let root_c = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        // The path itself may be gone (that is why it is restored): canonicalize its parent.
        let parent = path.parent().unwrap_or(path);
        let parent_c = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        let full = match path.file_name() {
            Some(n) if parent != path => parent_c.join(n),
            _ => parent_c,
        };
        full.strip_prefix(&root_c)
            .or_else(|_| path.strip_prefix(root))
            .map(Path::to_path_buf)
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} is not inside the device root {}",
                    path.display(),
                    root.display()
                )
            })?
    } else {
        path.to_path_buf()
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(
                n.to_str().with_context(|| format!("{}: not UTF-8", path.display()))?.to_string(),
            ),
            std::path::Component::CurDir => {}
            _ => bail!("{}: use a path inside the device root without '..'", path.display()),
        }
    }
    if parts.is_empty() {
        bail!("restore-file needs a file or directory inside the root; use `revert` for the whole device");
    }
    Ok(parts.join("/"))
}

/// Brings back one file or directory (with everything in it) as it was in a snapshot. Files
/// created since inside a restored directory stay.
pub fn restore_file(s: &mut Session, path: &Path, arg: &str) -> anyhow::Result<RestoreReport> {
    let t0 = std::time::Instant::now();
    let rel = relative_path(&s.root, path)?;
    let dir = SnapshotDir::new(&s.state_dir);
    let id = dir.resolve(arg)?;
    let snap = dir.load(id)?;
    let sub: Vec<&SnapEntry> = snap.subtree(&rel).collect();
    if sub.is_empty() {
        bail!("{rel} is not in snapshot {id} (see `oasis-endpoint snapshots`)");
    }
    let mut sub: Vec<Entry> = sub.iter().map(|e| e.entry.clone()).collect();
    detach_hardlinks(&mut sub, |p| snap.get(p).map(|e| e.entry.clone()));
    check_chunks(s, sub.iter(), id)?;
    let (current, before) =
        s.snapshot(&format!("before restore-file {rel} from {id}"), false, true)?;
    // Parent directories the path needs, as they were (only created or fixed if not a
    // directory now; the others are left alone).
    let mut targets = Vec::new();
    let mut prefix = String::new();
    for part in rel.split('/').collect::<Vec<_>>().split_last().map(|(_, p)| p).unwrap_or(&[]) {
        prefix = if prefix.is_empty() { part.to_string() } else { format!("{prefix}/{part}") };
        if let Some(e) = snap.get(&prefix) {
            let ok_now = current.get(&prefix).is_some_and(|c| matches!(c.entry.node, Node::Dir));
            if !ok_now {
                targets.push(e.entry.clone());
            }
        }
    }
    targets.extend(sub);
    let changes =
        s.transact(&current, &targets, &[], None, &format!("restore-file {rel} from {id}"))?;
    let pruned = s.prune()?;
    Ok(RestoreReport {
        from: id,
        path: rel,
        snapshot_before: before.id,
        layers: s.state.layers.iter().map(|l| l.label()).collect(),
        changes,
        snapshots_pruned: pruned.deleted,
        recovered: s.recovered.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}
