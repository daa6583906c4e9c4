//! Sending texts (SPEC §10): the kf rules before any call, our own `msgid` on
//! every kf message, each send's status, and its count in
//! `wechat_api_messages_sent_total`.
//!
//! How the kf rules know the conversation: `store::conversations` keeps, per
//! account and customer, the customer's last message (from every kf message the
//! dispatcher handles), the messages sent since (counted here, when a text's
//! first part is about to go, for all its parts at once) and whether a human has
//! the session (from our own handovers, `session_status_change` events and
//! servicer messages; cleared when a session ends). A customer with no message
//! known on that account (never heard from, or not within 48 hours) is refused
//! like any other closed window, without asking WeCom (SPEC §15). WeCom is asked
//! (`kf/service_state/get`) only where the appliance cannot know: a human
//! session it has believed for over 30 minutes (an ending it may have missed),
//! and to explain a 95018.
//!
//! A send never goes out twice after WeCom accepted it: kf parts carry a `msgid`
//! derived from their idempotency key, and app texts ask WeCom for its duplicate
//! check over the hour in which the outbox retries them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::actions::{Action, ActionError, Recipient};
use crate::channels::{ChannelKind, ChannelName};
use crate::config::{ChannelSpec, Channels};
use crate::media::Floor;
use crate::messages::kf::fail_type_meaning;
use crate::messages::LoggedId;
use crate::messages::Message;
use crate::outgoing::{SendRequest, Target};
use crate::store::aibot::AnswerKey;
use crate::store::conversations::{Customer, Observation, Refusal, Verdict};
use crate::store::journal::{EntryKind, PendingEntry};
use crate::store::sends::{KfMsgid, NewSend, Queued, SendRow, SendStatus, SendUpdate};
use crate::store::{now, Store, StoreError};
use crate::streams::{StreamRow, Update, UpdateError};
use crate::telemetry::{Metrics, MESSAGES_SENT_TOTAL, SEND_API_REFUSED_TOTAL};
use crate::wecom::models::ServiceState;
use crate::wecom::{kf_msgid, WeCom, WeComError, APP_DUPLICATE_CHECK};

/// How long a text is retried on transient errors before it is `failed`: no
/// longer than `message/send`'s duplicate check covers.
const SEND_RETRY_WINDOW: Duration = APP_DUPLICATE_CHECK;
/// A human session believed for longer than this is checked with WeCom before
/// the bot is kept silent again.
const HUMAN_RECHECK_SECS: i64 = 30 * 60;

impl From<StoreError> for ActionError {
    fn from(error: StoreError) -> Self {
        Self { retry: true, message: error.to_string() }
    }
}

/// Sends texts and keeps their status.
#[derive(Debug)]
pub(crate) struct Sending {
    pub store: Store,
    wecom: Arc<WeCom>,
    metrics: Arc<Metrics>,
}

/// The channels that send texts: every `app` and `kf` channel.
fn sending_channels(channels: &Channels) -> impl Iterator<Item = &ChannelName> {
    channels.iter().filter(|c| matches!(c.kind(), ChannelKind::App | ChannelKind::Kf)).map(|c| &c.name)
}

/// Counts a send whose status became `status` on `channel` (the store's name of it).
fn count_sent(metrics: &Metrics, channel: &ChannelName, status: SendStatus) {
    if status != SendStatus::Queued {
        let labels = [("channel", channel.to_string()), ("outcome", status.as_str().to_owned())];
        metrics.counter(MESSAGES_SENT_TOTAL, &labels).increment(1);
    }
}

impl Sending {
    /// Every outcome of every channel is counted from zero, before the first send.
    pub(crate) fn new(store: Store, wecom: Arc<WeCom>, metrics: Arc<Metrics>, channels: &Channels) -> Self {
        for channel in sending_channels(channels) {
            for outcome in [SendStatus::Sent, SendStatus::Failed, SendStatus::Refused] {
                let labels = [("channel", channel.to_string()), ("outcome", outcome.as_str().to_owned())];
                metrics.declare(MESSAGES_SENT_TOTAL, &labels);
            }
        }
        Self { store, wecom, metrics }
    }

    /// One part of a kf text: the rules, then `kf/send_msg` under our own msgid.
    pub(crate) async fn kf_text(&self, action: &Action) -> Result<Vec<Action>, ActionError> {
        let Action::KfText { key, channel, touser, open_kfid, content, handover, parts, .. } = action else {
            return Ok(Vec::new());
        };
        let send = action.send_id();
        let row = self.record(&send, channel, touser, Some(open_kfid), parts.total()).await?;
        if row.status != SendStatus::Queued {
            // Finished on an earlier attempt whose bookkeeping was lost.
            return Ok(Vec::new());
        }
        let customer =
            Customer { channel: channel.clone(), open_kfid: open_kfid.clone(), external_userid: touser.clone() };
        let verdict = if parts.number() == 1 {
            self.store.reserve_kf_sends(customer.clone(), parts.total(), now(), handover.is_some()).await?
        } else {
            // The later parts were counted with the first; only a human can stop them now.
            match self.store.kf_conversation(customer.clone()).await? {
                Some(c) if handover.is_none() => {
                    c.human_since.map_or(Verdict::Allowed, |since| Verdict::Refused(Refusal::Human { since }))
                }
                _ => Verdict::Allowed,
            }
        };
        if let Verdict::Refused(refusal) = self.confirm(channel, verdict, &customer, parts.total()).await? {
            let reason = match parts.number() {
                1 => refusal.to_string(),
                n => format!("{refusal} (after {} of {} parts)", n - 1, parts.total()),
            };
            self.finish(&send, channel, SendUpdate::Refused { reason: reason.clone() }).await?;
            tracing::info!(send = %LoggedId(&send), open_kfid = %LoggedId(open_kfid), "kf text refused: {reason}");
            return Ok(action.handover_after().into_iter().collect());
        }
        let msgid = kf_msgid(key);
        self.store.note_msgid(KfMsgid { channel: channel.clone(), msgid: msgid.clone() }, send.clone()).await?;
        match self.wecom.send_kf_text(channel, touser, open_kfid, &msgid, content).await {
            Ok(()) => {}
            Err(WeComError::Api { error, .. }) if error.is_duplicate_msgid() => {
                tracing::info!(send = %LoggedId(&send), msgid = %LoggedId(&msgid), "WeCom had accepted this part already");
            }
            Err(error) => return self.failed_attempt(&row, action, error).await,
        }
        self.part_sent(&send, channel, parts.number()).await?;
        Ok(action.next_part().or_else(|| action.handover_after()).into_iter().collect())
    }

    /// One part of an app text, with WeCom's duplicate check.
    pub(crate) async fn app_text(&self, action: &Action) -> Result<Vec<Action>, ActionError> {
        let Action::AppText { channel, touser, agentid, content, parts, .. } = action else {
            return Ok(Vec::new());
        };
        let send = action.send_id();
        let row = self.record(&send, channel, touser, None, parts.total()).await?;
        if row.status != SendStatus::Queued {
            return Ok(Vec::new());
        }
        if let Err(error) = self.wecom.send_app_text(channel, touser, *agentid, content).await {
            return self.failed_attempt(&row, action, error).await;
        }
        self.part_sent(&send, channel, parts.number()).await?;
        Ok(action.next_part().into_iter().collect())
    }

    /// The welcome an `enter_session` code allows (one message, outside the kf
    /// rules: WeCom gives it its own allowance).
    pub(crate) async fn welcome(
        &self,
        channel: &ChannelName,
        key: &str,
        code: &str,
        content: &str,
    ) -> Result<Vec<Action>, ActionError> {
        match self.wecom.send_kf_welcome(channel, code, &kf_msgid(key), content).await {
            Ok(()) => count_sent(&self.metrics, channel, SendStatus::Sent),
            Err(WeComError::Api { error, .. }) if error.is_duplicate_msgid() => {}
            Err(error) if is_final(&error) => {
                count_sent(&self.metrics, channel, SendStatus::Failed);
                return Err(ActionError { retry: false, message: error.to_string() });
            }
            Err(error) => return Err(error.into()),
        }
        Ok(Vec::new())
    }

    /// `kf/service_state/trans` after the announcement. If WeCom refuses it, the
    /// session stays with the bot, which therefore speaks again.
    pub(crate) async fn hand_over(
        &self,
        channel: &ChannelName,
        touser: &str,
        open_kfid: &str,
        servicer: Option<&str>,
    ) -> Result<Vec<Action>, ActionError> {
        let customer =
            Customer { channel: channel.clone(), open_kfid: open_kfid.to_owned(), external_userid: touser.to_owned() };
        match self.wecom.kf_hand_over(channel, open_kfid, touser, servicer).await {
            Ok(()) => {
                tracing::info!(open_kfid = %LoggedId(open_kfid), servicer, "kf session handed over to a human");
                self.store.observe_kf(vec![(customer, Observation::Human { at: now() })]).await?;
                Ok(Vec::new())
            }
            Err(error) if is_final(&error) => {
                tracing::error!(open_kfid = %LoggedId(open_kfid), "handover refused, the bot keeps the session: {error}");
                self.store.observe_kf(vec![(customer, Observation::Ended)]).await?;
                Err(ActionError { retry: false, message: error.to_string() })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Settles what the conversation's row cannot: a human session believed for
    /// long (an ending may have been missed) is checked with WeCom. Nothing else
    /// is asked: a customer never heard from is refused by the row itself, so a
    /// leaked `SEND_TOKEN` cannot go past WeCom's rules (SPEC §15).
    async fn confirm(
        &self,
        channel: &ChannelName,
        verdict: Verdict,
        customer: &Customer,
        parts: i64,
    ) -> Result<Verdict, ActionError> {
        let stale_human =
            matches!(verdict, Verdict::Refused(Refusal::Human { since }) if now() - since > HUMAN_RECHECK_SECS);
        if !stale_human {
            return Ok(verdict);
        }
        let state = match self.wecom.kf_service_state(channel, &customer.open_kfid, &customer.external_userid).await {
            Ok(state) => state.state,
            Err(error) => {
                tracing::warn!(open_kfid = %LoggedId(&customer.open_kfid), "session state unknown: {error}");
                return Ok(verdict);
            }
        };
        if matches!(state, ServiceState::Queued | ServiceState::Human) {
            let at = now();
            self.store.observe_kf(vec![(customer.clone(), Observation::Human { at })]).await?;
            return Ok(Verdict::Refused(Refusal::Human { since: at }));
        }
        self.store.observe_kf(vec![(customer.clone(), Observation::Ended)]).await?;
        Ok(self.store.reserve_kf_sends(customer.clone(), parts, now(), false).await?)
    }

    /// A part WeCom did not take: retried while that may help, else the send failed.
    async fn failed_attempt(
        &self,
        row: &SendRow,
        action: &Action,
        error: WeComError,
    ) -> Result<Vec<Action>, ActionError> {
        // WeCom refusing the egress IP (60020) took nothing: no duplicate to fear,
        // and the text waits for the operator however long it takes (SPEC §14).
        let refused_ip = error.is(crate::wecom::ApiError::is_ip_not_trusted);
        let gave_up = !refused_ip && now() - row.created_at > SEND_RETRY_WINDOW.as_secs() as i64;
        if !is_final(&error) && !gave_up {
            return Err(error.into());
        }
        let (errcode, mut reason) = match &error {
            WeComError::Api { error, .. } => (Some(error.errcode), error.to_string()),
            other => (None, other.to_string()),
        };
        if gave_up && !is_final(&error) {
            reason = format!("gave up after {} min of retries: {reason}", SEND_RETRY_WINDOW.as_secs() / 60);
        }
        if let (WeComError::Api { error, .. }, Action::KfText { channel, touser, open_kfid, .. }) = (&error, action) {
            if error.is_session_refused() {
                reason = format!("{reason}; {}", self.explain_session_refused(channel, open_kfid, touser).await);
            }
        }
        tracing::warn!(send = %LoggedId(&row.id), "{} text failed: {reason}", row.channel);
        self.finish(&row.id, &row.channel, SendUpdate::Failed { errcode, reason }).await?;
        Ok(action.handover_after().into_iter().collect())
    }

    /// 95018: say who owns the session, and remember a human's.
    async fn explain_session_refused(&self, channel: &ChannelName, open_kfid: &str, external_userid: &str) -> String {
        match self.wecom.kf_service_state(channel, open_kfid, external_userid).await {
            Ok(state) => {
                if matches!(state.state, ServiceState::Queued | ServiceState::Human) {
                    let customer = Customer {
                        channel: channel.clone(),
                        open_kfid: open_kfid.to_owned(),
                        external_userid: external_userid.to_owned(),
                    };
                    let observed = self.store.observe_kf(vec![(customer, Observation::Human { at: now() })]).await;
                    if let Err(error) = observed {
                        tracing::warn!(open_kfid = %LoggedId(open_kfid), "cannot record the session state: {error}");
                    }
                }
                state.to_string()
            }
            Err(e) => {
                format!(
                    "the session state is unreadable too ({e}): the Secret may not be allowed to call 微信客服 APIs"
                )
            }
        }
    }

    /// The send a text part belongs to, recorded on its first attempt (the send
    /// API's are recorded when queued).
    async fn record(
        &self,
        id: &str,
        channel: &ChannelName,
        recipient: &str,
        open_kfid: Option<&String>,
        parts: i64,
    ) -> Result<SendRow, StoreError> {
        let send = NewSend {
            id: id.to_owned(),
            channel: channel.clone(),
            recipient: recipient.to_owned(),
            open_kfid: open_kfid.cloned(),
            parts,
            idempotency_key: None,
            fingerprint: None,
        };
        self.store.record_send(send).await
    }

    async fn part_sent(&self, send: &str, channel: &ChannelName, number: i64) -> Result<(), StoreError> {
        self.finish(send, channel, SendUpdate::PartSent { number }).await
    }

    /// Applies `update` and counts the send once its status changes.
    async fn finish(&self, send: &str, channel: &ChannelName, update: SendUpdate) -> Result<(), StoreError> {
        if let Some(status) = self.store.update_send(send.to_owned(), update).await? {
            count_sent(&self.metrics, channel, status);
        }
        Ok(())
    }
}

/// Why the send API did not queue a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueueError {
    /// 404: no journaled record has that id (or retention removed it).
    #[error("no record with id {0:?} (records are kept RETENTION_SECS)")]
    UnknownRecord(String),
    /// 400: the request cannot be sent as given.
    #[error("{path}: {reason}")]
    Unsendable { path: &'static str, reason: String },
    /// 409: the `idempotency_key` was used before for another request (that send's id).
    #[error(
        "$.idempotency_key: already used for a different request (message {0}); the same key must come with the same body, a new message needs a new key"
    )]
    KeyReused(String),
    /// 503: the store did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 429: the channel's queue is full (`SEND_QUEUE_MAX`).
    #[error(
        "{queued} sends are queued on channel {channel} and not yet finished, SEND_QUEUE_MAX is {max}: \
         nothing was queued; retry after the queue drains"
    )]
    Full { channel: ChannelName, queued: i64, max: u32 },
    /// 503: the store's volume is below `DATA_MIN_FREE_PERCENT`; its room is the
    /// callbacks'. `channel`: the request's.
    #[error("{reason}: the rest is kept for callbacks; nothing was queued")]
    LowDisk { channel: ChannelName, reason: String },
    /// 413: too long for the channel (a text: characters; an AI bot's answer: bytes).
    #[error("$.text: {0}")]
    TooLong(String),
    /// 409: the AI bot's answer was finished already.
    #[error("$.in_reply_to: {0}")]
    Finished(UpdateError),
}

impl QueueError {
    /// A refusal by a limit of SPEC §15: the channel and the `reason` label.
    fn refusal(&self) -> Option<(&ChannelName, &'static str)> {
        match self {
            Self::Full { channel, .. } => Some((channel, "queue_full")),
            Self::LowDisk { channel, .. } => Some((channel, "disk_low")),
            _ => None,
        }
    }
}

/// The reasons of `wechat_api_send_api_refused_total`.
const REFUSAL_REASONS: [&str; 2] = ["queue_full", "disk_low"];

/// Counts `error` in `wechat_api_send_api_refused_total` when a limit refused the request.
pub(crate) fn count_refusal(metrics: &Metrics, error: &QueueError) {
    if let Some((channel, reason)) = error.refusal() {
        metrics
            .counter(SEND_API_REFUSED_TOTAL, &[("channel", channel.to_string()), ("reason", reason.to_owned())])
            .increment(1);
    }
}

/// When a full queue is worth trying again: WeCom's window for one member is a minute.
pub(crate) const FULL_RETRY_AFTER: Duration = Duration::from_secs(60);

/// What the send API may take (SPEC §15).
#[derive(Debug, Clone)]
pub(crate) struct SendLimits {
    /// `SEND_QUEUE_MAX`: sends queued and not yet finished, per channel.
    pub queue_max: u32,
    /// `DATA_MIN_FREE_PERCENT` of `DATA_DIR`'s volume; `None` on PostgreSQL,
    /// which has no local volume to keep (its disk is the database's operator's).
    pub data_floor: Option<(Floor, PathBuf)>,
}

impl SendLimits {
    /// The limits of `config`; their refusals are counted from zero on every channel.
    pub(crate) fn from_config(config: &crate::config::Config, metrics: &Metrics) -> Self {
        for channel in sending_channels(&config.channels) {
            for reason in REFUSAL_REASONS {
                metrics.declare(
                    SEND_API_REFUSED_TOTAL,
                    &[("channel", channel.to_string()), ("reason", reason.to_owned())],
                );
            }
        }
        let data_floor = match &config.store.database {
            Some(_) => None,
            None => Some((Floor::data(config.retention.data_min_free_percent), config.store.data_dir.clone())),
        };
        Self { queue_max: config.limits.send_queue_max, data_floor }
    }

    /// Why the store's volume takes no send now, if it does not.
    async fn refuses_disk(&self) -> Option<String> {
        let (floor, dir) = self.data_floor.clone()?;
        // statvfs may block on a sick volume: off the runtime's threads.
        tokio::task::spawn_blocking(move || floor.check(&dir)).await.unwrap_or(None)
    }
}

/// What the send API answers once a request is durable.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub id: String,
    /// `queued`, `sent` …; for an AI bot's answer `streaming`, `sent` or `failed`.
    pub status: &'static str,
    pub parts: i64,
}

/// The send API's message id of an AI bot's answer: the same for every update of one stream.
pub(crate) fn answer_id(stream_id: &str) -> String {
    format!("stream_{stream_id}")
}

/// The stream of an AI bot answer's message id ([`answer_id`]).
pub(crate) fn stream_of_answer(id: &str) -> Option<&str> {
    id.strip_prefix("stream_")
}

/// Applies `update` to the stream of record `record_id` (AI bot channel
/// `channel`), queueing the `response_url` action with it when the stream
/// cannot show the whole answer; once per `key` (the send API's
/// `idempotency_key`). `None`: the stream is unknown.
pub(crate) async fn update_stream(
    store: &Store,
    record_id: &str,
    channel: &ChannelName,
    stream_id: &str,
    update: Update,
    key: Option<AnswerKey>,
) -> Result<Option<Result<StreamRow, UpdateError>>, QueueError> {
    let rest = Action::AibotRest {
        record_id: record_id.to_owned(),
        channel: channel.clone(),
        stream_id: stream_id.to_owned(),
    };
    let rest = rest.to_new().map_err(|e| QueueError::Unsendable { path: "$", reason: e.to_string() })?;
    Ok(store.aibot_update(stream_id.to_owned(), update, rest, key).await?)
}

/// The send API on an AI bot's record: the text updates the message's stream;
/// the same `idempotency_key` again updates nothing more and answers with the
/// stream as it is, and with another body is a 409, as for other sends.
async fn answer_in_stream(store: &Store, entry: &PendingEntry, request: SendRequest) -> Result<Accepted, QueueError> {
    let unsendable = |reason: &str| QueueError::Unsendable { path: "$.in_reply_to", reason: reason.to_owned() };
    let message = match super::parse_entry(entry) {
        Ok(Message::Aibot { message, .. }) if message.opens_stream() => message,
        Ok(_) => return Err(unsendable("that record is an AI bot event or of an unknown type: no stream answers it")),
        Err(reason) => return Err(QueueError::Unsendable { path: "$.in_reply_to", reason }),
    };
    let stream_id = crate::streams::stream_id(&entry.channel, &message.msgid);
    let key = request.idempotency_key.clone().map(|key| AnswerKey {
        key,
        fingerprint: request.answer_fingerprint(),
        id: answer_id(&stream_id),
    });
    let update =
        Update { text: request.text, append: request.append.unwrap_or(false), finish: request.finish.unwrap_or(true) };
    match update_stream(store, &entry.dedup_key, &entry.channel, &stream_id, update, key).await? {
        Some(Ok(row)) => {
            Ok(Accepted { id: answer_id(&stream_id), status: crate::streams::status(&row).as_str(), parts: 1 })
        }
        Some(Err(finished @ UpdateError::Finished)) => Err(QueueError::Finished(finished)),
        Some(Err(too_large @ UpdateError::TooLarge { .. })) => Err(QueueError::TooLong(too_large.to_string())),
        Some(Err(UpdateError::KeyReused { id })) => Err(QueueError::KeyReused(id)),
        None => Err(QueueError::UnknownRecord(entry.dedup_key.clone())),
    }
}

/// Turns a send API request into a durable send and its first action; the same
/// idempotency key again returns the first send. Refused before anything is
/// written while the store's volume is below its floor or the channel's queue is full.
pub(crate) async fn queue(
    store: &Store,
    wecom: &WeCom,
    channels: &Channels,
    limits: &SendLimits,
    request: SendRequest,
) -> Result<Accepted, QueueError> {
    let fingerprint = request.fingerprint();
    let stream_fields = request.finish.is_some() || request.append.is_some();
    if let Target::InReplyTo(record_id) = &request.target {
        let Some(entry) = store.find_entry(record_id.clone()).await? else {
            return Err(QueueError::UnknownRecord(record_id.clone()));
        };
        if entry.kind == EntryKind::Aibot {
            return answer_in_stream(store, &entry, request).await;
        }
    }
    if stream_fields {
        let path = if request.finish.is_some() { "$.finish" } else { "$.append" };
        return Err(QueueError::Unsendable { path, reason: "only for answers to AI bot records (in_reply_to)".into() });
    }
    let chars = request.text.chars().count();
    if chars > crate::outgoing::MAX_TEXT_CHARS {
        return Err(QueueError::TooLong(format!(
            "{chars} characters, more than the {} allowed",
            crate::outgoing::MAX_TEXT_CHARS
        )));
    }
    let recipient = match request.target {
        Target::InReplyTo(record_id) => {
            let Some(entry) = store.find_entry(record_id.clone()).await? else {
                return Err(QueueError::UnknownRecord(record_id));
            };
            let message = super::parse_entry(&entry)
                .map_err(|reason| QueueError::Unsendable { path: "$.in_reply_to", reason })?;
            let source = super::record::source_of(channels, &entry);
            let record =
                super::record::Record::new(record_id, source, &message, &entry.payload, entry.received_at, false);
            let agent_id = channels.get(record.channel.as_str()).and_then(|c| c.agent_id());
            Recipient::of(&record, agent_id).ok_or_else(|| QueueError::Unsendable {
                path: "$.in_reply_to",
                reason: "that record has no sender to answer (or, on an app channel, no agent id: set WECOM_AGENT_ID)"
                    .into(),
            })?
        }
        Target::Channel { channel, to, open_kfid } => {
            let Some(channel) = channels.get(channel.as_str()) else {
                let known: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
                return Err(QueueError::Unsendable {
                    path: "$.channel",
                    reason: format!("unknown channel {:?} (the channels here: {})", channel.as_str(), known.join(", ")),
                });
            };
            recipient_on(channel, to, open_kfid)?
        }
    };
    let channel = match &recipient {
        Recipient::App { channel, .. } | Recipient::Kf { channel, .. } => channel.clone(),
    };
    if let Err(error) = wecom.tokens(&channel) {
        return Err(QueueError::Unsendable { path: "$.channel", reason: format!("channel {channel}: {error}") });
    }
    if let Some(reason) = limits.refuses_disk().await {
        return Err(QueueError::LowDisk { channel, reason });
    }
    let (touser, open_kfid) = match &recipient {
        Recipient::App { touser, .. } => (touser.clone(), None),
        Recipient::Kf { touser, open_kfid, .. } => (touser.clone(), Some(open_kfid.clone())),
    };
    let id = crate::outgoing::new_id();
    let action = Action::text(recipient, &request.text, format!("send:{id}"), id.clone())
        .ok_or(QueueError::Unsendable { path: "$.text", reason: "nothing to send once shaped".into() })?;
    let parts = action.parts_total();
    let row = action.to_new().map_err(|e| QueueError::Unsendable { path: "$", reason: e.to_string() })?;
    let send = NewSend {
        id,
        channel: channel.clone(),
        recipient: touser,
        open_kfid,
        parts,
        idempotency_key: request.idempotency_key,
        fingerprint: Some(fingerprint),
    };
    match store.queue_send(send, row, i64::from(limits.queue_max)).await? {
        Queued::Full { queued } => Err(QueueError::Full { channel, queued, max: limits.queue_max }),
        Queued::New(id) => Ok(Accepted { id, status: SendStatus::Queued.as_str(), parts }),
        Queued::Conflict(id) => Err(QueueError::KeyReused(id)),
        Queued::Existing(id) => {
            let first = store.send(id.clone()).await?;
            Ok(Accepted {
                id,
                status: first.as_ref().map_or(SendStatus::Queued, |row| row.status).as_str(),
                parts: first.map_or(parts, |row| row.parts),
            })
        }
    }
}

/// `to` on `channel`, as its kind needs: an app channel's member (its agent
/// id), or a kf channel's customer of account `open_kfid`.
fn recipient_on(channel: &ChannelSpec, to: String, open_kfid: Option<String>) -> Result<Recipient, QueueError> {
    let name = channel.name.clone();
    match (channel.kind(), open_kfid) {
        (ChannelKind::App, Some(_)) => Err(QueueError::Unsendable {
            path: "$.open_kfid",
            reason: format!("only for kf channels; {name} is an app"),
        }),
        (ChannelKind::App, None) => Ok(Recipient::App {
            agentid: channel.agent_id().ok_or_else(|| QueueError::Unsendable {
                path: "$.channel",
                reason: format!("channel {name} needs an agent id (WECOM_AGENT_ID or channels.{name}.agent_id)"),
            })?,
            channel: name,
            touser: to,
        }),
        (ChannelKind::Kf, Some(open_kfid)) => Ok(Recipient::Kf { channel: name, touser: to, open_kfid }),
        (ChannelKind::Kf, None) => {
            Err(QueueError::Unsendable { path: "$.open_kfid", reason: format!("required for kf channel {name}") })
        }
        (ChannelKind::Aibot, _) => {
            Err(QueueError::Unsendable { path: "$.channel", reason: format!("channel {name} is an AI bot") })
        }
    }
}

/// WeCom's answer will be the same next time (or nothing is configured to ask it).
fn is_final(error: &WeComError) -> bool {
    match error {
        WeComError::Api { error, .. } => !error.is_transient(),
        WeComError::NotConfigured(_) | WeComError::Encode { .. } => true,
        WeComError::Transport { .. } | WeComError::Decode { .. } => false,
    }
}

/// A `msg_send_fail` event: which of our messages WeCom could not deliver,
/// why, and the conversation (account and customer) the event is about.
#[derive(Debug, Clone)]
pub(crate) struct Undelivered {
    pub msgid: String,
    pub fail_type: Option<i64>,
    pub customer: Option<Customer>,
}

/// Whether a `msg_send_fail` about `customer` may settle `send`: only when it
/// names the channel, the account and the customer the send went to, so an
/// event about someone else's message (a msgid reused or guessed) changes nothing.
fn is_about(send: &SendRow, customer: &Customer) -> bool {
    send.channel == customer.channel
        && send.recipient == customer.external_userid
        && send.open_kfid.as_deref() == Some(customer.open_kfid.as_str())
}

/// A `msg_send_fail` event: the message WeCom accepted was not delivered. The
/// send it belongs to, when the event is about that send's account and
/// customer, becomes `failed` with what the fail type means.
pub(crate) async fn delivery_failed(
    store: &Store,
    metrics: &Metrics,
    undelivered: Undelivered,
) -> Result<(), StoreError> {
    let Undelivered { msgid, fail_type, customer } = undelivered;
    let send = match &customer {
        Some(customer) => {
            match store.send_of_msgid(KfMsgid { channel: customer.channel.clone(), msgid: msgid.clone() }).await? {
                Some(id) => store.send(id).await?.filter(|send| is_about(send, customer)),
                None => None,
            }
        }
        None => None,
    };
    let Some(send) = send else {
        tracing::info!(
            msgid = %LoggedId(&msgid),
            "msg_send_fail for a message this appliance did not send to that customer of that account"
        );
        return Ok(());
    };
    let reason = format!(
        "msg_send_fail: fail_type {}: {}",
        fail_type.map_or_else(|| "?".to_owned(), |t| t.to_string()),
        fail_type_meaning(fail_type)
    );
    tracing::warn!(send = %LoggedId(&send.id), msgid = %LoggedId(&msgid), "kf message not delivered: {reason}");
    if let Some(status) = store.update_send(send.id, SendUpdate::Failed { errcode: None, reason }).await? {
        count_sent(metrics, &send.channel, status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent_to(recipient: &str, open_kfid: Option<&str>) -> SendRow {
        SendRow {
            id: "msg_1".into(),
            channel: ChannelName::kf(),
            recipient: recipient.into(),
            open_kfid: open_kfid.map(str::to_owned),
            status: SendStatus::Sent,
            parts: 1,
            parts_sent: 1,
            errcode: None,
            reason: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_msg_send_fail_settles_only_a_send_to_its_account_and_customer() {
        let customer = |channel: &str, open_kfid: &str, external_userid: &str| Customer {
            channel: ChannelName::parse(channel).expect("a name"),
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
        };
        let send = sent_to("wm1", Some("wkA"));
        assert!(is_about(&send, &customer("kf", "wkA", "wm1")));
        assert!(!is_about(&send, &customer("kf", "wkA", "wm2")), "another customer");
        assert!(!is_about(&send, &customer("kf", "wkB", "wm1")), "another account");
        assert!(!is_about(&send, &customer("shop", "wkA", "wm1")), "another channel");
        assert!(!is_about(&sent_to("wm1", None), &customer("kf", "wkA", "wm1")), "an app send");
    }
}
