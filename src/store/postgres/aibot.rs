//! AI bot streams in PostgreSQL: a refresh is one statement; an update locks
//! the row for its transaction, so replicas' updates of one stream queue.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::outbox::insert_actions;
use super::{Postgres, EPOCH};
use crate::channels::ChannelName;
use crate::store::aibot::{key_used, AnswerKey, Refresh, Refreshed, Settled};
use crate::store::outbox::NewAction;
use crate::store::StoreError;
use crate::streams::{self, StreamOpen, StreamRow, Update, UpdateError};

const COLUMNS: &str = "stream_id, record_id, channel, userid, chatid, response_url, created_at, content, finished,
    shown, delivered_refresh IS NOT NULL, response_used_at IS NOT NULL, rest_sent_at IS NOT NULL, failed_reason,
    req_id";

fn read(row: &Row) -> StreamRow {
    StreamRow {
        opened: StreamOpen {
            stream_id: row.get(0),
            record_id: row.get(1),
            channel: row.get(2),
            userid: row.get(3),
            chatid: row.get(4),
            response_url: row.get(5),
            created_at: row.get(6),
            req_id: row.get(14),
        },
        content: row.get(7),
        finished: row.get(8),
        shown: row.get(9),
        delivered: row.get(10),
        response_used: row.get(11),
        rest_sent: row.get(12),
        failed: row.get(13),
    }
}

/// Who has used `key` before: an update's answer id and fingerprint, or a
/// text send's id and its (a text send's fingerprint never equals an update's).
pub(super) async fn key_owner(
    client: &impl GenericClient,
    key: &str,
) -> Result<Option<(String, Option<String>)>, StoreError> {
    for sql in [
        "SELECT answer_id, request_sha256 FROM aibot_answer_keys WHERE idempotency_key = $1",
        "SELECT id, request_sha256 FROM sends WHERE idempotency_key = $1",
    ] {
        let statement = client.prepare_cached(sql).await?;
        if let Some(row) = client.query_opt(&statement, &[&key]).await? {
            return Ok(Some((row.get(0), row.get(1))));
        }
    }
    Ok(None)
}

/// What a key already used (`owner`, [`key_owner`]) answers an update of `row` with `key`.
fn again(row: StreamRow, key: &AnswerKey, owner: (String, Option<String>)) -> Result<StreamRow, UpdateError> {
    let (id, stored) = owner;
    key_used(id, stored.as_deref().unwrap_or_default(), &key.fingerprint).map_or(Ok(row), Err)
}

async fn select(client: &impl GenericClient, stream_id: &str, lock: bool) -> Result<Option<StreamRow>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS} FROM aibot_streams WHERE stream_id = $1{}", if lock { " FOR UPDATE" } else { "" });
    let statement = client.prepare_cached(&sql).await?;
    Ok(client.query_opt(&statement, &[&stream_id]).await?.as_ref().map(read))
}

impl Postgres {
    pub(in crate::store) async fn aibot_open(&self, open: StreamOpen) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO aibot_streams (stream_id, record_id, channel, userid, chatid, response_url, created_at, updated_at, req_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) ON CONFLICT DO NOTHING",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &open.stream_id,
                    &open.record_id,
                    &open.channel,
                    &open.userid,
                    &open.chatid,
                    &open.response_url,
                    &open.created_at,
                    &open.req_id,
                ],
            )
            .await?;
        self.committed(1);
        Ok(())
    }

    pub(in crate::store) async fn aibot_refresh(&self, refresh: Refresh) -> Result<Option<Refreshed>, StoreError> {
        // A read of one row; only the refresh that closes the stream writes, once:
        // the guarded UPDATE decides between replicas racing to close it.
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM aibot_streams WHERE stream_id = $1 AND ($2::text IS NULL OR userid = '' OR userid = $2)"
            ))
            .await?;
        let Some(row) = client.query_opt(&statement, &[&refresh.stream_id, &refresh.userid]).await?.as_ref().map(read)
        else {
            return Ok(None);
        };
        if !refresh.closes(&row) {
            return Ok(Some(Refreshed::unclosed(row)));
        }
        let statement = client
            .prepare_cached(&format!(
                "UPDATE aibot_streams SET
                    late_refresh = CASE WHEN NOT finished AND shown IS NULL THEN 1 ELSE late_refresh END,
                    shown = CASE WHEN NOT finished AND shown IS NULL THEN content ELSE shown END,
                    delivered_refresh = 1
                 WHERE stream_id = $1 AND delivered_refresh IS NULL AND (finished OR created_at + $3 <= $2)
                 RETURNING {COLUMNS}, late_refresh"
            ))
            .await?;
        let closed = client.query_opt(&statement, &[&refresh.stream_id, &refresh.now, &refresh.deadline_secs]).await?;
        self.committed(1);
        Ok(Some(match closed {
            Some(r) => Refreshed {
                row: read(&r),
                closed_now: true,
                late_now: r.get::<_, Option<i64>>("late_refresh").is_some(),
            },
            None => Refreshed::unclosed(row),
        }))
    }

    pub(in crate::store) async fn aibot_update(
        &self,
        stream_id: String,
        update: Update,
        rest: NewAction,
        key: Option<AnswerKey>,
    ) -> Result<Option<Result<StreamRow, UpdateError>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = select(&tx, &stream_id, true).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        // Under the row's lock: an update of this stream with the same key,
        // racing on another replica, committed its key before this reads it.
        if let Some(key) = &key {
            super::sends::lock_key(&tx, &key.key).await?;
            if let Some(owner) = key_owner(&tx, &key.key).await? {
                tx.rollback().await?;
                return Ok(Some(again(row, key, owner)));
            }
        }
        let applied = match streams::apply(&row, &update) {
            Ok(applied) => applied,
            Err(refused) => {
                tx.rollback().await?;
                return Ok(Some(Err(refused)));
            }
        };
        let statement = tx
            .prepare_cached(&format!(
                "UPDATE aibot_streams SET content = $2, finished = $3, updated_at = {EPOCH} WHERE stream_id = $1"
            ))
            .await?;
        tx.execute(&statement, &[&stream_id, &applied.content, &applied.finished]).await?;
        if applied.rest_owed {
            insert_actions(&tx, &[&rest]).await?;
        }
        if let Some(key) = &key {
            let statement = tx
                .prepare_cached(&format!(
                    "INSERT INTO aibot_answer_keys (idempotency_key, stream_id, answer_id, request_sha256, created_at)
                     VALUES ($1, $2, $3, $4, {EPOCH}) ON CONFLICT DO NOTHING"
                ))
                .await?;
            if tx.execute(&statement, &[&key.key, &stream_id, &key.id, &key.fingerprint]).await? == 0 {
                // Another stream's update took the key meanwhile (the insert waited for its commit).
                let owner = key_owner(&tx, &key.key).await?;
                tx.rollback().await?;
                return owner.map(|owner| Some(again(row, key, owner))).ok_or(StoreError::LeaseLost);
            }
        }
        let after = select(&tx, &stream_id, false).await?;
        tx.commit().await?;
        self.committed(1);
        Ok(after.map(Ok))
    }

    pub(in crate::store) async fn aibot_stream(&self, stream_id: String) -> Result<Option<StreamRow>, StoreError> {
        let client = self.client().await?;
        select(&client, &stream_id, false).await
    }

    pub(in crate::store) async fn aibot_take_response(&self, stream_id: String) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                &format!(
                    "UPDATE aibot_streams SET response_used_at = {EPOCH} WHERE stream_id = $1 AND response_used_at IS NULL"
                ),
                &[&stream_id],
            )
            .await?;
        self.committed(1);
        Ok(changed == 1)
    }

    pub(in crate::store) async fn aibot_settle(&self, stream_id: String, settled: Settled) -> Result<(), StoreError> {
        let client = self.client().await?;
        match settled {
            Settled::Sent => {
                client
                    .execute(
                        &format!(
                        "UPDATE aibot_streams SET rest_sent_at = {EPOCH}, updated_at = {EPOCH} WHERE stream_id = $1"
                    ),
                        &[&stream_id],
                    )
                    .await?
            }
            Settled::Failed(reason) => {
                client
                    .execute(
                        &format!(
                            "UPDATE aibot_streams SET failed_reason = $2, updated_at = {EPOCH} WHERE stream_id = $1"
                        ),
                        &[&stream_id, &reason],
                    )
                    .await?
            }
        };
        self.committed(1);
        Ok(())
    }

    pub(in crate::store) async fn aibot_pushing(&self, channel: ChannelName) -> Result<Vec<StreamRow>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM aibot_streams WHERE channel = $1 AND req_id IS NOT NULL AND pushed_at IS NULL"
            ))
            .await?;
        Ok(client.query(&statement, &[&channel]).await?.iter().map(read).collect())
    }

    pub(in crate::store) async fn aibot_pushed(&self, stream_id: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                &format!("UPDATE aibot_streams SET pushed_at = {EPOCH} WHERE stream_id = $1 AND pushed_at IS NULL"),
                &[&stream_id],
            )
            .await?;
        self.committed(1);
        Ok(())
    }

    pub(in crate::store) async fn aibot_incidents(
        &self,
        channel: ChannelName,
        since: i64,
    ) -> Result<(i64, i64), StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(shown), count(failed_reason) FROM aibot_streams WHERE channel = $1 AND created_at >= $2",
                &[&channel, &since],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }
}
