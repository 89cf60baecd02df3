//! `GET /files/<path>`: read-only access to `<data>/output`, with the PNG route's caching
//! headers. No directory listings; `..`, hidden segments and symlinks leading outside the
//! output directory are refused (the path guard already rejected `..`, `//` and encoded
//! slashes before any of this runs).

use std::path::{Component, Path as FsPath, PathBuf};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::ApiError;
use super::extract::Path;
use crate::app::AppState;
use crate::storage::CachedFile;

/// Reads a file through the app's cache; `None` when it is not there. A cache hit is
/// answered here (one `stat`); only reading the bytes goes to the blocking pool, since the
/// hop there and back cost more than the whole hit (wake-ups and context switches).
pub async fn read(state: &AppState, path: PathBuf) -> Option<CachedFile> {
    match state.file_cache.fresh(&path) {
        Ok(Some(file)) => return Some(file),
        Ok(None) => {}
        Err(_) => return None,
    }
    let app = state.0.clone();
    tokio::task::spawn_blocking(move || app.file_cache.read(&path).ok())
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
    let root = state.data.output();
    let path = resolve(&root, &rest).ok_or_else(not_found)?;
    let file = read(&state, path).await.ok_or_else(not_found)?;
    Ok(super::file::respond(&file, &headers, content_type(&rest)))
}

/// Joins `rest` under `root` when every segment is a plain, visible name and the real path
/// (after symlinks) stays inside `root`.
fn resolve(root: &FsPath, rest: &str) -> Option<PathBuf> {
    let relative = FsPath::new(rest);
    let plain = relative
        .components()
        .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with('.')));
    if rest.is_empty() || rest.contains(['\\', '\0']) || !plain {
        return None;
    }
    let candidate = root.join(relative);
    let real = candidate.canonicalize().ok()?;
    let real_root = root.canonicalize().ok()?;
    real.starts_with(&real_root).then_some(real)
}

fn content_type(path: &str) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_inside_the_root_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("output");
        std::fs::create_dir_all(root.join("s/annotated")).unwrap();
        std::fs::write(root.join("s/annotated/a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("s/link")).unwrap();
        assert!(resolve(&root, "s/annotated/a.png").is_some());
        for bad in [
            "",
            "../secret",
            "s/../../secret",
            "/etc/passwd",
            "s/link",
            ".hidden",
            "s\\a",
            "s/annotated",
        ] {
            let resolved = resolve(&root, bad);
            assert!(
                resolved.is_none() || resolved.as_ref().is_some_and(|p| p.is_dir()),
                "{bad} resolved to {resolved:?}"
            );
        }
    }
}
