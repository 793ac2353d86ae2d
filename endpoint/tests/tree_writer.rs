//! The tree writer on its own: exact output, refusals that write nothing, cleanup on failure.

mod common;

use bytes::Bytes;
use common::*;
use oasis_core::manifest::{ChunkRef, Node};
use oasis_core::ChunkId;
use oasis_endpoint::tree_writer::{self, ChunkReader, TreeWriter, WriteError, TEMP_PREFIX};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::Arc;

#[test]
fn writes_exact_bytes_modes_symlinks_empty_files_and_deep_dirs() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("new/root");
    let stats = tree_writer::write_tree(&root, &l.manifest, &l.chunks).unwrap();
    assert_tree(&root, &l);
    assert_eq!(stats.files_written, 5);
    assert_eq!(stats.symlinks_written, 1);
    assert_eq!(stats.dirs_created, 6);
    assert_eq!(stats.bytes_written, l.manifest.total_bytes());
    assert!(listing(&root).iter().all(|p| !p.contains(TEMP_PREFIX)));
}

#[test]
fn rewrite_replaces_changed_files_and_leaves_unlisted_ones_alone() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    tree_writer::write_tree(root, &sample_layer("1").manifest, &sample_layer("1").chunks).unwrap();
    std::fs::write(root.join("etc/local-only"), b"mine").unwrap();
    std::fs::write(root.join("etc/config"), b"edited by hand").unwrap();
    std::fs::set_permissions(root.join("bin/tool"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    // A file where the layer has a symlink, a symlink where it has a file: both replaced.
    std::fs::remove_file(root.join("bin/tool-link")).unwrap();
    std::fs::write(root.join("bin/tool-link"), b"not a link").unwrap();
    std::fs::remove_file(root.join("dup")).unwrap();
    symlink("/etc/passwd", root.join("dup")).unwrap();
    let l = sample_layer("1");
    tree_writer::write_tree(root, &l.manifest, &l.chunks).unwrap();
    assert_tree(root, &l);
    assert_eq!(std::fs::read(root.join("etc/local-only")).unwrap(), b"mine");
}

#[test]
fn refuses_to_write_through_a_symlink_and_writes_nothing() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("a")).unwrap();
    symlink(&outside, root.join("a/b")).unwrap();
    let before = listing(&root);
    let err = tree_writer::write_tree(&root, &l.manifest, &l.chunks).unwrap_err();
    assert!(matches!(err, WriteError::ThroughSymlink { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("would write through a symlink") && msg.contains("a/b"), "{msg}");
    assert_eq!(listing(&root), before, "nothing written under the root");
    assert!(listing(&outside).is_empty(), "nothing written through the link");
    // inspect alone refuses the same way.
    assert!(tree_writer::inspect(&root, &l.manifest).is_err());
}

#[test]
fn refuses_file_dir_conflicts_naming_the_path() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    // A file where the layer has a directory.
    std::fs::write(d.path().join("etc"), b"x").unwrap();
    let err = tree_writer::write_tree(d.path(), &l.manifest, &l.chunks).unwrap_err();
    assert!(matches!(err, WriteError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("etc"), "{err}");
    assert_eq!(listing(d.path()), vec!["etc".to_string()]);
    // A directory where the layer has a file.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("etc/config")).unwrap();
    let err = tree_writer::write_tree(d.path(), &l.manifest, &l.chunks).unwrap_err();
    assert!(
        err.to_string().contains("etc/config") && err.to_string().contains("a directory on disk")
    );
    assert_eq!(listing(d.path()), vec!["etc".to_string(), "etc/config".to_string()]);
    // The root itself a file.
    let f = d.path().join("plain");
    std::fs::write(&f, b"x").unwrap();
    assert!(matches!(
        tree_writer::write_tree(&f, &l.manifest, &l.chunks),
        Err(WriteError::Root { .. })
    ));
}

/// Fails reading one chunk; everything else is served.
struct FailingReader<'a> {
    chunks: &'a HashMap<ChunkId, Bytes>,
    bad: ChunkId,
}

impl ChunkReader for FailingReader<'_> {
    fn read(&self, c: &ChunkRef) -> io::Result<Option<Bytes>> {
        if c.id == self.bad {
            return Err(io::Error::other("disk on fire"));
        }
        Ok(self.chunks.get(&c.id).cloned())
    }
}

fn last_chunk_of(l: &Layer, path: &str) -> ChunkId {
    let e = l.manifest.entries.iter().find(|e| e.path == path).unwrap();
    match &e.node {
        Node::File { chunks, .. } => chunks.last().unwrap().id,
        _ => unreachable!(),
    }
}

#[test]
fn failure_removes_temp_files_and_created_dirs_and_keeps_old_files() {
    let old = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    tree_writer::write_tree(root, &old.manifest, &old.chunks).unwrap();
    let before: Vec<(String, Vec<u8>)> = listing(root)
        .into_iter()
        .map(|p| {
            let data = std::fs::read(root.join(&p)).unwrap_or_default();
            (p, data)
        })
        .collect();
    let mut new = layer(
        "app",
        "2",
        vec![
            Item::Dir("bin", 0o755),
            Item::File("bin/tool", 0o755, noise(7, 200_000)),
            Item::Dir("fresh", 0o755),
            Item::Dir("fresh/deeper", 0o755),
            Item::File("fresh/deeper/f", 0o644, noise(8, 50_000)),
            Item::File("zz-last", 0o644, noise(9, 90_000)),
        ],
    );
    let bad = last_chunk_of(&new, "zz-last");
    let err =
        tree_writer::write_tree(root, &new.manifest, &FailingReader { chunks: &new.chunks, bad })
            .unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    let after: Vec<(String, Vec<u8>)> = listing(root)
        .into_iter()
        .map(|p| {
            let data = std::fs::read(root.join(&p)).unwrap_or_default();
            (p, data)
        })
        .collect();
    assert_eq!(after, before, "no temp file, no new dir, old files untouched");

    // Unavailable chunks: reported, files stay unstaged, dropping the writer cleans up.
    new.chunks.remove(&bad);
    let w = TreeWriter::prepare(root, Arc::new(new.manifest.clone()), &HashMap::new()).unwrap();
    let missing = w.write_files(&new.chunks, None).unwrap();
    assert_eq!(missing, vec![bad]);
    assert!(listing(root).iter().any(|p| p.contains(TEMP_PREFIX)), "staged files exist");
    drop(w);
    assert_eq!(listing(root), before.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>());
}

#[test]
fn staged_files_survive_a_second_pass_after_missing_chunks_arrive() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    let bad = last_chunk_of(&l, "a/b/c/d/deep.bin");
    let mut partial = l.chunks.clone();
    partial.remove(&bad);
    let w = TreeWriter::prepare(d.path(), Arc::new(l.manifest.clone()), &HashMap::new()).unwrap();
    assert_eq!(w.write_files(&partial, None).unwrap(), vec![bad]);
    assert!(w.write_files(&l.chunks, None).unwrap().is_empty());
    let stats = w.commit().unwrap();
    assert_eq!(stats.files_written, 5);
    assert_tree(d.path(), &l);
}

#[test]
fn unchanged_files_are_kept_and_only_their_mode_set() {
    use std::os::unix::fs::MetadataExt;
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    tree_writer::write_tree(d.path(), &l.manifest, &l.chunks).unwrap();
    let path = "a/b/c/d/deep.bin";
    let deep = d.path().join(path);
    std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o600)).unwrap();
    let disk = tree_writer::inspect(d.path(), &l.manifest).unwrap();
    let idx = l.manifest.entries.iter().position(|e| e.path == path).unwrap();
    let tree_writer::OnDisk::File { stamp, .. } = disk[idx] else { panic!("{path} is a file") };
    let ino = std::fs::metadata(&deep).unwrap().ino();
    let w =
        TreeWriter::prepare(d.path(), Arc::new(l.manifest.clone()), &HashMap::from([(idx, stamp)]))
            .unwrap();
    // The kept file's chunks are not needed.
    let mut without = l.chunks.clone();
    if let Node::File { chunks, .. } = &l.manifest.entries[idx].node {
        for c in chunks {
            without.remove(&c.id);
        }
    }
    assert!(w.write_files(&without, None).unwrap().is_empty());
    let stats = w.commit().unwrap();
    assert_eq!(stats.files_unchanged, 1);
    assert_eq!(stats.files_written, 4);
    assert_eq!(std::fs::metadata(&deep).unwrap().ino(), ino, "kept in place, not rewritten");
    assert_tree(d.path(), &l);
}

#[test]
fn a_kept_file_that_changed_since_the_scan_is_rewritten() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    tree_writer::write_tree(d.path(), &l.manifest, &l.chunks).unwrap();
    let path = "etc/config";
    let idx = l.manifest.entries.iter().position(|e| e.path == path).unwrap();
    let disk = tree_writer::inspect(d.path(), &l.manifest).unwrap();
    let tree_writer::OnDisk::File { stamp, .. } = disk[idx] else { panic!("{path} is a file") };
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(d.path().join(path), b"key = other\n").unwrap();
    let w =
        TreeWriter::prepare(d.path(), Arc::new(l.manifest.clone()), &HashMap::from([(idx, stamp)]))
            .unwrap();
    assert!(w.write_files(&l.chunks, None).unwrap().is_empty());
    let stats = w.commit().unwrap();
    assert_eq!(stats.files_unchanged, 0);
    assert_tree(d.path(), &l);
}

#[test]
fn put_chunk_fills_every_place_and_write_files_the_rest() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    let w = TreeWriter::prepare(d.path(), Arc::new(l.manifest.clone()), &HashMap::new()).unwrap();
    let total = w.pending_bytes();
    assert_eq!(total, l.manifest.total_bytes());
    // "bin/tool" and "dup" share all their chunks: one put writes both places.
    let tool: Vec<ChunkRef> =
        match &l.manifest.entries.iter().find(|e| e.path == "bin/tool").unwrap().node {
            Node::File { chunks, .. } => chunks.clone(),
            _ => unreachable!(),
        };
    let mut put = 0;
    for c in &tool {
        assert!(w.needs(&c.id));
        put += w.put_chunk(&c.id, &l.chunks[&c.id]).unwrap();
        assert!(!w.needs(&c.id));
        assert_eq!(w.put_chunk(&c.id, &l.chunks[&c.id]).unwrap(), 0, "already written");
    }
    assert_eq!(put, 2 * 300_000);
    assert_eq!(w.pending_bytes(), total - put);
    // The rest from a reader that lacks the tool's chunks: nothing is missing.
    let mut rest = l.chunks.clone();
    for c in &tool {
        rest.remove(&c.id);
    }
    assert!(w.write_files(&rest, None).unwrap().is_empty());
    assert_eq!(w.pending_bytes(), 0);
    w.commit().unwrap();
    assert_tree(d.path(), &l);
}

#[test]
fn a_cancelled_writer_fails_and_cleans_up() {
    let l = sample_layer("1");
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let w = TreeWriter::prepare(&root, Arc::new(l.manifest.clone()), &HashMap::new()).unwrap();
    w.cancel_handle().store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(w.write_files(&l.chunks, None), Err(WriteError::Cancelled)));
    assert!(matches!(w.commit(), Err(WriteError::Cancelled)));
    assert!(!root.exists(), "created root removed again");
}
