//! The AI bot's (智能机器人) callback protocol, WeCom's JSON both ways (SPEC §13):
//! the POST body `{"encrypt": …}`, the decrypted message or event
//! ([`AibotMessage`], classified once: text, mixed, image, voice, file, video,
//! the stream refresh, the three events; anything else kept raw), and the
//! answers: a stream snapshot or a welcome text, encrypted as
//! `{"encrypt","msgsignature","timestamp","nonce"}` with the request's nonce,
//! and the `response_url` markdown body.
//!
//! Pure: no I/O, time passed in, nothing panics on any input. Deliberately not
//! here: the signature and the cipher (`crypto`, shared with app callbacks), the
//! stream's life (`streams`), and HTTP (`routes::callback`, `wecom::client`).

use serde_json::{json, Map, Value};

use crate::crypto::{self, AesKey};

/// Why an AI bot callback body or message was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AibotError {
    #[error("body is not the AI bot's JSON envelope {{\"encrypt\": \"…\"}}: {0}")]
    Envelope(String),
    #[error("decrypted AI bot message is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("decrypted AI bot message has no msgid")]
    MissingMsgid,
    #[error("decrypted AI bot stream refresh has no stream.id")]
    MissingStreamId,
}

/// The `encrypt` value of a callback POST's JSON body.
pub(crate) fn envelope(body: &[u8]) -> Result<String, AibotError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| AibotError::Envelope(first_line(&e.to_string())))?;
    match value.get("encrypt") {
        Some(Value::String(encrypt)) if !encrypt.is_empty() => Ok(encrypt.clone()),
        _ => Err(AibotError::Envelope("`encrypt` is missing or not a string".into())),
    }
}

fn first_line(text: &str) -> String {
    clip(text.lines().next().unwrap_or_default(), 160)
}

/// `text` cut to `max` characters, marked. (Not `messages::clip`: `messages`
/// names this file's types, so this file names nothing of `messages`.)
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// A single chat or a group chat (`chattype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatType {
    Single,
    Group,
}

impl ChatType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Group => "group",
        }
    }
}

/// An event (`msgtype` `event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AibotEvent {
    /// The user opened the single chat, once a day: may be answered with a welcome.
    EnterChat,
    /// A template card's button or menu: answered empty within 5 s, forwarded.
    TemplateCard,
    /// The user's verdict on an answer: only an empty answer is allowed.
    Feedback { verdict: Feedback },
    /// An event type this build does not know.
    Other(String),
}

impl AibotEvent {
    /// Its `eventtype`.
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::EnterChat => "enter_chat",
            Self::TemplateCard => "template_card_event",
            Self::Feedback { .. } => "feedback_event",
            Self::Other(name) => name,
        }
    }
}

/// `feedback_event.type`: 1 accurate, 2 inaccurate, 3 cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    Accurate,
    Inaccurate,
    Cancelled,
    Other,
}

impl Feedback {
    /// Every label of `wechat_api_aibot_feedback_total{type}`.
    pub(crate) const ALL: [Feedback; 4] = [Self::Accurate, Self::Inaccurate, Self::Cancelled, Self::Other];

    fn of(code: Option<i64>) -> Self {
        match code {
            Some(1) => Self::Accurate,
            Some(2) => Self::Inaccurate,
            Some(3) => Self::Cancelled,
            _ => Self::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Accurate => "accurate",
            Self::Inaccurate => "inaccurate",
            Self::Cancelled => "cancelled",
            Self::Other => "other",
        }
    }
}

/// What a decrypted callback is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AibotKind {
    /// `text`, and `voice` (WeCom has turned the speech into text already).
    Text {
        content: String,
    },
    /// `mixed`: text and image items, in order.
    Mixed {
        texts: Vec<String>,
        image_urls: Vec<String>,
    },
    /// `image`, `file`, `video`: a URL valid for 5 minutes, bytes encrypted with the callback key.
    Media {
        url: String,
    },
    /// A refresh of stream `id`: WeCom asks for the answer so far.
    Refresh {
        id: String,
    },
    Event(AibotEvent),
    /// A `msgtype` this build does not know: kept raw and forwarded.
    Unknown,
}

/// A decrypted AI bot callback, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct AibotMessage {
    pub msgid: String,
    pub aibotid: Option<String>,
    pub chatid: Option<String>,
    pub chattype: Option<ChatType>,
    /// `from.userid`.
    pub userid: Option<String>,
    /// One use, valid an hour; a credential (never logged, not forwarded).
    pub response_url: Option<String>,
    pub msgtype: String,
    /// `create_time`, when WeCom sends it.
    pub create_time: Option<i64>,
    pub kind: AibotKind,
    /// The quoted message, as WeCom sends it (`msgtype` and its content).
    pub quote: Option<Value>,
    /// The decrypted JSON as received.
    pub raw: Value,
}

fn string_at(value: &Value, path: &[&str]) -> Option<String> {
    let mut at = value;
    for key in path {
        at = at.get(key)?;
    }
    at.as_str().map(str::to_owned)
}

impl AibotMessage {
    /// Parses the decrypted JSON. An unknown `msgtype` or event is kept, never
    /// an error; a message without `msgid` (refreshes excepted) or a stream
    /// refresh without `stream.id` is.
    pub(crate) fn parse(json: &str) -> Result<Self, AibotError> {
        let raw: Value = serde_json::from_str(json).map_err(|e| AibotError::NotAnObject(first_line(&e.to_string())))?;
        if !raw.is_object() {
            let what = match raw {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return Err(AibotError::NotAnObject(format!("it is {what}")));
        }
        let msgtype = string_at(&raw, &["msgtype"]).unwrap_or_default();
        let text_of = |kind: &str| string_at(&raw, &[kind, "content"]).unwrap_or_default();
        let kind = match msgtype.as_str() {
            "text" | "voice" => AibotKind::Text { content: text_of(&msgtype) },
            "image" | "file" | "video" => match string_at(&raw, &[&msgtype, "url"]) {
                Some(url) => AibotKind::Media { url },
                None => AibotKind::Unknown,
            },
            "mixed" => {
                let items = raw.pointer("/mixed/msg_item").and_then(Value::as_array).cloned().unwrap_or_default();
                let mut texts = Vec::new();
                let mut image_urls = Vec::new();
                for item in &items {
                    match item.get("msgtype").and_then(Value::as_str) {
                        Some("text") => texts.extend(string_at(item, &["text", "content"])),
                        Some("image") => image_urls.extend(string_at(item, &["image", "url"])),
                        _ => {}
                    }
                }
                AibotKind::Mixed { texts, image_urls }
            }
            "stream" => match string_at(&raw, &["stream", "id"]).filter(|id| !id.is_empty()) {
                Some(id) => AibotKind::Refresh { id },
                None => return Err(AibotError::MissingStreamId),
            },
            "event" => {
                let name = string_at(&raw, &["event", "eventtype"]).unwrap_or_default();
                AibotKind::Event(match name.as_str() {
                    "enter_chat" => AibotEvent::EnterChat,
                    "template_card_event" => AibotEvent::TemplateCard,
                    "feedback_event" => AibotEvent::Feedback {
                        verdict: Feedback::of(raw.pointer("/event/feedback_event/type").and_then(Value::as_i64)),
                    },
                    _ => AibotEvent::Other(name),
                })
            }
            _ => AibotKind::Unknown,
        };
        let msgid = string_at(&raw, &["msgid"]).filter(|id| !id.is_empty());
        let msgid = match (msgid, &kind) {
            (Some(id), _) => id,
            // A refresh is answered, never journaled: its msgid is not needed.
            (None, AibotKind::Refresh { .. }) => String::new(),
            (None, _) => return Err(AibotError::MissingMsgid),
        };
        let chattype = match string_at(&raw, &["chattype"]).as_deref() {
            Some("group") => Some(ChatType::Group),
            Some("single") => Some(ChatType::Single),
            _ => None,
        };
        Ok(Self {
            msgid,
            aibotid: string_at(&raw, &["aibotid"]).filter(|id| !id.is_empty()),
            chatid: string_at(&raw, &["chatid"]).filter(|id| !id.is_empty()),
            chattype,
            userid: string_at(&raw, &["from", "userid"]),
            response_url: string_at(&raw, &["response_url"]).filter(|url| !url.is_empty()),
            msgtype,
            create_time: raw.get("create_time").and_then(Value::as_i64),
            kind,
            quote: raw.get("quote").filter(|q| !q.is_null()).cloned(),
            raw,
        })
    }

    /// Whether it is a user's message that opens a stream (text, mixed, media).
    pub(crate) fn opens_stream(&self) -> bool {
        matches!(self.kind, AibotKind::Text { .. } | AibotKind::Mixed { .. } | AibotKind::Media { .. })
    }

    /// The text a record carries: a text's or voice's, or the text items of a
    /// mixed message, one per line.
    pub(crate) fn text(&self) -> Option<String> {
        match &self.kind {
            AibotKind::Text { content } => Some(content.clone()),
            AibotKind::Mixed { texts, .. } if !texts.is_empty() => Some(texts.join("\n")),
            _ => None,
        }
    }

    /// The media URLs to download: an image's, file's or video's, a mixed message's images.
    pub(crate) fn media_urls(&self) -> Vec<String> {
        match &self.kind {
            AibotKind::Media { url } => vec![url.clone()],
            AibotKind::Mixed { image_urls, .. } => image_urls.clone(),
            _ => Vec::new(),
        }
    }

    /// The event, if it is one.
    pub(crate) fn event(&self) -> Option<&AibotEvent> {
        match &self.kind {
            AibotKind::Event(event) => Some(event),
            _ => None,
        }
    }

    /// The decrypted JSON without `response_url`: what leaves the appliance
    /// (the URL is one use, and the appliance is the one that uses it).
    pub(crate) fn raw_without_credentials(&self) -> Value {
        let mut raw = self.raw.clone();
        if let Some(object) = raw.as_object_mut() {
            object.remove("response_url");
        }
        raw
    }

    /// One readable log line: type, sender, text or event (never the URL).
    pub(crate) fn summary(&self) -> String {
        let from = clip(self.userid.as_deref().unwrap_or("?"), 128);
        let chat = self.chatid.as_deref().map(|c| format!(" in {}", clip(c, 128))).unwrap_or_default();
        match (&self.kind, self.text()) {
            (AibotKind::Event(event), _) => format!("aibot event {} from {from}{chat}", event.name()),
            (_, Some(text)) => {
                format!("aibot {} from {from}{chat}: {}", self.msgtype, clip(&text, 200))
            }
            _ => format!("aibot {} from {from}{chat}", clip(&self.msgtype, 32)),
        }
    }
}

/// The plain answer (before encryption) that shows a stream snapshot.
pub fn stream_answer(id: &str, content: &str, finish: bool) -> String {
    json!({"msgtype": "stream", "stream": {"id": id, "finish": finish, "content": content}}).to_string()
}

/// The plain answer to `enter_chat`: a welcome text.
pub(crate) fn welcome_answer(text: &str) -> String {
    json!({"msgtype": "text", "text": {"content": text}}).to_string()
}

/// `plain` encrypted for an answer: `{"encrypt","msgsignature","timestamp","nonce"}`,
/// with the request's `nonce` and an empty receive id.
pub fn encrypted_answer(token: &str, key: &AesKey, plain: &str, nonce: &str, now: i64) -> String {
    let encrypt = crypto::encrypt(key, plain.as_bytes(), b"");
    let timestamp = now.to_string();
    let signature = crypto::sign(token, &timestamp, nonce, &encrypt);
    let mut answer = Map::new();
    answer.insert("encrypt".into(), Value::String(encrypt));
    answer.insert("msgsignature".into(), Value::String(signature.as_str().to_owned()));
    answer.insert("timestamp".into(), Value::String(timestamp));
    answer.insert("nonce".into(), Value::String(nonce.to_owned()));
    Value::Object(answer).to_string()
}

/// The body a `response_url` takes: a markdown message.
pub(crate) fn response_body(content: &str) -> Value {
    json!({"msgtype": "markdown", "markdown": {"content": content}})
}

/// Whether `url` may be called as a `response_url`: its scheme, host and port
/// are those of `WECOM_API_BASE_URL` (`base`), so a forged message cannot make
/// the appliance POST anywhere else.
pub(crate) fn response_url_allowed(url: &str, base: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(base)) {
        (Ok(url), Ok(base)) => {
            url.scheme() == base.scheme()
                && url.host_str() == base.host_str()
                && url.port_or_known_default() == base.port_or_known_default()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_in_a_group_is_classified_with_its_chat_and_quote() {
        let message = AibotMessage::parse(
            r#"{"msgid":"m1","aibotid":"b1","chatid":"c1","chattype":"group","from":{"userid":"zhangsan"},
                "response_url":"https://qyapi.weixin.qq.com/cgi-bin/aibot/response?x=1","msgtype":"text",
                "text":{"content":"@bot 你好"},"quote":{"msgtype":"text","text":{"content":"旧话"}}}"#,
        )
        .expect("parses");
        assert_eq!(message.kind, AibotKind::Text { content: "@bot 你好".into() });
        assert_eq!((message.chattype, message.chatid.as_deref()), (Some(ChatType::Group), Some("c1")));
        assert!(message.quote.is_some() && message.opens_stream());
        assert!(message.raw_without_credentials().get("response_url").is_none());
        assert!(!message.summary().contains("response"));
    }

    #[test]
    fn mixed_events_refreshes_and_unknown_types_are_classified_never_refused() {
        let mixed = AibotMessage::parse(
            r#"{"msgid":"m","msgtype":"mixed","mixed":{"msg_item":[{"msgtype":"text","text":{"content":"看"}},
                {"msgtype":"image","image":{"url":"https://x/1"}},{"msgtype":"text","text":{"content":"这张"}}]}}"#,
        )
        .expect("parses");
        assert_eq!(mixed.text().as_deref(), Some("看\n这张"));
        assert_eq!(mixed.media_urls(), vec!["https://x/1".to_owned()]);
        let feedback = AibotMessage::parse(
            r#"{"msgid":"e","msgtype":"event","event":{"eventtype":"feedback_event","feedback_event":{"id":"s","type":2}}}"#,
        )
        .expect("parses");
        assert_eq!(feedback.event(), Some(&AibotEvent::Feedback { verdict: Feedback::Inaccurate }));
        let refresh = AibotMessage::parse(r#"{"msgtype":"stream","stream":{"id":"abc"}}"#).expect("parses");
        assert_eq!(refresh.kind, AibotKind::Refresh { id: "abc".into() });
        let unknown = AibotMessage::parse(r#"{"msgid":"u","msgtype":"hologram"}"#).expect("kept");
        assert_eq!(unknown.kind, AibotKind::Unknown);
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        assert_eq!(
            AibotMessage::parse("[1]").err().map(|e| e.to_string()).as_deref(),
            Some("decrypted AI bot message is not a JSON object: it is an array")
        );
        assert_eq!(AibotMessage::parse(r#"{"msgtype":"text"}"#).err(), Some(AibotError::MissingMsgid));
        assert_eq!(AibotMessage::parse(r#"{"msgtype":"stream"}"#).err(), Some(AibotError::MissingStreamId));
        assert!(envelope(b"<xml/>").is_err());
        assert!(envelope(br#"{"encrypt": 1}"#).is_err());
        assert_eq!(envelope(br#"{"encrypt":"abc"}"#).as_deref(), Ok("abc"));
    }

    #[test]
    fn an_answer_is_signed_over_its_own_ciphertext_with_the_requests_nonce() {
        let key = AesKey::parse("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C").expect("key");
        let answer: Value =
            serde_json::from_str(&encrypted_answer("T", &key, &stream_answer("s", "", false), "n1", 7)).expect("json");
        let encrypt = answer["encrypt"].as_str().expect("encrypt");
        assert_eq!(answer["nonce"], "n1");
        assert!(crypto::sign("T", "7", "n1", encrypt).matches(answer["msgsignature"].as_str().expect("sig")));
        let plain = crypto::decrypt(&key, encrypt).expect("decrypts");
        assert_eq!(plain.receive_id(), "");
        assert_eq!(plain.message(), r#"{"msgtype":"stream","stream":{"content":"","finish":false,"id":"s"}}"#);
    }

    #[test]
    fn a_response_url_must_be_on_the_api_base_origin() {
        let base = "https://qyapi.weixin.qq.com";
        assert!(response_url_allowed("https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=x", base));
        assert!(!response_url_allowed("http://qyapi.weixin.qq.com/x", base));
        assert!(!response_url_allowed("https://qyapi.weixin.qq.com:8443/x", base));
        assert!(!response_url_allowed("https://evil.example/x", base));
        assert!(!response_url_allowed("not a url", base));
    }
}
