//! Sends in PostgreSQL.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::outbox::insert_actions;
use super::{bigint, Postgres, EPOCH};
use crate::channels::ChannelName;
use crate::store::outbox::NewAction;
use crate::store::sends::{KfMsgid, NewSend, Queued, SendRow, SendStatus, SendUpdate};
use crate::store::StoreError;

const COLUMNS: &str =
    "id, channel, recipient, open_kfid, status, parts, parts_sent, errcode, reason, created_at, updated_at";

fn read(row: &Row) -> SendRow {
    SendRow {
        id: row.get(0),
        channel: row.get(1),
        recipient: row.get(2),
        open_kfid: row.get(3),
        status: SendStatus::parse(row.get(4)),
        parts: row.get(5),
        parts_sent: row.get(6),
        errcode: row.get(7),
        reason: row.get(8),
        created_at: row.get(9),
        updated_at: row.get(10),
    }
}

/// Inserts `send` unless its id or idempotency key is known; whether it was inserted.
async fn insert(client: &impl GenericClient, send: &NewSend) -> Result<bool, StoreError> {
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO sends (id, channel, recipient, open_kfid, idempotency_key, request_sha256, status, parts,
                                created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, {EPOCH}, {EPOCH}) ON CONFLICT DO NOTHING"
        ))
        .await?;
    let inserted = client
        .execute(
            &statement,
            &[
                &send.id,
                &send.channel,
                &send.recipient,
                &send.open_kfid,
                &send.idempotency_key,
                &send.fingerprint,
                &send.parts,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Sends of `channel` still `queued` (the partial index `sends_queued` holds only those).
async fn queued(client: &impl GenericClient, channel: &ChannelName) -> Result<i64, StoreError> {
    let statement =
        client.prepare_cached("SELECT count(*) FROM sends WHERE status = 'queued' AND channel = $1").await?;
    Ok(client.query_one(&statement, &[&channel]).await?.get(0))
}

/// The class of the transaction-scoped advisory locks that serialise the
/// queueing of sends per channel (the second key is the channel's hash).
const SEND_QUEUE_LOCK: i32 = 0x7365_6e64; // "send"

/// The first key of the transaction-scoped advisory lock on one
/// `idempotency_key` (the second is its hash): text sends and AI bot updates
/// keep their keys in two tables, one namespace, so a send and an update racing
/// with the same key on two replicas must not both find it unused.
const IDEMPOTENCY_KEY_LOCK: i32 = 0x6b65_7973; // "keys"

/// Holds `key` until `tx` ends (see [`IDEMPOTENCY_KEY_LOCK`]).
pub(super) async fn lock_key(tx: &tokio_postgres::Transaction<'_>, key: &str) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&IDEMPOTENCY_KEY_LOCK, &key]).await.map(drop)
}

async fn select(client: &impl GenericClient, id: &str) -> Result<Option<SendRow>, StoreError> {
    let statement = client.prepare_cached(&format!("SELECT {COLUMNS} FROM sends WHERE id = $1")).await?;
    Ok(client.query_opt(&statement, &[&id]).await?.as_ref().map(read))
}

impl Postgres {
    pub(in crate::store) async fn queue_send(
        &self,
        send: NewSend,
        action: NewAction,
        max: i64,
    ) -> Result<Queued, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // SEND_QUEUE_MAX, exactly across replicas: one queueing transaction per
        // channel at a time (released at commit), so the count below sees every
        // send committed before it, and no other can slip in before this commits.
        tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&SEND_QUEUE_LOCK, &send.channel]).await?;
        if let Some(key) = &send.idempotency_key {
            lock_key(&tx, key).await?;
            // The keys are one namespace: an AI bot answer's update used it, so this is another request.
            let answered =
                tx.query_opt("SELECT answer_id FROM aibot_answer_keys WHERE idempotency_key = $1", &[key]).await?;
            if let Some(answer) = answered {
                tx.rollback().await?;
                return Ok(Queued::Conflict(answer.get(0)));
            }
        }
        let known = match &send.idempotency_key {
            Some(key) => tx.query_opt("SELECT 1 FROM sends WHERE idempotency_key = $1", &[key]).await?.is_some(),
            None => false,
        };
        if !known {
            let queued = queued(&tx, &send.channel).await?;
            if queued >= max {
                tx.rollback().await?;
                return Ok(Queued::Full { queued });
            }
        }
        // A concurrent request with the same idempotency key waits on the unique
        // index until the first commits, then inserts nothing.
        if !insert(&tx, &send).await? {
            let existing = match &send.idempotency_key {
                Some(key) => {
                    tx.query_opt("SELECT id, request_sha256 FROM sends WHERE idempotency_key = $1", &[key]).await?
                }
                None => None,
            };
            tx.rollback().await?;
            return existing
                .map(|row| Queued::again(row.get(0), row.get::<_, Option<&str>>(1), send.fingerprint.as_deref()))
                .ok_or(StoreError::LeaseLost);
        }
        insert_actions(&tx, &[&action]).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(Queued::New(send.id))
    }

    #[cfg(any(test, feature = "testing"))]
    pub(in crate::store) async fn queued_sends(&self, channel: ChannelName) -> Result<i64, StoreError> {
        let client = self.client().await?;
        queued(&client, &channel).await
    }

    pub(in crate::store) async fn record_send(&self, send: NewSend) -> Result<SendRow, StoreError> {
        let client = self.client().await?;
        insert(&client, &send).await?;
        self.committed(1);
        select(&client, &send.id).await?.ok_or(StoreError::LeaseLost)
    }

    pub(in crate::store) async fn send(&self, id: String) -> Result<Option<SendRow>, StoreError> {
        let client = self.client().await?;
        select(&client, &id).await
    }

    pub(in crate::store) async fn update_send(
        &self,
        id: String,
        update: SendUpdate,
    ) -> Result<Option<SendStatus>, StoreError> {
        let client = self.client().await?;
        // Each update names the statuses it moves from; `before` tells whether it moved.
        let (set, only_from, params): (&str, &str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>) = match &update {
            SendUpdate::PartSent { number } => (
                "parts_sent = GREATEST(sends.parts_sent, $2),
                 status = CASE WHEN sends.status = 'queued' AND $2 >= sends.parts THEN 'sent' ELSE sends.status END",
                "",
                vec![&id, number],
            ),
            SendUpdate::Failed { errcode, reason } => (
                "status = 'failed', errcode = $2, reason = $3",
                "AND sends.status IN ('queued', 'sent')",
                vec![&id, errcode, reason],
            ),
            SendUpdate::Refused { reason } => {
                ("status = 'refused', reason = $2", "AND sends.status = 'queued'", vec![&id, reason])
            }
        };
        let sql = format!(
            "UPDATE sends SET {set}, updated_at = {EPOCH}
             FROM (SELECT status AS before FROM sends WHERE id = $1 FOR UPDATE) AS old
             WHERE sends.id = $1 {only_from} RETURNING sends.status, old.before"
        );
        let statement = client.prepare_cached(&sql).await?;
        let row = client.query_opt(&statement, &params).await?;
        self.committed(1);
        Ok(row
            .map(|row| (SendStatus::parse(row.get(0)), SendStatus::parse(row.get(1))))
            .and_then(|(after, before)| (after != before).then_some(after)))
    }

    pub(in crate::store) async fn note_msgid(&self, msgid: KfMsgid, id: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "INSERT INTO send_msgids (channel, msgid, send_id, created_at) VALUES ($1, $2, $3, {EPOCH})
                 ON CONFLICT DO NOTHING"
            ))
            .await?;
        client.execute(&statement, &[&msgid.channel, &msgid.msgid, &id]).await?;
        self.committed(1);
        Ok(())
    }

    pub(in crate::store) async fn send_of_msgid(&self, msgid: KfMsgid) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let statement =
            client.prepare_cached("SELECT send_id FROM send_msgids WHERE channel = $1 AND msgid = $2").await?;
        Ok(client.query_opt(&statement, &[&msgid.channel, &msgid.msgid]).await?.map(|row| row.get(0)))
    }

    pub(in crate::store) async fn recent_sends(&self, limit: usize) -> Result<Vec<SendRow>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM sends ORDER BY updated_at DESC, id LIMIT $1"))
            .await?;
        Ok(client.query(&statement, &[&bigint(limit)]).await?.iter().map(read).collect())
    }
}
