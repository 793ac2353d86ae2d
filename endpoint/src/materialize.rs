//! Writing staged files and symlinks from chunks in the endpoint's store (for apply, revert
//! and restore-file). Files are written on the rayon pool; each gets its mode and, when asked,
//! its modification time before it is moved into place.

use crate::plan::Staged;
use anyhow::{bail, Context};
use bytes::Bytes;
use indicatif::ProgressBar;
use oasis_core::compress::Encoding;
use oasis_core::manifest::Node;
use oasis_core::store::ChunkStore;
use oasis_core::ChunkId;
use rayon::prelude::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A chunk's plain bytes from the store. `get` checks the stored bytes against the digest
/// recorded when they were put (verified then), so a zstd chunk is decoded without rehashing.
pub fn chunk_bytes(store: &ChunkStore, id: &ChunkId) -> std::io::Result<Option<Bytes>> {
    let Some(c) = store.get(id).map_err(std::io::Error::other)? else { return Ok(None) };
    match c.encoding {
        Encoding::Raw => Ok(Some(c.data)),
        Encoding::Zstd => oasis_core::compress::decompress_zstd(&c.data, c.plain_len as usize)
            .map(|v| Some(Bytes::from(v))),
    }
}

/// Writes every staged entry as `dir/<n>`. Fails naming the first file whose chunk is not in
/// the store (nothing is moved into the root before the whole stage is written).
pub fn write_staged(
    dir: &Path,
    staged: &[Staged],
    store: &ChunkStore,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    staged.par_iter().try_for_each(|s| write_one(dir, s, store, progress))
}

fn write_one(
    dir: &Path,
    s: &Staged,
    store: &ChunkStore,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    let dest = dir.join(s.n.to_string());
    match &s.node {
        Node::Symlink { target } => std::os::unix::fs::symlink(target, &dest)
            .with_context(|| format!("staging symlink {}", s.path))?,
        Node::File { chunks, .. } => {
            let f = std::fs::File::create(&dest)
                .with_context(|| format!("staging {} as {}", s.path, dest.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            for c in chunks {
                let Some(bytes) = chunk_bytes(store, &c.id)
                    .with_context(|| format!("reading chunk {} of {}", c.id, s.path))?
                else {
                    bail!(
                        "chunk {} of {} is not in the endpoint's chunk store (damaged or \
                         evicted); nothing was changed",
                        c.id,
                        s.path
                    );
                };
                w.write_all(&bytes).with_context(|| format!("writing staged {}", s.path))?;
                progress.inc(bytes.len() as u64);
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.set_permissions(std::fs::Permissions::from_mode(s.mode))?;
            if let Some(m) = s.mtime_ns {
                f.set_modified(crate::journal::system_time(m))?;
            }
        }
        Node::Dir => bail!("internal error: a directory was staged ({})", s.path),
    }
    Ok(())
}
