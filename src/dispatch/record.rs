//! The normalized record: one shape for every message, app or kf, as forwarded
//! (`FORWARD_URL`) and stored with the actions that carry it.
//!
//! Deliberately not here: decisions. Handlers decide on the typed
//! [`crate::messages::Message`]; the record is what leaves the appliance, so its
//! field names are the forward contract (SPEC §5).

use serde::{Deserialize, Serialize};

use crate::channels::{ChannelKind, ChannelName};
use crate::config::Channels;
use crate::messages::kf::{KfKind, KfMessage, Origin};
use crate::messages::{AppEvent, AppMessage, AppMessageKind, Message};
use crate::store::journal::{EntryKind, PendingEntry};
use crate::wecom::aibot::AibotMessage;

/// The channel a record comes from, as the registry knows it.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub name: ChannelName,
    pub kind: ChannelKind,
    pub corp_id: String,
}

/// One message, normalized. Field names are the forward contract (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The dedup key; stable across WeCom's retries (also `X-Message-Id`).
    pub id: String,
    /// The channel's name: `app` and `kf` for the built-ins, else its `[channels.<name>]`.
    pub channel: ChannelName,
    /// The channel's kind (`app`, `kf`). Records queued before channels had
    /// kinds lack it: see [`Record::kind`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ChannelKind>,
    /// The channel's corp id (empty in records queued before channels had one).
    #[serde(default)]
    pub corp_id: String,
    pub msgtype: String,
    /// The event type when `msgtype` is `event`.
    pub event: Option<String>,
    /// userid (app) or external_userid (kf).
    pub from: Option<String>,
    pub open_kfid: Option<String>,
    pub agent_id: Option<i64>,
    /// Unix seconds, as WeCom stamped it.
    pub time: i64,
    pub text: Option<String>,
    pub media_id: Option<String>,
    pub media_path: Option<String>,
    /// Why a media message goes on without `media_path` (the volume is below its
    /// free-space floor, the download failed, the file could not be written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_skipped: Option<String>,
    /// kf only: 3 customer, 4 system event, 5 servicer.
    pub origin: Option<Origin>,
    /// Sent before this installation first started (kf history replayed by WeCom):
    /// recorded and forwarded, never answered (unless `KF_REPLAY_HISTORY=true`).
    pub history: bool,
    /// kf: the customer asked for a human with this message (`HANDOFF_KEYWORDS`):
    /// the appliance hands the session over and the bot stays silent until it ends.
    #[serde(default)]
    pub handoff: bool,
    /// AI bot: `single` or `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chattype: Option<String>,
    /// AI bot: the group chat's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chatid: Option<String>,
    /// AI bot: the quoted message, as WeCom sends it (`msgtype` and its content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<serde_json::Value>,
    /// AI bot: the stream the answer goes into (SPEC §13); the send API's
    /// `in_reply_to` is this record's `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<String>,
    /// The decrypted message as received: XML text for app callbacks, the JSON
    /// object for kf messages and AI bot callbacks (an AI bot's without its
    /// `response_url`, which the appliance alone uses, once).
    pub raw: serde_json::Value,
}

/// The channel of journal `entry`, as the registry knows it. A channel no
/// longer configured keeps its name; its kind is the built-in's by name (`kf`)
/// or by payload (a kf sync message), and its corp id is unknown.
pub(crate) fn source_of(channels: &Channels, entry: &PendingEntry) -> Source {
    match channels.get(entry.channel.as_str()) {
        Some(channel) => {
            Source { name: channel.name.clone(), kind: channel.kind(), corp_id: channel.corp_id.as_str().to_owned() }
        }
        None => {
            let kf = entry.kind == EntryKind::KfMessage || entry.channel.as_str() == ChannelName::KF;
            let kind = match entry.kind {
                EntryKind::Aibot => ChannelKind::Aibot,
                _ if kf => ChannelKind::Kf,
                _ => ChannelKind::App,
            };
            Source { name: entry.channel.clone(), kind, corp_id: String::new() }
        }
    }
}

impl Record {
    /// The record of a journaled message. `raw_xml` is an app callback's
    /// decrypted XML; `received_at` stands in for a missing `CreateTime`.
    pub(crate) fn new(
        id: String,
        channel: Source,
        message: &Message,
        raw_xml: &str,
        received_at: i64,
        history: bool,
    ) -> Self {
        match message {
            Message::App { message, .. } => Self::from_app(id, channel, message, raw_xml, received_at),
            Message::Kf(message) => Self::from_kf(id, channel, message, history),
            Message::Aibot { message, .. } => Self::from_aibot(id, channel, message, received_at),
        }
    }

    /// What every record has; the kinds' constructors fill in the rest.
    pub(super) fn bare(id: String, channel: Source, msgtype: String, time: i64, raw: serde_json::Value) -> Self {
        Self {
            id,
            channel: channel.name,
            kind: Some(channel.kind),
            corp_id: channel.corp_id,
            msgtype,
            event: None,
            from: None,
            open_kfid: None,
            agent_id: None,
            time,
            text: None,
            media_id: None,
            media_path: None,
            media_skipped: None,
            origin: None,
            history: false,
            handoff: false,
            chattype: None,
            chatid: None,
            quote: None,
            stream_id: None,
            raw,
        }
    }

    /// The channel's kind; for a record queued before channels had kinds, the
    /// built-in channel's (`kf` is the kf channel, anything else was `app`).
    pub(crate) fn kind(&self) -> ChannelKind {
        self.kind.unwrap_or(if self.channel.as_str() == ChannelName::KF { ChannelKind::Kf } else { ChannelKind::App })
    }

    /// The record of an app callback.
    fn from_app(id: String, channel: Source, message: &AppMessage, raw_xml: &str, received_at: i64) -> Self {
        let (text, media_id) = match &message.kind {
            AppMessageKind::Text { content } => (Some(content.clone()), None),
            AppMessageKind::Image { media_id, .. }
            | AppMessageKind::Voice { media_id, .. }
            | AppMessageKind::Video { media_id, .. }
            | AppMessageKind::File { media_id } => (None, Some(media_id.clone())),
            _ => (None, None),
        };
        let (event, open_kfid) = match message.event() {
            Some(AppEvent::KfMsgOrEvent { open_kfid, .. }) => (Some("kf_msg_or_event".to_owned()), open_kfid.clone()),
            Some(event) => (Some(event.name().to_owned()), None),
            None => (None, None),
        };
        let time = message.create_time.unwrap_or(received_at);
        let raw = serde_json::Value::String(raw_xml.to_owned());
        Self {
            event,
            from: message.from_user_name.clone(),
            open_kfid,
            agent_id: message.agent_id,
            text,
            media_id,
            ..Self::bare(id, channel, message.msg_type.clone(), time, raw)
        }
    }

    /// The record of a kf message.
    fn from_kf(id: String, channel: Source, message: &KfMessage, history: bool) -> Self {
        let text = match &message.kind {
            KfKind::Text { content, .. } => Some(content.clone()),
            _ => None,
        };
        Self {
            event: message.event().map(|e| e.name().to_owned()),
            from: message.external_userid.clone(),
            open_kfid: Some(message.open_kfid.clone()).filter(|k| !k.is_empty()),
            text,
            media_id: message.media_id().map(str::to_owned),
            origin: Some(message.origin),
            history,
            // Normalized (SPEC §5): `channels_shop_product` is `channels`; `raw` keeps what WeCom sent.
            ..Self::bare(id, channel, message.normalized_msgtype().to_owned(), message.send_time, message.raw.clone())
        }
    }

    /// The record of an AI bot message or event. A `mixed` message's text is
    /// its text items, one per line; its images, like an image's, file's or
    /// video's, are downloaded (`media_path`, the first of them).
    fn from_aibot(id: String, channel: Source, message: &AibotMessage, received_at: i64) -> Self {
        let stream_id = message.opens_stream().then(|| crate::streams::stream_id(&channel.name, &message.msgid));
        let time = message.create_time.unwrap_or(received_at);
        Self {
            event: message.event().map(|e| e.name().to_owned()),
            from: message.userid.clone(),
            text: message.text(),
            chattype: message.chattype.map(|c| c.as_str().to_owned()),
            chatid: message.chatid.clone(),
            quote: message.quote.clone(),
            stream_id,
            ..Self::bare(id, channel, message.msgtype.clone(), time, message.raw_without_credentials())
        }
    }

    /// Whether handlers may answer it: not history, not a servicer's own message.
    pub(crate) fn answerable(&self) -> bool {
        !self.history && self.origin.is_none_or(Origin::answerable)
    }
}
