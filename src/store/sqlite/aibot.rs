//! AI bot streams in SQLite.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::outbox::insert_action;
use super::Sqlite;
use crate::channels::ChannelName;
use crate::store::aibot::{key_used, AnswerKey, Refresh, Refreshed, Settled};
use crate::store::outbox::NewAction;
use crate::store::{now, StoreError};
use crate::streams::{self, StreamOpen, StreamRow, Update, UpdateError};

const COLUMNS: &str = "stream_id, record_id, channel, userid, chatid, response_url, created_at, content, finished,
    shown, delivered_refresh IS NOT NULL, response_used_at IS NOT NULL, rest_sent_at IS NOT NULL, failed_reason,
    req_id";

fn read(row: &Row<'_>) -> rusqlite::Result<StreamRow> {
    Ok(StreamRow {
        opened: StreamOpen {
            stream_id: row.get(0)?,
            record_id: row.get(1)?,
            channel: row.get(2)?,
            userid: row.get(3)?,
            chatid: row.get(4)?,
            response_url: row.get(5)?,
            created_at: row.get(6)?,
            req_id: row.get(14)?,
        },
        content: row.get(7)?,
        finished: row.get(8)?,
        shown: row.get(9)?,
        delivered: row.get(10)?,
        response_used: row.get(11)?,
        rest_sent: row.get(12)?,
        failed: row.get(13)?,
    })
}

/// Who has used `key` before: an update's answer id and fingerprint, or a
/// text send's id and its (a text send's fingerprint never equals an update's).
pub(super) fn key_owner(db: &Connection, key: &str) -> rusqlite::Result<Option<(String, Option<String>)>> {
    let update = db
        .prepare_cached("SELECT answer_id, request_sha256 FROM aibot_answer_keys WHERE idempotency_key = ?1")?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if update.is_some() {
        return Ok(update);
    }
    db.prepare_cached("SELECT id, request_sha256 FROM sends WHERE idempotency_key = ?1")?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()
}

fn select(db: &Connection, stream_id: &str) -> rusqlite::Result<Option<StreamRow>> {
    db.prepare_cached(&format!("SELECT {COLUMNS} FROM aibot_streams WHERE stream_id = ?1"))?
        .query_row([stream_id], read)
        .optional()
}

impl Sqlite {
    pub(in crate::store) async fn aibot_open(&self, open: StreamOpen) -> Result<(), StoreError> {
        self.run_statement(move |db| {
            db.prepare_cached(
                "INSERT INTO aibot_streams (stream_id, record_id, channel, userid, chatid, response_url, created_at, updated_at, req_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                open.stream_id,
                open.record_id,
                open.channel,
                open.userid,
                open.chatid,
                open.response_url,
                open.created_at,
                open.req_id
            ])
            .map(drop)
        })
        .await
    }

    pub(in crate::store) async fn aibot_refresh(&self, refresh: Refresh) -> Result<Option<Refreshed>, StoreError> {
        // A read of one row; only the refresh that closes the stream writes (once).
        self.run_relaxed(move |db| {
            let found = db
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM aibot_streams WHERE stream_id = ?1 AND (?2 IS NULL OR userid = '' OR userid = ?2)"
                ))?
                .query_row(params![refresh.stream_id, refresh.userid], read)
                .optional()?;
            let Some(row) = found else { return Ok(None) };
            if !refresh.closes(&row) {
                return Ok(Some(Refreshed::unclosed(row)));
            }
            let closed = db
                .prepare_cached(&format!(
                    "UPDATE aibot_streams SET
                        late_refresh = CASE WHEN finished = 0 AND shown IS NULL THEN 1 ELSE late_refresh END,
                        shown = CASE WHEN finished = 0 AND shown IS NULL THEN content ELSE shown END,
                        delivered_refresh = 1
                     WHERE stream_id = ?1 AND delivered_refresh IS NULL AND (finished = 1 OR created_at + ?3 <= ?2)
                     RETURNING {COLUMNS}, late_refresh"
                ))?
                .query_row(params![refresh.stream_id, refresh.now, refresh.deadline_secs], |r| {
                    Ok(Refreshed { row: read(r)?, closed_now: true, late_now: r.get::<_, Option<i64>>("late_refresh")?.is_some() })
                })
                .optional()?;
            Ok(Some(closed.unwrap_or_else(|| Refreshed::unclosed(row))))
        })
        .await
    }

    pub(in crate::store) async fn aibot_update(
        &self,
        stream_id: String,
        update: Update,
        rest: NewAction,
        key: Option<AnswerKey>,
    ) -> Result<Option<Result<StreamRow, UpdateError>>, StoreError> {
        // The one writer thread: the read and the write cannot interleave with another's.
        self.run(move |db| {
            let Some(row) = select(db, &stream_id)? else { return Ok(None) };
            if let Some(key) = &key {
                if let Some((id, stored)) = key_owner(db, &key.key)? {
                    let stored = stored.unwrap_or_default();
                    return Ok(Some(key_used(id, &stored, &key.fingerprint).map_or(Ok(row), Err)));
                }
            }
            let applied = match streams::apply(&row, &update) {
                Ok(applied) => applied,
                Err(refused) => return Ok(Some(Err(refused))),
            };
            db.prepare_cached(
                "UPDATE aibot_streams SET content = ?2, finished = ?3, updated_at = ?4 WHERE stream_id = ?1",
            )?
            .execute(params![stream_id, applied.content, applied.finished, now()])?;
            if applied.rest_owed {
                insert_action(db, &rest)?;
            }
            if let Some(key) = &key {
                db.prepare_cached(
                    "INSERT INTO aibot_answer_keys (idempotency_key, stream_id, answer_id, request_sha256, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![key.key, stream_id, key.id, key.fingerprint, now()])?;
            }
            Ok(select(db, &stream_id)?.map(Ok))
        })
        .await
    }

    pub(in crate::store) async fn aibot_stream(&self, stream_id: String) -> Result<Option<StreamRow>, StoreError> {
        self.run_relaxed(move |db| select(db, &stream_id)).await
    }

    pub(in crate::store) async fn aibot_take_response(&self, stream_id: String) -> Result<bool, StoreError> {
        // Strict: once this returns, no attempt after a crash calls it again.
        self.run_statement(move |db| {
            db.prepare_cached(
                "UPDATE aibot_streams SET response_used_at = ?2 WHERE stream_id = ?1 AND response_used_at IS NULL",
            )?
            .execute(params![stream_id, now()])
            .map(|changed| changed == 1)
        })
        .await
    }

    pub(in crate::store) async fn aibot_settle(&self, stream_id: String, settled: Settled) -> Result<(), StoreError> {
        self.run_statement(move |db| {
            match settled {
                Settled::Sent => db.execute(
                    "UPDATE aibot_streams SET rest_sent_at = ?2, updated_at = ?2 WHERE stream_id = ?1",
                    params![stream_id, now()],
                )?,
                Settled::Failed(reason) => db.execute(
                    "UPDATE aibot_streams SET failed_reason = ?2, updated_at = ?3 WHERE stream_id = ?1",
                    params![stream_id, reason, now()],
                )?,
            };
            Ok(())
        })
        .await
    }

    pub(in crate::store) async fn aibot_pushing(&self, channel: ChannelName) -> Result<Vec<StreamRow>, StoreError> {
        self.run_relaxed(move |db| {
            db.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM aibot_streams WHERE channel = ?1 AND req_id IS NOT NULL AND pushed_at IS NULL"
            ))?
            .query_map([channel], read)?
            .collect()
        })
        .await
    }

    pub(in crate::store) async fn aibot_pushed(&self, stream_id: String) -> Result<(), StoreError> {
        self.run_relaxed(move |db| {
            db.prepare_cached("UPDATE aibot_streams SET pushed_at = ?2 WHERE stream_id = ?1 AND pushed_at IS NULL")?
                .execute(params![stream_id, now()])
                .map(drop)
        })
        .await
    }

    pub(in crate::store) async fn aibot_incidents(
        &self,
        channel: ChannelName,
        since: i64,
    ) -> Result<(i64, i64), StoreError> {
        self.run_relaxed(move |db| {
            db.prepare_cached(
                "SELECT COUNT(shown), COUNT(failed_reason) FROM aibot_streams WHERE channel = ?1 AND created_at >= ?2",
            )?
            .query_row(params![channel, since], |row| Ok((row.get(0)?, row.get(1)?)))
        })
        .await
    }
}
