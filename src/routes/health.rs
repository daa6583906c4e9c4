//! `GET /api/health` (readiness and diagnosis) and `GET /api/health/live`.
//!
//! Both are public (a load balancer asks them), but only insiders
//! ([`Audience::Insider`]) read more than `{"status": …}`: the checks carry
//! paths, owners, the egress IP of a 60020 hint and certificate dates.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::health::Status;
use crate::routes::surface::{audience, Audience};
use crate::routes::AppState;

const HEALTH_JSON: &str = "application/health+json";

/// The latest result of every check; 503 when any fails. Makes no outbound call.
/// A stranger gets the same HTTP status with only the overall `status` (SPEC
/// §11: anyone may read it). So does a wrong admin bearer, say a load balancer's
/// stale token: it is counted towards the bearer throttle like any guess (its
/// address is locked out of the views and endpoints the bearer opens), but
/// readiness is never answered 401 or 429.
pub(crate) async fn report(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let audience = audience(&request, &state).unwrap_or(Audience::Stranger);
    let report = state.health.report(state.version);
    let mut response = match report.status {
        Status::Pass | Status::Warn => HttpResponse::Ok(),
        Status::Fail => HttpResponse::ServiceUnavailable(),
    };
    response.content_type(HEALTH_JSON).insert_header(("Cache-Control", "no-store"));
    match audience {
        Audience::Insider => response.json(report),
        Audience::Stranger => response.json(json!({ "status": report.status })),
    }
}

/// Liveness: fails only where a restart would help (a stuck supervisor, a dead
/// background task). WeCom, SMTP, token or disk trouble is readiness, not this.
/// The version and the reason are for insiders; a stranger reads `status`.
pub(crate) async fn live(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let insider = matches!(audience(&request, &state), Ok(Audience::Insider));
    let (mut response, body) = match state.liveness.check() {
        Ok(()) if insider => (HttpResponse::Ok(), json!({ "status": "pass", "version": state.version })),
        Ok(()) => (HttpResponse::Ok(), json!({ "status": "pass" })),
        Err(reason) if insider => (
            HttpResponse::ServiceUnavailable(),
            json!({ "status": "fail", "version": state.version, "output": reason }),
        ),
        Err(_) => (HttpResponse::ServiceUnavailable(), json!({ "status": "fail" })),
    };
    response.content_type(HEALTH_JSON).insert_header(("Cache-Control", "no-store")).json(body)
}
