//! What a server lets each peer hold: connections in total, per node identity and per client
//! socket, requests at once, and answers nobody reads.

use super::*;

/// A server holding one chunk under `limits`, and the chunk's id.
async fn one_chunk_server(limits: ServeLimits) -> (Net, ChunkId) {
    let mut source = MemSource::default();
    let id = source.add_chunk(b"a chunk everyone may fetch").id;
    (Net::start_with(source, limits).await, id)
}

/// Whether a fetch of one chunk over `client` works.
async fn serves(client: &Client, id: ChunkId) -> bool {
    match client.chunks(vec![id]).await {
        Ok(mut replies) => {
            matches!(collect(&mut replies).await.as_deref(), Ok([ChunkReply::Chunk(_)]))
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_share_of_connections_is_turned_away_and_others_are_not() {
    // No source ban here: this is about the node's count (the next test has the ban).
    let limits = ServeLimits {
        max_connections_per_peer: 2,
        source_ban: Duration::ZERO,
        ..ServeLimits::default()
    };
    let (net, id) = one_chunk_server(limits).await;
    let (a, b) = (net.client().await, net.client().await);
    assert!(serves(&a, id).await && serves(&b, id).await);

    // A third connection of the same node passes the handshake, then is closed as busy.
    let third = net.client().await;
    match third.connection().closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, VarInt::from_u32(close_code::BUSY));
            assert!(String::from_utf8_lossy(&c.reason).contains("too many connections"));
        }
        other => panic!("expected a busy close, got {other}"),
    }
    assert!(!serves(&third, id).await);
    assert_eq!(net.metrics.refused_connections.get(), 1);
    // Another node is not held to this one's count, and the first two still work.
    let other_ep = client_as(&net, "ep-2", &TransportOptions::default());
    let other = Client::connect(&other_ep, net.addr, accept::ANY).await.unwrap();
    assert!(serves(&other, id).await && serves(&a, id).await);

    // Once one of its connections closes, the node may connect again.
    a.connection().close(VarInt::from_u32(close_code::NORMAL), b"done");
    drop(a);
    served_again(&net.client_ep, net.addr, id, "the closed connection's slot never came back")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_turned_away_is_refused_before_the_handshake_for_a_while() {
    let limits = ServeLimits {
        max_connections_per_peer: 1,
        source_ban: Duration::from_millis(1500),
        ..ServeLimits::default()
    };
    let (net, id) = one_chunk_server(limits).await;
    let first = net.client().await;
    assert!(serves(&first, id).await);
    // A second connection from the same socket passes the handshake and is closed as busy...
    let second = net.client().await;
    assert!(matches!(second.connection().closed().await,
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close_code::BUSY)));
    // ... and the next one from that socket is refused before any handshake.
    let banned = Client::connect(&net.client_ep, net.addr, accept::ANY).await;
    assert!(banned.is_err(), "a banned socket was handshaken with");
    assert_eq!(net.metrics.banned_connections.get(), 1);
    assert_eq!(net.metrics.refused_connections.get(), 1, "the busy close only");
    // Other sockets are not held to it, and the connection the socket holds still works.
    let other_ep = client_as(&net, "ep-2", &TransportOptions::default());
    let other = Client::connect(&other_ep, net.addr, accept::ANY).await.unwrap();
    assert!(serves(&other, id).await && serves(&first, id).await);
    // Once the ban is over (and a slot free), the socket is served again.
    first.connection().close(VarInt::from_u32(close_code::NORMAL), b"done");
    drop(first);
    served_again(&net.client_ep, net.addr, id, "the socket stayed banned").await;
    assert!(net.metrics.banned_connections.get() >= 1);
}

/// Connects from `ep` and fetches `id` until that works, for up to 5 s: the server counts a
/// closed connection out once its task has seen the close.
async fn served_again(ep: &quinn::Endpoint, addr: SocketAddr, id: ChunkId, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(c) = Client::connect(ep, addr, accept::ANY).await {
            if serves(&c, id).await {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_server_total_are_refused_at_the_handshake() {
    let (net, id) =
        one_chunk_server(ServeLimits { max_connections: 2, ..ServeLimits::default() }).await;
    let opts = TransportOptions::default();
    let (ep1, ep2, ep3) =
        (client_as(&net, "n1", &opts), client_as(&net, "n2", &opts), client_as(&net, "n3", &opts));
    let one = Client::connect(&ep1, net.addr, accept::ANY).await.unwrap();
    let two = Client::connect(&ep2, net.addr, accept::ANY).await.unwrap();
    let refused = Client::connect(&ep3, net.addr, accept::ANY).await;
    assert!(refused.is_err(), "a third connection is refused");
    assert!(serves(&one, id).await && serves(&two, id).await, "the two held still work");
    assert_eq!(net.metrics.refused_connections.get(), 1);
    two.connection().close(VarInt::from_u32(close_code::NORMAL), b"done");
    drop(two);
    served_again(&ep3, net.addr, id, "the freed connection was never counted out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_at_most_its_streams_at_once() {
    let (net, id) =
        one_chunk_server(ServeLimits { max_streams_per_connection: 2, ..ServeLimits::default() })
            .await;
    let greedy = net.client().await;
    // Two requests left half sent hold the connection's two streams.
    let request = Frame::GetChunks { ids: vec![id] }.to_bytes();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (mut send, recv) = greedy.connection().open_bi().await.unwrap();
        send.write_all(&request[..3]).await.unwrap();
        held.push((send, recv));
    }
    let third = tokio::time::timeout(Duration::from_millis(500), greedy.connection().open_bi());
    assert!(third.await.is_err(), "a third request waits for the server's stream credit");
    assert!(serves(&net.client().await, id).await, "another connection is served meanwhile");
    let (mut send, _recv) = held.remove(0);
    send.reset(VarInt::from_u32(7)).unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), greedy.connection().open_bi());
    assert!(third.await.is_ok(), "a stream that ends gives its credit back");
}

/// A server with a 0.5 s write stall holding `count` random chunks of `size` bytes, and a
/// client with a 64 KiB stream window that has asked for all of them (its endpoint, kept open
/// by the caller, and its answer stream).
async fn small_window_request(
    count: usize,
    size: usize,
) -> (Net, Vec<ChunkId>, (quinn::Endpoint, Client), quinn::RecvStream) {
    let mut source = MemSource::default();
    let mut rng = StdRng::seed_from_u64(size as u64);
    let ids: Vec<ChunkId> =
        (0..count).map(|_| source.add_chunk(&random_bytes(&mut rng, size)).id).collect();
    let limits = ServeLimits { write_stall: Duration::from_millis(500), ..ServeLimits::default() };
    let net = Net::start_with(source, limits).await;
    let small = TransportOptions {
        stream_receive_window: 64 << 10,
        receive_window: 256 << 10,
        ..TransportOptions::default()
    };
    let ep = client_as(&net, "small-window", &small);
    let client = Client::connect(&ep, net.addr, accept::ANY).await.unwrap();
    let (mut send, recv) = client.connection().open_bi().await.unwrap();
    send.write_all(&Frame::GetChunks { ids: ids.clone() }.to_bytes()).await.unwrap();
    send.finish().unwrap();
    (net, ids, (ep, client), recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_client_stops_reading_is_reset_after_the_write_stall() {
    // 8 MiB of incompressible chunks: far more than the slow reader's windows.
    let (net, ids, (_ep, slow), mut recv) = small_window_request(128, 64 << 10).await;
    // Read nothing: the server's writes wait on flow control until the stall limit.
    wait_for(|| net.metrics.stalled_answers.get() == 1).await;
    let mut sink = vec![0u8; 1 << 20];
    let reset = loop {
        match recv.read(&mut sink).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stalled answer ended as if complete"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(reset, quinn::ReadError::Reset(code) if code == VarInt::from_u32(stream_code::STALLED)),
        "{reset}"
    );
    // The connection and the server go on: the same client and another are served.
    assert!(serves(&slow, ids[0]).await);
    let fine = net.client().await;
    let mut replies = fine.chunks(ids.clone()).await.unwrap();
    assert_eq!(collect(&mut replies).await.unwrap().len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_never_reset() {
    // Chunks of 512 KiB through a 64 KiB window: one chunk's write takes eight window refills,
    // far longer than the stall limit, but never stands still that long.
    let (net, _ids, _client, mut recv) = small_window_request(2, 512 << 10).await;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while let Some(n) = recv.read(&mut buf).await.expect("the answer is never reset") {
        answer.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(answer.len() > 1 << 20, "both chunks arrived ({} bytes)", answer.len());
    assert_eq!(net.metrics.stalled_answers.get(), 0);
}
