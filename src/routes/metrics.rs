//! `GET /metrics`: the Prometheus text exposition.

use actix_web::{web, HttpResponse};

use crate::routes::AppState;
use crate::telemetry::PROMETHEUS_CONTENT_TYPE;

pub(crate) async fn render(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type(PROMETHEUS_CONTENT_TYPE).body(state.metrics.render())
}
