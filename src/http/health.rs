//! `/health` (full report, `?check=liveness|readiness`) and the `/livez`, `/readyz` aliases.

use std::time::SystemTime;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, Envelope, RequestId};
use crate::app::AppState;
use crate::health::{self, HealthReport, Status};
use crate::telemetry::rfc3339;

#[derive(Debug, Deserialize)]
pub struct HealthQuery {
    check: Option<String>,
}

#[derive(Debug, Serialize)]
struct Liveness {
    status: &'static str,
    timestamp: String,
    /// Seconds since start, fractional.
    uptime: f64,
}

#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    timestamp: String,
}

/// `GET /health`.
pub async fn health(
    state: State<AppState>,
    rid: RequestId,
    Query(q): Query<HealthQuery>,
) -> Result<Response, ApiError> {
    match q.check.as_deref() {
        Some("liveness") => Ok(livez(state, rid).await.into_response()),
        Some("readiness") => readyz(state, rid).await,
        _ => {
            let report = run_checks(&state).await?;
            let status = match report.status {
                Status::Healthy | Status::Degraded => StatusCode::OK,
                Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            };
            // success:true even on 503, as the Go server did; monitors read `data.status`.
            Ok((status, Envelope::ok(report, &rid)).into_response())
        }
    }
}

/// `GET /livez`: the process is up and answering.
pub async fn livez(
    State(state): State<AppState>,
    rid: RequestId,
) -> Json<Envelope<impl Serialize>> {
    Envelope::ok(
        Liveness {
            status: "alive",
            timestamp: rfc3339(SystemTime::now()),
            uptime: state.started.elapsed().as_secs_f64(),
        },
        &rid,
    )
}

/// `GET /readyz`: 503 only when the data dir, the disk or the databases fail.
pub async fn readyz(State(state): State<AppState>, rid: RequestId) -> Result<Response, ApiError> {
    let report = run_checks(&state).await?;
    let problems = report.readiness_problems();
    if !problems.is_empty() {
        return Err(ApiError::Unavailable {
            message: "Service not ready".into(),
            details: Some(format!("Health check failed: {}", problems.join("; "))),
        });
    }
    let body = Readiness {
        status: "ready",
        timestamp: rfc3339(SystemTime::now()),
    };
    Ok(Envelope::ok(body, &rid).into_response())
}

async fn run_checks(state: &AppState) -> Result<HealthReport, ApiError> {
    let app = state.0.clone();
    tokio::task::spawn_blocking(move || health::check(&app))
        .await
        .map_err(|e| ApiError::Internal(format!("health check task failed: {e}")))
}
