//! The provenance routes: the record's JSON Schema.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

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
