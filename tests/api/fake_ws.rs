//! A fake of WeCom's AI bot long connection (SPEC §13): a real WebSocket server
//! on 127.0.0.1 (tokio-tungstenite) that checks the subscribe's `bot_id` and
//! `secret`, answers pings, pushes callbacks to the live connection, records
//! every frame with when it came, and on demand goes silent, closes, kicks
//! with `disconnected_event`, or answers frames with 846609 (not subscribed).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A frame the appliance sent, with the connection it came on and when.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub connection: usize,
    pub at: Instant,
    pub frame: Value,
}

impl Received {
    pub(crate) fn cmd(&self) -> &str {
        self.frame["cmd"].as_str().unwrap_or_default()
    }

    pub(crate) fn req_id(&self) -> &str {
        self.frame["headers"]["req_id"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    frames: Vec<Received>,
    /// Connections so far; the live one's pusher (after a good subscribe).
    connections: usize,
    live: Option<(usize, mpsc::UnboundedSender<Message>)>,
    /// Connections open at once right now, and the most ever.
    open: usize,
    most_open: usize,
    /// Answer nothing (pings included) while set.
    silent: bool,
    /// Answer this many of the next respond frames with 846609.
    not_subscribed: usize,
}

/// The fake server; dropping it does not stop it (the test process ends it).
#[derive(Clone)]
pub(crate) struct FakeLongConnection {
    pub url: String,
    pub bot_id: String,
    pub secret: String,
    state: Arc<Mutex<State>>,
}

impl FakeLongConnection {
    pub(crate) async fn start(bot_id: &str, secret: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fake long connection");
        let url = format!("ws://127.0.0.1:{}", listener.local_addr().expect("address").port());
        let fake = Self { url, bot_id: bot_id.to_owned(), secret: secret.to_owned(), state: Arc::default() };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.serve(stream).await });
            }
        });
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn serve(&self, stream: tokio::net::TcpStream) {
        let Ok(socket) = tokio_tungstenite::accept_async(stream).await else { return };
        let (mut sink, mut source) = socket.split();
        let (push, mut pushed) = mpsc::unbounded_channel::<Message>();
        let connection = {
            let mut state = self.lock();
            state.connections += 1;
            state.open += 1;
            state.most_open = state.most_open.max(state.open);
            state.connections
        };
        loop {
            tokio::select! {
                message = source.next() => {
                    let Some(Ok(Message::Text(text))) = message else {
                        if matches!(message, Some(Ok(Message::Ping(_) | Message::Pong(_)))) { continue; }
                        break;
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    let received = Received { connection, at: Instant::now(), frame: frame.clone() };
                    let answer = {
                        let mut state = self.lock();
                        state.frames.push(received.clone());
                        self.answer(&mut state, &received, connection, &push)
                    };
                    if let Some(answer) = answer {
                        if sink.send(Message::text(answer.to_string())).await.is_err() { break; }
                    }
                }
                out = pushed.recv() => {
                    let Some(out) = out else { break };
                    let close = matches!(out, Message::Close(_));
                    if sink.send(out).await.is_err() || close { break; }
                }
            }
        }
        let mut state = self.lock();
        state.open -= 1;
        if state.live.as_ref().is_some_and(|(n, _)| *n == connection) {
            state.live = None;
        }
    }

    /// The answer to one frame, or none (silent).
    fn answer(
        &self,
        state: &mut State,
        received: &Received,
        connection: usize,
        push: &mpsc::UnboundedSender<Message>,
    ) -> Option<Value> {
        if state.silent {
            return None;
        }
        let req_id = received.req_id().to_owned();
        let ok = json!({"headers": {"req_id": req_id}, "errcode": 0, "errmsg": "ok"});
        match received.cmd() {
            "aibot_subscribe" => {
                let body = &received.frame["body"];
                if body["bot_id"] != self.bot_id.as_str() || body["secret"] != self.secret.as_str() {
                    return Some(json!({"headers": {"req_id": req_id}, "errcode": 40001, "errmsg": "invalid secret"}));
                }
                state.live = Some((connection, push.clone()));
                Some(ok)
            }
            "aibot_respond_msg" | "aibot_respond_welcome_msg" | "aibot_send_msg" if state.not_subscribed > 0 => {
                state.not_subscribed -= 1;
                Some(json!({"headers": {"req_id": req_id}, "errcode": 846609, "errmsg": "not subscribed"}))
            }
            _ => Some(ok),
        }
    }

    /// Pushes `frame` on the live connection; false when there is none.
    fn push(&self, message: Message) -> bool {
        let state = self.lock();
        state.live.as_ref().is_some_and(|(_, push)| push.send(message).is_ok())
    }

    /// Pushes a user's message (`aibot_msg_callback`) with `req_id`.
    pub(crate) fn push_message(&self, req_id: &str, body: Value) -> bool {
        let frame = json!({"cmd": "aibot_msg_callback", "headers": {"req_id": req_id}, "body": body});
        self.push(Message::text(frame.to_string()))
    }

    /// Pushes an event (`aibot_event_callback`) with `req_id`.
    pub(crate) fn push_event(&self, req_id: &str, body: Value) -> bool {
        let frame = json!({"cmd": "aibot_event_callback", "headers": {"req_id": req_id}, "body": body});
        self.push(Message::text(frame.to_string()))
    }

    /// Another client subscribed: `disconnected_event`, then the close.
    pub(crate) fn kick(&self) -> bool {
        let event = json!({"msgid": "kick", "create_time": 1_700_000_000, "aibotid": self.bot_id,
                           "msgtype": "event", "event": {"eventtype": "disconnected_event"}});
        self.push_event("kick", event) && self.push(Message::Close(None))
    }

    /// Closes the live connection.
    pub(crate) fn close(&self) -> bool {
        self.push(Message::Close(None))
    }

    /// Stops (or resumes) answering anything, pings included.
    pub(crate) fn set_silent(&self, silent: bool) {
        self.lock().silent = silent;
    }

    /// Answers the next `n` respond frames with 846609.
    pub(crate) fn refuse_next_as_not_subscribed(&self, n: usize) {
        self.lock().not_subscribed = n;
    }

    pub(crate) fn frames(&self) -> Vec<Received> {
        self.lock().frames.clone()
    }

    pub(crate) fn frames_of(&self, cmd: &str) -> Vec<Received> {
        self.frames().into_iter().filter(|f| f.cmd() == cmd).collect()
    }

    pub(crate) fn subscribes(&self) -> usize {
        self.frames_of("aibot_subscribe").len()
    }

    /// Whether a subscribed connection is live now.
    pub(crate) fn is_live(&self) -> bool {
        self.lock().live.is_some()
    }

    /// The most connections ever open at once.
    pub(crate) fn most_open(&self) -> usize {
        self.lock().most_open
    }

    /// Waits until `ready` holds of the recorded frames, or fails after `within`.
    pub(crate) async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        ready: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let frames = self.frames();
            if ready(&frames) {
                return frames;
            }
            assert!(Instant::now() < deadline, "{what} not seen within {within:?}; frames: {frames:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a subscribed connection is live (and `count` subscribes were seen).
    pub(crate) async fn wait_live(&self, subscribes: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while !(self.is_live() && self.subscribes() >= subscribes) {
            assert!(
                Instant::now() < deadline,
                "no live subscribed connection within {within:?} ({} subscribes)",
                self.subscribes()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
