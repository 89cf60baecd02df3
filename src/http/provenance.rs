//! The provenance routes: content by CID (`/cache/{cid}`, `/cache/{cid}/meta`), a run's
//! record (`/dalle/<series>/<address>/provenance`, `/v1/images/{id}/provenance`) and the
//! record's JSON Schema.
//!
//! Everything is read through the run core's store and the file cache, so a CID is hashed
//! once, when its file is read, never per request.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::extract::Path;
use super::{ApiError, Envelope, ErrorCode, RequestId};
use crate::app::AppState;
use crate::cid::Cid;
use crate::provenance::index::Reference;
use crate::run::{ArtifactStore, Generator};
use crate::storage::CachedFile;

/// `GET /provenance.schema.json`.
pub async fn schema() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "application/schema+json"),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        crate::provenance::SCHEMA_JSON,
    )
}

/// What `/cache/{cid}` found: the bytes, the name they were read under, every reference.
struct Found {
    file: CachedFile,
    name: String,
    references: Vec<Reference>,
    /// The references whose name holds these bytes now.
    current: Vec<String>,
}

fn parse_cid(raw: &str) -> Result<Cid, ApiError> {
    raw.parse().map_err(|e: crate::cid::CidError| {
        ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "Invalid CID",
            Some(e.to_string()),
        )
    })
}

fn unknown(cid: &Cid) -> ApiError {
    ApiError::NotFound {
        details: format!("No stored content has the CID {cid}"),
    }
}

/// Looks `cid` up in the index and reads the first name that still holds it (blocking I/O on
/// the blocking pool; a cached file costs a `stat`).
async fn find(generator: &Arc<Generator>, cid: Cid) -> Option<Found> {
    let (index, store) = (generator.contents.clone(), generator.store.clone());
    tokio::task::spawn_blocking(move || {
        index.ensure_loaded(&*store);
        let references = index.references(&cid);
        let holds = |name: &str| read_named(&*store, name).filter(|f| f.cid == cid);
        let mut found: Option<(CachedFile, String)> = None;
        let mut current = Vec::new();
        for reference in &references {
            if current.contains(&reference.name) {
                continue;
            }
            if let Some(file) = holds(&reference.name) {
                current.push(reference.name.clone());
                found.get_or_insert((file, reference.name.clone()));
            }
        }
        found.map(|(file, name)| Found {
            file,
            name,
            references,
            current,
        })
    })
    .await
    .ok()
    .flatten()
}

fn read_named(store: &dyn ArtifactStore, name: &str) -> Option<CachedFile> {
    store.read_named(name).ok().flatten()
}

/// `GET /cache/{cid}`: the bytes, immutable (a CID names one content forever).
pub async fn cache(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let cid = parse_cid(&raw)?;
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let found = find(generator, cid).await.ok_or_else(|| unknown(&cid))?;
    let content_type = super::files::content_type(&found.name);
    let mut response = super::file::respond(&found.file, &headers, content_type);
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(response)
}

/// `/cache/{cid}/meta`.
#[derive(Debug, Serialize)]
struct Meta {
    cid: Cid,
    size: usize,
    content_type: &'static str,
    /// When the file holding it was written (RFC 3339, UTC).
    created: String,
    /// The stored names that hold these bytes now.
    names: Vec<String>,
    /// The runs whose records refer to it: the record's name and CID, and the name it had.
    runs: Vec<Reference>,
}

/// `GET /cache/{cid}/meta`.
pub async fn meta(
    State(state): State<AppState>,
    rid: RequestId,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let cid = parse_cid(&raw)?;
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let found = find(generator, cid).await.ok_or_else(|| unknown(&cid))?;
    let meta = Meta {
        cid,
        size: found.file.bytes.len(),
        content_type: super::files::content_type(&found.name),
        created: rfc3339(found.file.modified),
        names: found.current,
        runs: found.references,
    };
    Ok(Envelope::ok(meta, &rid).into_response())
}

fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Serves the record stored under `name` (its ETag is its CID), or 404 with `missing`.
async fn record(
    generator: &Arc<Generator>,
    name: String,
    headers: &HeaderMap,
    missing: ApiError,
) -> Result<Response, ApiError> {
    let store = generator.store.clone();
    let file = tokio::task::spawn_blocking(move || read_named(&*store, &name))
        .await
        .ok()
        .flatten()
        .ok_or(missing)?;
    Ok(super::file::respond(&file, headers, "application/json"))
}

/// `GET /dalle/<series>/<address>/provenance` (dispatched from the `/dalle` handler, which
/// gives the path without its `/provenance`).
pub async fn dalle(
    state: &AppState,
    full_path: &str,
    rest: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let (key, _) = super::dalle::parse_request(full_path, rest, None, |s| {
        generator.attributes.series.contains(s)
    })?;
    let (kind, ext) = crate::provenance::RECORD_FILE;
    let name = generator.store.name(&key, kind, ext);
    let missing = ApiError::NotFound {
        details: format!("No provenance record for {key}: the image has not been made"),
    };
    record(generator, name, headers, missing).await
}

/// `GET /v1/images/{id}/provenance`.
pub async fn v1_image(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let catalogue = super::v1::catalogue(&state)?;
    let found = catalogue.get_image(&super::v1::image_ref(&id)?).await?;
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let name = crate::provenance::record_name_for_metadata(&found.path);
    let missing = || {
        ApiError::Catalogue(crate::catalogue::error::CatalogueError::new(
            crate::catalogue::error::Code::NotFound,
            "this image has no provenance record (it was made without an image, or before \
             records were kept)",
        ))
    };
    let name = name.ok_or_else(missing)?;
    record(generator, name, &headers, missing()).await
}
