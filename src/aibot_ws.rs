//! The AI bot's long connection (SPEC §13): for each bot configured with
//! `AIBOT_ID` + `AIBOT_SECRET` (or `bot_id` + `bot_secret`), one WebSocket to
//! `AIBOT_WS_URL` in the whole cluster, held under the lease `aibot:<name>`.
//! The holder subscribes, pings every 30 s, journals what WeCom pushes (dedup
//! by `msgid`, then handled as in callback mode by the dispatcher: forwarded),
//! answers `enter_chat` with the welcome at once, and pushes each open
//! stream's snapshot — written by whichever replica's send API or forward
//! reply — as `aibot_respond_msg` with the `req_id` of the message's first
//! delivery (kept in the stream's row), at most once a second, the last with
//! `finish: true`. On each connection it picks up from the store the streams
//! an earlier holder (dead, or this replica before a lost lease) still owed;
//! one no frame closed within the `req_id`'s 6 minutes goes to the chat whole as
//! `aibot_send_msg` once the bot finished it, and is failed `expired` only when
//! that cannot be either (24 hours after the message). Two
//! unanswered pings or a closed socket: reconnect with jittered back-off
//! (1 s doubling to 60 s, for ever). `disconnected_event`: the connection was
//! taken by another client; `health::links` says so to the check `aibot:<name>`, and
//! the holder waits 60 s before it subscribes again. Errcode 846609 on a frame:
//! subscribe again and resend it.
//!
//! The pure decisions (the back-off, what a stream frame must show) are
//! functions with their inputs passed in, tested below. Deliberately not here:
//! the frames' JSON (`wecom::aibot_ws`), the message's meaning
//! (`wecom::aibot`), the stream's life (`streams`, `store::aibot`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::callback::OpenedAibot;
use crate::config::channels::ChannelSpec;
use crate::config::{AibotSettings, WsTiming};
use crate::health::links::{Link, Links};
use crate::store::aibot::Settled;
use crate::store::journal::Recorded;
use crate::store::leases::Lease;
use crate::store::{self, Store};
use crate::streams::{self, Shown, StreamOpen, StreamRow};
use crate::telemetry::{Metrics, AIBOT_CONNECTED, AIBOT_STREAMS_TOTAL};
use crate::wecom::aibot::{AibotEvent, AibotMessage};
use crate::wecom::aibot_ws::{self as frames, Frame, Inbound};

/// How often a replica that does not hold a bot's lease asks for it again.
const LEASE_POLL: Duration = Duration::from_secs(5);
/// How often the holder renews its lease (`LEASE_SECS` is at least 35).
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often open streams are looked at: at most one frame a second per stream.
const PUSH_EVERY: Duration = Duration::from_secs(1);

/// The delay before reconnect attempt `failures` (1, 2, …): the back-off's
/// delay scaled by `jitter` in `0.0..1.0` to between half and all of it, so
/// replicas and bots restarted together do not reconnect in step.
pub(crate) fn reconnect_delay(timing: &WsTiming, failures: u32, jitter: f64) -> Duration {
    let full = Backoff::new(timing.backoff_first, timing.backoff_cap).delay(failures);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Whether a stream snapshot must be pushed: it differs from the last one pushed.
pub(crate) fn must_push(last: Option<&Shown>, now: &Shown) -> bool {
    last != Some(now)
}

/// Why a session ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    /// `disconnected_event`: another client subscribed.
    Taken,
    /// The lease went to another replica.
    LeaseLost,
    /// The socket closed, two pings went unanswered, or the subscribe failed: the reason.
    Lost(String),
}

/// A stream this holder pushes.
#[derive(Debug)]
struct Tracked {
    req_id: String,
    userid: String,
    /// Where `aibot_send_msg` goes: the group, else the user.
    chatid: String,
    /// When the user's message arrived: its `req_id` carries frames for
    /// `streams::RESPOND_MSG_SECS` from here.
    created_at: i64,
    last: Option<Shown>,
    /// The stream showed `finish: true`; what it could not show may still be owed.
    closed: bool,
}

impl Tracked {
    /// `row` as the store keeps it, answered under its stored `req_id` (else
    /// `req_id`, the delivery at hand). A stream the store has as closed is
    /// shown again while its `req_id` still carries frames: the store marks it
    /// closed before its last frame goes out, and a holder that died (or a
    /// socket that broke) in between must not take that frame with it. WeCom
    /// replaces a stream's content, so a frame sent twice shows nothing twice.
    fn from_row(row: StreamRow, req_id: &str) -> Self {
        let opened = row.opened;
        let mut tracked = Self {
            req_id: opened.req_id.unwrap_or_else(|| req_id.to_owned()),
            chatid: opened.chatid.unwrap_or_else(|| opened.userid.clone()),
            userid: opened.userid,
            created_at: opened.created_at,
            last: None,
            closed: row.delivered,
        };
        tracked.reshow(store::now());
        tracked
    }

    /// After a lost connection (or when read from the store): nothing this
    /// stream showed may have reached WeCom, so it is shown again while its
    /// `req_id` carries frames.
    fn reshow(&mut self, now: i64) {
        if !streams::frames_expired(self.created_at, now) {
            self.last = None;
            self.closed = false;
        }
    }
}

/// One long-connection bot's worker.
pub(crate) struct BotLink {
    pub(crate) channel: Arc<ChannelSpec>,
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) journal_wake: Arc<Notify>,
    pub(crate) settings: AibotSettings,
    pub(crate) links: Arc<Links>,
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl BotLink {
    /// Holds the bot's connection whenever this replica holds its lease, until `shutdown`.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let name = self.channel.name.clone();
        let link = self.links.link(&name);
        let timing = self.settings.ws;
        let mut failures: u32 = 0;
        let mut streams: HashMap<String, Tracked> = HashMap::new();
        let mut subscribes: u64 = 0;
        loop {
            let lease = match self.store.claim_lease(format!("aibot:{name}")).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    if sleep_or_stop(&shutdown, LEASE_POLL).await {
                        return;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(channel = %name, "aibot long connection: cannot claim the lease: {error}");
                    if sleep_or_stop(&shutdown, LEASE_POLL).await {
                        return;
                    }
                    continue;
                }
            };
            tracing::info!(channel = %name, claim = lease.claim, "aibot long connection: this replica holds it");
            // Holding the lease: connect, and reconnect for as long as it holds.
            loop {
                let ended = self.session(&lease, &link, &mut streams, &mut subscribes, &shutdown).await;
                link.lost();
                let now = store::now();
                streams.values_mut().for_each(|tracked| tracked.reshow(now));
                self.metrics.gauge(AIBOT_CONNECTED, &[("channel", name.to_string())]).set(0.0);
                let wait = match &ended {
                    Ended::Shutdown => {
                        let _ = self.store.release_lease(lease).await;
                        return;
                    }
                    Ended::LeaseLost => {
                        tracing::warn!(channel = %name, "aibot long connection: the lease went to another replica");
                        break;
                    }
                    Ended::Taken => {
                        tracing::error!(
                            channel = %name,
                            "aibot long connection: another client subscribed with this bot's Secret (disconnected_event); subscribing again in {}s",
                            timing.kicked_wait.as_secs()
                        );
                        failures = 0;
                        timing.kicked_wait
                    }
                    Ended::Lost(reason) => {
                        failures = failures.saturating_add(1);
                        let delay = reconnect_delay(&timing, failures, rand::random::<f64>());
                        tracing::warn!(channel = %name, failures, "aibot long connection lost ({reason}); reconnecting in {delay:?}");
                        delay
                    }
                };
                if !self.wait_holding(&lease, wait, &shutdown).await {
                    if shutdown.is_cancelled() {
                        let _ = self.store.release_lease(lease).await;
                        return;
                    }
                    break;
                }
            }
        }
    }

    /// Waits `wait` while renewing the lease: `false` when it was lost or on shutdown.
    async fn wait_holding(&self, lease: &Lease, wait: Duration, shutdown: &CancellationToken) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                return true;
            }
            if sleep_or_stop(shutdown, (until - now).min(LEASE_RENEW)).await {
                return false;
            }
            if !matches!(self.store.renew_lease(lease.clone()).await, Ok(true)) {
                return false;
            }
        }
    }

    /// One connection: connect, subscribe, then serve it until it ends.
    async fn session(
        &self,
        lease: &Lease,
        link: &Link,
        streams: &mut HashMap<String, Tracked>,
        subscribes: &mut u64,
        shutdown: &CancellationToken,
    ) -> Ended {
        let name = self.channel.name.to_string();
        let Some((bot_id, secret)) = self.channel.long_connection() else { return Ended::Shutdown };
        let timing = self.settings.ws;
        let connect = tokio_tungstenite::connect_async(self.settings.ws_url.as_str());
        let mut socket: Socket = match tokio::time::timeout(timing.answer_timeout, connect).await {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(error)) => return Ended::Lost(format!("cannot connect: {error}")),
            Err(_) => return Ended::Lost("cannot connect within the timeout".into()),
        };
        *subscribes += 1;
        let subscribe_id = format!("aibot_subscribe_{}", *subscribes);
        let subscribe = frames::subscribe(&subscribe_id, bot_id, secret.expose());
        if let Err(error) = socket.send(WsMessage::text(subscribe.clone())).await {
            return Ended::Lost(format!("cannot subscribe: {error}"));
        }
        // The subscribe's answer; a callback pushed before it is served after.
        let mut early: Vec<Inbound> = Vec::new();
        let answer = tokio::time::timeout(timing.answer_timeout, async {
            while let Some(message) = socket.next().await {
                let Ok(WsMessage::Text(text)) = message else { continue };
                match Frame::parse(&text).map(Frame::inbound) {
                    Some(Inbound::Answer { req_id, errcode, errmsg }) if req_id == subscribe_id => {
                        return Some((errcode, errmsg));
                    }
                    Some(callback @ Inbound::Callback { .. }) => early.push(callback),
                    _ => {}
                }
            }
            None
        })
        .await;
        match answer {
            Ok(Some((0, _))) => {}
            Ok(Some((errcode, errmsg))) => {
                return Ended::Lost(format!("subscribe refused: errcode {errcode} {errmsg}"))
            }
            Ok(None) => return Ended::Lost("closed before the subscribe was answered".into()),
            Err(_) => return Ended::Lost("the subscribe was not answered in time".into()),
        }
        tracing::info!(channel = %name, "aibot long connection: subscribed");
        link.subscribed();
        self.metrics.gauge(AIBOT_CONNECTED, &[("channel", name.clone())]).set(1.0);

        let mut ping = tokio::time::interval(timing.ping);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut push = tokio::time::interval(PUSH_EVERY);
        push.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(LEASE_RENEW);
        renew.tick().await;
        let mut unanswered: u32 = 0;
        let mut pings: u64 = 0;
        // The streams owed by an earlier holder (or this one before a lost
        // lease) are read from the store once per connection, until that works.
        let mut picked_up = false;
        // The last frame sent under each req_id, until WeCom accepts it: resent after 846609.
        let mut unacknowledged: HashMap<String, String> = HashMap::new();
        for callback in early {
            if let Inbound::Callback { event: Some(event), .. } = &callback {
                if event == frames::DISCONNECTED_EVENT {
                    link.taken(store::now());
                    return Ended::Taken;
                }
            }
            if let Inbound::Callback { req_id, body, .. } = callback {
                if let Some(welcome) = self.received(&req_id, body, streams).await {
                    unacknowledged.insert(req_id, welcome.clone());
                    if let Err(error) = socket.send(WsMessage::text(welcome)).await {
                        return Ended::Lost(format!("cannot send the welcome: {error}"));
                    }
                }
            }
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return Ended::Shutdown;
                }
                message = socket.next() => {
                    let text = match message {
                        Some(Ok(WsMessage::Text(text))) => text,
                        Some(Ok(WsMessage::Close(_))) | None => return Ended::Lost("the server closed the connection".into()),
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => return Ended::Lost(format!("read failed: {error}")),
                    };
                    let Some(frame) = Frame::parse(&text) else { continue };
                    match frame.inbound() {
                        Inbound::Answer { req_id, errcode, errmsg } => {
                            if req_id.starts_with("ping_") {
                                unanswered = 0;
                            } else if errcode == frames::NOT_SUBSCRIBED {
                                tracing::warn!(channel = %name, "aibot long connection: 846609 (not subscribed): subscribing again and resending");
                                *subscribes += 1;
                                let again = frames::subscribe(&format!("aibot_subscribe_{}", *subscribes), bot_id, secret.expose());
                                if let Err(error) = socket.send(WsMessage::text(again)).await {
                                    return Ended::Lost(format!("cannot subscribe again: {error}"));
                                }
                                if let Some(frame) = unacknowledged.get(&req_id) {
                                    if let Err(error) = socket.send(WsMessage::text(frame.clone())).await {
                                        return Ended::Lost(format!("cannot resend: {error}"));
                                    }
                                }
                            } else {
                                if errcode != 0 {
                                    tracing::warn!(channel = %name, errcode, "aibot long connection: a frame was refused: {errmsg}");
                                }
                                unacknowledged.remove(&req_id);
                            }
                        }
                        Inbound::Callback { event: Some(event), .. } if event == frames::DISCONNECTED_EVENT => {
                            link.taken(store::now());
                            let _ = socket.close(None).await;
                            return Ended::Taken;
                        }
                        Inbound::Callback { req_id, body, .. } => {
                            if let Some(welcome) = self.received(&req_id, body, streams).await {
                                unacknowledged.insert(req_id, welcome.clone());
                                if let Err(error) = socket.send(WsMessage::text(welcome)).await {
                                    return Ended::Lost(format!("cannot send the welcome: {error}"));
                                }
                            }
                        }
                    }
                }
                _ = ping.tick() => {
                    if unanswered >= 2 {
                        return Ended::Lost("two pings went unanswered".into());
                    }
                    pings += 1;
                    unanswered += 1;
                    if let Err(error) = socket.send(WsMessage::text(frames::ping(&format!("ping_{pings}")))).await {
                        return Ended::Lost(format!("cannot ping: {error}"));
                    }
                }
                _ = push.tick() => {
                    if !picked_up {
                        picked_up = self.pick_up(streams).await;
                    }
                    for (req_id, frame) in self.snapshots(streams).await {
                        unacknowledged.insert(req_id, frame.clone());
                        if let Err(error) = socket.send(WsMessage::text(frame)).await {
                            return Ended::Lost(format!("cannot send an answer: {error}"));
                        }
                    }
                }
                _ = renew.tick() => {
                    match self.store.renew_lease(lease.clone()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = socket.close(None).await;
                            return Ended::LeaseLost;
                        }
                        // The store is unreachable: keep the connection; the next renewal tells.
                        Err(error) => tracing::warn!(channel = %name, "aibot long connection: cannot renew the lease: {error}"),
                    }
                }
            }
        }
    }

    /// A pushed message or event: journaled (dedup by `msgid`) for the
    /// dispatcher, its stream opened and tracked under the first delivery's
    /// `req_id`. Returns the welcome frame to send for `enter_chat`.
    async fn received(
        &self,
        req_id: &str,
        body: serde_json::Value,
        streams: &mut HashMap<String, Tracked>,
    ) -> Option<String> {
        let name = &self.channel.name;
        let json = body.to_string();
        let message = match AibotMessage::parse(&json) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(channel = %name, "aibot long connection: a callback was dropped: {error}");
                return None;
            }
        };
        let opened = OpenedAibot { channel: Arc::clone(&self.channel), json, message };
        let userid = opened.message.userid.clone().unwrap_or_default();
        let now = store::now();
        let open = opened.stream_open(None, now).map(|open| StreamOpen { req_id: Some(req_id.to_owned()), ..open });
        let stream_id = open.as_ref().map(|open| open.stream_id.clone());
        if let Some(open) = open {
            if let Err(error) = self.store.aibot_open(open).await {
                tracing::error!(channel = %name, "aibot long connection: cannot open a stream: {error}");
                return None;
            }
        }
        match self.store.journal(opened.journal_entry()).await {
            Ok(Recorded::New(_)) => self.journal_wake.notify_one(),
            Ok(Recorded::Duplicate) => {}
            Err(error) => {
                tracing::error!(channel = %name, "aibot long connection: cannot journal a callback: {error}");
                return None;
            }
        }
        if let Some(stream_id) = stream_id.filter(|id| !streams.contains_key(id)) {
            // The first delivery's req_id answers it, as the store kept it (a
            // redelivery, maybe to a later holder, changes nothing).
            let tracked = match self.store.aibot_stream(stream_id.clone()).await {
                Ok(Some(row)) => Tracked::from_row(row, req_id),
                Ok(None) | Err(_) => Tracked {
                    req_id: req_id.to_owned(),
                    chatid: opened.message.chatid.clone().unwrap_or_else(|| userid.clone()),
                    userid,
                    created_at: now,
                    last: None,
                    closed: false,
                },
            };
            streams.insert(stream_id, tracked);
        }
        match (opened.message.event(), self.channel.welcome_text.as_deref()) {
            (Some(AibotEvent::EnterChat), Some(welcome)) => Some(frames::respond_welcome(req_id, welcome)),
            _ => None,
        }
    }

    /// The frames owed to open streams now: each stream whose snapshot changed,
    /// as read (and closed once finished or past the deadline) from the store.
    async fn snapshots(&self, streams: &mut HashMap<String, Tracked>) -> Vec<(String, String)> {
        let deadline = i64::try_from(self.settings.deadline.as_secs()).unwrap_or(i64::MAX);
        let now = store::now();
        let mut owed = Vec::new();
        let mut done = Vec::new();
        for (stream_id, tracked) in streams.iter_mut() {
            // No frame closed it while its req_id could (a holder died with it
            // open, and none took over in time): the chat is sent the whole
            // answer once the bot finished it, as a late stream's rest.
            let expired = !tracked.closed && streams::frames_expired(tracked.created_at, now);
            if tracked.closed || expired {
                let unshown = if expired { Unshown::Whole } else { Unshown::Rest };
                match self.rest(stream_id, tracked, unshown).await {
                    Rest::Wait => {}
                    Rest::Done => done.push(stream_id.clone()),
                    Rest::Send(frame) => {
                        owed.push((format!("aibot_send_msg_{stream_id}"), frame));
                        done.push(stream_id.clone());
                    }
                }
                continue;
            }
            let refreshed =
                self.store.aibot_refresh(stream_id.clone(), Some(tracked.userid.clone()), now, deadline).await;
            let refreshed = match refreshed {
                Ok(Some(refreshed)) => refreshed,
                Ok(None) => {
                    done.push(stream_id.clone());
                    continue;
                }
                Err(error) => {
                    tracing::warn!(channel = %self.channel.name, "aibot long connection: cannot read a stream: {error}");
                    continue;
                }
            };
            if refreshed.closed_now {
                let outcome = if refreshed.late_now { "late" } else { "finished" };
                self.metrics
                    .counter(
                        AIBOT_STREAMS_TOTAL,
                        &[("channel", self.channel.name.to_string()), ("outcome", outcome.to_owned())],
                    )
                    .increment(1);
            }
            let shown = streams::shown(&refreshed.row, &self.settings.late_text);
            if must_push(tracked.last.as_ref(), &shown) {
                owed.push((
                    tracked.req_id.clone(),
                    frames::respond_stream(&tracked.req_id, stream_id, &shown.content, shown.finish),
                ));
            }
            // Closed: finished (maybe cut), or late; the rest, if any, goes as aibot_send_msg.
            tracked.closed = shown.finish;
            tracked.last = Some(shown);
        }
        for stream_id in done {
            streams.remove(&stream_id);
            // Not found again by the next holder; should this fail, it finds
            // the stream done and records it then.
            if let Err(error) = self.store.aibot_pushed(stream_id).await {
                tracing::warn!(channel = %self.channel.name, "aibot long connection: cannot record a stream as done: {error}");
            }
        }
        owed
    }

    /// Adds the streams the store says are still owed on this connection
    /// (opened under an earlier holder, which died or lost the lease) to
    /// `streams`: `true` once read.
    async fn pick_up(&self, streams: &mut HashMap<String, Tracked>) -> bool {
        match self.store.aibot_pushing(self.channel.name.clone()).await {
            Ok(rows) => {
                let found = rows.len();
                for row in rows {
                    let stream_id = row.opened.stream_id.clone();
                    streams.entry(stream_id).or_insert_with(|| Tracked::from_row(row, ""));
                }
                if found > 0 {
                    tracing::info!(channel = %self.channel.name, streams = found, "aibot long connection: picked up the streams still owed");
                }
                true
            }
            Err(error) => {
                tracing::warn!(channel = %self.channel.name, "aibot long connection: cannot read the streams still owed: {error}");
                false
            }
        }
    }
}

/// Which part of an answer the chat is sent.
#[derive(Clone, Copy)]
enum Unshown {
    /// What the closed stream did not show.
    Rest,
    /// All of it: no frame showed it closed.
    Whole,
}

/// What a closed stream still owes.
enum Rest {
    /// The bot has not finished (a late stream): look again later.
    Wait,
    /// Nothing (more) is owed.
    Done,
    /// This `aibot_send_msg` frame, whose one use is taken.
    Send(String),
}

impl BotLink {
    /// What the stream could not show (past its cut, or after a late close),
    /// pushed to the chat as markdown once, within 24 h of the message.
    async fn rest(&self, stream_id: &str, tracked: &Tracked, unshown: Unshown) -> Rest {
        let row = match self.store.aibot_stream(stream_id.to_owned()).await {
            Ok(Some(row)) => row,
            Ok(None) => return Rest::Done,
            Err(error) => {
                tracing::warn!(channel = %self.channel.name, "aibot long connection: cannot read a stream: {error}");
                return Rest::Wait;
            }
        };
        if row.rest_sent || row.failed.is_some() {
            return Rest::Done;
        }
        let now = store::now();
        let refused = streams::send_refused(&row, now);
        let owed = match unshown {
            Unshown::Rest => streams::rest(&row),
            Unshown::Whole => streams::whole(&row),
        };
        let Some(rest) = owed else {
            return match (row.finished, refused, unshown) {
                (false, Some("expired"), _) => self.lost(stream_id, "expired").await,
                (false, _, _) => Rest::Wait,
                // A finished answer with nothing to send, that no frame showed.
                (true, _, Unshown::Whole) => self.lost(stream_id, "expired").await,
                (true, _, Unshown::Rest) => Rest::Done,
            };
        };
        if let Some(reason) = refused {
            return self.lost(stream_id, reason).await;
        }
        match self.store.aibot_take_response(stream_id.to_owned()).await {
            Ok(true) => {}
            Ok(false) => return Rest::Done,
            Err(_) => return Rest::Wait,
        }
        let settled = rest.lost().map_or(Settled::Sent, Settled::Failed);
        if let Settled::Failed(reason) = &settled {
            // Counted as the callback mode's executor counts it.
            tracing::warn!(channel = %self.channel.name, "aibot long connection: an answer's rest is not delivered whole: {reason}");
            self.count_expired();
        }
        if let Err(error) = self.store.aibot_settle(stream_id.to_owned(), settled).await {
            tracing::warn!(channel = %self.channel.name, "aibot long connection: cannot record the rest as sent: {error}");
        }
        Rest::Send(frames::send_markdown(&format!("aibot_send_msg_{stream_id}"), &tracked.chatid, &rest.text))
    }

    /// One more answer not delivered (whole): `wechat_api_aibot_streams_total{outcome="expired"}`.
    fn count_expired(&self) {
        self.metrics
            .counter(
                AIBOT_STREAMS_TOTAL,
                &[("channel", self.channel.name.to_string()), ("outcome", "expired".to_owned())],
            )
            .increment(1);
    }

    /// Records the answer of `stream_id` as lost (`expired`, or the rest sent already).
    async fn lost(&self, stream_id: &str, reason: &str) -> Rest {
        tracing::warn!(channel = %self.channel.name, "aibot long connection: an answer (or its rest) is not delivered: {reason}");
        self.count_expired();
        match self.store.aibot_settle(stream_id.to_owned(), Settled::Failed(reason.to_owned())).await {
            Ok(()) => Rest::Done,
            Err(_) => Rest::Wait,
        }
    }
}

/// Sleeps `delay`; `true` when shutdown came first.
async fn sleep_or_stop(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_from_one_second_to_at_most_sixty_with_jitter_and_never_give_up() {
        let timing = WsTiming::default();
        assert_eq!(reconnect_delay(&timing, 1, 1.0), Duration::from_secs(1));
        assert_eq!(reconnect_delay(&timing, 1, 0.0), Duration::from_millis(500));
        assert_eq!(reconnect_delay(&timing, 3, 1.0), Duration::from_secs(4));
        for failures in [7, 100, u32::MAX] {
            let delay = reconnect_delay(&timing, failures, 0.99);
            assert!(delay <= Duration::from_secs(60) && delay >= Duration::from_secs(30), "{delay:?}");
        }
    }

    #[test]
    fn a_snapshot_is_pushed_only_when_it_changed() {
        let shown = Shown { content: "a".into(), finish: false };
        assert!(must_push(None, &shown));
        assert!(!must_push(Some(&shown), &shown));
        assert!(must_push(Some(&shown), &Shown { content: "a".into(), finish: true }));
    }
}
