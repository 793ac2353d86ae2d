use super::*;
use proptest::prelude::*;

fn roundtrip(f: Frame) {
    let mut buf = BytesMut::new();
    f.encode(&mut buf);
    let got = split_frame(&mut buf, MAX_FRAME_BYTES).unwrap().unwrap();
    assert_eq!(got, f);
    assert!(buf.is_empty());
}

#[test]
fn every_frame_roundtrips() {
    let id = ChunkId::of(b"x");
    roundtrip(Frame::GetManifest { name: "base".into(), version: Some("2".into()) });
    roundtrip(Frame::GetManifest { name: "base".into(), version: None });
    roundtrip(Frame::GetChunks { ids: vec![id, id] });
    roundtrip(Frame::GetChunksBackground { ids: vec![id] });
    roundtrip(Frame::Have { ids: vec![] });
    roundtrip(Frame::ListLayers);
    roundtrip(Frame::Manifest { signed: Bytes::from_static(b"abc") });
    roundtrip(Frame::Chunk(StoredChunk::encode(&[7u8; 1000])));
    roundtrip(Frame::Missing { id });
    roundtrip(Frame::HaveReply { count: 9, bitmap: pack_bits(&[true; 9]) });
    roundtrip(Frame::End);
    roundtrip(Frame::Layers {
        layers: vec![LayerRef { name: "a".into(), version: "1".into(), digest: [3; 32] }],
    });
    roundtrip(Frame::error(ErrorCode::NotFound, "layer base@9 not found"));
    roundtrip(Frame::GetAssignments);
    roundtrip(Frame::GetLatest { name: "base".into() });
    roundtrip(Frame::GetRevocations { known: 0 });
    roundtrip(Frame::GetEntitlements { site: None, known: [9; 32] });
    roundtrip(Frame::GetEntitlements { site: Some("branch-2".into()), known: [0; 32] });
    roundtrip(Frame::Entitlements { statement: Bytes::new(), seal: Bytes::new() });
    roundtrip(Frame::Entitlements {
        statement: Bytes::from_static(b"\x05branch"),
        seal: Bytes::from_static(b"OSL1..."),
    });
    roundtrip(Frame::Renew { cert: Bytes::from_static(b"c"), csr: Bytes::from_static(b"r") });
    roundtrip(Frame::Renewed { cert: Bytes::from_static(b"c") });
    roundtrip(Frame::GetRevocations { known: u64::MAX });
    roundtrip(Frame::Revocations { crl: Bytes::new() });
    roundtrip(Frame::Revocations { crl: Bytes::from_static(b"0\x03\x02\x01\x00") });
    roundtrip(Frame::Latest { statement: Bytes::from_static(b"OAL1"), note: String::new() });
    roundtrip(Frame::Latest {
        statement: Bytes::from_static(b"OAL1xyz"),
        note: "upstream unreachable".into(),
    });
    roundtrip(Frame::Assignments {
        assignments: vec![
            Assignment { name: "base".into(), version: "2".into(), window: "02:00-05:00".into() },
            Assignment { name: "app".into(), version: "1".into(), window: String::new() },
        ],
    });
}

#[test]
fn chunk_header_matches_encoding() {
    let c = StoredChunk::encode(b"hello world");
    let full = Frame::Chunk(c.clone()).to_bytes();
    assert_eq!(&full[..42], &Frame::chunk_header(&c)[..]);
    assert_eq!(&full[42..], &c.data[..]);
}

#[test]
fn oversized_frame_is_refused_before_buffering() {
    let mut buf = BytesMut::new();
    buf.put_u32((MAX_REQUEST_BYTES + 1) as u32);
    buf.put_u8(frame_type::GET_CHUNKS);
    assert_eq!(
        split_frame(&mut buf, MAX_REQUEST_BYTES),
        Err(WireError::TooLarge { len: MAX_REQUEST_BYTES + 1, max: MAX_REQUEST_BYTES })
    );
}

#[test]
fn truncated_and_unknown_frames_are_errors() {
    assert!(matches!(
        Frame::decode(frame_type::GET_CHUNKS, Bytes::from_static(&[0, 0, 0, 2, 1])),
        Err(WireError::Malformed { .. })
    ));
    assert_eq!(Frame::decode(0x42, Bytes::new()), Err(WireError::UnknownType(0x42)));
    assert!(matches!(
        Frame::decode(frame_type::GET_MANIFEST, Bytes::from_static(&[0, 0])),
        Err(WireError::Malformed { .. })
    ));
}

proptest! {
    #[test]
    fn decode_never_panics(ty in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Frame::decode(ty, Bytes::from(body));
    }

    #[test]
    fn bits_roundtrip(flags in proptest::collection::vec(any::<bool>(), 0..200)) {
        prop_assert_eq!(unpack_bits(&pack_bits(&flags), flags.len()), flags);
    }

    #[test]
    fn id_lists_roundtrip(seeds in proptest::collection::vec(any::<u64>(), 0..50)) {
        let ids: Vec<ChunkId> = seeds.iter().map(|s| ChunkId::of(&s.to_le_bytes())).collect();
        roundtrip(Frame::GetChunks { ids });
    }
}
