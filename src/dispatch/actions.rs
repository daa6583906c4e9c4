//! Actions: the side effects handlers ask for, stored in the outbox and performed
//! by the [`Executor`] at least once, each under a timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::record::Record;
use super::sending::Sending;
use crate::channels::{ChannelKind, ChannelName};
use crate::config::{Config, Forward, Handoff};
use crate::health::checks::ForwardDelivery;
use crate::messages::LoggedId;
use crate::store::conversations::{Customer, Observation};
use crate::store::outbox::NewAction;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::wecom::{WeCom, WeComError};

/// Longest forward answer we read (it may carry a reply).
const MAX_FORWARD_ANSWER: usize = 64 * 1024;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// One side effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Action {
    /// POST the record to `FORWARD_URL`.
    Forward { record: Record },
    /// `message/send` a text from the self-built app: one part of a shaped text;
    /// the parts after it follow once it is sent (`rest`, in order).
    AppText {
        key: String,
        /// The app channel whose Secret sends it (queued before channels: `app`).
        #[serde(default = "ChannelName::app")]
        channel: ChannelName,
        touser: String,
        agentid: i64,
        content: String,
        /// The send this part belongs to (its status, `GET /api/v1/messages/<id>`).
        #[serde(default)]
        send: String,
        #[serde(default, skip_serializing_if = "Parts::is_last")]
        parts: Parts,
    },
    /// `kf/send_msg` a text to a customer, likewise one part at a time, after
    /// the kf rules allowed it.
    KfText {
        key: String,
        /// The kf channel whose Secret sends it (queued before channels: `kf`).
        #[serde(default = "ChannelName::kf")]
        channel: ChannelName,
        touser: String,
        open_kfid: String,
        content: String,
        #[serde(default)]
        send: String,
        /// The text that announces a handover: it passes the human rule, and
        /// the handover follows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        handover: Option<Handover>,
        #[serde(default, skip_serializing_if = "Parts::is_last")]
        parts: Parts,
    },
    /// `kf/send_msg_on_event` with an `enter_session` welcome code.
    KfWelcome {
        key: String,
        #[serde(default = "ChannelName::kf")]
        channel: ChannelName,
        code: String,
        content: String,
    },
    /// `kf/service_state/trans`: the session goes to a human.
    KfHandover {
        key: String,
        #[serde(default = "ChannelName::kf")]
        channel: ChannelName,
        touser: String,
        open_kfid: String,
        servicer: Option<String>,
    },
    /// `media/get` into `UPLOAD_DIR`, then forward the record with `media_path`.
    DownloadMedia { record: Record, forward: bool },
}

/// Why an action exists: one action of each purpose per message, so its
/// idempotency key is the purpose and the message's dedup key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The built-in help text.
    Help,
    /// The forward receiver's `{"reply": …}`.
    Reply,
    /// `WELCOME_TEXT` on `enter_session`.
    Welcome,
    Forward,
    Media,
    /// A handover's announcement and the handover itself.
    Handover,
}

impl Purpose {
    /// The idempotency key of this purpose's action for record `record_id`; the
    /// one place such a key is built.
    pub(crate) fn key(self, record_id: &str) -> String {
        let purpose = match self {
            Self::Help => "help",
            Self::Reply => "reply",
            Self::Welcome => "welcome",
            Self::Forward => "forward",
            Self::Media => "media",
            Self::Handover => "handover",
        };
        format!("{purpose}:{record_id}")
    }
}

/// Where a part stands in a shaped text: its number and the parts still to send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Parts {
    /// 1 for the first part (whose key is the purpose's key), 2 for the next …
    number: u32,
    /// The parts after this one, in order.
    rest: Vec<String>,
}

/// Where a handover goes: the queue, or a servicer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handover {
    /// `HANDOFF_SERVICER`; `None`: the queue (state 2).
    pub servicer: Option<String>,
}

/// Who a text goes to, on which channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recipient {
    App { channel: ChannelName, touser: String, agentid: i64 },
    Kf { channel: ChannelName, touser: String, open_kfid: String },
}

impl Parts {
    /// This part's number, from 1.
    pub(crate) fn number(&self) -> i64 {
        i64::from(self.number.max(1))
    }

    /// How many parts the whole text has.
    pub(crate) fn total(&self) -> i64 {
        self.number() + self.rest.len() as i64
    }

    /// Whether nothing follows (and so the field need not be stored).
    fn is_last(&self) -> bool {
        self.rest.is_empty() && self.number <= 1
    }

    /// The idempotency key of part `number` of the text whose first part has key `first`.
    fn key(first: &str, number: u32) -> String {
        if number <= 1 {
            first.to_owned()
        } else {
            format!("{first}#{number}")
        }
    }

    /// The key of the first part, from this part's `key`.
    pub(crate) fn first_key<'a>(&self, key: &'a str) -> &'a str {
        if self.number <= 1 {
            key
        } else {
            key.strip_suffix(&format!("#{}", self.number)).unwrap_or(key)
        }
    }

    /// The part after this one: its key, its text, and what follows it.
    fn next(&self, key: &str) -> Option<(String, String, Parts)> {
        let (content, rest) = self.rest.split_first()?;
        let number = self.number.max(1) + 1;
        Some((Self::key(self.first_key(key), number), content.clone(), Parts { number, rest: rest.to_vec() }))
    }
}

impl Recipient {
    /// The sender of `record`, on its channel; `None` when the record lacks what
    /// the channel needs (a sender, an agent id, an open_kfid).
    pub(crate) fn of(record: &Record, agent_id: Option<i64>) -> Option<Self> {
        let touser = record.from.clone()?;
        let channel = record.channel.clone();
        Some(match record.kind() {
            ChannelKind::Kf => Self::Kf { channel, touser, open_kfid: record.open_kfid.clone()? },
            ChannelKind::App => Self::App { channel, touser, agentid: agent_id.or(record.agent_id)? },
            ChannelKind::Aibot => return None,
        })
    }
}

impl Action {
    /// A text reply to the sender of `record` on its own channel, shaped for
    /// WeChat (Markdown flattened, split into parts sent in order). `None` when the
    /// record lacks what the channel needs (a sender, an agent id, an open_kfid) or
    /// the text is empty.
    pub(crate) fn reply_to(record: &Record, text: &str, purpose: Purpose, agent_id: Option<i64>) -> Option<Self> {
        let key = purpose.key(&record.id);
        Self::text(Recipient::of(record, agent_id)?, text, key.clone(), key)
    }

    /// The text that announces a handover of `record`'s customer, then the handover.
    pub(crate) fn announce_handover(record: &Record, text: &str, servicer: Option<String>) -> Option<Self> {
        let key = Purpose::Handover.key(&record.id);
        match Self::text(Recipient::of(record, None)?, text, key.clone(), key)? {
            Self::KfText { key, channel, touser, open_kfid, content, send, parts, .. } => Some(Self::KfText {
                key,
                channel,
                touser,
                open_kfid,
                content,
                send,
                handover: Some(Handover { servicer }),
                parts,
            }),
            _ => None,
        }
    }

    /// `text` to `to`, shaped, as send `send` whose first part has idempotency key `key`.
    pub(crate) fn text(to: Recipient, text: &str, key: String, send: String) -> Option<Self> {
        let mut shaped = crate::shaping::shape(text).into_iter();
        let content = shaped.next()?;
        let parts = Parts { number: 1, rest: shaped.collect() };
        Some(match to {
            Recipient::Kf { channel, touser, open_kfid } => {
                Self::KfText { key, channel, touser, open_kfid, content, send, handover: None, parts }
            }
            Recipient::App { channel, touser, agentid } => {
                Self::AppText { key, channel, touser, agentid, content, send, parts }
            }
        })
    }

    /// The handover that follows its announcement `self` (a [`Action::KfText`]).
    pub(crate) fn handover_after(&self) -> Option<Action> {
        match self {
            Self::KfText { channel, touser, open_kfid, send, handover: Some(handover), .. } => Some(Self::KfHandover {
                key: format!("{}:trans", send),
                channel: channel.clone(),
                touser: touser.clone(),
                open_kfid: open_kfid.clone(),
                servicer: handover.servicer.clone(),
            }),
            _ => None,
        }
    }

    /// The welcome an `enter_session` code allows: one message, so only the first
    /// part of a shaped `text`.
    pub(crate) fn welcome(record: &Record, code: &str, text: &str) -> Option<Self> {
        let content = crate::shaping::shape(text).into_iter().next()?;
        Some(Self::KfWelcome {
            key: Purpose::Welcome.key(&record.id),
            channel: record.channel.clone(),
            code: code.to_owned(),
            content,
        })
    }

    /// The part that follows this text part once it is sent, if any.
    pub(crate) fn next_part(&self) -> Option<Action> {
        match self {
            Self::AppText { key, channel, touser, agentid, send, parts, .. } => {
                let (key, content, parts) = parts.next(key)?;
                Some(Self::AppText {
                    key,
                    channel: channel.clone(),
                    touser: touser.clone(),
                    agentid: *agentid,
                    content,
                    send: send.clone(),
                    parts,
                })
            }
            Self::KfText { key, channel, touser, open_kfid, send, handover, parts, .. } => {
                let (key, content, parts) = parts.next(key)?;
                Some(Self::KfText {
                    key,
                    channel: channel.clone(),
                    touser: touser.clone(),
                    open_kfid: open_kfid.clone(),
                    content,
                    send: send.clone(),
                    handover: handover.clone(),
                    parts,
                })
            }
            _ => None,
        }
    }

    /// How many messages the text this part belongs to is (1 for other actions).
    pub(crate) fn parts_total(&self) -> i64 {
        match self {
            Self::AppText { parts, .. } | Self::KfText { parts, .. } => parts.total(),
            _ => 1,
        }
    }

    /// The send a text part belongs to: its `send`, or, for a part queued before
    /// sends were recorded, its first part's key.
    pub(crate) fn send_id(&self) -> String {
        match self {
            Self::AppText { key, send, parts, .. } | Self::KfText { key, send, parts, .. } if send.is_empty() => {
                parts.first_key(key).to_owned()
            }
            Self::AppText { send, .. } | Self::KfText { send, .. } => send.clone(),
            other => other.key(),
        }
    }

    /// The idempotency key: queued twice, performed once.
    pub(crate) fn key(&self) -> String {
        match self {
            Self::Forward { record } => Purpose::Forward.key(&record.id),
            Self::DownloadMedia { record, .. } => Purpose::Media.key(&record.id),
            Self::AppText { key, .. }
            | Self::KfText { key, .. }
            | Self::KfWelcome { key, .. }
            | Self::KfHandover { key, .. } => key.clone(),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Forward { .. } => "forward",
            Self::AppText { .. } => "app_text",
            Self::KfText { .. } => "kf_text",
            Self::KfWelcome { .. } => "kf_welcome",
            Self::KfHandover { .. } => "kf_handover",
            Self::DownloadMedia { .. } => "download_media",
        }
    }

    /// The outbox row for this action. Serialising an action cannot fail (its
    /// fields are strings, numbers and JSON values), but if it ever did the
    /// caller must hear of it: an empty payload would be an action lost.
    pub(crate) fn to_new(&self) -> Result<NewAction, serde_json::Error> {
        Ok(NewAction { key: self.key(), kind: self.kind().to_owned(), payload: serde_json::to_string(self)? })
    }
}

/// Why an action did not happen this time.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ActionError {
    /// Worth trying again later (a timeout, a 5xx, WeCom busy) or not (not configured).
    pub retry: bool,
    pub message: String,
}

impl ActionError {
    fn retry(message: impl Into<String>) -> Self {
        Self { retry: true, message: message.into() }
    }
}

impl From<WeComError> for ActionError {
    fn from(error: WeComError) -> Self {
        let retry = !matches!(error, WeComError::NotConfigured(_));
        Self { retry, message: error.to_string() }
    }
}

/// The answer a forward receiver may give: `{"reply":{"text":"…"}, "handoff": true}`.
#[derive(Deserialize)]
struct ForwardAnswer {
    reply: Option<ForwardReply>,
    #[serde(default)]
    handoff: bool,
}

#[derive(Deserialize)]
struct ForwardReply {
    text: Option<String>,
}

/// Attempts at a media download before the record is forwarded without it.
const MEDIA_ATTEMPTS: i64 = 5;

/// How much of a download is gathered before it is written (off the runtime's
/// threads): the most of a file held in memory at once.
const WRITE_BATCH: usize = 256 * 1024;

/// Why a media file was not saved: the download (worth retrying) or the disk
/// (not: the record goes on without it).
enum MediaFailure {
    Download(WeComError),
    Save(crate::media::MediaError),
}

/// Runs a file operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, crate::media::MediaError> + Send + 'static,
) -> Result<T, MediaFailure> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(result) => result.map_err(MediaFailure::Save),
        // The operation panicked: report it as a failed write, not a lost action.
        Err(error) => Err(MediaFailure::Save(crate::media::MediaError {
            dir: PathBuf::new(),
            name: String::new(),
            reason: error.to_string(),
        })),
    }
}

/// Performs actions.
#[derive(Debug)]
pub(crate) struct Executor {
    http: reqwest::Client,
    forward: Option<Forward>,
    /// The file channels' own forward targets (`channels.<name>.forward_url`).
    channel_forwards: HashMap<ChannelName, Forward>,
    wecom: Arc<WeCom>,
    /// Every channel: the agent id a forward answer's reply is sent with.
    channels: crate::config::Channels,
    upload_dir: PathBuf,
    handoff: Handoff,
    sending: Sending,
    /// `MEDIA_MIN_FREE_PERCENT` of `UPLOAD_DIR`'s volume.
    floor: crate::media::Floor,
    /// Each forward's outcome, for `forward:delivery`; present with `FORWARD_URL`.
    delivery: Option<Arc<ForwardDelivery>>,
}

impl Executor {
    pub(crate) fn new(
        config: &Config,
        wecom: Arc<WeCom>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ActionError> {
        let http = crate::outbound::client(FORWARD_TIMEOUT).build().map_err(|e| ActionError {
            retry: false,
            message: format!("cannot build the forward client: {}", e.without_url()),
        })?;
        Ok(Self {
            http,
            forward: config.forward.clone(),
            channel_forwards: config
                .channels
                .iter()
                .filter_map(|c| Some((c.name.clone(), c.forward.clone()?)))
                .collect(),
            wecom: Arc::clone(&wecom),
            channels: config.channels.clone(),
            upload_dir: config.upload_dir.clone(),
            handoff: config.handoff.clone(),
            floor: crate::media::Floor::media(config.media_min_free_percent),
            delivery: config.forward.as_ref().map(|_| Arc::default()),
            sending: Sending::new(store, wecom, metrics),
        })
    }

    /// What `forward:delivery` reads; `None` without `FORWARD_URL`.
    pub(crate) fn forward_delivery(&self) -> Option<Arc<ForwardDelivery>> {
        self.delivery.clone()
    }

    /// Performs `action` (attempted `attempts` times before); returns the
    /// follow-up actions it produced.
    pub(crate) async fn execute(&self, action: &Action, attempts: i64) -> Result<Vec<Action>, ActionError> {
        match action {
            Action::DownloadMedia { record, forward } => self.download(record, *forward, attempts).await,
            Action::KfWelcome { key, channel, code, content } => {
                self.sending.welcome(channel, key, code, content).await
            }
            Action::Forward { record } => {
                let forwarded = self.forward(record).await;
                let to_forward_url = !self.channel_forwards.contains_key(record.channel.as_str());
                if let (Some(delivery), true) = (&self.delivery, self.forward.is_some() && to_forward_url) {
                    match &forwarded {
                        Ok(_) => delivery.delivered(),
                        Err(error) => delivery.failed(crate::store::now(), &error.message),
                    }
                }
                forwarded
            }
            Action::AppText { .. } => self.sending.app_text(action).await,
            Action::KfText { .. } => self.sending.kf_text(action).await,
            Action::KfHandover { channel, touser, open_kfid, servicer, .. } => {
                self.sending.hand_over(channel, touser, open_kfid, servicer.as_deref()).await
            }
        }
    }

    async fn download(&self, record: &Record, forward: bool, attempts: i64) -> Result<Vec<Action>, ActionError> {
        let forward_with = |path: Option<String>, skipped: Option<String>| {
            let record = Record { media_path: path, media_skipped: skipped, ..record.clone() };
            if forward {
                vec![Action::Forward { record }]
            } else {
                Vec::new()
            }
        };
        let Some(media_id) = record.media_id.as_deref() else {
            // Handlers download only what has a media id; forward it all the same.
            return Ok(forward_with(None, None));
        };
        let (floor, upload_dir) = (self.floor, self.upload_dir.clone());
        let refused = tokio::task::spawn_blocking(move || floor.check(&upload_dir)).await.unwrap_or(None);
        if let Some(reason) = refused {
            // The journal may share the volume: it must keep its room.
            tracing::warn!(id = %LoggedId(&record.id), "media {} not downloaded: {reason}", LoggedId(media_id));
            return Ok(forward_with(None, Some(reason)));
        }
        match self.fetch(record, media_id).await {
            Ok(path) => {
                tracing::info!(id = %LoggedId(&record.id), path = %path.display(), "media saved");
                Ok(forward_with(Some(path.display().to_string()), None))
            }
            Err(MediaFailure::Download(error))
                if attempts + 1 < MEDIA_ATTEMPTS && !matches!(error, WeComError::NotConfigured(_)) =>
            {
                Err(ActionError::retry(format!("media {}: {error}", LoggedId(media_id))))
            }
            Err(MediaFailure::Download(error)) => {
                tracing::error!(
                    id = %LoggedId(&record.id),
                    "media {} not downloaded, forwarding without it: {error}",
                    LoggedId(media_id)
                );
                Ok(forward_with(None, Some(format!("download failed: {error}"))))
            }
            Err(MediaFailure::Save(error)) => {
                // A full or unwritable volume: say so, and let the message go on.
                tracing::error!(id = %LoggedId(&record.id), "{error}");
                Ok(forward_with(None, Some(format!("not saved: {error}"))))
            }
        }
    }

    /// Streams media `media_id` of `record` into its file: never more than
    /// [`WRITE_BATCH`] of it in memory.
    async fn fetch(&self, record: &Record, media_id: &str) -> Result<PathBuf, MediaFailure> {
        let mut media = self
            .wecom
            .download_media(&record.channel, media_id, crate::media::MAX_MEDIA_BYTES)
            .await
            .map_err(MediaFailure::Download)?;
        let (upload_dir, id, msgtype) = (self.upload_dir.clone(), record.id.clone(), record.msgtype.clone());
        let (content_type, filename) = (media.content_type.clone(), media.filename.clone());
        let mut part = blocking(move || {
            crate::media::Part::create(
                &upload_dir,
                &id,
                &msgtype,
                content_type.as_deref(),
                filename.as_deref(),
                time::OffsetDateTime::now_utc(),
            )
        })
        .await?;
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            let chunk = media.chunk().await.map_err(MediaFailure::Download)?;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                batch.extend_from_slice(&chunk);
            }
            if batch.len() >= WRITE_BATCH || (done && !batch.is_empty()) {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
                part = blocking(move || part.write(&full).map(|()| part)).await?;
            }
            if done {
                break;
            }
        }
        blocking(move || part.finish()).await
    }
    async fn forward(&self, record: &Record) -> Result<Vec<Action>, ActionError> {
        let Some(target) = self.channel_forwards.get(record.channel.as_str()).or(self.forward.as_ref()) else {
            return Err(ActionError { retry: false, message: "FORWARD_URL is no longer set".into() });
        };
        let body = serde_json::to_vec(record).map_err(|e| ActionError { retry: false, message: e.to_string() })?;
        let mut request = self
            .http
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Message-Id", &record.id);
        if let Some(secret) = &target.secret {
            request = request.header("X-Signature", signature(secret.expose().as_bytes(), &body));
        }
        let mut response =
            request.body(body).send().await.map_err(|e| ActionError::retry(format!("forward: {}", e.without_url())))?;
        let status = response.status();
        if let Some(reason) = crate::outbound::refused_redirect(&response) {
            return Err(ActionError::retry(format!("forward: {reason}")));
        }
        if !status.is_success() {
            return Err(ActionError::retry(format!("forward: HTTP {status}")));
        }
        let mut answer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            if answer.len() + chunk.len() > MAX_FORWARD_ANSWER {
                break;
            }
            answer.extend_from_slice(&chunk);
        }
        let Ok(answer) = serde_json::from_slice::<ForwardAnswer>(&answer) else { return Ok(Vec::new()) };
        let reply = answer.reply.and_then(|r| r.text).filter(|t| !t.trim().is_empty());
        if answer.handoff && record.kind() == ChannelKind::Kf && record.answerable() {
            // The receiver asks for a human: silent from now on, then the announcement and the handover.
            if let (Some(open_kfid), Some(from)) = (&record.open_kfid, &record.from) {
                let customer = Customer { open_kfid: open_kfid.clone(), external_userid: from.clone() };
                let conversation = self.sending.store.kf_conversation(customer.clone()).await?;
                if conversation.is_some_and(|c| c.human_since.is_some()) {
                    // A human has the session already: nothing to announce or hand over (SPEC §15).
                    tracing::info!(id = %LoggedId(&record.id), "forward answer asks for a human, who has the session already");
                    return Ok(Vec::new());
                }
                self.sending.store.observe_kf(vec![(customer, Observation::Human { at: crate::store::now() })]).await?;
            }
            let text = reply.as_deref().unwrap_or(&self.handoff.text);
            return Ok(Action::announce_handover(record, text, self.handoff.servicer.clone()).into_iter().collect());
        }
        Ok(reply
            .and_then(|text| {
                Action::reply_to(
                    record,
                    &text,
                    Purpose::Reply,
                    self.channels.get(record.channel.as_str()).and_then(|c| c.agent_id()),
                )
            })
            .into_iter()
            .collect())
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, the `X-Signature` header.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    format!("sha256={}", crate::crypto::hex(&mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Regression guard for the upgrade: outbox rows written before channels had
    /// names carry no `channel` (texts) and records no `kind` or `corp_id`; they
    /// belong to the built-in `app` and `kf` channels, so no migration rewrites them.
    #[test]
    fn actions_queued_before_channels_had_names_belong_to_the_built_in_channels() {
        let app: Action = serde_json::from_str(
            r#"{"kind":"app_text","key":"help:app:msg:1","touser":"u","agentid":7,"content":"hi","send":"s"}"#,
        )
        .expect("an app text of today's main");
        assert!(matches!(&app, Action::AppText { channel, .. } if channel.as_str() == "app"), "{app:?}");
        let kf: Action = serde_json::from_str(
            r#"{"kind":"kf_text","key":"k","touser":"wm","open_kfid":"wk","content":"hi","send":"s"}"#,
        )
        .expect("a kf text of today's main");
        assert!(matches!(&kf, Action::KfText { channel, .. } if channel.as_str() == "kf"), "{kf:?}");
        let welcome: Action =
            serde_json::from_str(r#"{"kind":"kf_welcome","key":"k","code":"c","content":"hi"}"#).expect("a welcome");
        assert!(matches!(&welcome, Action::KfWelcome { channel, .. } if channel.as_str() == "kf"));
        let record = r#"{"id":"kf:msg:1","channel":"kf","msgtype":"text","event":null,"from":"wm","open_kfid":"wk",
            "agent_id":null,"time":1,"text":"hi","media_id":null,"media_path":null,"origin":3,"history":false,"raw":{}}"#;
        let forward: Action =
            serde_json::from_str(&format!(r#"{{"kind":"forward","record":{record}}}"#)).expect("a forward");
        let Action::Forward { record } = forward else { panic!("a forward") };
        assert_eq!((record.kind(), record.corp_id.as_str()), (ChannelKind::Kf, ""));
        let reply = Action::reply_to(&record, "hello", Purpose::Reply, None).expect("a kf reply");
        assert!(matches!(reply, Action::KfText { channel, .. } if channel.as_str() == "kf"));
    }

    #[test]
    fn actions_round_trip_through_the_outbox_payload() {
        let action = Action::AppText {
            key: "help:app:msg:1".into(),
            channel: ChannelName::app(),
            touser: "u".into(),
            agentid: 7,
            content: "hi".into(),
            send: "help:app:msg:1".into(),
            parts: Parts::default(),
        };
        let stored = action.to_new().expect("an action serialises");
        assert_eq!(stored.key, "help:app:msg:1");
        assert_eq!(stored.kind, "app_text");
        assert_eq!(serde_json::from_str::<Action>(&stored.payload).expect("decodes"), action);
    }

    #[test]
    fn a_long_reply_is_sent_part_by_part_each_with_its_own_key() {
        let record = Record {
            id: "app:msg:9".into(),
            channel: crate::channels::ChannelName::app(),
            kind: Some(ChannelKind::App),
            corp_id: "ww1".into(),
            msgtype: "text".into(),
            event: None,
            from: Some("zhangsan".into()),
            open_kfid: None,
            agent_id: Some(7),
            time: 1,
            text: None,
            media_id: None,
            media_path: None,
            media_skipped: None,
            origin: None,
            history: false,
            handoff: false,
            raw: serde_json::Value::Null,
        };
        let text = "一句话。".repeat(600);
        let mut action = Action::reply_to(&record, &text, Purpose::Reply, None).expect("a reply");
        let mut keys = Vec::new();
        let mut sent = String::new();
        loop {
            let Action::AppText { key, content, .. } = &action else { panic!("an app text") };
            assert!(content.len() <= crate::shaping::MAX_PART_BYTES);
            keys.push(key.clone());
            sent.push_str(content);
            // What the outbox stores and reads back is the same action.
            assert_eq!(
                serde_json::from_str::<Action>(&action.to_new().expect("row").payload).expect("decodes"),
                action
            );
            match action.next_part() {
                Some(next) => action = next,
                None => break,
            }
        }
        assert_eq!(sent, text);
        assert_eq!(keys, vec!["reply:app:msg:9", "reply:app:msg:9#2", "reply:app:msg:9#3", "reply:app:msg:9#4"]);
    }
}
