//! Tests of the manifest: signing, opening, validation, deltas, and the documented example.

use super::*;
use proptest::prelude::*;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

fn file(path: &str, data: &[u8]) -> Entry {
    let chunks = if data.is_empty() {
        vec![]
    } else {
        vec![ChunkRef { id: ChunkId::of(data), len: data.len() as u32 }]
    };
    Entry::new(path, 0o644, Node::File { size: data.len() as u64, chunks })
}

fn dir(path: &str) -> Entry {
    Entry::new(path, 0o755, Node::Dir)
}

fn manifest(entries: Vec<Entry>) -> LayerManifest {
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

/// Signs and opens again, the body's chunks coming from what the signer cut.
fn roundtrip(m: &LayerManifest, k: &VerifyingKey) -> Result<SignedManifest, ManifestError> {
    let (sm, body) = m.sign(&key());
    let pieces: HashMap<ChunkId, bytes::Bytes> =
        body.pieces().map(|(c, d)| (c.id, bytes::Bytes::copy_from_slice(d))).collect();
    SignedManifest::open(&sm.to_bytes(), k, |c| {
        pieces.get(&c.id).cloned().ok_or_else(|| "not here".to_string())
    })
}

#[test]
fn sign_and_open_roundtrip() {
    let m = manifest(vec![dir("etc"), file("etc/hosts", b"127.0.0.1 localhost\n")]);
    let opened = roundtrip(&m, &key().verifying_key()).unwrap();
    assert_eq!(opened.manifest, m);
    assert_eq!(opened.digest, m.digest());
    assert_eq!(opened.root.files, 1);
    assert_eq!(opened.root.bytes, 20);
}

#[test]
fn metadata_and_hard_links_roundtrip() {
    let mut f = file("bin/su", b"elf");
    f.mode = 0o4755;
    f.meta = Meta {
        uid: 0,
        gid: 4,
        mtime: 1_700_000_000,
        mtime_nsec: 123_456_789,
        xattrs: vec![
            Xattr { name: "security.capability".into(), value: vec![1, 0, 0, 2] },
            Xattr { name: "user.note".into(), value: b"x".to_vec() },
        ],
    };
    let mut link = Entry::new("bin/sudo", 0o4755, Node::Hardlink { target: "bin/su".into() });
    link.meta = f.meta.clone();
    let m = manifest(vec![dir("bin"), f, link]);
    let opened = roundtrip(&m, &key().verifying_key()).unwrap();
    assert_eq!(opened.manifest, m);
    assert_eq!(opened.root.files, 1, "a hard link is not a second file");
}

#[test]
fn bad_hard_links_and_xattrs_are_refused() {
    let link = |t: &str| Entry::new("z", 0o644, Node::Hardlink { target: t.into() });
    for (entries, word) in [
        (vec![link("a")], "not an earlier file"),
        (vec![dir("a"), link("a")], "not an earlier file"),
    ] {
        let err = manifest(entries).validate().unwrap_err().to_string();
        assert!(err.contains(word), "{err}");
    }
    let mut f = file("a", b"x");
    f.meta.xattrs = vec![
        Xattr { name: "user.b".into(), value: vec![] },
        Xattr { name: "user.a".into(), value: vec![] },
    ];
    assert!(manifest(vec![f.clone()]).validate().is_err());
    f.meta.xattrs = vec![Xattr { name: "user.a".into(), value: vec![0; 65_537] }];
    assert!(manifest(vec![f.clone()]).validate().is_err());
    f.meta.xattrs.clear();
    f.meta.mtime_nsec = 1_000_000_000;
    assert!(manifest(vec![f]).validate().is_err());
}

#[test]
fn wrong_key_tampering_and_truncation_are_refused() {
    let m = manifest(vec![file("a", b"x")]);
    let (sm, _) = m.sign(&key());
    let bytes = sm.to_bytes();
    let other = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
    assert!(matches!(SignedRoot::open(&bytes, &other), Err(ManifestError::BadSignature { .. })));
    let mut tampered = bytes.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(SignedRoot::open(&tampered, &key().verifying_key()).is_err());
    for cut in [0, 3, 40, bytes.len() - 1] {
        assert!(SignedRoot::open(&bytes[..cut], &key().verifying_key()).is_err(), "cut {cut}");
    }
    let mut unsigned = bytes.clone();
    unsigned[4..68].fill(0);
    assert!(SignedRoot::open(&unsigned, &key().verifying_key()).is_err());
}

#[test]
fn a_body_chunk_that_does_not_match_is_refused() {
    let m = manifest(vec![dir("etc"), file("etc/hosts", b"x")]);
    let (sm, body) = m.sign(&key());
    let root = SignedRoot::open(&sm.to_bytes(), &key().verifying_key()).unwrap();
    let mut evil = body.bytes.clone();
    evil[0] ^= 1;
    let err =
        root.clone().assemble(|_| Ok(bytes::Bytes::from(evil.clone()))).unwrap_err().to_string();
    assert!(err.contains("do not match"), "{err}");
    let err = root.assemble(|_| Err("gone".into())).unwrap_err().to_string();
    assert!(err.contains("not available: gone"), "{err}");
}

#[test]
fn a_root_for_another_layer_is_refused() {
    let (sm, _) = manifest(vec![file("a", b"x")]).sign(&key());
    let root = SignedRoot::open(&sm.to_bytes(), &key().verifying_key()).unwrap();
    root.check_request("base", None).unwrap();
    root.check_request("base", Some("1")).unwrap();
    assert!(root.check_request("base", Some("2")).is_err());
    assert!(root.check_request("office", None).is_err());
}

#[test]
fn a_small_change_moves_few_body_chunks() {
    let mut entries = vec![dir("d")];
    for i in 0..20_000u32 {
        entries.push(file(&format!("d/{i:06}"), &i.to_le_bytes()));
    }
    let v1 = manifest(entries.clone());
    for i in (0..20_000).step_by(2000) {
        entries[i + 1] = file(&entries[i + 1].path.clone(), b"changed");
    }
    let v2 = manifest(entries);
    let (b1, b2) = (v1.body(), v2.body());
    let old: std::collections::HashSet<ChunkId> = b1.chunks.iter().map(|c| c.id).collect();
    let new_bytes: u64 =
        b2.chunks.iter().filter(|c| !old.contains(&c.id)).map(|c| c.len as u64).sum();
    // 10 changed entries of 20,000: each change costs the body chunk it falls in, and
    // perhaps its neighbour where the cut moves; never the body's size.
    assert!(
        new_bytes <= 10 * 2 * BODY_CHUNKING.max as u64 && new_bytes * 10 < b2.bytes.len() as u64,
        "{new_bytes} new of {} body bytes",
        b2.bytes.len()
    );
}

#[test]
fn unsafe_entries_are_refused_with_the_path_named() {
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![file("/etc/passwd", b"x")], "absolute"),
        (vec![file("../etc/passwd", b"x")], "escapes"),
        (vec![dir("a"), file("a/../../x", b"x")], "escapes"),
        (vec![file("a", b"x"), file("a", b"x")], "twice"),
        (
            vec![
                Entry::new("l", 0o777, Node::Symlink { target: "/etc".into() }),
                file("l/passwd", b"x"),
            ],
            "symlink",
        ),
        (vec![file("missing/parent", b"x")], "parent"),
        (vec![file("b", b"x"), file("a", b"x")], "order"),
    ];
    for (entries, word) in cases {
        let err = manifest(entries).validate().unwrap_err().to_string();
        assert!(err.contains(word), "{err} should mention {word}");
    }
    let mut bad_size = file("f", b"abc");
    if let Node::File { size, .. } = &mut bad_size.node {
        *size = 4;
    }
    assert!(manifest(vec![bad_size]).validate().is_err());
}

#[test]
fn signature_check_precedes_validation() {
    // A forged manifest with an escaping path must fail on the signature, not be parsed.
    let m = manifest(vec![file("../x", b"x")]);
    let other = SigningKey::from_bytes(&[1u8; 32]);
    let bytes = m.sign(&other).0.to_bytes();
    assert!(matches!(
        SignedRoot::open(&bytes, &key().verifying_key()),
        Err(ManifestError::BadSignature { .. })
    ));
}

fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::btree_map(
        "[a-z]{1,8}",
        (
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<(u32, u32, i64)>(),
            0u32..1_000_000_000,
        ),
        0..20,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(name, (mode, data, (uid, gid, mtime), nsec))| {
                let mut e = file(&name, &data);
                e.mode = (mode as u32) & 0o7777;
                e.meta = Meta { uid, gid, mtime, mtime_nsec: nsec, xattrs: vec![] };
                e
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn encoding_is_canonical_and_roundtrips(entries in arb_entries(), created in any::<u64>()) {
        let mut m = manifest(entries);
        m.created = created;
        let opened = roundtrip(&m, &key().verifying_key()).unwrap();
        prop_assert_eq!(opened.manifest, m);
    }

    #[test]
    fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = SignedRoot::open(&bytes, &key().verifying_key());
    }

    #[test]
    fn assemble_never_panics_on_garbage(body in proptest::collection::vec(any::<u8>(), 1..300)) {
        let m = manifest(vec![file("a", b"x")]);
        let (sm, _) = m.sign(&key());
        let mut root = SignedRoot::open(&sm.to_bytes(), &key().verifying_key()).unwrap();
        // A root that names this garbage as its body (as a seed with a bug might).
        root.root.body = vec![ChunkRef { id: ChunkId::of(&body), len: body.len() as u32 }];
        root.root.body_len = body.len() as u64;
        let _ = root.assemble_body(&body);
    }
}

mod documented_example {
    use super::*;

    /// The worked example in docs/protocol.md, byte for byte.
    #[test]
    fn body_and_root_match_protocol_doc() {
        let mut f = Entry::new(
            "d/f",
            0o644,
            Node::File { size: 3, chunks: vec![ChunkRef { id: ChunkId::of(b"abc"), len: 3 }] },
        );
        f.meta = Meta {
            uid: 1000,
            gid: 100,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            xattrs: vec![Xattr { name: "user.a".into(), value: b"1".to_vec() }],
        };
        let m = LayerManifest {
            format: 2,
            name: "a".into(),
            version: "1".into(),
            kind: LayerKind::App,
            chunking: ChunkParams::default(),
            created: 0,
            entries: vec![Entry::new("d", 0o755, Node::Dir), f],
        };
        let mut want_body = vec![
            0x01, 0x64, 0xed, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // "d" dir
            0x03, 0x64, 0x2f, 0x66, 0xa4, 0x03, // "d/f" 0644
            0xe8, 0x07, 0x64, // uid 1000, gid 100
            0x80, 0xc4, 0x9f, 0xd5, 0x0c, 0x05, // mtime 1700000000 (zigzag), nsec 5
            0x01, 0x06, 0x75, 0x73, 0x65, 0x72, 0x2e, 0x61, 0x01, 0x31, // user.a = "1"
            0x01, 0x03, 0x01, // file, size 3, 1 chunk
        ];
        want_body.extend_from_slice(blake3::hash(b"abc").as_bytes());
        want_body.push(0x03);
        assert_eq!(want_body.len(), 71, "the document gives the body's length");
        let body = m.body();
        assert_eq!(body.bytes, want_body);
        assert_eq!(body.chunks.len(), 1);
        #[rustfmt::skip]
        let mut want_root = vec![
            0x02, 0x01, 0x61, 0x01, 0x31, 0x01, // format 2, "a", "1", app
            0x80, 0x80, 0x01, 0x80, 0x80, 0x04, 0x80, 0x80, 0x10, // chunking
            0x00, 0x02, 0x01, 0x03, // created 0, 2 entries, 1 file, 3 bytes
            want_body.len() as u8, 0x01, // body_len, 1 body chunk
        ];
        want_root.extend_from_slice(blake3::hash(&want_body).as_bytes());
        want_root.push(want_body.len() as u8);
        assert_eq!(m.root(&body).encode(), want_root);
        m.validate().unwrap();
    }
}

#[test]
fn versions_order_numbers_as_numbers() {
    use std::cmp::Ordering::*;
    let cases = [
        ("1", "2", Less),
        ("9", "10", Less),
        ("1.9", "1.10", Less),
        ("2026.11.30", "2026.12.01", Less),
        ("1", "1a", Less),
        ("1", "1.1", Less),
        ("1.0", "1.0.1", Less),
        ("1a", "1b", Less),
        ("01", "1", Less),
        ("007", "7", Less),
        ("10", "9a", Greater),
        ("v2", "v10", Less),
        ("1", "1", Equal),
        ("2024.1", "2024.1", Equal),
    ];
    for (a, b, want) in cases {
        assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
    }
}

proptest! {
    #[test]
    fn version_order_is_a_total_order(
        a in "[0-9aZ._+-]{1,6}", b in "[0-9aZ._+-]{1,6}", c in "[0-9aZ._+-]{1,6}"
    ) {
        use std::cmp::Ordering::*;
        prop_assert_eq!(compare_versions(&a, &b) == Equal, a == b);
        prop_assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).reverse());
        if compare_versions(&a, &b) != Greater && compare_versions(&b, &c) != Greater {
            prop_assert_ne!(compare_versions(&a, &c), Greater, "{} {} {}", a, b, c);
        }
    }

    #[test]
    fn integer_versions_order_as_integers(x in 0u64..1_000_000, y in 0u64..1_000_000) {
        prop_assert_eq!(compare_versions(&x.to_string(), &y.to_string()), x.cmp(&y));
    }
}
