//! AI bot streams (SPEC §13): one row per user message that opens a stream,
//! so whichever replica WeCom reaches answers a refresh, and whichever replica
//! the bot calls takes its update. What the row's fields mean, and the
//! decisions taken on them, are `crate::streams`'; here is how they are kept.
//!
//! A refresh is a read of one row; only the one refresh that closes the
//! stream (finished, or late) writes, guarded so that racing replicas close it
//! once, keeping the snapshot a late close showed. An update is one transaction: the row read and locked, the pure
//! `streams::apply`, the row written and, when the stream cannot show all of
//! the answer, the `response_url` action queued with it.
//!
//! On the long connection the row also keeps the first delivery's `req_id`
//! and when the connection's holder was done with it, so the streams a dead
//! holder still owed are found by its successor (`aibot_pushing`).

use super::outbox::NewAction;
use super::{backend, Store, StoreError};
use crate::channels::ChannelName;
use crate::streams::{StreamOpen, StreamRow, Update, UpdateError};

/// A refresh of `stream_id` by `userid` (anyone's when `None`) at `now`, which
/// closes the stream once it is finished or `deadline_secs` after the message.
#[derive(Debug, Clone)]
pub(in crate::store) struct Refresh {
    pub(in crate::store) stream_id: String,
    pub(in crate::store) userid: Option<String>,
    pub(in crate::store) now: i64,
    pub(in crate::store) deadline_secs: i64,
}

impl Refresh {
    /// Whether this refresh closes `row` (if no other closed it first).
    pub(in crate::store) fn closes(&self, row: &StreamRow) -> bool {
        crate::streams::closes(row, self.now, self.deadline_secs)
    }
}

/// What a refresh found.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub row: StreamRow,
    /// This refresh is the one that showed `finish: true` first.
    pub closed_now: bool,
    /// This refresh closed it at the deadline, unfinished.
    pub late_now: bool,
}

impl Refreshed {
    /// `row` as found, left open by this refresh (not yet due, or closed by another).
    pub(in crate::store) fn unclosed(row: StreamRow) -> Self {
        Self { row, closed_now: false, late_now: false }
    }
}

/// The send API's `idempotency_key` of an update (SPEC §10, §15): the same key
/// again for the same request takes nothing more and finds the stream as it
/// is; for another request (another `fingerprint`, or a key of a text send) it
/// is [`UpdateError::KeyReused`]. Keys are one namespace with the sends'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerKey {
    pub key: String,
    /// `SendRequest::answer_fingerprint`.
    pub fingerprint: String,
    /// The message id the request is answered with (the stream's answer id).
    pub id: String,
}

/// What a key already used means for a request with `fingerprint`: the same
/// request (`None`: answer with the stream as it is) or another one.
pub(in crate::store) fn key_used(id: String, stored: &str, fingerprint: &str) -> Option<UpdateError> {
    (stored != fingerprint).then_some(UpdateError::KeyReused { id })
}

/// How a `response_url` call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// WeCom took the rest.
    Sent,
    /// The rest is lost, with the reason.
    Failed(String),
}

impl Store {
    /// Opens a stream unless it is open already (a retry of the message): durable when this returns.
    pub async fn aibot_open(&self, open: StreamOpen) -> Result<(), StoreError> {
        backend!(self, b => b.aibot_open(open).await)
    }

    /// A refresh of `stream_id` by `userid` at `now`: the row, closed once it is
    /// finished or past `deadline_secs` after the message. `None`: no such
    /// stream (or another user's).
    pub async fn aibot_refresh(
        &self,
        stream_id: String,
        userid: Option<String>,
        now: i64,
        deadline_secs: i64,
    ) -> Result<Option<Refreshed>, StoreError> {
        let refresh = Refresh { stream_id, userid, now, deadline_secs };
        backend!(self, b => b.aibot_refresh(refresh).await)
    }

    /// Applies the bot's `update`; queues `rest` (the `response_url` action)
    /// with it when the stream cannot show the whole answer. `None`: no such
    /// stream. With `key`, once per key: see [`AnswerKey`]; the key is kept
    /// with the update, in its transaction.
    pub async fn aibot_update(
        &self,
        stream_id: String,
        update: Update,
        rest: NewAction,
        key: Option<AnswerKey>,
    ) -> Result<Option<Result<StreamRow, UpdateError>>, StoreError> {
        backend!(self, b => b.aibot_update(stream_id, update, rest, key).await)
    }

    /// The stream `stream_id`.
    pub async fn aibot_stream(&self, stream_id: String) -> Result<Option<StreamRow>, StoreError> {
        backend!(self, b => b.aibot_stream(stream_id).await)
    }

    /// Takes the one use of `stream_id`'s `response_url`: `true` for the one caller that may call it.
    pub async fn aibot_take_response(&self, stream_id: String) -> Result<bool, StoreError> {
        backend!(self, b => b.aibot_take_response(stream_id).await)
    }

    /// Records how `stream_id`'s `response_url` call (or its absence) ended.
    pub async fn aibot_settle(&self, stream_id: String, settled: Settled) -> Result<(), StoreError> {
        backend!(self, b => b.aibot_settle(stream_id, settled).await)
    }

    /// The streams of `channel` answered over the long connection (opened with
    /// a `req_id`) that the connection's holder is not done with: what a holder
    /// picks up when it takes the connection over.
    pub async fn aibot_pushing(&self, channel: ChannelName) -> Result<Vec<StreamRow>, StoreError> {
        backend!(self, b => b.aibot_pushing(channel).await)
    }

    /// Records that the connection's holder is done with `stream_id`: its last
    /// frame and any rest went out, or the answer failed.
    pub async fn aibot_pushed(&self, stream_id: String) -> Result<(), StoreError> {
        backend!(self, b => b.aibot_pushed(stream_id).await)
    }

    /// Of `channel`'s streams opened since `since`: how many went late, and how
    /// many answers were lost (`failed`), for the check `aibot:<name>`.
    pub async fn aibot_incidents(&self, channel: ChannelName, since: i64) -> Result<(i64, i64), StoreError> {
        backend!(self, b => b.aibot_incidents(channel, since).await)
    }
}
