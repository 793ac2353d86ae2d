use super::*;

fn store() -> (tempfile::TempDir, ChunkStore) {
    let d = tempfile::tempdir().unwrap();
    let s = ChunkStore::open(d.path()).unwrap();
    (d, s)
}

#[test]
fn put_get_dedup() {
    let (_d, s) = store();
    let c = StoredChunk::encode(&[1u8; 5000]);
    assert!(s.put(&c).unwrap());
    assert!(!s.put(&c).unwrap(), "second put of the same chunk adds nothing");
    let got = s.get(&c.id).unwrap().unwrap();
    assert_eq!(got, c);
    assert_eq!(s.get_plain(&c.id).unwrap().unwrap().as_ref(), &[1u8; 5000][..]);
    assert_eq!(s.totals().unwrap(), (1, c.data.len() as u64));
}

#[test]
fn a_snapshot_left_half_written_by_a_crash_does_not_stop_the_store_opening() {
    let d = tempfile::tempdir().unwrap();
    let c = StoredChunk::encode(&[7u8; 3000]);
    {
        let s = ChunkStore::open(d.path()).unwrap();
        s.put(&c).unwrap();
        s.sync().unwrap();
    }
    // What sled leaves when killed while writing a snapshot: a `.generating` file that sorts
    // after every finished one and holds only part of its bytes.
    let partial = d.path().join("index").join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&partial, [1u8, 2, 3]).unwrap();
    let s = ChunkStore::open(d.path()).expect("the store opens after the crash");
    assert_eq!(s.get(&c.id).unwrap().unwrap(), c, "what was flushed before is still there");
    assert!(!partial.exists());
}

#[test]
fn a_store_closed_and_opened_again_in_one_process_opens_every_time() {
    let d = tempfile::tempdir().unwrap();
    for round in 0..40u32 {
        let s = ChunkStore::open(d.path()).unwrap_or_else(|e| panic!("open in round {round}: {e}"));
        // Enough writes that sled's writer threads are busy when the handle drops.
        for i in 0..50u32 {
            s.put(&StoredChunk::encode(&[(round * 50 + i).to_le_bytes(); 600].concat())).unwrap();
        }
    }
    let s = ChunkStore::open(d.path()).unwrap();
    assert_eq!(s.index.len(), 40 * 50);
}

#[test]
fn another_process_holding_the_store_is_reported_at_once() {
    let d = tempfile::tempdir().unwrap();
    let held = ChunkStore::open(d.path()).unwrap();
    let started = std::time::Instant::now();
    // A store open elsewhere is not one this process closed: no grace, a locked error.
    let err = ChunkStore::open(d.path()).err().expect("the second open is refused");
    assert!(err.is_locked(), "{err}");
    assert!(started.elapsed() < LOCK_GRACE, "the open waited out the grace");
    drop(held);
}

#[test]
fn corrupt_chunk_is_dropped_not_served() {
    let (_d, s) = store();
    let c = StoredChunk::encode(b"some bytes that will rot on disk");
    s.put(&c).unwrap();
    let (path, offset, _) = s.chunk_location(&c.id).unwrap().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 3] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    assert!(s.get(&c.id).unwrap().is_none());
    assert!(!s.contains(&c.id).unwrap(), "the bad entry is gone so it can be refetched");
    assert_eq!(s.corrupt_dropped(), 1);
    assert!(s.put(&c).unwrap());
    assert!(s.get(&c.id).unwrap().is_some());
}

#[test]
fn entries_with_a_blake3_stored_digest_still_read_and_still_catch_rot() {
    // Stores written before XXH3 record BLAKE3 of the stored bytes and no FLAG_XXH3.
    let (_d, s) = store();
    let c = StoredChunk::encode(&b"an entry from an older store ".repeat(200));
    s.put(&c).unwrap();
    let mut e = s.entry(&c.id).unwrap().unwrap();
    assert_ne!(e.flags & FLAG_XXH3, 0, "new entries record XXH3");
    e.flags &= !FLAG_XXH3;
    e.stored_digest = *blake3::hash(&c.data).as_bytes();
    s.index.insert(c.id.as_bytes(), postcard::to_stdvec(&e).unwrap()).unwrap();
    assert_eq!(s.get(&c.id).unwrap().unwrap(), c, "the old digest still vouches for its bytes");

    let (path, offset, _) = s.chunk_location(&c.id).unwrap().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 5] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    assert!(s.get(&c.id).unwrap().is_none(), "one flipped bit is caught by the old digest");
    assert_eq!(s.corrupt_dropped(), 1);
}

#[test]
fn missing_file_is_dropped() {
    let (_d, s) = store();
    let c = StoredChunk::encode(b"gone");
    s.put(&c).unwrap();
    std::fs::remove_file(s.chunk_location(&c.id).unwrap().unwrap().0).unwrap();
    assert!(s.get(&c.id).unwrap().is_none());
    assert!(!s.contains(&c.id).unwrap());
}

#[test]
fn removals_compact_packs_and_keep_the_rest_readable() {
    let d = tempfile::tempdir().unwrap();
    let s = ChunkStore::open_with_pack_size(d.path(), 64 << 10).unwrap();
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let chunks: Vec<StoredChunk> = (0..64)
        .map(|_| {
            let mut b = vec![0u8; 8192];
            rng.fill_bytes(&mut b);
            StoredChunk::encode(&b)
        })
        .collect();
    for c in &chunks {
        s.put(c).unwrap();
    }
    let packs_before = std::fs::read_dir(d.path().join("packs")).unwrap().count();
    for c in chunks.iter().step_by(4).chain(chunks.iter().skip(1).step_by(4)) {
        s.remove(&c.id).unwrap();
    }
    let kept: Vec<_> =
        chunks.iter().skip(2).step_by(4).chain(chunks.iter().skip(3).step_by(4)).collect();
    for c in &kept {
        assert_eq!(&s.get(&c.id).unwrap().unwrap(), *c);
    }
    let packs_after = std::fs::read_dir(d.path().join("packs")).unwrap().count();
    assert!(
        packs_after < packs_before,
        "half-dead packs were compacted: {packs_before} -> {packs_after}"
    );
    drop(s);
    let s = ChunkStore::open(d.path()).unwrap();
    for c in &kept {
        assert_eq!(&s.get(&c.id).unwrap().unwrap(), *c);
    }
}

#[test]
fn index_survives_reopen_and_refs_update() {
    let d = tempfile::tempdir().unwrap();
    let c = StoredChunk::encode(&[9u8; 300]);
    {
        let s = ChunkStore::open(d.path()).unwrap();
        s.put(&c).unwrap();
        s.update_entry(&c.id, |e| e.refs += 2).unwrap();
        s.sync().unwrap();
    }
    let s = ChunkStore::open(d.path()).unwrap();
    assert_eq!(s.entry(&c.id).unwrap().unwrap().refs, 2);
    assert_eq!(s.get(&c.id).unwrap().unwrap(), c);
}

#[test]
fn file_refs_serve_verified_bytes_and_drop_when_the_file_changes() {
    let (d, s) = store();
    let path = d.path().join("written.bin");
    let a = vec![7u8; 3000];
    let b = vec![9u8; 2000];
    std::fs::write(&path, [a.as_slice(), b.as_slice()].concat()).unwrap();
    let stamp = RefStamp::of(&std::fs::metadata(&path).unwrap());
    let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
    let refs =
        [(ia, FileRef::new(&path, 0, 3000, stamp)), (ib, FileRef::new(&path, 3000, 2000, stamp))];
    assert_eq!(s.put_file_refs(refs.iter().map(|(i, r)| (i, r))).unwrap(), 2);
    assert!(!s.contains(&ia).unwrap(), "a reference is not a stored copy");
    assert!(s.has_file_ref(&ia).unwrap());
    assert_eq!(s.read_file_ref(&ib).unwrap().unwrap().as_ref(), b.as_slice());

    // Same size, same inode, mtime put back: only the hash can tell.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0u8], 10).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert!(s.has_file_ref(&ia).unwrap(), "the stamp still matches");
    assert!(s.read_file_ref(&ia).unwrap().is_none(), "changed bytes are never returned");
    assert!(!s.has_file_ref(&ia).unwrap(), "the bad reference is dropped");
    assert_eq!(s.read_file_ref(&ib).unwrap().unwrap().as_ref(), b.as_slice());

    // A visible change (new mtime) makes the rest stale without reading it.
    std::fs::write(&path, b"other content").unwrap();
    assert!(!s.has_file_ref(&ib).unwrap());
    assert_eq!(s.file_ref_count(), 0);

    // A chunk the store holds itself gets no reference.
    let c = StoredChunk::encode(&a);
    s.put(&c).unwrap();
    assert_eq!(s.put_file_refs(refs.iter().map(|(i, r)| (i, r))).unwrap(), 1);
}

#[test]
fn failed_write_leaves_no_entry() {
    let (_d, s) = store();
    let c = StoredChunk::encode(b"cannot be written");
    let packs = s.dir().join("packs");
    // A plain file where the packs directory should be makes every new pack fail.
    std::fs::remove_dir_all(&packs).unwrap();
    std::fs::write(&packs, b"in the way").unwrap();
    assert!(s.put(&c).is_err());
    assert!(!s.contains(&c.id).unwrap());
}

#[test]
fn latest_never_moves_back_to_a_lower_version() {
    let (_d, s) = store();
    let put = |v: &str| s.put_manifest_bytes("base", v, v.as_bytes()).unwrap();
    put("2");
    assert_eq!(s.latest_version("base").unwrap().as_deref(), Some("2"));
    // A cache asked for an older version keeps the newer one as its latest.
    put("1");
    assert_eq!(s.latest_version("base").unwrap().as_deref(), Some("2"));
    assert_eq!(s.manifest_bytes("base", None).unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.manifest_bytes("base", Some("1")).unwrap().as_deref(), Some(&b"1"[..]));
    put("10");
    assert_eq!(s.latest_version("base").unwrap().as_deref(), Some("10"));
}
