//! Which chunks a reflector pulls ahead of a request's lookups, and when.
//!
//! A server looks up only a few chunks of a request ahead of what it has written, so that
//! memory stays bounded. A reflector pulls the rest of the request from its upstream at once,
//! or a long link would carry no more than those few chunks per request at a time. What is
//! pulled ahead and not yet here is kept under a bound: on a slow link, a miss asked for later
//! would otherwise wait behind minutes of pulled-ahead chunks.
//!
//! The ids that do not fit under the bound wait here, in the order they were asked for, and go
//! out as pulls complete. Left to the lookups instead, they would go a few per round trip, and
//! the end of every transfer over a long link would run at a fraction of the link's rate.

use std::collections::VecDeque;

/// Ids waiting to be pulled ahead, oldest first, at most `cap` of them.
#[derive(Debug)]
pub struct PullAhead<T> {
    queue: VecDeque<T>,
    cap: usize,
}

impl<T> PullAhead<T> {
    /// A queue holding at most `cap` ids (at least one).
    pub fn new(cap: usize) -> PullAhead<T> {
        PullAhead { queue: VecDeque::new(), cap: cap.max(1) }
    }

    /// Queues a request's `ids` behind those already waiting. The ids beyond the queue's cap
    /// are not queued: the request's own lookups fetch them. Returns how many were left out.
    pub fn push(&mut self, ids: impl IntoIterator<Item = T>) -> usize {
        let mut left = 0;
        for id in ids {
            if self.queue.len() < self.cap {
                self.queue.push_back(id);
            } else {
                left += 1;
            }
        }
        left
    }

    /// The ids to pull now, oldest first: as many as fit under `max_pending` when `pending`
    /// chunks are being pulled already.
    pub fn take(&mut self, pending: usize, max_pending: usize) -> Vec<T> {
        let room = max_pending.saturating_sub(pending).min(self.queue.len());
        self.queue.drain(..room).collect()
    }

    /// Ids waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_out_in_order_as_room_frees() {
        let mut q = PullAhead::new(100);
        assert_eq!(q.push(0..10), 0);
        assert_eq!(q.push(10..15), 0);
        // Eight being pulled under a bound of ten: room for two.
        assert_eq!(q.take(8, 10), vec![0, 1]);
        assert_eq!(q.take(10, 10), Vec::<i32>::new(), "no room, nothing goes");
        assert_eq!(q.take(12, 10), Vec::<i32>::new(), "over the bound, nothing goes");
        assert_eq!(q.take(5, 10), vec![2, 3, 4, 5, 6]);
        assert_eq!(q.len(), 8);
        assert_eq!(q.take(0, 100), (7..15).collect::<Vec<_>>(), "the later request's ids last");
        assert!(q.is_empty());
    }

    #[test]
    fn ids_beyond_the_cap_are_left_to_the_lookups() {
        let mut q = PullAhead::new(4);
        assert_eq!(q.push(0..3), 0);
        assert_eq!(q.push(3..10), 6, "one more fits, six are left out");
        assert_eq!(q.take(0, 10), vec![0, 1, 2, 3]);
        assert_eq!(q.push(20..22), 0, "room again once taken");
        assert_eq!(q.len(), 2);
    }
}
