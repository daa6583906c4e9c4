//! Retention in SQLite: both tables walked oldest first by rowid, in batches.

use rusqlite::{params, Connection};

use super::Sqlite;
use crate::store::retention::Pruned;
use crate::store::StoreError;

/// Rows examined per transaction.
const BATCH: i64 = 2_000;

/// How far one batch got.
struct Step {
    deleted: u64,
    /// The last rowid examined, when the whole batch was old enough to continue.
    continue_after: Option<i64>,
}

impl Sqlite {
    /// Deletes handled journal entries and done outbox actions older than `cutoff`
    /// (Unix seconds), batch by batch.
    pub(in crate::store) async fn prune(&self, cutoff: i64) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        for (table, total) in [(Table::Journal, &mut pruned.journal), (Table::Outbox, &mut pruned.outbox)] {
            let mut after = 0;
            loop {
                let step = self.run_relaxed(move |db| prune_batch(db, table, after, cutoff)).await?;
                *total += step.deleted;
                match step.continue_after {
                    Some(last) => after = last,
                    None => break,
                }
            }
        }
        Ok(pruned)
    }
}

impl Sqlite {
    pub(in crate::store) async fn prune_replies(&self, cutoff: i64) -> Result<u64, StoreError> {
        self.run_relaxed(move |db| {
            let mut deleted = 0;
            for sql in REPLIES {
                deleted += db.execute(sql, [cutoff])? as u64;
            }
            Ok(deleted)
        })
        .await
    }
}

/// What `prune_replies` deletes: rows untouched since the cutoff (an AI bot's
/// stream: opened before it; its `response_url` died after an hour anyway).
const REPLIES: [&str; 5] = [
    "DELETE FROM sends WHERE updated_at < ?1 AND status <> 'queued'",
    "DELETE FROM send_msgids WHERE created_at < ?1",
    "DELETE FROM kf_conversations WHERE updated_at < ?1",
    "DELETE FROM aibot_streams WHERE created_at < ?1",
    "DELETE FROM aibot_answer_keys WHERE created_at < ?1",
];

#[derive(Debug, Clone, Copy)]
enum Table {
    Journal,
    Outbox,
}

fn prune_batch(db: &Connection, table: Table, after: i64, cutoff: i64) -> rusqlite::Result<Step> {
    let (scan, delete) = match table {
        // Handled means at or below the watermark.
        Table::Journal => (
            "SELECT id, received_at FROM journal WHERE id > ?1 ORDER BY id LIMIT ?2",
            "DELETE FROM journal WHERE id > ?1 AND id <= ?2
               AND id <= (SELECT COALESCE(MAX(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'journal_handled_through')
               AND id < (SELECT MAX(id) FROM journal)",
        ),
        Table::Outbox => (
            "SELECT id, created_at FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
            "DELETE FROM outbox WHERE id > ?1 AND id <= ?2 AND done_at IS NOT NULL AND done_at < ?3",
        ),
    };
    let mut old_rows = 0;
    let mut last_old = None;
    {
        let mut statement = db.prepare_cached(scan)?;
        let mut rows = statement.query(params![after, BATCH])?;
        while let Some(row) = rows.next()? {
            let (id, at): (i64, i64) = (row.get(0)?, row.get(1)?);
            if at >= cutoff {
                break;
            }
            old_rows += 1;
            last_old = Some(id);
        }
    }
    let Some(through) = last_old else { return Ok(Step { deleted: 0, continue_after: None }) };
    let deleted = match table {
        Table::Journal => db.prepare_cached(delete)?.execute(params![after, through])?,
        Table::Outbox => db.prepare_cached(delete)?.execute(params![after, through, cutoff])?,
    };
    // A full batch of old rows: there may be more behind it.
    Ok(Step { deleted: deleted as u64, continue_after: (old_rows == BATCH).then_some(through) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::ChannelName;
    use crate::store::journal::{EntryKind, NewEntry, Recorded};
    use crate::store::outbox::NewAction;
    use crate::store::Store;

    fn entry(key: &str) -> NewEntry {
        NewEntry {
            dedup_key: key.into(),
            channel: ChannelName::app(),
            kind: EntryKind::Callback,
            sender: None,
            payload: "<xml/>".into(),
            parsed: None,
        }
    }

    fn action(key: &str) -> NewAction {
        NewAction { key: key.into(), kind: "forward".into(), payload: "{}".into() }
    }

    async fn backdate(store: &Store, seconds: i64) {
        store
            .sqlite()
            .run(move |db| {
                db.execute("UPDATE journal SET received_at = received_at - ?1", [seconds])?;
                db.execute("UPDATE outbox SET created_at = created_at - ?1, done_at = done_at - ?1", [seconds])
            })
            .await
            .expect("backdate");
    }

    async fn count(store: &Store, table: &'static str) -> i64 {
        store
            .sqlite()
            .run(move |db| db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get(0)))
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn only_old_handled_entries_and_done_actions_are_deleted() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let mut ids = Vec::new();
        for key in ["handled-1", "handled-2", "unhandled"] {
            let Recorded::New(id) = store.journal(entry(key)).await.expect("journal") else { panic!("new") };
            ids.push(id);
        }
        // The first two are handled; one queued a forward that is done, one that is still owed.
        store
            .complete_entries(vec![(ids[0], vec![action("done")]), (ids[1], vec![action("owed")])])
            .await
            .expect("complete");
        let done = store.claim_actions(10).await.expect("due").into_iter().find(|a| a.key == "done").expect("done");
        store.action_succeeded(&done, Vec::new()).await.expect("succeeded");
        backdate(&store, 3600).await;
        // Young rows stay.
        assert_eq!(store.prune(crate::store::now() - 7200).await.expect("prune"), Pruned::default());

        let pruned = store.prune(crate::store::now() - 60).await.expect("prune");

        assert_eq!(pruned, Pruned { journal: 2, outbox: 1 });
        assert_eq!(count(&store, "journal").await, 1, "the unhandled entry stays");
        assert_eq!(store.claim_entries(10).await.expect("pending")[0].dedup_key, "unhandled");
        assert_eq!(store.outbox_backlog().await.expect("backlog"), 1, "the owed action stays");
        // The dedup key is forgotten with its entry (once out of the in-memory
        // recent keys too, as after a restart): the window is the retention.
        drop(store);
        let store = Store::open(dir.path()).expect("reopens");
        assert!(matches!(store.journal(entry("handled-1")).await.expect("journal"), Recorded::New(_)));
        assert_eq!(store.journal(entry("unhandled")).await.expect("journal"), Recorded::Duplicate);
    }

    #[tokio::test]
    async fn pruning_walks_past_many_batches_and_an_owed_action() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("opens");
        let total = BATCH as usize * 2 + 10;
        store
            .sqlite()
            .run(move |db| {
                for i in 0..total {
                    super::super::journal::insert(db, &entry(&format!("k{i}")))?;
                    super::super::outbox::insert_action(db, &action(&format!("a{i}")))?;
                }
                Ok(())
            })
            .await
            .expect("fill");
        let through = count(&store, "journal").await;
        store.complete_entries(vec![(through, Vec::new())]).await.expect("handled");
        // Every action done except the very first, which is still owed.
        store
            .sqlite()
            .run(|db| db.execute("UPDATE outbox SET done_at = created_at WHERE id > 1", []))
            .await
            .expect("done");
        backdate(&store, 3600).await;

        let pruned = store.prune(crate::store::now() - 60).await.expect("prune");

        assert_eq!(pruned, Pruned { journal: total as u64 - 1, outbox: total as u64 - 1 });
        assert_eq!(count(&store, "journal").await, 1, "the newest entry stays");
        assert_eq!(count(&store, "outbox").await, 1);
        // A new entry after everything was deleted is not mistaken for a handled one.
        store.journal(entry("after")).await.expect("journal");
        assert_eq!(store.claim_entries(10).await.expect("pending").len(), 1);
    }
}
