//! Actions: the side effects handlers ask for, as data: what the outbox stores
//! and the [`super::executor::Executor`] performs. Deliberately not here: doing
//! them (that is `executor.rs`, and `sending.rs` for texts), so the vocabulary
//! depends on nothing that acts on it.

use serde::{Deserialize, Serialize};

use super::record::Record;
use crate::channels::{ChannelKind, ChannelName};
use crate::store::outbox::NewAction;
use crate::wecom::WeComError;

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
    /// An AI bot message's media (an image, file or video, a mixed message's
    /// images): each URL fetched at once (it lives 5 minutes), decrypted with the
    /// channel's key and saved; then the record is forwarded with `media_path`.
    DownloadAibotMedia { record: Record, urls: Vec<String>, forward: bool },
    /// An AI bot's answer that its stream could not show (past 20,480 bytes,
    /// or after a late close), through the message's `response_url`, once.
    /// What to send is read from the stream when it is performed.
    AibotRest { record_id: String, channel: ChannelName, stream_id: String },
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
    /// An AI bot answer's rest, through `response_url`.
    Rest,
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
            Self::Rest => "rest",
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
            Self::DownloadMedia { record, .. } | Self::DownloadAibotMedia { record, .. } => {
                Purpose::Media.key(&record.id)
            }
            Self::AibotRest { record_id, .. } => Purpose::Rest.key(record_id),
            Self::AppText { key, .. }
            | Self::KfText { key, .. }
            | Self::KfWelcome { key, .. }
            | Self::KfHandover { key, .. } => key.clone(),
        }
    }

    /// The channel the action is for: whose Secret a call uses, whose record a
    /// forward carries (the `channel` label of its counts).
    pub(crate) fn channel(&self) -> &ChannelName {
        match self {
            Self::Forward { record } | Self::DownloadMedia { record, .. } | Self::DownloadAibotMedia { record, .. } => {
                &record.channel
            }
            Self::AppText { channel, .. }
            | Self::KfText { channel, .. }
            | Self::KfWelcome { channel, .. }
            | Self::KfHandover { channel, .. }
            | Self::AibotRest { channel, .. } => channel,
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
            Self::AibotRest { .. } => "aibot_rest",
            Self::DownloadAibotMedia { .. } => "download_aibot_media",
        }
    }

    /// The channel whose WeCom API this action calls; `None` for a forward,
    /// which calls no WeCom API (a parked channel's forwards go on, SPEC §14),
    /// and for an AI bot's media and `response_url`, which carry their own
    /// credential in the URL and are not bound to an app's trusted IPs.
    pub(crate) fn wecom_channel(&self) -> Option<&ChannelName> {
        match self {
            Self::Forward { .. } | Self::DownloadAibotMedia { .. } | Self::AibotRest { .. } => None,
            Self::AppText { channel, .. }
            | Self::KfText { channel, .. }
            | Self::KfWelcome { channel, .. }
            | Self::KfHandover { channel, .. } => Some(channel),
            Self::DownloadMedia { record, .. } => Some(&record.channel),
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
    pub(crate) fn retry(message: impl Into<String>) -> Self {
        Self { retry: true, message: message.into() }
    }
}

impl From<WeComError> for ActionError {
    fn from(error: WeComError) -> Self {
        let retry = !matches!(error, WeComError::NotConfigured(_));
        Self { retry, message: error.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::record::Source;

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
        let source = Source { name: ChannelName::app(), kind: ChannelKind::App, corp_id: "ww1".into() };
        let record = Record {
            from: Some("zhangsan".into()),
            agent_id: Some(7),
            ..Record::bare("app:msg:9".into(), source, "text".into(), 1, serde_json::Value::Null)
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
