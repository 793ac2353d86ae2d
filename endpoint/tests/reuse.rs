//! Local-data reuse: chunks of files already in the target directory are found and re-verified.

mod common;

use common::*;
use oasis_core::ChunkId;
use oasis_endpoint::reuse;
use oasis_endpoint::tree_writer;
use std::collections::HashSet;

fn wanted(l: &Layer) -> HashSet<ChunkId> {
    l.manifest.unique_chunks().iter().map(|c| c.id).collect()
}

#[test]
fn finds_chunks_of_an_existing_file_even_after_an_edit() {
    let base = noise(5, 400_000);
    let l = layer("app", "1", vec![Item::File("big", 0o644, base.clone())]);
    let d = tempfile::tempdir().unwrap();
    // The old version on disk: 100 bytes inserted near the front.
    let mut old = base[..1000].to_vec();
    old.extend_from_slice(&[0xAB; 100]);
    old.extend_from_slice(&base[1000..]);
    std::fs::write(d.path().join("big"), &old).unwrap();

    let disk = tree_writer::inspect(d.path(), &l.manifest).unwrap();
    let local = reuse::scan(d.path(), &l.manifest, &disk, &wanted(&l), None);
    let total = l.chunks.len();
    assert!(
        local.chunks.len() + 3 >= total,
        "content-defined chunking finds all but the edited chunks: {} of {total}",
        local.chunks.len()
    );
    assert!(local.unchanged.is_empty(), "an edited file is not unchanged");
    assert_eq!(local.bytes_scanned, old.len() as u64);
    // Every recorded chunk reads back verified, with the right bytes.
    for (id, lc) in &local.chunks {
        let b = local.read(id).unwrap().expect("chunk readable");
        assert_eq!(b.len(), lc.len as usize);
        assert_eq!(&b[..], &l.chunks[id][..]);
    }
}

#[test]
fn detects_unchanged_files_and_chunks_shared_across_files() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    tree_writer::write_tree(d.path(), &l.manifest, &l.chunks).unwrap();
    // The layer's "dup" content also exists under another name the layer does not list.
    let disk = tree_writer::inspect(d.path(), &l.manifest).unwrap();
    let local = reuse::scan(d.path(), &l.manifest, &disk, &wanted(&l), None);
    let files = l.manifest.files().filter(|(_, size, _)| *size > 0).count();
    assert_eq!(local.unchanged.len(), l.manifest.files().count(), "every file unchanged");
    assert!(files > 0);
    assert_eq!(local.chunks.len(), l.chunks.len(), "every chunk found locally");
}

#[test]
fn a_chunk_changed_after_the_scan_is_not_served() {
    let data = noise(6, 100_000);
    let l = layer("app", "1", vec![Item::File("f", 0o644, data.clone())]);
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f"), &data).unwrap();
    let disk = tree_writer::inspect(d.path(), &l.manifest).unwrap();
    let local = reuse::scan(d.path(), &l.manifest, &disk, &wanted(&l), None);
    assert_eq!(local.chunks.len(), l.chunks.len());
    // Overwrite in place (same inode) with different bytes.
    std::fs::write(d.path().join("f"), noise(7, 100_000)).unwrap();
    for id in local.chunks.keys() {
        assert!(local.read(id).unwrap().is_none(), "stale local chunk must not be served");
    }
    // Truncated: also not served.
    std::fs::write(d.path().join("f"), b"short").unwrap();
    for id in local.chunks.keys() {
        assert!(local.read(id).unwrap().is_none());
    }
}

#[test]
fn symlinks_and_missing_files_are_not_scanned() {
    let data = noise(8, 50_000);
    let l = layer(
        "app",
        "1",
        vec![Item::File("f", 0o644, data.clone()), Item::File("g", 0o644, noise(9, 10))],
    );
    let d = tempfile::tempdir().unwrap();
    let elsewhere = d.path().join("elsewhere");
    std::fs::write(&elsewhere, &data).unwrap();
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("f")).unwrap();
    let disk = tree_writer::inspect(&root, &l.manifest).unwrap();
    let local = reuse::scan(&root, &l.manifest, &disk, &wanted(&l), None);
    assert_eq!(local.files_scanned, 0);
    assert!(local.chunks.is_empty());
}
