//! One request id per request (CONTRACT §3): taken from a valid incoming `X-Request-ID`,
//! otherwise 8 lower-case hex characters of a v4 UUID. It goes into the response header, the
//! JSON body and the request's tracing span. This outermost middleware also renders error
//! bodies, so every error envelope carries the same id as the header.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, PendingError};

/// The `X-Request-ID` header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A validated request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Accepts 1–64 characters of `[A-Za-z0-9._-]`.
    pub fn parse(raw: &str) -> Option<RequestId> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| RequestId(raw.into()))
    }

    /// A fresh id: the first 8 hex digits of a v4 UUID, as the Go server made them. (The
    /// UUID comes from a thread-local generator: a `getrandom` call per request showed up in
    /// profiles.)
    pub fn mint() -> RequestId {
        let mut buffer = [0; uuid::fmt::Simple::LENGTH];
        let hex = uuid::Uuid::new_v4().simple().encode_lower(&mut buffer);
        RequestId(hex.get(..8).unwrap_or(hex).into())
    }

    /// The id of a request with these headers: a valid incoming `X-Request-ID`, or a new one.
    pub fn of_request(headers: &axum::http::HeaderMap) -> RequestId {
        headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(RequestId::parse)
            .unwrap_or_else(RequestId::mint)
    }

    /// Sets the `X-Request-ID` header of `response` to this id.
    pub fn stamp(&self, response: &mut Response) {
        if let Ok(value) = HeaderValue::from_str(self.as_str()) {
            response.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Always present behind the middleware; minting keeps handlers usable in isolation.
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::mint))
    }
}

/// Assigns the id, then finalises the response: error bodies get the id, a bare 405 from
/// the router becomes an error envelope (keeping its `Allow` header), and the header is set.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    let id = RequestId::of_request(req.headers());
    let v1 = req.uri().path().starts_with("/v1/");
    req.extensions_mut().insert(id.clone());

    let mut response = next.run(req).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && response.extensions().get::<PendingError>().is_none()
    {
        let allow = response.headers().get(axum::http::header::ALLOW).cloned();
        response = ApiError::MethodNotAllowed { v1 }.into_response();
        if let Some(allow) = allow {
            response
                .headers_mut()
                .insert(axum::http::header::ALLOW, allow);
        }
    }
    if let Some(pending) = response.extensions_mut().remove::<PendingError>() {
        let (mut parts, _) = response.into_parts();
        let body = Json(pending.body(id.as_str())).into_response();
        let (body_parts, body) = body.into_parts();
        parts.headers.remove(CONTENT_LENGTH);
        if let Some(ct) = body_parts.headers.get(CONTENT_TYPE) {
            parts.headers.insert(CONTENT_TYPE, ct.clone());
        }
        response = Response::from_parts(parts, Body::new(body));
    }
    id.stamp(&mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_safe_ids() {
        assert!(RequestId::parse("abc-123_x.y").is_some());
        assert!(RequestId::parse(&"a".repeat(64)).is_some());
        assert!(RequestId::parse(&"a".repeat(65)).is_none());
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse("has space").is_none());
        assert!(RequestId::parse("inject\nline").is_none());
    }

    #[test]
    fn minted_ids_are_eight_hex_digits() {
        let id = RequestId::mint();
        assert_eq!(id.as_str().len(), 8);
        assert!(
            id.as_str()
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(RequestId::mint(), RequestId::mint());
    }
}
