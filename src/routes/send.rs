//! The send API (SPEC §10): `POST /api/v1/messages` and `GET /api/v1/messages/<id>`.
//!
//! HTTP only: `routes::configure` puts both behind the `SEND_TOKEN` gate; the
//! request is validated by [`crate::outgoing`] and queued by
//! [`crate::dispatch::sending::queue`].

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::dispatch::sending::{self, QueueError};
use crate::outgoing::{RequestError, SendRequest};
use crate::routes::{error, AppState};
use crate::store::{self, StoreError};

/// Largest request body: a 20,000-character text, JSON-escaped, fits.
pub(crate) const MAX_BODY: usize = 256 * 1024;

/// `POST /api/v1/messages`
pub(crate) async fn create(body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let request = match SendRequest::parse(&body) {
        Ok(request) => request,
        Err(e @ RequestError::TextTooLong { .. }) => return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        Err(e @ RequestError::Invalid { .. }) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let queued = store::bounded(sending::queue(
        &state.store,
        &state.wecom,
        state.credentials.channels(),
        &state.send_limits,
        request,
    ));
    match queued.await {
        Ok(accepted) => {
            state.outbox_wake.notify_one();
            HttpResponse::Accepted().json(json!({
                "id": accepted.id,
                "status": accepted.status,
                "parts": accepted.parts,
            }))
        }
        Err(e @ QueueError::UnknownRecord(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ QueueError::Unsendable { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ (QueueError::KeyReused(_) | QueueError::Finished(_))) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ QueueError::TooLong(_)) => error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        Err(e @ QueueError::Full { .. }) => {
            sending::count_refusal(&state.metrics, &e);
            super::too_many(sending::FULL_RETRY_AFTER, |_| e.to_string())
        }
        Err(e @ QueueError::LowDisk { .. }) => {
            sending::count_refusal(&state.metrics, &e);
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(QueueError::Store(e)) => {
            log_store_failure(&state, &e);
            let reason = match e {
                // The commit may still land: the same idempotency_key finds it.
                StoreError::TimedOut => {
                    "the store did not answer in time; the message may or may not be queued: \
                                         retry with the same idempotency_key"
                }
                _ => "the store is unavailable; nothing was queued, retry",
            };
            error(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }
}

/// The send API's store failures: at most ten lines a minute, the rest counted.
fn log_store_failure(state: &AppState, error: &StoreError) {
    if let Some(more) = state.refusal_log.admit("send_api_store") {
        tracing::error!("send API: {error}{more}");
    }
}

/// `GET /api/v1/messages/{id}`
pub(crate) async fn status(id: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let id = id.into_inner();
    if let Some(stream_id) = sending::stream_of_answer(&id) {
        return answer_status(&state, &id, stream_id).await;
    }
    match store::bounded(state.store.send(id)).await {
        Ok(Some(send)) => HttpResponse::Ok().json(json!({
            "id": send.id,
            "status": send.status.as_str(),
            "parts": send.parts,
            "parts_sent": send.parts_sent,
            "errcode": send.errcode,
            "reason": send.reason,
            "channel": send.channel,
            "to": send.recipient,
            "open_kfid": send.open_kfid,
            "created_at": send.created_at,
            "updated_at": send.updated_at,
        })),
        Ok(None) => error(StatusCode::NOT_FOUND, "no message with that id"),
        Err(e) => {
            log_store_failure(&state, &e);
            error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable; retry")
        }
    }
}

/// `GET /api/v1/messages/stream_<id>`: an AI bot's answer, `streaming`, `sent` or `failed`.
async fn answer_status(state: &AppState, id: &str, stream_id: &str) -> HttpResponse {
    match store::bounded(state.store.aibot_stream(stream_id.to_owned())).await {
        Ok(Some(stream)) => {
            let status = crate::streams::status(&stream);
            let reason = match &status {
                crate::streams::StreamStatus::Failed(reason) => Some(reason.clone()),
                _ => None,
            };
            HttpResponse::Ok().json(json!({
                "id": id,
                "status": status.as_str(),
                "parts": 1,
                "errcode": null,
                "reason": reason,
                "channel": stream.opened.channel,
                "to": stream.opened.userid,
                "in_reply_to": stream.opened.record_id,
                "finished": stream.finished,
                "late": stream.late(),
                "bytes": stream.content.len(),
            }))
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no message with that id"),
        Err(e) => {
            log_store_failure(state, &e);
            error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable; retry")
        }
    }
}
