//! Admin endpoints under `/api/*`: testing the WeCom connection, resolving names,
//! sending a test alert.
//!
//! Deliberately not here: who may call them. `routes::configure` puts every one
//! behind [`super::bearer::BearerGate`] (`ADMIN_TOKEN`), so a handler runs only
//! for the right bearer and holds no auth code.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::names::{IdType, NameError};
use crate::routes::{error, error_body, AppState};
use crate::wecom::connection;

/// Most ids one batch request may resolve.
const MAX_BATCH: usize = 100;

fn answer(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    HttpResponse::build(status).json(body)
}

/// The 500 for a `what` that could not be turned into JSON.
fn unserializable(what: &str, error: &serde_json::Error) -> HttpResponse {
    tracing::error!(%error, "cannot serialize the {what}");
    answer(StatusCode::INTERNAL_SERVER_ERROR, error_body(format!("cannot serialize the {what}: {error}")))
}

fn name_error(error: &NameError) -> serde_json::Value {
    match error {
        NameError::WeCom(e) => json!({
            "status": "error",
            "error": e.to_string(),
            "errcode": e.errcode(),
            "hint": e.api().and_then(|a| a.hint()),
        }),
        NameError::Store(_) | NameError::UnknownChannel(_) | NameError::NotFound { .. } => {
            error_body(error.to_string())
        }
    }
}

/// The status of a name that could not be had: WeCom's trouble is a 502.
fn name_status(error: &NameError) -> StatusCode {
    match error {
        NameError::WeCom(_) | NameError::NotFound { .. } => StatusCode::BAD_GATEWAY,
        NameError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        NameError::UnknownChannel(_) => StatusCode::NOT_FOUND,
    }
}

/// `?channel=<name>` of the connection test.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ChannelQuery {
    channel: Option<String>,
}

/// `GET /api/test-wecom-connection[?channel=<name>]`: one channel, or every one.
pub(crate) async fn test_connection(query: web::Query<ChannelQuery>, state: web::Data<AppState>) -> HttpResponse {
    let channels = state.credentials.channels();
    let report = match query.channel.as_deref() {
        Some(name) => match channels.get(name) {
            Some(channel) => serde_json::to_value(connection::test_channel(&state.wecom, channel).await),
            None => {
                let error = format!("no channel named {:?}", crate::messages::clip(name, 64));
                return answer(StatusCode::NOT_FOUND, json!({"status": "error", "error": error}));
            }
        },
        None => {
            let corp_id = channels.builtin_app().map(|app| app.corp_id.as_str()).unwrap_or_default();
            serde_json::to_value(connection::test_connection(&state.wecom, corp_id, channels).await)
        }
    };
    match report {
        Ok(report) => answer(StatusCode::OK, report),
        Err(error) => unserializable("connection report", &error),
    }
}

/// `GET /api/fetch-wecom-name/{id_type}/{id}[?channel=<name>]`: looked up with
/// the Secret of the channel the id was seen on (without it: the built-in ones).
pub(crate) async fn fetch_name(
    path: web::Path<(String, String)>,
    query: web::Query<ChannelQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (id_type, id) = path.into_inner();
    let Some(id_type) = IdType::parse(&id_type) else {
        return answer(StatusCode::BAD_REQUEST, error_body("id_type must be user_id or external_user_id"));
    };
    match state.names.resolve(query.channel.as_deref(), id_type, &id).await {
        Ok(resolved) => match serde_json::to_value(&resolved) {
            Ok(result) => answer(StatusCode::OK, json!({"status": "success", "result": result})),
            Err(error) => unserializable("resolved name", &error),
        },
        Err(error) => answer(name_status(&error), name_error(&error)),
    }
}

/// The body of `POST /api/batch-fetch-wecom-names`: explicit ids, or ids seen in
/// stored messages, on `channel` (without it: the built-in ones).
#[derive(Debug, Deserialize)]
pub(crate) struct BatchRequest {
    id_type: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    only_unmapped: bool,
}

/// `POST /api/batch-fetch-wecom-names`
pub(crate) async fn batch_fetch_names(body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let bad = |reason: String| error(StatusCode::BAD_REQUEST, reason);
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => {
            return bad(format!(
            "body must be {{\"id_type\":…,\"ids\":[…]}} or {{\"id_type\":…,\"limit\":N,\"only_unmapped\":true}}: {e}"
        ))
        }
    };
    let Some(id_type) = IdType::parse(&batch.id_type) else {
        return bad("id_type must be user_id or external_user_id".into());
    };
    let channel = batch.channel.as_deref();
    if let Err(e) = state.names.check_channel(channel) {
        return error(name_status(&e), e.to_string());
    }
    let ids = match (batch.ids, batch.limit) {
        (Some(ids), _) if ids.len() > MAX_BATCH => return bad(format!("at most {MAX_BATCH} ids per request")),
        (Some(ids), _) => ids,
        (None, Some(limit)) => {
            match state.names.seen(channel, id_type, batch.only_unmapped, limit.min(MAX_BATCH)).await {
                Ok(ids) => ids,
                Err(e) => return error(name_status(&e), e.to_string()),
            }
        }
        (None, None) => return bad("give either ids or limit".into()),
    };
    let mut results = Vec::with_capacity(ids.len());
    let mut failed = 0;
    for id in ids {
        match state.names.resolve(channel, id_type, &id).await {
            Ok(resolved) => match serde_json::to_value(&resolved) {
                Ok(result) => results.push(result),
                Err(error) => return unserializable("resolved name", &error),
            },
            Err(error) => {
                failed += 1;
                let mut value = name_error(&error);
                value["id"] = json!(id);
                results.push(value);
            }
        }
    }
    let status = if failed == 0 { "success" } else { "partial" };
    answer(
        StatusCode::OK,
        json!({"status": status, "resolved": results.len() - failed, "failed": failed, "results": results}),
    )
}

/// `POST /api/alerts/test`: queues a test email to `ALERT_EMAIL_TO`, at most one
/// a minute (else 429 with `Retry-After`).
pub(crate) async fn test_alert(state: web::Data<AppState>) -> HttpResponse {
    if !state.alerter.status().enabled {
        return answer(
            StatusCode::CONFLICT,
            error_body("email alerts are off: set ALERT_EMAIL_ENABLED=true and the SMTP_* variables"),
        );
    }
    let host = crate::config::host_name();
    let mail = crate::alerts::Mail {
        subject: format!("[wechat-api TEST] alert email from {host}"),
        body: format!(
            "This is a test alert from wechat-api {} on {host}. If you can read it, alerts reach you.\n",
            state.version
        ),
    };
    match state.alerter.send_test(mail, std::time::Instant::now()) {
        Ok(()) => answer(StatusCode::ACCEPTED, json!({"status": "queued"})),
        Err(wait) => super::too_many(wait, |seconds| format!("one test email a minute: try again in {seconds} s")),
    }
}
