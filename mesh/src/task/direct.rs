//! The gate at every new neighbour: hellos exchanged directly (`/oasis/hello/1`,
//! request-response) as soon as a connection is made, and nothing of the gossip for a
//! neighbour until its binding verified.
//!
//! Until then gossipsub scores the neighbour [`UNVERIFIED_SCORE`]: below the gossip and publish
//! thresholds and 0, so it is sent no message (published or forwarded), no IHAVE, is not
//! grafted into the mesh and its IWANTs are ignored; above the graylist threshold, so that what
//! it sends is still read (and dropped, unverified). A neighbour not verified within
//! `MeshConfig::stranger_timeout` is disconnected. A stranger that finds the mesh learns nothing
//! but the topics it is subscribed to.
//!
//! Each side sends its own hello (the `GossipMsg` it would publish, `Body::Hello`) as the
//! request, and answers the other's request with its own hello once the other's verified (no
//! answer when it does not: a stranger gets no certificate either). The hello's binding is
//! checked against the peer id the connection authenticated, like a gossip hello against its
//! author, off the task and under the same per-neighbour rate.

use super::*;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};

/// The stream protocol of the direct hello.
pub const HELLO_PROTOCOL: &str = "/oasis/hello/1";
/// A neighbour's gossipsub application score until its hello verified (weight 1): under the
/// publish threshold (-50), over the graylist threshold (-80).
pub const UNVERIFIED_SCORE: f64 = -60.0;
/// How long one direct hello may take on the wire.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Length-delimited by the stream: a message is the whole stream, at most
/// `MAX_MESSAGE_BYTES`.
#[derive(Clone, Default)]
pub struct HelloCodec;

async fn read_message<T: futures::AsyncRead + Unpin + Send>(
    io: &mut T,
) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut out = Vec::new();
    io.take(MAX_MESSAGE_BYTES as u64 + 1).read_to_end(&mut out).await?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "hello over the limit"));
    }
    Ok(out)
}

async fn write_message<T: futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
) -> std::io::Result<()> {
    use futures::AsyncWriteExt;
    io.write_all(bytes).await?;
    io.close().await
}

#[async_trait::async_trait]
impl request_response::Codec for HelloCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_message(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_message(io, &res).await
    }
}

/// The request-response behaviour of the direct hello.
pub(super) fn behaviour() -> request_response::Behaviour<HelloCodec> {
    request_response::Behaviour::with_codec(
        HelloCodec,
        [(StreamProtocol::new(HELLO_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(HELLO_TIMEOUT),
    )
}

impl MeshTask {
    /// This node's hello, as it publishes it.
    fn hello_bytes(&mut self) -> Vec<u8> {
        GossipMsg { seq: self.next_seq(), body: Body::Hello(self.hello.clone()) }.encode()
    }

    /// A new neighbour: gossip closed to it until its hello verifies; ours is sent.
    pub(super) fn on_new_neighbour(&mut self, peer: PeerId) {
        if self.verified.contains_key(&peer) {
            return;
        }
        self.swarm.behaviour_mut().gossipsub.set_application_score(&peer, UNVERIFIED_SCORE);
        self.unverified.insert(peer, Instant::now());
        let hello = self.hello_bytes();
        self.swarm.behaviour_mut().hello.send_request(&peer, hello);
    }

    /// A neighbour gone: nothing kept for it.
    pub(super) fn on_neighbour_gone(&mut self, peer: &PeerId) {
        self.unverified.remove(peer);
        self.hello_replies.remove(peer);
        self.neighbour_address.remove(peer);
    }

    /// `author` verified: if it is a neighbour, the gossip opens to it.
    pub(super) fn open_gate(&mut self, author: &PeerId) {
        if self.unverified.remove(author).is_some() {
            self.swarm.behaviour_mut().gossipsub.set_application_score(author, 0.0);
            debug!("mesh neighbour {author} verified: gossip open to it");
        }
        self.answer_hello(author);
    }

    /// Answers `peer`'s direct hello with ours, once its own verified.
    fn answer_hello(&mut self, peer: &PeerId) {
        if let Some(channel) = self.hello_replies.remove(peer) {
            let hello = self.hello_bytes();
            let _ = self.swarm.behaviour_mut().hello.send_response(channel, hello);
        }
    }

    /// A direct hello checked off the task ([`Self::on_hello_checked`]): one that did not
    /// verify ends the connection.
    pub(super) fn on_direct_checked(&mut self, author: PeerId) {
        if !self.verified.contains_key(&author) {
            self.hello_replies.remove(&author);
            if self.unverified.contains_key(&author) {
                let _ = self.swarm.disconnect_peer_id(author);
            }
        }
    }

    pub(super) fn on_direct_hello(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        let (peer, bytes, channel) = match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    (peer, request, Some(channel))
                }
                request_response::Message::Response { response, .. } => (peer, response, None),
            },
            request_response::Event::OutboundFailure { peer, error, .. } => {
                debug!("direct hello to {peer} failed: {error}");
                // Its connection closed under it (two nodes that dialled each other at once
                // keep the other one): ask again on the one left while it is unverified.
                let closed = matches!(error, request_response::OutboundFailure::ConnectionClosed);
                if closed && self.unverified.contains_key(&peer) && self.swarm.is_connected(&peer) {
                    let hello = self.hello_bytes();
                    self.swarm.behaviour_mut().hello.send_request(&peer, hello);
                }
                return;
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!("direct hello from {peer} failed: {error}");
                return;
            }
            request_response::Event::ResponseSent { .. } => return,
        };
        self.on_direct_bytes(peer, &bytes, channel);
    }

    fn on_direct_bytes(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        channel: Option<ResponseChannel<Vec<u8>>>,
    ) {
        let msg = match GossipMsg::decode(bytes) {
            Ok(m) if matches!(m.body, Body::Hello(_)) => m,
            Ok(_) | Err(_) => {
                self.metrics.count_drop("bad_direct_hello");
                let _ = self.swarm.disconnect_peer_id(peer);
                return;
            }
        };
        let Body::Hello(hello) = msg.body.clone() else { return };
        if let Some(channel) = channel {
            self.hello_replies.insert(peer, channel);
        }
        match self.on_hello(peer, hello, msg, Origin::Direct, peer) {
            // Checked off the task: `on_direct_checked` follows.
            None => {}
            Some(_) if self.verified.contains_key(&peer) => self.answer_hello(&peer),
            // Not checked (too many checks at once, over its rate, revoked): no answer; its
            // gossip hello may still verify it before `stranger_timeout`.
            Some(_) => {
                self.hello_replies.remove(&peer);
            }
        }
    }

    /// Disconnects the neighbours still unverified after `stranger_timeout`.
    pub(super) fn disconnect_strangers(&mut self) {
        let limit = self.config.stranger_timeout;
        let late: Vec<PeerId> = self
            .unverified
            .iter()
            .filter(|(_, since)| since.elapsed() >= limit)
            .map(|(p, _)| *p)
            .collect();
        for peer in late {
            self.unverified.remove(&peer);
            self.hello_replies.remove(&peer);
            debug!("mesh neighbour {peer} did not verify within {limit:?}: disconnected");
            self.metrics.count_drop("stranger");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }
}
