//! `GET /api/health` (readiness and diagnosis) and `GET /api/health/live`.

use actix_web::{web, HttpResponse};

use crate::health::Status;
use crate::routes::AppState;

const HEALTH_JSON: &str = "application/health+json";

/// The latest result of every check; 503 when any fails. Makes no outbound call.
pub async fn report(state: web::Data<AppState>) -> HttpResponse {
    let report = state.health.report(state.version);
    let mut response = match report.status {
        Status::Pass | Status::Warn => HttpResponse::Ok(),
        Status::Fail => HttpResponse::ServiceUnavailable(),
    };
    response.content_type(HEALTH_JSON).insert_header(("Cache-Control", "no-store")).json(report)
}

/// Liveness: answering at all proves the runtime and a worker are alive.
pub async fn live(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(HEALTH_JSON)
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "status": "pass", "version": state.version }))
}
