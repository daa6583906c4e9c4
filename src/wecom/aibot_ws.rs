//! The AI bot's long connection, its frames (SPEC §13): JSON text messages
//! `{"cmd","headers":{"req_id"},"body"}` both ways. Outbound: `aibot_subscribe`
//! (`bot_id`, `secret`), `ping`, `aibot_respond_msg` (a stream snapshot),
//! `aibot_respond_welcome_msg`, `aibot_send_msg` (markdown to a chat). Inbound:
//! `aibot_msg_callback` / `aibot_event_callback` (the callback mode's message
//! JSON as `body`), and the answers to our frames, which carry our `req_id`
//! and an `errcode` (846609: not subscribed).
//!
//! Pure: no I/O, nothing panics on any input. Deliberately not here: the
//! socket, the lease, reconnecting (the worker, `aibot_ws` at the top) and
//! what a message means (`wecom::aibot`).

use serde_json::{json, Value};

/// The subscribe command.
pub(crate) const SUBSCRIBE: &str = "aibot_subscribe";
/// The heartbeat command.
pub(crate) const PING: &str = "ping";
/// A user's message.
pub(crate) const MSG_CALLBACK: &str = "aibot_msg_callback";
/// An event (`enter_chat`, `template_card_event`, `feedback_event`, `disconnected_event`).
pub(crate) const EVENT_CALLBACK: &str = "aibot_event_callback";
/// A stream snapshot answering a message.
pub(crate) const RESPOND_MSG: &str = "aibot_respond_msg";
/// The welcome answering `enter_chat`.
pub(crate) const RESPOND_WELCOME: &str = "aibot_respond_welcome_msg";
/// A message pushed to a chat (after the stream's window).
pub(crate) const SEND_MSG: &str = "aibot_send_msg";
/// The event saying another client subscribed with this bot's Secret.
pub(crate) const DISCONNECTED_EVENT: &str = "disconnected_event";
/// Errcode of a frame sent while not subscribed.
pub(crate) const NOT_SUBSCRIBED: i64 = 846_609;

/// One frame as received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    /// `cmd`; empty on an answer that carries none.
    pub(crate) cmd: String,
    pub(crate) req_id: String,
    pub(crate) body: Value,
    /// `errcode` of an answer (top level), when present.
    pub(crate) errcode: Option<i64>,
    /// `errmsg` of an answer, for logs.
    pub(crate) errmsg: String,
}

/// What an inbound frame is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    /// A message or an event: `body` is the callback mode's message JSON.
    Callback { req_id: String, body: Value, event: Option<String> },
    /// An answer to one of our frames (subscribe, ping, respond): its `req_id` and `errcode`.
    Answer { req_id: String, errcode: i64, errmsg: String },
}

impl Frame {
    /// Parses a text message; `None` for anything that is not a JSON object.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(text).ok()?;
        let object = value.as_object()?;
        let text_of = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        Some(Self {
            cmd: text_of(object.get("cmd")),
            req_id: text_of(object.get("headers").and_then(|h| h.get("req_id"))),
            body: object.get("body").cloned().unwrap_or(Value::Null),
            errcode: object.get("errcode").and_then(Value::as_i64),
            errmsg: text_of(object.get("errmsg")),
        })
    }

    /// Classifies the frame: a callback (message or event), or an answer.
    pub(crate) fn inbound(self) -> Inbound {
        match self.cmd.as_str() {
            MSG_CALLBACK | EVENT_CALLBACK => {
                let event = (self.cmd == EVENT_CALLBACK).then(|| {
                    self.body.pointer("/event/eventtype").and_then(Value::as_str).unwrap_or_default().to_owned()
                });
                Inbound::Callback { req_id: self.req_id, body: self.body, event }
            }
            _ => Inbound::Answer { req_id: self.req_id, errcode: self.errcode.unwrap_or(0), errmsg: self.errmsg },
        }
    }
}

fn frame(cmd: &str, req_id: &str, body: Option<Value>) -> String {
    let mut frame = json!({ "cmd": cmd, "headers": { "req_id": req_id } });
    if let (Some(body), Some(object)) = (body, frame.as_object_mut()) {
        object.insert("body".to_owned(), body);
    }
    frame.to_string()
}

/// `aibot_subscribe` with the bot's id and Secret (a secret: never logged).
pub(crate) fn subscribe(req_id: &str, bot_id: &str, secret: &str) -> String {
    frame(SUBSCRIBE, req_id, Some(json!({ "bot_id": bot_id, "secret": secret })))
}

/// The heartbeat.
pub(crate) fn ping(req_id: &str) -> String {
    frame(PING, req_id, None)
}

/// A stream snapshot answering the message delivered with `req_id`.
pub(crate) fn respond_stream(req_id: &str, stream_id: &str, content: &str, finish: bool) -> String {
    let body = json!({ "msgtype": "stream", "stream": { "id": stream_id, "finish": finish, "content": content } });
    frame(RESPOND_MSG, req_id, Some(body))
}

/// The welcome answering the `enter_chat` delivered with `req_id`.
pub(crate) fn respond_welcome(req_id: &str, text: &str) -> String {
    frame(RESPOND_WELCOME, req_id, Some(json!({ "msgtype": "text", "text": { "content": text } })))
}

/// Markdown pushed to the chat `chatid` (a userid for a single chat).
pub(crate) fn send_markdown(req_id: &str, chatid: &str, content: &str) -> String {
    let body = json!({ "chatid": chatid, "msgtype": "markdown", "markdown": { "content": content } });
    frame(SEND_MSG, req_id, Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribe_carries_the_bot_id_and_secret_under_its_req_id() {
        let frame: Value = serde_json::from_str(&subscribe("r1", "aib", "s")).expect("json");
        assert_eq!(
            frame,
            json!({"cmd":"aibot_subscribe","headers":{"req_id":"r1"},"body":{"bot_id":"aib","secret":"s"}})
        );
        let frame: Value = serde_json::from_str(&ping("p1")).expect("json");
        assert_eq!(frame, json!({"cmd":"ping","headers":{"req_id":"p1"}}));
    }

    #[test]
    fn a_stream_snapshot_answers_with_the_messages_req_id() {
        let frame: Value = serde_json::from_str(&respond_stream("req", "sid", "hi", true)).expect("json");
        assert_eq!(frame["cmd"], "aibot_respond_msg");
        assert_eq!(frame["headers"]["req_id"], "req");
        assert_eq!(frame["body"], json!({"msgtype":"stream","stream":{"id":"sid","finish":true,"content":"hi"}}));
        let welcome: Value = serde_json::from_str(&respond_welcome("req", "hello")).expect("json");
        assert_eq!(welcome["body"], json!({"msgtype":"text","text":{"content":"hello"}}));
        let send: Value = serde_json::from_str(&send_markdown("r", "c1", "**x**")).expect("json");
        assert_eq!(send["cmd"], SEND_MSG);
        assert_eq!(send["body"], json!({"chatid":"c1","msgtype":"markdown","markdown":{"content":"**x**"}}));
    }

    #[test]
    fn inbound_frames_are_callbacks_events_or_answers_and_garbage_is_none() {
        let message = r#"{"cmd":"aibot_msg_callback","headers":{"req_id":"q"},"body":{"msgid":"m","msgtype":"text"}}"#;
        let Some(Inbound::Callback { req_id, body, event: None }) = Frame::parse(message).map(Frame::inbound) else {
            panic!("a message")
        };
        assert_eq!((req_id.as_str(), body["msgid"].as_str()), ("q", Some("m")));
        let kick = r#"{"cmd":"aibot_event_callback","headers":{"req_id":"k"},"body":{"event":{"eventtype":"disconnected_event"}}}"#;
        assert!(matches!(
            Frame::parse(kick).map(Frame::inbound),
            Some(Inbound::Callback { event: Some(e), .. }) if e == DISCONNECTED_EVENT
        ));
        let answer = r#"{"headers":{"req_id":"x"},"errcode":846609,"errmsg":"not subscribed"}"#;
        assert_eq!(
            Frame::parse(answer).map(Frame::inbound),
            Some(Inbound::Answer { req_id: "x".into(), errcode: NOT_SUBSCRIBED, errmsg: "not subscribed".into() })
        );
        for garbage in ["", "[]", "null", "{", "\"x\""] {
            assert!(Frame::parse(garbage).is_none(), "{garbage}");
        }
    }
}
