//! Layer manifests: what a layer contains, in a canonical signed encoding.
//!
//! The manifest body is encoded with postcard (a compact, deterministic serde format), hashed with
//! BLAKE3 (the layer digest) and signed with the seed's ed25519 key. Endpoints and reflectors
//! check the signature against trust.pem before trusting a single entry, so an untrusted cache
//! can serve a manifest but never forge one.

use crate::chunk::{ChunkId, ChunkParams};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// Version of the manifest body encoding. Bump on any change to the types below.
pub const MANIFEST_FORMAT: u16 = 1;
/// First bytes of a signed manifest.
pub const SIGNED_MAGIC: &[u8; 4] = b"OAS1";
/// Domain separation for the signature: the signed message is this followed by the digest.
pub const SIGNATURE_CONTEXT: &[u8] = b"oasis manifest v1\0";
/// Largest signed manifest accepted (about two million entries of typical size).
pub const MAX_MANIFEST_BYTES: usize = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Base,
    App,
    Driver,
    User,
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayerKind::Base => "base",
            LayerKind::App => "app",
            LayerKind::Driver => "driver",
            LayerKind::User => "user",
        })
    }
}

impl std::str::FromStr for LayerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "base" => Ok(LayerKind::Base),
            "app" => Ok(LayerKind::App),
            "driver" => Ok(LayerKind::Driver),
            "user" => Ok(LayerKind::User),
            _ => Err(format!("layer kind {s:?}: expected base, app, driver or user")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    Dir,
    File { size: u64, chunks: Vec<ChunkRef> },
    Symlink { target: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, '/'-separated, no '.', '..' or empty components.
    pub path: String,
    /// Permission bits (0o7777 at most).
    pub mode: u32,
    pub node: Node,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerManifest {
    pub format: u16,
    pub name: String,
    pub version: String,
    pub kind: LayerKind,
    pub chunking: ChunkParams,
    /// Seconds since the Unix epoch when the layer was published.
    pub created: u64,
    /// Sorted by path (byte order), parents before children.
    pub entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest {layer}: entry {path:?} {problem}")]
    BadEntry { layer: String, path: String, problem: String },
    #[error("manifest {layer}: {problem}")]
    Invalid { layer: String, problem: String },
    #[error("signed manifest: {0}")]
    Malformed(String),
    #[error("manifest {layer}: signature does not verify against the trusted manifest key")]
    BadSignature { layer: String },
    #[error(
        "manifest {layer}: format {found} is not supported (this build reads {MANIFEST_FORMAT})"
    )]
    Format { layer: String, found: u16 },
}

/// Layer names and versions: 1..=128 chars of [A-Za-z0-9._+-], not starting with '.'.
pub fn validate_label(what: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?}: use 1 to 128 letters, digits or . _ + - (not starting with '.')"
        ))
    }
}

impl LayerManifest {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Canonical body encoding (postcard). Deterministic for a given value.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("manifest types always serialize")
    }

    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Total plain bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files().map(|(_, size, _)| size).sum()
    }

    pub fn files(&self) -> impl Iterator<Item = (&Entry, u64, &[ChunkRef])> {
        self.entries.iter().filter_map(|e| match &e.node {
            Node::File { size, chunks } => Some((e, *size, chunks.as_slice())),
            _ => None,
        })
    }

    /// Distinct chunks with their plain lengths, in first-use order.
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.files().flat_map(|(_, _, c)| c.iter()).filter(|c| seen.insert(c.id)).copied().collect()
    }

    /// Checks every invariant a receiver relies on before touching the disk: safe relative
    /// paths, no duplicates, no entry below a symlink or a file, sizes that add up.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let layer = self.label();
        let invalid = |problem: String| ManifestError::Invalid { layer: layer.clone(), problem };
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format { layer, found: self.format });
        }
        validate_label("name", &self.name).map_err(invalid)?;
        validate_label("version", &self.version).map_err(invalid)?;
        self.chunking.validate().map_err(|e| invalid(e.to_string()))?;
        let mut kinds: HashMap<&str, &Node> = HashMap::with_capacity(self.entries.len());
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            let bad = |problem: &str| ManifestError::BadEntry {
                layer: layer.clone(),
                path: e.path.clone(),
                problem: problem.to_string(),
            };
            check_path(&e.path).map_err(|p| bad(&p))?;
            if e.mode & !0o7777 != 0 {
                return Err(bad("has mode bits beyond 0o7777"));
            }
            if kinds.contains_key(e.path.as_str()) {
                return Err(bad("appears twice"));
            }
            if let Some(p) = prev {
                if p > e.path.as_str() {
                    return Err(bad("is out of order (entries must be sorted by path)"));
                }
            }
            prev = Some(&e.path);
            // The parent must already be listed as a directory: a symlink parent would make a
            // writer follow it (possibly outside the root), a file parent is nonsense. Parents
            // were checked the same way when they were listed, so one level suffices.
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                match kinds.get(parent) {
                    Some(Node::Dir) => {}
                    Some(Node::Symlink { .. }) => {
                        return Err(bad(&format!("lies below the symlink {parent:?}")))
                    }
                    Some(Node::File { .. }) => {
                        return Err(bad(&format!("lies below the file {parent:?}")))
                    }
                    None => {
                        return Err(bad(&format!(
                            "has no directory entry for its parent {parent:?}"
                        )))
                    }
                }
            }
            match &e.node {
                Node::File { size, chunks } => {
                    let mut sum = 0u64;
                    for c in chunks {
                        if c.len == 0 || c.len > self.chunking.max {
                            return Err(bad(&format!(
                                "has a chunk of {} bytes, outside 1..={}",
                                c.len, self.chunking.max
                            )));
                        }
                        sum += c.len as u64;
                    }
                    if sum != *size {
                        return Err(bad(&format!(
                            "has size {size} but its chunks add up to {sum}"
                        )));
                    }
                }
                Node::Symlink { target } => {
                    if target.is_empty() || target.contains('\0') {
                        return Err(bad("has an empty symlink target or one with NUL"));
                    }
                }
                Node::Dir => {}
            }
            kinds.insert(&e.path, &e.node);
        }
        Ok(())
    }

    pub fn sign(&self, key: &SigningKey) -> SignedManifest {
        let body = self.encode();
        let digest = *blake3::hash(&body).as_bytes();
        let signature = key.sign(&signed_message(&digest));
        SignedManifest { body, digest, signature: signature.to_bytes(), manifest: self.clone() }
    }
}

fn signed_message(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGNATURE_CONTEXT.to_vec();
    m.extend_from_slice(digest);
    m
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty".into());
    }
    if path.starts_with('/') {
        return Err("is absolute".into());
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("contains NUL or a backslash".into());
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err("has an empty component".into()),
            "." => return Err("has a '.' component".into()),
            ".." => return Err("escapes the root ('..')".into()),
            _ => {}
        }
    }
    Ok(())
}

/// A manifest with its signature, as stored and sent:
/// `"OAS1" | signature (64) | body (postcard LayerManifest)`.
#[derive(Clone, Debug)]
pub struct SignedManifest {
    pub body: Vec<u8>,
    pub digest: [u8; 32],
    pub signature: [u8; 64],
    pub manifest: LayerManifest,
}

impl SignedManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 64 + self.body.len());
        out.extend_from_slice(SIGNED_MAGIC);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses, checks the signature against `key`, then validates the manifest.
    /// Nothing in the body is trusted before the signature verifies.
    pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<SignedManifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Malformed(format!(
                "{} bytes exceed the limit of {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        if bytes.len() < 4 + 64 || &bytes[..4] != SIGNED_MAGIC {
            return Err(ManifestError::Malformed(
                "truncated, or not a signed Oasis manifest (bad magic)".into(),
            ));
        }
        let signature: [u8; 64] = bytes[4..68].try_into().expect("length checked");
        let body = bytes[68..].to_vec();
        let digest = *blake3::hash(&body).as_bytes();
        // Peek at the label only for the error message; the body is not trusted yet.
        let layer = postcard::from_bytes::<LayerManifest>(&body)
            .map(|m| m.label())
            .unwrap_or_else(|_| format!("(digest {})", hex::encode(&digest[..8])));
        key.verify(&signed_message(&digest), &Signature::from_bytes(&signature))
            .map_err(|_| ManifestError::BadSignature { layer: layer.clone() })?;
        let manifest: LayerManifest = postcard::from_bytes(&body)
            .map_err(|e| ManifestError::Malformed(format!("{layer}: body does not decode: {e}")))?;
        if manifest.encode() != body {
            return Err(ManifestError::Malformed(format!(
                "{layer}: body is not in canonical form"
            )));
        }
        manifest.validate()?;
        Ok(SignedManifest { body, digest, signature, manifest })
    }

    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// A JSON view for people (`oasis-seed show`).
pub fn to_json(sm: &SignedManifest) -> serde_json::Value {
    let m = &sm.manifest;
    let entries: Vec<serde_json::Value> = m
        .entries
        .iter()
        .map(|e| {
            let mut v = serde_json::json!({ "path": e.path, "mode": format!("{:o}", e.mode) });
            match &e.node {
                Node::Dir => v["type"] = "dir".into(),
                Node::Symlink { target } => {
                    v["type"] = "symlink".into();
                    v["target"] = target.clone().into();
                }
                Node::File { size, chunks } => {
                    v["type"] = "file".into();
                    v["size"] = (*size).into();
                    v["chunks"] = chunks
                        .iter()
                        .map(|c| serde_json::json!({ "id": c.id.to_hex(), "len": c.len }))
                        .collect();
                }
            }
            v
        })
        .collect();
    serde_json::json!({
        "name": m.name,
        "version": m.version,
        "kind": m.kind.to_string(),
        "format": m.format,
        "digest": sm.digest_hex(),
        "created": m.created,
        "chunking": { "min": m.chunking.min, "avg": m.chunking.avg, "max": m.chunking.max },
        "files": m.files().count(),
        "bytes": m.total_bytes(),
        "unique_chunks": m.unique_chunks().len(),
        "entries": entries,
    })
}

#[cfg(test)]
mod tests {
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
        Entry {
            path: path.into(),
            mode: 0o644,
            node: Node::File { size: data.len() as u64, chunks },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry { path: path.into(), mode: 0o755, node: Node::Dir }
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

    #[test]
    fn sign_and_open_roundtrip() {
        let m = manifest(vec![dir("etc"), file("etc/hosts", b"127.0.0.1 localhost\n")]);
        let sm = m.sign(&key());
        let opened = SignedManifest::open(&sm.to_bytes(), &key().verifying_key()).unwrap();
        assert_eq!(opened.manifest, m);
        assert_eq!(opened.digest, m.digest());
    }

    #[test]
    fn wrong_key_tampering_and_truncation_are_refused() {
        let m = manifest(vec![file("a", b"x")]);
        let bytes = m.sign(&key()).to_bytes();
        let other = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        assert!(matches!(
            SignedManifest::open(&bytes, &other),
            Err(ManifestError::BadSignature { .. })
        ));
        let mut tampered = bytes.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(SignedManifest::open(&tampered, &key().verifying_key()).is_err());
        for cut in [0, 3, 40, bytes.len() - 1] {
            assert!(
                SignedManifest::open(&bytes[..cut], &key().verifying_key()).is_err(),
                "cut {cut}"
            );
        }
        let mut unsigned = bytes.clone();
        unsigned[4..68].fill(0);
        assert!(SignedManifest::open(&unsigned, &key().verifying_key()).is_err());
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
                    Entry {
                        path: "l".into(),
                        mode: 0o777,
                        node: Node::Symlink { target: "/etc".into() },
                    },
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
        let bytes = m.sign(&other).to_bytes();
        assert!(matches!(
            SignedManifest::open(&bytes, &key().verifying_key()),
            Err(ManifestError::BadSignature { .. })
        ));
    }

    fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
        proptest::collection::btree_map(
            "[a-z]{1,8}",
            (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)),
            0..20,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, (mode, data))| {
                    let mut e = file(&name, &data);
                    e.mode = (mode as u32) & 0o7777;
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
            let body = m.encode();
            let back: LayerManifest = postcard::from_bytes(&body).unwrap();
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(back.encode(), body);
            let sm = m.sign(&key());
            let opened = SignedManifest::open(&sm.to_bytes(), &key().verifying_key()).unwrap();
            prop_assert_eq!(opened.manifest, m);
        }

        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SignedManifest::open(&bytes, &key().verifying_key());
        }
    }
}

#[cfg(test)]
mod documented_example {
    use super::*;

    /// The worked example in docs/protocol.md, byte for byte.
    #[test]
    fn body_matches_protocol_doc() {
        let m = LayerManifest {
            format: 1,
            name: "a".into(),
            version: "1".into(),
            kind: LayerKind::App,
            chunking: ChunkParams::default(),
            created: 0,
            entries: vec![
                Entry { path: "d".into(), mode: 0o755, node: Node::Dir },
                Entry {
                    path: "d/f".into(),
                    mode: 0o644,
                    node: Node::File {
                        size: 3,
                        chunks: vec![ChunkRef { id: ChunkId::of(b"abc"), len: 3 }],
                    },
                },
            ],
        };
        let mut want = vec![
            0x01, 0x01, 0x61, 0x01, 0x31, 0x01, 0x80, 0x80, 0x01, 0x80, 0x80, 0x04, 0x80, 0x80,
            0x10, 0x00, 0x02, 0x01, 0x64, 0xed, 0x03, 0x00, 0x03, 0x64, 0x2f, 0x66, 0xa4, 0x03,
            0x01, 0x03, 0x01,
        ];
        want.extend_from_slice(blake3::hash(b"abc").as_bytes());
        want.push(0x03);
        assert_eq!(m.encode(), want);
        m.validate().unwrap();
    }
}
