//! The normalized record: one shape for every message, app or kf, as logged,
//! forwarded (`FORWARD_URL`) and answered.

use serde::{Deserialize, Serialize};

use crate::messages::kf::{KfKind, KfMessage};
use crate::messages::{AppEvent, AppMessage, AppMessageKind};

/// One message, normalized. Field names are the forward contract (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The dedup key; stable across WeCom's retries (also `X-Message-Id`).
    pub id: String,
    /// `app` or `kf`.
    pub channel: String,
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
    /// kf only: 3 customer, 4 system event, 5 servicer.
    pub origin: Option<i64>,
    /// Sent before this installation first started (kf history replayed by WeCom):
    /// recorded and forwarded, never answered (unless `KF_REPLAY_HISTORY=true`).
    pub history: bool,
    /// The decrypted message as received: XML text for app callbacks, the JSON
    /// object for kf messages.
    pub raw: serde_json::Value,
}

impl Record {
    /// The record of an app callback.
    pub fn from_app(id: String, channel: &str, message: &AppMessage, raw_xml: &str, received_at: i64) -> Self {
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
        Self {
            id,
            channel: channel.to_owned(),
            msgtype: message.msg_type.clone(),
            event,
            from: message.from_user_name.clone(),
            open_kfid,
            agent_id: message.agent_id,
            time: message.create_time.unwrap_or(received_at),
            text,
            media_id,
            media_path: None,
            origin: None,
            history: false,
            raw: serde_json::Value::String(raw_xml.to_owned()),
        }
    }

    /// The record of a kf message.
    pub fn from_kf(id: String, message: &KfMessage, history: bool) -> Self {
        let text = match &message.kind {
            KfKind::Text { content, .. } => Some(content.clone()),
            _ => None,
        };
        Self {
            id,
            channel: "kf".to_owned(),
            msgtype: message.msgtype.clone(),
            event: message.event().map(|e| e.name().to_owned()),
            from: message.external_userid.clone(),
            open_kfid: Some(message.open_kfid.clone()).filter(|k| !k.is_empty()),
            agent_id: None,
            time: message.send_time,
            text,
            media_id: message.media_id().map(str::to_owned),
            media_path: None,
            origin: Some(message.origin.code()),
            history,
            raw: message.raw.clone(),
        }
    }

    /// Whether handlers may answer it: not history, not a servicer's own message.
    pub fn answerable(&self) -> bool {
        !self.history && self.origin.is_none_or(|o| o == 3 || o == 4)
    }
}
