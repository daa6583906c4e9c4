//! The hand-off: the entries this process's writer just committed, kept in
//! memory for the dispatcher, so that handling a callback does not read back
//! the row the route wrote a millisecond earlier (a copy of every payload and a
//! second statement per entry on the writer thread, ~5 % of a callback's CPU,
//! BENCHMARKS.md).
//!
//! The journal stays the truth. The hand-off only answers when it can prove it
//! holds exactly the rows the journal would give: the dispatcher completed all
//! it was handed (`handed == completed`, the watermark), and the queue holds the
//! ids right above it with no gap. Anything else — the first claim after a
//! start, entries a kf page wrote through another statement, an entry dropped
//! because the queue was full, a batch that failed before its completion — is a
//! gap, and the claim reads the journal as before. Ids never have holes a
//! foreign writer could fill: one process owns the database, every row gets
//! `MAX(id) + 1`, and an entry is pushed only after its commit, in commit order.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::store::journal::PendingEntry;

/// At most this many payload bytes wait in the queue (~1,000 chat-sized
/// entries; each callback's parse beside its payload about doubles the memory):
/// a dispatcher that falls behind reads the journal instead.
const MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<PendingEntry>,
    /// Payload bytes in `queue`.
    bytes: usize,
    /// The highest id the dispatcher was given (from here or the journal).
    handed: Option<i64>,
    /// The watermark: the highest id it completed.
    completed: Option<i64>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Handoff(Mutex<State>);

impl Handoff {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A committed entry (on the writer thread, in commit order); dropped when
    /// the queue is full, which the next claim sees as a gap.
    pub(super) fn committed(&self, entry: PendingEntry) {
        let mut state = self.state();
        if state.bytes + entry.payload.len() > MAX_BYTES {
            return;
        }
        state.bytes += entry.payload.len();
        state.queue.push_back(entry);
    }

    /// Up to `limit` entries right above the watermark, if the queue holds them
    /// without a gap; `None`: read the journal.
    pub(super) fn take(&self, limit: usize) -> Option<Vec<PendingEntry>> {
        let mut state = self.state();
        let handed = state.handed?;
        if state.completed != Some(handed) {
            return None;
        }
        // Entries the journal gave already (committed beside the read that gave them).
        while state.queue.front().is_some_and(|entry| entry.id <= handed) {
            state.pop();
        }
        if state.queue.front()?.id != handed + 1 {
            return None;
        }
        let mut entries = Vec::with_capacity(limit.min(state.queue.len()));
        while entries.len() < limit
            && state.queue.front().is_some_and(|entry| entry.id == handed + 1 + entries.len() as i64)
        {
            entries.extend(state.pop());
        }
        state.handed = Some(handed + entries.len() as i64);
        Some(entries)
    }

    /// The journal was read above `watermark` (inside the read's transaction).
    pub(super) fn read(&self, watermark: i64, entries: &[PendingEntry]) {
        let mut state = self.state();
        let handed = entries.iter().map(|entry| entry.id).max().unwrap_or(watermark).max(watermark);
        state.handed = Some(handed);
        state.completed = Some(watermark);
        while state.queue.front().is_some_and(|entry| entry.id <= handed) {
            state.pop();
        }
    }

    /// The watermark moved to `through` (its commit done).
    pub(super) fn completed(&self, through: i64) {
        let mut state = self.state();
        state.completed = Some(state.completed.map_or(through, |completed| completed.max(through)));
    }
}

impl State {
    fn pop(&mut self) -> Option<PendingEntry> {
        let entry = self.queue.pop_front()?;
        self.bytes -= entry.payload.len();
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::tests::{ids, pending};

    /// A chat-sized entry.
    fn entry(id: i64) -> PendingEntry {
        pending(id, 1_000)
    }

    #[test]
    fn nothing_before_the_journal_was_read_once() {
        let handoff = Handoff::default();
        handoff.committed(entry(1));
        assert!(handoff.take(10).is_none(), "the watermark is unknown after a start");
    }

    #[test]
    fn the_ids_right_above_the_watermark_in_order_up_to_the_limit() {
        let handoff = Handoff::default();
        handoff.read(10, &[]);
        for id in 11..=14 {
            handoff.committed(entry(id));
        }
        assert_eq!(ids(&handoff.take(3).expect("contiguous")), [11, 12, 13]);
        assert!(handoff.take(3).is_none(), "13 is not completed yet");
        handoff.completed(13);
        assert_eq!(ids(&handoff.take(3).expect("contiguous")), [14]);
        handoff.completed(14);
        assert!(handoff.take(3).is_none(), "empty: the journal may hold a kf page's entries");
    }

    #[test]
    fn a_gap_reads_the_journal() {
        let handoff = Handoff::default();
        handoff.read(10, &[]);
        // 11 came from a kf page, which is not handed off.
        handoff.committed(entry(12));
        assert!(handoff.take(10).is_none());
        handoff.read(10, &[entry(11), entry(12)]);
        handoff.completed(12);
        handoff.committed(entry(13));
        assert_eq!(ids(&handoff.take(10).expect("after the read")), [13]);
    }

    #[test]
    fn a_batch_that_was_not_completed_is_read_again_from_the_journal() {
        let handoff = Handoff::default();
        handoff.read(0, &[]);
        handoff.committed(entry(1));
        assert_eq!(ids(&handoff.take(10).expect("contiguous")), [1]);
        // The dispatcher failed before its completion: 1 must come again.
        handoff.committed(entry(2));
        assert!(handoff.take(10).is_none());
    }

    #[test]
    fn entries_the_journal_gave_already_are_not_given_twice() {
        let handoff = Handoff::default();
        // The read saw 1 and 2 inside the group that then committed them.
        handoff.read(0, &[entry(1), entry(2)]);
        handoff.committed(entry(1));
        handoff.committed(entry(2));
        handoff.committed(entry(3));
        handoff.completed(2);
        assert_eq!(ids(&handoff.take(10).expect("contiguous")), [3]);
    }

    #[test]
    fn a_full_queue_drops_and_the_drop_is_a_gap() {
        let handoff = Handoff::default();
        handoff.read(0, &[]);
        let big = |id| pending(id, MAX_BYTES / 2 + 1);
        handoff.committed(big(1));
        handoff.committed(big(2));
        handoff.committed(entry(3));
        assert_eq!(ids(&handoff.take(10).expect("1 is there")), [1]);
        handoff.completed(1);
        assert!(handoff.take(10).is_none(), "2 was dropped: the journal has it");
    }
}
