//! The journal: every accepted callback, durably, before it is acknowledged.
//! The dedup key is the primary identity: a second delivery changes nothing.

use rusqlite::{params, Connection, OptionalExtension};

use super::outbox::NewAction;
use super::{now, Store, StoreError};

/// What a journal entry's payload is.
pub const KIND_CALLBACK: &str = "callback";
/// One message of a `kf/sync_msg` page, as JSON.
pub const KIND_KF_MESSAGE: &str = "kf_message";

/// A message to journal.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub dedup_key: String,
    pub channel: &'static str,
    /// [`KIND_CALLBACK`] or [`KIND_KF_MESSAGE`].
    pub kind: &'static str,
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
    pub channel: String,
    pub kind: String,
    pub received_at: i64,
    pub payload: String,
}

/// Inserts `entry` unless its dedup key is known: one statement.
pub(super) fn insert(db: &Connection, entry: &NewEntry) -> rusqlite::Result<Recorded> {
    let inserted = db
        .prepare_cached(
            "INSERT INTO journal (dedup_key, channel, kind, sender, received_at, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(dedup_key) DO NOTHING",
        )?
        .execute(params![entry.dedup_key, entry.channel, entry.kind, entry.sender, now(), entry.payload])?;
    Ok(if inserted == 1 { Recorded::New(db.last_insert_rowid()) } else { Recorded::Duplicate })
}

impl Store {
    /// Journals `entry` unless its dedup key is known; durable when this returns.
    pub async fn journal(&self, entry: NewEntry) -> Result<Recorded, StoreError> {
        self.run_statement(move |db| insert(db, &entry)).await
    }

    /// The oldest unhandled entries, in arrival order.
    pub async fn pending(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        self.run(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT id, dedup_key, channel, kind, received_at, payload FROM journal
                 WHERE id > (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through')
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = statement.query_map([limit as i64], |row| {
                Ok(PendingEntry {
                    id: row.get(0)?,
                    dedup_key: row.get(1)?,
                    channel: row.get(2)?,
                    kind: row.get(3)?,
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
    pub async fn complete(&self, completions: Vec<(i64, Vec<NewAction>)>) -> Result<(), StoreError> {
        self.run(move |db| {
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
