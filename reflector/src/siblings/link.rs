//! A fetch job's way to the siblings: it asks the siblings task where to look, asks siblings
//! over QUIC, verifies and caches what they send, and reports back what failed.

use super::task::Command;
use crate::cache::Cache;
use crate::metrics::ReflectorMetrics;
use oasis_core::compress::StoredChunk;
use oasis_core::net::ChunkReply;
use oasis_core::policy::TrafficClass;
use oasis_core::site_wan::WanSharing;
use oasis_core::ChunkId;
use oasis_mesh::libp2p::PeerId;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// A holder has the chunk in its cache: it answers at LAN speed.
const HOLDER_TIMEOUT: Duration = Duration::from_secs(5);
/// Holders tried per chunk before the next step.
const MAX_HOLDERS_TRIED: usize = 3;
/// How often a miss waiting on the site's WAN leader asks it again.
const LEADER_RETRY: Duration = Duration::from_millis(200);

/// Where a chunk came from, for the metrics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    SameSite,
    OtherSite,
}

/// A candidate source of a chunk.
pub(super) struct Candidate {
    pub peer: PeerId,
    pub addr: SocketAddr,
    pub kind: Kind,
}

/// Where to ask for a chunk, in the view of the moment.
pub(super) struct Plan {
    /// Live reflectors that hold it, best first.
    pub holders: Vec<Candidate>,
    /// After the holders.
    pub next: Next,
}

pub(super) enum Next {
    /// This reflector is the site's WAN fetcher for the chunk (or there is no site).
    PullHere,
    /// Ask the site's WAN fetcher to pull it.
    Ask(Candidate),
    /// The site's WAN fetcher cannot be reached now.
    Unreachable(PeerId),
}

/// What every fetch job shares.
pub(super) struct Link {
    pub commands: mpsc::UnboundedSender<Command>,
    pub cache: Weak<Cache>,
    pub metrics: ReflectorMetrics,
    /// How long a sibling that must pull over the WAN for us may take.
    pub delegate_timeout: Duration,
    /// Under `leader`, how long a miss waits for the site's leader to be reachable again (or
    /// replaced) before this reflector pulls it itself.
    pub handover_wait: Duration,
    pub sharing: WanSharing,
    /// The reflector's request work: `stop()` waits for it, so a chunk being stored in the
    /// cache holds the cache no longer than that.
    pub tasks: TaskTracker,
}

/// Ends a request's count in flight when the request ends (or is dropped).
struct InFlight<'a>(&'a mpsc::UnboundedSender<Command>, PeerId);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let _ = self.0.send(Command::Done(self.1));
    }
}

impl Link {
    /// Asks the siblings task; `None` once it has stopped.
    pub async fn call<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(command(tx)).ok()?;
        rx.await.ok()
    }

    /// Tells the siblings task, without waiting.
    pub fn tell(&self, command: Command) {
        // A stopped task has nothing left to update.
        let _ = self.commands.send(command);
    }

    /// Gets `id` from a holder, else from the site's WAN fetcher. `None`: this reflector
    /// should pull it over the WAN itself.
    pub async fn fetch_now(&self, id: ChunkId, class: TrafficClass) -> Option<StoredChunk> {
        // Counted from the first failure: a miss may have queued at the leader for long before.
        let mut give_up: Option<Instant> = None;
        loop {
            let plan = self.call(|reply| Command::Plan { id, reply }).await?;
            for c in plan.holders.into_iter().take(MAX_HOLDERS_TRIED) {
                match self.ask(&c, id, class, HOLDER_TIMEOUT).await {
                    Ok(Some(chunk)) => return Some(chunk),
                    Ok(None) => {
                        tracing::debug!(chunk = %id, sibling = %c.peer, "holder lacks the chunk")
                    }
                    Err(e) => {
                        tracing::debug!(chunk = %id, sibling = %c.peer, error = %e, "holder failed")
                    }
                }
            }
            let (fetcher, asked) = match plan.next {
                Next::PullHere => return None,
                Next::Ask(c) => (c.peer, self.ask(&c, id, class, self.delegate_timeout).await),
                Next::Unreachable(p) => (p, Err(format!("sibling {p} is not reachable"))),
            };
            let why = match asked {
                Ok(Some(chunk)) => {
                    self.metrics.sibling_delegated.inc();
                    return Some(chunk);
                }
                // Its view does not name it the fetcher (the views differ for a moment).
                Ok(None) => "it does not take the chunk".to_string(),
                Err(e) => e,
            };
            // Spread: pull it here. Leader: every other reflector of the site that waits on the
            // leader would pull the same chunks, so wait for the leader to answer again or for
            // its entry to expire and a new leader to be named; pull it here only after that.
            let give_up = *give_up.get_or_insert_with(|| Instant::now() + self.handover_wait);
            if self.sharing == WanSharing::Spread || Instant::now() >= give_up {
                tracing::info!(chunk = %id, sibling = %fetcher, problem = %why, "the site's WAN fetcher did not deliver; pulling it here");
                return None;
            }
            tracing::debug!(chunk = %id, sibling = %fetcher, problem = %why, "waiting for the site's WAN leader");
            tokio::time::sleep(LEADER_RETRY).await;
        }
    }

    /// Asks one sibling for `id`; verifies and caches what it sends. `Ok(None)`: it lacks it.
    async fn ask(
        &self,
        c: &Candidate,
        id: ChunkId,
        class: TrafficClass,
        timeout: Duration,
    ) -> Result<Option<StoredChunk>, String> {
        let _guard = InFlight(&self.commands, c.peer);
        let (peer, addr) = (c.peer, c.addr);
        let connected = self.call(|reply| Command::Connect { peer, addr, reply }).await;
        let client = match connected {
            Some(Ok(client)) => client,
            Some(Err(e)) => {
                self.tell(Command::Avoid { peer, why: format!("unreachable: {e}") });
                return Err(e);
            }
            None => return Err("the reflector is shutting down".into()),
        };
        let request = async {
            let mut replies = client.chunks_in(vec![id], class).await.map_err(|e| e.to_string())?;
            match replies.next().await.map_err(|e| e.to_string())? {
                Some(ChunkReply::Chunk(chunk)) => Ok::<_, String>(Some(chunk)),
                Some(ChunkReply::Missing(_)) | None => Ok(None),
            }
        };
        let chunk = match tokio::time::timeout(timeout, request).await {
            Err(_) => return Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => {
                if client.connection().close_reason().is_some() {
                    self.tell(Command::Lost { peer, addr, why: e.clone() });
                }
                return Err(e);
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(chunk))) => chunk,
        };
        let len = chunk.data.len() as u64;
        let cache = self.cache.upgrade().ok_or("the reflector is shutting down")?;
        let verified = self
            .tasks
            .spawn_blocking(move || {
                if chunk.id != id {
                    return Err(format!("sent chunk {} when asked for {id}", chunk.id));
                }
                chunk.decode_verified().map_err(|e| e.to_string())?;
                if let Err(e) = cache.put(&chunk) {
                    tracing::error!(chunk = %id, error = %e, "cannot store chunk in the cache");
                }
                Ok(chunk)
            })
            .await
            .map_err(|e| e.to_string())?;
        match verified {
            Ok(chunk) => {
                match c.kind {
                    Kind::SameSite => self.metrics.sibling_bytes.inc_by(len),
                    Kind::OtherSite => self.metrics.peer_site_bytes.inc_by(len),
                };
                Ok(Some(chunk))
            }
            Err(problem) => {
                self.metrics.sibling_corrupt.inc();
                self.tell(Command::Avoid {
                    peer,
                    why: format!("sent a bad chunk {id}: {problem}"),
                });
                Err(problem)
            }
        }
    }
}
