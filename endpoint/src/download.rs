//! Fetching chunks from one source: batches of ids over `streams` concurrent GetChunks requests
//! on one connection, every chunk verified off the async runtime (on the rayon pool), written
//! straight into the staged files that use it when a tree writer is given (so fetched data is
//! never read back; the fetch then records file references in the cache instead of a copy), and
//! otherwise stored in the endpoint's cache as received (compressed form kept) by a
//! [`CacheWriter`] thread, off the path from the network to the tree.
//!
//! A chunk whose bytes do not hash to its id is never stored: it is counted as refetched and
//! asked for again, up to [`ATTEMPTS_PER_SOURCE`] times per source. A `Missing` answer, a
//! chunk still bad after the last attempt, and everything not answered when the source fails
//! are handed back so the caller can go on with the next source.

use crate::tree_writer::{TreeWriter, WriteError};
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use indicatif::ProgressBar;
use oasis_core::compress::{Encoding, StoredChunk};
use oasis_core::manifest::ChunkRef;
use oasis_core::net::{ChunkReply, Client, NetError};
use oasis_core::store::ChunkStore;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often one source is asked for a chunk that keeps arriving corrupt.
pub const ATTEMPTS_PER_SOURCE: usize = 3;
/// Longest wait for the next answer on a chunk stream before the source counts as dead.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed requests (stream errors, error frames) a source may cause before it is given up,
/// even if its connection is still up.
pub const MAX_REQUEST_ERRORS: u32 = 3;
/// Most ids and plain bytes per GetChunks request.
const MAX_BATCH_IDS: usize = 64;
const MAX_BATCH_BYTES: u64 = 16 << 20;
/// Chunks per stream being verified at once (bounds memory to streams x this x chunk size).
const VERIFY_IN_FLIGHT: usize = 16;

/// Counters shared by every download of one fetch.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Chunk payload bytes received, as sent (compressed size), good or bad.
    pub bytes_network: AtomicU64,
    /// Plain bytes of the chunks accepted.
    pub bytes_plain: AtomicU64,
    pub chunks_fetched: AtomicU64,
    /// Chunks that failed verification and were asked for again (or elsewhere).
    pub chunks_refetched: AtomicU64,
    /// `Missing` answers.
    pub chunks_missing: AtomicU64,
}

/// Everything one download needs besides the connection.
#[derive(Clone)]
pub struct Downloader {
    pub cache: Arc<CacheWriter>,
    pub streams: usize,
    pub counters: Arc<NetCounters>,
    pub progress: ProgressBar,
    /// Staged files to write each verified chunk into.
    pub sink: Option<Arc<TreeWriter>>,
}

/// What one source did not deliver.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answered `Missing`.
    pub missing: Vec<ChunkRef>,
    /// Still corrupt after [`ATTEMPTS_PER_SOURCE`] attempts.
    pub rejected: Vec<ChunkRef>,
    /// Not (successfully) answered because the source failed.
    pub unfinished: Vec<ChunkRef>,
    /// Why the source failed, if it did.
    pub error: Option<String>,
}

impl Outcome {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.rejected.is_empty() && self.unfinished.is_empty()
    }
}

/// A local failure (the cache or the target cannot be written): not the source's fault, so
/// the fetch stops.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// How the cache keeps chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheForm {
    /// As the source sent them (zstd where that was smaller): least disk.
    AsSent,
    /// Plain bytes: for chunks a device apply writes out again, so the apply reads and checks
    /// them without decoding (docs/benchmarks.md, "Device: apply": what this costs on disk and
    /// saves in time). Costs no CPU here: the plain bytes were decoded to verify the chunk.
    Plain,
}

/// Chunks queued for the cache before verification threads wait (bounds memory).
const CACHE_QUEUE: usize = 256;

/// Stores verified chunks in the endpoint's cache on a thread of its own. A chunk that cannot
/// be stored is logged and counted, not fatal: the cache only speeds up later fetches.
pub struct CacheWriter {
    store: Arc<ChunkStore>,
    form: CacheForm,
    tx: Mutex<Option<std::sync::mpsc::SyncSender<StoredChunk>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    errors: Arc<AtomicU64>,
}

impl CacheWriter {
    pub fn start(store: Arc<ChunkStore>, form: CacheForm) -> std::io::Result<CacheWriter> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<StoredChunk>(CACHE_QUEUE);
        let errors = Arc::new(AtomicU64::new(0));
        let thread = {
            let (store, errors) = (store.clone(), errors.clone());
            std::thread::Builder::new().name("oasis-cache-writer".into()).spawn(move || {
                for chunk in rx {
                    if let Err(e) = store.put(&chunk) {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(chunk = %chunk.id, error = %e, "cannot store chunk in the cache (continuing without)");
                        }
                    }
                }
            })?
        };
        Ok(CacheWriter {
            store,
            form,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            errors,
        })
    }

    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// Queues a verified chunk (`plain`: its decoded bytes, for [`CacheForm::Plain`]); waits
    /// while the queue is full.
    pub fn put(&self, chunk: StoredChunk, plain: Bytes) {
        let chunk = match self.form {
            CacheForm::AsSent => chunk,
            CacheForm::Plain => StoredChunk {
                id: chunk.id,
                encoding: Encoding::Raw,
                plain_len: chunk.plain_len,
                data: plain,
            },
        };
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            let _ = tx.send(chunk);
        }
    }

    /// Waits until every queued chunk is stored; returns how many could not be. Blocking.
    pub fn finish(&self) -> u64 {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        self.errors.load(Ordering::Relaxed)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[derive(Default)]
struct Round {
    missing: Vec<ChunkRef>,
    bad: Vec<ChunkRef>,
    unfinished: Vec<ChunkRef>,
    error: Option<String>,
    fatal: Option<LocalError>,
}

enum Verified {
    Stored,
    Bad(String),
    Failed(LocalError),
}

impl Downloader {
    /// Fetches `want` (distinct chunks) from `client` into the cache.
    pub async fn fetch_from(
        &self,
        client: &Client,
        want: Vec<ChunkRef>,
    ) -> Result<Outcome, LocalError> {
        let mut out = Outcome::default();
        let mut todo = want;
        for attempt in 1..=ATTEMPTS_PER_SOURCE {
            if todo.is_empty() {
                break;
            }
            if attempt > 1 {
                tracing::info!(source = %client.remote_addr(), chunks = todo.len(), attempt, "asking again for chunks that failed verification");
            }
            let round = self.round(client, todo).await;
            if let Some(fatal) = round.fatal {
                return Err(fatal);
            }
            out.missing.extend(round.missing);
            if round.error.is_some() {
                out.unfinished = round.unfinished;
                out.unfinished.extend(round.bad);
                out.error = round.error;
                return Ok(out);
            }
            todo = round.bad;
        }
        out.rejected = todo;
        Ok(out)
    }

    /// One pass over `todo` with `streams` concurrent requests.
    async fn round(&self, client: &Client, todo: Vec<ChunkRef>) -> Round {
        let batches = make_batches(todo, self.streams);
        let workers = self.streams.max(1).min(batches.len());
        let queue = Mutex::new(batches);
        let acc = Mutex::new(Round::default());
        let stop = AtomicBool::new(false);
        let errors = AtomicU32::new(0);
        let worker = || async {
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Some(batch) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                else {
                    break;
                };
                let r = self.batch(client, batch).await;
                let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
                a.missing.extend(r.missing);
                a.bad.extend(r.bad);
                if let Some(fatal) = r.fatal {
                    a.fatal.get_or_insert(fatal);
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                if let Some(err) = r.error {
                    let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
                    let dead = client.connection().close_reason().is_some()
                        || matches!(err, NetError::Connection { .. } | NetError::Timeout { .. })
                        || n >= MAX_REQUEST_ERRORS;
                    if dead {
                        tracing::warn!(source = %client.remote_addr(), error = %err, "source failed during the download");
                        a.error.get_or_insert(err.to_string());
                        a.unfinished.extend(r.unanswered);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    tracing::warn!(source = %client.remote_addr(), error = %err, "chunk request failed; asking again");
                    drop(a);
                    if !r.unanswered.is_empty() {
                        queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(r.unanswered);
                    }
                }
            }
        };
        futures::future::join_all((0..workers).map(|_| worker())).await;
        let mut round = acc.into_inner().unwrap_or_else(|e| e.into_inner());
        if round.error.is_some() || round.fatal.is_some() {
            let rest = queue.into_inner().unwrap_or_else(|e| e.into_inner());
            round.unfinished.extend(rest.into_iter().flatten());
        }
        round
    }

    /// One GetChunks request: reads the answers, verifies and stores the chunks.
    async fn batch(&self, client: &Client, batch: Vec<ChunkRef>) -> BatchResult {
        let mut r = BatchResult::default();
        let ids = batch.iter().map(|c| c.id).collect();
        let mut pending: VecDeque<ChunkRef> = batch.into();
        let mut replies = match tokio::time::timeout(REPLY_TIMEOUT, client.chunks(ids)).await {
            Ok(Ok(replies)) => replies,
            Ok(Err(e)) => {
                r.error = Some(e);
                r.unanswered = pending.into();
                return r;
            }
            Err(_) => {
                r.error = Some(timeout(client));
                r.unanswered = pending.into();
                return r;
            }
        };
        let mut verifying = FuturesOrdered::new();
        loop {
            while verifying.len() >= VERIFY_IN_FLIGHT {
                if let Some((c, v)) = verifying.next().await {
                    self.settle(c, v, &mut r);
                }
            }
            let reply = match tokio::time::timeout(REPLY_TIMEOUT, replies.next()).await {
                Err(_) => {
                    r.error = Some(timeout(client));
                    break;
                }
                Ok(Err(e)) => {
                    r.error = Some(e);
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(reply))) => reply,
            };
            let Some(want) = pending.pop_front() else { break };
            match reply {
                ChunkReply::Missing(_) => {
                    self.counters.chunks_missing.fetch_add(1, Ordering::Relaxed);
                    r.missing.push(want);
                }
                ChunkReply::Chunk(c) => {
                    self.counters.bytes_network.fetch_add(c.data.len() as u64, Ordering::Relaxed);
                    verifying.push_back(self.verify(c, want));
                }
            }
        }
        while let Some((c, v)) = verifying.next().await {
            self.settle(c, v, &mut r);
        }
        r.unanswered = pending.into();
        r
    }

    /// Verifies and stores a chunk on the rayon pool.
    fn verify(
        &self,
        chunk: StoredChunk,
        want: ChunkRef,
    ) -> impl std::future::Future<Output = (ChunkRef, Verified)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cache = self.cache.clone();
        let sink = self.sink.clone();
        rayon::spawn(move || {
            let v = if chunk.id != want.id || chunk.plain_len != want.len {
                Verified::Bad(format!(
                    "answer is chunk {} of {} bytes, expected {} of {} bytes",
                    chunk.id, chunk.plain_len, want.id, want.len
                ))
            } else {
                match chunk.decode_verified() {
                    Err(e) => Verified::Bad(e.to_string()),
                    Ok(plain) => match &sink {
                        // Written into the tree: the fetch records a reference to the file
                        // afterwards instead of a second copy in the cache.
                        Some(w) if w.uses(&want.id) => match w.put_chunk(&want.id, &plain) {
                            Err(e) => Verified::Failed(e.into()),
                            Ok(_) => Verified::Stored,
                        },
                        _ => {
                            cache.put(chunk, plain);
                            Verified::Stored
                        }
                    },
                }
            };
            // Release the shared handles before answering, so that once every answer is in
            // the caller holds the only references (it unwraps the writer to commit it).
            drop((cache, sink));
            let _ = tx.send(v);
        });
        async move {
            let v = rx.await.unwrap_or_else(|_| Verified::Bad("verification task panicked".into()));
            (want, v)
        }
    }

    fn settle(&self, c: ChunkRef, v: Verified, r: &mut BatchResult) {
        match v {
            Verified::Stored => {
                self.counters.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                self.counters.bytes_plain.fetch_add(c.len as u64, Ordering::Relaxed);
                self.progress.inc(c.len as u64);
            }
            Verified::Bad(why) => {
                tracing::warn!(chunk = %c.id, problem = %why, "chunk failed verification; discarded");
                self.counters.chunks_refetched.fetch_add(1, Ordering::Relaxed);
                r.bad.push(c);
            }
            Verified::Failed(e) => {
                r.fatal.get_or_insert(e);
            }
        }
    }
}

#[derive(Default)]
struct BatchResult {
    missing: Vec<ChunkRef>,
    bad: Vec<ChunkRef>,
    unanswered: Vec<ChunkRef>,
    error: Option<NetError>,
    fatal: Option<LocalError>,
}

fn timeout(client: &Client) -> NetError {
    NetError::Timeout { addr: client.remote_addr(), what: "waiting for chunks" }
}

/// Splits `todo` into requests: enough batches to keep every stream busy a few times over,
/// each at most [`MAX_BATCH_IDS`] ids and about [`MAX_BATCH_BYTES`] plain bytes.
fn make_batches(todo: Vec<ChunkRef>, streams: usize) -> VecDeque<Vec<ChunkRef>> {
    let per = todo.len().div_ceil(streams.max(1) * 4).clamp(1, MAX_BATCH_IDS);
    let mut out = VecDeque::new();
    let mut cur = Vec::with_capacity(per);
    let mut bytes = 0u64;
    for c in todo {
        if !cur.is_empty() && (cur.len() == per || bytes + c.len as u64 > MAX_BATCH_BYTES) {
            out.push_back(std::mem::replace(&mut cur, Vec::with_capacity(per)));
            bytes = 0;
        }
        bytes += c.len as u64;
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push_back(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oasis_core::ChunkId;

    #[test]
    fn batches_cover_everything_within_limits() {
        let refs: Vec<ChunkRef> = (0..1000u32)
            .map(|i| ChunkRef { id: ChunkId::of(&i.to_le_bytes()), len: 64 << 10 })
            .collect();
        let b = make_batches(refs.clone(), 8);
        assert!(b.len() >= 8);
        assert!(b.iter().all(|x| x.len() <= MAX_BATCH_IDS));
        let flat: Vec<ChunkRef> = b.into_iter().flatten().collect();
        assert_eq!(flat, refs);
        let big: Vec<ChunkRef> = (0..300u32)
            .map(|i| ChunkRef { id: ChunkId::of(&i.to_le_bytes()), len: 4 << 20 })
            .collect();
        assert!(make_batches(big, 1).iter().all(|x| x.len() <= 4));
        assert!(make_batches(Vec::new(), 8).is_empty());
    }
}
