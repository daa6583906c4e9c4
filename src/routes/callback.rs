//! `GET` (URL verification) and `POST` (messages) on the callback paths: the
//! shared ones and each channel's own, `/api/v1/wecom/callback/<name>`.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::callback::{CallbackError, CallbackQuery, OpenedCallback, Outcome};
use crate::channels::{ChannelKind, ChannelName};
use crate::config::ChannelSpec;
use crate::routes::AppState;
use crate::store::aibot::Refreshed;
use crate::store::journal::{EntryKind, NewEntry, Recorded};
use crate::store::{self, StoreError};
use crate::streams;
use crate::telemetry::{AIBOT_REFRESHES_TOTAL, AIBOT_STREAMS_TOTAL};
use crate::wecom::aibot::{self, AibotEvent, AibotKind};

/// Real callback bodies are a few KiB; anything near this is not from WeCom.
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// The 404 of a per-channel path whose name no channel has: counted and logged.
fn unknown_channel(request: &HttpRequest, state: &AppState) -> HttpResponse {
    log_refusal(state, request, Outcome::UnknownChannel, &"no channel of that name");
    state.metrics.record_callback(None, Outcome::UnknownChannel, None);
    HttpResponse::NotFound().content_type("text/plain; charset=utf-8").body("no channel of that name\n")
}

/// URL verification on a shared path: answer the decrypted `echostr` as plain text.
pub(crate) async fn verify_url(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let started = Instant::now();
    let verified = CallbackQuery::parse(request.query_string())
        .and_then(|q| state.credentials.verify_url(&q, crate::store::now()));
    match verified {
        Ok((channel, echo)) => verified_url(&request, &state, &channel.name, echo, started),
        Err(error) => reject(&state, &request, None, &error),
    }
}

/// URL verification on a channel's own path.
pub(crate) async fn verify_url_on(
    request: HttpRequest,
    name: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let Some(channel) = state.credentials.channel(&name).cloned() else {
        return unknown_channel(&request, &state);
    };
    let verified = CallbackQuery::parse(request.query_string())
        .and_then(|q| state.credentials.verify_url_on(&channel, &q, crate::store::now()));
    match verified {
        Ok(echo) => verified_url(&request, &state, &channel.name, echo, started),
        Err(error) => reject(&state, &request, Some(&channel.name), &error),
    }
}

fn verified_url(
    request: &HttpRequest,
    state: &AppState,
    channel: &ChannelName,
    echo: String,
    started: Instant,
) -> HttpResponse {
    tracing::info!(channel = channel.as_str(), path = request.path(), "URL verification passed");
    seen(state, channel);
    state.metrics.record_callback(Some(channel), Outcome::Ok, Some(started.elapsed()));
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(echo)
}

/// A callback message on a shared path (see [`receive_at`]).
pub(crate) async fn receive(request: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    receive_at(request, payload, state, None).await
}

/// A callback message on a channel's own path (see [`receive_at`]).
pub(crate) async fn receive_on(
    request: HttpRequest,
    name: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    match state.credentials.channel(&name).cloned() {
        Some(channel) => receive_at(request, payload, state, Some(channel)).await,
        None => unknown_channel(&request, &state),
    }
}

/// A callback message: verify, decrypt, parse, acknowledge. `own`: the channel
/// whose own path it came to; `None`: a shared path.
///
/// Its latency (`callback:latency`, the duration histogram) is the appliance's
/// own work on an authenticated callback, from the complete body to the answer:
/// a stranger's slow or incomplete body, or a refused request, is counted but
/// not timed, so it cannot fail readiness.
async fn receive_at(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    own: Option<Arc<ChannelSpec>>,
) -> HttpResponse {
    let query = match CallbackQuery::parse(request.query_string()) {
        Ok(query) => query,
        Err(error) => return reject(&state, &request, name_of(&own), &error),
    };
    let declared_too_large = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|len| len > MAX_BODY_BYTES);
    let too_large = CallbackError::TooLarge { limit: MAX_BODY_BYTES };
    if declared_too_large {
        return reject(&state, &request, name_of(&own), &too_large);
    }
    let body = match payload.to_bytes_limited(MAX_BODY_BYTES).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) if arrived_too_late(&error) => {
            log_refusal(&state, &request, Outcome::BodyTimeout, &"request body not received in time");
            state.metrics.record_callback(name_of(&own), Outcome::BodyTimeout, None);
            return HttpResponse::RequestTimeout()
                .content_type("text/plain; charset=utf-8")
                .body("request body not received in time\n");
        }
        Ok(Err(_)) => {
            tracing::debug!(path = request.path(), "client went away while sending the body");
            state.metrics.record_callback(name_of(&own), Outcome::IncompleteBody, None);
            return HttpResponse::BadRequest().content_type("text/plain; charset=utf-8").body("cannot read body\n");
        }
        Err(_) => return reject(&state, &request, name_of(&own), &too_large),
    };
    let started = Instant::now();
    let now = crate::store::now();
    if let Some(bot) = own.as_ref().filter(|c| c.kind() == ChannelKind::Aibot) {
        // Boxed: its future is three times the rest of this one, and actix moves the
        // handler's whole future into a box on every request (tests below).
        return Box::pin(receive_aibot(&request, &state, bot, &query, &body, now, started)).await;
    }
    let opened: Result<OpenedCallback, CallbackError> = match &own {
        Some(channel) => state.credentials.open_on(channel, &query, &body, now),
        None => state.credentials.open(&query, &body, now),
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(error) => return reject(&state, &request, name_of(&own), &error),
    };
    // Journal durably before answering: once WeCom has its 200, the message must
    // survive anything, a kill -9 included. Handling happens from the journal.
    let entry = NewEntry {
        dedup_key: opened.dedup_key(),
        channel: opened.channel.name.clone(),
        kind: EntryKind::Callback,
        sender: opened.message.from_user_name.clone(),
        payload: opened.xml,
        // The dispatcher takes the message as parsed here (`PendingEntry::parsed`).
        parsed: Some(Arc::new(opened.message)),
    };
    let outcome = match store::bounded(state.store.journal(entry)).await {
        Ok(Recorded::New(_)) => {
            state.journal_wake.notify_one();
            Outcome::Ok
        }
        Ok(Recorded::Duplicate) => Outcome::Duplicate,
        Err(error) => {
            // No 200: WeCom retries, and nothing was acknowledged that could be lost
            // (a commit that lands after the deadline makes the retry a duplicate).
            log_store_failure(&state, &opened.channel.name, &error);
            state.metrics.record_callback(Some(&opened.channel.name), Outcome::Internal, Some(started.elapsed()));
            return HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("cannot store the message; retry later\n");
        }
    };
    state.metrics.record_callback(Some(&opened.channel.name), outcome, Some(started.elapsed()));
    seen(&state, &opened.channel.name);
    // WeCom takes an empty body as "no passive reply"; the kf docs ask for "success".
    let body = match opened.channel.kind() {
        ChannelKind::App => "",
        ChannelKind::Kf | ChannelKind::Aibot => "success",
    };
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(body)
}

/// An AI bot callback (SPEC §13) on its own path: a refresh is answered from
/// the store; a message opens its stream and is journaled, then answered with
/// the stream just begun; `enter_chat` gets the welcome text; other events and
/// unknown types are journaled and answered empty.
async fn receive_aibot(
    request: &HttpRequest,
    state: &AppState,
    channel: &Arc<ChannelSpec>,
    query: &CallbackQuery,
    body: &[u8],
    now: i64,
    started: Instant,
) -> HttpResponse {
    let opened = match state.credentials.open_aibot(channel, query, body, now) {
        Ok(opened) => opened,
        Err(error) => return reject(state, request, Some(&channel.name), &error),
    };
    let name = &channel.name;
    let nonce = query.nonce.as_deref().unwrap_or_default();
    let encrypted = |plain: &str| {
        let answer = aibot::encrypted_answer(channel.keys.token.expose(), &channel.keys.aes_key, plain, nonce, now);
        HttpResponse::Ok().content_type("application/json").body(answer)
    };
    if let AibotKind::Refresh { id } = &opened.message.kind {
        let deadline = i64::try_from(state.aibot.deadline.as_secs()).unwrap_or(i64::MAX);
        let refreshed =
            store::bounded(state.store.aibot_refresh(id.clone(), opened.message.userid.clone(), now, deadline)).await;
        let shown = match refreshed {
            Ok(Some(refreshed)) => {
                count_closed(state, name, &refreshed);
                streams::shown(&refreshed.row, &state.aibot.late_text)
            }
            // Not ours (or another user's): finished empty, so WeCom stops asking.
            Ok(None) => streams::Shown { content: String::new(), finish: true },
            Err(error) => return store_failed(state, name, &error, started),
        };
        state.metrics.counter(AIBOT_REFRESHES_TOTAL, &[("channel", name.to_string())]).increment(1);
        state.metrics.record_callback(Some(name), Outcome::Ok, Some(started.elapsed()));
        seen(state, name);
        return encrypted(&aibot::stream_answer(id, &shown.content, shown.finish));
    }
    // Open before journaling: once the message may be handled (and answered by
    // the bot), its stream exists; a retry opens nothing twice.
    let open = opened.stream_open(opened.message.response_url.clone(), now);
    let stream_id = open.as_ref().map(|open| open.stream_id.clone());
    if let Some(open) = open {
        if let Err(error) = store::bounded(state.store.aibot_open(open)).await {
            return store_failed(state, name, &error, started);
        }
    }
    let outcome = match store::bounded(state.store.journal(opened.journal_entry())).await {
        Ok(Recorded::New(_)) => {
            state.journal_wake.notify_one();
            Outcome::Ok
        }
        Ok(Recorded::Duplicate) => Outcome::Duplicate,
        Err(error) => return store_failed(state, name, &error, started),
    };
    state.metrics.record_callback(Some(name), outcome, Some(started.elapsed()));
    seen(state, name);
    match (&stream_id, opened.message.event(), channel.welcome_text.as_deref()) {
        (Some(stream_id), _, _) => encrypted(&aibot::stream_answer(stream_id, "", false)),
        (None, Some(AibotEvent::EnterChat), Some(welcome)) => encrypted(&aibot::welcome_answer(welcome)),
        // Other events (feedback allows nothing else), unknown types: an empty answer.
        _ => HttpResponse::Ok().finish(),
    }
}

/// Counts a stream a refresh has just closed: `finished`, or `late`.
fn count_closed(state: &AppState, channel: &ChannelName, refreshed: &Refreshed) {
    let outcome = match (refreshed.closed_now, refreshed.late_now) {
        (true, true) => "late",
        (true, false) => "finished",
        _ => return,
    };
    state
        .metrics
        .counter(AIBOT_STREAMS_TOTAL, &[("channel", channel.to_string()), ("outcome", outcome.to_owned())])
        .increment(1);
}

/// A callback whose store call failed: 503, so WeCom retries.
fn store_failed(state: &AppState, channel: &ChannelName, error: &StoreError, started: Instant) -> HttpResponse {
    log_store_failure(state, channel, error);
    state.metrics.record_callback(Some(channel), Outcome::Internal, Some(started.elapsed()));
    HttpResponse::ServiceUnavailable()
        .content_type("text/plain; charset=utf-8")
        .body("cannot store the message; retry later\n")
}

/// Notes that `channel` had a callback accepted now (the status page's "last callback").
fn seen(state: &AppState, channel: &ChannelName) {
    if let Some(at) = state.last_callback.get(channel.as_str()) {
        at.store(crate::store::now(), std::sync::atomic::Ordering::Relaxed);
    }
}

fn status_of(error: &CallbackError) -> StatusCode {
    match error {
        CallbackError::BadSignature | CallbackError::StaleTimestamp(_) => StatusCode::FORBIDDEN,
        CallbackError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        CallbackError::MissingParameter(_)
        | CallbackError::MalformedQuery
        | CallbackError::BadEnvelope(_)
        | CallbackError::BadCiphertext(_)
        | CallbackError::WrongReceiveId
        | CallbackError::BadTimestamp
        | CallbackError::AmbiguousChannel(_)
        | CallbackError::AibotEnvelope(_)
        | CallbackError::AibotMessage(_)
        | CallbackError::WrongBot(_)
        | CallbackError::BadMessage(_) => StatusCode::BAD_REQUEST,
    }
}

/// The channel whose own path a callback came to; `None` on a shared path.
fn name_of(own: &Option<Arc<ChannelSpec>>) -> Option<&ChannelName> {
    own.as_ref().map(|channel| &channel.name)
}

/// Answers a refused callback with its reason, counts it and logs it (see
/// [`log_refusal`]). `channel`: the one whose own path it came to, its label;
/// `None` (a shared path, where no channel could be told) counts it as `unknown`.
fn reject(
    state: &AppState,
    request: &HttpRequest,
    channel: Option<&ChannelName>,
    error: &CallbackError,
) -> HttpResponse {
    let outcome = error.outcome();
    log_refusal(state, request, outcome, error);
    state.metrics.record_callback(channel, outcome, None);
    HttpResponse::build(status_of(error)).content_type("text/plain; charset=utf-8").body(format!("{error}\n"))
}

/// One line per refusal with the client's address, at most ten a minute per
/// reason; the next line written says how many were suppressed. The metrics
/// count every one.
fn log_refusal(state: &AppState, request: &HttpRequest, outcome: Outcome, reason: &dyn std::fmt::Display) {
    let Some(more) = state.refusal_log.admit(outcome.as_str()) else { return };
    let client = super::surface::client(request, state);
    tracing::warn!(
        %client,
        path = request.path(),
        method = request.method().as_str(),
        outcome = outcome.as_str(),
        "callback refused: {reason}{more}"
    );
}

/// A callback that could not be journaled: one line per kind of failure at most
/// ten times a minute, however many callbacks a database outage turns away.
fn log_store_failure(state: &AppState, channel: &ChannelName, error: &StoreError) {
    let reason = match error {
        StoreError::TimedOut => "journal_timed_out",
        _ => "journal_failed",
    };
    if let Some(more) = state.refusal_log.admit(reason) {
        tracing::error!(channel = channel.as_str(), "cannot journal a callback (answered 503): {error}{more}");
    }
}

/// Whether reading the body failed because the body deadline passed.
fn arrived_too_late(error: &actix_web::Error) -> bool {
    matches!(
        error.as_error::<actix_web::error::PayloadError>(),
        Some(actix_web::error::PayloadError::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that actix copies into a new box for every callback: the future of the
    /// route it calls. Inlined, the AI bot's branch made it ~5.8 KB (1.4 % of the
    /// durable path's CPU samples were that copy, BENCHMARKS.md); boxed, ~1.9 KB.
    const CALLBACK_FUTURE_BOUND: usize = 3 * 1024;

    fn future_size<Args, Fut>(_: &impl actix_web::Handler<Args, Output = HttpResponse, Future = Fut>) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_callback_route_future_stays_small() {
        for (route, size) in [("receive", future_size(&receive)), ("receive_on", future_size(&receive_on))] {
            assert!(size <= CALLBACK_FUTURE_BOUND, "{route}'s future is {size} bytes, over {CALLBACK_FUTURE_BOUND}");
        }
    }
}
