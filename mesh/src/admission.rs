//! Who may be in the mesh, and checking hellos without holding up the swarm task.
//!
//! * **The hello exchange.** On every new connection each side sends its hello (its node
//!   certificate and its signature over its own peer id, encoded as the gossip `Hello` message)
//!   over the request-response protocol [`HELLO_PROTOCOL`], and answers the other side's with
//!   its own. A peer is *admitted* once the hello it sent verifies.
//! * **Nothing for strangers.** Until admitted, a peer's gossipsub application score is
//!   [`UNADMITTED_SCORE`]: below the publish and gossip thresholds, so no message, IHAVE or
//!   mesh slot is given to it, and above the graylist, so its subscriptions are still tracked
//!   for the moment it is admitted. A peer not admitted within [`ADMISSION_GRACE`] is
//!   disconnected (`oasis_gossip_dropped_total{reason="not_admitted"}`).
//! * **Verification off the task.** Certificate checks, of exchanged hellos and of hellos on
//!   gossip (which name authors further away), run on the blocking pool, at most
//!   [`MAX_VERIFYING`] at once and [`MAX_QUEUED`] waiting; a remote address may have
//!   [`HELLOS_PER_ADDRESS`] exchanges checked per [`ADDRESS_WINDOW`]. A hello identical to one
//!   that verified for the same author is not checked again.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::prelude::*;
use libp2p::gossipsub::MessageId;
use libp2p::multiaddr::Protocol;
use libp2p::{request_response, Multiaddr, PeerId, StreamProtocol};
use oasis_core::gossip::{Body, GossipMsg, Hello, MAX_MESSAGE_BYTES};
use oasis_core::pki::{PeerInfo, TrustRoot};
use tokio::sync::mpsc;

use crate::binding;

/// The request-response protocol of the hello exchange.
pub const HELLO_PROTOCOL: &str = "/oasis/hello/1.0.0";
/// How long a connected peer has to be admitted before it is disconnected.
pub const ADMISSION_GRACE: Duration = Duration::from_secs(10);
/// Gossipsub application score of a peer not admitted (weight 1): under the publish (-50) and
/// gossip (-10) thresholds, over the graylist (-80).
pub const UNADMITTED_SCORE: f64 = -60.0;
/// Largest hello accepted on the exchange (the gossip message limit).
pub const MAX_HELLO_BYTES: usize = MAX_MESSAGE_BYTES;
/// Certificate checks running at once.
pub const MAX_VERIFYING: usize = 4;
/// Certificate checks waiting; more hellos are dropped (`verify_backlog`) until there is room.
pub const MAX_QUEUED: usize = 256;
/// Exchanged hellos checked per remote IP address per [`ADDRESS_WINDOW`]; more are dropped
/// (`rate_limited`) and the connection is left to its grace.
pub const HELLOS_PER_ADDRESS: u32 = 16;
pub const ADDRESS_WINDOW: Duration = Duration::from_secs(10);

/// The hello exchange's codec: a request or an answer is one encoded gossip `Hello` message,
/// at most [`MAX_HELLO_BYTES`], the stream then closed.
#[derive(Clone, Default)]
pub struct HelloCodec;

async fn read_hello<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(MAX_HELLO_BYTES as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > MAX_HELLO_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "hello over its size limit"));
    }
    if buf.is_empty() {
        // A side that will not say hello closes the stream; that is no hello, not a bad one.
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no hello"));
    }
    Ok(buf)
}

async fn write_hello<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: Vec<u8>) -> io::Result<()> {
    io.write_all(&bytes).await?;
    io.close().await
}

#[async_trait]
impl request_response::Codec for HelloCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_hello(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_hello(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_hello(io, r).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_hello(io, r).await
    }
}

/// The hello exchange behaviour.
pub fn exchange() -> request_response::Behaviour<HelloCodec> {
    request_response::Behaviour::new(
        [(StreamProtocol::new(HELLO_PROTOCOL), request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(ADMISSION_GRACE),
    )
}

/// The hello in an exchanged message, if it is one.
pub fn hello_of(bytes: &[u8]) -> Result<Hello, String> {
    match GossipMsg::decode(bytes) {
        Ok(GossipMsg { body: Body::Hello(h), .. }) => Ok(h),
        Ok(_) => Err("not a hello".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The IP address a connection comes from.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    })
}

/// How a hello reached this node.
#[derive(Clone, Debug)]
pub enum Via {
    /// The hello exchange of a direct connection.
    Exchange,
    /// A gossip message, whose validation waits for the check.
    Gossip { id: MessageId, source: PeerId, msg: GossipMsg },
}

/// A check's result, for the swarm task.
pub struct Checked {
    pub author: PeerId,
    pub hello: Hello,
    pub via: Via,
    pub result: Result<PeerInfo, String>,
}

/// Why a hello was not checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Too many checks for this address lately.
    RateLimited,
    /// Too many checks waiting.
    Backlog,
}

impl Skipped {
    pub fn reason(&self) -> &'static str {
        match self {
            Skipped::RateLimited => "rate_limited",
            Skipped::Backlog => "verify_backlog",
        }
    }
}

struct Job {
    author: PeerId,
    hello: Hello,
    via: Via,
}

/// Runs hello checks on the blocking pool for the swarm task, which owns it.
pub struct Verifier {
    trust: Arc<TrustRoot>,
    done_tx: mpsc::UnboundedSender<Checked>,
    queued: VecDeque<Job>,
    running: usize,
    /// Exchanges checked per address in the current window: (window start, count).
    per_address: HashMap<IpAddr, (Instant, u32)>,
}

impl Verifier {
    /// The verifier and where its results arrive.
    pub fn new(trust: TrustRoot) -> (Verifier, mpsc::UnboundedReceiver<Checked>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let v = Verifier {
            trust: Arc::new(trust),
            done_tx,
            queued: VecDeque::new(),
            running: 0,
            per_address: HashMap::new(),
        };
        (v, done_rx)
    }

    /// Queues a check of `hello` as `author`'s; `from` is the remote address of an exchange.
    pub fn check(
        &mut self,
        author: PeerId,
        hello: Hello,
        via: Via,
        from: Option<IpAddr>,
    ) -> Result<(), Skipped> {
        if let Some(ip) = from {
            let now = Instant::now();
            let (start, n) = self.per_address.entry(ip).or_insert((now, 0));
            if now.duration_since(*start) >= ADDRESS_WINDOW {
                (*start, *n) = (now, 0);
            }
            if *n >= HELLOS_PER_ADDRESS {
                return Err(Skipped::RateLimited);
            }
            *n += 1;
        }
        if self.queued.len() >= MAX_QUEUED {
            return Err(Skipped::Backlog);
        }
        self.queued.push_back(Job { author, hello, via });
        self.start_more();
        Ok(())
    }

    /// Notes that a check ended (its result came back) and starts the next.
    pub fn finished(&mut self) {
        self.running = self.running.saturating_sub(1);
        self.start_more();
        // Windows long over are forgotten, so the map holds only recent addresses.
        if self.per_address.len() > 1024 {
            self.per_address.retain(|_, (start, _)| start.elapsed() < ADDRESS_WINDOW);
        }
    }

    fn start_more(&mut self) {
        while self.running < MAX_VERIFYING {
            let Some(job) = self.queued.pop_front() else { return };
            self.running += 1;
            let (trust, done) = (self.trust.clone(), self.done_tx.clone());
            tokio::task::spawn_blocking(move || {
                let result = binding::verify_binding(&job.hello, &job.author, &trust)
                    .map_err(|e| format!("{e:#}"));
                let Job { author, hello, via } = job;
                let _ = done.send(Checked { author, hello, via, result });
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_gets_its_share_of_checks_per_window() {
        let dir = tempfile::tempdir().unwrap();
        let auth = oasis_core::pki::SeedAuthority::init(dir.path()).unwrap();
        let (mut v, mut done) = Verifier::new(auth.trust().clone());
        let hello = Hello { cert_der: vec![1, 2, 3], scheme: 0x0403, signature: vec![] };
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        for _ in 0..HELLOS_PER_ADDRESS {
            let p = PeerId::random();
            assert!(v.check(p, hello.clone(), Via::Exchange, Some(ip)).is_ok());
        }
        let over = v.check(PeerId::random(), hello.clone(), Via::Exchange, Some(ip));
        assert_eq!(over, Err(Skipped::RateLimited));
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        assert!(v.check(PeerId::random(), hello.clone(), Via::Exchange, Some(other)).is_ok());
        for _ in 0..=HELLOS_PER_ADDRESS {
            let c = done.recv().await.unwrap();
            assert!(c.result.is_err(), "garbage never verifies");
            v.finished();
        }
    }
}
