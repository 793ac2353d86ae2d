//! The device transaction: how apply, revert and restore-file change a root so that a crash
//! (kill -9, power loss) at any moment leaves it wholly old or wholly new.
//!
//! 1. `STATE_DIR/device/pending` names the staging directory, then every new file and symlink
//!    is written into `ROOT/.oasis-stage.<txid>/` (same filesystem, so renames are atomic).
//!    The root itself is untouched; a crash here rolls back: the staging directory is deleted.
//! 2. The staged data is synced (syncfs), then the journal (`STATE_DIR/device/journal`: every
//!    operation, the device state after, stamps of the new files) is written durably. Writing
//!    the journal is the commit point.
//! 3. The operations run. Each is idempotent given the ones before it (removals say what kind
//!    of entry they remove, placements skip staged files already moved), so a crash here rolls
//!    forward: recovery runs the whole list again.
//! 4. Sync, write the new device state, delete the staging directory, the journal, `pending`.
//!
//! Every command that touches a device runs [`recover`] first.

use crate::snapshot::write_durably;
use crate::take::{Stamp, StampCache, Stamped};
use anyhow::Context;
use oasis_core::manifest::ChunkRef;
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
    /// Set permission bits (directories and files, never through a symlink).
    Chmod { path: String, mode: u32 },
    /// Set the modification time (files and directories).
    Touch { path: String, mtime_ns: i64 },
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
    pub dir: PathBuf,
    state_dir: PathBuf,
    done: bool,
}

impl Stage {
    pub fn begin(state_dir: &Path, root: &Path) -> anyhow::Result<Stage> {
        let txid = format!(
            "{}-{:08x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rand::random::<u32>()
        );
        let name = format!("{STAGE_PREFIX}{txid}");
        let dir = root.join(&name);
        std::fs::create_dir_all(device_dir(state_dir))?;
        // Recorded before the directory exists, so a crash never leaves an unknown one behind.
        write_durably(&pending_path(state_dir), dir.to_string_lossy().as_bytes())
            .context("recording the staging directory")?;
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating the staging directory {}", dir.display()))?;
        Ok(Stage {
            root: root.to_path_buf(),
            name,
            dir,
            state_dir: state_dir.to_path_buf(),
            done: false,
        })
    }

    pub fn path(&self, staged: u32) -> PathBuf {
        self.dir.join(staged.to_string())
    }

    /// Makes the staged data durable, writes the journal (the commit point) and runs it.
    /// Returns the seconds spent making the staged data durable.
    pub fn commit(
        mut self,
        ops: Vec<Op>,
        state_after: Option<Vec<u8>>,
        what: &str,
    ) -> anyhow::Result<f64> {
        let t = std::time::Instant::now();
        sync_fs(&self.dir).context("syncing the staged files")?;
        let synced = t.elapsed().as_secs_f64();
        let journal = Journal {
            root: self.root.clone(),
            stage: self.name.clone(),
            ops,
            state_after,
            what: what.to_string(),
        };
        let bytes = postcard::to_stdvec(&journal)?;
        write_durably(&journal_path(&self.state_dir), &bytes).context("writing the journal")?;
        self.done = true;
        crash_point("committed");
        roll_forward(&self.state_dir, &journal)?;
        Ok(synced)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
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
            let journal: Journal = postcard::from_bytes(&bytes).with_context(|| {
                format!("the journal {} is unreadable; the device needs attention", jp.display())
            })?;
            tracing::warn!(what = %journal.what, "finishing an interrupted transaction");
            roll_forward(state_dir, &journal)?;
            Ok(Some(format!("finished the interrupted {}", journal.what)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pp = pending_path(state_dir);
            match std::fs::read_to_string(&pp) {
                Ok(stage) => {
                    let stage = PathBuf::from(stage.trim());
                    let is_stage = stage
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(STAGE_PREFIX));
                    if is_stage {
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

fn roll_forward(state_dir: &Path, j: &Journal) -> anyhow::Result<()> {
    let stage = j.root.join(&j.stage);
    let mut placed: Vec<(String, Vec<ChunkRef>)> = Vec::new();
    for (i, op) in j.ops.iter().enumerate() {
        run_op(&j.root, &stage, op).with_context(|| format!("{} ({op:?})", j.what))?;
        if let Op::Place { path, chunks: Some(c), .. } = op {
            placed.push((path.clone(), c.clone()));
        }
        if i == j.ops.len() / 2 {
            crash_point("half-done");
        }
    }
    sync_fs(&j.root).context("syncing the device root")?;
    if let Some(state) = &j.state_after {
        write_durably(&device_dir(state_dir).join("state.json"), state)
            .context("writing the device state")?;
    }
    // The files just placed are known: their stamps spare the next snapshot a rehash.
    let mut stamps = StampCache::load(state_dir);
    for (path, chunks) in placed {
        if let Ok(md) = std::fs::symlink_metadata(j.root.join(&path)) {
            stamps.files.insert(path, Stamped { stamp: Stamp::of(&md), chunks });
        }
    }
    if let Err(e) = stamps.save(state_dir) {
        tracing::warn!(error = %e, "cannot save the stamp cache");
    }
    match std::fs::remove_dir_all(&stage) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %stage.display(), error = %e, "cannot remove the staging directory")
        }
    }
    std::fs::remove_file(journal_path(state_dir)).context("removing the journal")?;
    let _ = std::fs::remove_file(pending_path(state_dir));
    if let Ok(d) = std::fs::File::open(device_dir(state_dir)) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn not_found_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn run_op(root: &Path, stage: &Path, op: &Op) -> std::io::Result<()> {
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
            match std::fs::rename(stage.join(staged.to_string()), root.join(path)) {
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
