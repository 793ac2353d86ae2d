//! Pure cache bookkeeping for reflectors: which chunks to evict ([`CacheLedger`]) and which
//! misses are already being fetched ([`MissTable`]).
//!
//! Nothing here does I/O, reads a clock or spawns anything: every call that needs the time takes
//! `now` (a [`Duration`] since an arbitrary origin), so the simulator drives the same code on a
//! virtual clock that the reflector drives on real time. The reflector's async shell keeps the
//! chunk bytes in a [`crate::store::ChunkStore`] and mirrors every insert, hit and removal here.

use crate::chunk::ChunkId;
use std::collections::HashMap;
use std::time::Duration;

/// Slot index in the ledger's slab; `NIL` ends a list.
type Slot = u32;
const NIL: Slot = u32::MAX;

#[derive(Clone, Debug)]
struct Node {
    id: ChunkId,
    bytes: u64,
    last_used: Duration,
    prev: Slot,
    next: Slot,
    /// In the LRU list (false while pinned or free).
    linked: bool,
}

/// LRU accounting of a size-capped chunk cache with pins.
///
/// Every cached chunk is recorded with its size in bytes (as stored). Unpinned chunks sit in a
/// recency list: [`insert`](Self::insert) and [`touch`](Self::touch) move a chunk to the
/// most-recently-used end, [`evict_candidates`](Self::evict_candidates) reads from the other end.
/// Pinned chunks (those of layers assigned to the site) are kept out of that list, so they are
/// never eviction candidates, whatever the cap.
///
/// Pins are counted per chunk (a chunk shared by two pinned layers stays pinned until both are
/// unpinned) and may be placed before the chunk is cached: a chunk that arrives later is pinned
/// from the start.
///
/// Recency is the order of calls; `now` is recorded per chunk ([`last_used`](Self::last_used))
/// and must not go backwards (a smaller value than one already seen is taken as the latest seen).
/// Every operation is O(1) except `evict_candidates`, which is linear in what it returns.
/// Memory is roughly 120 bytes per chunk.
#[derive(Clone, Debug, Default)]
pub struct CacheLedger {
    slots: Vec<Node>,
    free: Vec<Slot>,
    index: HashMap<ChunkId, Slot>,
    /// Pin counts, also for chunks not (yet) cached.
    pins: HashMap<ChunkId, u32>,
    /// Least recently used end.
    head: Slot,
    /// Most recently used end.
    tail: Slot,
    total_bytes: u64,
    pinned_bytes: u64,
    latest: Duration,
}

impl CacheLedger {
    pub fn new() -> CacheLedger {
        CacheLedger { head: NIL, tail: NIL, ..Default::default() }
    }

    /// Records a cached chunk of `bytes` as just used. Returns false (and only touches it) when
    /// the chunk was already recorded; its size is not changed then.
    pub fn insert(&mut self, id: ChunkId, bytes: u64, now: Duration) -> bool {
        if self.index.contains_key(&id) {
            self.touch(&id, now);
            return false;
        }
        let now = self.advance(now);
        let node = Node { id, bytes, last_used: now, prev: NIL, next: NIL, linked: false };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = node;
                s
            }
            None => {
                self.slots.push(node);
                (self.slots.len() - 1) as Slot
            }
        };
        self.index.insert(id, slot);
        self.total_bytes += bytes;
        if self.pins.contains_key(&id) {
            self.pinned_bytes += bytes;
        } else {
            self.link_tail(slot);
        }
        true
    }

    /// Marks a chunk as just used. Returns false when it is not recorded.
    pub fn touch(&mut self, id: &ChunkId, now: Duration) -> bool {
        let Some(&slot) = self.index.get(id) else { return false };
        let now = self.advance(now);
        self.slots[slot as usize].last_used = now;
        if self.slots[slot as usize].linked {
            self.unlink(slot);
            self.link_tail(slot);
        }
        true
    }

    /// Forgets a chunk (it was evicted or dropped from the store); returns its size. Pins on the
    /// id are kept: they belong to layers, not to the cached copy.
    pub fn remove(&mut self, id: &ChunkId) -> Option<u64> {
        let slot = self.index.remove(id)?;
        if self.slots[slot as usize].linked {
            self.unlink(slot);
        } else if self.pins.contains_key(id) {
            self.pinned_bytes -= self.slots[slot as usize].bytes;
        }
        let bytes = self.slots[slot as usize].bytes;
        self.total_bytes -= bytes;
        self.free.push(slot);
        Some(bytes)
    }

    /// Adds one pin to `id` (cached or not). Returns true when the chunk became pinned.
    pub fn pin(&mut self, id: ChunkId) -> bool {
        let count = self.pins.entry(id).or_insert(0);
        *count += 1;
        if *count > 1 {
            return false;
        }
        if let Some(&slot) = self.index.get(&id) {
            self.unlink(slot);
            self.pinned_bytes += self.slots[slot as usize].bytes;
        }
        true
    }

    /// Removes one pin from `id`. Returns true when the chunk is no longer pinned (it then
    /// becomes the most recently used chunk, so unpinning does not make it go first).
    pub fn unpin(&mut self, id: &ChunkId) -> bool {
        let Some(count) = self.pins.get_mut(id) else { return false };
        *count -= 1;
        if *count > 0 {
            return false;
        }
        self.pins.remove(id);
        if let Some(&slot) = self.index.get(id) {
            self.pinned_bytes -= self.slots[slot as usize].bytes;
            self.link_tail(slot);
        }
        true
    }

    pub fn is_pinned(&self, id: &ChunkId) -> bool {
        self.pins.contains_key(id)
    }

    /// How many pins `id` holds.
    pub fn pin_count(&self, id: &ChunkId) -> u32 {
        self.pins.get(id).copied().unwrap_or(0)
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.index.contains_key(id)
    }

    /// Recorded size of a cached chunk.
    pub fn bytes_of(&self, id: &ChunkId) -> Option<u64> {
        self.index.get(id).map(|&s| self.slots[s as usize].bytes)
    }

    /// When the chunk was last inserted or touched.
    pub fn last_used(&self, id: &ChunkId) -> Option<Duration> {
        self.index.get(id).map(|&s| self.slots[s as usize].last_used)
    }

    /// Number of cached chunks.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of every cached chunk.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes of the cached chunks that are pinned.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    /// The unpinned chunks to evict, least recently used first, so that what remains fits in
    /// `cap` bytes. Never returns a pinned chunk: when the pinned chunks alone exceed `cap`,
    /// every unpinned chunk is returned and the cache stays over the cap. Does not change the
    /// ledger; call [`remove`](Self::remove) for each chunk actually evicted.
    pub fn evict_candidates(&self, cap: u64) -> Vec<ChunkId> {
        let mut excess = self.total_bytes.saturating_sub(cap);
        let mut out = Vec::new();
        let mut slot = self.head;
        while excess > 0 && slot != NIL {
            let n = &self.slots[slot as usize];
            out.push(n.id);
            excess = excess.saturating_sub(n.bytes);
            slot = n.next;
        }
        out
    }

    /// Unpinned chunks from least to most recently used.
    pub fn lru_order(&self) -> impl Iterator<Item = (ChunkId, u64)> + '_ {
        let mut slot = self.head;
        std::iter::from_fn(move || {
            if slot == NIL {
                return None;
            }
            let n = &self.slots[slot as usize];
            slot = n.next;
            Some((n.id, n.bytes))
        })
    }

    fn advance(&mut self, now: Duration) -> Duration {
        self.latest = self.latest.max(now);
        self.latest
    }

    fn link_tail(&mut self, slot: Slot) {
        let old_tail = self.tail;
        {
            let n = &mut self.slots[slot as usize];
            debug_assert!(!n.linked);
            n.prev = old_tail;
            n.next = NIL;
            n.linked = true;
        }
        if old_tail == NIL {
            self.head = slot;
        } else {
            self.slots[old_tail as usize].next = slot;
        }
        self.tail = slot;
    }

    fn unlink(&mut self, slot: Slot) {
        let (prev, next) = {
            let n = &mut self.slots[slot as usize];
            if !n.linked {
                return;
            }
            n.linked = false;
            (std::mem::replace(&mut n.prev, NIL), std::mem::replace(&mut n.next, NIL))
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }
}

/// What [`MissTable::begin`] made of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// No fetch of this chunk was in flight: the caller must start one (and eventually call
    /// [`MissTable::complete`]).
    Leader,
    /// A fetch is already in flight; the caller's waiter was attached to it.
    Follower,
}

/// Miss coalescing: at most one upstream fetch per chunk, however many requests want it.
///
/// Each request for a missing chunk calls [`begin`](Self::begin) with a waiter `W` (in the
/// reflector a `tokio::sync::oneshot::Sender`; in the simulator anything). The first one for a
/// chunk is the [`Begin::Leader`] and starts the fetch; later ones are [`Begin::Follower`]s
/// and start nothing. When the fetch ends (chunk, missing or failure) the fetcher calls
/// [`complete`](Self::complete) and hands the result to every waiter it returns.
#[derive(Debug)]
pub struct MissTable<W> {
    inflight: HashMap<ChunkId, Vec<W>>,
    leaders: u64,
    followers: u64,
}

impl<W> Default for MissTable<W> {
    fn default() -> Self {
        MissTable { inflight: HashMap::new(), leaders: 0, followers: 0 }
    }
}

impl<W> MissTable<W> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `waiter` for `id`; see [`Begin`].
    pub fn begin(&mut self, id: ChunkId, waiter: W) -> Begin {
        match self.inflight.get_mut(&id) {
            Some(waiters) => {
                waiters.push(waiter);
                self.followers += 1;
                Begin::Follower
            }
            None => {
                self.inflight.insert(id, vec![waiter]);
                self.leaders += 1;
                Begin::Leader
            }
        }
    }

    /// Ends the fetch of `id` and returns its waiters (empty if none was in flight). The next
    /// `begin` for `id` is a leader again.
    pub fn complete(&mut self, id: &ChunkId) -> Vec<W> {
        self.inflight.remove(id).unwrap_or_default()
    }

    /// Drops the waiters of `id` for which `keep` is false (e.g. requests that gave up). When
    /// none is left the entry is removed and true is returned: the fetch may be skipped (a later
    /// request will lead a new one).
    pub fn prune(&mut self, id: &ChunkId, keep: impl FnMut(&W) -> bool) -> bool {
        let Some(waiters) = self.inflight.get_mut(id) else { return true };
        waiters.retain(keep);
        if waiters.is_empty() {
            self.inflight.remove(id);
            true
        } else {
            false
        }
    }

    /// Ends every fetch at once (shutdown) and returns each chunk with its waiters.
    pub fn drain(&mut self) -> Vec<(ChunkId, Vec<W>)> {
        self.inflight.drain().collect()
    }

    /// Is a fetch of `id` in flight?
    pub fn is_pending(&self, id: &ChunkId) -> bool {
        self.inflight.contains_key(id)
    }

    /// Waiters attached to the fetch of `id`.
    pub fn waiters(&self, id: &ChunkId) -> usize {
        self.inflight.get(id).map_or(0, Vec::len)
    }

    /// Chunks being fetched.
    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }

    /// Requests that started a fetch, since creation.
    pub fn leaders(&self) -> u64 {
        self.leaders
    }

    /// Requests that joined a fetch in flight, since creation.
    pub fn followers(&self) -> u64 {
        self.followers
    }
}

/// An alias under the name the reflector issue uses.
pub type Coalescer<W> = MissTable<W>;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u32) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut l = CacheLedger::new();
        for i in 0..5 {
            assert!(l.insert(id(i), 100, t(i as u64)));
        }
        assert_eq!(l.total_bytes(), 500);
        assert!(l.evict_candidates(500).is_empty());
        // Touch 0: 1 becomes the oldest.
        l.touch(&id(0), t(10));
        assert_eq!(l.evict_candidates(450), vec![id(1)]);
        assert_eq!(l.evict_candidates(300), vec![id(1), id(2)]);
        assert_eq!(l.evict_candidates(0), vec![id(1), id(2), id(3), id(4), id(0)]);
        assert_eq!(l.last_used(&id(0)), Some(t(10)));
        // evict_candidates does not change anything.
        assert_eq!(l.len(), 5);
        assert_eq!(l.remove(&id(1)), Some(100));
        assert_eq!(l.remove(&id(1)), None);
        assert_eq!(l.total_bytes(), 400);
        assert_eq!(l.evict_candidates(300), vec![id(2)]);
    }

    #[test]
    fn reinsert_touches_and_keeps_size() {
        let mut l = CacheLedger::new();
        l.insert(id(1), 10, t(0));
        l.insert(id(2), 10, t(1));
        assert!(!l.insert(id(1), 99, t(2)));
        assert_eq!(l.total_bytes(), 20);
        assert_eq!(l.evict_candidates(10), vec![id(2)]);
    }

    #[test]
    fn pinned_chunks_are_never_candidates() {
        let mut l = CacheLedger::new();
        for i in 0..4 {
            l.insert(id(i), 100, t(i as u64));
        }
        assert!(l.pin(id(0)));
        assert!(!l.pin(id(0)), "second pin only counts");
        assert_eq!(l.pinned_bytes(), 100);
        assert_eq!(l.evict_candidates(0), vec![id(1), id(2), id(3)]);
        // Unpinning once keeps it pinned (two layers pinned it).
        assert!(!l.unpin(&id(0)));
        assert!(!l.evict_candidates(0).contains(&id(0)));
        assert!(l.unpin(&id(0)));
        assert!(!l.unpin(&id(0)), "not pinned any more");
        assert_eq!(l.pinned_bytes(), 0);
        // Unpinned, it is the most recently used.
        assert_eq!(l.evict_candidates(0), vec![id(1), id(2), id(3), id(0)]);
    }

    #[test]
    fn pin_before_insert_and_remove_keeps_pin() {
        let mut l = CacheLedger::new();
        l.pin(id(7));
        l.insert(id(7), 50, t(0));
        l.insert(id(8), 50, t(1));
        assert_eq!(l.pinned_bytes(), 50);
        assert_eq!(l.evict_candidates(0), vec![id(8)]);
        assert_eq!(l.remove(&id(7)), Some(50));
        assert_eq!(l.pinned_bytes(), 0);
        assert!(l.is_pinned(&id(7)), "the pin belongs to the layer, not the copy");
        l.insert(id(7), 50, t(2));
        assert_eq!(l.pinned_bytes(), 50);
        assert_eq!(l.evict_candidates(0), vec![id(8)]);
    }

    #[test]
    fn time_never_goes_backwards() {
        let mut l = CacheLedger::new();
        l.insert(id(1), 1, t(100));
        l.insert(id(2), 1, t(50));
        assert_eq!(l.last_used(&id(2)), Some(t(100)));
        assert_eq!(l.evict_candidates(1), vec![id(1)]);
    }

    #[test]
    fn miss_table_coalesces() {
        let mut m: MissTable<u32> = MissTable::new();
        assert_eq!(m.begin(id(1), 1), Begin::Leader);
        for w in 2..=10 {
            assert_eq!(m.begin(id(1), w), Begin::Follower);
        }
        assert_eq!(m.begin(id(2), 100), Begin::Leader);
        assert_eq!(m.waiters(&id(1)), 10);
        assert_eq!((m.leaders(), m.followers()), (2, 9));
        assert_eq!(m.complete(&id(1)), (1..=10).collect::<Vec<_>>());
        assert!(!m.is_pending(&id(1)));
        assert!(m.complete(&id(1)).is_empty());
        assert_eq!(m.begin(id(1), 11), Begin::Leader, "after completion the next one leads");
        assert_eq!(m.len(), 2);
        let mut all = m.drain();
        all.sort_by_key(|(_, w)| w[0]);
        assert_eq!(all, vec![(id(1), vec![11]), (id(2), vec![100])]);
        assert!(m.is_empty());
    }

    #[test]
    fn miss_table_prune() {
        let mut m: MissTable<u32> = MissTable::new();
        m.begin(id(1), 1);
        m.begin(id(1), 2);
        assert!(!m.prune(&id(1), |w| *w == 2));
        assert_eq!(m.waiters(&id(1)), 1);
        assert!(m.prune(&id(1), |_| false));
        assert!(!m.is_pending(&id(1)));
        assert!(m.prune(&id(9), |_| true), "nothing in flight: nothing to fetch");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u16),
        Touch(u8),
        Remove(u8),
        Pin(u8),
        Unpin(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, 1u16..1000).prop_map(|(i, b)| Op::Insert(i, b)),
            (0u8..24).prop_map(Op::Touch),
            (0u8..24).prop_map(Op::Remove),
            (0u8..24).prop_map(Op::Pin),
            (0u8..24).prop_map(Op::Unpin),
        ]
    }

    proptest! {
        /// The ledger against a naive model: a Vec in recency order plus pin counts.
        #[test]
        fn ledger_matches_a_naive_model(ops in proptest::collection::vec(op(), 0..200), cap in 0u64..8000) {
            let mut l = CacheLedger::new();
            let mut order: Vec<(u8, u64)> = Vec::new();
            let mut pins: HashMap<u8, u32> = HashMap::new();
            for (step, o) in ops.into_iter().enumerate() {
                let now = t(step as u64);
                match o {
                    Op::Insert(i, b) => {
                        let fresh = l.insert(id(i.into()), b.into(), now);
                        match order.iter().position(|(x, _)| *x == i) {
                            Some(p) => { prop_assert!(!fresh); let e = order.remove(p); order.push(e); }
                            None => { prop_assert!(fresh); order.push((i, b.into())); }
                        }
                    }
                    Op::Touch(i) => {
                        let found = l.touch(&id(i.into()), now);
                        let p = order.iter().position(|(x, _)| *x == i);
                        prop_assert_eq!(found, p.is_some());
                        if let Some(p) = p { let e = order.remove(p); order.push(e); }
                    }
                    Op::Remove(i) => {
                        let got = l.remove(&id(i.into()));
                        let p = order.iter().position(|(x, _)| *x == i);
                        prop_assert_eq!(got, p.map(|p| order.remove(p).1));
                    }
                    Op::Pin(i) => { l.pin(id(i.into())); *pins.entry(i).or_insert(0) += 1; }
                    Op::Unpin(i) => {
                        l.unpin(&id(i.into()));
                        if let Some(c) = pins.get_mut(&i) { *c -= 1; if *c == 0 {
                            pins.remove(&i);
                            // Unpinned chunks become the most recently used.
                            if let Some(p) = order.iter().position(|(x, _)| *x == i) {
                                let e = order.remove(p); order.push(e);
                            }
                        } }
                    }
                }
                let total: u64 = order.iter().map(|(_, b)| b).sum();
                let pinned: u64 = order.iter().filter(|(x, _)| pins.contains_key(x)).map(|(_, b)| b).sum();
                prop_assert_eq!(l.total_bytes(), total);
                prop_assert_eq!(l.pinned_bytes(), pinned);
                prop_assert_eq!(l.len(), order.len());
            }
            // Expected candidates: unpinned in recency order until under the cap.
            let mut excess = l.total_bytes().saturating_sub(cap);
            let mut want = Vec::new();
            for (x, b) in order.iter().filter(|(x, _)| !pins.contains_key(x)) {
                if excess == 0 { break; }
                want.push(id((*x).into()));
                excess = excess.saturating_sub(*b);
            }
            let got = l.evict_candidates(cap);
            for c in &got { prop_assert!(!l.is_pinned(c)); }
            prop_assert_eq!(got, want);
        }
    }
}
