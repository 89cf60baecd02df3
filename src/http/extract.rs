//! The extractors handlers use instead of axum's, so that a request that cannot be read is
//! answered with the error envelope of its route family (axum's own rejections are plain
//! text): [`Path`] for path parameters and [`JsonBody`] for request bodies.
//!
//! [`JsonBody`] also bounds what a body may cost. It is at most `--max-body` bytes (413
//! beyond) and must arrive within [`BODY_READ_TIMEOUT`] (408 after): the connection watchdog
//! in `server` only times headers and idle connections, and the generate route's handler
//! timeout is twenty minutes. The bytes are copied into one buffer as they come: hyper hands
//! each read over as a slice of its read buffer, so keeping the chunks (as axum's `Bytes`
//! extractor does while it collects) pins a whole buffer per chunk, and a client dripping
//! one byte at a time made the server hold hundreds of megabytes.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_LENGTH};
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::app::AppState;

/// A client gets this long, from the end of its headers, to send the whole body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the request is in the `/v1` error family (lower-case codes) or the legacy one.
fn is_v1(parts: &Parts) -> bool {
    // Nested routers see the path without `/v1`; the original URI keeps it.
    let path = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(parts.uri.path(), |o| o.0.path());
    path == "/v1" || path.starts_with("/v1/")
}

/// axum's `Path`, rejecting with the error envelope: a path parameter that is not valid
/// UTF-8 (`%ff`) or does not fit the type is a 400.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let found =
            <axum::extract::Path<T> as FromRequestParts<S>>::from_request_parts(parts, state).await;
        match found {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(e) => Err(path_rejected(parts, &e)),
        }
    }
}

impl<T, S> OptionalFromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, ApiError> {
        let found = <axum::extract::Path<T> as OptionalFromRequestParts<S>>::from_request_parts(
            parts, state,
        )
        .await;
        match found {
            Ok(value) => Ok(value.map(|axum::extract::Path(v)| Path(v))),
            Err(e) => Err(path_rejected(parts, &e)),
        }
    }
}

fn path_rejected(parts: &Parts, e: &axum::extract::rejection::PathRejection) -> ApiError {
    if e.status().is_server_error() {
        // A route declared with parameters its handler does not take: our bug, not the client's.
        return ApiError::Internal(e.body_text());
    }
    ApiError::Rejected {
        status: StatusCode::BAD_REQUEST,
        v1: is_v1(parts),
        message: "Invalid request path".into(),
        details: Some(e.body_text()),
    }
}

/// A request body read whole, bounded in size and time (see the module docs). It derefs
/// to the bytes.
#[derive(Debug)]
pub struct JsonBody(Vec<u8>);

impl std::ops::Deref for JsonBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let limit = state.config.max_body;
        read_body(&parts.headers, body, limit, BODY_READ_TIMEOUT)
            .await
            .map(JsonBody)
            .map_err(|e| e.into_api_error(is_v1(&parts), limit))
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit")]
    TooLarge,
    #[error("request body did not arrive in time")]
    TimedOut,
    /// The transfer broke off or its framing was invalid (a bad chunk size, say).
    #[error("request body could not be read: {0}")]
    Malformed(String),
}

impl BodyError {
    fn into_api_error(self, v1: bool, limit: usize) -> ApiError {
        let (status, message, details) = match &self {
            BodyError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
                format!("the body may be at most {limit} bytes"),
            ),
            BodyError::TimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "Request body timed out",
                format!(
                    "the whole body must arrive within {}s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ),
            BodyError::Malformed(why) => (
                StatusCode::BAD_REQUEST,
                "Invalid request body",
                format!("the body could not be read: {why}"),
            ),
        };
        ApiError::Rejected {
            status,
            v1,
            message: message.into(),
            details: Some(details),
        }
    }
}

/// Reads `body` into one buffer of at most `limit` bytes within `within`. A declared
/// `Content-Length` over the limit is refused before anything is read.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    within: Duration,
) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    // Never trust the declared length for more than a first, small allocation.
    let first = declared.map_or(0, |n| n as usize).min(limit).min(16 * 1024);
    let collect = async move {
        let mut buffer = Vec::with_capacity(first);
        let mut body = body;
        while let Some(frame) = std::future::poll_fn(|cx| {
            http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
        })
        .await
        {
            let frame = frame.map_err(|e| BodyError::Malformed(source_text(&e)))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if buffer.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            // Copy, then drop the chunk, so hyper can reuse its read buffer.
            buffer.extend_from_slice(&data);
        }
        Ok(buffer)
    };
    tokio::time::timeout(within, collect)
        .await
        .map_err(|_| BodyError::TimedOut)?
}

/// The innermost cause of a body error (hyper's "invalid chunk size line", not axum's
/// "error reading a body from connection").
fn source_text(e: &axum::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use std::convert::Infallible;

    fn headers(len: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(n) = len {
            h.insert(CONTENT_LENGTH, n.to_string().parse().unwrap());
        }
        h
    }

    /// A body of `chunks`, then (when `stall`) no end: it stays pending.
    struct Chunks {
        chunks: std::collections::VecDeque<&'static [u8]>,
        stall: bool,
    }

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            match self.chunks.pop_front() {
                Some(c) => {
                    std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(c)))))
                }
                None if self.stall => std::task::Poll::Pending,
                None => std::task::Poll::Ready(None),
            }
        }
    }

    fn body(chunks: Vec<&'static [u8]>, stall: bool) -> Body {
        Body::new(Chunks {
            chunks: chunks.into(),
            stall,
        })
    }

    #[tokio::test]
    async fn a_body_is_copied_whole_within_the_limit() {
        let got = read_body(
            &headers(None),
            body(vec![b"{\"a\"", b":", b"1}"], false),
            64,
            BODY_READ_TIMEOUT,
        )
        .await;
        assert_eq!(got.unwrap(), b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large_declared_or_not() {
        let declared = read_body(
            &headers(Some(65)),
            body(vec![], false),
            64,
            BODY_READ_TIMEOUT,
        )
        .await;
        assert_eq!(declared, Err(BodyError::TooLarge));
        let streamed = read_body(
            &headers(None),
            body(vec![&[b'x'; 40], &[b'x'; 40]], false),
            64,
            BODY_READ_TIMEOUT,
        )
        .await;
        assert_eq!(streamed, Err(BodyError::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_times_out() {
        let started = tokio::time::Instant::now();
        let got = read_body(
            &headers(Some(10)),
            body(vec![b"{"], true),
            64,
            BODY_READ_TIMEOUT,
        )
        .await;
        assert_eq!(got, Err(BodyError::TimedOut));
        assert_eq!(started.elapsed(), BODY_READ_TIMEOUT);
    }

    #[test]
    fn rejections_carry_their_status_and_family() {
        use axum::response::IntoResponse;
        for (e, status) in [
            (BodyError::TooLarge, 413),
            (BodyError::TimedOut, 408),
            (BodyError::Malformed("x".into()), 400),
        ] {
            let response = e.into_api_error(true, 64).into_response();
            assert_eq!(response.status().as_u16(), status);
            let pending = response
                .extensions()
                .get::<super::super::error::PendingError>()
                .unwrap();
            assert_eq!(pending.code, "invalid_input");
            let close = response.headers().get("connection");
            assert_eq!(close.is_some(), status != 400, "{status}");
        }
        let response = BodyError::TooLarge
            .into_api_error(false, 64)
            .into_response();
        let pending = response
            .extensions()
            .get::<super::super::error::PendingError>()
            .unwrap();
        assert_eq!(pending.code, "INVALID_REQUEST");
    }
}
