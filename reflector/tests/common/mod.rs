//! A stand-in seed for the reflector's own tests: a root of trust, a chunk store with signed
//! layers (format 2: root + body chunks) served over real QUIC on 127.0.0.1, and counters of
//! what it sent, so tests can tell what crossed the "WAN".

#![allow(dead_code)]

use bytes::Bytes;
use oasis_core::chunk::ChunkParams;
use oasis_core::compress::StoredChunk;
use oasis_core::manifest::{
    ChunkRef, Entry, LayerKind, LayerManifest, Meta, Node, SignedManifest, MANIFEST_FORMAT,
};
use oasis_core::metrics::NodeMetrics;
use oasis_core::net::{self, Client, ContentSource, SourceError, TransportOptions};
use oasis_core::pki::{NodeIdentity, PeerInfo, Role, SeedAuthority};
use oasis_core::store::ChunkStore;
use oasis_core::wire::{Assignment, LayerRef};
use oasis_core::ChunkId;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the upstream sent.
#[derive(Default)]
pub struct Sent {
    pub manifests: AtomicU64,
    pub manifest_bytes: AtomicU64,
    pub chunks: AtomicU64,
    pub chunk_bytes: AtomicU64,
}

pub struct Upstream {
    pub store: ChunkStore,
    pub sent: Sent,
    /// Answer every manifest request with these bytes instead (a confused or hostile upstream).
    pub lie: Mutex<Option<Bytes>>,
    /// What `GetAssignments` answers.
    pub assigned: Mutex<Vec<Assignment>>,
    /// Seals the entitlement statements: every layer stored is every site's.
    pub manifest_key: ed25519_dalek::SigningKey,
}

impl ContentSource for Upstream {
    async fn manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, SourceError> {
        let lie = self.lie.lock().unwrap().clone();
        let bytes = match lie {
            Some(b) => Some(b),
            None => self
                .store
                .manifest_bytes(name, version)
                .map_err(|e| SourceError::Internal(e.to_string()))?,
        };
        if let Some(b) = &bytes {
            self.sent.manifests.fetch_add(1, Ordering::Relaxed);
            self.sent.manifest_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        Ok(bytes)
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        let c = self.store.get(&id).map_err(|e| SourceError::Internal(e.to_string()))?;
        if let Some(c) = &c {
            self.sent.chunks.fetch_add(1, Ordering::Relaxed);
            self.sent.chunk_bytes.fetch_add(c.data.len() as u64, Ordering::Relaxed);
        }
        Ok(c)
    }

    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        self.store.have(ids).map_err(|e| SourceError::Internal(e.to_string()))
    }

    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        self.store.layer_refs().map_err(|e| SourceError::Internal(e.to_string()))
    }

    async fn assignments(&self, _peer: &PeerInfo) -> Result<Vec<Assignment>, SourceError> {
        Ok(self.assigned.lock().unwrap().clone())
    }

    async fn entitlements(
        &self,
        peer: &PeerInfo,
        site: Option<&str>,
        known: [u8; 32],
    ) -> Result<(Bytes, Bytes), SourceError> {
        use oasis_core::entitlement::Entitlements;
        use oasis_core::seal::{Seal, Sealed};
        let site = site.or(peer.site.as_deref()).unwrap_or_default().to_string();
        let names = self.store.layer_refs().map_err(|e| SourceError::Internal(e.to_string()))?;
        let statement =
            Entitlements::new(site.clone(), 1, names.into_iter().map(|l| l.name), []).encode();
        let digest = Entitlements::digest_of(&statement);
        if digest == known {
            return Ok((Bytes::new(), Bytes::new()));
        }
        let seal = Seal { sealed: Sealed::Entitlements { site, digest }, issued: 1 }
            .sign(&self.manifest_key);
        Ok((statement.into(), seal.into()))
    }
}

/// A published layer as the tests see it.
pub struct Published {
    pub sm: SignedManifest,
    pub root_bytes: Vec<u8>,
    /// Distinct body chunks and the bytes they take as stored (= as sent).
    pub body_chunks: Vec<ChunkRef>,
    pub body_stored_bytes: u64,
    pub file_chunks: Vec<ChunkRef>,
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub authority: SeedAuthority,
    pub upstream: Arc<Upstream>,
    pub addr: SocketAddr,
    endpoint: quinn::Endpoint,
}

impl World {
    /// A root of trust and an upstream serving an empty store on 127.0.0.1.
    pub async fn start() -> anyhow::Result<World> {
        let dir = tempfile::tempdir()?;
        let authority = SeedAuthority::init(&dir.path().join("seed"))?;
        let store = ChunkStore::open(&dir.path().join("seed/store"))?;
        let upstream = Arc::new(Upstream {
            store,
            sent: Sent::default(),
            lie: Mutex::new(None),
            assigned: Mutex::new(Vec::new()),
            manifest_key: authority.signing_key().clone(),
        });
        let id = authority.node_identity()?;
        let endpoint =
            net::server_endpoint("127.0.0.1:0".parse()?, &id, &TransportOptions::default())?;
        let addr = endpoint.local_addr()?;
        tokio::spawn(net::serve(
            endpoint.clone(),
            net::Router::new(upstream.clone()),
            Arc::new(NodeMetrics::new()),
        ));
        Ok(World { dir, authority, upstream, addr, endpoint })
    }

    /// Stops answering (connections are closed).
    pub fn stop_upstream(&self) {
        self.endpoint.close(0u32.into(), b"upstream gone");
    }

    /// Enrolls a node of `role` in site "lab" and returns its state directory.
    pub fn enroll(&self, role: Role, name: &str) -> anyhow::Result<PathBuf> {
        let state = self.dir.path().join(name);
        if !state.join("node.key").exists() {
            self.authority.enroll(role, name, Some("lab"), &state, false)?;
        }
        Ok(state)
    }

    /// An endpoint's connection to `to`.
    pub async fn endpoint_client(&self, name: &str, to: SocketAddr) -> anyhow::Result<Client> {
        let state = self.enroll(Role::Endpoint, name)?;
        let id = NodeIdentity::load(&state)?;
        let ep = net::client_endpoint(&id, &TransportOptions::default())?;
        Ok(Client::connect(&ep, to, oasis_core::net::accept::ANY).await?)
    }

    pub fn manifest_key(&self) -> ed25519_dalek::VerifyingKey {
        *self.authority.trust().manifest_key()
    }

    /// Signs `m` and stores it upstream (root, body chunks, and the file chunks `data` gives).
    pub fn publish(
        &self,
        m: &LayerManifest,
        data: impl Fn(&ChunkRef) -> Vec<u8>,
    ) -> anyhow::Result<Published> {
        let store = &self.upstream.store;
        let file_chunks = m.unique_chunks();
        for c in &file_chunks {
            store.put(&StoredChunk::encode_with_id(c.id, &data(c)))?;
        }
        let (sm, body) = m.sign(self.authority.signing_key());
        store.put_manifest(&sm, &body)?;
        let body_chunks = sm.root.unique_body_chunks();
        let mut body_stored_bytes = 0;
        for c in &body_chunks {
            body_stored_bytes += store.entry(&c.id)?.expect("stored").stored_len as u64;
        }
        Ok(Published { root_bytes: sm.to_bytes(), sm, body_chunks, body_stored_bytes, file_chunks })
    }

    pub fn sent(&self) -> (u64, u64, u64, u64) {
        let s = &self.upstream.sent;
        (
            s.manifests.load(Ordering::Relaxed),
            s.manifest_bytes.load(Ordering::Relaxed),
            s.chunks.load(Ordering::Relaxed),
            s.chunk_bytes.load(Ordering::Relaxed),
        )
    }
}

/// The bytes of a file chunk made by [`layer`]: `len` bytes derived from `n`.
pub fn file_bytes(n: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        // xorshift: distinct, incompressible enough content per file.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A layer of `files` files (one chunk of `file_len` bytes each) in directories of 1000, with
/// paths and metadata of a realistic size, and the function giving each chunk's bytes.
pub fn layer(
    name: &str,
    version: &str,
    files: u64,
    file_len: usize,
) -> (LayerManifest, impl Fn(&ChunkRef) -> Vec<u8>) {
    let mut entries = Vec::with_capacity(files as usize + files as usize / 1000 + 2);
    entries.push(Entry::new("usr", 0o755, Node::Dir));
    let mut ids = std::collections::HashMap::new();
    let dirs = files.div_ceil(1000);
    for d in 0..dirs {
        let dir = format!("usr/share/package-{d:05}");
        if d == 0 {
            entries.push(Entry::new("usr/share", 0o755, Node::Dir));
        }
        entries.push(Entry::new(dir.clone(), 0o755, Node::Dir));
        for f in (d * 1000)..((d + 1) * 1000).min(files) {
            let bytes = file_bytes(f, file_len);
            let c = ChunkRef { id: ChunkId::of(&bytes), len: file_len as u32 };
            ids.insert(c.id, f);
            let mut e = Entry::new(
                format!("{dir}/lib/module-{f:07}.so"),
                0o644,
                Node::File { size: file_len as u64, chunks: vec![c] },
            );
            e.meta = Meta {
                uid: 1000,
                gid: 1000,
                mtime: 1_700_000_000 + f as i64,
                mtime_nsec: (f % 1_000_000_000) as u32,
                xattrs: vec![],
            };
            entries.push(e);
        }
    }
    // Directories sort before their contents; "usr/share/package-…/lib" is implied by the
    // files: add those directory entries and sort.
    let libs: Vec<Entry> = (0..dirs)
        .map(|d| Entry::new(format!("usr/share/package-{d:05}/lib"), 0o755, Node::Dir))
        .collect();
    entries.extend(libs);
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let m = LayerManifest {
        format: MANIFEST_FORMAT,
        name: name.into(),
        version: version.into(),
        kind: LayerKind::Base,
        chunking: ChunkParams::default(),
        created: 1_700_000_000,
        entries,
    };
    let data = move |c: &ChunkRef| file_bytes(ids[&c.id], c.len as usize);
    (m, data)
}

/// Waits until `f` holds, up to `limit`.
pub async fn wait_until(limit: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    f()
}

pub fn state_cache(state: &Path) -> PathBuf {
    state.join("cache")
}
