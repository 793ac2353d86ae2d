//! The device transaction: how apply, revert and restore-file change a root so that a crash
//! (kill -9, power loss) at any moment leaves it wholly old or wholly new.
//!
//! 1. `STATE_DIR/device/pending` names the staging directories, then every new file, symlink
//!    and hard link is written, with its owner, mode, attributes and mtime, into
//!    `ROOT/.oasis-stage.<txid>/` (same filesystem, so renames are atomic; a path below an
//!    included mount point of another filesystem is staged in `MOUNT/.oasis-stage.<txid>/`).
//!    The root itself is untouched; a crash here rolls back: the staging directories are deleted.
//! 2. The staged data is synced (syncfs), then the journal (`STATE_DIR/device/journal`: every
//!    operation, the device state after, stamps of the new files) is written durably. Writing
//!    the journal is the commit point.
//! 3. The operations run. Each is idempotent given the ones before it (removals say what kind
//!    of entry they remove, placements skip staged files already moved), so a crash here rolls
//!    forward: recovery runs the whole list again.
//! 4. Sync, write the new device state, record the stamps of the files written (taken now,
//!    after their owner, mode and time were set, so the next snapshot does not read them
//!    again), delete the staging directories, the journal, `pending`.
//!
//! Every command that touches a device runs [`recover`] first.

use crate::snapshot::write_durably;
use crate::take::{Stamp, StampCache, Stamped};
use anyhow::Context;
use oasis_core::fsmeta::{MetaReport, Writer};
use oasis_core::manifest::{ChunkRef, Meta};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Name prefix of staging directories inside a device root.
pub const STAGE_PREFIX: &str = ".oasis-stage.";

/// One step of a transaction. Paths are relative to the root; nothing follows a symlink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Remove `path` with everything below it, if it is a directory.
    RemoveIfDir(String),
    /// Remove `path` if it exists and is not a directory.
    RemoveIfNotDir(String),
    /// Create the directory unless it exists.
    Mkdir(String),
    /// Move staged entry `staged` to `path` (atomic replace); `chunks` (files only) seed the
    /// stamp cache so the next snapshot does not rehash the file.
    Place { staged: u32, path: String, chunks: Option<Vec<ChunkRef>> },
    /// Remove the directory if it is empty (a dropped directory that holds user files stays).
    RmdirIfEmpty(String),
    /// Set permission bits (directories and files, never through a symlink). Not planned any
    /// more; still run when recovering a journal of an earlier build.
    Chmod { path: String, mode: u32 },
    /// Set the modification time (files and directories). As `Chmod`.
    Touch { path: String, mtime_ns: i64 },
    /// Give an existing entry its whole metadata (owner, mode, extended attributes, mtime;
    /// never through a symlink); `chunks` (files only) seed the stamp cache as for `Place`.
    SetMeta { path: String, mode: u32, meta: Meta, chunks: Option<Vec<ChunkRef>> },
}

/// A committed transaction, as written to the journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Journal {
    pub root: PathBuf,
    /// Staging directory name inside the root.
    pub stage: String,
    pub ops: Vec<Op>,
    /// `device/state.json` content after the transaction (None: unchanged).
    pub state_after: Option<Vec<u8>>,
    /// What it was for, for logs.
    pub what: String,
    /// Included mount points (relative to the root) with a staging directory of their own.
    pub mounts: Vec<String>,
}

/// A journal as written by a build without per-filesystem staging.
#[derive(Deserialize)]
struct JournalV1 {
    root: PathBuf,
    stage: String,
    ops: Vec<Op>,
    state_after: Option<Vec<u8>>,
    what: String,
}

impl Journal {
    fn decode(bytes: &[u8]) -> Result<Journal, postcard::Error> {
        postcard::from_bytes(bytes).or_else(|e| {
            let old: JournalV1 = postcard::from_bytes(bytes).map_err(|_| e)?;
            Ok(Journal {
                root: old.root,
                stage: old.stage,
                ops: old.ops,
                state_after: old.state_after,
                what: old.what,
                mounts: Vec::new(),
            })
        })
    }

    /// The staging directory of the filesystem `path` lies on.
    fn stage_for(&self, path: &str) -> PathBuf {
        stage_dir_for(&self.root, &self.stage, &self.mounts, path)
    }

    fn stage_dirs(&self) -> Vec<PathBuf> {
        stage_dirs(&self.root, &self.stage, &self.mounts)
    }
}

/// The staging directory for `path`: the one in the deepest included mount point above it,
/// else the root's.
fn stage_dir_for(root: &Path, stage: &str, mounts: &[String], path: &str) -> PathBuf {
    let mount = mounts
        .iter()
        .filter(|m| {
            path.len() > m.len() && path.starts_with(m.as_str()) && path.as_bytes()[m.len()] == b'/'
        })
        .max_by_key(|m| m.len());
    match mount {
        Some(m) => root.join(m).join(stage),
        None => root.join(stage),
    }
}

fn stage_dirs(root: &Path, stage: &str, mounts: &[String]) -> Vec<PathBuf> {
    std::iter::once(root.join(stage))
        .chain(mounts.iter().map(|m| root.join(m).join(stage)))
        .collect()
}

pub fn device_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("device")
}

fn journal_path(state_dir: &Path) -> PathBuf {
    device_dir(state_dir).join("journal")
}

fn pending_path(state_dir: &Path) -> PathBuf {
    device_dir(state_dir).join("pending")
}

/// A staging area in a root: created by [`Stage::begin`], filled by the caller, then either
/// [`Stage::commit`]ted or dropped (which deletes it).
pub struct Stage {
    pub root: PathBuf,
    pub name: String,
    /// The root's staging directory.
    pub dir: PathBuf,
    /// Included mount points with a staging directory of their own.
    mounts: Vec<String>,
    state_dir: PathBuf,
    done: bool,
}

impl Stage {
    /// Creates the staging directories: one in the root, one in each of `mounts` (included
    /// mount points of other filesystems, relative to the root) that is a directory now.
    pub fn begin(state_dir: &Path, root: &Path, mounts: &[String]) -> anyhow::Result<Stage> {
        let txid = format!(
            "{}-{:08x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rand::random::<u32>()
        );
        let name = format!("{STAGE_PREFIX}{txid}");
        let mounts: Vec<String> = mounts
            .iter()
            .filter(|m| std::fs::symlink_metadata(root.join(m)).is_ok_and(|md| md.is_dir()))
            .cloned()
            .collect();
        let dirs = stage_dirs(root, &name, &mounts);
        std::fs::create_dir_all(device_dir(state_dir))?;
        // Recorded before the directories exist, so a crash never leaves an unknown one behind.
        let listed: Vec<String> = dirs.iter().map(|d| d.to_string_lossy().into_owned()).collect();
        write_durably(&pending_path(state_dir), listed.join("\n").as_bytes())
            .context("recording the staging directories")?;
        // Dropped on an error below: removes whichever of the directories were made.
        let stage = Stage {
            root: root.to_path_buf(),
            name,
            dir: dirs[0].clone(),
            mounts,
            state_dir: state_dir.to_path_buf(),
            done: false,
        };
        for d in &dirs {
            std::fs::create_dir(d)
                .with_context(|| format!("creating the staging directory {}", d.display()))?;
        }
        Ok(stage)
    }

    /// Where staged entry `staged` (to be placed at `path`) is written.
    pub fn path(&self, staged: u32, path: &str) -> PathBuf {
        stage_dir_for(&self.root, &self.name, &self.mounts, path).join(staged.to_string())
    }

    /// Makes the staged data durable, writes the journal (the commit point) and runs it.
    /// Returns the seconds spent making the staged data durable, and what of the metadata the
    /// operations could not apply.
    pub fn commit(
        mut self,
        ops: Vec<Op>,
        state_after: Option<Vec<u8>>,
        what: &str,
    ) -> anyhow::Result<(f64, MetaReport)> {
        let t = std::time::Instant::now();
        for d in stage_dirs(&self.root, &self.name, &self.mounts) {
            sync_fs(&d).with_context(|| format!("syncing the staged files in {}", d.display()))?;
        }
        let synced = t.elapsed().as_secs_f64();
        let journal = Journal {
            root: self.root.clone(),
            stage: self.name.clone(),
            ops,
            state_after,
            what: what.to_string(),
            mounts: self.mounts.clone(),
        };
        let bytes = postcard::to_stdvec(&journal)?;
        write_durably(&journal_path(&self.state_dir), &bytes).context("writing the journal")?;
        self.done = true;
        crash_point("committed");
        let report = roll_forward(&self.state_dir, &journal)?;
        Ok((synced, report))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.done {
            for d in stage_dirs(&self.root, &self.name, &self.mounts) {
                let _ = std::fs::remove_dir_all(d);
            }
            let _ = std::fs::remove_file(pending_path(&self.state_dir));
        }
    }
}

/// Test hook: with `OASIS_CRASH_AT=<name>` the process aborts at that point (like kill -9).
pub fn crash_point(name: &str) {
    if std::env::var("OASIS_CRASH_AT").is_ok_and(|v| v == name) {
        std::process::abort();
    }
}

/// Finishes or rolls back an interrupted transaction. Returns what was done, if anything.
pub fn recover(state_dir: &Path) -> anyhow::Result<Option<String>> {
    let jp = journal_path(state_dir);
    match std::fs::read(&jp) {
        Ok(bytes) => {
            let journal = Journal::decode(&bytes).with_context(|| {
                format!("the journal {} is unreadable; the device needs attention", jp.display())
            })?;
            tracing::warn!(what = %journal.what, "finishing an interrupted transaction");
            let report = roll_forward(state_dir, &journal)?;
            if let Some(s) = report.summary() {
                tracing::warn!(what = %journal.what, "metadata {s}");
            }
            Ok(Some(format!("finished the interrupted {}", journal.what)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pp = pending_path(state_dir);
            match std::fs::read_to_string(&pp) {
                Ok(stages) => {
                    for line in stages.lines().filter(|l| !l.trim().is_empty()) {
                        let stage = PathBuf::from(line.trim());
                        let is_stage = stage
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(STAGE_PREFIX));
                        if !is_stage {
                            continue;
                        }
                        match std::fs::remove_dir_all(&stage) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(e).with_context(|| {
                                    format!("removing the staging directory {}", stage.display())
                                })
                            }
                        }
                    }
                    std::fs::remove_file(&pp)?;
                    tracing::warn!("rolled back an interrupted transaction (it had not committed)");
                    Ok(Some("rolled back an interrupted transaction".into()))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).context("reading the pending marker"),
            }
        }
        Err(e) => Err(e).with_context(|| format!("reading the journal {}", jp.display())),
    }
}

fn roll_forward(state_dir: &Path, j: &Journal) -> anyhow::Result<MetaReport> {
    let who = Writer::current();
    let mut report = MetaReport::default();
    let mut written: Vec<(String, Vec<ChunkRef>)> = Vec::new();
    for (i, op) in j.ops.iter().enumerate() {
        run_op(j, op, who, &mut report).with_context(|| format!("{} ({op:?})", j.what))?;
        match op {
            Op::Place { path, chunks: Some(c), .. } | Op::SetMeta { path, chunks: Some(c), .. } => {
                written.push((path.clone(), c.clone()))
            }
            _ => {}
        }
        if i == j.ops.len() / 2 {
            crash_point("half-done");
        }
    }
    sync_fs(&j.root).context("syncing the device root")?;
    for m in &j.mounts {
        sync_fs(&j.root.join(m))
            .with_context(|| format!("syncing {}", j.root.join(m).display()))?;
    }
    if let Some(state) = &j.state_after {
        write_durably(&device_dir(state_dir).join("state.json"), state)
            .context("writing the device state")?;
    }
    // The files just written are known: their stamps, taken now that every owner, mode and
    // time is set, spare the next snapshot a rehash.
    let mut stamps = StampCache::load(state_dir);
    for (path, chunks) in written {
        if let Ok(md) = std::fs::symlink_metadata(j.root.join(&path)) {
            stamps.files.insert(path, Stamped { stamp: Stamp::of(&md), chunks });
        }
    }
    if let Err(e) = stamps.save(state_dir) {
        tracing::warn!(error = %e, "cannot save the stamp cache");
    }
    for stage in j.stage_dirs() {
        match std::fs::remove_dir_all(&stage) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %stage.display(), error = %e, "cannot remove the staging directory")
            }
        }
    }
    std::fs::remove_file(journal_path(state_dir)).context("removing the journal")?;
    let _ = std::fs::remove_file(pending_path(state_dir));
    if let Ok(d) = std::fs::File::open(device_dir(state_dir)) {
        let _ = d.sync_all();
    }
    Ok(report)
}

fn not_found_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn run_op(j: &Journal, op: &Op, who: Writer, report: &mut MetaReport) -> std::io::Result<()> {
    let root = &j.root;
    match op {
        Op::RemoveIfDir(p) => match std::fs::symlink_metadata(root.join(p)) {
            Ok(md) if md.is_dir() => not_found_ok(std::fs::remove_dir_all(root.join(p))),
            _ => Ok(()),
        },
        Op::RemoveIfNotDir(p) => match std::fs::symlink_metadata(root.join(p)) {
            Ok(md) if !md.is_dir() => not_found_ok(std::fs::remove_file(root.join(p))),
            _ => Ok(()),
        },
        Op::Mkdir(p) => match std::fs::create_dir(root.join(p)) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        },
        Op::Place { staged, path, .. } => {
            match std::fs::rename(j.stage_for(path).join(staged.to_string()), root.join(path)) {
                // Moved before the crash.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
        Op::RmdirIfEmpty(p) => match std::fs::remove_dir(root.join(p)) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
                ) || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        },
        Op::Chmod { path, mode } => match std::fs::symlink_metadata(root.join(path)) {
            Ok(md) if !md.file_type().is_symlink() => {
                std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(*mode))
            }
            _ => Ok(()),
        },
        Op::Touch { path, mtime_ns } => match std::fs::symlink_metadata(root.join(path)) {
            Ok(md) if !md.file_type().is_symlink() => {
                let f = std::fs::File::options().read(true).open(root.join(path))?;
                f.set_modified(system_time(*mtime_ns))
            }
            _ => Ok(()),
        },
        Op::SetMeta { path, mode, meta, .. } => match std::fs::symlink_metadata(root.join(path)) {
            Ok(md) => crate::meta::restore_existing(
                &root.join(path),
                md.file_type().is_symlink(),
                *mode,
                meta,
                who,
                report,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
    }
}

pub fn system_time(ns: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// Flushes the filesystem holding `path` (one call instead of an fsync per file).
pub fn sync_fs(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    rustix::fs::syncfs(&f).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_of_the_earlier_build_is_still_read() {
        #[derive(Serialize)]
        struct Earlier {
            root: PathBuf,
            stage: String,
            ops: Vec<Op>,
            state_after: Option<Vec<u8>>,
            what: String,
        }
        let ops = vec![Op::Chmod { path: "etc".into(), mode: 0o755 }, Op::Mkdir("x".into())];
        let bytes = postcard::to_stdvec(&Earlier {
            root: "/r".into(),
            stage: ".oasis-stage.1".into(),
            ops: ops.clone(),
            state_after: None,
            what: "apply".into(),
        })
        .unwrap();
        let j = Journal::decode(&bytes).unwrap();
        assert_eq!((&j.ops, j.mounts.len()), (&ops, 0));
        assert_eq!(j.stage_for("x/y"), PathBuf::from("/r/.oasis-stage.1"));
    }

    #[test]
    fn paths_below_an_included_mount_are_staged_on_its_filesystem() {
        let mounts = vec!["home".to_string(), "home/big".to_string()];
        let at = |p: &str| stage_dir_for(Path::new("/r"), ".s", &mounts, p);
        assert_eq!(at("home/u/a"), PathBuf::from("/r/home/.s"));
        assert_eq!(at("home/big/x"), PathBuf::from("/r/home/big/.s"));
        assert_eq!(at("homework/x"), PathBuf::from("/r/.s"));
        assert_eq!(at("home"), PathBuf::from("/r/.s"), "the mount point itself is the parent's");
    }
}
