//! `GET /`: the plain-text list of endpoints, the 404 fallback that points to it, and
//! `/favicon.ico` (browsers ask for it on every page; a 404 there would fill `/errors` and
//! the error counters with noise).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

use super::ApiError;

/// Every route the server answers, one per line (the Go server's list plus the newer
/// routes). A route is listed here when it is served, not before.
pub const ENDPOINTS: &str = "\
Endpoints:
  /series - list valid series
  /dalle/<series>/<address>?[generate=1|remove] - request, poll or remove an image
  /preview[?series=&page=&per_page=] - HTML gallery of generated annotated images
  /preview/provenance/<series>/<address> - HTML page of an image's provenance
  /dalle/<series>/<address>/provenance - the provenance record of an image
  /files/<series>/annotated/<address>.png - generated files
  /cache/<cid>[/meta] - stored content by its CID, and what refers to it
  /health[?check=liveness|readiness] | /livez | /readyz - health probes
  /metrics[?format=json] - Prometheus metrics
  /errors[?clear|format=json] - error report
  /v1/images[/<id>/provenance], /v1/series, /v1/databases, /v1/validate, /v1/progress, /v1/usage - management API
  /openapi.json - OpenAPI 3.1 description of every route
  /provenance.schema.json - JSON Schema of the provenance records
";

/// `GET /`.
pub async fn endpoints() -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], ENDPOINTS)
}

/// The icon, embedded (a 32×32 PNG inside an ICO container, a few hundred bytes).
const FAVICON: &[u8] = include_bytes!("favicon.ico");

/// `GET /favicon.ico`.
pub async fn favicon() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "image/x-icon"),
            (CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
}

/// Any unknown path: a 404 envelope whose details list the endpoints (the Go server answered
/// 200 with the list).
pub async fn not_found() -> ApiError {
    let list: Vec<&str> = ENDPOINTS.lines().skip(1).map(str::trim).collect();
    ApiError::NotFound {
        details: format!("Unknown path. Available endpoints: {}", list.join("; ")),
    }
}
