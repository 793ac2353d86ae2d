//! Shared test helpers: building layers in memory and serving them from an in-process QUIC
//! server with fault injection (corrupt chunks, missing chunks, dying mid-download).

#![allow(dead_code)]

use bytes::Bytes;
use oasis_core::chunk::{self, ChunkParams};
use oasis_core::compress::{Encoding, StoredChunk};
use oasis_core::manifest::{digest_of_signed, Latest};
use oasis_core::manifest::{ChunkRef, Entry, LayerKind, LayerManifest, Node, MANIFEST_FORMAT};
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, ContentSource, LatestAnswer, SourceError, TransportOptions};
use oasis_core::pki::{NodeIdentity, Role, SeedAuthority};
use oasis_core::wire::LayerRef;
use oasis_core::ChunkId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Small chunks so test files have many of them.
pub const PARAMS: ChunkParams = ChunkParams { min: 1024, avg: 4096, max: 16384 };

pub enum Item {
    Dir(&'static str, u32),
    File(&'static str, u32, Vec<u8>),
    Link(&'static str, &'static str),
    /// Another name of the file at the second path (which must come earlier).
    Hardlink(&'static str, &'static str),
}

/// A layer built in memory: its manifest and the plain bytes of its chunks.
pub struct Layer {
    pub manifest: LayerManifest,
    pub chunks: HashMap<ChunkId, Bytes>,
}

pub fn layer(name: &str, version: &str, items: Vec<Item>) -> Layer {
    let mut entries = Vec::new();
    let mut chunks = HashMap::new();
    for it in items {
        match it {
            Item::Dir(p, mode) => entries.push(Entry::new(p, mode, Node::Dir)),
            Item::Link(p, t) => {
                entries.push(Entry::new(p, 0o777, Node::Symlink { target: t.into() }))
            }
            Item::Hardlink(p, t) => {
                entries.push(Entry::new(p, 0o644, Node::Hardlink { target: t.into() }))
            }
            Item::File(p, mode, data) => {
                let mut refs = Vec::new();
                for s in chunk::cut(&data, &PARAMS) {
                    let bytes = &data[s.offset as usize..(s.offset + s.len as u64) as usize];
                    let id = ChunkId::of(bytes);
                    chunks.insert(id, Bytes::copy_from_slice(bytes));
                    refs.push(ChunkRef { id, len: s.len });
                }
                entries.push(Entry::new(
                    p,
                    mode,
                    Node::File { size: data.len() as u64, chunks: refs },
                ));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    // A hard link's mode and metadata are its file's.
    for i in 0..entries.len() {
        if let Node::Hardlink { target } = &entries[i].node {
            let t = entries.iter().find(|e| &e.path == target).expect("link target listed");
            let (mode, meta) = (t.mode, t.meta.clone());
            entries[i].mode = mode;
            entries[i].meta = meta;
        }
    }
    let manifest = LayerManifest {
        format: MANIFEST_FORMAT,
        name: name.into(),
        version: version.into(),
        kind: LayerKind::App,
        chunking: PARAMS,
        created: 1,
        entries,
    };
    manifest.validate().expect("test layer is valid");
    Layer { manifest, chunks }
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A typical small layer: nested dirs, a big file, an empty file, a symlink, odd modes.
pub fn sample_layer(version: &str) -> Layer {
    layer(
        "app",
        version,
        vec![
            Item::Dir("bin", 0o755),
            Item::File("bin/tool", 0o755, noise(1, 300_000)),
            Item::Link("bin/tool-link", "tool"),
            Item::Dir("etc", 0o750),
            Item::File("etc/config", 0o640, b"key = value\n".to_vec()),
            Item::File("etc/empty", 0o600, Vec::new()),
            Item::Dir("a", 0o755),
            Item::Dir("a/b", 0o755),
            Item::Dir("a/b/c", 0o755),
            Item::Dir("a/b/c/d", 0o555),
            Item::File("a/b/c/d/deep.bin", 0o444, noise(2, 70_000)),
            Item::File("dup", 0o644, noise(1, 300_000)),
        ],
    )
}

/// Compares the tree under `root` with the layer: bytes, modes, symlink targets.
pub fn assert_tree(root: &Path, l: &Layer) {
    use std::os::unix::fs::PermissionsExt;
    for e in &l.manifest.entries {
        let p = root.join(&e.path);
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{}: {err}", e.path));
        match &e.node {
            Node::Dir => assert!(md.is_dir(), "{} should be a dir", e.path),
            Node::Symlink { target } => {
                assert!(md.file_type().is_symlink(), "{} should be a symlink", e.path);
                assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from(target));
                continue;
            }
            Node::File { chunks, .. } => {
                assert!(md.is_file(), "{} should be a file", e.path);
                let want: Vec<u8> =
                    chunks.iter().flat_map(|c| l.chunks[&c.id].iter().copied()).collect();
                assert_eq!(std::fs::read(&p).unwrap(), want, "content of {}", e.path);
            }
            Node::Hardlink { target } => {
                use std::os::unix::fs::MetadataExt;
                let t = std::fs::symlink_metadata(root.join(target)).unwrap();
                assert_eq!((md.dev(), md.ino()), (t.dev(), t.ino()), "{} is {target}", e.path);
            }
        }
        assert_eq!(md.permissions().mode() & 0o7777, e.mode, "mode of {}", e.path);
    }
}

/// Every path under `root` (relative), sorted; symlinks not followed.
pub fn listing(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// In-process servers
// ---------------------------------------------------------------------------------------------

/// A root of trust and an enrolled endpoint state dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub authority: SeedAuthority,
    pub state: PathBuf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let authority = SeedAuthority::init(&dir.path().join("seed")).unwrap();
    let state = dir.path().join("endpoint-state");
    authority.enroll(Role::Endpoint, "ep1", None, &state, false).unwrap();
    Pki { dir, authority, state }
}

impl Pki {
    /// The signed root of `m`, as a `Manifest` frame carries it.
    pub fn sign(&self, m: &LayerManifest) -> Bytes {
        Bytes::from(m.sign(self.authority.signing_key()).0.to_bytes())
    }
}

/// Compares owner, mode, mtime (ns) and extended attributes of every entry under `root` with
/// the layer's (owners only when `owners`; the attributes the layer lists must be there).
pub fn assert_meta(root: &Path, l: &Layer, owners: bool) {
    use std::os::unix::fs::MetadataExt;
    for e in &l.manifest.entries {
        let p = root.join(&e.path);
        let md = std::fs::symlink_metadata(&p).unwrap();
        let what = &e.path;
        if owners {
            assert_eq!((md.uid(), md.gid()), (e.meta.uid, e.meta.gid), "owner of {what}");
        }
        if !md.file_type().is_symlink() {
            assert_eq!(md.mode() & 0o7777, e.mode, "mode of {what}");
        }
        assert_eq!(
            (md.mtime(), md.mtime_nsec() as u32),
            (e.meta.mtime, e.meta.mtime_nsec),
            "mtime of {what}"
        );
        let have = oasis_core::fsmeta::read_xattrs(&p).unwrap();
        for x in &e.meta.xattrs {
            assert!(have.contains(x), "{what} lacks xattr {}: {have:?}", x.name);
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    oasis_core::fsmeta::Writer::current().root
}

/// Whether the filesystem of `dir` takes `user.*` extended attributes.
pub fn user_xattrs(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    let _ = std::fs::write(&probe, b"");
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// Faults a [`MemSource`] injects.
#[derive(Default)]
pub struct Faults {
    /// Serve these chunks corrupted this many times (u32::MAX: always).
    pub corrupt: Mutex<HashMap<ChunkId, u32>>,
    /// Answer Missing for these.
    pub missing: HashSet<ChunkId>,
    /// Close the whole endpoint after serving this many chunks.
    pub die_after: Option<usize>,
    /// Answer a manifest request without a version with this version's root, whatever the
    /// latest statement says (a cache that has not caught up with a publish).
    pub unversioned_root: Option<String>,
}

pub struct MemSource {
    pub manifests: HashMap<(String, String), Bytes>,
    pub latest: HashMap<String, String>,
    pub chunks: HashMap<ChunkId, StoredChunk>,
    pub faults: Faults,
    pub served: AtomicUsize,
    /// The version of every manifest request, in the order they came.
    pub manifest_asks: Mutex<Vec<Option<String>>>,
    pub endpoint: OnceLock<quinn::Endpoint>,
    /// Signs latest statements as the seed does.
    key: ed25519_dalek::SigningKey,
}

impl MemSource {
    pub fn new(pki: &Pki, layers: &[&Layer]) -> MemSource {
        let mut s = MemSource {
            manifests: HashMap::new(),
            latest: HashMap::new(),
            chunks: HashMap::new(),
            faults: Faults::default(),
            served: AtomicUsize::new(0),
            manifest_asks: Mutex::new(Vec::new()),
            endpoint: OnceLock::new(),
            key: pki.authority.signing_key().clone(),
        };
        for l in layers {
            s.add(pki, l);
        }
        s
    }

    /// Serves `l`: its signed root, its body chunks and its file chunks.
    pub fn add(&mut self, pki: &Pki, l: &Layer) {
        let m = &l.manifest;
        let (sm, body) = m.sign(pki.authority.signing_key());
        self.manifests.insert((m.name.clone(), m.version.clone()), Bytes::from(sm.to_bytes()));
        self.latest.insert(m.name.clone(), m.version.clone());
        for (c, piece) in body.pieces() {
            self.chunks.insert(c.id, StoredChunk::encode_with_id(c.id, piece));
        }
        for (id, b) in &l.chunks {
            self.chunks.insert(*id, StoredChunk::encode_with_id(*id, b));
        }
    }
}

impl ContentSource for MemSource {
    async fn manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, SourceError> {
        self.manifest_asks.lock().unwrap().push(version.map(str::to_string));
        let version = match (version, &self.faults.unversioned_root) {
            (Some(v), _) => v.to_string(),
            (None, Some(v)) => v.clone(),
            (None, None) => match self.latest.get(name) {
                Some(v) => v.clone(),
                None => return Ok(None),
            },
        };
        Ok(self.manifests.get(&(name.to_string(), version)).cloned())
    }

    async fn latest(&self, name: &str) -> Result<Option<LatestAnswer>, SourceError> {
        let Some(version) = self.latest.get(name) else { return Ok(None) };
        let root = &self.manifests[&(name.to_string(), version.clone())];
        let issued =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let statement = Latest {
            name: name.to_string(),
            version: version.clone(),
            digest: digest_of_signed(root),
            issued,
            expires: issued + 3600,
        }
        .sign(&self.key);
        Ok(Some(LatestAnswer { statement: statement.into(), note: String::new() }))
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        if self.faults.missing.contains(&id) {
            return Ok(None);
        }
        let n = self.served.fetch_add(1, Ordering::SeqCst);
        if let Some(limit) = self.faults.die_after {
            if n >= limit {
                if let Some(ep) = self.endpoint.get() {
                    ep.close(0u32.into(), b"dying");
                }
                return Err(SourceError::Unavailable("dying".into()));
            }
        }
        let Some(c) = self.chunks.get(&id) else { return Ok(None) };
        let mut corrupt = self.faults.corrupt.lock().unwrap();
        if let Some(left) = corrupt.get_mut(&id) {
            if *left > 0 {
                if *left != u32::MAX {
                    *left -= 1;
                }
                let mut data = c.data.to_vec();
                let mid = data.len() / 2;
                data[mid] ^= 0x55;
                return Ok(Some(StoredChunk {
                    id,
                    encoding: Encoding::Raw,
                    plain_len: c.plain_len,
                    data: Bytes::from(if c.encoding == Encoding::Raw {
                        data
                    } else {
                        vec![0u8; c.plain_len as usize]
                    }),
                }));
            }
        }
        Ok(Some(c.clone()))
    }

    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        Ok(ids.iter().map(|id| self.chunks.contains_key(id)).collect())
    }

    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        Ok(Vec::new())
    }
}

/// Serves `source` on 127.0.0.1 with a node identity of `role`; returns its address.
pub fn serve(pki: &Pki, role: Role, name: &str, source: MemSource) -> (SocketAddr, Arc<MemSource>) {
    let id: NodeIdentity = match role {
        Role::Seed => pki.authority.node_identity().unwrap(),
        other => pki.authority.issue(other, name, None).unwrap(),
    };
    let ep =
        net::server_endpoint("127.0.0.1:0".parse().unwrap(), &id, &TransportOptions::default())
            .unwrap();
    let addr = ep.local_addr().unwrap();
    let source = Arc::new(source);
    let _ = source.endpoint.set(ep.clone());
    tokio::spawn(net::serve(ep, net::Router::new(source.clone()), Arc::new(NodeMetrics::new())));
    (addr, source)
}
