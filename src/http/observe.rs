//! Per-request observation and guards, in stack order after the request id: a tracing span
//! with one log line per request, metrics, the path guard and the request timeout, run by one
//! middleware ([`observe`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{Instrument, Level};

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

/// Everything between the request id and the handler, in the contract's order: the request's
/// span and log line, metrics, the path guard, then the handler under its timeout. One
/// middleware rather than four: each `from_fn` layer boxes a future and clones the inner
/// service on every request, which showed in profiles of cache hits and progress polls.
///
/// The log line: failures (5xx) as errors, slow requests as warnings, client errors (4xx) at
/// info, and successful requests at debug. Formatting and writing that line to stderr was the
/// largest user-space cost of a cache hit or a poll (see the book's benchmarks page);
/// `RUST_LOG=debug` brings it back. The span stays at info, so any line a request logs carries
/// its id.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::mint);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Only the id in the span: the subscriber formats span fields when the span opens, on
    // every request, and the method and path are in the request's own log line anyway.
    let span = tracing::info_span!("request", request_id = %id);
    async move {
        let start = Instant::now();
        // Rejects `..`, `.`, empty (`//`) and encoded-slash segments before any handler (and
        // so any file access) sees the path.
        let response = match unsafe_path(&path) {
            Some(reason) => ApiError::bad_request(
                ErrorCode::InvalidRequest,
                "Invalid request path",
                Some(reason.into()),
            )
            .into_response(),
            None => timeout(req, next).await,
        };
        let status = response.status().as_u16();
        record(&state, &method, &path, status, start.elapsed(), peer);
        response
    }
    .instrument(span)
    .await
}

/// The end of every request: its metrics, then its log line (see [`observe`] for the levels).
/// Shared with the fast lane for cached images ([`super::fast`]).
pub(super) fn record(
    state: &AppState,
    method: &Method,
    path: &str,
    status: u16,
    elapsed: Duration,
    peer: Option<SocketAddr>,
) {
    let endpoint = endpoint_label(path);
    state
        .metrics
        .observe_request(method_label(method), endpoint, status, elapsed);
    let peer = tracing::field::display(Peer(peer));
    match log_level(status, elapsed) {
        Level::ERROR => {
            tracing::error!(%method, %path, status, ?elapsed, endpoint, peer, "request failed");
        }
        Level::WARN => {
            tracing::warn!(%method, %path, status, ?elapsed, endpoint, peer, "slow request");
        }
        Level::INFO => tracing::info!(%method, %path, status, ?elapsed, endpoint, peer, "request"),
        _ => tracing::debug!(%method, %path, status, ?elapsed, endpoint, peer, "request"),
    }
}

/// The level of a request's log line: failures (5xx) as errors, slow requests as warnings,
/// client errors at info, the rest at debug.
fn log_level(status: u16, elapsed: Duration) -> Level {
    if status >= 500 {
        Level::ERROR
    } else if elapsed > SLOW_REQUEST {
        Level::WARN
    } else if status >= 400 {
        Level::INFO
    } else {
        Level::DEBUG
    }
}

/// Whether [`record`] would write a line for this request (a span for it is then worth
/// opening).
pub(super) fn logs(status: u16, elapsed: Duration) -> bool {
    match log_level(status, elapsed) {
        Level::ERROR => tracing::enabled!(Level::ERROR),
        Level::WARN => tracing::enabled!(Level::WARN),
        Level::INFO => tracing::enabled!(Level::INFO),
        _ => tracing::enabled!(Level::DEBUG),
    }
}

/// The client's address in a log line (empty when unknown), formatted only if a line is written.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => Ok(()),
        }
    }
}

/// Why `path` is refused by the path guard (in [`observe`]), or `None` when it is safe to route.
pub fn unsafe_path(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    if rest.is_empty() {
        return None;
    }
    // Runs on every request: no allocation.
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg.is_empty() && !last {
            return Some("empty path segment (//)");
        }
        if contains_ignore_case(seg, "%2f")
            || contains_ignore_case(seg, "%5c")
            || seg.contains('\\')
        {
            return Some("encoded slash in a path segment");
        }
        if is_dot_segment(seg) {
            return Some("dot segment in path");
        }
    }
    None
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// `.` or `..`, each dot possibly percent-encoded as `%2e`/`%2E`.
fn is_dot_segment(seg: &str) -> bool {
    let mut rest = seg.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
    }
    dots == 1 || dots == 2
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
            "/files/.%2E/x",
            "/files/%2e",
            "/files/x/..",
            "/files/A%2Fb",
        ] {
            assert!(unsafe_path(bad).is_some(), "{bad} should be rejected");
        }
        for good in [
            "/",
            "/health",
            "/files/a..b.png",
            "/series/",
            "/dalle/simple/0xabc",
            "/files/...",
            "/files/%2e%2e%2e",
            "/files/.x",
            "/files/%2",
            "/files/a/",
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
