//! Writing staged files and symlinks from chunks in the endpoint's store (for apply, revert
//! and restore-file).
//!
//! Every entry is created first; then the file data is written in items of about
//! [`ITEM_BYTES`] (a big file is several items, so both cores write it) on the rayon pool,
//! each chunk read into a per-thread buffer, checked by the store and written at its offset;
//! after each item the kernel is asked to start writing it to disk, so the disk works while
//! the next items are read, and the commit's `syncfs` waits for little. Then every staged file
//! and symlink gets its metadata ([`oasis_core::fsmeta::apply_meta`]: owner, mode, attributes,
//! mtime, in that order, after the data, since writing clears set-id bits), and last the hard
//! links are made, to a staged file or to a file in place.

use crate::journal::Stage;
use crate::plan::{LinkFrom, Staged};
use anyhow::{bail, Context};
use indicatif::ProgressBar;
use oasis_core::compress::Encoding;
use oasis_core::fsmeta::{self, MetaReport, Writer};
use oasis_core::manifest::{ChunkRef, Node};
use oasis_core::store::ChunkStore;
use rayon::prelude::*;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Plain bytes per work item (a file's run of consecutive chunks).
const ITEM_BYTES: u64 = 8 << 20;

/// Written items whose writeback hint (and descriptor) may wait for the hint thread.
const HINT_QUEUE: usize = 32;

thread_local! {
    // Stored bytes of the chunk being written: reused, so no allocation or zeroing per chunk.
    static STORED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A chunk the store lacks, or had and dropped because its bytes on disk no longer matched
/// (nothing of it was written). Fetching it again and retrying heals the store.
#[derive(Debug, thiserror::Error)]
#[error(
    "chunk {id} of {path} is not in the endpoint's chunk store (damaged or evicted); nothing \
     was changed"
)]
pub struct ChunkGone {
    pub id: oasis_core::ChunkId,
    pub path: String,
}

/// A run of consecutive chunks of one staged file.
struct Item<'a> {
    file: usize,
    chunks: &'a [ChunkRef],
    offset: u64,
}

/// Writes every staged entry into the stage (see [`Stage::path`]), with its metadata. Fails
/// naming the first file whose chunk is not in the store (nothing is moved into the root before
/// the whole stage is written). Returns what of the metadata could not be applied.
pub fn write_staged(
    stage: &Stage,
    staged: &[Staged],
    store: &ChunkStore,
    progress: &ProgressBar,
) -> anyhow::Result<MetaReport> {
    staged.par_iter().try_for_each(|s| create(stage, s))?;
    let mut items = Vec::new();
    for (i, s) in staged.iter().enumerate() {
        if let Node::File { chunks, .. } = &s.node {
            let (mut start, mut offset, mut bytes) = (0, 0u64, 0u64);
            for (k, c) in chunks.iter().enumerate() {
                bytes += c.len as u64;
                if bytes >= ITEM_BYTES || k + 1 == chunks.len() {
                    items.push(Item { file: i, chunks: &chunks[start..=k], offset });
                    (start, offset, bytes) = (k + 1, offset + bytes, 0);
                }
            }
        }
    }
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // The writeback hints go to a thread of their own: the call can wait for the disk's
        // queue, and the writers should not. Each hint owns its item's descriptor, so the
        // channel is bounded: a stage of a million files never holds more than a few dozen
        // descriptors open, and a hint that finds the queue full is dropped (it is only a hint).
        let (tx, rx) = std::sync::mpsc::sync_channel::<(File, u64, u64)>(HINT_QUEUE);
        let hints = std::thread::Builder::new()
            .name("oasis-writeback".into())
            .spawn_scoped(scope, move || {
                for (f, offset, len) in rx {
                    start_writeback(&f, offset, len);
                }
            })
            .context("starting the writeback thread")?;
        let written = items.par_iter().try_for_each_with(tx, |tx, it| {
            let s = &staged[it.file];
            let dest = stage.path(s.n, &s.path);
            // Every item of a file may come first; none truncates, and the stage is fresh.
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&dest)
                .with_context(|| format!("opening staged {} ({})", s.path, dest.display()))?;
            let len = write_item(s, &f, it, store, progress)?;
            let _ = tx.try_send((f, it.offset, len));
            anyhow::Ok(())
        });
        let _ = hints.join();
        written
    })?;
    // Metadata after the data; hard links share their file's, so they are made afterwards.
    let who = Writer::current();
    let report = staged
        .par_iter()
        .filter(|s| s.link.is_none())
        .map(|s| -> anyhow::Result<MetaReport> {
            let mut r = MetaReport::default();
            let is_symlink = matches!(s.node, Node::Symlink { .. });
            fsmeta::apply_meta(&stage.path(s.n, &s.path), is_symlink, s.mode, &s.meta, who, &mut r)
                .with_context(|| format!("setting the metadata of staged {}", s.path))?;
            Ok(r)
        })
        .try_reduce(MetaReport::default, |mut a, b| {
            a.add(&b);
            Ok(a)
        })?;
    for s in staged {
        let Some(link) = &s.link else { continue };
        let from = match link {
            LinkFrom::Staged(n) => {
                let t = staged.get(*n as usize).with_context(|| {
                    format!("internal error: {} links to staged entry {n}, which is not", s.path)
                })?;
                stage.path(t.n, &t.path)
            }
            LinkFrom::Root(p) => stage.root.join(p),
        };
        let dest = stage.path(s.n, &s.path);
        std::fs::hard_link(&from, &dest)
            .with_context(|| format!("staging {} as a hard link to {}", s.path, from.display()))?;
    }
    Ok(report)
}

/// Creates a staged symlink complete and an empty file; a file with data is created by its
/// items, each opening it only while writing, so the stage's size is not bounded by the
/// process's descriptor limit. Hard links are made once their file is complete.
fn create(stage: &Stage, s: &Staged) -> anyhow::Result<()> {
    let dest = stage.path(s.n, &s.path);
    match &s.node {
        Node::Symlink { target } => std::os::unix::fs::symlink(target, &dest)
            .with_context(|| format!("staging symlink {}", s.path)),
        Node::File { chunks, .. } if !chunks.is_empty() => Ok(()),
        Node::File { .. } => File::create(&dest)
            .map(drop)
            .with_context(|| format!("staging {} as {}", s.path, dest.display())),
        Node::Hardlink { .. } => Ok(()),
        Node::Dir => bail!("internal error: a directory was staged ({})", s.path),
    }
}

/// Writes one item; returns its length.
fn write_item(
    s: &Staged,
    f: &File,
    it: &Item<'_>,
    store: &ChunkStore,
    progress: &ProgressBar,
) -> anyhow::Result<u64> {
    STORED.with(|buf| -> anyhow::Result<u64> {
        let buf = &mut *buf.borrow_mut();
        let mut offset = it.offset;
        for c in it.chunks {
            // The store checks the stored bytes against the digest recorded when they were put
            // (verified then); a raw chunk's digest is its id, so a raw chunk is checked
            // against the id itself here, and a zstd one is decoded without rehashing.
            let got = store
                .get_into(&c.id, buf)
                .with_context(|| format!("reading chunk {} of {}", c.id, s.path))?;
            let Some((encoding, plain_len)) = got else {
                return Err(ChunkGone { id: c.id, path: s.path.clone() }.into());
            };
            let decoded;
            let plain: &[u8] = match encoding {
                Encoding::Raw => buf,
                Encoding::Zstd => {
                    decoded = oasis_core::compress::decompress_zstd(buf, plain_len as usize)
                        .with_context(|| format!("decoding chunk {} of {}", c.id, s.path))?;
                    &decoded
                }
            };
            if plain.len() != c.len as usize {
                bail!(
                    "chunk {} of {}: the store holds {} bytes, the manifest says {}; nothing \
                     was changed",
                    c.id,
                    s.path,
                    plain.len(),
                    c.len
                );
            }
            f.write_all_at(plain, offset).with_context(|| format!("writing staged {}", s.path))?;
            offset += c.len as u64;
            progress.inc(c.len as u64);
        }
        Ok(offset - it.offset)
    })
}

/// Asks the kernel to start writing a just-written range to disk, without waiting for it.
/// Only a hint: durability still comes from the commit's `syncfs`.
fn start_writeback(f: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range takes no pointers, only a descriptor that `f` keeps open for
    // the duration of the call and two integers; it cannot touch our memory.
    let r = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range (a hint) failed");
    }
}
