//! The journal in SQLite: handled in id order, `meta.journal_handled_through` is
//! the watermark (one dispatcher per database, so a watermark is all it needs).

use std::sync::Arc;

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
    insert_at(db, entry, now())
}

/// [`insert`], received at `received_at`.
fn insert_at(db: &Connection, entry: &NewEntry, received_at: i64) -> rusqlite::Result<Recorded> {
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
            received_at,
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
        parsed: None,
    })
}

impl Sqlite {
    /// Journals `entry` unless its dedup key is known; durable when this returns.
    /// A new entry is handed off to the dispatcher once committed (`handoff`).
    pub(in crate::store) async fn journal(&self, entry: NewEntry) -> Result<Recorded, StoreError> {
        let handoff = Arc::clone(&self.handoff);
        self.submit_then(
            false,
            false,
            move |db| {
                let received_at = now();
                Ok((insert_at(db, &entry, received_at)?, entry, received_at))
            },
            move |(recorded, entry, received_at)| {
                if let Recorded::New(id) = recorded {
                    let NewEntry { dedup_key, channel, kind, payload, parsed, sender: _ } = entry;
                    handoff.committed(PendingEntry { id, dedup_key, channel, kind, received_at, payload, parsed });
                }
                recorded
            },
        )
        .await
    }

    /// The oldest unhandled entries, in arrival order: from the hand-off when it
    /// holds exactly those, else from the journal.
    /// One dispatcher per database: reading above the watermark is the claim, and
    /// needs no lease.
    pub(in crate::store) async fn pending(&self, limit: usize) -> Result<Vec<PendingEntry>, StoreError> {
        if let Some(entries) = self.handoff.take(limit) {
            return Ok(entries);
        }
        let handoff = Arc::clone(&self.handoff);
        self.run_relaxed(move |db| {
            let watermark: i64 = db
                .prepare_cached(
                    "SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through'",
                )?
                .query_row([], |row| row.get(0))?;
            let mut statement = db.prepare_cached(
                "SELECT id, dedup_key, channel, kind, received_at, payload FROM journal
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let entries =
                statement.query_map([watermark, limit as i64], read_entry)?.collect::<rusqlite::Result<Vec<_>>>()?;
            handoff.read(watermark, &entries);
            Ok(entries)
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
        let through = completions.iter().map(|(id, _)| *id).max();
        let handoff = Arc::clone(&self.handoff);
        self.submit_then(
            true,
            true,
            move |db| {
                for action in completions.iter().flat_map(|(_, actions)| actions) {
                    insert_action(db, action)?;
                }
                if let Some(through) = through {
                    db.prepare_cached(
                        "INSERT INTO meta (key, value) VALUES ('journal_handled_through', ?1)
                         ON CONFLICT(key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                    )?
                    .execute([through])?;
                }
                Ok(())
            },
            move |()| {
                if let Some(through) = through {
                    handoff.completed(through);
                }
            },
        )
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

#[cfg(test)]
mod tests {
    use super::super::tests::entry;
    use super::*;

    /// The dispatcher's claims, whether the hand-off or the journal answers
    /// them, give every entry once, in id order, as the journal has it: entries
    /// journaled by a callback (handed off) or by another statement (a kf page:
    /// not handed off), duplicates, short claims, and batches that failed before
    /// their completion (given again).
    #[tokio::test]
    async fn claims_give_every_entry_once_in_order_whichever_way_it_was_journaled() {
        let dir = tempfile::tempdir().expect("dir");
        let sqlite = Sqlite::open(dir.path()).expect("opens");
        let mut journaled = Vec::new();
        let mut claimed: Vec<PendingEntry> = Vec::new();
        let mut failed_batches = 0;
        for round in 0..40 {
            for _ in 0..(round % 4 + 1) {
                let key = format!("callback{}", journaled.len());
                assert!(matches!(sqlite.journal(entry(&key)).await.expect("journal"), Recorded::New(_)));
                journaled.push(key);
            }
            if round % 3 == 0 {
                let key = format!("page{}", journaled.len());
                let page = entry(&key);
                sqlite.run(move |db| insert(db, &page)).await.expect("a page's entry");
                journaled.push(key);
            }
            if round % 5 == 0 {
                let again = entry(&journaled[0]);
                assert_eq!(sqlite.journal(again).await.expect("journal"), Recorded::Duplicate);
            }
            let batch = sqlite.pending(3).await.expect("claim");
            if round % 7 == 3 {
                failed_batches += 1;
                continue;
            }
            let completions = batch.iter().map(|entry| (entry.id, Vec::new())).collect();
            claimed.extend(batch);
            sqlite.complete(completions).await.expect("complete");
        }
        loop {
            let batch = sqlite.pending(100).await.expect("claim");
            if batch.is_empty() {
                break;
            }
            let completions = batch.iter().map(|entry| (entry.id, Vec::new())).collect();
            claimed.extend(batch);
            sqlite.complete(completions).await.expect("complete");
        }
        assert!(failed_batches > 0);
        let keys: Vec<&str> = claimed.iter().map(|entry| entry.dedup_key.as_str()).collect();
        assert_eq!(keys, journaled.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(claimed.windows(2).all(|pair| pair[0].id + 1 == pair[1].id), "in id order, none twice");
        for entry in claimed {
            let stored = sqlite.find_entry(entry.dedup_key.clone()).await.expect("find").expect("stored");
            assert_eq!(
                (stored.id, stored.channel, stored.kind, stored.received_at, stored.payload),
                (entry.id, entry.channel, entry.kind, entry.received_at, entry.payload)
            );
        }
    }

    /// The route's parse travels with its entry through the hand-off, and only
    /// there: an entry the claim reads from the journal is parsed from its payload.
    #[tokio::test]
    async fn the_route_s_parse_comes_with_a_handed_off_entry_only() {
        let dir = tempfile::tempdir().expect("dir");
        let sqlite = Sqlite::open(dir.path()).expect("opens");
        let parsed = |key: &str| {
            let xml = format!("<xml><MsgType>text</MsgType><Content>hi</Content><MsgId>{key}</MsgId></xml>");
            let message = crate::messages::AppMessage::parse(&xml).expect("parses");
            NewEntry { payload: xml, parsed: Some(Arc::new(message)), ..entry(key) }
        };
        // A read of the journal first (a start), then two entries handed off.
        assert!(sqlite.pending(10).await.expect("claim").is_empty());
        for key in ["1", "2"] {
            sqlite.journal(parsed(key)).await.expect("journal");
        }
        let handed = sqlite.pending(10).await.expect("claim");
        let msg_id = |parsed: &crate::store::journal::Parsed| {
            parsed.downcast_ref::<crate::messages::AppMessage>().map(|message| message.msg_id.clone())
        };
        let messages: Vec<_> = handed.iter().map(|entry| entry.parsed.as_ref().and_then(msg_id)).collect();
        assert_eq!(messages, [Some(Some("1".to_owned())), Some(Some("2".to_owned()))], "as the route parsed them");
        sqlite.complete(handed.iter().map(|entry| (entry.id, Vec::new())).collect()).await.expect("complete");
        // A gap (an entry written by another statement) makes the claim read the journal.
        let page = parsed("3");
        sqlite.run(move |db| insert(db, &page)).await.expect("a page's entry");
        sqlite.journal(parsed("4")).await.expect("journal");
        let read = sqlite.pending(10).await.expect("claim");
        assert_eq!(read.len(), 2);
        assert!(read.iter().all(|entry| entry.parsed.is_none()), "read from the journal: the payload is the truth");
    }
}
