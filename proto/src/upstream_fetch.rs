//! A reflector's upstream fetching, without I/O: what to ask its upstream for next and what it
//! may ask for before paying, as the reflector's fetcher and the simulator both run it.
//!
//! * **Queue.** Chunks wait in two queues, foreground (an endpoint waits) before background
//!   (prefetch); a background chunk an endpoint comes to wait for moves to the foreground.
//!   What failed for the connection's sake goes back to the front.
//! * **Payment rule.** A chunk's size as sent is known only when it arrives, so it is paid in
//!   the site's `WanBudget` with that exact size on arrival, and only once it is paid does its
//!   share of the unpaid window (see [`crate::policy::unpaid`]) free room for the next request. So the budget
//!   admits exactly the bytes received, and what is asked for and not yet paid stays under the
//!   window.
//! * **Batching.** A batch takes as many chunks of one class as the window has room for (at
//!   most the configured batch size), each counted at the running estimate of a chunk's size.
//! * **Retries.** A chunk that arrives corrupt or is refused is asked for again, up to
//!   [`MAX_ATTEMPTS`] times.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use crate::policy::unpaid::UnpaidWindow;
use crate::policy::TrafficClass;

/// Times a chunk is asked for when it keeps arriving corrupt or keeps failing, before its
/// waiters get an error.
pub const MAX_ATTEMPTS: u8 = 3;

/// The two queues of chunks to ask for.
#[derive(Debug)]
struct ClassQueue<K> {
    fg: VecDeque<K>,
    bg: VecDeque<K>,
    /// Ids queued and their class; deque entries not matching it are stale (upgraded).
    queued: HashMap<K, TrafficClass>,
    fg_live: usize,
    bg_live: usize,
}

impl<K> Default for ClassQueue<K> {
    fn default() -> Self {
        ClassQueue {
            fg: VecDeque::new(),
            bg: VecDeque::new(),
            queued: HashMap::new(),
            fg_live: 0,
            bg_live: 0,
        }
    }
}

impl<K: Copy + Eq + Hash> ClassQueue<K> {
    fn push(&mut self, id: K, class: TrafficClass, front: bool) {
        match (self.queued.get(&id).copied(), class) {
            (Some(TrafficClass::Foreground), _)
            | (Some(TrafficClass::Background), TrafficClass::Background) => return,
            (Some(TrafficClass::Background), TrafficClass::Foreground) => {
                // Upgrade: an endpoint now waits for a chunk prefetch had queued.
                self.bg_live -= 1;
            }
            (None, _) => {}
        }
        self.queued.insert(id, class);
        let (q, live) = match class {
            TrafficClass::Foreground => (&mut self.fg, &mut self.fg_live),
            TrafficClass::Background => (&mut self.bg, &mut self.bg_live),
        };
        *live += 1;
        if front {
            q.push_front(id);
        } else {
            q.push_back(id);
        }
    }

    fn pop(&mut self, class: TrafficClass) -> Option<K> {
        loop {
            let id = match class {
                TrafficClass::Foreground => self.fg.pop_front()?,
                TrafficClass::Background => self.bg.pop_front()?,
            };
            if self.queued.get(&id) == Some(&class) {
                self.queued.remove(&id);
                match class {
                    TrafficClass::Foreground => self.fg_live -= 1,
                    TrafficClass::Background => self.bg_live -= 1,
                }
                return Some(id);
            }
        }
    }
}

/// One reflector's upstream fetching state: the queues, the unpaid window and the attempts.
#[derive(Debug)]
pub struct UpstreamFetch<K> {
    queue: ClassQueue<K>,
    window: UnpaidWindow,
    attempts: HashMap<K, u8>,
}

impl<K> Default for UpstreamFetch<K> {
    fn default() -> Self {
        UpstreamFetch {
            queue: ClassQueue::default(),
            window: UnpaidWindow::default(),
            attempts: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> UpstreamFetch<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `id` is wanted in `class` (at the back of its queue; a background id wanted in the
    /// foreground moves there).
    pub fn want(&mut self, id: K, class: TrafficClass) {
        self.queue.push(id, class, false);
    }

    /// `id` goes out again first: its request failed for the connection's sake, or it is to
    /// be retried.
    pub fn want_again(&mut self, id: K, class: TrafficClass) {
        self.queue.push(id, class, true);
    }

    /// An endpoint now waits for `id`: if it is queued as background, it moves to foreground.
    pub fn upgrade(&mut self, id: K) {
        if self.queue.queued.get(&id) == Some(&TrafficClass::Background) {
            self.queue.push(id, TrafficClass::Foreground, false);
        }
    }

    /// Empties the queues: every id queued, with its class, foreground first, each in order
    /// (the simulator hands a dead reflector's misses to the one that fetches them now).
    pub fn drain_queued(&mut self) -> Vec<(K, TrafficClass)> {
        let mut out = Vec::with_capacity(self.queued());
        for class in [TrafficClass::Foreground, TrafficClass::Background] {
            while let Some(id) = self.queue.pop(class) {
                out.push((id, class));
            }
        }
        out
    }

    /// Chunks queued.
    pub fn queued(&self) -> usize {
        self.queue.fg_live + self.queue.bg_live
    }

    /// The class the next batch is of: foreground while any is queued.
    pub fn next_class(&self) -> TrafficClass {
        if self.queue.fg_live > 0 {
            TrafficClass::Foreground
        } else {
            TrafficClass::Background
        }
    }

    /// How many chunks of `class` a batch may take now under the window `limit` (None: no
    /// rate, no limit), at most `max`.
    pub fn room(&self, class: TrafficClass, limit: Option<u64>, max: usize) -> usize {
        self.window.room(class, limit, max)
    }

    /// May a request of `bytes` of `class` (its size known, as the simulator's pulls are) go
    /// now under the window `limit`? One always may when nothing is unpaid in what the class
    /// counts, unless the limit is zero.
    pub fn fits(&self, class: TrafficClass, limit: Option<u64>, bytes: u64) -> bool {
        let Some(limit) = limit else { return true };
        if limit == 0 {
            return false;
        }
        let used = self.window.used(class);
        used == 0 || used + bytes <= limit
    }

    /// Takes up to `n` queued ids of `class`, in order, dropping those `keep` refuses (nobody
    /// waits for them any more) and forgetting their attempts.
    pub fn take(
        &mut self,
        class: TrafficClass,
        n: usize,
        mut keep: impl FnMut(&K) -> bool,
    ) -> Vec<K> {
        let mut ids = Vec::with_capacity(n.min(self.queued()));
        while ids.len() < n {
            let Some(id) = self.queue.pop(class) else { break };
            if !keep(&id) {
                self.attempts.remove(&id);
                continue;
            }
            ids.push(id);
        }
        ids
    }

    /// The running estimate of a chunk's size as sent: what each chunk of a batch counts in
    /// the window until it is paid.
    pub fn estimate(&self) -> u64 {
        self.window.estimate()
    }

    /// `bytes` of `class` were asked for.
    pub fn asked(&mut self, class: TrafficClass, bytes: u64) {
        self.window.add(class, bytes);
    }

    /// A chunk asked for as `counted` bytes of `class` arrived as `actual` bytes and was paid
    /// for (the caller pays `actual` in its budget first): its window share is freed.
    pub fn paid(&mut self, class: TrafficClass, counted: u64, actual: u64) {
        self.window.release(class, counted);
        self.window.observe(actual);
    }

    /// `bytes` of `class` asked for will not come (upstream lacks them, the request failed):
    /// their window share is freed, nothing is paid.
    pub fn not_coming(&mut self, class: TrafficClass, bytes: u64) {
        self.window.release(class, bytes);
    }

    /// An attempt at `id` failed (corrupt, refused): true if it may be asked for again.
    pub fn failed(&mut self, id: K) -> bool {
        let n = self.attempts.entry(id).or_insert(0);
        *n += 1;
        *n < MAX_ATTEMPTS
    }

    /// `id` is settled (delivered, or given up): its attempts are forgotten.
    pub fn settled(&mut self, id: &K) {
        self.attempts.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FG: TrafficClass = TrafficClass::Foreground;
    const BG: TrafficClass = TrafficClass::Background;

    #[test]
    fn foreground_goes_first_and_a_waited_for_prefetch_is_upgraded() {
        let mut f = UpstreamFetch::new();
        f.want(1u32, BG);
        f.want(2, BG);
        f.want(3, FG);
        f.want(3, FG);
        assert_eq!(f.queued(), 3);
        f.upgrade(2);
        assert_eq!(f.next_class(), FG);
        assert_eq!(f.take(FG, 8, |_| true), vec![3, 2]);
        assert_eq!(f.next_class(), BG);
        assert_eq!(f.take(BG, 8, |_| true), vec![1], "the upgraded entry is stale");
        assert_eq!(f.queued(), 0);
        f.want(4, BG);
        f.want(5, BG);
        f.want_again(6, BG);
        assert_eq!(f.take(BG, 8, |&id| id != 4), vec![6, 5], "again goes first; 4 is dropped");
        f.want(8, BG);
        f.want(9, FG);
        f.want(10, BG);
        assert_eq!(f.drain_queued(), vec![(9, FG), (8, BG), (10, BG)]);
        assert_eq!(f.queued(), 0);
    }

    #[test]
    fn the_window_frees_room_only_once_a_chunk_is_paid() {
        let mut f = UpstreamFetch::<u32>::new();
        let limit = Some(1000);
        assert!(f.fits(FG, limit, 5000), "one request always goes when nothing is unpaid");
        assert!(!f.fits(FG, Some(0), 1), "a zero window lets nothing go");
        f.asked(FG, 600);
        assert!(f.fits(FG, limit, 400));
        assert!(!f.fits(FG, limit, 401));
        assert!(f.fits(BG, Some(2000), 1400), "background counts foreground's unpaid bytes too");
        assert!(!f.fits(BG, Some(2000), 1401));
        f.asked(BG, 300);
        assert!(f.fits(FG, limit, 400), "foreground has its own window");
        // It arrived; until it is paid its share stays.
        f.paid(FG, 600, 550);
        assert!(f.fits(FG, limit, 1000));
        f.not_coming(BG, 300);
        assert!(f.fits(BG, Some(1000), 1000));
    }

    #[test]
    fn a_chunk_is_tried_a_bounded_number_of_times() {
        let mut f = UpstreamFetch::new();
        assert!(f.failed(7u32));
        assert!(f.failed(7));
        assert!(!f.failed(7), "the third failure gives up");
        f.settled(&7);
        assert!(f.failed(7), "settled: counted afresh");
    }
}
