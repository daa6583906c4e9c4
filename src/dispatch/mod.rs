//! From the journal to the world: the [`Dispatcher`] handles journaled messages
//! (log line, handlers) and the [`Outbox`] performs what they asked for.
//!
//! Architecture invariant: a message is handled exactly once. The dispatcher
//! stores a message's actions and marks it handled in one transaction
//! (`Store::complete`); a crash before that commit handles it again, which queues
//! the same idempotency keys, which the outbox keeps once. The outbox is
//! at-least-once: an action is marked done only after it succeeded.
//!
//! Both loops are `select!{ cancelled, wake or tick => run_once() }`; tests call
//! `run_once()` directly.

pub(crate) mod actions;
pub(crate) mod executor;
pub(crate) mod handlers;
pub(crate) mod pacing;
pub(crate) mod parking;
pub(crate) mod record;
pub(crate) mod sending;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use actions::Action;
use executor::Executor;
use handlers::HandlerSettings;
use record::Record;

use crate::backoff::Backoff;
use crate::channels::{ChannelKind, ChannelName};
use crate::config::Channels;
use crate::egress::Egress;
use crate::health::checks::CheckClock;
use crate::kf_sync::KfSyncHandle;
use crate::messages::kf::{KfEvent, KfMessage};
use crate::messages::{clip, AppEvent, AppMessage, LoggedId, Message};
use crate::store::conversations::{Conversation, Customer, Observation};
use crate::store::journal::{EntryKind, PendingEntry};
use crate::store::outbox::{DueAction, NewAction};
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// How often the loops look for work when nobody woke them (retries, restarts).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// After a wake-up the dispatcher gathers for this long: one batch per burst
/// instead of one store round trip (and one thread switch) per callback.
const GATHER: Duration = Duration::from_millis(5);
/// Entries handled per store round trip.
const BATCH: usize = 256;
/// Actions in flight at once: a hanging receiver cannot hold up the rest.
const CONCURRENT_ACTIONS: usize = 16;
/// The longest one action may take.
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Retries back off exponentially: 1, 2, 4 … 600 s.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(600));

use crate::log_limit::SharedLogLimiter;
use crate::telemetry::OUTBOX_ACTIONS_TOTAL as ACTIONS_TOTAL;
use crate::telemetry::{
    AIBOT_CONNECTED, AIBOT_FEEDBACK_TOTAL, AIBOT_REFRESHES_TOTAL, AIBOT_STREAMS_TOTAL, KF_MESSAGES_TOTAL,
};
use crate::wecom::aibot::{AibotEvent, AibotMessage, Feedback};

/// The back-off before attempt `attempts + 1` (after `attempts` failures): 1, 2, 4 … seconds, capped.
fn backoff_secs(attempts: i64) -> i64 {
    RETRY.delay(u32::try_from(attempts.saturating_add(1)).unwrap_or(u32::MAX)).as_secs() as i64
}

/// The outbox rows of `actions`; an action that cannot be stored is logged and dropped.
fn outbox_rows(id: &str, actions: &[Action]) -> Vec<NewAction> {
    actions
        .iter()
        .filter_map(|action| {
            action
                .to_new()
                .map_err(|error| tracing::error!(id = %LoggedId(id), action = action.kind(), "cannot store an action: {error}"))
                .ok()
        })
        .collect()
}

/// The loop both workers share: run a batch; go straight on when it was full,
/// else wait for a wake-up (then gather for `gather`) or the idle tick.
async fn work_loop<F, Fut>(name: &str, shutdown: &CancellationToken, wake: &Notify, gather: Duration, mut run_once: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, StoreError>>,
{
    // A store outage fails every round: ten lines a minute say so.
    let log = SharedLogLimiter::default();
    loop {
        match run_once().await {
            Ok(done) if done == BATCH => continue,
            Ok(_) => {}
            Err(error) => {
                if let Some(more) = log.admit(name) {
                    tracing::error!("{name}: {error}{more}");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(gather) => {}
                }
            }
            () = tokio::time::sleep(IDLE_TICK) => {}
        }
    }
}

/// The typed message of a journal entry.
pub(crate) fn parse_entry(entry: &PendingEntry) -> Result<Message, String> {
    match entry.kind {
        EntryKind::KfMessage => serde_json::from_str(&entry.payload)
            .map_err(|e| e.to_string())
            .and_then(|raw| KfMessage::parse(raw).map_err(|e| e.to_string()))
            .map(Message::Kf),
        EntryKind::Callback => AppMessage::parse(&entry.payload)
            .map(|message| Message::App { channel: entry.channel.clone(), message })
            .map_err(|e| e.to_string()),
        EntryKind::Aibot => AibotMessage::parse(&entry.payload)
            .map(|message| Message::Aibot { channel: entry.channel.clone(), message })
            .map_err(|e| e.to_string()),
    }
}

/// The typed message of `entry`: the route's own parse when the hand-off
/// carried it (`PendingEntry::parsed`, taken), else [`parse_entry`].
fn message_of(entry: &mut PendingEntry) -> Result<Message, String> {
    if let (EntryKind::Callback, Some(parsed)) = (entry.kind, entry.parsed.take()) {
        match parsed.downcast::<AppMessage>() {
            Ok(message) => {
                // Both are `AppMessage::parse` of the same bytes; the tests hold them to it.
                debug_assert_eq!(AppMessage::parse(&entry.payload).as_ref().ok(), Some(&*message), "hand-off");
                return Ok(Message::App { channel: entry.channel.clone(), message: Arc::unwrap_or_clone(message) });
            }
            Err(_) => debug_assert!(false, "a callback route's parse is an AppMessage"),
        }
    }
    parse_entry(entry)
}

/// What handling one entry produced.
#[derive(Debug, Default)]
struct Handled {
    actions: Vec<Action>,
    /// A `msg_send_fail`: the msgid WeCom could not deliver, why, and to whom.
    undelivered: Option<sending::Undelivered>,
}

/// What one batch knows of the kf conversations it touches: everything it
/// observed (stored before its actions are queued), and, for a customer who asks
/// for a human, whether a human has the session already: read from the store
/// the first time, then moved by the batch's own observations in order.
#[derive(Debug, Default)]
struct Sessions {
    observed: Vec<(Customer, Observation)>,
    known: HashMap<Customer, Conversation>,
}

impl Sessions {
    /// Whether a human has `customer`'s session, as far as the store and this
    /// batch so far tell.
    async fn human_has(&mut self, store: &Store, customer: &Customer) -> Result<bool, StoreError> {
        if !self.known.contains_key(customer) {
            let mut conversation = store.kf_conversation(customer.clone()).await?.unwrap_or_default();
            for (_, observation) in self.observed.iter().filter(|(c, _)| c == customer) {
                conversation.observe(*observation);
            }
            self.known.insert(customer.clone(), conversation);
        }
        Ok(self.known.get(customer).is_some_and(|c| c.human_since.is_some()))
    }

    fn observe(&mut self, observations: Vec<(Customer, Observation)>) {
        for (customer, observation) in &observations {
            if let Some(conversation) = self.known.get_mut(customer) {
                conversation.observe(*observation);
            }
        }
        self.observed.extend(observations);
    }
}

/// Turns journaled messages into handled ones.
#[derive(Debug, Clone)]
pub(crate) struct Dispatcher {
    pub store: Store,
    pub settings: HandlerSettings,
    /// Woken by the callback route after each journaled message.
    pub wake: Arc<Notify>,
    /// Woken when actions were queued.
    pub outbox_wake: Arc<Notify>,
    /// Where `kf_msg_or_event` notices go; `None` when no Secret may call kf APIs.
    pub kf_sync: Option<KfSyncHandle>,
    pub metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// Makes the series of the kf msgtypes it counts exist at zero for every
    /// kf channel (the other values are counted as they come).
    pub(crate) fn declare(metrics: &Metrics, channels: &Channels) {
        for channel in channels.iter().filter(|c| c.kind() == ChannelKind::Kf) {
            for msgtype in KfMessage::KNOWN_MSGTYPES {
                metrics.declare(
                    KF_MESSAGES_TOTAL,
                    &[("channel", channel.name.to_string()), ("msgtype", (*msgtype).to_owned())],
                );
            }
        }
        // Every AI bot's series (SPEC §13), from the first scrape.
        for bot in channels.iter().filter(|c| c.kind() == crate::channels::ChannelKind::Aibot) {
            let channel = || ("channel", bot.name.to_string());
            for outcome in ["finished", "late", "expired"] {
                metrics.declare(AIBOT_STREAMS_TOTAL, &[channel(), ("outcome", outcome.to_owned())]);
            }
            metrics.declare(AIBOT_REFRESHES_TOTAL, &[channel()]);
            for verdict in Feedback::ALL {
                metrics.declare(AIBOT_FEEDBACK_TOTAL, &[channel(), ("type", verdict.as_str().to_owned())]);
            }
            // Down until a long connection subscribes (`aibot_ws` sets it); always 0 in callback mode.
            metrics.gauge(AIBOT_CONNECTED, &[channel()]).set(0.0);
        }
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        work_loop("dispatcher", &shutdown, &self.wake, GATHER, || self.run_once()).await;
    }

    /// Handles one batch of pending entries; returns how many.
    pub(crate) async fn run_once(&self) -> Result<usize, StoreError> {
        let mut entries = self.store.claim_entries(BATCH).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let mut sessions = Sessions::default();
        let mut undelivered = Vec::new();
        let mut completions: Vec<(i64, Vec<NewAction>)> = Vec::with_capacity(entries.len());
        for entry in &mut entries {
            let handled = self.handle(entry, &mut sessions).await?;
            undelivered.extend(handled.undelivered);
            completions.push((entry.id, outbox_rows(&entry.dedup_key, &handled.actions)));
        }
        let queued = completions.iter().any(|(_, actions)| !actions.is_empty());
        // What the kf rules need is stored before the replies it governs are
        // queued. A crash before the completion handles the entries again, and
        // observing them again changes nothing.
        self.store.observe_kf(sessions.observed).await?;
        for failure in undelivered {
            sending::delivery_failed(&self.store, &self.metrics, failure).await?;
        }
        self.store.complete_entries(completions).await?;
        if queued {
            self.outbox_wake.notify_one();
        }
        Ok(entries.len())
    }

    /// The handler chain for one entry: the log line, then the planned actions
    /// and what the message tells about its conversation (kept in `sessions`).
    async fn handle(&self, entry: &mut PendingEntry, sessions: &mut Sessions) -> Result<Handled, StoreError> {
        let message = message_of(entry);
        let entry = &*entry;
        let id = entry.dedup_key.as_str();
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                // It parsed when it was received; only a newer, stricter parser gets here.
                tracing::error!(id = %LoggedId(id), "journaled message no longer parses: {error}");
                return Ok(Handled::default());
            }
        };
        let history = match &message {
            Message::Kf(kf) => {
                let msgtype = clip(kf.normalized_msgtype(), 32).into_owned();
                let labels = [("channel", entry.channel.to_string()), ("msgtype", msgtype)];
                self.metrics.counter(KF_MESSAGES_TOTAL, &labels).increment(1);
                let history = self.settings.is_history(kf.send_time);
                let note = if history { " (history: recorded, not answered)" } else { "" };
                tracing::info!(channel = entry.channel.as_str(), id = %LoggedId(id), open_kfid = %LoggedId(&kf.open_kfid), "{}{note}", kf.summary());
                history
            }
            Message::App { channel, message: app } => {
                tracing::info!(channel = channel.as_str(), id = %LoggedId(id), "{}", app.summary());
                if let Some(AppEvent::KfMsgOrEvent { token, open_kfid }) = app.event() {
                    self.request_kf_sync(id, &entry.channel, open_kfid.as_ref(), token.as_ref());
                }
                false
            }
            Message::Aibot { channel, message: aibot } => {
                tracing::info!(channel = channel.as_str(), id = %LoggedId(id), "{}", aibot.summary());
                if let Some(AibotEvent::Feedback { verdict }) = aibot.event() {
                    // Counted here, once per event: WeCom's retries are journaled once.
                    self.metrics
                        .counter(
                            AIBOT_FEEDBACK_TOTAL,
                            &[("channel", channel.to_string()), ("type", verdict.as_str().to_owned())],
                        )
                        .increment(1);
                }
                false
            }
        };
        let source = record::source_of(&self.settings.channels, entry);
        let record = Record::new(entry.dedup_key.clone(), source, &message, &entry.payload, entry.received_at, history);
        let undelivered = match &message {
            Message::Kf(kf) => match kf.event() {
                Some(KfEvent::MsgSendFail { fail_msgid: Some(msgid), fail_type }) => Some(sending::Undelivered {
                    msgid: msgid.clone(),
                    fail_type: *fail_type,
                    customer: handlers::customer_of(&message, &record),
                }),
                _ => None,
            },
            Message::App { .. } | Message::Aibot { .. } => None,
        };
        let human_has_session = match handlers::customer_of(&message, &record) {
            Some(customer) if handlers::asks_for_human(&message, &record, &self.settings) => {
                sessions.human_has(&self.store, &customer).await?
            }
            _ => false,
        };
        let actions = handlers::plan(&message, &record, &self.settings, human_has_session);
        sessions.observe(handlers::observe(&message, &record, &self.settings));
        Ok(Handled { actions, undelivered })
    }

    /// Hands a `kf_msg_or_event` notice to the kf syncer.
    fn request_kf_sync(&self, id: &str, channel: &ChannelName, open_kfid: Option<&String>, token: Option<&String>) {
        match (&self.kf_sync, open_kfid) {
            (Some(sync), Some(open_kfid)) => sync.request(channel.clone(), open_kfid.clone(), token.cloned()),
            (None, _) => {
                tracing::warn!(id = %LoggedId(id), "kf notice ignored: no Secret can call kf APIs (set WECOM_KF_SECRET)")
            }
            (_, None) => tracing::warn!(id = %LoggedId(id), "kf notice without OpenKfId ignored"),
        }
    }
}

/// Performs queued actions with retries, texts paced under WeCom's limits.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    store: Store,
    executor: Arc<Executor>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// A failing receiver (FORWARD_URL down) fails every action of its kind:
    /// ten lines a minute per kind say so, the metrics count each.
    log: Arc<SharedLogLimiter>,
    /// This replica's windows of texts sent (held for no await).
    pacer: Arc<Mutex<pacing::Pacer>>,
    /// Channels whose egress IP WeCom refuses (60020), parked (held for no await).
    parking: Arc<Mutex<parking::Parking>>,
    /// Whether WeCom refuses a channel's IP, and the clock parking counts in.
    egress: Option<(Arc<Egress>, Arc<CheckClock>)>,
}

/// The kind of action [`Outbox::pace`] may put off on a channel of `kind`: its texts.
fn paced_kind(kind: ChannelKind) -> Option<&'static str> {
    match kind {
        ChannelKind::App => Some("app_text"),
        ChannelKind::Kf => Some("kf_text"),
        ChannelKind::Aibot => None,
    }
}

/// The `channel` label of an action that no longer parses.
const UNREADABLE_CHANNEL: &str = "unknown";

impl Outbox {
    /// Each channel's paced counts (what `deploy/`'s dashboard shows) exist from zero.
    pub(crate) fn new(
        store: Store,
        executor: Arc<Executor>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        channels: &Channels,
    ) -> Self {
        for channel in channels.iter() {
            if let Some(kind) = paced_kind(channel.kind()) {
                let labels =
                    [("channel", channel.name.to_string()), ("kind", kind.to_owned()), ("outcome", "paced".to_owned())];
                metrics.declare(ACTIONS_TOTAL, &labels);
            }
        }
        Self {
            store,
            executor,
            metrics,
            wake,
            log: Arc::default(),
            pacer: Arc::default(),
            parking: Arc::default(),
            egress: None,
        }
    }

    /// The same outbox, parking a channel while WeCom refuses its IP (SPEC §14).
    pub(crate) fn with_parking(self, egress: Arc<Egress>, clock: Arc<CheckClock>) -> Self {
        Self { egress: Some((egress, clock)), ..self }
    }

    /// Whether `action` may call WeCom now, for a parked channel (one trial a
    /// minute) or any other.
    fn park(&self, action: &Action, id: i64) -> Option<(ChannelName, parking::Decision)> {
        let (egress, clock) = self.egress.as_ref()?;
        let channel = action.wecom_channel()?;
        let mut parking = self.parking.lock().unwrap_or_else(|e| e.into_inner());
        Some((channel.clone(), parking.admit(channel, egress.refused(channel), id, clock.now())))
    }

    /// Releases what parked channels may send now: everything of a channel WeCom
    /// accepts again, one action of each channel whose trial is due.
    async fn release_parked(&self) {
        let Some((egress, clock)) = self.egress.as_ref() else { return };
        let ids = {
            let mut parking = self.parking.lock().unwrap_or_else(|e| e.into_inner());
            let mut ids = parking.lift(|channel| egress.refused(channel));
            ids.extend(parking.due_trials(clock.now()));
            ids
        };
        self.release(ids).await;
    }

    async fn release(&self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        match self.store.release_actions(ids).await {
            Ok(()) => self.wake.notify_one(),
            // They come back by their own due time.
            Err(error) => tracing::warn!("cannot release a parked channel's actions: {error}"),
        }
    }

    /// Whether `action` must wait for WeCom's frequency limits, and how long:
    /// texts only (an app text counts for each of its members).
    fn pace(&self, action: &Action) -> Option<Duration> {
        let members: Vec<&str> = match action {
            Action::AppText { touser, .. } => touser.split('|').collect(),
            Action::KfText { .. } => Vec::new(),
            _ => return None,
        };
        let mut pacer = self.pacer.lock().unwrap_or_else(|e| e.into_inner());
        pacer.admit(&members, Instant::now()).err()
    }

    pub(crate) async fn run(self, shutdown: CancellationToken) {
        work_loop("outbox", &shutdown, &self.wake, Duration::ZERO, || self.run_once()).await;
    }

    /// Attempts every due action once; returns how many were attempted.
    pub(crate) async fn run_once(&self) -> Result<usize, StoreError> {
        self.release_parked().await;
        let due = self.store.claim_actions(BATCH).await?;
        let attempted = due.len();
        futures_util::stream::iter(due).for_each_concurrent(CONCURRENT_ACTIONS, |item| self.attempt(item)).await;
        Ok(attempted)
    }

    async fn attempt(&self, item: DueAction) {
        let parsed = serde_json::from_str::<Action>(&item.payload);
        let channel = parsed.as_ref().map_or(UNREADABLE_CHANNEL, |action| action.channel().as_str()).to_owned();
        let label = |outcome: &str| {
            [("channel", channel.clone()), ("kind", item.kind.clone()), ("outcome", outcome.to_owned())]
        };
        if let Some(wait) = parsed.as_ref().ok().and_then(|action| self.pace(action)) {
            // Over WeCom's limit: not an error, not an attempt — it goes when the window allows.
            let after = i64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
            self.metrics.counter(ACTIONS_TOTAL, &label("paced")).increment(1);
            tracing::debug!(action = item.key.as_str(), after_secs = after, "paced: WeCom's frequency limit");
            if let Err(error) = self.store.action_deferred(&item, after).await {
                tracing::error!(action = item.key.as_str(), "cannot put the action off: {error}");
            }
            return;
        }
        let parked = parsed.as_ref().ok().and_then(|action| self.park(action, item.id));
        if let Some((channel, parking::Decision::Wait(after))) = &parked {
            // WeCom refuses the channel's IP: no call until its trial gets through.
            self.metrics.counter(ACTIONS_TOTAL, &label("parked")).increment(1);
            tracing::debug!(
                action = item.key.as_str(),
                channel = channel.as_str(),
                "parked: WeCom refuses the IP (60020)"
            );
            if let Err(error) = self.store.action_deferred(&item, after + parking::RETRY_EVERY_SECS).await {
                tracing::error!(action = item.key.as_str(), "cannot put the action off: {error}");
            }
            return;
        }
        let outcome = match parsed {
            Err(error) => Err(actions::ActionError { retry: false, message: format!("unreadable action: {error}") }),
            Ok(action) => {
                match tokio::time::timeout(ACTION_TIMEOUT, self.executor.execute(&action, item.attempts)).await {
                    Ok(result) => result,
                    Err(_) => Err(actions::ActionError {
                        retry: true,
                        message: format!("timed out after {}s", ACTION_TIMEOUT.as_secs()),
                    }),
                }
            }
        };
        let recording = match outcome {
            Ok(follow_ups) => {
                self.metrics.counter(ACTIONS_TOTAL, &label("ok")).increment(1);
                Recording::Succeeded(outbox_rows(&item.key, &follow_ups))
            }
            Err(error) if error.retry => {
                let delay = backoff_secs(item.attempts);
                self.metrics.counter(ACTIONS_TOTAL, &label("retry")).increment(1);
                if let Some(more) = self.log.admit(&item.kind) {
                    tracing::warn!(
                        action = %LoggedId(&item.key),
                        attempt = item.attempts + 1,
                        retry_in_secs = delay,
                        "{error}{more}"
                    );
                }
                Recording::Failed { delay, message: error.message }
            }
            Err(error) => {
                self.metrics.counter(ACTIONS_TOTAL, &label("failed")).increment(1);
                tracing::error!(action = %LoggedId(&item.key), "giving up: {error}");
                Recording::Abandoned(error.message)
            }
        };
        if let (Some((channel, parking::Decision::Trial)), Some((egress, clock))) = (&parked, &self.egress) {
            let released = {
                let mut parking = self.parking.lock().unwrap_or_else(|e| e.into_inner());
                parking.tried(channel, egress.refused(channel), clock.now())
            };
            if !released.is_empty() {
                tracing::info!(
                    channel = channel.as_str(),
                    "WeCom accepts the egress IP again: {} parked actions go on",
                    released.len()
                );
            }
            self.release(released).await;
        }
        let more = matches!(&recording, Recording::Succeeded(rows) if !rows.is_empty());
        match self.record(&item, &recording).await {
            Ok(()) if more => self.wake.notify_one(),
            Ok(()) => {}
            Err(error) => {
                if let Some(more) = self.log.admit("record_attempt") {
                    tracing::error!(action = %LoggedId(&item.key), "cannot record the attempt: {error}{more}");
                }
            }
        }
    }

    /// Stores what an attempt did, again and again while the store is away (a
    /// stalled or restarting database) for up to [`RECORD_RETRY_WINDOW`]: the side
    /// effect has happened, and an attempt left unrecorded is made again once its
    /// claim runs out — a second forward, a second message. Past the window, or
    /// once another owner took the claim over, it is left to the lease.
    async fn record(&self, item: &DueAction, recording: &Recording) -> Result<(), StoreError> {
        let give_up = tokio::time::Instant::now() + RECORD_RETRY_WINDOW;
        loop {
            let stored = match recording {
                Recording::Succeeded(rows) => self.store.action_succeeded(item, rows.clone()).await,
                Recording::Failed { delay, message } => self.store.action_failed(item, *delay, message.clone()).await,
                Recording::Abandoned(message) => self.store.action_abandoned(item, message.clone()).await,
            };
            match stored {
                Err(StoreError::LeaseLost) => return Err(StoreError::LeaseLost),
                Err(error) if tokio::time::Instant::now() + RECORD_RETRY_PAUSE < give_up => {
                    tracing::debug!(action = %LoggedId(&item.key), "recording the attempt again: {error}");
                    tokio::time::sleep(RECORD_RETRY_PAUSE).await;
                }
                other => return other,
            }
        }
    }
}

/// What an attempt leaves in the outbox.
enum Recording {
    /// Done, with the actions it queues next.
    Succeeded(Vec<NewAction>),
    /// Failed for now: again in `delay` seconds.
    Failed { delay: i64, message: String },
    /// Failed for good.
    Abandoned(String),
}

/// How long an attempt's bookkeeping is retried while the store does not answer
/// (shorter than the shortest lease, `LEASE_SECS` 35).
const RECORD_RETRY_WINDOW: Duration = Duration::from_secs(30);
const RECORD_RETRY_PAUSE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_paced_kinds_are_the_texts_pace_looks_at() {
        let app = actions::Recipient::App { channel: ChannelName::app(), touser: "u".into(), agentid: 1 };
        let kf = actions::Recipient::Kf { channel: ChannelName::kf(), touser: "wm".into(), open_kfid: "wk".into() };
        for (kind, to) in [(ChannelKind::App, app), (ChannelKind::Kf, kf)] {
            let text = Action::text(to, "hi", "k".into(), "s".into()).expect("a text");
            assert_eq!(paced_kind(kind), Some(text.kind()), "{kind:?}");
        }
    }

    /// The dispatcher takes a handed-off callback's parse instead of parsing
    /// again, and parses the payload of an entry that comes without one.
    #[test]
    fn a_handed_off_callback_is_not_parsed_again() {
        let xml = "<xml><MsgType>text</MsgType><Content>hi</Content><MsgId>7</MsgId></xml>";
        let message = AppMessage::parse(xml).expect("parses");
        let mut entry = PendingEntry {
            id: 1,
            dedup_key: "app:msg:7".into(),
            channel: ChannelName::app(),
            kind: EntryKind::Callback,
            received_at: 0,
            payload: xml.into(),
            parsed: Some(Arc::new(message.clone())),
        };
        let expected = Message::App { channel: ChannelName::app(), message };
        assert_eq!(message_of(&mut entry).expect("the route's parse"), expected);
        assert!(entry.parsed.is_none(), "taken, not copied");
        assert_eq!(message_of(&mut entry).expect("parsed from the payload"), expected);
        entry.payload = "not xml".into();
        assert!(message_of(&mut entry).is_err(), "without the route's parse, the payload decides");
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!((0..5).map(backoff_secs).collect::<Vec<_>>(), vec![1, 2, 4, 8, 16]);
        assert_eq!(backoff_secs(10), 600);
        assert_eq!(backoff_secs(1_000), 600);
        assert_eq!(backoff_secs(-1), 1);
    }
}
