//! The `/v1` management API: images (generate, preview, list, get, delete,
//! regenerate, export), series (list, get, save, hide), databases (manifest, records) and
//! validation, plus `GET /v1/progress/{series}/{seed}` and the OpenAPI document.
//!
//! Bodies are decoded leniently like the Go server: unknown fields are ignored and only the
//! first JSON value is read; an empty or malformed body is `400 invalid_input`. Errors carry
//! the engine's lower-case codes and their statuses ([`Code::http_status`]).
//!
//! Every identifier a route takes — series names, seeds, image ids — is parsed here into its
//! [`crate::domain`] type, and the generate body is checked whole, so the catalogue below
//! never sees a raw string for one and a bad request is refused before any work is done.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header::{CONTENT_TYPE, LINK};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::Identified;
use super::extract::{JsonBody, Path};
use super::idempotent;
use super::{ApiError, Envelope, RequestId};
use crate::app::AppState;
use crate::attributes::series::Series;
use crate::auth::Caller;
use crate::catalogue::error::{CatalogueError, Code};
use crate::catalogue::service::{Catalogue, DEFAULT_PAGE, GenerateRequest, MAX_PAGE, MAX_TEXT};
use crate::domain::{ImageRef, Seed, SeriesName};

/// The OpenAPI 3.1 description of this server, embedded.
pub const OPENAPI: &str = include_str!("openapi.json");

type V1Result = Result<Response, ApiError>;

pub(super) fn catalogue(state: &AppState) -> Result<&std::sync::Arc<Catalogue>, ApiError> {
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

/// The `POST /v1/images/generate` and `/preview` body as sent (unknown fields are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GenerateBody {
    input: String,
    seed: Option<String>,
    series: Option<String>,
    recipe: Option<String>,
    backstyle: Option<String>,
    enhance: bool,
    image: bool,
    annotate: bool,
    force: bool,
}

impl GenerateBody {
    /// The request, or `400 invalid_input` for a text over [`MAX_TEXT`] bytes (each is kept in
    /// the record) or a seed that cannot be used. `series` defaults to `empty`. `caller` is
    /// who asks, for the run the catalogue may start.
    fn parse(self, caller: Caller) -> Result<GenerateRequest, ApiError> {
        let texts = [
            ("input", Some(&self.input)),
            ("recipe", self.recipe.as_ref()),
            ("backstyle", self.backstyle.as_ref()),
        ];
        if let Some((name, _)) = texts
            .iter()
            .find(|(_, t)| t.is_some_and(|t| t.len() > MAX_TEXT))
        {
            return Err(invalid(&format!("{name} is longer than {MAX_TEXT} bytes")));
        }
        let seed = Seed::for_request(&self.input, self.seed.as_deref())
            .map_err(|e| invalid(&e.to_string()))?;
        let series = self
            .series
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        Ok(GenerateRequest {
            input: if self.input.trim().is_empty() {
                seed.as_str().to_string()
            } else {
                self.input
            },
            seed,
            series: series
                .map(series_name)
                .transpose()?
                .unwrap_or_else(|| SeriesName::normalize("empty")),
            recipe: self.recipe,
            backstyle: self.backstyle,
            enhance: self.enhance,
            image: self.image,
            annotate: self.annotate,
            force: self.force,
            caller,
        })
    }
}

/// The catalogue's `unauthorized` as the same 401 every other route answers (and counts).
fn or_refused(state: &AppState, e: CatalogueError) -> ApiError {
    if e.code == Code::Unauthorized {
        super::auth::refuse(state, true)
    } else {
        e.into()
    }
}

/// `POST /v1/images/estimate`: the generate body, answered with what a new run for it would
/// cost and whether a spending cap would refuse it; nothing is run or reserved.
pub async fn estimate(
    State(state): State<AppState>,
    rid: RequestId,
    Identified(caller): Identified,
    body: JsonBody,
) -> V1Result {
    // Runs nothing, so it needs no key; the caller's own caps are checked with the others.
    let request = decode::<GenerateBody>(&body)?.parse(caller)?;
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let options = crate::run::JobOptions {
        artifacts: if request.image {
            crate::run::Artifacts::NONE.with(crate::run::Artifact::Generated)
        } else {
            crate::run::Artifacts::NONE
        },
        ..crate::run::JobOptions::default()
    };
    let price = generator.estimate(&options);
    let refusal = generator
        .check_budget(&options, &request.caller)
        .err()
        .map(|e| {
            serde_json::json!({
                "code": Code::BudgetExhausted.as_str(),
                "cap": e.cap,
                "message": e.to_string(),
                "retryAfterSeconds": e.retry_after.as_secs().max(1),
            })
        });
    let data = serde_json::json!({
        "usd": price.map_or(0.0, crate::budget::usd),
        "images": u64::from(price.is_some()),
        "model": price.map(|_| state.config.openai.image_model.clone()),
        "mock": state.config.openai.mock_mode(),
        "allowed": refusal.is_none(),
        "refusal": refusal,
    });
    ok(data, &rid)
}

/// `POST /v1/images/generate`. A hit needs no key; a request that would start a run does.
/// With `Idempotency-Key`, a retry answers the first request's result ([`idempotent`]).
pub async fn generate(
    State(state): State<AppState>,
    rid: RequestId,
    Identified(caller): Identified,
    headers: HeaderMap,
    body: JsonBody,
) -> V1Result {
    let request = decode::<GenerateBody>(&body)?.parse(caller)?;
    let what = idempotent::Request {
        route: "generate",
        target: None,
        body: understood(&request),
    };
    let (catalogue, s, id) = (catalogue(&state)?.clone(), state.clone(), rid.to_string());
    let work = async move {
        let result = catalogue.generate(request, &id).await;
        data(result.map_err(|e| or_refused(&s, e)))
    };
    idempotent::answer(&state, &headers, &rid, what, work).await
}

/// A generate request as the server understood it, for its idempotency fingerprint:
/// defaults filled, the series normalised and the seed derived, so two bodies that ask for
/// the same thing are one request. Whether the caller holds a key is not part of it.
fn understood(r: &GenerateRequest) -> serde_json::Value {
    serde_json::json!({
        "input": r.input,
        "seed": r.seed.as_str(),
        "series": r.series.as_str(),
        "recipe": r.recipe,
        "backstyle": r.backstyle,
        "enhance": r.enhance,
        "image": r.image,
        "annotate": r.annotate,
        "force": r.force,
    })
}

/// A handler's answer as the envelope's `data`.
fn data<T: Serialize>(result: Result<T, ApiError>) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(result?).map_err(|e| {
        CatalogueError::new(Code::Internal, "cannot encode the answer")
            .with_cause(e)
            .into()
    })
}

/// `POST /v1/images/preview`: writes a record but never starts a run or calls OpenAI, so
/// it needs no key.
pub async fn preview(State(state): State<AppState>, rid: RequestId, body: JsonBody) -> V1Result {
    let request = decode::<GenerateBody>(&body)?.parse(Caller::READER)?;
    ok(catalogue(&state)?.preview(request).await?, &rid)
}

/// `GET /v1/images[?series=&limit=&after=]`: one page of records; when there are more, a
/// `Link: <…>; rel="next"` header names the next page.
pub async fn list_images(
    State(state): State<AppState>,
    rid: RequestId,
    Query(q): Query<HashMap<String, String>>,
) -> V1Result {
    let given = |k: &str| q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let series = given("series").map(series_name).transpose()?;
    let limit = match given("limit") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| invalid(&format!("limit must be an integer from 1 to {MAX_PAGE}")))?,
    };
    let after = given("after").map(str::to_string);
    let page = catalogue(&state)?
        .list_images(series.clone(), after, limit)
        .await?;
    let mut response = Envelope::ok(page.records, &rid).into_response();
    if let Some(link) = page
        .next
        .and_then(|next| next_link(series.as_ref(), limit, &next))
    {
        response.headers_mut().insert(LINK, link);
    }
    Ok(response)
}

/// `</v1/images?…>; rel="next"` for the page after the `imageId` `after`.
fn next_link(series: Option<&SeriesName>, limit: usize, after: &str) -> Option<HeaderValue> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(series) = series {
        query.append_pair("series", series.as_str());
    }
    query.append_pair("limit", &limit.to_string());
    query.append_pair("after", after);
    HeaderValue::from_str(&format!("</v1/images?{}>; rel=\"next\"", query.finish())).ok()
}

/// An image id from the path.
pub(super) fn image_ref(raw: &str) -> Result<ImageRef, ApiError> {
    ImageRef::parse(raw).map_err(|e| invalid(&e.to_string()))
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
    ok(catalogue(&state)?.get_image(&image_ref(&id)?).await?, &rid)
}

/// `DELETE /v1/images/{id}`.
pub async fn delete_image(
    State(state): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> V1Result {
    super::auth::require(&state, &headers, true)?;
    catalogue(&state)?.delete_image(&image_ref(&id)?).await?;
    ok(Deleted { deleted: true }, &rid)
}

/// `POST /v1/images/{id}/regenerate`: always a new paid run, so a retry with the same
/// `Idempotency-Key` answers the first one's result instead of paying again.
pub async fn regenerate(
    State(state): State<AppState>,
    rid: RequestId,
    Identified(caller): Identified,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> V1Result {
    let image = image_ref(&id)?;
    let what = idempotent::Request {
        route: "regenerate",
        target: Some(image.as_str()),
        body: serde_json::Value::Null,
    };
    let (catalogue, s, rid_text) = (catalogue(&state)?.clone(), state.clone(), rid.to_string());
    let target = image.clone();
    let work = async move {
        let result = catalogue.regenerate(&target, caller, &rid_text).await;
        data(result.map_err(|e| or_refused(&s, e)))
    };
    idempotent::answer(&state, &headers, &rid, what, work).await
}

/// `POST /v1/images/{id}/export` (an empty body means default options), idempotent with
/// `Idempotency-Key` like generate.
pub async fn export(
    State(state): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: JsonBody,
) -> V1Result {
    super::auth::require(&state, &headers, true)?;
    let options: serde_json::Value = if body.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        decode(&body)?
    };
    let image = image_ref(&id)?;
    // Fingerprinted as understood: key case and unknown keys make no other request.
    let understood = crate::catalogue::export::ExportOptions::from_json(&options)?;
    let what = idempotent::Request {
        route: "export",
        target: Some(image.as_str()),
        body: serde_json::to_value(understood).unwrap_or_default(),
    };
    let (catalogue, target) = (catalogue(&state)?.clone(), image.clone());
    let work = async move { data(catalogue.export(&target, options).await.map_err(Into::into)) };
    idempotent::answer(&state, &headers, &rid, what, work).await
}

#[derive(Debug, Serialize)]
struct Deleted {
    deleted: bool,
}

/// `GET /v1/series[?includeHidden=1|onlyHidden=1]`: the admin's listing, so hidden series
/// are shown (with `deleted: true`) when asked for; `/series` never lists them.
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
    ok(catalogue(&state)?.get_series(&name)?, &rid)
}

/// `PUT /v1/series/{name}`. As upstream, a suffix in the body wins over the name in the path;
/// unlike upstream, a blank name is refused rather than saved as `unknown`.
pub async fn save_series(
    State(state): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: JsonBody,
) -> V1Result {
    super::auth::require(&state, &headers, true)?;
    series_name(&name)?;
    let series: Series = decode(&body)?;
    let name = [series.suffix.as_str(), name.as_str()]
        .into_iter()
        .find(|s| !s.trim().is_empty())
        .ok_or_else(|| invalid("series name is required"))
        .and_then(series_name)?;
    ok(catalogue(&state)?.save_series(&name, series).await?, &rid)
}

/// `POST /v1/series/{name}/hidden`.
pub async fn set_series_hidden(
    State(state): State<AppState>,
    rid: RequestId,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: JsonBody,
) -> V1Result {
    super::auth::require(&state, &headers, true)?;
    let name = series_name(&name)?;
    let Hidden { hidden } = decode(&body)?;
    ok(
        catalogue(&state)?.set_series_hidden(&name, hidden).await?,
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
