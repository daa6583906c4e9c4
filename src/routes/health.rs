//! `GET /api/health` (readiness and diagnosis) and `GET /api/health/live`.

use actix_web::{web, HttpResponse};

use crate::health::Status;
use crate::routes::AppState;

const HEALTH_JSON: &str = "application/health+json";

/// The latest result of every check; 503 when any fails. Makes no outbound call.
pub(crate) async fn report(state: web::Data<AppState>) -> HttpResponse {
    let report = state.health.report(state.version);
    let mut response = match report.status {
        Status::Pass | Status::Warn => HttpResponse::Ok(),
        Status::Fail => HttpResponse::ServiceUnavailable(),
    };
    response.content_type(HEALTH_JSON).insert_header(("Cache-Control", "no-store")).json(report)
}

/// Liveness: fails only where a restart would help (a stuck supervisor, a dead
/// background task). WeCom, SMTP, token or disk trouble is readiness, not this.
pub(crate) async fn live(state: web::Data<AppState>) -> HttpResponse {
    let (mut response, body) = match state.liveness.check() {
        Ok(()) => (HttpResponse::Ok(), serde_json::json!({ "status": "pass", "version": state.version })),
        Err(reason) => (
            HttpResponse::ServiceUnavailable(),
            serde_json::json!({ "status": "fail", "version": state.version, "output": reason }),
        ),
    };
    response.content_type(HEALTH_JSON).insert_header(("Cache-Control", "no-store")).json(body)
}
