//! HTTP only: routes, extraction, status codes. Every decision is made elsewhere.
//!
//! Architecture invariant: only `routes/` and `startup.rs` know actix-web.

pub(crate) mod admin;
pub(crate) mod bearer;
pub(crate) mod callback;
pub(crate) mod deadline;
pub(crate) mod health;
pub(crate) mod metrics;
pub(crate) mod send;
pub(crate) mod status;
pub(crate) mod surface;

use std::sync::Arc;

use actix_web::{web, HttpResponse};

use tokio::sync::Notify;

use crate::alerts::Alerter;
use std::collections::HashMap;
use std::sync::atomic::AtomicI64;

use crate::callback::CallbackCredentials;
use crate::channels::ChannelName;
use crate::health::{HealthBoard, Liveness};
use crate::names::Names;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::wecom::WeCom;

/// The one JSON error body of the API: `{"status": "error", "error": reason}`.
pub(crate) fn error_body(reason: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"status": "error", "error": reason.into()})
}

/// `status` with the JSON error body.
pub(crate) fn error(status: actix_web::http::StatusCode, reason: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(error_body(reason))
}

/// 429 with `Retry-After` in whole seconds, rounded up (at least 1) so a client
/// that waits that long is not refused again; `reason` is told those seconds.
pub(crate) fn too_many(wait: std::time::Duration, reason: impl FnOnce(u64) -> String) -> HttpResponse {
    let seconds = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    HttpResponse::TooManyRequests()
        .insert_header((actix_web::http::header::RETRY_AFTER, seconds))
        .json(error_body(reason(seconds)))
}

/// The paths WeCom may be pointed at; existing deployments use each of them.
pub const CALLBACK_PATHS: [&str; 3] = ["/api/v1/wecom/callback", "/wework/callback", "/wechat/callback"];

/// What every handler can reach.
#[derive(Debug)]
pub(crate) struct AppState {
    pub credentials: CallbackCredentials,
    /// When each channel last had a callback accepted (Unix seconds, 0 = never),
    /// for the status page: one atomic per channel, fixed at start-up.
    pub last_callback: HashMap<ChannelName, AtomicI64>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthBoard>,
    pub store: Store,
    /// Wakes the dispatcher after a message is journaled.
    pub journal_wake: Arc<Notify>,
    pub wecom: Arc<WeCom>,
    pub names: Names,
    /// The admin endpoints' gate (`ADMIN_TOKEN`; unset turns them off).
    pub admin_gate: bearer::BearerGate,
    /// The send API's gate (`SEND_TOKEN`; unset turns it off).
    pub send_gate: bearer::BearerGate,
    /// Wakes the outbox after the send API queued a message.
    pub outbox_wake: Arc<Notify>,
    /// `SEND_QUEUE_MAX` and `DATA_MIN_FREE_PERCENT` (SPEC §15).
    pub send_limits: crate::dispatch::sending::SendLimits,
    /// `TRUSTED_NETWORKS` and `TRUSTED_PROXIES`: who sees the monitoring views.
    pub surface: crate::config::Surface,
    pub liveness: Arc<Liveness>,
    /// Refused callbacks' log lines and the store failures of requests,
    /// rate-limited per reason.
    pub refusal_log: crate::log_limit::SharedLogLimiter,
    pub alerter: Alerter,
    /// `AIBOT_STREAM_DEADLINE_SECS` and `AIBOT_LATE_TEXT`: how refreshes close streams.
    pub aibot: crate::config::AibotSettings,
    pub version: &'static str,
    /// Each channel's egress IP (SPEC §14), for the status page.
    pub egress: Arc<crate::egress::Egress>,
}

/// Registers every route.
///
/// The admin endpoints are registered one by one behind the admin gate: they
/// share the `/api` prefix with the callback, health and metrics paths, which
/// must stay open, and an unknown path must stay a 404 rather than a 401.
pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    for path in CALLBACK_PATHS {
        cfg.service(
            web::resource(path).route(web::get().to(callback::verify_url)).route(web::post().to(callback::receive)),
        );
    }
    // Each channel's own path (SPEC §12): one route for all, the name looked up.
    cfg.service(
        web::resource(format!("{}/{{name}}", crate::config::CALLBACK_PATH))
            .route(web::get().to(callback::verify_url_on))
            .route(web::post().to(callback::receive_on)),
    );
    cfg.route("/api/health", web::get().to(health::report))
        .route("/health", web::get().to(health::report))
        .route("/api/health/live", web::get().to(health::live))
        .route("/metrics", web::get().to(metrics::render))
        .route("/", web::get().to(status::page));
    let gated = |path: &str| web::resource(path).wrap(bearer::middleware(|state| &state.admin_gate));
    cfg.service(gated("/api/test-wecom-connection").route(web::get().to(admin::test_connection)))
        .service(gated("/api/fetch-wecom-name/{id_type}/{id}").route(web::get().to(admin::fetch_name)))
        .service(gated("/api/batch-fetch-wecom-names").route(web::post().to(admin::batch_fetch_names)))
        .service(gated("/api/alerts/test").route(web::post().to(admin::test_alert)));
    let sending = |path: &str| web::resource(path).wrap(bearer::middleware(|state| &state.send_gate));
    cfg.service(
        sending("/api/v1/messages")
            .app_data(web::PayloadConfig::new(send::MAX_BODY))
            .route(web::post().to(send::create)),
    )
    .service(sending("/api/v1/messages/{id}").route(web::get().to(send::status)))
    .default_service(web::to(not_found));
}

pub(crate) async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().content_type("text/plain; charset=utf-8").body("not found\n")
}
