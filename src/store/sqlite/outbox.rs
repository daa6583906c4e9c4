//! The outbox in SQLite.

use rusqlite::{params, Connection};

use super::Sqlite;
use crate::store::outbox::{DueAction, NewAction};
use crate::store::{now, StoreError};

/// Queues `action` unless its idempotency key is queued already.
pub(super) fn insert_action(db: &Connection, action: &NewAction) -> rusqlite::Result<()> {
    let at = now();
    db.prepare_cached(
        "INSERT INTO outbox (action_key, kind, payload, next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT(action_key) DO NOTHING",
    )?
    .execute(params![action.key, action.kind, action.payload, at])?;
    Ok(())
}

impl Sqlite {
    /// Unfinished actions due by now, oldest first.
    pub(in crate::store) async fn due_actions(&self, limit: usize) -> Result<Vec<DueAction>, StoreError> {
        self.run_relaxed(move |db| {
            let mut statement = db.prepare_cached(
                "SELECT id, action_key, kind, payload, attempts FROM outbox
                 WHERE done_at IS NULL AND next_attempt_at <= ?1 ORDER BY next_attempt_at, id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now(), limit as i64], |row| {
                Ok(DueAction {
                    id: row.get(0)?,
                    key: row.get(1)?,
                    kind: row.get(2)?,
                    payload: row.get(3)?,
                    attempts: row.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Marks an action done and queues what it led to, in one transaction.
    pub(in crate::store) async fn action_succeeded(
        &self,
        id: i64,
        follow_ups: Vec<NewAction>,
    ) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            for action in &follow_ups {
                insert_action(db, action)?;
            }
            db.execute("UPDATE outbox SET done_at = ?1, last_error = NULL WHERE id = ?2", params![now(), id]).map(drop)
        })
        .await
    }

    /// Gives up on an action that cannot succeed; it stays, with its error, for diagnosis.
    pub(in crate::store) async fn action_abandoned(&self, id: i64, error: String) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            db.execute(
                "UPDATE outbox SET done_at = ?1, attempts = attempts + 1, last_error = ?2 WHERE id = ?3",
                params![now(), format!("abandoned: {error}"), id],
            )
            .map(drop)
        })
        .await
    }

    /// Records a failed attempt and when to try again.
    pub(in crate::store) async fn action_failed(
        &self,
        id: i64,
        retry_in_secs: i64,
        error: String,
    ) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?1, last_error = ?2 WHERE id = ?3",
                params![now() + retry_in_secs, error, id],
            )
            .map(drop)
        })
        .await
    }

    /// Unfinished actions, for health and metrics.
    pub(in crate::store) async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        self.run_relaxed(|db| db.query_row("SELECT COUNT(*) FROM outbox WHERE done_at IS NULL", [], |row| row.get(0)))
            .await
    }
}
