//! Real QUIC on 127.0.0.1: a server over an in-memory source, clients good and bad.

use super::*;
use crate::chunk::ChunkId;
use crate::compress::StoredChunk;
use crate::metrics::NodeMetrics;
use crate::pki::{PeerInfo, Role, SeedAuthority};
use crate::wire::{frame_type, ErrorCode, Frame, LayerRef, MAX_FRAME_BYTES, MAX_REQUEST_BYTES};
use bytes::{BufMut, Bytes, BytesMut};
use rand::{rngs::StdRng, Rng, RngCore, SeedableRng};
use std::collections::HashMap;
use std::time::Instant;
use tempfile::TempDir;

mod limits;

#[derive(Default)]
struct MemSource {
    /// (name, version) -> signed manifest bytes.
    manifests: HashMap<(String, String), Bytes>,
    latest: HashMap<String, String>,
    chunks: HashMap<ChunkId, StoredChunk>,
    layers: Vec<LayerRef>,
    /// Roles refused by `admits`.
    refuse: Vec<Role>,
    /// Chunk lookups of this id fail with Unavailable.
    failing: Option<ChunkId>,
}

impl MemSource {
    fn add_chunk(&mut self, plain: &[u8]) -> StoredChunk {
        let c = StoredChunk::encode(plain);
        self.chunks.insert(c.id, c.clone());
        c
    }

    fn add_manifest(&mut self, name: &str, version: &str, bytes: &'static [u8]) {
        self.manifests.insert((name.into(), version.into()), Bytes::from_static(bytes));
        self.latest.insert(name.into(), version.into());
        self.layers.push(LayerRef {
            name: name.into(),
            version: version.into(),
            digest: *blake3::hash(bytes).as_bytes(),
        });
    }
}

impl ContentSource for MemSource {
    async fn manifest(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Bytes>, SourceError> {
        let version = match version {
            Some(v) => v.to_string(),
            None => match self.latest.get(name) {
                Some(v) => v.clone(),
                None => return Ok(None),
            },
        };
        Ok(self.manifests.get(&(name.to_string(), version)).cloned())
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<StoredChunk>, SourceError> {
        if self.failing == Some(id) {
            return Err(SourceError::Unavailable("upstream unreachable".into()));
        }
        Ok(self.chunks.get(&id).cloned())
    }

    async fn have(&self, ids: &[ChunkId]) -> Result<Vec<bool>, SourceError> {
        Ok(ids.iter().map(|id| self.chunks.contains_key(id)).collect())
    }

    async fn layers(&self) -> Result<Vec<LayerRef>, SourceError> {
        Ok(self.layers.clone())
    }

    fn admits(&self, peer: &PeerInfo) -> bool {
        !self.refuse.contains(&peer.role)
    }
}

struct Net {
    auth: SeedAuthority,
    _dir: TempDir,
    addr: SocketAddr,
    server: quinn::Endpoint,
    serving: tokio::task::JoinHandle<()>,
    client_ep: quinn::Endpoint,
    metrics: Arc<NodeMetrics>,
}

impl Net {
    async fn start(source: MemSource) -> Net {
        Self::start_with(source, ServeLimits::default()).await
    }

    async fn start_with(source: MemSource, limits: ServeLimits) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let auth = SeedAuthority::init(dir.path()).unwrap();
        let seed = auth.node_identity().unwrap();
        let opts = TransportOptions::default();
        let server =
            server_endpoint("127.0.0.1:0".parse().unwrap(), &seed, &limits.transport(&opts))
                .unwrap();
        let addr = server.local_addr().unwrap();
        let metrics = Arc::new(NodeMetrics::new());
        let serving = tokio::spawn(serve(
            server.clone(),
            Router::new(Arc::new(source)).limits(limits),
            metrics.clone(),
        ));
        let id = auth.issue(Role::Endpoint, "ep-1", Some("lab")).unwrap();
        let client_ep = client_endpoint(&id, &opts).unwrap();
        Net { auth, _dir: dir, addr, server, serving, client_ep, metrics }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.client_ep, self.addr, accept::ANY).await.unwrap()
    }
}

/// Polls `cond` for up to 5 s (server-side bookkeeping runs in its own tasks).
async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// 500 ids: most held (half compressible, half random), every 10th not held.
fn chunk_set(source: &mut MemSource, seed: u64) -> (Vec<ChunkId>, HashMap<ChunkId, StoredChunk>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::new();
    let mut held = HashMap::new();
    for i in 0..500 {
        let len = rng.gen_range(1..64 * 1024);
        let plain = if i % 2 == 0 {
            let byte = rng.gen::<u8>();
            vec![byte; len]
        } else {
            random_bytes(&mut rng, len)
        };
        if i % 10 == 3 {
            ids.push(ChunkId::of(&plain));
        } else {
            let c = source.add_chunk(&plain);
            ids.push(c.id);
            held.insert(c.id, c);
        }
    }
    (ids, held)
}

async fn collect(replies: &mut ChunkReplies) -> Result<Vec<ChunkReply>, NetError> {
    let mut out = Vec::new();
    while let Some(r) = replies.next().await? {
        out.push(r);
    }
    Ok(out)
}

fn check_replies(ids: &[ChunkId], held: &HashMap<ChunkId, StoredChunk>, got: &[ChunkReply]) {
    assert_eq!(got.len(), ids.len());
    for (id, reply) in ids.iter().zip(got) {
        match reply {
            ChunkReply::Chunk(c) => {
                assert_eq!(held.get(id), Some(c), "chunk {id} differs");
                c.decode_verified().unwrap();
            }
            ChunkReply::Missing(m) => {
                assert_eq!(m, id);
                assert!(!held.contains_key(id), "held chunk {id} reported missing");
            }
        }
    }
}

/// Sends raw bytes as a request on a new stream of `conn` and reads the answer frames.
async fn raw_request(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> Vec<Frame> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The server may stop reading early (oversized request): a write error is fine.
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    let mut frames = Vec::new();
    while let Some((ty, body)) = read_frame(&mut recv, MAX_FRAME_BYTES).await.unwrap() {
        frames.push(Frame::decode(ty, body).unwrap());
    }
    frames
}

fn error_code(frames: &[Frame]) -> ErrorCode {
    match frames {
        [Frame::Error { code, .. }] => *code,
        other => panic!("expected one Error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_fetch_layers_and_not_found() {
    let mut source = MemSource::default();
    source.add_manifest("base", "1", b"signed manifest v1");
    source.add_manifest("base", "2", b"signed manifest v2");
    let net = Net::start(source).await;
    let client = net.client().await;
    assert_eq!(client.peer().role, Role::Seed);
    assert_eq!(client.remote_addr(), net.addr);

    assert_eq!(&client.manifest("base", Some("1")).await.unwrap()[..], b"signed manifest v1");
    assert_eq!(&client.manifest("base", None).await.unwrap()[..], b"signed manifest v2");
    let err = client.manifest("base", Some("9")).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.addr(), net.addr);
    let err = client.manifest("nope", None).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(net.metrics.request_errors.get(), 2);

    let long = "x".repeat(300);
    assert!(matches!(client.manifest(&long, None).await.unwrap_err(), NetError::Request { .. }));

    let layers = client.layers().await.unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1].version, "2");
    client.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_chunks_in_order_with_missing() {
    let mut source = MemSource::default();
    let (ids, held) = chunk_set(&mut source, 1);
    let net = Net::start(source).await;
    let client = net.client().await;
    let mut replies = client.chunks(ids.clone()).await.unwrap();
    assert_eq!(replies.remaining(), 500);
    let got = collect(&mut replies).await.unwrap();
    check_replies(&ids, &held, &got);
    assert_eq!(replies.remaining(), 0);
    assert!(replies.next().await.unwrap().is_none(), "stays at the end");
    assert_eq!(got.iter().filter(|r| matches!(r, ChunkReply::Missing(_))).count(), 50);

    // Empty request: just End.
    let mut replies = client.chunks(Vec::new()).await.unwrap();
    assert!(replies.next().await.unwrap().is_none());

    // Too many ids are refused locally.
    let too_many = vec![ids[0]; wire::MAX_IDS_PER_REQUEST + 1];
    assert!(matches!(client.chunks(too_many).await.unwrap_err(), NetError::Request { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_on_one_connection() {
    let mut source = MemSource::default();
    let (ids, held) = chunk_set(&mut source, 2);
    let net = Net::start(source).await;
    let client = net.client().await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let client = client.clone();
            let mut ids = ids.clone();
            ids.rotate_left(i * 13);
            ids.truncate(100 + i * 10);
            let held = held.clone();
            tokio::spawn(async move {
                let mut replies = client.chunks(ids.clone()).await.unwrap();
                let got = collect(&mut replies).await.unwrap();
                check_replies(&ids, &held, &got);
                if i % 4 == 0 {
                    let flags = client.have(&ids).await.unwrap();
                    assert_eq!(flags.len(), ids.len());
                }
                got.len()
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, (0..32).map(|i| 100 + i * 10).sum::<usize>());
    assert_eq!(net.metrics.connections.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn have_bitmap() {
    let mut source = MemSource::default();
    let (ids, held) = chunk_set(&mut source, 3);
    let net = Net::start(source).await;
    let client = net.client().await;
    let flags = client.have(&ids).await.unwrap();
    let want: Vec<bool> = ids.iter().map(|id| held.contains_key(id)).collect();
    assert_eq!(flags, want);
    assert_eq!(client.have(&[]).await.unwrap(), Vec::<bool>::new());
    assert_eq!(client.have(&ids[3..4]).await.unwrap(), vec![false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_gets_too_large_and_server_stays_up() {
    let mut source = MemSource::default();
    source.add_manifest("base", "1", b"m1");
    let net = Net::start(source).await;
    let bad = net.client().await;

    // A length prefix over the request limit, followed by a little data.
    let mut req = BytesMut::new();
    req.put_u32((MAX_REQUEST_BYTES + 1) as u32);
    req.put_u8(frame_type::GET_CHUNKS);
    req.put_slice(&[0u8; 100]);
    let frames = raw_request(bad.connection(), &req, true).await;
    assert_eq!(error_code(&frames), ErrorCode::TooLarge);

    // Huge prefix without finishing the stream: still answered right away.
    let frames = raw_request(bad.connection(), &u32::MAX.to_be_bytes(), false).await;
    assert_eq!(error_code(&frames), ErrorCode::TooLarge);

    // A real GetChunks frame over the limit (claims too many ids) is also refused.
    let mut req = BytesMut::new();
    req.put_u32(1 + 4);
    req.put_u8(frame_type::GET_CHUNKS);
    req.put_u32(u32::MAX);
    let frames = raw_request(bad.connection(), &req, true).await;
    assert_eq!(error_code(&frames), ErrorCode::Malformed);
    assert_eq!(net.metrics.request_errors.get(), 3);

    // The same connection and a new client are both served.
    assert_eq!(&bad.manifest("base", None).await.unwrap()[..], b"m1");
    let good = net.client().await;
    assert_eq!(&good.manifest("base", Some("1")).await.unwrap()[..], b"m1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_requests_get_typed_errors() {
    let mut source = MemSource::default();
    source.add_manifest("base", "1", b"m1");
    let net = Net::start(source).await;
    let client = net.client().await;
    let conn = client.connection();

    // Unknown type byte.
    assert_eq!(
        error_code(&raw_request(conn, &[0, 0, 0, 1, 0x42], true).await),
        ErrorCode::UnknownType
    );
    // An answer type is not a request.
    let chunk = Frame::Chunk(StoredChunk::encode(b"hi")).to_bytes();
    assert_eq!(error_code(&raw_request(conn, &chunk, true).await), ErrorCode::UnknownType);
    // Length 0.
    assert_eq!(error_code(&raw_request(conn, &[0, 0, 0, 0], true).await), ErrorCode::Malformed);
    // GetChunks whose body does not match its count.
    let mut req = BytesMut::new();
    req.put_u32(1 + 4 + 10);
    req.put_u8(frame_type::GET_CHUNKS);
    req.put_u32(1);
    req.put_slice(&[7u8; 10]);
    assert_eq!(error_code(&raw_request(conn, &req, true).await), ErrorCode::Malformed);
    // Half a frame, then the end of the stream.
    let full = Frame::GetManifest { name: "base".into(), version: None }.to_bytes();
    assert_eq!(error_code(&raw_request(conn, &full[..6], true).await), ErrorCode::Malformed);
    // Two requests on one stream.
    let two = [&full[..], &full[..]].concat();
    assert_eq!(error_code(&raw_request(conn, &two, true).await), ErrorCode::Malformed);
    // Nothing at all.
    assert_eq!(error_code(&raw_request(conn, &[], true).await), ErrorCode::Malformed);
    assert_eq!(net.metrics.request_errors.get(), 7);

    // The connection still works.
    assert_eq!(&client.manifest("base", None).await.unwrap()[..], b"m1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_streams_do_not_hurt_others() {
    let mut source = MemSource::default();
    let (ids, held) = chunk_set(&mut source, 4);
    let net = Net::start(source).await;

    // A good client streams chunks while a bad one opens streams, sends half a frame and
    // resets, or vanishes with requests half sent.
    let good = net.client().await;
    let good_task = {
        let (ids, held) = (ids.clone(), held.clone());
        tokio::spawn(async move {
            for _ in 0..5 {
                let mut replies = good.chunks(ids.clone()).await.unwrap();
                check_replies(&ids, &held, &collect(&mut replies).await.unwrap());
            }
        })
    };
    let full = Frame::GetChunks { ids: ids.clone() }.to_bytes();
    for round in 0..3 {
        let bad = net.client().await;
        for _ in 0..20 {
            let (mut send, recv) = bad.connection().open_bi().await.unwrap();
            send.write_all(&full[..full.len() / 2]).await.unwrap();
            send.reset(VarInt::from_u32(7)).unwrap();
            drop(recv);
        }
        // Half-sent requests left open, then the whole connection dropped.
        let mut open = Vec::new();
        for _ in 0..20 {
            let (mut send, recv) = bad.connection().open_bi().await.unwrap();
            send.write_all(&full[..100]).await.unwrap();
            open.push((send, recv));
        }
        // Chunk answers abandoned half-read.
        let mut replies = bad.chunks(ids.clone()).await.unwrap();
        for _ in 0..round * 10 {
            replies.next().await.unwrap();
        }
        drop(replies);
        bad.connection().close(VarInt::from_u32(9), b"bye");
    }
    good_task.await.unwrap();
    // Abandoned requests are not errors the server answered.
    assert_eq!(net.metrics.request_errors.get(), 0);
    let again = net.client().await;
    let mut replies = again.chunks(ids[..10].to_vec()).await.unwrap();
    check_replies(&ids[..10], &held, &collect(&mut replies).await.unwrap());
}

/// A client endpoint of its own identity `name`, with `opts`.
fn client_as(net: &Net, name: &str, opts: &TransportOptions) -> quinn::Endpoint {
    let id = net.auth.issue(Role::Endpoint, name, Some("lab")).unwrap();
    client_endpoint(&id, opts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_payload_served() {
    let mut source = MemSource::default();
    let (ids, held) = chunk_set(&mut source, 5);
    let net = Net::start(source).await;
    let client = net.client().await;
    let second = net.client().await;
    wait_for(|| net.metrics.connections.get() == 2).await;

    let mut replies = client.chunks(ids.clone()).await.unwrap();
    collect(&mut replies).await.unwrap();
    let mut replies = second.chunks(ids[..100].to_vec()).await.unwrap();
    collect(&mut replies).await.unwrap();

    let payload = |ids: &[ChunkId]| -> u64 {
        ids.iter().filter_map(|id| held.get(id)).map(|c| c.data.len() as u64).sum()
    };
    let count = |ids: &[ChunkId]| ids.iter().filter(|id| held.contains_key(id)).count() as u64;
    assert_eq!(net.metrics.served_bytes.get(), payload(&ids) + payload(&ids[..100]));
    assert_eq!(net.metrics.served_chunks.get(), count(&ids) + count(&ids[..100]));
    assert_eq!(net.metrics.request_errors.get(), 0);
    let text = net.metrics.render();
    assert_eq!(
        crate::metrics::sample_value(&text, "oasis_served_bytes_total"),
        Some((payload(&ids) + payload(&ids[..100])) as f64)
    );

    client.close();
    second.close();
    wait_for(|| net.metrics.connections.get() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_errors_become_error_frames() {
    let mut source = MemSource::default();
    let (ids, held) = chunk_set(&mut source, 6);
    source.failing = Some(ids[20]);
    let net = Net::start(source).await;
    let client = net.client().await;
    let mut replies = client.chunks(ids.clone()).await.unwrap();
    for id in &ids[..20] {
        assert_eq!(replies.next().await.unwrap().unwrap().id(), *id);
    }
    let err = replies.next().await.unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Unavailable), "{err}");
    assert_eq!(replies.unanswered().next(), Some(&ids[20]));
    assert!(replies.next().await.is_err(), "a failed answer stays failed");
    assert_eq!(net.metrics.request_errors.get(), 1);
    // Other requests are unaffected.
    let mut replies = client.chunks(ids[21..40].to_vec()).await.unwrap();
    check_replies(&ids[21..40], &held, &collect(&mut replies).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_garbage_closes_the_connection() {
    let net = Net::start(MemSource::default()).await;
    let bad = net.client().await;
    for _ in 0..MAX_BAD_REQUESTS - 1 {
        assert_eq!(
            error_code(&raw_request(bad.connection(), &[0, 0, 0, 1, 0x42], true).await),
            ErrorCode::UnknownType
        );
    }
    let (mut s, _r) = bad.connection().open_bi().await.unwrap();
    let _ = s.write_all(&[0, 0, 0, 1, 0x42]).await;
    let _ = s.finish();
    let reason =
        tokio::time::timeout(Duration::from_secs(5), bad.connection().closed()).await.unwrap();
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, VarInt::from_u32(close_code::PROTOCOL_VIOLATION))
        }
        other => panic!("unexpected close {other}"),
    }
    // Its socket is refused before the handshake for a while (once the server has seen the
    // connection end); other sockets are still served.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Client::connect(&net.client_ep, net.addr, accept::ANY).await.is_ok() {
        assert!(Instant::now() < deadline, "the socket that sent garbage was never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(net.metrics.banned_connections.get() >= 1);
    let good_ep = client_as(&net, "ep-good", &TransportOptions::default());
    let good = Client::connect(&good_ep, net.addr, accept::ANY).await.unwrap();
    assert!(good.layers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_not_admitted_and_foreign_ca_are_refused() {
    let source = MemSource { refuse: vec![Role::Endpoint], ..MemSource::default() };
    let net = Net::start(source).await;
    // The handshake succeeds, then the server closes with FORBIDDEN.
    let client = net.client().await;
    let err = client.layers().await.unwrap_err();
    match &err {
        NetError::Connection { source: quinn::ConnectionError::ApplicationClosed(c), .. } => {
            assert_eq!(c.error_code, VarInt::from_u32(close_code::FORBIDDEN))
        }
        other => panic!("unexpected error {other}"),
    }
    // A reflector is admitted.
    let refl = net.auth.issue(Role::Reflector, "refl-1", None).unwrap();
    let ep = client_endpoint(&refl, &TransportOptions::default()).unwrap();
    let c = Client::connect(&ep, net.addr, accept::ANY).await.unwrap();
    assert!(c.layers().await.unwrap().is_empty());

    // A node of another CA fails the handshake.
    let other_dir = tempfile::tempdir().unwrap();
    let other = SeedAuthority::init(other_dir.path()).unwrap();
    let stranger = other.issue(Role::Reflector, "refl-1", None).unwrap();
    let ep = client_endpoint(&stranger, &TransportOptions::default()).unwrap();
    let err = Client::connect(&ep, net.addr, accept::ANY).await.unwrap_err();
    assert!(matches!(err, NetError::Connect { .. }), "{err}");
}

/// A server that answers every request stream with `answer` verbatim.
async fn raw_server(answer: Vec<u8>) -> (Net, SocketAddr) {
    let net = Net::start(MemSource::default()).await;
    let id = net.auth.issue(Role::Seed, "liar", None).unwrap();
    let ep =
        server_endpoint("127.0.0.1:0".parse().unwrap(), &id, &TransportOptions::default()).unwrap();
    let addr = ep.local_addr().unwrap();
    let answer = Bytes::from(answer);
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = recv.read_to_end(MAX_REQUEST_BYTES).await;
                    let _ = send.write_all(&answer).await;
                    let _ = send.finish();
                }
            });
        }
    });
    (net, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_bad_chunk_answers() {
    let a = StoredChunk::encode(b"chunk a");
    let b = StoredChunk::encode(b"chunk b");
    let frames =
        |fs: &[Frame]| -> Vec<u8> { fs.iter().flat_map(|f| f.to_bytes().to_vec()).collect() };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (frames(&[Frame::Chunk(a.clone())]), "truncated"),
        (frames(&[Frame::Chunk(b.clone()), Frame::Chunk(a.clone()), Frame::End]), "was due"),
        (frames(&[Frame::Chunk(a.clone()), Frame::End]), "End with 1"),
        (
            frames(&[
                Frame::Chunk(a.clone()),
                Frame::Missing { id: b.id },
                Frame::Missing { id: b.id },
            ]),
            "unrequested",
        ),
        (frames(&[Frame::ListLayers]), "unexpected frame"),
        (((MAX_FRAME_BYTES + 1) as u32).to_be_bytes().to_vec(), "exceeds the limit"),
        (frames(&[Frame::Chunk(a.clone())])[..45].to_vec(), "inside a frame"),
    ];
    for (answer, want) in cases {
        let (net, addr) = raw_server(answer).await;
        let client = Client::connect(&net.client_ep, addr, accept::ANY).await.unwrap();
        assert_eq!(client.peer().name, "liar");
        let mut replies = client.chunks(vec![a.id, b.id]).await.unwrap();
        let err = loop {
            match replies.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("answer {want:?} accepted"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains(want), "expected {want:?}, got: {err}");
        assert_eq!(err.addr(), addr);
    }
}

/// Throughput of GetChunks against a raw quinn stream on loopback. Run with
/// `cargo test -p oasis-core --release net::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    const CHUNK: usize = 1 << 20;
    const COUNT: usize = 512;
    let mut source = MemSource::default();
    let mut rng = StdRng::seed_from_u64(9);
    let mut ids = Vec::new();
    for _ in 0..COUNT {
        // Incompressible: stored raw, so the payload size equals CHUNK.
        ids.push(source.add_chunk(&random_bytes(&mut rng, CHUNK)).id);
    }
    let net = Net::start(source).await;
    let total = (CHUNK * COUNT) as f64;

    // Raw quinn: one stream carrying the same number of bytes.
    let raw_addr = {
        let id = net.auth.issue(Role::Seed, "raw", None).unwrap();
        let ep = server_endpoint("127.0.0.1:0".parse().unwrap(), &id, &TransportOptions::default())
            .unwrap();
        let addr = ep.local_addr().unwrap();
        let block = Bytes::from(random_bytes(&mut rng, CHUNK));
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let block = block.clone();
                tokio::spawn(async move {
                    let conn = incoming.await.unwrap();
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        let _ = recv.read_to_end(64).await;
                        for _ in 0..COUNT {
                            send.write_chunk(block.clone()).await.unwrap();
                        }
                        send.finish().unwrap();
                    }
                });
            }
        });
        addr
    };
    for round in 0..2 {
        let raw = Client::connect(&net.client_ep, raw_addr, accept::ANY).await.unwrap();
        let t = Instant::now();
        let (mut send, mut recv) = raw.connection().open_bi().await.unwrap();
        send.write_all(b"go").await.unwrap();
        send.finish().unwrap();
        let mut n = 0usize;
        while let Some(c) = recv.read_chunk(usize::MAX, true).await.unwrap() {
            n += c.bytes.len();
        }
        assert_eq!(n, CHUNK * COUNT);
        let raw_rate = total / t.elapsed().as_secs_f64() / 1e6;

        let client = net.client().await;
        let t = Instant::now();
        let mut got = 0usize;
        for batch in ids.chunks(128) {
            let mut replies = client.chunks(batch.to_vec()).await.unwrap();
            while let Some(r) = replies.next().await.unwrap() {
                if let ChunkReply::Chunk(c) = r {
                    got += c.data.len();
                }
            }
        }
        assert_eq!(got, CHUNK * COUNT);
        let rate = total / t.elapsed().as_secs_f64() / 1e6;
        println!(
            "round {round}: raw quinn stream {raw_rate:.0} MB/s, GetChunks {rate:.0} MB/s ({:.0}%)",
            rate / raw_rate * 100.0
        );
        raw.close();
        client.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_when_the_endpoint_closes() {
    let net = Net::start(MemSource::default()).await;
    let client = net.client().await;
    assert!(client.layers().await.unwrap().is_empty());
    net.server.close(VarInt::from_u32(close_code::NORMAL), b"shutdown");
    tokio::time::timeout(Duration::from_secs(5), net.serving).await.unwrap().unwrap();
    assert!(matches!(client.layers().await.unwrap_err(), NetError::Connection { .. }));
}

/// The worked example of docs/protocol.md, section 9.
#[test]
fn protocol_doc_example_matches_the_encoder() {
    let hello = ChunkId::of(b"hello");
    let world = ChunkId::of(b"world");
    let hex_of = |s: &str| hex::decode(s.split_whitespace().collect::<String>()).unwrap();
    let request = hex_of(
        "00 00 00 45 02 00 00 00 02
         ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f
         d7894ae9716d38d2dfad0ec55424ca321ee12453d51f1b3adeb77d0475ed988c",
    );
    assert_eq!(Frame::GetChunks { ids: vec![hello, world] }.to_bytes(), request);

    let chunk = StoredChunk::encode(b"hello");
    assert_eq!(chunk.encoding, crate::compress::Encoding::Raw);
    let mut answer = BytesMut::new();
    Frame::Chunk(chunk).encode(&mut answer);
    Frame::Missing { id: world }.encode(&mut answer);
    Frame::End.encode(&mut answer);
    let expected = hex_of(
        "00 00 00 2b 82
         ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f
         00 00 00 00 05 68 65 6c 6c 6f
         00 00 00 21 83
         d7894ae9716d38d2dfad0ec55424ca321ee12453d51f1b3adeb77d0475ed988c
         00 00 00 01 85",
    );
    assert_eq!(&answer[..], &expected[..]);
    // The server's hand-built frames agree with the encoder too.
    assert_eq!(&server::missing_frame(&world)[..], &Frame::Missing { id: world }.to_bytes()[..]);
    assert_eq!(&server::END_FRAME[..], &Frame::End.to_bytes()[..]);
}
