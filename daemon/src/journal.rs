//! Bounded in-memory rings that readers can follow: cairnd's own log lines and its events.
//!
//! The one idea: a [`Ring`] keeps the last `capacity` entries, each with a sequence number, and
//! wakes followers when one is added. A reader asks for "everything after seq N" and gets what
//! is still there plus how many it missed; memory never grows past the capacity, however slow or
//! many the readers are.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Entries kept, and the followers' wait.
pub struct Ring<T> {
    inner: Mutex<Inner<T>>,
    added: Condvar,
    capacity: usize,
}

struct Inner<T> {
    entries: VecDeque<(u64, T)>,
    /// The sequence number the next entry gets (the first is 1).
    next: u64,
}

/// What [`Ring::after`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch<T> {
    /// Entries after the asked-for sequence number, oldest first, with their numbers.
    pub entries: Vec<(u64, T)>,
    /// Entries after the asked-for number that the ring no longer holds.
    pub dropped: u64,
}

impl<T: Clone> Ring<T> {
    pub fn new(capacity: usize) -> Ring<T> {
        Ring {
            inner: Mutex::new(Inner {
                entries: VecDeque::with_capacity(capacity.min(1024)),
                next: 1,
            }),
            added: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends an entry; returns its sequence number.
    pub fn push(&self, entry: T) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let seq = inner.next;
        inner.next += 1;
        if inner.entries.len() == self.capacity {
            inner.entries.pop_front();
        }
        inner.entries.push_back((seq, entry));
        drop(inner);
        self.added.notify_all();
        seq
    }

    /// The sequence number of the newest entry (0 when empty).
    /// Puts `earlier` before the entries already there and numbers them all from 1 again,
    /// keeping the newest `capacity`. For before anyone reads the ring (numbers change).
    pub fn prepend(&self, earlier: Vec<T>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all = earlier;
        all.extend(inner.entries.drain(..).map(|(_, e)| e));
        let skip = all.len().saturating_sub(self.capacity);
        inner.entries = (1..).zip(all.into_iter().skip(skip)).collect();
        inner.next = inner.entries.len() as u64 + 1;
    }

    pub fn last_seq(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next - 1
    }

    /// The newest `n` entries' starting point: pass the result to [`Ring::after`].
    pub fn tail_start(&self, n: u64) -> u64 {
        self.last_seq().saturating_sub(n)
    }

    /// Entries with a sequence number above `seq` (at most `max`), waiting up to `wait` for
    /// one to arrive when there are none yet.
    pub fn after(&self, seq: u64, max: usize, wait: Duration) -> Batch<T> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.next - 1 <= seq && !wait.is_zero() {
            inner = self
                .added
                .wait_timeout_while(inner, wait, |i| i.next - 1 <= seq)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let oldest = inner.entries.front().map_or(inner.next, |(s, _)| *s);
        let dropped = oldest.saturating_sub(seq + 1);
        let entries = inner
            .entries
            .iter()
            .filter(|(s, _)| *s > seq)
            .take(max)
            .cloned()
            .collect();
        Batch { entries, dropped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn keeps_the_newest_and_counts_what_a_reader_missed() {
        let ring = Ring::new(3);
        for i in 1..=5 {
            assert_eq!(ring.push(i * 10), i);
        }
        let b = ring.after(0, 100, Duration::ZERO);
        assert_eq!(b.entries, vec![(3, 30), (4, 40), (5, 50)]);
        assert_eq!(b.dropped, 2);
        let b = ring.after(3, 100, Duration::ZERO);
        assert_eq!((b.entries, b.dropped), (vec![(4, 40), (5, 50)], 0));
        assert_eq!(ring.after(5, 100, Duration::ZERO).entries, vec![]);
        assert_eq!(
            ring.after(ring.tail_start(1), 100, Duration::ZERO).entries,
            vec![(5, 50)]
        );
        assert_eq!(ring.after(0, 1, Duration::ZERO).entries, vec![(3, 30)]);
    }

    #[test]
    fn earlier_entries_go_first_and_the_newest_are_kept() {
        let ring = Ring::new(3);
        ring.push(40);
        ring.push(50);
        ring.prepend(vec![10, 20, 30]);
        let b = ring.after(0, 100, Duration::ZERO);
        assert_eq!(b.entries, vec![(1, 30), (2, 40), (3, 50)]);
        assert_eq!(ring.push(60), 4);
    }

    #[test]
    fn a_follower_wakes_when_an_entry_arrives() {
        let ring = Arc::new(Ring::new(8));
        ring.push("old");
        let r = ring.clone();
        let t = std::thread::spawn(move || r.after(1, 10, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        ring.push("new");
        assert_eq!(t.join().unwrap().entries, vec![(2, "new")]);
        // Nothing new: returns empty after the wait.
        assert!(ring
            .after(2, 10, Duration::from_millis(10))
            .entries
            .is_empty());
    }
}
