//! Manifest entries for unit tests (compose, plan): a directory, a one-chunk file.

use oasis_core::manifest::{ChunkRef, Entry, Node};
use oasis_core::ChunkId;

pub fn dir(p: &str) -> Entry {
    Entry::new(p, 0o755, Node::Dir)
}

pub fn file(p: &str, d: &[u8]) -> Entry {
    Entry::new(
        p,
        0o644,
        Node::File {
            size: d.len() as u64,
            chunks: vec![ChunkRef { id: ChunkId::of(d), len: d.len() as u32 }],
        },
    )
}
