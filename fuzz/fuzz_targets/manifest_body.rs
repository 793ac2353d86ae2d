//! A manifest body (the entries) under a root that names it: the root is made here to match
//! the fuzzed bytes (length and chunk id), as a signed root would, so that every entry decoder
//! and check is reached. The input starts with what the root claims: the entry count (u16), the
//! regular files (u16) and their bytes (u32), little-endian; the body follows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_proto::manifest::{ChunkRef, LayerKind, ManifestRoot, SignedRoot, MANIFEST_FORMAT};
use oasis_proto::{ChunkId, ChunkParams};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let entries = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let files = u64::from(u16::from_le_bytes([data[2], data[3]]));
    let bytes = u64::from(u32::from_le_bytes([data[4], data[5], data[6], data[7]]));
    let body = &data[8..];
    let chunks = if body.is_empty() {
        Vec::new()
    } else {
        vec![ChunkRef { id: ChunkId::of(body), len: body.len() as u32 }]
    };
    let root = ManifestRoot {
        format: MANIFEST_FORMAT,
        name: "fuzz".into(),
        version: "1".into(),
        kind: LayerKind::Base,
        chunking: ChunkParams::default(),
        created: 0,
        entries,
        files,
        bytes,
        body_len: body.len() as u64,
        body: chunks,
    };
    let root = SignedRoot { root_body: root.encode(), digest: [0; 32], signature: [0; 64], root };
    if let Ok(m) = root.assemble_body(body) {
        let _ = m.manifest.unique_chunks();
        let _ = m.manifest.total_bytes();
    }
});
