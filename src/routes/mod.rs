//! HTTP only: routes, extraction, status codes. Every decision is made elsewhere.
//!
//! Architecture invariant: only `routes/` and `startup.rs` know actix-web.

pub mod admin;
pub mod callback;
pub mod deadline;
pub mod health;
pub mod metrics;
pub mod status;

use std::sync::Arc;

use actix_web::{web, HttpResponse};

use tokio::sync::Notify;

use crate::alerts::Alerter;
use crate::callback::CallbackCredentials;
use crate::config::Secret;
use crate::health::{HealthBoard, Liveness};
use crate::names::Names;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::wecom::WeCom;

/// The paths WeCom may be pointed at; existing deployments use each of them.
pub const CALLBACK_PATHS: [&str; 3] = ["/api/v1/wecom/callback", "/wework/callback", "/wechat/callback"];

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub credentials: CallbackCredentials,
    pub metrics: Arc<Metrics>,
    pub health: Arc<HealthBoard>,
    pub store: Store,
    /// Wakes the dispatcher after a message is journaled.
    pub journal_wake: Arc<Notify>,
    pub wecom: Arc<WeCom>,
    pub names: Names,
    /// `ADMIN_TOKEN`; `None` turns the admin endpoints off.
    pub admin_token: Option<Secret>,
    pub liveness: Arc<Liveness>,
    pub alerter: Alerter,
    pub version: &'static str,
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in CALLBACK_PATHS {
        cfg.service(
            web::resource(path).route(web::get().to(callback::verify_url)).route(web::post().to(callback::receive)),
        );
    }
    cfg.route("/api/health", web::get().to(health::report))
        .route("/health", web::get().to(health::report))
        .route("/api/health/live", web::get().to(health::live))
        .route("/metrics", web::get().to(metrics::render))
        .route("/api/test-wecom-connection", web::get().to(admin::test_connection))
        .route("/api/fetch-wecom-name/{id_type}/{id}", web::get().to(admin::fetch_name))
        .route("/api/batch-fetch-wecom-names", web::post().to(admin::batch_fetch_names))
        .route("/api/alerts/test", web::post().to(admin::test_alert))
        .route("/", web::get().to(status::page))
        .default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().content_type("text/plain; charset=utf-8").body("not found\n")
}
