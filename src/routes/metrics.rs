//! `GET /metrics`: the Prometheus text exposition, for insiders only
//! (`TRUSTED_NETWORKS` or the admin bearer); a stranger gets 404.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::routes::surface::{audience, Audience};
use crate::routes::{not_found, AppState};
use crate::telemetry::PROMETHEUS_CONTENT_TYPE;

pub(crate) async fn render(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match audience(&request, &state) {
        Ok(Audience::Insider) => HttpResponse::Ok().content_type(PROMETHEUS_CONTENT_TYPE).body(state.metrics.render()),
        Ok(Audience::Stranger) => not_found().await,
        Err(refused) => *refused,
    }
}
