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
/// Every message the dispatcher logs passes here: no character is decoded
/// where the length in bytes, or a count of them, shows that nothing is cut.
pub(crate) fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    // A character is at least one byte; std counts characters a word at a time.
    if text.len() <= max || text.chars().count() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..char_boundary(text, max)]))
}

/// The byte offset of `text`'s character number `n` (from 0), or its length.
fn char_boundary(text: &str, n: usize) -> usize {
    // `Chars::nth` skips 32 bytes at a time; decoding each character did not.
    let mut chars = text.chars();
    chars.nth(n).map_or(text.len(), |c| text.len() - chars.as_str().len() - c.len_utf8())
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
        // std counts characters a word at a time; only a cut decodes them.
        let chars = self.0.chars().count();
        if chars <= LOGGED_ID_CHARS {
            return f.write_str(self.0);
        }
        write!(f, "{}…({chars} chars)", &self.0[..char_boundary(self.0, LOGGED_ID_CHARS)])
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

    /// `text`'s first `max` characters, found by decoding each one.
    fn first_chars(text: &str, max: usize) -> &str {
        text.char_indices().nth(max).map_or(text, |(end, _)| &text[..end])
    }

    proptest::proptest! {
        /// The shortcuts by length and by count cut where decoding every character does.
        #[test]
        fn clip_cuts_after_max_characters(text in "(\\PC|[长😀é])*", max in 0usize..40) {
            let kept = first_chars(&text, max);
            let expected = if kept.len() == text.len() { text.clone() } else { format!("{kept}…") };
            proptest::prop_assert_eq!(clip(&text, max), expected);
        }

        #[test]
        fn a_logged_id_keeps_128_characters(text in "[a长😀]{100,160}") {
            let count = text.chars().count();
            let expected = if count <= LOGGED_ID_CHARS {
                text.clone()
            } else {
                format!("{}…({count} chars)", first_chars(&text, LOGGED_ID_CHARS))
            };
            proptest::prop_assert_eq!(LoggedId(&text).to_string(), expected);
        }
    }
}
