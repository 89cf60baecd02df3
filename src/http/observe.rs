//! The one middleware every request passes through ([`ObserveLayer`]), and the per-route
//! handler timeout ([`TimeoutLayer`]).
//!
//! [`ObserveLayer`] does, in order: assign the request id, open the request's tracing span,
//! refuse unsafe paths before any handler (and so any file access) sees them, run the route,
//! render a pending error body with the request id, record the request's metrics and write its
//! access-log line. It is one hand-written layer rather than a stack of `from_fn` layers: each
//! of those boxes a future and clones the inner service per request, which showed in profiles
//! of cache hits and polls (see the book's benchmarks page).
//!
//! It is added with `Router::layer`, so it runs after routing: the endpoint label comes from the
//! matched route template ([`MatchedPath`]), never from the raw path, and the 404 fallback goes
//! through it too.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Level;

use super::RequestId;
use super::error::{ApiError, ErrorCode, PendingError};
use crate::app::AppState;
use crate::config::AccessLog;
use crate::telemetry::access;

/// Requests slower than this are logged as slow.
const SLOW_REQUEST: Duration = Duration::from_secs(5);
/// A handler gets this long to produce its response (body streaming is not counted).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `/v1` generate and regenerate answer when the image is done, which can take minutes
/// (a 300 s image timeout, retries): they get this instead.
pub const GENERATION_REQUEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The bounded endpoint label used by logs and metrics, from the matched route template
/// (never an address or a file name); `other` for the 404 fallback.
pub fn endpoint_label(route: Option<&str>) -> &'static str {
    let Some(route) = route else {
        return "other";
    };
    let first = route
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    match first {
        "" => "root",
        "livez" | "readyz" | "health" => "health",
        "dalle" => "dalle",
        "series" => "series",
        "metrics" => "metrics",
        "preview" => "preview",
        "files" => "files",
        "errors" => "errors",
        "openapi.json" | "v1" => "v1",
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

/// The [`Layer`] of [`Observe`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    state: AppState,
}

impl ObserveLayer {
    /// Observes requests into the metrics and access log of `state`.
    pub fn new(state: AppState) -> ObserveLayer {
        ObserveLayer { state }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    state: AppState,
}

/// The boxed future of a layer (one allocation per request).
type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Answer {
        let start = Instant::now();
        let id = RequestId::of_request(req.headers());
        req.extensions_mut().insert(id.clone());
        let facts = Facts {
            method: req.method().clone(),
            uri: req.uri().clone(),
            route: req.extensions().get::<MatchedPath>().cloned(),
            peer: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        };
        // No span per request: opening one formats its fields on every request, which showed in
        // profiles of cache hits. The request's one log line carries the id; a run started by
        // the request has its own span with the id.
        // The ready clone answers this request; `self` keeps a fresh one for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let state = self.state.clone();
        let refused = unsafe_path(facts.uri.path());
        Box::pin(async move {
            let response = match refused {
                Some(reason) => ApiError::bad_request(
                    ErrorCode::InvalidRequest,
                    "Invalid request path",
                    Some(reason.into()),
                )
                .into_response(),
                None => inner.call(req).await?,
            };
            let (response, cause) = finish(response, &id, facts.route.as_ref());
            let status = response.status().as_u16();
            record(&state, &facts, &id, status, start.elapsed(), cause);
            Ok(response)
        })
    }
}

/// What the access log and metrics need of the request, taken before the handler owns it.
struct Facts {
    method: Method,
    /// The request URI: a clone shares the parsed bytes instead of copying the path.
    uri: axum::http::Uri,
    route: Option<MatchedPath>,
    peer: Option<SocketAddr>,
}

/// Renders the final response: a pending error gets its envelope (with the request id, the
/// same as the header), a bare 405 from the router becomes an envelope of the route's error
/// family keeping its `Allow` header, and the `X-Request-ID` header is set. Returns the
/// internal cause of a server error, for the one log line that reports it.
fn finish(
    mut response: Response,
    id: &RequestId,
    route: Option<&MatchedPath>,
) -> (Response, Option<String>) {
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && response.extensions().get::<PendingError>().is_none()
    {
        let v1 = route.is_some_and(|r| r.as_str().starts_with("/v1/"));
        let allow = response.headers().get(ALLOW).cloned();
        response = ApiError::MethodNotAllowed { v1 }.into_response();
        if let Some(allow) = allow {
            response.headers_mut().insert(ALLOW, allow);
        }
    }
    let mut cause = None;
    if let Some(pending) = response.extensions_mut().remove::<PendingError>() {
        let (mut parts, _) = response.into_parts();
        let body = Json(pending.body(id.as_str())).into_response();
        let (body_parts, body) = body.into_parts();
        parts.headers.remove(CONTENT_LENGTH);
        if let Some(ct) = body_parts.headers.get(CONTENT_TYPE) {
            parts.headers.insert(CONTENT_TYPE, ct.clone());
        }
        response = Response::from_parts(parts, Body::new(body));
        cause = pending.cause;
    }
    id.stamp(&mut response);
    (response, cause)
}

/// The end of every request: its metrics, then its one log line. Server errors (5xx) are
/// logged as errors with their internal cause (the only place an error is logged) and slow
/// requests as warnings, whatever the access log is set to; every other request gets the
/// access-log line at the configured level.
fn record(
    state: &AppState,
    facts: &Facts,
    id: &RequestId,
    status: u16,
    elapsed: Duration,
    cause: Option<String>,
) {
    let endpoint = endpoint_label(facts.route.as_ref().map(MatchedPath::as_str));
    state
        .metrics
        .observe_request(method_label(&facts.method), endpoint, status, elapsed);
    let (method, path) = (&facts.method, facts.uri.path());
    let level = log_level(status, elapsed, state.config.access_log);
    // The access lines go to the buffered writer only when the log filter would also have
    // let a `tracing` event of their level through (`RUST_LOG=warn` silences them).
    let access = match level {
        Some(Level::INFO) if tracing::enabled!(Level::INFO) => Some(access::Level::Info),
        Some(Level::DEBUG) if tracing::enabled!(Level::DEBUG) => Some(access::Level::Debug),
        _ => None,
    };
    if let Some(access_level) = access {
        access::line(access_level, "request", |line| {
            let _ = write!(
                line,
                " request_id={} method={method} path={path} status={status} elapsed={elapsed:?} \
                 endpoint=\"{endpoint}\" peer={}",
                id.as_str(),
                Peer(facts.peer)
            );
        });
        return;
    }
    let request_id = tracing::field::display(id.as_str());
    let peer = tracing::field::display(Peer(facts.peer));
    match level {
        Some(Level::ERROR) => {
            let cause = cause.unwrap_or_default();
            tracing::error!(request_id, %method, path = %path, status, ?elapsed, endpoint, peer, cause, "request failed");
        }
        Some(Level::WARN) => {
            tracing::warn!(request_id, %method, path = %path, status, ?elapsed, endpoint, peer, "slow request");
        }
        _ => {}
    }
}

/// The level of a request's log line, or none.
fn log_level(status: u16, elapsed: Duration, access: AccessLog) -> Option<Level> {
    if status >= 500 {
        Some(Level::ERROR)
    } else if elapsed > SLOW_REQUEST {
        Some(Level::WARN)
    } else {
        match access {
            AccessLog::Info => Some(Level::INFO),
            AccessLog::Debug => Some(Level::DEBUG),
            AccessLog::Off => None,
        }
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

/// Bounds how long a route's handler may take; the client gets a 503 envelope instead of a
/// hang. Added per route group with `Router::route_layer`, so each route states its own limit.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer(pub Duration);

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            limit: self.0,
        }
    }
}

/// See [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> Service<Request> for Timeout<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Answer {
        let limit = self.limit;
        let answer = self.inner.call(req);
        Box::pin(async move {
            Ok(match tokio::time::timeout(limit, answer).await {
                Ok(response) => response?,
                Err(_) => ApiError::Unavailable {
                    message: "Request timed out".into(),
                    details: Some(format!("no response within {}s", limit.as_secs())),
                }
                .into_response(),
            })
        })
    }
}

/// Why `path` is refused by the path guard (in [`Observe`]), or `None` when it is safe to route.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_route_templates() {
        assert_eq!(endpoint_label(Some("/dalle/{*rest}")), "dalle");
        assert_eq!(endpoint_label(Some("/files/{*path}")), "files");
        assert_eq!(endpoint_label(Some("/readyz")), "health");
        assert_eq!(endpoint_label(Some("/")), "root");
        assert_eq!(endpoint_label(Some("/v1/images/{id}/export")), "v1");
        assert_eq!(endpoint_label(None), "other");
    }

    #[test]
    fn access_log_levels() {
        let fast = Duration::from_millis(1);
        assert_eq!(log_level(200, fast, AccessLog::Info), Some(Level::INFO));
        assert_eq!(log_level(404, fast, AccessLog::Debug), Some(Level::DEBUG));
        assert_eq!(log_level(200, fast, AccessLog::Off), None);
        assert_eq!(log_level(503, fast, AccessLog::Off), Some(Level::ERROR));
        assert_eq!(
            log_level(200, Duration::from_secs(6), AccessLog::Off),
            Some(Level::WARN)
        );
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
            .route_layer(TimeoutLayer(REQUEST_TIMEOUT));
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
