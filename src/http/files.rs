//! `GET /files/<path>`: read-only access to the artifact store (`<data>/output` on a local
//! disk), with the PNG route's caching headers. No directory listings; `..`, hidden segments
//! and links leading outside the store are refused by the store's containment rule, the same
//! one `/dalle` applies (the path guard already rejected `..`, `//` and encoded slashes before
//! any of this runs).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::ApiError;
use super::extract::Path;
use crate::app::AppState;
use crate::run::Lookup;
use crate::storage::CachedFile;

/// Reads a stored file by name; `None` when it is not there. A cache hit is answered here
/// (one `stat`); only reading the bytes goes to the blocking pool, since the hop there and
/// back cost more than the whole hit (wake-ups and context switches).
pub async fn read(state: &AppState, name: &str) -> Option<CachedFile> {
    match state.store.lookup_named(name) {
        Lookup::Cached(file) => return Some(file),
        Lookup::Present => {}
        Lookup::Absent => return None,
    }
    let (store, name) = (state.store.clone(), name.to_string());
    tokio::task::spawn_blocking(move || store.read_named(&name).ok().flatten())
        .await
        .ok()
        .flatten()
}

/// `GET /files/{*path}`.
pub async fn files(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound {
        details: format!("No file at /files/{rest}"),
    };
    let file = read(&state, &rest).await.ok_or_else(not_found)?;
    Ok(super::file::respond(&file, &headers, content_type(&rest)))
}

pub(super) fn content_type(path: &str) -> &'static str {
    match path
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
