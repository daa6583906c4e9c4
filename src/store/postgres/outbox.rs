//! The outbox in PostgreSQL: claims with `FOR UPDATE SKIP LOCKED` over the
//! partial index of due, undone actions, and finishes fenced by the claim.
//! Deliberately not here: back-off policy (the caller passes `retry_in_secs`).

use std::time::SystemTime;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::{bigint, Postgres, EPOCH};
use crate::store::outbox::{DueAction, Finish, NewAction, Owed};
use crate::store::StoreError;

/// Queues `actions` unless their idempotency keys are queued already (sorted by
/// key, so concurrent transactions take the key locks in the same order).
pub(super) async fn insert_actions(tx: &Transaction<'_>, actions: &[&NewAction]) -> Result<(), StoreError> {
    if actions.is_empty() {
        return Ok(());
    }
    let mut sorted = actions.to_vec();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<&str> = sorted.iter().map(|a| a.key.as_str()).collect();
    let kinds: Vec<&str> = sorted.iter().map(|a| a.kind.as_str()).collect();
    let payloads: Vec<&str> = sorted.iter().map(|a| a.payload.as_str()).collect();
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO outbox (action_key, kind, payload, created_at)
             SELECT k, t, p, {EPOCH} FROM unnest($1::text[], $2::text[], $3::text[]) AS a(k, t, p)
             ON CONFLICT (action_key) DO NOTHING"
        ))
        .await?;
    tx.execute(&statement, &[&keys, &kinds, &payloads]).await?;
    Ok(())
}

impl Postgres {
    /// Claims due, undone actions not held by a live claim: their `claim` goes up
    /// by one and no one else gets them for the store's lease.
    pub(in crate::store) async fn claim_actions(&self, limit: usize) -> Result<Vec<DueAction>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE outbox SET claim = claim + 1, claimed_until = now() + make_interval(secs => $2::bigint)
                 WHERE id IN (SELECT id FROM outbox
                              WHERE done_at IS NULL AND next_attempt_at <= now()
                                AND (claimed_until IS NULL OR claimed_until <= now())
                              ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING id, action_key, kind, payload, attempts, claim, next_attempt_at",
            )
            .await?;
        let rows = client.query(&statement, &[&bigint(limit), &self.lease_secs]).await?;
        self.committed(1);
        let mut due: Vec<(SystemTime, DueAction)> = rows
            .iter()
            .map(|row| {
                (
                    row.get(6),
                    DueAction {
                        id: row.get(0),
                        key: row.get(1),
                        kind: row.get(2),
                        payload: row.get(3),
                        attempts: row.get(4),
                        claim: row.get(5),
                    },
                )
            })
            .collect();
        // RETURNING keeps no order: oldest due first, as claimed.
        due.sort_by_key(|(due_at, action)| (*due_at, action.id));
        Ok(due.into_iter().map(|(_, action)| action).collect())
    }

    /// Ends an attempt (see [`Finish`]): one update fenced by the claim, in a
    /// transaction with a success's follow-ups when there are any; releases the claim.
    pub(in crate::store) async fn finish_action(&self, id: i64, claim: i64, finish: Finish) -> Result<(), StoreError> {
        let abandoned;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id, &claim];
        let set = match &finish {
            Finish::Succeeded(_) => format!("done_at = {EPOCH}, last_error = NULL"),
            Finish::Abandoned(error) => {
                abandoned = format!("abandoned: {error}");
                params.push(&abandoned);
                format!("done_at = {EPOCH}, attempts = attempts + 1, last_error = $3")
            }
            Finish::Failed { retry_in_secs, error } => {
                params.extend([error as &(dyn ToSql + Sync), retry_in_secs]);
                "attempts = attempts + 1, last_error = $3, next_attempt_at = now() + make_interval(secs => $4::bigint)"
                    .to_owned()
            }
            Finish::Deferred { after_secs } => {
                params.push(after_secs);
                "next_attempt_at = now() + make_interval(secs => $3::bigint)".to_owned()
            }
        };
        let sql = format!("UPDATE outbox SET {set}, claimed_until = NULL WHERE id = $1 AND claim = $2");
        let follow_ups = match &finish {
            Finish::Succeeded(follow_ups) if !follow_ups.is_empty() => follow_ups,
            // One statement is its own transaction: no BEGIN and COMMIT round trips.
            _ => return self.fenced(&sql, &params).await,
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx.prepare_cached(&sql).await?;
        if tx.execute(&statement, &params).await? != 1 {
            tx.rollback().await?;
            return Err(StoreError::LeaseLost);
        }
        insert_actions(&tx, &follow_ups.iter().collect::<Vec<_>>()).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(())
    }

    /// Runs one update of one action (`$1`) that changes it only under its claim
    /// (`$2`): [`StoreError::LeaseLost`] when it changed nothing.
    async fn fenced(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        if client.execute(&statement, params).await? != 1 {
            return Err(StoreError::LeaseLost);
        }
        self.committed(1);
        Ok(())
    }

    /// Owed actions and the oldest one's queueing time, through the partial
    /// index of undone actions (`outbox_due`).
    pub(in crate::store) async fn outbox_owed(&self) -> Result<Owed, StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT count(*), min(created_at) FROM outbox WHERE done_at IS NULL").await?;
        let row = client.query_one(&statement, &[]).await?;
        Ok(Owed { actions: row.get(0), oldest_since: row.get(1) })
    }

    /// Unfinished actions.
    #[cfg(any(test, feature = "testing"))]
    pub(in crate::store) async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached("SELECT count(*) FROM outbox WHERE done_at IS NULL").await?;
        Ok(client.query_one(&statement, &[]).await?.get(0))
    }
}
