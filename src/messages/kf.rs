//! WeChat Customer Service messages, as `kf/sync_msg` returns them (JSON),
//! classified into [`KfKind`]. Unknown msgtypes and event types are kept raw.

use serde_json::Value;

/// Who sent a kf message (`origin`). In a record it is WeCom's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "i64", into = "i64")]
pub enum Origin {
    /// 3: the WeChat customer.
    Customer,
    /// 4: a system event.
    System,
    /// 5: a servicer (a human agent) — recorded, never answered.
    Servicer,
    Other(i64),
}

impl From<i64> for Origin {
    fn from(code: i64) -> Self {
        Self::from_code(code)
    }
}

impl From<Origin> for i64 {
    fn from(origin: Origin) -> Self {
        origin.code()
    }
}

impl Origin {
    pub(crate) fn from_code(code: i64) -> Self {
        match code {
            3 => Self::Customer,
            4 => Self::System,
            5 => Self::Servicer,
            other => Self::Other(other),
        }
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Customer => 3,
            Self::System => 4,
            Self::Servicer => 5,
            Self::Other(code) => code,
        }
    }

    /// Customer messages and events reach the reply handlers; nothing else does.
    pub fn answerable(self) -> bool {
        matches!(self, Self::Customer | Self::System)
    }
}

/// A kf event (`msgtype` = `event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KfEvent {
    /// A customer opened the chat; `welcome_code` allows one `send_msg_on_event`.
    EnterSession {
        welcome_code: Option<String>,
        scene: Option<String>,
    },
    MsgSendFail {
        fail_msgid: Option<String>,
        fail_type: Option<i64>,
    },
    ServicerStatusChange {
        servicer_userid: Option<String>,
        status: Option<i64>,
    },
    SessionStatusChange {
        change_type: Option<i64>,
        new_servicer_userid: Option<String>,
        msg_code: Option<String>,
    },
    UserRecallMsg {
        recall_msgid: Option<String>,
    },
    ServicerRecallMsg {
        recall_msgid: Option<String>,
    },
    Other {
        event_type: String,
    },
}

impl KfEvent {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::EnterSession { .. } => "enter_session",
            Self::MsgSendFail { .. } => "msg_send_fail",
            Self::ServicerStatusChange { .. } => "servicer_status_change",
            Self::SessionStatusChange { .. } => "session_status_change",
            Self::UserRecallMsg { .. } => "user_recall_msg",
            Self::ServicerRecallMsg { .. } => "servicer_recall_msg",
            Self::Other { event_type } => event_type,
        }
    }
}

/// What a `msg_send_fail` event's `fail_type` means (WeCom's documented values).
pub(crate) fn fail_type_meaning(fail_type: Option<i64>) -> &'static str {
    match fail_type {
        Some(1) => "the kf account was deleted",
        Some(2) => "the app was closed",
        Some(4) => "the session expired: more than 48 hours since the customer's last message",
        Some(5) => "the session was closed",
        Some(6) => "more than 5 messages since the customer's last message",
        Some(8) => "the kf account's subject is not verified",
        Some(10) => "the customer refused messages (用户拒收)",
        Some(11) => "no member of the corp is logged in to the WeCom app",
        Some(12) => "a message type the kf component does not allow",
        _ => "unknown reason",
    }
}

/// What the message is.
#[derive(Debug, Clone, PartialEq)]
pub enum KfKind {
    Text {
        content: String,
        menu_id: Option<String>,
    },
    Image {
        media_id: String,
    },
    Voice {
        media_id: String,
    },
    Video {
        media_id: String,
    },
    File {
        media_id: String,
    },
    Location {
        latitude: Option<f64>,
        longitude: Option<f64>,
        name: Option<String>,
        address: Option<String>,
    },
    Link {
        title: Option<String>,
        url: Option<String>,
    },
    BusinessCard {
        userid: Option<String>,
    },
    Miniprogram {
        title: Option<String>,
        appid: Option<String>,
    },
    Msgmenu {
        head_content: Option<String>,
    },
    /// `channels`, `channels_shop_product`, `channels_shop_order`, …: kept with their type.
    Channels,
    Event(KfEvent),
    Unknown,
}

/// One kf message.
#[derive(Debug, Clone, PartialEq)]
pub struct KfMessage {
    pub msgid: String,
    pub open_kfid: String,
    /// The customer; for events, the customer the event is about.
    pub external_userid: Option<String>,
    pub send_time: i64,
    pub origin: Origin,
    pub servicer_userid: Option<String>,
    pub msgtype: String,
    pub kind: KfKind,
    /// The message exactly as WeCom sent it.
    pub raw: Value,
}

/// Why a kf message was refused: only a missing or empty `msgid` (nothing to
/// dedup by). Any other field of an unexpected type is read as absent: refusing
/// would drop the message for good, since the cursor moves past it.
#[derive(Debug, thiserror::Error)]
#[error("kf message without a msgid: {0}")]
pub struct KfParseError(String);

fn text(value: &Value, path: &[&str]) -> Option<String> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str().map(str::to_owned)
}

fn number(value: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_f64()
}

fn integer(value: &Value, path: &[&str]) -> Option<i64> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_i64()
}

impl KfMessage {
    /// The msgtypes WeCom documents for kf messages, as [`KfMessage::parse`]
    /// classifies them (`channels*` counted as `channels`): the known values of
    /// the `msgtype` label, counted from zero on start.
    pub(crate) const KNOWN_MSGTYPES: &'static [&'static str] = &[
        "text",
        "image",
        "voice",
        "video",
        "file",
        "location",
        "link",
        "business_card",
        "miniprogram",
        "msgmenu",
        "channels",
        "event",
    ];

    /// Classifies one element of `msg_list`.
    pub fn parse(raw: Value) -> Result<Self, KfParseError> {
        let msgid = match raw.get("msgid") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            Some(Value::String(_)) => return Err(KfParseError("msgid is empty".into())),
            Some(other) => return Err(KfParseError(format!("msgid is not a string but {}", super::json_type(other)))),
            None => return Err(KfParseError("no msgid field".into())),
        };
        let msgtype = text(&raw, &["msgtype"]).unwrap_or_default();
        let t = msgtype.as_str();
        let media = |key: &str| text(&raw, &[key, "media_id"]).unwrap_or_default();
        let kind = match t {
            "text" => KfKind::Text {
                content: text(&raw, &["text", "content"]).unwrap_or_default(),
                menu_id: text(&raw, &["text", "menu_id"]),
            },
            "image" => KfKind::Image { media_id: media("image") },
            "voice" => KfKind::Voice { media_id: media("voice") },
            "video" => KfKind::Video { media_id: media("video") },
            "file" => KfKind::File { media_id: media("file") },
            "location" => KfKind::Location {
                latitude: number(&raw, &["location", "latitude"]),
                longitude: number(&raw, &["location", "longitude"]),
                name: text(&raw, &["location", "name"]),
                address: text(&raw, &["location", "address"]),
            },
            "link" => KfKind::Link { title: text(&raw, &["link", "title"]), url: text(&raw, &["link", "url"]) },
            "business_card" => KfKind::BusinessCard { userid: text(&raw, &["business_card", "userid"]) },
            "miniprogram" => KfKind::Miniprogram {
                title: text(&raw, &["miniprogram", "title"]),
                appid: text(&raw, &["miniprogram", "appid"]),
            },
            "msgmenu" => KfKind::Msgmenu { head_content: text(&raw, &["msgmenu", "head_content"]) },
            t if t.starts_with("channels") => KfKind::Channels,
            "event" => KfKind::Event(Self::parse_event(&raw)),
            _ => KfKind::Unknown,
        };
        // Events carry the customer inside `event`.
        let external_userid = text(&raw, &["external_userid"])
            .filter(|u| !u.is_empty())
            .or_else(|| text(&raw, &["event", "external_userid"]));
        let open_kfid = text(&raw, &["open_kfid"])
            .filter(|k| !k.is_empty())
            .or_else(|| text(&raw, &["event", "open_kfid"]))
            .unwrap_or_default();
        Ok(Self {
            msgid,
            open_kfid,
            external_userid,
            send_time: integer(&raw, &["send_time"]).unwrap_or_default(),
            origin: Origin::from_code(integer(&raw, &["origin"]).unwrap_or_default()),
            servicer_userid: text(&raw, &["servicer_userid"]).filter(|s| !s.is_empty()),
            msgtype,
            kind,
            raw,
        })
    }

    fn parse_event(raw: &Value) -> KfEvent {
        let get = |key: &str| text(raw, &["event", key]);
        let int = |key: &str| integer(raw, &["event", key]);
        match get("event_type").unwrap_or_default().as_str() {
            "enter_session" => KfEvent::EnterSession { welcome_code: get("welcome_code"), scene: get("scene") },
            "msg_send_fail" => KfEvent::MsgSendFail { fail_msgid: get("fail_msgid"), fail_type: int("fail_type") },
            "servicer_status_change" => {
                KfEvent::ServicerStatusChange { servicer_userid: get("servicer_userid"), status: int("status") }
            }
            "session_status_change" => KfEvent::SessionStatusChange {
                change_type: int("change_type"),
                new_servicer_userid: get("new_servicer_userid"),
                msg_code: get("msg_code"),
            },
            "user_recall_msg" => KfEvent::UserRecallMsg { recall_msgid: get("recall_msgid") },
            "servicer_recall_msg" => KfEvent::ServicerRecallMsg { recall_msgid: get("recall_msgid") },
            other => KfEvent::Other { event_type: other.to_owned() },
        }
    }

    /// The msgtype of the normalized record and of the `msgtype` label (SPEC
    /// §5): `channels` for every `channels*` type (`channels_shop_product` …),
    /// else as WeCom sent it (an unknown one too: it has no normalized name).
    pub(crate) fn normalized_msgtype(&self) -> &str {
        match self.kind {
            KfKind::Channels => "channels",
            _ => &self.msgtype,
        }
    }

    pub fn event(&self) -> Option<&KfEvent> {
        match &self.kind {
            KfKind::Event(event) => Some(event),
            _ => None,
        }
    }

    /// The media id of image, voice, video and file messages.
    pub fn media_id(&self) -> Option<&str> {
        match &self.kind {
            KfKind::Image { media_id }
            | KfKind::Voice { media_id }
            | KfKind::Video { media_id }
            | KfKind::File { media_id } => Some(media_id).filter(|m| !m.is_empty()).map(String::as_str),
            _ => None,
        }
    }

    /// The log line, in the operators' old console style: `[文本消息] 用户: … 内容: …`.
    pub fn summary(&self) -> String {
        let user = super::LoggedId(self.external_userid.as_deref().unwrap_or("-"));
        let who = match self.origin {
            Origin::Servicer => format!("客服: {}", super::LoggedId(self.servicer_userid.as_deref().unwrap_or("-"))),
            _ => format!("用户: {user}"),
        };
        let clip = |t: &str| super::clip(t, 200).into_owned();
        match &self.kind {
            KfKind::Text { content, .. } => format!("[文本消息] {who} 内容: {}", clip(content)),
            KfKind::Image { media_id } => format!("[图片消息] {who} media_id: {}", super::LoggedId(media_id)),
            KfKind::Voice { media_id } => format!("[语音消息] {who} media_id: {}", super::LoggedId(media_id)),
            KfKind::Video { media_id } => format!("[视频消息] {who} media_id: {}", super::LoggedId(media_id)),
            KfKind::File { media_id } => format!("[文件消息] {who} media_id: {}", super::LoggedId(media_id)),
            KfKind::Location { name, address, .. } => {
                format!(
                    "[位置消息] {who} {} {}",
                    clip(name.as_deref().unwrap_or_default()),
                    clip(address.as_deref().unwrap_or_default())
                )
            }
            KfKind::Link { title, url } => format!(
                "[链接消息] {who} {} {}",
                clip(title.as_deref().unwrap_or_default()),
                clip(url.as_deref().unwrap_or_default())
            ),
            KfKind::BusinessCard { userid } => {
                format!("[名片消息] {who} userid: {}", super::LoggedId(userid.as_deref().unwrap_or("-")))
            }
            KfKind::Miniprogram { title, .. } => {
                format!("[小程序消息] {who} {}", clip(title.as_deref().unwrap_or_default()))
            }
            KfKind::Msgmenu { head_content } => {
                format!("[菜单消息] {who} {}", clip(head_content.as_deref().unwrap_or_default()))
            }
            KfKind::Channels => format!("[视频号消息] {who} ({})", clip(&self.msgtype)),
            KfKind::Event(event) => format!("[事件] {} {who}", clip(event.name())),
            KfKind::Unknown => format!("[未知消息类型 {}] {who}", clip(&self.msgtype)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_text_with_menu_and_media() {
        let m = KfMessage::parse(json!({
            "msgid": "m1", "open_kfid": "wkA", "external_userid": "wmB", "send_time": 1615478585, "origin": 3,
            "msgtype": "text", "text": {"content": "你好", "menu_id": "101"}
        }))
        .expect("parses");
        assert_eq!(m.kind, KfKind::Text { content: "你好".into(), menu_id: Some("101".into()) });
        assert_eq!(m.origin, Origin::Customer);
        assert_eq!(m.summary(), "[文本消息] 用户: wmB 内容: 你好");
        let image =
            KfMessage::parse(json!({"msgid": "m2", "origin": 3, "msgtype": "image", "image": {"media_id": "MEDIA"}}))
                .expect("image");
        assert_eq!(image.media_id(), Some("MEDIA"));
    }

    #[test]
    fn classifies_events_and_takes_the_customer_from_the_event() {
        let m = KfMessage::parse(json!({
            "msgid": "e1", "send_time": 1, "origin": 4, "msgtype": "event",
            "event": {"event_type": "enter_session", "open_kfid": "wkA", "external_userid": "wmC", "scene": "123", "welcome_code": "WELCOME"}
        }))
        .expect("parses");
        assert_eq!(
            m.event(),
            Some(&KfEvent::EnterSession { welcome_code: Some("WELCOME".into()), scene: Some("123".into()) })
        );
        assert_eq!(m.external_userid.as_deref(), Some("wmC"));
        assert_eq!(m.open_kfid, "wkA");
        for (event_type, name) in [
            ("msg_send_fail", "msg_send_fail"),
            ("servicer_status_change", "servicer_status_change"),
            ("session_status_change", "session_status_change"),
            ("user_recall_msg", "user_recall_msg"),
            ("servicer_recall_msg", "servicer_recall_msg"),
            ("brand_new", "brand_new"),
        ] {
            let m = KfMessage::parse(
                json!({"msgid": "e", "origin": 4, "msgtype": "event", "event": {"event_type": event_type}}),
            )
            .expect(event_type);
            assert_eq!(m.event().map(KfEvent::name), Some(name));
        }
    }

    #[test]
    fn every_known_msgtype_label_is_one_the_parser_classifies() {
        for msgtype in KfMessage::KNOWN_MSGTYPES {
            let m = KfMessage::parse(json!({"msgid": "x", "origin": 3, "msgtype": msgtype})).expect(msgtype);
            assert!(!matches!(m.kind, KfKind::Unknown), "{msgtype}");
        }
    }

    #[test]
    fn every_channels_type_is_normalized_to_channels_and_the_raw_type_kept() {
        for msgtype in ["channels", "channels_shop_product", "channels_shop_order"] {
            let m = KfMessage::parse(json!({"msgid": "x", "origin": 3, "msgtype": msgtype})).expect(msgtype);
            assert_eq!((m.normalized_msgtype(), m.msgtype.as_str()), ("channels", msgtype));
            assert!(KfMessage::KNOWN_MSGTYPES.contains(&m.normalized_msgtype()));
        }
        let m = KfMessage::parse(json!({"msgid": "x", "origin": 3, "msgtype": "text"})).expect("text");
        assert_eq!(m.normalized_msgtype(), "text");
    }

    #[test]
    fn every_documented_msgtype_is_classified_and_unknown_ones_are_kept() {
        for (msgtype, body) in [
            ("location", json!({"latitude": 23.1, "longitude": 113.3, "name": "广州塔", "address": "海珠区"})),
            ("link", json!({"title": "t", "url": "https://x"})),
            ("business_card", json!({"userid": "u"})),
            ("miniprogram", json!({"title": "t", "appid": "wx1"})),
            ("msgmenu", json!({"head_content": "h"})),
            ("channels_shop_product", json!({"product_id": "p"})),
            ("voice", json!({"media_id": "v"})),
            ("video", json!({"media_id": "v"})),
            ("file", json!({"media_id": "f"})),
        ] {
            let m =
                KfMessage::parse(json!({"msgid": "x", "origin": 3, "msgtype": msgtype, msgtype: body})).expect(msgtype);
            assert!(!matches!(m.kind, KfKind::Unknown), "{msgtype}");
            assert!(!m.summary().contains("未知"), "{msgtype}");
        }
        let m = KfMessage::parse(json!({"msgid": "x", "origin": 3, "msgtype": "hologram"})).expect("unknown");
        assert_eq!(m.kind, KfKind::Unknown);
        assert_eq!(m.normalized_msgtype(), "hologram", "an unknown type is kept as sent");
        assert!(m.summary().starts_with("[未知消息类型 hologram]"));
    }

    #[test]
    fn servicer_messages_are_not_answerable() {
        let m = KfMessage::parse(json!({"msgid": "s", "origin": 5, "servicer_userid": "zhangsan", "msgtype": "text", "text": {"content": "您好"}})).expect("parses");
        assert!(!m.origin.answerable());
        assert_eq!(m.summary(), "[文本消息] 客服: zhangsan 内容: 您好");
    }

    #[test]
    fn a_message_without_msgid_is_an_error_not_a_panic() {
        assert!(KfMessage::parse(json!({"msgtype": "text"})).is_err());
        assert!(KfMessage::parse(json!("just a string")).is_err());
        let error = KfMessage::parse(json!({"msgid": 7, "msgtype": "text"})).expect_err("numeric msgid");
        assert_eq!(error.to_string(), "kf message without a msgid: msgid is not a string but a number");
    }

    #[test]
    fn an_empty_msgid_is_refused_so_distinct_messages_never_share_a_dedup_key() {
        let error = KfMessage::parse(json!({"msgid": "", "msgtype": "text"})).expect_err("empty msgid");
        assert_eq!(error.to_string(), "kf message without a msgid: msgid is empty");
    }

    #[test]
    fn a_field_of_an_unexpected_type_does_not_drop_a_message_that_has_a_msgid() {
        // Found by tests/api/properties.rs: `"origin": ""` used to refuse the whole
        // message as "without a msgid", and the syncer skipped it for good.
        let m = KfMessage::parse(json!({
            "msgid": "m9", "open_kfid": 5, "external_userid": ["wm"], "send_time": "1615478585", "origin": "",
            "servicer_userid": {}, "msgtype": "text", "text": {"content": "hi"}
        }))
        .expect("kept");
        assert_eq!(m.msgid, "m9");
        assert_eq!(m.kind, KfKind::Text { content: "hi".into(), menu_id: None });
        assert_eq!((m.send_time, m.origin, m.open_kfid.as_str()), (0, Origin::Other(0), ""));
        assert_eq!((m.external_userid, m.servicer_userid), (None, None));
    }
}
