//! Sends in SQLite.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::outbox::insert_action;
use super::Sqlite;
use crate::channels::ChannelName;
use crate::store::outbox::NewAction;
use crate::store::sends::{KfMsgid, NewSend, Queued, SendRow, SendStatus, SendUpdate};
use crate::store::{now, StoreError};

const COLUMNS: &str =
    "id, channel, recipient, open_kfid, status, parts, parts_sent, errcode, reason, created_at, updated_at";

fn read(row: &Row<'_>) -> rusqlite::Result<SendRow> {
    Ok(SendRow {
        id: row.get(0)?,
        channel: row.get(1)?,
        recipient: row.get(2)?,
        open_kfid: row.get(3)?,
        status: SendStatus::parse(&row.get::<_, String>(4)?),
        parts: row.get(5)?,
        parts_sent: row.get(6)?,
        errcode: row.get(7)?,
        reason: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
    })
}

/// Inserts `send` unless its id is known; whether it was inserted.
fn insert(db: &Connection, send: &NewSend) -> rusqlite::Result<bool> {
    let at = now();
    let inserted = db
        .prepare_cached(
            "INSERT INTO sends (id, channel, recipient, open_kfid, idempotency_key, request_sha256, status, parts,
                                created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?8) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            send.id,
            &send.channel,
            send.recipient,
            send.open_kfid,
            send.idempotency_key,
            send.fingerprint,
            send.parts,
            at
        ])?;
    Ok(inserted == 1)
}

/// Sends of `channel` still `queued` (the partial index `sends_queued` holds only those).
fn queued(db: &Connection, channel: &ChannelName) -> rusqlite::Result<i64> {
    db.prepare_cached("SELECT COUNT(*) FROM sends WHERE status = 'queued' AND channel = ?1")?
        .query_row([channel], |row| row.get(0))
}

/// Whether `send` would be a new send on a channel already holding `max`
/// queued ones (a send whose idempotency key is known is no new send).
fn over_cap(db: &Connection, send: &NewSend, max: i64) -> rusqlite::Result<Option<Queued>> {
    if let Some(key) = &send.idempotency_key {
        let known: Option<i64> =
            db.query_row("SELECT 1 FROM sends WHERE idempotency_key = ?1", [key], |row| row.get(0)).optional()?;
        if known.is_some() {
            return Ok(None);
        }
    }
    let queued = queued(db, &send.channel)?;
    Ok((queued >= max).then_some(Queued::Full { queued }))
}

/// The AI bot answer whose update used `send`'s idempotency key (the keys are
/// one namespace): `send` is another request.
fn answered_with_key(db: &Connection, send: &NewSend) -> rusqlite::Result<Option<String>> {
    let Some(key) = &send.idempotency_key else { return Ok(None) };
    db.prepare_cached("SELECT answer_id FROM aibot_answer_keys WHERE idempotency_key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()
}

fn select(db: &Connection, id: &str) -> rusqlite::Result<Option<SendRow>> {
    db.prepare_cached(&format!("SELECT {COLUMNS} FROM sends WHERE id = ?1"))?.query_row([id], read).optional()
}

impl Sqlite {
    pub(in crate::store) async fn queue_send(
        &self,
        send: NewSend,
        action: NewAction,
        max: i64,
    ) -> Result<Queued, StoreError> {
        // One writer thread: the count and the insert cannot interleave with another's.
        self.run(move |db| {
            if let Some(answer) = answered_with_key(db, &send)? {
                return Ok(Queued::Conflict(answer));
            }
            if let Some(full) = over_cap(db, &send, max)? {
                return Ok(full);
            }
            if !insert(db, &send)? {
                let key = send.idempotency_key.as_deref().unwrap_or_default();
                let (id, stored): (String, Option<String>) =
                    db.query_row("SELECT id, request_sha256 FROM sends WHERE idempotency_key = ?1", [key], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })?;
                return Ok(Queued::again(id, stored.as_deref(), send.fingerprint.as_deref()));
            }
            insert_action(db, &action)?;
            Ok(Queued::New(send.id))
        })
        .await
    }

    #[cfg(any(test, feature = "testing"))]
    pub(in crate::store) async fn queued_sends(&self, channel: ChannelName) -> Result<i64, StoreError> {
        self.run_relaxed(move |db| queued(db, &channel)).await
    }

    pub(in crate::store) async fn record_send(&self, send: NewSend) -> Result<SendRow, StoreError> {
        self.run_relaxed(move |db| {
            insert(db, &send)?;
            select(db, &send.id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
        })
        .await
    }

    pub(in crate::store) async fn send(&self, id: String) -> Result<Option<SendRow>, StoreError> {
        self.run_relaxed(move |db| select(db, &id)).await
    }

    pub(in crate::store) async fn update_send(
        &self,
        id: String,
        update: SendUpdate,
    ) -> Result<Option<SendStatus>, StoreError> {
        self.run_relaxed(move |db| {
            let at = now();
            let before = select(db, &id)?.map(|row| row.status);
            match update {
                SendUpdate::PartSent { number } => db.execute(
                    "UPDATE sends SET parts_sent = MAX(parts_sent, ?2), updated_at = ?3,
                     status = CASE WHEN status = 'queued' AND ?2 >= parts THEN 'sent' ELSE status END
                     WHERE id = ?1",
                    params![id, number, at],
                )?,
                SendUpdate::Failed { errcode, reason } => db.execute(
                    "UPDATE sends SET status = 'failed', errcode = ?2, reason = ?3, updated_at = ?4
                     WHERE id = ?1 AND status IN ('queued', 'sent')",
                    params![id, errcode, reason, at],
                )?,
                SendUpdate::Refused { reason } => db.execute(
                    "UPDATE sends SET status = 'refused', reason = ?2, updated_at = ?3
                     WHERE id = ?1 AND status = 'queued'",
                    params![id, reason, at],
                )?,
            };
            let after = select(db, &id)?.map(|row| row.status);
            Ok(after.filter(|status| Some(*status) != before))
        })
        .await
    }

    pub(in crate::store) async fn note_msgid(&self, msgid: KfMsgid, id: String) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            db.prepare_cached(
                "INSERT INTO send_msgids (channel, msgid, send_id, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![msgid.channel, msgid.msgid, id, now()])
            .map(drop)
        })
        .await
    }

    pub(in crate::store) async fn send_of_msgid(&self, msgid: KfMsgid) -> Result<Option<String>, StoreError> {
        self.run_relaxed(move |db| {
            db.query_row(
                "SELECT send_id FROM send_msgids WHERE channel = ?1 AND msgid = ?2",
                params![msgid.channel, msgid.msgid],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    pub(in crate::store) async fn recent_sends(&self, limit: usize) -> Result<Vec<SendRow>, StoreError> {
        self.run_relaxed(move |db| {
            let mut statement =
                db.prepare_cached(&format!("SELECT {COLUMNS} FROM sends ORDER BY updated_at DESC, id LIMIT ?1"))?;
            let rows = statement.query_map([limit as i64], read)?;
            rows.collect()
        })
        .await
    }
}
