//! The typed messages WeCom sends, parsed once and classified.
//!
//! Owns: the outer callback envelope ([`envelope`]) and the decrypted app XML
//! ([`app`]), and [`Message`], what the handlers decide on (an AI bot's JSON is
//! parsed with the rest of its protocol in `wecom::aibot`). Unknown message or event types are kept, never a parse failure:
//! WeCom adds types faster than any client learns them.
//!
//! Deliberately not here: decryption (see `crypto`), I/O, and what to do with a
//! message (the dispatcher's job).

pub(crate) mod app;
pub(crate) mod envelope;
pub(crate) mod kf;
mod xml;

pub use app::{AppEvent, AppMessage, AppMessageKind};
pub use envelope::CallbackEnvelope;

use kf::{KfEvent, KfKind, KfMessage};

use crate::channels::ChannelName;
use crate::wecom::aibot::AibotMessage;

/// What makes a delivery the same message as an earlier one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Identity<'a> {
    /// The message's own id (`MsgId` of an app message, `msgid` of a kf message).
    MsgId(&'a str),
    /// An event, which has no id: its whole decrypted plaintext.
    Event(&'a [u8]),
}

/// The dedup key (SPEC §4, §12), built here and nowhere else: `<channel>:msg:<id>`, or
/// `<channel>:evt:<32 hex digits of SHA-256(plaintext)>` for events. WeCom's
/// retries are byte-identical, while two distinct events in the same second
/// differ somewhere in their XML, so a dedup never drops a distinct event.
/// The channel is its name, so the same MsgId in two corps is two messages,
/// and the built-ins' keys (`app:…`, `kf:…`) are what they were before names.
pub(crate) fn dedup_key(channel: &ChannelName, identity: Identity<'_>) -> String {
    match identity {
        Identity::MsgId(id) => format!("{channel}:msg:{id}"),
        Identity::Event(plaintext) => {
            let digest = <sha2::Sha256 as sha2::Digest>::digest(plaintext);
            format!("{channel}:evt:{}", crate::crypto::hex(&digest[..16]))
        }
    }
}

/// A journaled message, parsed: what the handlers decide on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message {
    /// A callback's decrypted XML, on the channel it was routed to.
    App { channel: ChannelName, message: AppMessage },
    /// One message of a `kf/sync_msg` page.
    Kf(KfMessage),
    /// An AI bot's message or event (SPEC §13), on its channel.
    Aibot { channel: ChannelName, message: AibotMessage },
}

impl Message {
    /// The text of a text message.
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Self::App { message: AppMessage { kind: AppMessageKind::Text { content }, .. }, .. }
            | Self::Kf(KfMessage { kind: KfKind::Text { content, .. }, .. }) => Some(content),
            _ => None,
        }
    }

    /// The `kf_msg_or_event` notice: a transport signal to pull `kf/sync_msg`,
    /// not a message of its own.
    pub(crate) fn is_kf_notice(&self) -> bool {
        matches!(self, Self::App { message, .. } if matches!(message.event(), Some(AppEvent::KfMsgOrEvent { .. })))
    }

    /// The `welcome_code` of a kf `enter_session` event, which allows one welcome message.
    pub(crate) fn welcome_code(&self) -> Option<&str> {
        match self {
            Self::Kf(message) => match message.event() {
                Some(KfEvent::EnterSession { welcome_code: Some(code), .. }) if !code.is_empty() => Some(code),
                _ => None,
            },
            Self::App { .. } | Self::Aibot { .. } => None,
        }
    }
}

/// What kind of JSON value `value` is, for error messages ("a number").
pub(crate) fn json_type(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cuts `text` to at most `max` characters (never inside one), marking the cut.
pub(crate) fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// The most characters of an id a log line shows (SPEC §15).
pub(crate) const LOGGED_ID_CHARS: usize = 128;

/// An id (msgid, external_userid, open_kfid, a dedup or idempotency key, a send
/// id, a media id) as a log line shows it: whole up to [`LOGGED_ID_CHARS`]
/// characters, else cut there and marked with its length, `…(100000 chars)`.
/// Ids come from WeCom, from callbacks and from bots; none may turn one log
/// line into 100 KB. Written `id = %LoggedId(&id)` in a field, or `{}` in a
/// message. (Control and bidi characters are the log writer's to escape.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoggedId<'a>(pub &'a str);

impl std::fmt::Display for LoggedId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(LOGGED_ID_CHARS) {
            None => f.write_str(self.0),
            Some((end, _)) => write!(f, "{}…({} chars)", &self.0[..end], self.0.chars().count()),
        }
    }
}

/// A decrypted payload that is not well-formed XML of the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("{what} is not well-formed XML: {reason}")]
pub struct ParseError {
    what: &'static str,
    reason: String,
}

impl ParseError {
    fn new(what: &'static str, reason: String) -> Self {
        // quick-xml's messages can quote input; keep only the first line, bounded.
        let first_line = reason.lines().next().unwrap_or_default();
        Self { what, reason: clip(first_line, 160).into_owned() }
    }

    fn not_utf8(what: &'static str) -> Self {
        Self { what, reason: "body is not UTF-8".to_owned() }
    }

    fn missing(what: &'static str, element: &'static str) -> Self {
        Self { what, reason: format!("<{element}> is missing or empty") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_id_is_cut_to_128_characters_with_its_length() {
        assert_eq!(LoggedId("wmAbc").to_string(), "wmAbc");
        let exact = "长".repeat(LOGGED_ID_CHARS);
        assert_eq!(LoggedId(&exact).to_string(), exact);
        let long = "x".repeat(100_000);
        let shown = LoggedId(&long).to_string();
        assert_eq!(shown, format!("{}…(100000 chars)", "x".repeat(LOGGED_ID_CHARS)));
    }
}
