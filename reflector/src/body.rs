//! Reading a cached manifest's body entry by entry, straight from the store.
//!
//! What the reflector needs from a layer's entries is small: the chunks of its files (to pin,
//! prefetch and index them for the mesh). Assembling the whole manifest for that would hold the
//! body and every decoded entry at once, several hundred MB for a layer of a million entries;
//! reading the body one chunk at a time and keeping only the chunk list holds one body chunk and
//! at most one entry that spans a chunk boundary.
//!
//! Only roots whose signature verified are read, and each body chunk comes from
//! [`ChunkStore::get_plain`], which checks it against its id: the entries are the seed's.
//! They are not validated here (paths, modes): the reflector writes nothing from them, and
//! endpoints validate the whole manifest before they do.

use oasis_core::manifest::{ChunkRef, Entry, ManifestRoot, Node};
use oasis_core::store::{ChunkStore, StoreError};
use oasis_core::ChunkId;
use std::collections::HashSet;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("manifest {layer}: reading its body from the cache: {source}")]
    Store {
        layer: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("manifest {layer}: body {problem}")]
    Malformed { layer: String, problem: String },
}

/// Calls `each` with every entry of `root`'s body, in order, reading the body chunks from
/// `store`. `Ok(false)` when a body chunk is not in the store (nothing is known then about the
/// entries not yet seen).
pub fn for_each_entry(
    store: &ChunkStore,
    root: &ManifestRoot,
    mut each: impl FnMut(Entry),
) -> Result<bool, BodyError> {
    let layer = root.label();
    let malformed = |problem: String| BodyError::Malformed { layer: layer.clone(), problem };
    // Bytes not decoded yet: the tail of the previous chunks (an entry cut by a chunk boundary)
    // followed by the current chunk.
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0usize;
    let mut count = 0u64;
    for c in &root.body {
        let data = match store.get_plain(&c.id) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(false),
            Err(e) => return Err(BodyError::Store { layer: layer.clone(), source: Box::new(e) }),
        };
        if data.len() != c.len as usize {
            return Err(malformed(format!(
                "chunk {} has {} bytes, the root says {}",
                c.id,
                data.len(),
                c.len
            )));
        }
        buf.drain(..at);
        at = 0;
        buf.extend_from_slice(&data);
        loop {
            match postcard::take_from_bytes::<Entry>(&buf[at..]) {
                Ok((entry, rest)) => {
                    at = buf.len() - rest.len();
                    count += 1;
                    if count > root.entries {
                        return Err(malformed(format!(
                            "holds more than the {} entries the root says",
                            root.entries
                        )));
                    }
                    each(entry);
                }
                // The entry goes on in the next body chunk.
                Err(postcard::Error::DeserializeUnexpectedEnd) => break,
                Err(e) => {
                    return Err(malformed(format!("entry {count} does not decode: {e}")));
                }
            }
        }
    }
    if at != buf.len() {
        return Err(malformed(format!(
            "ends inside entry {count} ({} bytes left over)",
            buf.len() - at
        )));
    }
    if count != root.entries {
        return Err(malformed(format!("holds {count} entries, the root says {}", root.entries)));
    }
    Ok(true)
}

/// The distinct chunks of `root`'s files in first-use order (what
/// `LayerManifest::unique_chunks` gives for the assembled manifest), read from `store`.
/// `Ok(None)` when a body chunk is not in the store.
pub fn unique_file_chunks(
    store: &ChunkStore,
    root: &ManifestRoot,
) -> Result<Option<Vec<ChunkRef>>, BodyError> {
    // Sized once for the files the root counts (a layer's chunks are mostly one a file), not
    // grown by doubling and copying through a million entries.
    let files = root.files.min(root.entries).min(1 << 21) as usize;
    let mut seen: HashSet<ChunkId> = HashSet::with_capacity(files);
    let mut out = Vec::with_capacity(files);
    let whole = for_each_entry(store, root, |e| {
        if let Node::File { chunks, .. } = e.node {
            out.extend(chunks.into_iter().filter(|c| seen.insert(c.id)));
        }
    })?;
    Ok(whole.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oasis_core::chunk::ChunkParams;
    use oasis_core::manifest::{LayerKind, LayerManifest, Meta, Xattr, MANIFEST_FORMAT};

    fn manifest(n: u32) -> LayerManifest {
        let mut entries = vec![Entry::new("d", 0o755, Node::Dir)];
        for i in 0..n {
            let path = format!("d/{i:06}");
            // Every third file shares its chunk with the one before: first-use order matters.
            let data = (i - i % 3 / 2).to_le_bytes();
            let chunk = ChunkRef { id: ChunkId::of(&data), len: 4 };
            let mut e = Entry::new(path, 0o644, Node::File { size: 4, chunks: vec![chunk] });
            if i % 97 == 0 {
                // A large attribute makes some entries span several body chunks.
                e.meta = Meta {
                    uid: i,
                    gid: 7,
                    mtime: 1_700_000_000,
                    mtime_nsec: i,
                    xattrs: vec![Xattr { name: "user.big".into(), value: vec![i as u8; 40_000] }],
                };
            }
            entries.push(e);
        }
        LayerManifest {
            format: MANIFEST_FORMAT,
            name: "base".into(),
            version: "1".into(),
            kind: LayerKind::Base,
            chunking: ChunkParams::default(),
            created: 1,
            entries,
        }
    }

    #[test]
    fn reads_the_same_chunks_as_the_assembled_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let m = manifest(3000);
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let (sm, body) = m.sign(&key);
        assert!(body.chunks.len() > 10, "the body spans many chunks");
        assert!(body.chunks.iter().any(|c| c.len == 16384), "some entries span chunk boundaries");
        store.put_manifest_body(&body).unwrap();
        let got = unique_file_chunks(&store, &sm.root).unwrap().expect("whole body stored");
        assert_eq!(got, m.unique_chunks());
        let mut paths = Vec::new();
        assert!(for_each_entry(&store, &sm.root, |e| paths.push(e.path)).unwrap());
        assert_eq!(paths, m.entries.iter().map(|e| e.path.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn a_missing_body_chunk_is_reported_as_not_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (sm, body) = manifest(500).sign(&ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        store.put_manifest_body(&body).unwrap();
        store.remove(&body.chunks[body.chunks.len() / 2].id).unwrap();
        assert!(unique_file_chunks(&store, &sm.root).unwrap().is_none());
    }

    #[test]
    fn a_root_that_miscounts_its_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let (sm, body) = manifest(50).sign(&ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
        store.put_manifest_body(&body).unwrap();
        for entries in [sm.root.entries - 1, sm.root.entries + 1] {
            let root = ManifestRoot { entries, ..sm.root.clone() };
            let err = unique_file_chunks(&store, &root).unwrap_err().to_string();
            assert!(err.contains("entries") && err.contains("base@1"), "{err}");
        }
    }
}
