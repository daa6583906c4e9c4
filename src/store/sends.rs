//! The texts the appliance sends (help, welcome, forward replies, the send API),
//! each with its status: `queued` until WeCom accepted its last part (`sent`),
//! or `failed` (WeCom refused it, or reported a `msg_send_fail`), or `refused`
//! (a kf rule stopped it before any call). Each part's own kf `msgid` points back
//! to its send, so a `msg_send_fail` finds it.

use super::outbox::NewAction;
use super::{backend, Store, StoreError};
use crate::channels::ChannelName;

/// Where a send stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    Queued,
    Sent,
    Failed,
    Refused,
}

impl SendStatus {
    /// The name stored and shown (SPEC §10).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Refused => "refused",
        }
    }

    /// The status named by [`SendStatus::as_str`]; an unknown name reads as queued.
    pub(crate) fn parse(name: &str) -> Self {
        [Self::Sent, Self::Failed, Self::Refused].into_iter().find(|s| s.as_str() == name).unwrap_or(Self::Queued)
    }
}

/// A send to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSend {
    pub id: String,
    /// The channel it goes out on (an app or a kf channel).
    pub channel: ChannelName,
    /// userid (app) or external_userid (kf).
    pub recipient: String,
    pub open_kfid: Option<String>,
    /// How many messages the shaped text is.
    pub parts: i64,
    /// The send API's `idempotency_key`: the same key is one send.
    pub idempotency_key: Option<String>,
    /// The send API's request fingerprint (`SendRequest::fingerprint`): the same
    /// key with another fingerprint is [`Queued::Conflict`].
    pub fingerprint: Option<String>,
}

/// A kf message id on the channel it went out on: the id alone is not a key
/// (another corp's channel may carry the same one); the `msg_send_fail` that
/// names it comes on that channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KfMsgid {
    pub channel: ChannelName,
    pub msgid: String,
}

/// A recorded send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRow {
    pub id: String,
    pub channel: ChannelName,
    pub recipient: String,
    pub open_kfid: Option<String>,
    pub status: SendStatus,
    pub parts: i64,
    /// Parts WeCom accepted so far.
    pub parts_sent: i64,
    pub errcode: Option<i64>,
    /// Why it failed or was refused.
    pub reason: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// What happened to a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendUpdate {
    /// WeCom accepted part `number` (1-based); the last part makes it `sent`.
    PartSent { number: i64 },
    /// WeCom refused it or reported that it was not delivered; a `sent` one may
    /// still fail (`msg_send_fail` comes afterwards).
    Failed { errcode: Option<i64>, reason: String },
    /// A rule stopped it before any call; only a queued send can be refused.
    Refused { reason: String },
}

/// What queueing an API send found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queued {
    /// Recorded with its first action.
    New(String),
    /// Its idempotency key was used before for the same request: that send's
    /// id, nothing written.
    Existing(String),
    /// Its channel already has `queued` sends queued and not yet finished, the
    /// most allowed (`SEND_QUEUE_MAX`): nothing written.
    Full { queued: i64 },
    /// Its idempotency key was used before for another request (another
    /// fingerprint): that send's id, nothing written.
    Conflict(String),
}

impl Queued {
    /// What an idempotency key already used for send `id` means for a request
    /// with `fingerprint`: the same request ([`Queued::Existing`]) or another
    /// one ([`Queued::Conflict`]). A send stored without a fingerprint (before
    /// they were kept) counts as the same request.
    pub(crate) fn again(id: String, stored: Option<&str>, fingerprint: Option<&str>) -> Self {
        match (stored, fingerprint) {
            (Some(stored), Some(presented)) if stored != presented => Self::Conflict(id),
            _ => Self::Existing(id),
        }
    }
}

impl Store {
    /// Records a send of the send API and queues its first action, in one
    /// transaction; an idempotency key used before returns that send instead,
    /// as [`Queued::Existing`] or, for another request, [`Queued::Conflict`].
    /// A new send is refused ([`Queued::Full`]) when its channel has `max` sends
    /// queued already: counted inside the transaction, under a lock per channel
    /// on PostgreSQL, so racing replicas never queue more than `max`.
    pub async fn queue_send(&self, send: NewSend, action: NewAction, max: i64) -> Result<Queued, StoreError> {
        backend!(self, b => b.queue_send(send, action, max).await)
    }

    /// Sends of `channel` queued and not yet finished (`SEND_QUEUE_MAX` counts these).
    #[cfg(any(test, feature = "testing"))]
    pub async fn queued_sends(&self, channel: ChannelName) -> Result<i64, StoreError> {
        backend!(self, b => b.queued_sends(channel).await)
    }

    /// Records a send the handlers asked for, unless it is recorded already (its
    /// first part is being attempted again); returns it as stored.
    pub async fn record_send(&self, send: NewSend) -> Result<SendRow, StoreError> {
        backend!(self, b => b.record_send(send).await)
    }

    pub async fn send(&self, id: String) -> Result<Option<SendRow>, StoreError> {
        backend!(self, b => b.send(id).await)
    }

    /// Applies `update`; returns the new status when it changed.
    pub async fn update_send(&self, id: String, update: SendUpdate) -> Result<Option<SendStatus>, StoreError> {
        backend!(self, b => b.update_send(id, update).await)
    }

    /// Remembers that `msgid` is a part of send `id`.
    pub async fn note_msgid(&self, msgid: KfMsgid, id: String) -> Result<(), StoreError> {
        backend!(self, b => b.note_msgid(msgid, id).await)
    }

    /// The send whose part carried `msgid`.
    pub async fn send_of_msgid(&self, msgid: KfMsgid) -> Result<Option<String>, StoreError> {
        backend!(self, b => b.send_of_msgid(msgid).await)
    }

    /// The most recently changed sends, newest first.
    pub async fn recent_sends(&self, limit: usize) -> Result<Vec<SendRow>, StoreError> {
        backend!(self, b => b.recent_sends(limit).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_used_again_is_the_same_send_unless_the_request_differs() {
        let again = |stored, presented| Queued::again("msg_1".into(), stored, presented);
        assert_eq!(again(Some("a"), Some("a")), Queued::Existing("msg_1".into()));
        assert_eq!(again(Some("a"), Some("b")), Queued::Conflict("msg_1".into()));
        assert_eq!(again(None, Some("b")), Queued::Existing("msg_1".into()), "queued before fingerprints were kept");
    }
}
