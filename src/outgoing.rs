//! The send API's request (SPEC §10), validated without HTTP: every problem is
//! named by its JSON path, so a bot's author sees at once what to fix.

use serde_json::{Map, Value};

use crate::channels::ChannelName;
use crate::messages::json_type;

/// Longest text accepted, in characters (a 413 beyond it).
pub(crate) const MAX_TEXT_CHARS: usize = 20_000;
/// Longest `idempotency_key`, in characters.
const MAX_KEY_CHARS: usize = 128;
/// Longest id (`to`, `open_kfid`, `in_reply_to`) accepted.
const MAX_ID_CHARS: usize = 256;
/// The fields a request may have.
const FIELDS: [&str; 8] = ["in_reply_to", "channel", "to", "open_kfid", "text", "idempotency_key", "finish", "append"];

/// Who the text goes to, as the request says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The sender of a journaled record, on its channel.
    InReplyTo(String),
    /// `to` on the channel named `channel`: a member of an app channel's corp,
    /// or a customer of kf account `open_kfid` on a kf channel. Whether the
    /// channel exists and what its kind needs is the sender's to check.
    Channel { channel: ChannelName, to: String, open_kfid: Option<String> },
}

/// A valid send request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendRequest {
    pub target: Target,
    pub text: String,
    pub idempotency_key: Option<String>,
    /// AI bot answers (SPEC §13): whether the answer is complete (default true).
    pub finish: Option<bool>,
    /// AI bot answers: add the text to the answer so far instead of replacing it.
    pub append: Option<bool>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// 400: the value at `path` is wrong.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    /// 413: the text is longer than any channel takes: [`MAX_TEXT_CHARS`]
    /// characters, or an AI bot's [`crate::streams::ANSWER_MAX_BYTES`] bytes.
    #[error("$.text: {chars} characters, more than the {MAX_TEXT_CHARS} allowed")]
    TextTooLong { chars: usize },
}

fn invalid(path: &str, reason: impl Into<String>) -> RequestError {
    RequestError::Invalid { path: path.to_owned(), reason: reason.into() }
}

/// The string at `$.name`, when present: not empty, at most `max` characters.
fn string(object: &Map<String, Value>, name: &str, max: usize) -> Result<Option<String>, RequestError> {
    let path = format!("$.{name}");
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(invalid(&path, "must not be empty")),
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(invalid(&path, format!("must be at most {max} characters")))
        }
        Some(Value::String(s)) if s.chars().any(is_control) => Err(invalid(
            &path,
            "must not contain control characters (NUL, CR, LF, ESC…) or bidirectional controls (U+202E…)",
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(&path, format!("must be a string, got {}", json_type(other)))),
    }
}

/// Characters no id or key has: the C0 and C1 controls and DEL, the Unicode
/// line and paragraph separators, and the bidirectional controls that make a
/// log line or a status page read other than it is (U+061C, U+200E, U+200F,
/// U+202A–U+202E, U+2066–U+2069).
fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

impl SendRequest {
    /// Parses and validates a request body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| invalid("$", format!("not JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(invalid("$", format!("must be an object, got {}", json_type(&value))));
        };
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(
                &format!("$.{unknown}"),
                format!("unknown field (expected one of {})", FIELDS.join(", ")),
            ));
        }
        let text = match object.get("text") {
            None | Some(Value::Null) => return Err(invalid("$.text", "required")),
            Some(Value::String(text)) => text.clone(),
            Some(other) => return Err(invalid("$.text", format!("must be a string, got {}", json_type(other)))),
        };
        let chars = text.chars().count();
        // The channel decides which limit holds (`sending::queue`); past both, no channel takes it.
        if chars > MAX_TEXT_CHARS && text.len() > crate::streams::ANSWER_MAX_BYTES {
            return Err(RequestError::TextTooLong { chars });
        }
        if text.trim().is_empty() {
            return Err(invalid("$.text", "must not be empty"));
        }
        let idempotency_key = string(&object, "idempotency_key", MAX_KEY_CHARS)?;
        let in_reply_to = string(&object, "in_reply_to", MAX_ID_CHARS)?;
        let channel = string(&object, "channel", MAX_ID_CHARS)?;
        let to = string(&object, "to", MAX_ID_CHARS)?;
        let open_kfid = string(&object, "open_kfid", MAX_ID_CHARS)?;
        let target = match (in_reply_to, channel.as_deref()) {
            (Some(record), None) => {
                if let Some(field) = ["to", "open_kfid"].into_iter().find(|f| object.contains_key(*f)) {
                    return Err(invalid(&format!("$.{field}"), "give either in_reply_to or channel and to, not both"));
                }
                Target::InReplyTo(record)
            }
            (Some(_), Some(_)) => {
                return Err(invalid("$.channel", "give either in_reply_to or channel and to, not both"))
            }
            (None, None) => {
                return Err(invalid("$.channel", "required: a channel's name, e.g. app or kf (or give in_reply_to)"))
            }
            (None, Some(name)) => Target::Channel {
                channel: ChannelName::parse(name)
                    .map_err(|_| invalid("$.channel", format!("unknown channel {name:?}")))?,
                to: to.ok_or_else(|| {
                    invalid("$.to", "required: the member's userid or the customer's external_userid")
                })?,
                open_kfid,
            },
        };
        let flag = |name: &str| match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => {
                Err(invalid(&format!("$.{name}"), format!("must be true or false, got {}", json_type(other))))
            }
        };
        let (finish, append) = (flag("finish")?, flag("append")?);
        Ok(Self { target, text, idempotency_key, finish, append })
    }
}

impl SendRequest {
    /// What makes two requests with one `idempotency_key` the same request: the
    /// SHA-256 (hex) of the validated request in one canonical form (the target
    /// and the text, as parsed: key order, white space and escapes in the body
    /// do not matter). Stored with the send; the same key with another
    /// fingerprint is a conflict (409), as payment APIs answer.
    pub(crate) fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let target = match &self.target {
            Target::InReplyTo(record) => serde_json::json!(["in_reply_to", record]),
            // As before channels had names: `["app", to]`, `["kf", to, open_kfid]`.
            Target::Channel { channel, to, open_kfid: None } => serde_json::json!([channel, to]),
            Target::Channel { channel, to, open_kfid: Some(open_kfid) } => serde_json::json!([channel, to, open_kfid]),
        };
        let canonical = serde_json::json!([target, self.text]).to_string();
        crate::crypto::hex(&Sha256::digest(canonical.as_bytes()))
    }

    /// [`SendRequest::fingerprint`] of an update of an AI bot's answer (SPEC
    /// §13): `append` and `finish` are part of the request, as they take
    /// effect (absent is their default), so a retried append is the same
    /// request and an append is not a replace. Never equal to a text send's.
    pub(crate) fn answer_fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let Target::InReplyTo(record) = &self.target else { return self.fingerprint() };
        let (append, finish) = (self.append.unwrap_or(false), self.finish.unwrap_or(true));
        let canonical = serde_json::json!([["in_reply_to", record], self.text, append, finish]).to_string();
        crate::crypto::hex(&Sha256::digest(canonical.as_bytes()))
    }
}

/// A new send's id: `msg_` and 24 random letters and digits.
pub(crate) fn new_id() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    format!("msg_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<SendRequest, RequestError> {
        SendRequest::parse(body.as_bytes())
    }

    fn path_of(body: &str) -> String {
        match parse(body) {
            Err(RequestError::Invalid { path, .. }) => path,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn the_three_forms_parse() {
        assert_eq!(
            parse(r#"{"in_reply_to":"kf:msg:1","text":"hi","idempotency_key":"k1"}"#).expect("valid"),
            SendRequest {
                target: Target::InReplyTo("kf:msg:1".into()),
                text: "hi".into(),
                idempotency_key: Some("k1".into()),
                finish: None,
                append: None,
            }
        );
        assert_eq!(
            parse(r#"{"channel":"app","to":"zhangsan","text":"hi"}"#).expect("valid").target,
            Target::Channel { channel: ChannelName::app(), to: "zhangsan".into(), open_kfid: None }
        );
        assert_eq!(
            parse(r#"{"channel":"kf","to":"wm1","open_kfid":"wk1","text":"hi"}"#).expect("valid").target,
            Target::Channel { channel: ChannelName::kf(), to: "wm1".into(), open_kfid: Some("wk1".into()) }
        );
        assert_eq!(
            parse(r#"{"channel":"hr","to":"lisi","text":"hi"}"#).expect("valid").target,
            Target::Channel { channel: ChannelName::parse("hr").expect("name"), to: "lisi".into(), open_kfid: None }
        );
    }

    #[test]
    fn every_problem_is_named_by_its_path() {
        assert_eq!(path_of("not json"), "$");
        assert_eq!(path_of("[1]"), "$");
        assert_eq!(path_of(r#"{"channel":"app","to":"u"}"#), "$.text");
        assert_eq!(path_of(r#"{"channel":"app","to":"u","text":"  "}"#), "$.text");
        assert_eq!(path_of(r#"{"channel":"app","to":"u","text":5}"#), "$.text");
        assert_eq!(path_of(r#"{"text":"hi"}"#), "$.channel");
        assert_eq!(path_of(r#"{"channel":"S M S","to":"u","text":"hi"}"#), "$.channel");
        assert_eq!(path_of(r#"{"channel":"app","text":"hi"}"#), "$.to");
        assert_eq!(path_of(r#"{"in_reply_to":"x","to":"u","text":"hi"}"#), "$.to");
        assert_eq!(path_of(r#"{"in_reply_to":"x","channel":"kf","text":"hi"}"#), "$.channel");
        assert_eq!(path_of(r#"{"in_reply_to":"x","text":"hi","idempotency_key":""}"#), "$.idempotency_key");
        let long_key = "k".repeat(129);
        assert_eq!(
            path_of(&format!(r#"{{"in_reply_to":"x","text":"hi","idempotency_key":"{long_key}"}}"#)),
            "$.idempotency_key"
        );
        assert_eq!(path_of(r#"{"in_reply_to":"x","text":"hi","txet":"typo"}"#), "$.txet");
        assert_eq!(path_of(r#"{"in_reply_to":"x","text":"hi","finish":"yes"}"#), "$.finish");
        assert_eq!(path_of(r#"{"channel":"app","to":"u\u0000","text":"hi"}"#), "$.to");
        assert_eq!(path_of(r#"{"channel":"kf","to":"u","open_kfid":"wk\n","text":"hi"}"#), "$.open_kfid");
        assert_eq!(path_of(r#"{"in_reply_to":"x\u001b[2J","text":"hi"}"#), "$.in_reply_to");
        assert_eq!(path_of(r#"{"in_reply_to":"x","text":"hi","idempotency_key":"k\u202e1"}"#), "$.idempotency_key");
        assert_eq!(path_of(r#"{"channel":"app\u0085","to":"u","text":"hi"}"#), "$.channel");
        assert!(
            parse("{\"channel\":\"app\",\"to\":\"u\",\"text\":\"line 1\\nline 2\"}").is_ok(),
            "a text may have lines"
        );
    }

    #[test]
    fn a_text_over_twenty_thousand_characters_is_too_long_not_invalid() {
        let text = "长".repeat(MAX_TEXT_CHARS);
        assert!(parse(&format!(r#"{{"in_reply_to":"x","text":"{text}"}}"#)).is_ok());
        let text = "长".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(
            parse(&format!(r#"{{"in_reply_to":"x","text":"{text}"}}"#)),
            Err(RequestError::TextTooLong { chars: MAX_TEXT_CHARS + 1 })
        );
    }

    #[test]
    fn ids_are_distinct_and_of_one_alphabet() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(a.len() == 28 && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn one_request_has_one_fingerprint_whatever_its_json_looks_like() {
        let a =
            parse(r#"{"channel":"kf","to":"wm1","open_kfid":"wk1","text":"hi","idempotency_key":"k"}"#).expect("valid");
        let b = parse(r#"{ "text" : "h\u0069", "open_kfid":"wk1", "idempotency_key":"k", "to":"wm1","channel":"kf"}"#)
            .expect("valid");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        for other in [
            r#"{"channel":"kf","to":"wm1","open_kfid":"wk1","text":"hi!","idempotency_key":"k"}"#,
            r#"{"channel":"kf","to":"wm2","open_kfid":"wk1","text":"hi","idempotency_key":"k"}"#,
            r#"{"channel":"kf","to":"wm1","open_kfid":"wk2","text":"hi","idempotency_key":"k"}"#,
            r#"{"channel":"app","to":"wm1","text":"hi","idempotency_key":"k"}"#,
            r#"{"in_reply_to":"wm1","text":"hi","idempotency_key":"k"}"#,
        ] {
            assert_ne!(parse(other).expect("valid").fingerprint(), a.fingerprint(), "{other}");
        }
    }

    #[test]
    fn an_answer_updates_fingerprint_counts_append_and_finish_as_they_take_effect() {
        let fingerprint = |body: &str| parse(body).expect("valid").answer_fingerprint();
        let plain = fingerprint(r#"{"in_reply_to":"aibot:msg:1","text":"hi"}"#);
        assert_eq!(plain, fingerprint(r#"{"in_reply_to":"aibot:msg:1","text":"hi","append":false,"finish":true}"#));
        assert_ne!(plain, fingerprint(r#"{"in_reply_to":"aibot:msg:1","text":"hi","append":true}"#));
        assert_ne!(plain, fingerprint(r#"{"in_reply_to":"aibot:msg:1","text":"hi","finish":false}"#));
        assert_ne!(plain, fingerprint(r#"{"in_reply_to":"aibot:msg:2","text":"hi"}"#));
        assert_ne!(plain, parse(r#"{"in_reply_to":"aibot:msg:1","text":"hi"}"#).expect("valid").fingerprint());
    }
}
