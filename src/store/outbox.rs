//! The outbox: side effects (forward a record, send a reply) waiting to be done,
//! retried with back-off until they succeed. Each has an idempotency key, so
//! queueing the same action twice keeps one. Its bookkeeping has relaxed
//! durability: a "done" lost to a power loss means the action is done again, which
//! at-least-once delivery allows (receivers dedup by `X-Message-Id`).

use rusqlite::{params, Connection};

use super::{now, Store, StoreError};

/// An action to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAction {
    /// Idempotency key: the same key is queued once.
    pub key: String,
    pub kind: String,
    /// JSON, interpreted by the executor of `kind`.
    pub payload: String,
}

impl NewAction {
    pub(super) fn insert(&self, db: &Connection) -> rusqlite::Result<()> {
        let at = now();
        db.prepare_cached(
            "INSERT INTO outbox (action_key, kind, payload, next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(action_key) DO NOTHING",
        )?
        .execute(params![self.key, self.kind, self.payload, at])?;
        Ok(())
    }
}

/// An action whose time has come.
#[derive(Debug, Clone)]
pub struct DueAction {
    pub id: i64,
    pub key: String,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
}

impl Store {
    /// Queues actions (not tied to a journal entry, e.g. a reply from a forward).
    pub async fn enqueue(&self, actions: Vec<NewAction>) -> Result<(), StoreError> {
        self.run(move |db| actions.iter().try_for_each(|a| a.insert(db))).await
    }

    /// Unfinished actions due by now, oldest first.
    pub async fn due_actions(&self, limit: usize) -> Result<Vec<DueAction>, StoreError> {
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

    /// The earliest time an unfinished action is due, if any.
    pub async fn next_action_due(&self) -> Result<Option<i64>, StoreError> {
        self.run_relaxed(|db| {
            db.query_row("SELECT MIN(next_attempt_at) FROM outbox WHERE done_at IS NULL", [], |row| row.get(0))
        })
        .await
    }

    /// Marks an action done and queues what it led to, in one transaction.
    pub async fn action_succeeded(&self, id: i64, follow_ups: Vec<NewAction>) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            for action in &follow_ups {
                action.insert(db)?;
            }
            db.execute("UPDATE outbox SET done_at = ?1, last_error = NULL WHERE id = ?2", params![now(), id]).map(drop)
        })
        .await
    }

    /// Gives up on an action that cannot succeed; it stays, with its error, for diagnosis.
    pub async fn action_abandoned(&self, id: i64, error: String) -> Result<(), StoreError> {
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
    pub async fn action_failed(&self, id: i64, retry_in_secs: i64, error: String) -> Result<(), StoreError> {
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
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        self.run_relaxed(|db| db.query_row("SELECT COUNT(*) FROM outbox WHERE done_at IS NULL", [], |row| row.get(0)))
            .await
    }
}
