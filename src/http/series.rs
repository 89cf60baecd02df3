//! `GET /series`: every usable series name, built-in and user, sorted (read per request, so
//! a new file in `<data>/user-series/` shows up at once).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, Envelope, RequestId};
use crate::app::AppState;

/// `data` of `/series` (keys in upstream's sorted order).
#[derive(Debug, Serialize)]
pub struct SeriesList {
    pub count: usize,
    pub series: Vec<String>,
}

/// `GET /series`.
pub async fn list(State(state): State<AppState>, rid: RequestId) -> Result<Response, ApiError> {
    let attributes = state
        .attributes()
        .map_err(ApiError::databases_unavailable)?;
    let series = attributes.series.names();
    Ok(Envelope::ok(
        SeriesList {
            count: series.len(),
            series,
        },
        &rid,
    )
    .into_response())
}
