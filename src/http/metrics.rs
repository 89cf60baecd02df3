//! `GET /metrics`: Prometheus text, or the upstream JSON snapshot with `?format=json`.

use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, Envelope, RequestId};
use crate::app::AppState;

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    format: Option<String>,
}

/// `GET /metrics`.
pub async fn metrics(
    State(state): State<AppState>,
    rid: RequestId,
    Query(q): Query<MetricsQuery>,
) -> Result<Response, ApiError> {
    let breaker = state.breaker.snapshot();
    if q.format.as_deref() == Some("json") {
        return Ok(Envelope::ok(state.metrics.snapshot(&breaker), &rid).into_response());
    }
    if let Ok(generator) = state.generator() {
        state.metrics.set_budget(&generator.budget().usage());
    }
    let text = state
        .metrics
        .render_text(&breaker)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}
