//! Upstream chunk fetching: miss coalescing, batching, pipelining, WAN pacing, verification.
//!
//! * Every request for a chunk the cache lacks registers a waiter in a [`MissTable`]; only the
//!   first one (the leader) queues the id, so N concurrent requests cause one upstream fetch.
//! * The decisions (the foreground/background queue, the unpaid window, the payment rule and
//!   the retries) are [`UpstreamFetch`]'s, the state machine the simulator drives too; this
//!   module does the waiting, the requests and the verification around it.
//! * One batcher task drains the queue (foreground first): it waits up to `batch_delay` for
//!   more misses unless a batch is full, takes up to `batch_max_chunks` ids (fewer when the WAN
//!   rate is low, so a batch is about 1/8 s of traffic) and sends one GetChunks. Up to
//!   `batches_in_flight` batches are in flight.
//! * WAN pacing: sizes are only known once chunks arrive, so every chunk is paid for in the
//!   [`oasis_core::policy::WanLimiter`] with its exact size as sent *when it arrives*, before the
//!   bytes it frees in the window below can be requested again. Under a rate limit, the bytes
//!   requested but not yet paid for are kept under the unpaid window of
//!   [`oasis_core::policy::unpaid`] (1/8 s of the rate shared with background, plus two round
//!   trips for foreground). So the limiter admits exactly the bytes received, and over any
//!   interval the bytes received exceed the policy's `burst + rate × T` by at most the two
//!   windows (1/4 s of the rate and two round trips of it).
//! * Each chunk is verified (`decode_verified`) off the async threads before it is stored and
//!   handed to its waiters; a bad one is asked for again (up to [`MAX_ATTEMPTS`] times).
//! * A failed request (connection lost, no answer within the reply timeout) puts its
//!   unanswered ids back at the front of the queue; they go out again once upstream is back.

use crate::cache::Cache;
use crate::metrics::ReflectorMetrics;
use crate::policy::{PolicyControl, CHUNK_FRAME_OVERHEAD};
use crate::upstream::Upstream;
use oasis_core::cache::{Begin, MissTable};
use oasis_core::compress::StoredChunk;
use oasis_core::net::{ChunkReply, Client, NetError};
use oasis_core::policy::unpaid::window_limit;
use oasis_core::policy::TrafficClass;
use oasis_core::upstream_fetch::UpstreamFetch;
use oasis_core::ChunkId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use oasis_core::upstream_fetch::MAX_ATTEMPTS;
/// Longest wait for the next answer on an upstream chunk stream before the connection is
/// considered dead (the limiter is paid before a request is sent, so a healthy upstream answers
/// at once).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a fetch gives its waiters: the chunk (verified), `None` if upstream does not have it,
/// or why it failed.
pub type Outcome = Result<Option<StoredChunk>, String>;
type Waiter = oneshot::Sender<Outcome>;

/// Why a waiting request gave up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Upstream did not deliver within the time allowed.
    #[error("{0}")]
    Timeout(String),
    /// Upstream kept sending bad data or refusing.
    #[error("{0}")]
    Failed(String),
}

/// How long a waiter waits.
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    /// Give up after this long if upstream delivered nothing meanwhile.
    pub idle: Duration,
    /// Give up after this long in any case (None: never while upstream makes progress).
    pub max: Option<Duration>,
}

impl Patience {
    /// How long a reflector's miss waits, with `miss_timeout` from its config.
    pub fn for_miss(capped: bool, miss_timeout: Duration) -> Patience {
        // Under a WAN cap a miss may queue behind others by policy: it waits as long as the
        // upstream keeps delivering (a stall still ends it after `miss_timeout`). Without a cap
        // a slow upstream is trouble, and the wait is bounded.
        let max = if capped { None } else { Some(miss_timeout * 5 / 2) };
        Patience { idle: miss_timeout, max }
    }
}

enum BatchFailure {
    /// No answer in time: the connection is dropped and rebuilt.
    Timeout,
    Net(NetError),
}

pub struct Fetcher {
    cache: Arc<Cache>,
    upstream: Arc<Upstream>,
    policy: Arc<PolicyControl>,
    metrics: ReflectorMetrics,
    table: Mutex<MissTable<Waiter>>,
    /// The queue, the unpaid window and the attempts.
    state: Mutex<UpstreamFetch<ChunkId>>,
    wake: Notify,
    /// Woken when window bytes are released.
    window_freed: Notify,
    /// Woken when fetches end (pull-ahead waits for room on it).
    settled: Notify,
    in_flight: Arc<Semaphore>,
    batch_max: usize,
    batch_delay: Duration,
    /// Batches and stores in flight; the reflector waits for them when it stops.
    tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the fetcher batches its upstream requests (the config's `batch_max_chunks`,
/// `batch_delay` and `batches_in_flight`).
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub batch_max: usize,
    pub batch_delay: Duration,
    pub batches_in_flight: usize,
}

impl Fetcher {
    pub fn new(
        cache: Arc<Cache>,
        upstream: Arc<Upstream>,
        policy: Arc<PolicyControl>,
        metrics: ReflectorMetrics,
        batching: Batching,
        tasks: TaskTracker,
    ) -> Fetcher {
        let Batching { batch_max, batch_delay, batches_in_flight } = batching;
        Fetcher {
            cache,
            upstream,
            policy,
            metrics,
            table: Mutex::new(MissTable::new()),
            state: Mutex::new(UpstreamFetch::new()),
            wake: Notify::new(),
            window_freed: Notify::new(),
            settled: Notify::new(),
            in_flight: Arc::new(Semaphore::new(batches_in_flight.max(1))),
            batch_max: batch_max.max(1),
            batch_delay,
            tasks,
        }
    }

    /// Chunk payload bytes received from upstream so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.metrics.upstream_bytes.get()
    }

    /// Chunks being fetched (leaders in flight or queued).
    pub fn pending(&self) -> usize {
        lock(&self.table).len()
    }

    /// Waits until fewer than `limit` chunks are being fetched.
    pub async fn pending_below(&self, limit: usize) {
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.pending() < limit {
                return;
            }
            settled.await;
        }
    }

    fn enqueue(&self, id: ChunkId, class: TrafficClass, front: bool) {
        let mut st = lock(&self.state);
        if front {
            st.want_again(id, class);
        } else {
            st.want(id, class);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Registers a request for `id`; the receiver gets the outcome. Starts an upstream fetch
    /// unless one is in flight.
    pub fn start(&self, id: ChunkId, class: TrafficClass) -> (oneshot::Receiver<Outcome>, Begin) {
        let (tx, rx) = oneshot::channel();
        let role = {
            let mut table = lock(&self.table);
            let role = table.begin(id, tx);
            self.metrics.upstream_pending.set(table.len() as i64);
            role
        };
        match role {
            Begin::Leader => self.enqueue(id, class, false),
            Begin::Follower => {
                self.metrics.coalesced.inc();
                if class == TrafficClass::Foreground {
                    lock(&self.state).upgrade(id);
                    self.wake.notify_one();
                }
            }
        }
        (rx, role)
    }

    /// Fetches `id` from upstream (joining a fetch in flight), waiting as `patience` allows.
    pub async fn fetch(
        &self,
        id: ChunkId,
        class: TrafficClass,
        patience: Patience,
    ) -> Result<Option<StoredChunk>, FetchError> {
        let (rx, _) = self.start(id, class);
        self.wait(id, rx, patience).await
    }

    /// Waits for the fetch of `id` that [`Fetcher::start`] registered `rx` with.
    pub async fn wait(
        &self,
        id: ChunkId,
        mut rx: oneshot::Receiver<Outcome>,
        patience: Patience,
    ) -> Result<Option<StoredChunk>, FetchError> {
        let started = Instant::now();
        let mut slice = patience.idle;
        loop {
            match tokio::time::timeout(slice, &mut rx).await {
                Ok(Ok(outcome)) => return outcome.map_err(FetchError::Failed),
                Ok(Err(_)) => {
                    return Err(FetchError::Failed(format!("fetch of chunk {id} was abandoned")))
                }
                Err(_) => {
                    let waited = started.elapsed();
                    let stalled = !self.upstream.is_connected()
                        || !self.upstream.progressed_within(patience.idle);
                    if stalled || patience.max.is_some_and(|m| waited >= m) {
                        return Err(FetchError::Timeout(format!(
                            "chunk {id} not available: {} (waited {:.1} s)",
                            self.upstream.trouble(),
                            waited.as_secs_f64()
                        )));
                    }
                    slice = Duration::from_millis(500);
                }
            }
        }
    }

    /// Fails every request waiting on upstream (shutdown), so that none waits for nothing.
    pub fn abort_all(&self, why: &str) {
        let all = lock(&self.table).drain();
        self.metrics.upstream_pending.set(0);
        self.settled.notify_waiters();
        for (_, waiters) in all {
            for w in waiters {
                let _ = w.send(Err(why.to_string()));
            }
        }
    }

    /// Hands the outcome to every waiter of `id`.
    fn resolve(&self, id: ChunkId, outcome: Outcome) {
        let waiters = {
            let mut table = lock(&self.table);
            let waiters = table.complete(&id);
            self.metrics.upstream_pending.set(table.len() as i64);
            waiters
        };
        lock(&self.state).settled(&id);
        self.settled.notify_waiters();
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }

    /// Counts a failed attempt; true if the id may be tried again.
    fn retry_allowed(&self, id: ChunkId) -> bool {
        lock(&self.state).failed(id)
    }

    /// The unpaid window for `class` under the rate in force; None = unlimited. It holds what
    /// arrives in 1/8 s, and for foreground two upstream round trips more at that rate:
    /// requests are answered a round trip after they are sent, and a lost packet holds its
    /// answer back another one, so a shorter window leaves a long link idle between answers.
    /// Background keeps 1/8 s: foreground that arrives later waits behind whatever background
    /// is already in flight.
    /// 0 for background when the policy stops prefetch over the WAN (`background_share = 0`):
    /// chunks are paid for when they arrive, so a background request sent then would bring
    /// bytes over the WAN that the policy forbids, and hold up what an endpoint later needs.
    fn window_limit(&self, class: TrafficClass, rtt: Duration) -> Option<u64> {
        let limiter = &self.policy.limiter;
        window_limit(class, limiter.rate_now(), limiter.policy().background_share(), rtt)
    }

    /// The class the next batch would be of.
    fn next_class(&self) -> TrafficClass {
        lock(&self.state).next_class()
    }

    /// Takes up to `n` ids of one class (foreground first), skipping ids nobody waits for.
    fn take_batch(&self, class: TrafficClass, n: usize) -> Option<Vec<ChunkId>> {
        let mut table = lock(&self.table);
        // Requests that gave up (timed out, endpoint gone) need no fetch.
        let ids = lock(&self.state).take(class, n, |id| !table.prune(id, |w| !w.is_closed()));
        self.metrics.upstream_pending.set(table.len() as i64);
        drop(table);
        // Pruned ids no longer count as pending.
        self.settled.notify_waiters();
        (!ids.is_empty()).then_some(ids)
    }

    /// The batcher: runs until aborted.
    pub async fn run(self: Arc<Self>) {
        loop {
            // Work?
            loop {
                let notified = self.wake.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if lock(&self.state).queued() > 0 {
                    break;
                }
                notified.await;
            }
            // A connection?
            let Some(client) = self.upstream.current() else {
                self.upstream.wait(Duration::from_secs(1)).await;
                continue;
            };
            // A slot?
            let permit =
                self.in_flight.clone().acquire_owned().await.expect("semaphore never closed");
            // Room in the unpaid window (under a rate limit)?
            let (class, room, estimate) = loop {
                let freed = self.window_freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                let class = self.next_class();
                let limit = self.window_limit(class, client.connection().rtt());
                let (room, estimate) = {
                    let st = lock(&self.state);
                    (st.room(class, limit, self.batch_max), st.estimate())
                };
                if room > 0 {
                    break (class, room, estimate);
                }
                // The rate may change (reload, schedule) while waiting: look again now and then.
                let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
            };
            if lock(&self.state).queued() < room && !self.batch_delay.is_zero() {
                tokio::time::sleep(self.batch_delay).await;
            }
            // Foreground may have arrived meanwhile; it goes first.
            let class = if class == TrafficClass::Background { self.next_class() } else { class };
            let Some(ids) = self.take_batch(class, room) else { continue };
            // Chunks that landed since they were queued (a racing request) need no fetch.
            let (ids, present): (Vec<_>, Vec<_>) =
                ids.into_iter().partition(|id| !self.cache.contains(id));
            for id in present {
                let me = self.clone();
                self.tasks
                    .spawn(async move { me.resolve_from_cache(id, class).await }.in_current_span());
            }
            if ids.is_empty() {
                continue;
            }
            lock(&self.state).asked(class, estimate * ids.len() as u64);
            self.tasks.spawn(
                self.clone().run_batch(client, ids, class, estimate, permit).in_current_span(),
            );
        }
    }

    /// Pays for a chunk that arrived, then frees its share of the window.
    async fn pay(&self, class: TrafficClass, actual: u64, estimate: u64) {
        self.policy.limiter.acquire(class, actual).await;
        lock(&self.state).paid(class, estimate, actual);
        self.window_freed.notify_one();
    }

    /// Bytes asked for that will not come: their share of the window is freed unpaid.
    fn release(&self, class: TrafficClass, bytes: u64) {
        lock(&self.state).not_coming(class, bytes);
        self.window_freed.notify_one();
    }

    async fn resolve_from_cache(self: Arc<Self>, id: ChunkId, class: TrafficClass) {
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.get(&id)).await {
            Ok(Ok(Some(c))) => self.resolve(id, Ok(Some(c))),
            // Dropped as corrupt between the check and the read: fetch it after all.
            Ok(Ok(None)) => self.enqueue(id, class, true),
            Ok(Err(e)) => self.resolve(id, Err(format!("reading chunk {id} from the cache: {e}"))),
            Err(e) => self.resolve(id, Err(format!("reading chunk {id} from the cache: {e}"))),
        }
    }

    /// One GetChunks request and its answers.
    async fn run_batch(
        self: Arc<Self>,
        client: Client,
        ids: Vec<ChunkId>,
        class: TrafficClass,
        estimate: u64,
        _permit: OwnedSemaphorePermit,
    ) {
        let mut unanswered: VecDeque<ChunkId> = ids.iter().copied().collect();
        let (sent, n) = (Instant::now(), ids.len());
        tracing::trace!(chunks = n, ?class, "chunk batch sent upstream");
        let result = async {
            let mut replies =
                match tokio::time::timeout(REPLY_TIMEOUT, client.chunks_in(ids, class)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(BatchFailure::Net(e)),
                    Err(_) => return Err(BatchFailure::Timeout),
                };
            loop {
                match tokio::time::timeout(REPLY_TIMEOUT, replies.next()).await {
                    Err(_) => return Err(BatchFailure::Timeout),
                    Ok(Err(e)) => return Err(BatchFailure::Net(e)),
                    Ok(Ok(None)) => {
                        let ms = sent.elapsed().as_secs_f64() * 1e3;
                        tracing::trace!(chunks = n, ms, "chunk batch answered");
                        return Ok(());
                    }
                    Ok(Ok(Some(reply))) => {
                        unanswered.pop_front();
                        self.handle_reply(reply, class, estimate).await;
                    }
                }
            }
        }
        .await;
        let Err(failure) = result else { return };
        self.metrics.upstream_errors.inc();
        self.release(class, estimate * unanswered.len() as u64);
        let connection_trouble = match &failure {
            BatchFailure::Timeout => {
                self.upstream.reset(&client, "no answer to a chunk request in time");
                true
            }
            BatchFailure::Net(e) => {
                matches!(e, NetError::Connection { .. } | NetError::Timeout { .. })
                    || client.connection().close_reason().is_some()
            }
        };
        let why = match &failure {
            BatchFailure::Timeout => format!("no answer within {} s", REPLY_TIMEOUT.as_secs()),
            BatchFailure::Net(e) => e.to_string(),
        };
        tracing::warn!(
            upstream = %self.upstream.target,
            error = %why,
            unanswered = unanswered.len(),
            "upstream chunk request failed; asking again"
        );
        if connection_trouble {
            // Not the chunks' fault: they go out again once the connection is back.
            let mut st = lock(&self.state);
            for id in unanswered.into_iter().rev() {
                st.want_again(id, class);
            }
            drop(st);
            self.wake.notify_one();
            return;
        }
        // An error answer: retry a bounded number of times, after a pause.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for id in unanswered.into_iter().rev() {
            if self.retry_allowed(id) {
                self.enqueue(id, class, true);
            } else {
                self.resolve(
                    id,
                    Err(format!("upstream {} refused chunk {id}: {why}", self.upstream.target)),
                );
            }
        }
    }

    async fn handle_reply(self: &Arc<Self>, reply: ChunkReply, class: TrafficClass, estimate: u64) {
        self.upstream.progress();
        match reply {
            ChunkReply::Missing(id) => {
                self.release(class, estimate);
                self.resolve(id, Ok(None));
            }
            ChunkReply::Chunk(chunk) => {
                let len = chunk.data.len() as u64;
                self.metrics.upstream_bytes.inc_by(len);
                self.metrics.upstream_chunks.inc();
                self.policy.note_chunk_size(len + CHUNK_FRAME_OVERHEAD);
                let me = self.clone();
                self.tasks.spawn(
                    async move { me.verify_and_store(chunk, class).await }.in_current_span(),
                );
                // Paid before the next answer is read and before its window share is requested
                // again: the limiter admits exactly what arrived.
                self.pay(class, len, estimate).await;
            }
        }
    }

    async fn verify_and_store(self: Arc<Self>, chunk: StoredChunk, class: TrafficClass) {
        let id = chunk.id;
        let cache = self.cache.clone();
        let checked = tokio::task::spawn_blocking(move || match chunk.decode_verified() {
            Ok(_) => {
                if let Err(e) = cache.put(&chunk) {
                    // Still good to serve from memory; the next request fetches it again.
                    tracing::error!(chunk = %chunk.id, error = %e, "cannot store chunk in the cache");
                }
                Ok(chunk)
            }
            Err(e) => Err(e.to_string()),
        })
        .await;
        match checked {
            Ok(Ok(chunk)) => self.resolve(id, Ok(Some(chunk))),
            Ok(Err(problem)) => {
                self.metrics.upstream_corrupt.inc();
                if self.retry_allowed(id) {
                    tracing::warn!(chunk = %id, %problem, "upstream sent a corrupt chunk; asking again");
                    self.enqueue(id, class, true);
                } else {
                    tracing::error!(chunk = %id, %problem, "upstream keeps sending a corrupt chunk");
                    self.resolve(
                        id,
                        Err(format!(
                            "upstream {} sent chunk {id} corrupt {MAX_ATTEMPTS} times: {problem}",
                            self.upstream.target
                        )),
                    );
                }
            }
            Err(e) => self.resolve(id, Err(format!("verifying chunk {id}: {e}"))),
        }
    }
}
