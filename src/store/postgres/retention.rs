//! Retention in PostgreSQL: handled journal entries and done outbox actions
//! older than the cutoff, deleted in batches of one short transaction each, so
//! pruning never holds locks for long. Ids are never reused (identity columns), so
//! unlike SQLite the newest row needs no keeping.

use super::Postgres;
use crate::store::retention::Pruned;
use crate::store::StoreError;

/// Rows deleted per transaction.
const BATCH: i64 = 2_000;

impl Postgres {
    /// Deletes handled journal entries and done outbox actions older than
    /// `cutoff` (Unix seconds), batch by batch.
    pub(in crate::store) async fn prune(&self, cutoff: i64) -> Result<Pruned, StoreError> {
        // Handled entries (no pending row) by arrival; done actions by when they
        // were done.
        let journal = self
            .prune_table(
                "journal",
                "received_at < $2 AND NOT EXISTS (SELECT 1 FROM journal_pending p WHERE p.id = journal.id)",
                cutoff,
            )
            .await?;
        let outbox = self.prune_table("outbox", "done_at IS NOT NULL AND done_at < $2", cutoff).await?;
        Ok(Pruned { journal, outbox })
    }

    pub(in crate::store) async fn prune_replies(&self, cutoff: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let mut deleted = 0;
        for sql in [
            "DELETE FROM sends WHERE updated_at < $1 AND status <> 'queued'",
            "DELETE FROM send_msgids WHERE created_at < $1",
            "DELETE FROM kf_conversations WHERE updated_at < $1",
            // An AI bot's streams, as SQLite's (`prune_replies` there).
            "DELETE FROM aibot_streams WHERE created_at < $1",
            "DELETE FROM aibot_answer_keys WHERE created_at < $1",
        ] {
            deleted += client.execute(sql, &[&cutoff]).await?;
            self.committed(1);
        }
        Ok(deleted)
    }

    /// Deletes the rows of `table` that match `old` (given the cutoff as `$2`), a
    /// batch after an id at a time, until a batch is not full.
    async fn prune_table(&self, table: &str, old: &str, cutoff: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "WITH gone AS (DELETE FROM {table} WHERE id IN (
                     SELECT id FROM {table} WHERE id > $1 AND {old} ORDER BY id LIMIT $3)
                 RETURNING id) SELECT count(*), COALESCE(max(id), 0) FROM gone"
            ))
            .await?;
        let (mut total, mut after) = (0u64, 0i64);
        loop {
            let row = client.query_one(&statement, &[&after, &cutoff, &BATCH]).await?;
            let (deleted, last): (i64, i64) = (row.get(0), row.get(1));
            self.committed(1);
            total += u64::try_from(deleted).unwrap_or(0);
            if deleted < BATCH {
                return Ok(total);
            }
            after = last;
        }
    }
}
