//! The `/v1` management API: images (generate, preview, list, get, delete,
//! regenerate, export), series (list, get, save, hide), databases (manifest, records) and
//! validation, plus `GET /v1/progress/{series}/{seed}` and the OpenAPI document.
//!
//! Bodies are decoded leniently like the Go server: unknown fields are ignored and only the
//! first JSON value is read; an empty or malformed body is `400 invalid_input`. Errors carry
//! the engine's lower-case codes and their statuses ([`Code::http_status`]).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::extract::{JsonBody, Path};
use super::{ApiError, Envelope, RequestId};
use crate::app::AppState;
use crate::attributes::series::Series;
use crate::catalogue::error::{CatalogueError, Code};
use crate::catalogue::service::{Catalogue, GenerateRequest};
use crate::domain::{Seed, SeriesName};

/// The OpenAPI 3.1 description of this server, embedded.
pub const OPENAPI: &str = include_str!("openapi.json");

type V1Result = Result<Response, ApiError>;

fn catalogue(state: &AppState) -> Result<&std::sync::Arc<Catalogue>, ApiError> {
    state.catalogue().map_err(ApiError::databases_unavailable)
}

fn invalid(message: &str) -> ApiError {
    ApiError::Catalogue(CatalogueError::new(Code::InvalidInput, message))
}

/// Lenient JSON decoding: the first value only, unknown fields ignored.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("invalid JSON request"));
    }
    match serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .next()
    {
        Some(Ok(value)) => Ok(value),
        _ => Err(invalid("invalid JSON request")),
    }
}

/// A client's series name, or `400 invalid_input` saying why it cannot be one.
fn series_name(raw: &str) -> Result<SeriesName, ApiError> {
    SeriesName::parse(raw).map_err(|e| invalid(&format!("invalid series name: {e}")))
}

/// The series a generate or preview body names, checked like a path's (absent or blank is
/// the default series, which the catalogue picks).
fn check_body_series(request: &GenerateRequest) -> Result<(), ApiError> {
    match request.series.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(raw) => series_name(raw).map(drop),
        None => Ok(()),
    }
}

/// A `1`-or-absent query flag: `1` is true, absence false, and any other value (`true`,
/// `yes`, empty) a 400 naming the accepted one, rather than a silent false.
fn query_flag(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(invalid(&format!(
            "invalid {name} value {other:?}: the accepted value is 1"
        ))),
    }
}

fn ok<T: Serialize>(data: T, rid: &RequestId) -> V1Result {
    Ok(Envelope::ok(data, rid).into_response())
}

/// `POST /v1/images/generate`.
pub async fn generate(State(state): State<AppState>, rid: RequestId, body: JsonBody) -> V1Result {
    let request: GenerateRequest = decode(&body)?;
    check_body_series(&request)?;
    ok(
        catalogue(&state)?.generate(request, rid.as_str()).await?,
        &rid,
    )
}

/// `POST /v1/images/preview`.
pub async fn preview(State(state): State<AppState>, rid: RequestId, body: JsonBody) -> V1Result {
    let request: GenerateRequest = decode(&body)?;
    check_body_series(&request)?;
    ok(catalogue(&state)?.preview(request).await?, &rid)
}

/// `GET /v1/images[?series=]`.
pub async fn list_images(
    State(state): State<AppState>,
    rid: RequestId,
    Query(q): Query<HashMap<String, String>>,
) -> V1Result {
    let series = match q.get("series").filter(|s| !s.is_empty()) {
        Some(raw) => {
            series_name(raw)?;
            Some(raw.clone())
        }
        None => None,
    };
    ok(catalogue(&state)?.list_images(series).await?, &rid)
}

/// `/v1/images/` with no id.
pub async fn empty_image_id() -> V1Result {
    Err(invalid("image id is required"))
}

/// `GET /v1/images/{id}`.
pub async fn get_image(
    State(state): State<AppState>,
    rid: RequestId,
    Path(id): Path<String>,
) -> V1Result {
    ok(catalogue(&state)?.get_image(&id).await?, &rid)
}

/// `DELETE /v1/images/{id}`.
pub async fn delete_image(
    State(state): State<AppState>,
    rid: RequestId,
    Path(id): Path<String>,
) -> V1Result {
    catalogue(&state)?.delete_image(&id).await?;
    ok(Deleted { deleted: true }, &rid)
}

/// `POST /v1/images/{id}/regenerate`.
pub async fn regenerate(
    State(state): State<AppState>,
    rid: RequestId,
    Path(id): Path<String>,
) -> V1Result {
    ok(
        catalogue(&state)?.regenerate(&id, rid.as_str()).await?,
        &rid,
    )
}

/// `POST /v1/images/{id}/export` (an empty body means default options).
pub async fn export(
    State(state): State<AppState>,
    rid: RequestId,
    Path(id): Path<String>,
    body: JsonBody,
) -> V1Result {
    let options = if body.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        decode(&body)?
    };
    ok(catalogue(&state)?.export(&id, options).await?, &rid)
}

#[derive(Debug, Serialize)]
struct Deleted {
    deleted: bool,
}

/// `GET /v1/series[?includeHidden=1|onlyHidden=1]`.
pub async fn list_series(
    State(state): State<AppState>,
    rid: RequestId,
    Query(q): Query<HashMap<String, String>>,
) -> V1Result {
    let (include, only) = (
        query_flag(&q, "includeHidden")?,
        query_flag(&q, "onlyHidden")?,
    );
    ok(catalogue(&state)?.list_series(include, only), &rid)
}

#[derive(Debug, Deserialize)]
struct Hidden {
    hidden: bool,
}

/// `GET /v1/series/{name}`.
pub async fn get_series(
    State(state): State<AppState>,
    rid: RequestId,
    Path(name): Path<String>,
) -> V1Result {
    let name = series_name(&name)?;
    ok(catalogue(&state)?.get_series(name.as_str())?, &rid)
}

/// `PUT /v1/series/{name}`.
pub async fn save_series(
    State(state): State<AppState>,
    rid: RequestId,
    Path(name): Path<String>,
    body: JsonBody,
) -> V1Result {
    series_name(&name)?;
    let series: Series = decode(&body)?;
    // The body's suffix, when set, names the file instead of the path's.
    if !series.suffix.trim().is_empty() {
        series_name(&series.suffix)?;
    }
    ok(catalogue(&state)?.save_series(&name, series).await?, &rid)
}

/// `POST /v1/series/{name}/hidden`.
pub async fn set_series_hidden(
    State(state): State<AppState>,
    rid: RequestId,
    Path(name): Path<String>,
    body: JsonBody,
) -> V1Result {
    let name = series_name(&name)?;
    let Hidden { hidden } = decode(&body)?;
    ok(
        catalogue(&state)?
            .set_series_hidden(name.as_str(), hidden)
            .await?,
        &rid,
    )
}

/// `GET /v1/databases`.
pub async fn list_databases(State(state): State<AppState>, rid: RequestId) -> V1Result {
    ok(vec![catalogue(&state)?.manifest().clone()], &rid)
}

/// `GET /v1/databases/`: the manifest (an empty version is the current one).
pub async fn manifest(State(state): State<AppState>, rid: RequestId) -> V1Result {
    ok(catalogue(&state)?.database("")?, &rid)
}

/// `GET /v1/databases/{version}`.
pub async fn database(
    State(state): State<AppState>,
    rid: RequestId,
    Path(version): Path<String>,
) -> V1Result {
    ok(catalogue(&state)?.database(&version)?, &rid)
}

/// `GET /v1/databases/{version}/records/{name}[?limit=]`.
pub async fn records(
    State(state): State<AppState>,
    rid: RequestId,
    Path((version, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> V1Result {
    // A blank `limit=` is no limit given (the default), as an absent one.
    let limit = match q.get("limit").map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => 0,
        Some(v) => v.parse::<i64>().map_err(|_| invalid("invalid limit"))?,
    };
    ok(catalogue(&state)?.records(&version, &name, limit)?, &rid)
}

#[derive(Debug, Serialize)]
struct Valid {
    valid: bool,
}

/// `POST /v1/validate`.
pub async fn validate(State(state): State<AppState>, rid: RequestId) -> V1Result {
    catalogue(&state)?.validate()?;
    ok(Valid { valid: true }, &rid)
}

/// `GET /v1/progress/{series}/{seed}`: the live snapshot of an engine run.
pub async fn progress(
    State(state): State<AppState>,
    rid: RequestId,
    Path((series, seed)): Path<(String, String)>,
) -> V1Result {
    let (series, seed) = (series_name(&series)?, Seed::new(seed.trim()));
    ok(catalogue(&state)?.progress(series, seed)?, &rid)
}

/// Any other path under `/v1/`: a 404 in the `/v1` error family.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::Catalogue(CatalogueError::new(
        Code::NotFound,
        format!("no such endpoint: {}", uri.path()),
    ))
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

impl From<CatalogueError> for ApiError {
    fn from(e: CatalogueError) -> ApiError {
        ApiError::Catalogue(e)
    }
}
