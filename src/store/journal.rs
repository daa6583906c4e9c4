//! The journal: every accepted callback, durably, before it is acknowledged.
//! The dedup key is the primary identity: a second delivery changes nothing.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use super::outbox::NewAction;
use super::{now, Store, StoreError};
use crate::messages::Channel;

/// What a journal entry's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A callback's decrypted XML.
    Callback,
    /// One message of a `kf/sync_msg` page, as JSON.
    KfMessage,
}

impl EntryKind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Callback => "callback",
            Self::KfMessage => "kf_message",
        }
    }

    /// The kind named by [`EntryKind::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Callback, Self::KfMessage].into_iter().find(|k| k.as_str() == name)
    }
}

/// A column that holds a name the store wrote: anything else is corruption.
fn named<T>(column: usize, value: String, parse: impl Fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    parse(&value).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unknown name {value:?}").into(),
        )
    })
}

/// A message to journal.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub dedup_key: String,
    pub channel: Channel,
    pub kind: EntryKind,
    /// userid or external_userid, when known.
    pub sender: Option<String>,
    /// The decrypted message exactly as received.
    pub payload: String,
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
    pub channel: Channel,
    pub kind: EntryKind,
    pub received_at: i64,
    pub payload: String,
}

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

/// Inserts `entry` unless its dedup key is known: one statement.
pub(super) fn insert(db: &Connection, entry: &NewEntry) -> rusqlite::Result<Recorded> {
    let inserted = db
        .prepare_cached(
            "INSERT INTO journal (dedup_key, channel, kind, sender, received_at, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(dedup_key) DO NOTHING",
        )?
        .execute(params![
            entry.dedup_key,
            entry.channel.as_str(),
            entry.kind.as_str(),
            entry.sender,
            now(),
            entry.payload
        ])?;
    Ok(if inserted == 1 { Recorded::New(db.last_insert_rowid()) } else { Recorded::Duplicate })
}

impl Store {
    /// Journals `entry` unless its dedup key is known; durable when this returns.
    pub async fn journal(&self, entry: NewEntry) -> Result<Recorded, StoreError> {
        if self.recent.contains(&entry.dedup_key) {
            return Ok(Recorded::Duplicate);
        }
        let key = entry.dedup_key.clone();
        let recorded = self.run_statement(move |db| insert(db, &entry)).await?;
        // Only now, with the commit done: a key in `recent` is never one that could be lost.
        self.recent.remember(&key);
        Ok(recorded)
    }

    /// The oldest unhandled entries, in arrival order.
    pub async fn pending(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        self.run_relaxed(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT id, dedup_key, channel, kind, received_at, payload FROM journal
                 WHERE id > (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through')
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = statement.query_map([limit as i64], |row| {
                Ok(PendingEntry {
                    id: row.get(0)?,
                    dedup_key: row.get(1)?,
                    channel: named(2, row.get(2)?, Channel::parse)?,
                    kind: named(3, row.get(3)?, EntryKind::parse)?,
                    received_at: row.get(4)?,
                    payload: row.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Marks entries handled (up to the highest id given: the dispatcher handles
    /// in id order) and queues their actions, all in one transaction: a crash
    /// either loses both (the entries are handled again) or keeps both.
    ///
    /// Relaxed durability: after a power loss the entries are simply handled again,
    /// queueing the same idempotency keys (the outbox is at-least-once anyway).
    pub async fn complete(&self, completions: Vec<(i64, Vec<NewAction>)>) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            for action in completions.iter().flat_map(|(_, actions)| actions) {
                action.insert(db)?;
            }
            if let Some(through) = completions.iter().map(|(id, _)| *id).max() {
                db.prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('journal_handled_through', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                )?
                .execute([through])?;
            }
            Ok(())
        })
        .await
    }

    /// Whether `dedup_key` was journaled (for tests and diagnostics).
    pub async fn contains(&self, dedup_key: String) -> Result<bool, StoreError> {
        self.run(move |db| {
            db.query_row("SELECT 1 FROM journal WHERE dedup_key = ?1", [dedup_key], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

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
        let entry = NewEntry {
            dedup_key: "app:msg:1".into(),
            channel: Channel::App,
            kind: EntryKind::Callback,
            sender: None,
            payload: "<xml/>".into(),
        };
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
