//! The journal: every accepted callback, durably, before it is acknowledged.
//! The dedup key is the primary identity: a second delivery changes nothing.

use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use super::outbox::NewAction;
use super::{backend, Store, StoreError};
use crate::channels::ChannelName;

/// What a journal entry's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A callback's decrypted XML.
    Callback,
    /// One message of a `kf/sync_msg` page, as JSON.
    KfMessage,
    /// An AI bot callback's decrypted JSON (SPEC §13).
    Aibot,
}

impl EntryKind {
    /// The name stored in the `kind` column.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Callback => "callback",
            Self::KfMessage => "kf_message",
            Self::Aibot => "aibot",
        }
    }

    /// The kind named by [`EntryKind::as_str`].
    pub(crate) fn parse(name: &str) -> Option<Self> {
        [Self::Callback, Self::KfMessage, Self::Aibot].into_iter().find(|k| k.as_str() == name)
    }
}

/// A message to journal.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub dedup_key: String,
    /// The channel's name (`app`, `kf` for the built-ins, as before channels had names).
    pub channel: ChannelName,
    pub kind: EntryKind,
    /// userid or external_userid, when known.
    pub sender: Option<String>,
    /// The decrypted message exactly as received.
    pub payload: String,
    /// What the receiver already made of `payload`: see [`Parsed`].
    pub parsed: Option<Parsed>,
}

/// What journaling found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First delivery; the journal id.
    New(i64),
    /// Seen before (a WeCom retry, or a replay): nothing written.
    Duplicate,
}

/// A journaled callback not yet handled.
#[derive(Debug, Clone)]
pub struct PendingEntry {
    pub id: i64,
    pub dedup_key: String,
    pub channel: ChannelName,
    pub kind: EntryKind,
    pub received_at: i64,
    pub payload: String,
    /// What the receiver made of `payload`, when the entry comes from this
    /// process's hand-off; `None` for every entry read from the journal.
    pub parsed: Option<Parsed>,
}

/// What the receiver already made of an entry's payload (a callback route: its
/// parsed XML), carried with the entry through this process's hand-off, so that
/// the dispatcher takes it instead of parsing the same bytes again (that second
/// parse was ~4 % of a durable callback's CPU, BENCHMARKS.md). The store neither
/// looks inside nor keeps it (it sits below the parsers), and the journal stays
/// the truth: an entry read from it is parsed from its payload.
pub(crate) type Parsed = Arc<dyn Any + Send + Sync>;

/// How many committed dedup keys are remembered in memory (~1.3 MiB at most):
/// minutes of traffic at any realistic rate, and WeCom retries within seconds.
const RECENT_KEYS: usize = 16_384;

/// The dedup keys most recently committed (first in, first out). A retry of one
/// of them is a duplicate without asking SQLite: WeCom retries within seconds, and
/// a retry storm after an outage should cost no store round trips. Only keys of
/// committed entries get here, so "seen" is never claimed for a key that could
/// still be lost.
#[derive(Debug, Default)]
pub(super) struct RecentKeys(Mutex<Remembered>);

/// The keys, and the order they came in.
#[derive(Debug, Default)]
struct Remembered {
    keys: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
}

impl RecentKeys {
    fn contains(&self, key: &str) -> bool {
        self.0.lock().is_ok_and(|recent| recent.keys.contains(key))
    }

    fn remember(&self, key: &str) {
        let Ok(mut recent) = self.0.lock() else { return };
        let key: Arc<str> = key.into();
        if recent.keys.insert(Arc::clone(&key)) {
            recent.order.push_back(key);
            if recent.order.len() > RECENT_KEYS {
                if let Some(oldest) = recent.order.pop_front() {
                    recent.keys.remove(&oldest);
                }
            }
        }
    }
}

impl Store {
    /// Journals `entry` unless its dedup key is known; durable when this returns.
    pub async fn journal(&self, entry: NewEntry) -> Result<Recorded, StoreError> {
        if self.recent.contains(&entry.dedup_key) {
            return Ok(Recorded::Duplicate);
        }
        let key = entry.dedup_key.clone();
        let recorded = backend!(self, b => b.journal(entry).await)?;
        // Only now, with the commit done: a key in `recent` is never one that could be lost.
        self.recent.remember(&key);
        Ok(recorded)
    }

    /// Claims the oldest unhandled entries for handling, in arrival order. An
    /// entry claimed and never completed (its handler died) is claimed again.
    pub async fn claim_entries(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        backend!(self, b => b.pending(limit).await)
    }

    /// Marks claimed entries handled and queues their actions, all in one
    /// transaction: a crash either loses both (the entries are handled again) or
    /// keeps both. Handling twice queues the same idempotency keys, kept once.
    ///
    /// Relaxed durability: after a power loss the entries are simply handled again.
    pub async fn complete_entries(&self, completions: Vec<(i64, Vec<NewAction>)>) -> Result<(), StoreError> {
        backend!(self, b => b.complete(completions).await)
    }

    /// How many entries are not handled yet, for tests; claims nothing.
    #[cfg(any(test, feature = "testing"))]
    pub async fn unhandled(&self) -> Result<i64, StoreError> {
        backend!(self, b => b.unhandled().await)
    }

    /// The entry journaled under `dedup_key` (handled or not), while retention keeps it.
    pub async fn find_entry(&self, dedup_key: String) -> Result<Option<PendingEntry>, StoreError> {
        backend!(self, b => b.find_entry(dedup_key).await)
    }

    /// Whether `dedup_key` was journaled (for tests).
    #[cfg(any(test, feature = "testing"))]
    pub async fn contains(&self, dedup_key: String) -> Result<bool, StoreError> {
        Ok(self.find_entry(dedup_key).await?.is_some())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// A callback entry keyed `key` (both engines' tests share it).
    pub(in crate::store) fn entry(key: &str) -> NewEntry {
        NewEntry {
            dedup_key: key.to_owned(),
            channel: ChannelName::app(),
            kind: EntryKind::Callback,
            sender: None,
            payload: format!("<xml>{key}</xml>"),
            parsed: None,
        }
    }

    /// An unhandled callback entry `id` with a payload of `bytes` bytes (the
    /// engines' in-memory queues count payload bytes).
    pub(in crate::store) fn pending(id: i64, bytes: usize) -> PendingEntry {
        PendingEntry {
            id,
            dedup_key: format!("app:msg:{id}"),
            channel: ChannelName::app(),
            kind: EntryKind::Callback,
            received_at: 0,
            payload: "x".repeat(bytes),
            parsed: None,
        }
    }

    /// The ids of `entries`, in order.
    pub(in crate::store) fn ids(entries: &[PendingEntry]) -> Vec<i64> {
        entries.iter().map(|entry| entry.id).collect()
    }

    #[test]
    fn recent_keys_forget_the_oldest_beyond_their_bound() {
        let recent = RecentKeys::default();
        for i in 0..=RECENT_KEYS {
            recent.remember(&format!("k{i}"));
        }
        assert!(!recent.contains("k0"), "the oldest was forgotten");
        assert!(recent.contains("k1") && recent.contains(&format!("k{RECENT_KEYS}")));
        recent.remember("k1");
        assert_eq!(recent.0.lock().expect("lock").order.len(), RECENT_KEYS, "remembering twice keeps one");
    }

    #[tokio::test]
    async fn a_retry_of_a_committed_key_needs_no_store_trip() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let entry = entry("app:msg:1");
        assert!(matches!(store.journal(entry.clone()).await.expect("journal"), Recorded::New(_)));
        let operations = store.stats().operations.load(Ordering::Relaxed);
        assert_eq!(store.journal(entry.clone()).await.expect("journal"), Recorded::Duplicate);
        assert_eq!(store.stats().operations.load(Ordering::Relaxed), operations, "answered from memory");
        // A fresh process asks SQLite, which knows it too.
        drop(store);
        let store = Store::open(dir.path()).expect("reopens");
        assert_eq!(store.journal(entry).await.expect("journal"), Recorded::Duplicate);
    }
}
