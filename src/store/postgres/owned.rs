//! A replica's own entries: what its journal writers inserted *already claimed
//! for it* (their `journal_pending` rows' `claimed_until` set by the insert),
//! kept in memory for its dispatcher. Claiming them again would be one more
//! statement and read every payload back right after the insert wrote it; the
//! insert's claim is the same claim, taken for free.
//!
//! Other replicas skip these rows like any claimed one; if this replica dies
//! before completing them, its claims run out (`LEASE_SECS`) and any replica
//! takes them from the journal, as with a claimed batch today. The queue holds
//! at most [`MAX_BYTES`] of payloads: a writer reserves room *before* its insert
//! and inserts unclaimed whatever does not fit, so an entry claimed here is
//! always in the queue (never stuck behind a lease while its replica lives).
//! Two exceptions wait out the lease (`LEASE_SECS`) instead: an insert whose
//! outcome is unknown (the connection broke; its caller was told it failed, so
//! WeCom retries and finds a duplicate), and entries taken by a dispatcher batch
//! that failed before its completion.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::journal::PendingEntry;

/// At most this many payload bytes queued or reserved (~1,000 chat-sized entries;
/// each callback's parse beside its payload about doubles the memory, as in
/// SQLite's hand-off).
const MAX_BYTES: usize = 1 << 20;

/// While its own entries keep coming, the dispatcher still claims from the
/// journal this often: other replicas' unclaimed entries and the claims of a
/// dead one that ran out.
const JOURNAL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<PendingEntry>,
    /// Payload bytes queued or reserved.
    bytes: usize,
    /// When the dispatcher last claimed from the journal.
    read_at: Option<Instant>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(super) struct Owned(Mutex<State>);

impl Owned {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for an entry of `bytes`: `true` reserves it (the entry is then
    /// inserted claimed, and [`Owned::push`]ed or [`Owned::release`]d).
    pub(super) fn reserve(&self, bytes: usize) -> bool {
        let mut state = self.state();
        let fits = state.bytes + bytes <= MAX_BYTES;
        if fits {
            state.bytes += bytes;
        }
        fits
    }

    /// A reservation not used (a duplicate, a failed insert).
    pub(super) fn release(&self, bytes: usize) {
        let mut state = self.state();
        state.bytes = state.bytes.saturating_sub(bytes);
    }

    /// An entry inserted claimed for this replica, into its reservation.
    pub(super) fn push(&self, entry: PendingEntry) {
        self.state().queue.push_back(entry);
    }

    /// Up to `limit` of this replica's entries, oldest first.
    pub(super) fn take(&self, limit: usize) -> Vec<PendingEntry> {
        let mut state = self.state();
        let count = limit.min(state.queue.len());
        let entries: Vec<PendingEntry> = state.queue.drain(..count).collect();
        state.bytes = state.bytes.saturating_sub(entries.iter().map(|entry| entry.payload.len()).sum());
        entries
    }

    /// Entries taken but not handed on (the journal's claim failed beside them): first again.
    pub(super) fn restore(&self, entries: Vec<PendingEntry>) {
        let mut state = self.state();
        state.bytes += entries.iter().map(|entry| entry.payload.len()).sum::<usize>();
        for entry in entries.into_iter().rev() {
            state.queue.push_front(entry);
        }
    }

    /// Whether the dispatcher should claim from the journal too, having taken
    /// `taken` of its `limit` here: when it took nothing (idle: the journal is
    /// all there is), or had room and [`JOURNAL_EVERY`] has passed. Notes the
    /// read when it says yes.
    pub(super) fn read_journal(&self, taken: usize, limit: usize, now: Instant) -> bool {
        let mut state = self.state();
        let due = taken == 0
            || (taken < limit && state.read_at.is_none_or(|at| now.saturating_duration_since(at) >= JOURNAL_EVERY));
        if due {
            state.read_at = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::tests::{ids, pending};

    #[test]
    fn what_does_not_fit_is_not_reserved_and_taking_makes_room() {
        let owned = Owned::default();
        assert!(owned.reserve(MAX_BYTES / 2));
        owned.push(pending(1, MAX_BYTES / 2));
        assert!(owned.reserve(MAX_BYTES / 2));
        assert!(!owned.reserve(1), "full: this one is inserted unclaimed");
        owned.release(MAX_BYTES / 2);
        assert!(owned.reserve(10));
        owned.push(pending(2, 10));
        assert_eq!(ids(&owned.take(10)), [1, 2]);
        assert!(owned.reserve(MAX_BYTES), "everything taken: all the room again");
    }

    #[test]
    fn restored_entries_come_first_again() {
        let owned = Owned::default();
        for id in 1..=3 {
            assert!(owned.reserve(1));
            owned.push(pending(id, 1));
        }
        let taken = owned.take(2);
        owned.restore(taken);
        assert_eq!(ids(&owned.take(10)), [1, 2, 3]);
    }

    #[test]
    fn the_journal_is_read_when_idle_and_once_a_second_under_load() {
        let owned = Owned::default();
        let start = Instant::now();
        assert!(owned.read_journal(0, 256, start), "idle: always");
        assert!(owned.read_journal(0, 256, start), "idle: always");
        assert!(!owned.read_journal(10, 256, start + Duration::from_millis(500)));
        assert!(!owned.read_journal(256, 256, start + Duration::from_secs(5)), "a full batch: next round");
        assert!(owned.read_journal(10, 256, start + Duration::from_secs(1)));
        assert!(!owned.read_journal(10, 256, start + Duration::from_millis(1500)));
    }
}
