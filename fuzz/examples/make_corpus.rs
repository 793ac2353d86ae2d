//! Writes the seed corpus (`fuzz/corpus/TARGET/`): valid inputs made with the real encoders,
//! and the project's own example files, from which the fuzzer mutates. Run it after a format
//! changes: `cargo run --manifest-path fuzz/Cargo.toml --release --example make_corpus`.

use std::path::Path;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use oasis_proto::backup::SnapshotRecord;
use oasis_proto::gossip::{
    Body, GossipMsg, Heartbeat, Held, InventoryRecord, LayerAvailability, Load,
};
use oasis_proto::manifest::{ChunkRef, Entry, LayerKind, LayerManifest, Node, MANIFEST_FORMAT};
use oasis_proto::wire::{Assignment, ErrorCode, Frame, LayerRef};
use oasis_proto::{ChunkId, ChunkParams};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("corpus file");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let config = root.join("../config");
    let ids = vec![ChunkId::of(b"one"), ChunkId::of(b"two"), ChunkId::of(b"three")];

    let frames = [
        Frame::GetManifest { name: "base".into(), version: Some("2".into()) },
        Frame::GetManifest { name: "base".into(), version: None },
        Frame::GetChunks { ids: ids.clone() },
        Frame::GetChunksBackground { ids: ids.clone() },
        Frame::Have { ids: ids.clone() },
        Frame::ListLayers,
        Frame::GetAssignments,
        Frame::Missing { id: ids[0] },
        Frame::HaveReply { count: 3, bitmap: Bytes::from_static(&[0b101]) },
        Frame::End,
        Frame::Layers {
            layers: vec![LayerRef { name: "base".into(), version: "1".into(), digest: [9; 32] }],
        },
        Frame::Assignments {
            assignments: vec![Assignment {
                name: "base".into(),
                version: "2".into(),
                window: "22:00-06:00".into(),
            }],
        },
        Frame::Error { code: ErrorCode::NotFound, message: "no such layer".into() },
        Frame::Registered,
        Frame::GetDevices,
        Frame::PutChunks { count: 2 },
        Frame::ChunksStored { received: 2, added: 1 },
        Frame::ListSnapshots { device: "pc-1".into() },
    ];
    for (i, f) in frames.iter().enumerate() {
        let b = f.to_bytes();
        // The target takes the type byte and the body, without the length.
        write(&corpus.join("wire_frame"), &format!("frame-{i:02}"), &b[4..]);
    }

    let file = Node::File { size: 3, chunks: vec![ChunkRef { id: ids[0], len: 3 }] };
    let m = LayerManifest {
        format: MANIFEST_FORMAT,
        name: "base".into(),
        version: "1".into(),
        kind: LayerKind::Base,
        chunking: ChunkParams::default(),
        created: 1_700_000_000,
        entries: vec![
            Entry::new("etc", 0o40755, Node::Dir),
            Entry::new("etc/hosts", 0o100644, file),
            Entry::new(
                "etc/localtime",
                0o120777,
                Node::Symlink { target: "/usr/share/zoneinfo/UTC".into() },
            ),
            Entry::new("etc/hosts.bak", 0o100644, Node::Hardlink { target: "etc/hosts".into() }),
        ],
    };
    let (signed, body) = m.sign(&SigningKey::from_bytes(&[7; 32]));
    write(&corpus.join("manifest_root"), "root", &signed.signed_root().root_body);
    let body_bytes = m.encode_body();
    // What the root claims (entries, regular files, their bytes), then the body.
    let mut claimed = (m.entries.len() as u16).to_le_bytes().to_vec();
    claimed.extend_from_slice(&1u16.to_le_bytes());
    claimed.extend_from_slice(&3u32.to_le_bytes());
    claimed.extend_from_slice(&body_bytes);
    write(&corpus.join("manifest_body"), "body", &claimed);
    let _ = body;

    let load =
        Load { active_transfers: 2, serving_rate: 1 << 20, free_cache: 1 << 30, wan_demand: 0 };
    let gossip = [
        Body::Heartbeat(Heartbeat {
            site: Some("lyon".into()),
            serving_addr: Some("10.0.0.5:7400".into()),
            load,
            heartbeat_ms: 1000,
        }),
        Body::Availability(vec![
            LayerAvailability { layer: [3; 32], chunk_count: 10, held: Held::Complete },
            LayerAvailability {
                layer: [4; 32],
                chunk_count: 20,
                held: Held::Bits { first: 0, bits: vec![0xff, 0x0f, 0] },
            },
        ]),
        Body::Inventory(vec![InventoryRecord {
            name: "pc-1".into(),
            role: "endpoint".into(),
            site: "lyon".into(),
            agent_version: "oasis-endpoint 0.1.0".into(),
            macs: vec![[2, 0, 0, 0, 0, 1]],
            addrs: vec!["10.0.0.9/24".into()],
            wake_to: None,
            relay: Some("10.0.0.9:7409".into()),
            held: vec!["base@1".into()],
            last_seen: 1_700_000_000,
            reported_by: "refl-1".into(),
        }]),
    ];
    for (i, body) in gossip.into_iter().enumerate() {
        let msg = GossipMsg { seq: 1_000 + i as u64, body }.encode();
        write(&corpus.join("gossip"), &format!("msg-{i}"), &msg);
    }

    // A real hello: a certificate of a fresh CA, signed for a peer id.
    let dir = tempfile::tempdir().expect("temp dir");
    let auth = oasis_core::pki::SeedAuthority::init(&dir.path().join("seed")).expect("a CA");
    let id = auth
        .enroll(
            oasis_core::pki::Role::Reflector,
            "refl-1",
            Some("lyon"),
            &dir.path().join("r"),
            false,
        )
        .expect("enrolled");
    let peer = oasis_mesh::libp2p::PeerId::random();
    let hello = oasis_mesh::binding::sign_binding(&id, &peer).expect("hello");
    let hello = GossipMsg { seq: 0, body: Body::Hello(hello) }.encode();
    write(&corpus.join("mesh_hello"), "hello", &hello);
    write(&corpus.join("gossip"), "hello", &hello);

    let record = SnapshotRecord {
        format: oasis_proto::backup::RECORD_FORMAT,
        device: "pc-1".into(),
        id: "3".into(),
        created: 1_700_000_000,
        chunking: ChunkParams::default(),
        layers: Vec::new(),
        entries: Vec::new(),
    };
    write(&corpus.join("backup_record"), "empty", &record.encode());

    for (target, file) in [
        ("policy_toml", "bandwidth-policy.example.toml"),
        ("reflector_config", "reflector.example.toml"),
        ("endpoint_config", "endpoint.example.toml"),
    ] {
        let text = std::fs::read_to_string(config.join(file)).expect("example config");
        write(&corpus.join(target), "example", text.as_bytes());
        // The same with every commented-out key set, so the fuzzer starts from all of them.
        let all: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        write(&corpus.join(target), "all-keys", all.as_bytes());
    }
    // Every request the signer answers, valid in form (the root and the certificates are made
    // here; the signer answers each with a result or a refusal).
    let key = SigningKey::from_bytes(&[3; 32]);
    let (signed, _) = m.sign(&key);
    let root_body = hex(&signed.root_body);
    let signed_root = hex(&signed.to_bytes());
    for (name, line) in [
        ("hello", r#"{"op":"hello"}"#.to_string()),
        ("sign_root", format!(r#"{{"op":"sign_root","root_body":"{root_body}"}}"#)),
        ("latest", format!(r#"{{"op":"latest","signed_root":"{signed_root}","ttl_s":3600}}"#)),
        (
            "seal",
            format!(
                r#"{{"op":"seal","sealed":{{"DevicePlan":{{"device":"pc-1","digest":{:?}}}}}}}"#,
                [7u8; 32]
            ),
        ),
        ("renew", r#"{"op":"renew","cert":"3082","csr":"3082"}"#.to_string()),
        ("revocations", r#"{"op":"revocations","known":0}"#.to_string()),
    ] {
        write(&corpus.join("signer_request"), name, format!("{line}\n").as_bytes());
    }
    println!("corpus written to {}", corpus.display());
}
