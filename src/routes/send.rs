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
use crate::routes::AppState;

/// Largest request body: a 20,000-character text, JSON-escaped, fits.
pub(crate) const MAX_BODY: usize = 256 * 1024;

fn error(status: StatusCode, reason: String) -> HttpResponse {
    HttpResponse::build(status).json(json!({"status": "error", "error": reason}))
}

/// `POST /api/v1/messages`
pub(crate) async fn create(body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let request = match SendRequest::parse(&body) {
        Ok(request) => request,
        Err(e @ RequestError::TextTooLong { .. }) => return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        Err(e @ RequestError::Invalid { .. }) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match sending::queue(&state.store, &state.wecom, state.agent_id, request).await {
        Ok(accepted) => {
            state.outbox_wake.notify_one();
            HttpResponse::Accepted().json(json!({
                "id": accepted.id,
                "status": accepted.status.as_str(),
                "parts": accepted.parts,
            }))
        }
        Err(e @ QueueError::UnknownRecord(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ QueueError::Unsendable { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ QueueError::KeyReused(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(QueueError::Store(e)) => {
            tracing::error!("send API: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable; nothing was queued, retry".into())
        }
    }
}

/// `GET /api/v1/messages/{id}`
pub(crate) async fn status(id: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    match state.store.send(id.into_inner()).await {
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
        Ok(None) => error(StatusCode::NOT_FOUND, "no message with that id".into()),
        Err(e) => {
            tracing::error!("send API: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable; retry".into())
        }
    }
}
