//! The pull-ahead task: owns the ids of endpoints' requests waiting to be pulled from upstream
//! before the requests' lookups reach them ([`oasis_core::pull_ahead`] decides which go when),
//! and starts their fetches as earlier ones complete.
//!
//! Requests reach it over a channel; a full channel leaves that request to its own lookups, so
//! a server never waits on it.

use crate::fetcher::{Fetcher, Patience};
use crate::policy::PolicyControl;
use oasis_core::policy::TrafficClass;
use oasis_core::pull_ahead::PullAhead;
use oasis_core::store::ChunkStore;
use oasis_core::ChunkId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Chunks being pulled (queued or in flight) above which no more are pulled ahead: about
/// 12 MB, several bandwidth-delay products of a 100 Mbit/s, 150 ms link. Enough ahead to fill
/// a long link through lost packets; not so much that a miss asked for later waits behind
/// minutes of pulled-ahead chunks on a slow one.
pub const PULL_AHEAD_PENDING: usize = 192;
/// Ids waiting to be pulled ahead: four requests of the most ids a request may name. The ids of
/// a request beyond it are fetched by the request's lookups alone.
pub const PULL_AHEAD_WAITING: usize = 4 * oasis_core::wire::MAX_IDS_PER_REQUEST;
/// Requests on their way to the task; more at once are left to their lookups.
const REQUESTS_QUEUED: usize = 256;

/// One request's ids to pull ahead, in its traffic class.
pub(crate) type Ahead = (Vec<ChunkId>, TrafficClass);

pub(crate) fn channel() -> (mpsc::Sender<Ahead>, mpsc::Receiver<Ahead>) {
    mpsc::channel(REQUESTS_QUEUED)
}

/// What the task needs of the reflector.
pub(crate) struct PullAheadTask {
    pub rx: mpsc::Receiver<Ahead>,
    pub fetcher: Arc<Fetcher>,
    pub store: Arc<ChunkStore>,
    pub policy: Arc<PolicyControl>,
    /// The config's `miss_timeout`: a pulled-ahead fetch waits as long as a miss.
    pub miss_timeout: Duration,
    pub tasks: TaskTracker,
}

impl PullAheadTask {
    /// Runs until the reflector drops its sender.
    pub async fn run(mut self) {
        let mut waiting: PullAhead<(ChunkId, TrafficClass)> = PullAhead::new(PULL_AHEAD_WAITING);
        loop {
            if waiting.is_empty() {
                let Some(ahead) = self.rx.recv().await else { return };
                self.queue(&mut waiting, ahead);
            }
            while let Ok(ahead) = self.rx.try_recv() {
                self.queue(&mut waiting, ahead);
            }
            let ids = waiting.take(self.fetcher.pending(), PULL_AHEAD_PENDING);
            if ids.is_empty() {
                tokio::select! {
                    _ = self.fetcher.pending_below(PULL_AHEAD_PENDING) => {}
                    ahead = self.rx.recv() => match ahead {
                        Some(ahead) => self.queue(&mut waiting, ahead),
                        None => return,
                    },
                }
                continue;
            }
            self.start(ids).await;
        }
    }

    fn queue(&self, waiting: &mut PullAhead<(ChunkId, TrafficClass)>, (ids, class): Ahead) {
        let left = waiting.push(ids.into_iter().map(|id| (id, class)));
        if left > 0 {
            tracing::debug!(left, "pull-ahead queue full: the request's lookups fetch the rest");
        }
    }

    /// Starts fetching those of `ids` the cache lacks. Each fetch is registered before this
    /// returns, so the next look at the pending count sees it.
    async fn start(&self, ids: Vec<(ChunkId, TrafficClass)>) {
        let store = self.store.clone();
        let held = match tokio::task::spawn_blocking(move || {
            let only: Vec<ChunkId> = ids.iter().map(|(id, _)| *id).collect();
            store.have(&only).map(|h| (ids, h))
        })
        .await
        {
            Ok(Ok(held)) => held,
            // The lookups report what is wrong with the cache.
            _ => return,
        };
        let capped = self.policy.limiter.rate_now().is_some();
        let patience = Patience::for_miss(capped, self.miss_timeout);
        for ((id, class), _) in held.0.into_iter().zip(held.1).filter(|(_, held)| !held) {
            let (rx, _) = self.fetcher.start(id, class);
            let fetcher = self.fetcher.clone();
            self.tasks.spawn(
                async move {
                    // Failures reach the lookup that waits on the same fetch.
                    let _ = fetcher.wait(id, rx, patience).await;
                }
                .in_current_span(),
            );
        }
    }
}
