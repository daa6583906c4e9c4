//! The journal in SQLite: handled in id order, `meta.journal_handled_through` is
//! the watermark (one dispatcher per database, so a watermark is all it needs).

use rusqlite::{params, Connection};

use super::outbox::insert_action;
use super::Sqlite;
use crate::channels::ChannelName;
use crate::store::journal::{EntryKind, NewEntry, PendingEntry, Recorded};
use crate::store::outbox::NewAction;
use crate::store::{now, StoreError};

/// A column that holds a name the store wrote: anything else is corruption.
pub(super) fn named<T>(column: usize, value: String, parse: impl Fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    parse(&value).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unknown name {value:?}").into(),
        )
    })
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

/// An entry from a row of `id, dedup_key, channel, kind, received_at, payload`.
fn read_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<PendingEntry> {
    Ok(PendingEntry {
        id: row.get(0)?,
        dedup_key: row.get(1)?,
        channel: named(2, row.get(2)?, |name| ChannelName::parse(name).ok())?,
        kind: named(3, row.get(3)?, EntryKind::parse)?,
        received_at: row.get(4)?,
        payload: row.get(5)?,
    })
}

impl Sqlite {
    /// Journals `entry` unless its dedup key is known; durable when this returns.
    pub(in crate::store) async fn journal(&self, entry: NewEntry) -> Result<Recorded, StoreError> {
        self.run_statement(move |db| insert(db, &entry)).await
    }

    /// The oldest unhandled entries, in arrival order.
    /// One dispatcher per database: reading above the watermark is the claim, and
    /// needs no lease.
    pub(in crate::store) async fn pending(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        self.run_relaxed(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT id, dedup_key, channel, kind, received_at, payload FROM journal
                 WHERE id > (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through')
                 ORDER BY id LIMIT ?1",
            )?;
            let rows = statement.query_map([limit as i64], read_entry)?;
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
    pub(in crate::store) async fn complete(&self, completions: Vec<(i64, Vec<NewAction>)>) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            for action in completions.iter().flat_map(|(_, actions)| actions) {
                insert_action(db, action)?;
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

    /// Entries above the watermark.
    #[cfg(any(test, feature = "testing"))]
    pub(in crate::store) async fn unhandled(&self) -> Result<i64, StoreError> {
        self.run_relaxed(|db| {
            db.query_row(
                "SELECT COUNT(*) FROM journal
                 WHERE id > (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through')",
                [],
                |row| row.get(0),
            )
        })
        .await
    }

    /// The entry journaled under `dedup_key`.
    pub(in crate::store) async fn find_entry(&self, dedup_key: String) -> Result<Option<PendingEntry>, StoreError> {
        self.run_relaxed(move |db| {
            use rusqlite::OptionalExtension;
            db.query_row(
                "SELECT id, dedup_key, channel, kind, received_at, payload FROM journal WHERE dedup_key = ?1",
                [dedup_key],
                read_entry,
            )
            .optional()
        })
        .await
    }
}
