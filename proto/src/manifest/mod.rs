//! Layer manifests: what a layer contains, in a canonical signed encoding.
//!
//! A manifest has two parts. The **body** is the layer's entries, one after another in postcard
//! (a compact, deterministic serde format), cut into content-defined chunks with
//! [`BODY_CHUNKING`] and moved and stored like any other chunk. The **root** is small: the
//! layer's name, version, kind, totals and the list of body chunks. The root is hashed with
//! BLAKE3 (the layer digest) and signed with the seed's ed25519 key. Since every body chunk is
//! named by its hash in the signed root, the signature covers every entry.
//!
//! Cutting the body by content means a new version that changes a few entries changes a few
//! body chunks: a receiver that kept the previous version's body fetches only those, plus the
//! root. And no single frame has to carry a manifest of a million entries.
//!
//! Endpoints and reflectors check the root's signature against trust.pem before trusting a
//! single field, so an untrusted cache can serve a manifest but never forge one.

use crate::chunk::{ChunkId, ChunkParams};
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;

mod labels;
pub mod latest;
mod root_signer;
pub use labels::{compare_versions, validate_label};
pub use latest::{Freshness, Latest, Succession};
pub use root_signer::RootSigner;

/// Version of the manifest encoding (root and body). Bump on any change to the types below.
pub const MANIFEST_FORMAT: u16 = 2;
/// First bytes of a signed manifest root.
pub const SIGNED_MAGIC: &[u8; 4] = b"OAS2";
/// Domain separation for the signature: the signed message is this followed by the digest.
pub const SIGNATURE_CONTEXT: &[u8] = b"oasis manifest v2\0";
/// Largest signed root (magic, signature and root body): it travels in one `Manifest` frame.
pub const MAX_MANIFEST_ROOT_BYTES: usize = 4 << 20;
/// Most body chunks a root may list (a root of about 3.6 MB, a body of about 400 MB).
pub const MAX_BODY_CHUNKS: usize = 100_000;
/// Largest manifest body: the entries, encoded (about seven million entries of typical size).
pub const MAX_MANIFEST_BODY_BYTES: u64 = 1 << 30;
/// Most entries in one layer.
pub const MAX_MANIFEST_ENTRIES: u64 = 8_000_000;
/// Most extended attributes on one entry, and their largest name and value (Linux's limits).
pub const MAX_XATTRS_PER_ENTRY: usize = 64;
pub const MAX_XATTR_NAME_BYTES: usize = 255;
pub const MAX_XATTR_VALUE_BYTES: usize = 65_536;
/// How the manifest body is cut: small chunks, so that a change to a few entries moves little.
pub const BODY_CHUNKING: ChunkParams = ChunkParams { min: 1024, avg: 4096, max: 16384 };

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
    File {
        size: u64,
        chunks: Vec<ChunkRef>,
    },
    Symlink {
        target: String,
    },
    /// Another name for the inode of an earlier file entry (`target` is that entry's path). It
    /// carries no chunks; its metadata is the target's.
    Hardlink {
        target: String,
    },
}

/// An extended attribute: `security.capability`, `user.*`, ACLs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

/// Ownership, time and extended attributes of an entry, as the source filesystem had them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Modification time: seconds since the Unix epoch (negative before it) and nanoseconds.
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Sorted by name, no duplicates.
    pub xattrs: Vec<Xattr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, '/'-separated, no '.', '..' or empty components.
    pub path: String,
    /// Permission bits with setuid, setgid and sticky (0o7777 at most). Symlinks carry 0o777.
    pub mode: u32,
    pub meta: Meta,
    pub node: Node,
}

impl Entry {
    /// An entry with no recorded owner, time or attributes (uid and gid 0, mtime 0).
    pub fn new(path: impl Into<String>, mode: u32, node: Node) -> Entry {
        Entry { path: path.into(), mode, meta: Meta::default(), node }
    }
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

/// The signed part of a manifest: the layer's identity, totals and where its body is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRoot {
    pub format: u16,
    pub name: String,
    pub version: String,
    pub kind: LayerKind,
    /// How the layer's files are cut.
    pub chunking: ChunkParams,
    pub created: u64,
    /// Number of entries in the body.
    pub entries: u64,
    /// Regular files (hard links not counted) and their plain bytes.
    pub files: u64,
    pub bytes: u64,
    /// Length of the body, and its chunks in order (cut with [`BODY_CHUNKING`]).
    pub body_len: u64,
    pub body: Vec<ChunkRef>,
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
    #[error("manifest {layer}: body chunk {id} is not available: {problem}")]
    BodyUnavailable { layer: String, id: ChunkId, problem: String },
}

/// A manifest's body, cut into chunks: what a publisher stores beside the signed root.
#[derive(Clone, Debug)]
pub struct ManifestBody {
    pub bytes: Vec<u8>,
    pub chunks: Vec<ChunkRef>,
}

impl ManifestBody {
    /// Each chunk with its plain bytes.
    pub fn pieces(&self) -> impl Iterator<Item = (ChunkRef, &[u8])> + '_ {
        let mut at = 0usize;
        self.chunks.iter().map(move |c| {
            let piece = &self.bytes[at..at + c.len as usize];
            at += c.len as usize;
            (*c, piece)
        })
    }
}

impl LayerManifest {
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Canonical body encoding: every entry in postcard, one after another.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 96);
        for e in &self.entries {
            out = postcard::to_extend(e, out).expect("manifest entries always serialize");
        }
        out
    }

    /// The body cut into its chunks.
    pub fn body(&self) -> ManifestBody {
        let bytes = self.encode_body();
        let chunks = crate::chunk::cut(&bytes, &BODY_CHUNKING)
            .into_iter()
            .map(|s| {
                let (o, l) = (s.offset as usize, s.len as usize);
                ChunkRef { id: ChunkId::of(&bytes[o..o + l]), len: s.len }
            })
            .collect();
        ManifestBody { bytes, chunks }
    }

    /// The root of this manifest for a body already cut.
    pub fn root(&self, body: &ManifestBody) -> ManifestRoot {
        let (files, bytes) = self.files().fold((0u64, 0u64), |(n, b), (_, s, _)| (n + 1, b + s));
        ManifestRoot {
            format: self.format,
            name: self.name.clone(),
            version: self.version.clone(),
            kind: self.kind,
            chunking: self.chunking,
            created: self.created,
            entries: self.entries.len() as u64,
            files,
            bytes,
            body_len: body.bytes.len() as u64,
            body: body.chunks.clone(),
        }
    }

    /// The layer digest: BLAKE3 of the encoded root.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.root(&self.body()).encode()).as_bytes()
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
    /// paths, no duplicates, no entry below a symlink or a file, sizes that add up, hard links
    /// to earlier files, attributes within Linux's limits.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let layer = self.label();
        check_header(
            &layer,
            self.format,
            &self.name,
            &self.version,
            &self.chunking,
            self.entries.len() as u64,
        )?;
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
            if e.meta.mtime_nsec >= 1_000_000_000 {
                return Err(bad("has an mtime with 1e9 or more nanoseconds"));
            }
            check_xattrs(&e.meta.xattrs).map_err(|p| bad(&p))?;
            if let Some(p) = prev {
                if p >= e.path.as_str() {
                    return Err(bad(if p == e.path {
                        "appears twice"
                    } else {
                        "is out of order (entries must be sorted by path)"
                    }));
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
                    Some(Node::File { .. } | Node::Hardlink { .. }) => {
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
                Node::Hardlink { target } => match kinds.get(target.as_str()) {
                    Some(Node::File { .. }) => {}
                    _ => {
                        return Err(bad(&format!(
                            "is a hard link to {target:?}, which is not an earlier file entry"
                        )))
                    }
                },
                Node::Dir => {}
            }
            kinds.insert(&e.path, &e.node);
        }
        Ok(())
    }

    /// Cuts the body, builds and signs the root. The body's chunks must be stored (or sent)
    /// beside the root: the root names them but does not hold them.
    pub fn sign(&self, key: &SigningKey) -> (SignedManifest, ManifestBody) {
        self.sign_by(key).expect("a root built here always checks")
    }

    /// [`LayerManifest::sign`] by whatever holds the manifest key: this process, or a signer
    /// reached over a socket, which may refuse.
    pub fn sign_by(
        &self,
        signer: &dyn RootSigner,
    ) -> Result<(SignedManifest, ManifestBody), String> {
        let body = self.body();
        let root = self.root(&body);
        let root_body = root.encode();
        let digest = *blake3::hash(&root_body).as_bytes();
        let signature = signer.sign_root(&root_body)?;
        let sm = SignedManifest { root_body, digest, signature, root, manifest: self.clone() };
        Ok((sm, body))
    }
}

/// Entries to write, in order, with every hard link whose file is not among them made a file
/// of its own (the first such name; later names link to it): a part of a tree restored alone
/// must not link to whatever the file outside it holds now.
pub fn detach_hardlinks(entries: &mut [Entry], file_of: impl Fn(&str) -> Option<Entry>) {
    let present: HashSet<String> = entries
        .iter()
        .filter(|e| matches!(e.node, Node::File { .. }))
        .map(|e| e.path.clone())
        .collect();
    // Target outside -> the name that became its file here.
    let mut moved: HashMap<String, String> = HashMap::new();
    for e in entries.iter_mut() {
        let Node::Hardlink { target } = &e.node else { continue };
        if present.contains(target) {
            continue;
        }
        if let Some(first) = moved.get(target) {
            e.node = Node::Hardlink { target: first.clone() };
        } else if let Some(file) = file_of(target) {
            moved.insert(target.clone(), e.path.clone());
            e.node = file.node;
            e.mode = file.mode;
            e.meta = file.meta;
        }
    }
}

/// What the root and the assembled manifest both carry: format, labels, chunking, and how
/// many entries.
fn check_header(
    layer: &str,
    format: u16,
    name: &str,
    version: &str,
    chunking: &ChunkParams,
    entries: u64,
) -> Result<(), ManifestError> {
    let invalid = |problem: String| ManifestError::Invalid { layer: layer.to_string(), problem };
    if format != MANIFEST_FORMAT {
        return Err(ManifestError::Format { layer: layer.to_string(), found: format });
    }
    validate_label("name", name).map_err(invalid)?;
    validate_label("version", version).map_err(invalid)?;
    chunking.validate().map_err(|e| invalid(e.to_string()))?;
    if entries > MAX_MANIFEST_ENTRIES {
        return Err(invalid(format!(
            "{entries} entries exceed the limit of {MAX_MANIFEST_ENTRIES}"
        )));
    }
    Ok(())
}

fn check_xattrs(xattrs: &[Xattr]) -> Result<(), String> {
    if xattrs.len() > MAX_XATTRS_PER_ENTRY {
        return Err(format!(
            "has {} extended attributes, more than {MAX_XATTRS_PER_ENTRY}",
            xattrs.len()
        ));
    }
    let mut prev: Option<&str> = None;
    for x in xattrs {
        if x.name.is_empty() || x.name.len() > MAX_XATTR_NAME_BYTES || x.name.contains('\0') {
            return Err(format!(
                "has an extended attribute name {:?} that is empty, longer than \
                 {MAX_XATTR_NAME_BYTES} bytes or holds NUL",
                x.name
            ));
        }
        if x.value.len() > MAX_XATTR_VALUE_BYTES {
            return Err(format!(
                "has extended attribute {} of {} bytes, more than {MAX_XATTR_VALUE_BYTES}",
                x.name,
                x.value.len()
            ));
        }
        if prev.is_some_and(|p| p >= x.name.as_str()) {
            return Err("has extended attributes out of order or twice".into());
        }
        prev = Some(&x.name);
    }
    Ok(())
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

impl ManifestRoot {
    /// Decodes an unsigned root and checks it: canonical, within every limit.
    pub fn from_canonical(root_body: &[u8]) -> Result<ManifestRoot, String> {
        let root: ManifestRoot =
            postcard::from_bytes(root_body).map_err(|e| format!("root does not decode: {e}"))?;
        if root.encode() != root_body {
            return Err(format!("{}: root is not in canonical form", root.label()));
        }
        root.validate().map_err(|e| e.to_string())?;
        Ok(root)
    }

    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Canonical root encoding (postcard). Deterministic for a given value.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("manifest roots always serialize")
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let layer = self.label();
        check_header(&layer, self.format, &self.name, &self.version, &self.chunking, self.entries)?;
        let invalid = |problem: String| ManifestError::Invalid { layer: layer.clone(), problem };
        if self.body.len() > MAX_BODY_CHUNKS {
            return Err(invalid(format!(
                "{} body chunks exceed the limit of {MAX_BODY_CHUNKS}",
                self.body.len()
            )));
        }
        if self.body_len > MAX_MANIFEST_BODY_BYTES {
            return Err(invalid(format!(
                "a body of {} bytes exceeds the limit of {MAX_MANIFEST_BODY_BYTES}",
                self.body_len
            )));
        }
        let mut sum = 0u64;
        for c in &self.body {
            if c.len == 0 || c.len > BODY_CHUNKING.max {
                return Err(invalid(format!(
                    "body chunk {} has {} bytes, outside 1..={}",
                    c.id, c.len, BODY_CHUNKING.max
                )));
            }
            sum += c.len as u64;
        }
        if sum != self.body_len {
            return Err(invalid(format!(
                "body chunks add up to {sum} bytes, the root says {}",
                self.body_len
            )));
        }
        Ok(())
    }

    /// Distinct body chunks, in order.
    pub fn unique_body_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.body.iter().filter(|c| seen.insert(c.id)).copied().collect()
    }
}

/// A manifest root whose signature verified, before its body is known.
#[derive(Clone, Debug)]
pub struct SignedRoot {
    pub root_body: Vec<u8>,
    pub digest: [u8; 32],
    pub signature: [u8; 64],
    pub root: ManifestRoot,
}

impl SignedRoot {
    /// Parses signed root bytes, checks the signature against `key`, then the root's limits.
    /// Nothing in the root is trusted before the signature verifies.
    pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<SignedRoot, ManifestError> {
        if bytes.len() > MAX_MANIFEST_ROOT_BYTES {
            return Err(ManifestError::Malformed(format!(
                "a root of {} bytes exceeds the limit of {MAX_MANIFEST_ROOT_BYTES}",
                bytes.len()
            )));
        }
        if bytes.len() < 4 + 64 || &bytes[..4] != SIGNED_MAGIC {
            let what = if bytes.starts_with(b"OAS1") {
                "a format 1 manifest; this build reads format 2 (OAS2)"
            } else {
                "truncated, or not a signed Oasis manifest (bad magic)"
            };
            return Err(ManifestError::Malformed(what.into()));
        }
        let signature: [u8; 64] = bytes[4..68].try_into().expect("length checked");
        let root_body = bytes[68..].to_vec();
        let digest = *blake3::hash(&root_body).as_bytes();
        // Peek at the label only for the error message; the root is not trusted yet.
        let layer = postcard::from_bytes::<ManifestRoot>(&root_body)
            .map(|m| m.label())
            .unwrap_or_else(|_| format!("(digest {})", hex::encode(&digest[..8])));
        key.verify(&signed_message(&digest), &Signature::from_bytes(&signature))
            .map_err(|_| ManifestError::BadSignature { layer: layer.clone() })?;
        let root: ManifestRoot = postcard::from_bytes(&root_body)
            .map_err(|e| ManifestError::Malformed(format!("{layer}: root does not decode: {e}")))?;
        if root.encode() != root_body {
            return Err(ManifestError::Malformed(format!(
                "{layer}: root is not in canonical form"
            )));
        }
        root.validate()?;
        Ok(SignedRoot { root_body, digest, signature, root })
    }

    pub fn label(&self) -> String {
        self.root.label()
    }

    /// Checks that this is the layer a client asked for: the name, and the version when one was
    /// named. A cache must never hand over another layer in place of the one requested.
    pub fn check_request(&self, name: &str, version: Option<&str>) -> Result<(), ManifestError> {
        let r = &self.root;
        if r.name != name || version.is_some_and(|v| v != r.version) {
            let want = match version {
                Some(v) => format!("{name}@{v}"),
                None => format!("{name} (latest)"),
            };
            return Err(ManifestError::Invalid {
                layer: r.label(),
                problem: format!("was sent in answer to a request for {want}"),
            });
        }
        Ok(())
    }

    /// Joins the body's chunks (each checked against its id), decodes and validates the
    /// entries. `chunk` gives a body chunk's plain bytes, or why it cannot.
    pub fn assemble(
        self,
        mut chunk: impl FnMut(&ChunkRef) -> Result<bytes::Bytes, String>,
    ) -> Result<SignedManifest, ManifestError> {
        let layer = self.label();
        let mut body = Vec::with_capacity(self.root.body_len as usize);
        for c in &self.root.body {
            let data = chunk(c).map_err(|problem| ManifestError::BodyUnavailable {
                layer: layer.clone(),
                id: c.id,
                problem,
            })?;
            if data.len() != c.len as usize || !c.id.verify(&data) {
                return Err(ManifestError::BodyUnavailable {
                    layer,
                    id: c.id,
                    problem: "its bytes do not match its id".into(),
                });
            }
            body.extend_from_slice(&data);
        }
        self.assemble_body(&body)
    }

    /// Decodes and validates a whole body whose chunks the caller has already joined.
    pub fn assemble_body(self, body: &[u8]) -> Result<SignedManifest, ManifestError> {
        let layer = self.label();
        let malformed = |problem: String| ManifestError::Malformed(format!("{layer}: {problem}"));
        if body.len() as u64 != self.root.body_len {
            return Err(malformed(format!(
                "body of {} bytes, the root says {}",
                body.len(),
                self.root.body_len
            )));
        }
        let mut at = 0usize;
        let mut pos = 0usize;
        for c in &self.root.body {
            let end = pos + c.len as usize;
            if !c.id.verify(&body[pos..end]) {
                return Err(malformed(format!("body chunk {} does not match its bytes", c.id)));
            }
            pos = end;
        }
        let mut entries = Vec::with_capacity(self.root.entries.min(1 << 20) as usize);
        let mut scratch = Vec::new();
        while at < body.len() {
            if entries.len() as u64 >= self.root.entries {
                return Err(malformed(format!(
                    "body holds more than the {} entries the root says",
                    self.root.entries
                )));
            }
            let (e, rest): (Entry, &[u8]) = postcard::take_from_bytes(&body[at..])
                .map_err(|e| malformed(format!("entry {} does not decode: {e}", entries.len())))?;
            let used = body.len() - at - rest.len();
            scratch.clear();
            scratch = postcard::to_extend(&e, scratch).expect("entries always serialize");
            if scratch[..] != body[at..at + used] {
                return Err(malformed(format!("entry {:?} is not in canonical form", e.path)));
            }
            at += used;
            entries.push(e);
        }
        if entries.len() as u64 != self.root.entries {
            return Err(malformed(format!(
                "body holds {} entries, the root says {}",
                entries.len(),
                self.root.entries
            )));
        }
        let r = &self.root;
        let manifest = LayerManifest {
            format: r.format,
            name: r.name.clone(),
            version: r.version.clone(),
            kind: r.kind,
            chunking: r.chunking,
            created: r.created,
            entries,
        };
        manifest.validate()?;
        let (files, bytes) =
            manifest.files().fold((0u64, 0u64), |(n, b), (_, s, _)| (n + 1, b + s));
        if (files, bytes) != (r.files, r.bytes) {
            return Err(ManifestError::Invalid {
                layer,
                problem: format!(
                    "body has {files} files of {bytes} bytes, the root says {} of {}",
                    r.files, r.bytes
                ),
            });
        }
        let SignedRoot { root_body, digest, signature, root } = self;
        Ok(SignedManifest { root_body, digest, signature, root, manifest })
    }
}

/// A manifest with its signed root, as stored and sent:
/// `"OAS2" | signature (64) | root (postcard ManifestRoot)`, the body in chunks beside it.
#[derive(Clone, Debug)]
pub struct SignedManifest {
    pub root_body: Vec<u8>,
    pub digest: [u8; 32],
    pub signature: [u8; 64],
    pub root: ManifestRoot,
    pub manifest: LayerManifest,
}

impl SignedManifest {
    /// The signed root, as stored and as sent in a `Manifest` frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        signed_root_bytes(&self.signature, &self.root_body)
    }

    /// Opens signed root bytes and assembles the body from `chunk`: the two steps of
    /// [`SignedRoot::open`] and [`SignedRoot::assemble`].
    pub fn open(
        bytes: &[u8],
        key: &VerifyingKey,
        chunk: impl FnMut(&ChunkRef) -> Result<bytes::Bytes, String>,
    ) -> Result<SignedManifest, ManifestError> {
        SignedRoot::open(bytes, key)?.assemble(chunk)
    }

    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }

    pub fn signed_root(&self) -> SignedRoot {
        SignedRoot {
            root_body: self.root_body.clone(),
            digest: self.digest,
            signature: self.signature,
            root: self.root.clone(),
        }
    }
}

impl SignedRoot {
    pub fn to_bytes(&self) -> Vec<u8> {
        signed_root_bytes(&self.signature, &self.root_body)
    }
}

fn signed_root_bytes(signature: &[u8; 64], root_body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 64 + root_body.len());
    out.extend_from_slice(SIGNED_MAGIC);
    out.extend_from_slice(signature);
    out.extend_from_slice(root_body);
    out
}

/// The layer digest of signed root bytes (BLAKE3 of the root after the 68-byte header), for
/// recognising a manifest already seen without opening it.
pub fn digest_of_signed(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes.get(68..).unwrap_or_default()).as_bytes()
}

/// A JSON view for people (`oasis-seed show`).
pub fn to_json(sm: &SignedManifest) -> serde_json::Value {
    let m = &sm.manifest;
    let entries: Vec<serde_json::Value> = m
        .entries
        .iter()
        .map(|e| {
            let mut v = serde_json::json!({
                "path": e.path,
                "mode": format!("{:o}", e.mode),
                "uid": e.meta.uid,
                "gid": e.meta.gid,
                "mtime": e.meta.mtime,
                "mtime_nsec": e.meta.mtime_nsec,
            });
            if !e.meta.xattrs.is_empty() {
                v["xattrs"] = e
                    .meta
                    .xattrs
                    .iter()
                    .map(|x| serde_json::json!({ "name": x.name, "value": hex::encode(&x.value) }))
                    .collect();
            }
            match &e.node {
                Node::Dir => v["type"] = "dir".into(),
                Node::Symlink { target } => {
                    v["type"] = "symlink".into();
                    v["target"] = target.clone().into();
                }
                Node::Hardlink { target } => {
                    v["type"] = "hardlink".into();
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
        "body_bytes": sm.root.body_len,
        "body_chunks": sm.root.body.len(),
        "entries": entries,
    })
}

#[cfg(test)]
mod tests;
