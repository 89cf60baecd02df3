//! Per-request observation and guards, in stack order after the request id: a tracing span
//! with one log line per request, metrics, the path guard and the request timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::RequestId;
use super::error::{ApiError, ErrorCode};
use crate::app::AppState;

/// Requests slower than this are logged as slow.
const SLOW_REQUEST: Duration = Duration::from_secs(5);
/// A handler gets this long to produce its response (body streaming is not counted).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `/v1` generate and regenerate answer when the image is done, which can take minutes
/// (a 300 s image timeout, retries): they get this instead.
pub const GENERATION_REQUEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The bounded endpoint label used by logs and metrics (never an address or a file name).
pub fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/" => "root",
        "/livez" | "/readyz" => "health",
        p if p.starts_with("/dalle/") || p == "/dalle" => "dalle",
        p if p.starts_with("/series") => "series",
        p if p.starts_with("/health") => "health",
        p if p.starts_with("/metrics") => "metrics",
        p if p.starts_with("/preview") => "preview",
        p if p.starts_with("/files/") => "files",
        p if p.starts_with("/errors") => "errors",
        p if p.starts_with("/v1/") => "v1",
        _ => "other",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Opens the request's span and logs one line when the response is ready.
pub async fn trace(req: Request, next: Next) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::mint);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    async move {
        let start = Instant::now();
        let response = next.run(req).await;
        let elapsed = start.elapsed();
        let status = response.status().as_u16();
        let endpoint = endpoint_label(&path);
        if status >= 500 {
            tracing::error!(status, ?elapsed, endpoint, %peer, "request failed");
        } else if elapsed > SLOW_REQUEST {
            tracing::warn!(status, ?elapsed, endpoint, %peer, "slow request");
        } else {
            tracing::info!(status, ?elapsed, endpoint, %peer, "request");
        }
        response
    }
    .instrument(span)
    .await
}

/// Records latency and errors for every request.
pub async fn metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let endpoint = endpoint_label(req.uri().path());
    let start = Instant::now();
    let response = next.run(req).await;
    state.metrics.observe_request(
        method,
        endpoint,
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

/// Rejects `..`, `.`, empty (`//`) and encoded-slash segments before any handler (and so any
/// file access) sees the path.
pub async fn path_guard(req: Request, next: Next) -> Response {
    if let Some(reason) = unsafe_path(req.uri().path()) {
        return ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "Invalid request path",
            Some(reason.into()),
        )
        .into_response();
    }
    next.run(req).await
}

fn unsafe_path(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i == segments.len() - 1;
        if seg.is_empty() && !last {
            return Some("empty path segment (//)");
        }
        let lower = seg.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || seg.contains('\\') {
            return Some("encoded slash in a path segment");
        }
        let decoded = lower.replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Some("dot segment in path");
        }
    }
    None
}

/// Bounds how long a handler may take; the client gets a 503 envelope instead of a hang.
pub async fn timeout(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let generates = req.method() == Method::POST
        && (path == "/v1/images/generate"
            || (path.starts_with("/v1/images/") && path.ends_with("/regenerate")));
    let limit = if generates {
        GENERATION_REQUEST_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable {
            message: "Request timed out".into(),
            details: Some(format!("no response within {}s", limit.as_secs())),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(endpoint_label("/dalle/simple/0xabc"), "dalle");
        assert_eq!(endpoint_label("/files/simple/annotated/0xabc.png"), "files");
        assert_eq!(endpoint_label("/readyz"), "health");
        assert_eq!(endpoint_label("/nope"), "other");
    }

    #[test]
    fn traversal_shapes_are_rejected() {
        for bad in [
            "/files/../etc/passwd",
            "/files/%2e%2e/etc",
            "/files/%2E%2e/x",
            "/dalle//0xabc",
            "/files/a%2fb",
            "/files/a%5Cb",
            "/files/./x",
            "/files/a\\b",
        ] {
            assert!(unsafe_path(bad).is_some(), "{bad} should be rejected");
        }
        for good in [
            "/",
            "/health",
            "/files/a..b.png",
            "/series/",
            "/dalle/simple/0xabc",
        ] {
            assert!(unsafe_path(good).is_none(), "{good} should pass");
        }
    }
}

#[cfg(test)]
mod timeout_tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test(start_paused = true)]
    async fn handlers_get_sixty_seconds_then_a_503_envelope() {
        let app = Router::new()
            .route("/hang", get(std::future::pending::<&'static str>))
            .route(
                "/fifty-nine",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(59)).await;
                    "ok"
                }),
            )
            .layer(axum::middleware::from_fn(timeout));
        let request = |path: &str| axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request("/fifty-nine")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let response = app.oneshot(request("/hang")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let pending = response
            .extensions()
            .get::<super::super::error::PendingError>()
            .unwrap();
        assert_eq!(pending.code, ErrorCode::ServiceUnavailable.as_str());
    }
}
