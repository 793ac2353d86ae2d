//! Manifest entries for unit tests (compose, plan): a directory, a one-chunk file.

use oasis_core::manifest::{ChunkRef, Entry, Node};
use oasis_core::ChunkId;

pub fn dir(p: &str) -> Entry {
    Entry { path: p.into(), mode: 0o755, node: Node::Dir }
}

pub fn file(p: &str, d: &[u8]) -> Entry {
    Entry {
        path: p.into(),
        mode: 0o644,
        node: Node::File {
            size: d.len() as u64,
            chunks: vec![ChunkRef { id: ChunkId::of(d), len: d.len() as u32 }],
        },
    }
}
