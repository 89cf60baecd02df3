//! One request id per request: taken from a valid incoming `X-Request-ID` (so a proxy's id
//! follows the request through our logs), otherwise 8 lower-case hex characters of a v4 UUID.
//! The request layer ([`super::observe`]) puts it into the response header, the JSON body and
//! the request's tracing span.

use std::fmt;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

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
