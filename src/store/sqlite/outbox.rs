//! The outbox in SQLite.

use rusqlite::{params, Connection};

use super::Sqlite;
use crate::store::outbox::{DueAction, Finish, NewAction, Owed};
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

/// The claim did not match: the row was not changed, so the savepoint rolls back.
fn fenced(changed: usize) -> rusqlite::Result<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(rusqlite::Error::QueryReturnedNoRows)
    }
}

/// A refused claim's error, named.
fn lease_lost(error: StoreError) -> StoreError {
    match error {
        StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows) => StoreError::LeaseLost,
        other => other,
    }
}

impl Sqlite {
    /// Claims due, unclaimed actions: their `claim` goes up by one and they are
    /// not due to anyone else for the store's lease.
    pub(in crate::store) async fn claim_actions(&self, limit: usize) -> Result<Vec<DueAction>, StoreError> {
        let lease_secs = self.lease_secs;
        self.run_relaxed(move |db| {
            let at = now();
            let mut statement = db.prepare_cached(
                "UPDATE outbox SET claim = claim + 1, claimed_until = ?1 + ?2
                 WHERE id IN (SELECT id FROM outbox
                              WHERE done_at IS NULL AND next_attempt_at <= ?1
                                AND (claimed_until IS NULL OR claimed_until <= ?1)
                              ORDER BY next_attempt_at, id LIMIT ?3)
                 RETURNING id, action_key, kind, payload, attempts, claim, next_attempt_at",
            )?;
            let rows = statement.query_map(params![at, lease_secs, limit as i64], |row| {
                Ok((
                    row.get::<_, i64>(6)?,
                    DueAction {
                        id: row.get(0)?,
                        key: row.get(1)?,
                        kind: row.get(2)?,
                        payload: row.get(3)?,
                        attempts: row.get(4)?,
                        claim: row.get(5)?,
                    },
                ))
            })?;
            let mut due = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            // RETURNING keeps no order: oldest due first, as claimed.
            due.sort_by_key(|(due_at, action)| (*due_at, action.id));
            Ok(due.into_iter().map(|(_, action)| action).collect())
        })
        .await
    }

    /// Ends an attempt (see [`Finish`]): one update, fenced by the claim, and a
    /// success's follow-ups in the same transaction.
    pub(in crate::store) async fn finish_action(&self, id: i64, claim: i64, finish: Finish) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            let at = now();
            let changed = match &finish {
                Finish::Succeeded(_) => db.execute(
                    "UPDATE outbox SET done_at = ?3, last_error = NULL, claimed_until = NULL WHERE id = ?1 AND claim = ?2",
                    params![id, claim, at],
                ),
                Finish::Abandoned(error) => db.execute(
                    "UPDATE outbox SET done_at = ?3, attempts = attempts + 1, last_error = ?4, claimed_until = NULL
                     WHERE id = ?1 AND claim = ?2",
                    params![id, claim, at, format!("abandoned: {error}")],
                ),
                Finish::Failed { retry_in_secs, error } => db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4, claimed_until = NULL
                     WHERE id = ?1 AND claim = ?2",
                    params![id, claim, at + retry_in_secs, error],
                ),
                Finish::Deferred { after_secs } => db.execute(
                    "UPDATE outbox SET next_attempt_at = ?3, claimed_until = NULL WHERE id = ?1 AND claim = ?2",
                    params![id, claim, at + after_secs],
                ),
            }?;
            fenced(changed)?;
            match &finish {
                Finish::Succeeded(follow_ups) => follow_ups.iter().try_for_each(|action| insert_action(db, action)),
                _ => Ok(()),
            }
        })
        .await
        .map_err(lease_lost)
    }

    /// Owed actions and the oldest one's queueing time. The rows are found
    /// through the partial index of undone actions: the work grows with the
    /// backlog, not with the table.
    pub(in crate::store) async fn outbox_owed(&self) -> Result<Owed, StoreError> {
        self.run_relaxed(|db| {
            db.query_row("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE done_at IS NULL", [], |row| {
                Ok(Owed { actions: row.get(0)?, oldest_since: row.get(1)? })
            })
        })
        .await
    }

    /// Unfinished actions, for health and metrics.
    #[cfg(any(test, feature = "testing"))]
    pub(in crate::store) async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        self.run_relaxed(|db| db.query_row("SELECT COUNT(*) FROM outbox WHERE done_at IS NULL", [], |row| row.get(0)))
            .await
    }
}
