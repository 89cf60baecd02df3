//! `GET /series`: every usable series name, built-in and user, sorted (read per request, so
//! a new file in `<data>/user-series/` shows up at once). Hidden series are left out: they
//! still serve their images but start no new runs, so a client has nothing to pick them for.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, Envelope, ErrorCode, RequestId};
use crate::app::AppState;
use crate::progress::RunKey;
use crate::run::{ANNOTATED, Flags, Generator, Lookup};

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
    let series = attributes.series.visible_names();
    Ok(Envelope::ok(
        SeriesList {
            count: series.len(),
            series,
        },
        &rid,
    )
    .into_response())
}

/// The `/dalle` rule for a hidden series: it still serves what it has (its image, its cache
/// hit, a run in flight, `?remove`), but a `?generate=1` that would start a new run is
/// refused with `400 INVALID_SERIES`, as an unknown series is. Called by the `/dalle` handler
/// once the path is parsed.
pub fn refuse_new_run_if_hidden(
    generator: &Generator,
    key: &RunKey,
    flags: Flags,
) -> Result<(), ApiError> {
    let (kind, ext) = ANNOTATED;
    // The series check first: it is answered from memory, the lookup costs a `stat`.
    if flags.generate
        && !flags.remove
        && generator.attributes.series.is_hidden(key.series.as_str())
        && !generator.progress.is_in_flight(key)
        && matches!(generator.store.lookup(key, kind, ext), Lookup::Absent)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidSeries,
            "Invalid series name",
            Some(format!(
                "Series '{}' is hidden: its images are still served, but it starts no new runs",
                key.series
            )),
        ));
    }
    Ok(())
}
