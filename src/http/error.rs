//! The JSON envelopes (the Go server's field names, which clients parse) and the one error type
//! every handler returns.
//!
//! A handler returns `Err(ApiError)`; its response carries the error as an extension and the
//! request-id middleware renders the final body, so the envelope's `request_id` is always the
//! id in the `X-Request-ID` header (the Go server minted up to four different ones).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::telemetry::unix_seconds;

/// `{"success":true,"data":…,"request_id":"…"}`.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub success: bool,
    pub data: T,
    pub request_id: String,
}

impl<T: Serialize> Envelope<T> {
    /// A success envelope for this request.
    pub fn ok(data: T, request_id: &super::RequestId) -> Json<Envelope<T>> {
        Json(Envelope {
            success: true,
            data,
            request_id: request_id.to_string(),
        })
    }
}

impl Envelope<()> {
    /// The success envelope around `data`, which is already JSON (a progress snapshot from
    /// [`crate::progress::Progress::poll`]): the same bytes as [`Envelope::ok`] would write
    /// for the value, without serialising it again, and without copying the snapshot's
    /// shared parts (see [`super::chunks`]).
    pub fn ok_json(data: crate::progress::SnapshotJson, request_id: &super::RequestId) -> Response {
        let mut tail = Vec::with_capacity(48);
        tail.extend_from_slice(br#","request_id":"#);
        if serde_json::to_writer(&mut tail, request_id.as_str()).is_err() {
            tail.extend_from_slice(b"\"\"");
        }
        tail.push(b'}');
        let body = super::chunks::Chunks::new([
            bytes::Bytes::from_static(br#"{"success":true,"data":"#),
            data.before,
            data.clock,
            data.after,
            bytes::Bytes::from(tail),
        ]);
        (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            axum::body::Body::new(body),
        )
            .into_response()
    }
}

/// The stable error codes. Legacy routes use the upper-case set; `/v1` uses lower-case
/// engine codes, as the Go server's two APIs did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidSeries,
    InvalidAddress,
    MissingParameter,
    TemplateError,
    ServiceUnavailable,
    NotFound,
    InternalServerError,
    /// `/v1` lower-case `invalid_input`.
    V1InvalidInput,
    /// A spending cap refused the run (402).
    BudgetExhausted,
    /// No valid API key for a request that needs one (401).
    Unauthorized,
    /// The caller's rate limit on run starts refused a new run (429).
    RateLimited,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::InvalidSeries => "INVALID_SERIES",
            ErrorCode::InvalidAddress => "INVALID_ADDRESS",
            ErrorCode::MissingParameter => "MISSING_PARAMETER",
            ErrorCode::TemplateError => "TEMPLATE_ERROR",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::InternalServerError => "INTERNAL_SERVER_ERROR",
            ErrorCode::V1InvalidInput => "invalid_input",
            ErrorCode::BudgetExhausted => "BUDGET_EXHAUSTED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::RateLimited => "RATE_LIMITED",
        }
    }
}

/// Every error a handler can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad path, bad query).
    #[error("{message}")]
    BadRequest {
        code: ErrorCode,
        message: String,
        details: Option<String>,
    },
    /// No route for this path.
    #[error("Not found")]
    NotFound { details: String },
    /// The route exists but not for this method; `v1` selects the lower-case code.
    #[error("Method not allowed")]
    MethodNotAllowed { v1: bool },
    /// Not ready, timed out or otherwise temporarily unable to answer.
    #[error("{message}")]
    Unavailable {
        message: String,
        details: Option<String>,
    },
    /// No run was started because the generation queue is full (503 with `Retry-After`).
    #[error("Generation queue is full")]
    QueueFull(crate::run::QueueFull),
    /// No run was started because its image would exceed a spending cap (402 with
    /// `Retry-After` to the start of the next period).
    #[error("{0}")]
    BudgetExhausted(crate::budget::Exhausted),
    /// No run was started because the caller started too many lately (429 with
    /// `Retry-After` and the `RateLimit-*` fields).
    #[error("{0}")]
    RateLimited(crate::limits::Limited),
    /// The request would start a run or change data, and no valid API key came with it
    /// (401 with `WWW-Authenticate: Bearer`). A missing and a wrong key answer the same.
    #[error("A valid API key is required")]
    Unauthorized { v1: bool },
    /// The HTML template failed to render.
    #[error("Template execution failed")]
    Template(String),
    /// Anything else: the cause is logged once, the client sees a stable message.
    #[error("Internal server error")]
    Internal(String),
    /// The request itself could not be read: a body too large (413), too slow (408) or
    /// malformed, a path that is not UTF-8. The code is `INVALID_REQUEST`, or `invalid_input`
    /// on `/v1` (`v1`); the connection is closed after a 408 or 413, whose body was not read.
    #[error("{message}")]
    Rejected {
        status: StatusCode,
        v1: bool,
        message: String,
        details: Option<String>,
    },
    /// A `/v1` engine error: lower-case code, status by [`crate::catalogue::error::Code::http_status`], and the engine's
    /// own text (`<code>: <message>`) as the message.
    #[error("{0}")]
    Catalogue(crate::catalogue::error::CatalogueError),
}

impl ApiError {
    /// 400 with a legacy code.
    pub fn bad_request(
        code: ErrorCode,
        message: impl Into<String>,
        details: Option<String>,
    ) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
            details,
        }
    }

    /// 503 for routes that need the attribute databases when they failed to load. The cause
    /// names the file that failed (an absolute path), so it stays in the start-up log, where
    /// it was written once.
    pub fn databases_unavailable(_cause: &str) -> ApiError {
        ApiError::Unavailable {
            message: "Attribute databases unavailable".into(),
            details: Some("loading failed at start-up; the server log says why".into()),
        }
    }

    /// A refusal because the generation queue is full, on a legacy route or on `/v1`.
    fn is_queue_full(&self) -> bool {
        match self {
            ApiError::QueueFull(_) => true,
            ApiError::Catalogue(e) => e.code == crate::catalogue::error::Code::QueueFull,
            _ => false,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Catalogue(e) => StatusCode::from_u16(e.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Rejected { status, .. } => *status,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BudgetExhausted(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } | ApiError::QueueFull(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Template(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code.as_str(),
            ApiError::Rejected { v1: true, .. } => ErrorCode::V1InvalidInput.as_str(),
            ApiError::Rejected { v1: false, .. } => ErrorCode::InvalidRequest.as_str(),
            ApiError::NotFound { .. } => ErrorCode::NotFound.as_str(),
            ApiError::Unauthorized { v1: false } => ErrorCode::Unauthorized.as_str(),
            ApiError::Unauthorized { v1: true } => {
                crate::catalogue::error::Code::Unauthorized.as_str()
            }
            ApiError::MethodNotAllowed { v1: true } => ErrorCode::V1InvalidInput.as_str(),
            ApiError::MethodNotAllowed { v1: false } => ErrorCode::InvalidRequest.as_str(),
            ApiError::Unavailable { .. } | ApiError::QueueFull(_) => {
                ErrorCode::ServiceUnavailable.as_str()
            }
            ApiError::BudgetExhausted(_) => ErrorCode::BudgetExhausted.as_str(),
            ApiError::RateLimited(_) => ErrorCode::RateLimited.as_str(),
            ApiError::Template(_) => ErrorCode::TemplateError.as_str(),
            ApiError::Internal(_) => ErrorCode::InternalServerError.as_str(),
            ApiError::Catalogue(e) => e.code.as_str(),
        }
    }

    fn details(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { details, .. }
            | ApiError::Unavailable { details, .. }
            | ApiError::Rejected { details, .. } => details.clone(),
            ApiError::NotFound { details } => Some(details.clone()),
            ApiError::QueueFull(full) => Some(full.to_string()),
            ApiError::Unauthorized { .. } => Some(
                "send Authorization: Bearer <token> with a key from the server's keys file".into(),
            ),
            ApiError::MethodNotAllowed { .. }
            | ApiError::BudgetExhausted(_)
            | ApiError::RateLimited(_)
            | ApiError::Template(_)
            | ApiError::Internal(_)
            | ApiError::Catalogue(_) => None,
        }
    }

    fn message(&self) -> String {
        match self {
            // `/v1` keeps the Go server's lower-case wording.
            ApiError::MethodNotAllowed { v1: true } => "method not allowed".into(),
            ApiError::Unauthorized { v1: true } => {
                "unauthorized: a valid API key is required".into()
            }
            // A fault of ours answers its code and stable message; the cause (an I/O error,
            // a path) is for the log line only. A provider failure keeps the provider's own
            // answer (what OpenAI refused and why), which is the client's to know.
            ApiError::Catalogue(e) if e.code.http_status() >= 500 && !e.code.is_provider() => {
                format!("{}: {}", e.code, e.code.public_message())
            }
            other => other.to_string(),
        }
    }
}

/// `Retry-After` and the `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and
/// `RateLimit-Policy` fields of draft-ietf-httpapi-ratelimit-headers-06 (the last draft
/// with separate fields) on a run refused by a rate limit: the bucket's size, nothing left,
/// the seconds until it is full again, and the policy (`<n>;w=<period in seconds>`).
fn add_rate_limit_fields(response: &mut Response, limited: &crate::limits::Limited) {
    use crate::limits::whole_seconds;
    use axum::http::{HeaderName, HeaderValue};
    let count = limited.rate.count.get();
    let fields = [
        (
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(whole_seconds(limited.retry_after)),
        ),
        (
            HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(count),
        ),
        (
            HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(0u32),
        ),
        (
            HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(whole_seconds(limited.reset)),
        ),
    ];
    let headers = response.headers_mut();
    for (name, value) in fields {
        headers.insert(name, value);
    }
    let window = limited.rate.per.duration().as_secs();
    if let Ok(policy) = HeaderValue::from_str(&format!("{count};w={window}")) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), policy);
    }
}

/// `Retry-After` on an answer refused because the server drains for a shutdown.
pub fn add_drain_retry_after(response: &mut Response) {
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(crate::run::journal::DRAIN_RETRY_AFTER_SECS),
    );
}

/// The part of an error response that the request-id middleware renders into the body.
#[derive(Debug, Clone)]
pub struct PendingError {
    pub code: &'static str,
    pub message: String,
    pub details: Option<String>,
    /// What went wrong inside, for the log line of a server error; never sent to the client.
    pub cause: Option<String>,
}

impl PendingError {
    /// Renders the error envelope for `request_id`.
    pub fn body(&self, request_id: &str) -> ErrorEnvelope<'_> {
        let request_id = (!request_id.is_empty()).then(|| request_id.to_string());
        ErrorEnvelope {
            success: false,
            error: ErrorBody {
                code: self.code,
                message: &self.message,
                details: self.details.as_deref(),
                timestamp: unix_seconds(std::time::SystemTime::now()),
                request_id: request_id.clone(),
            },
            request_id,
        }
    }
}

/// `{"success":false,"error":{…},"request_id":"…"}`.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope<'a> {
    pub success: bool,
    pub error: ErrorBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The `error` object of the envelope.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'static str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<&'a str>,
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The response carries the error as a [`PendingError`] extension and no body: the request
/// layer ([`super::observe`]) renders the body once, with the request id, and logs a server
/// error's cause once, in the request's log line.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let cause = match &self {
            ApiError::Internal(cause) | ApiError::Template(cause) => Some(cause.clone()),
            ApiError::Catalogue(e) if e.code.http_status() >= 500 => Some(e.to_string()),
            _ => None,
        };
        let pending = PendingError {
            code: self.code(),
            message: self.message(),
            details: self.details(),
            cause,
        };
        let status = self.status();
        let mut response = status.into_response();
        let retry_after = match &self {
            ApiError::BudgetExhausted(exhausted) => Some(exhausted.retry_after),
            ApiError::Catalogue(e) => e.retry_after,
            _ => None,
        };
        if let Some(wait) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(wait.as_secs().max(1)),
            );
        } else if self.is_queue_full() {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::run::QUEUE_FULL_RETRY_AFTER.as_secs()),
            );
        }
        let limited = match &self {
            ApiError::RateLimited(limited) => Some(limited),
            ApiError::Catalogue(e) => e.rate_limited.as_ref(),
            _ => None,
        };
        // After the plain `Retry-After`: rounded up, like `RateLimit-Reset`.
        if let Some(limited) = limited {
            add_rate_limit_fields(&mut response, limited);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body is still on the wire: the connection cannot carry another
            // request, and closing it frees what the client holds open.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response.extensions_mut().insert(pending);
        if matches!(&self, ApiError::Catalogue(e) if e.code == crate::catalogue::error::Code::ShuttingDown)
        {
            add_drain_retry_after(&mut response);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ok_json_writes_what_ok_writes() {
        use http_body_util::BodyExt;
        let rid = super::super::RequestId::parse("abc-1").unwrap();
        let value = serde_json::json!({"series": "simple", "percent": 12.5, "text": "a \"q\""});
        let body = |response: Response| async {
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (headers["content-type"].clone(), bytes)
        };
        let expected = body(Envelope::ok(&value, &rid).into_response()).await;
        let json = serde_json::to_vec(&value).unwrap();
        // Cut anywhere, the parts make the same bytes.
        let (a, rest) = json.split_at(7);
        let (b, c) = rest.split_at(9);
        let parts = crate::progress::SnapshotJson {
            before: bytes::Bytes::copy_from_slice(a),
            clock: bytes::Bytes::copy_from_slice(b),
            after: bytes::Bytes::copy_from_slice(c),
        };
        assert_eq!(body(Envelope::ok_json(parts, &rid)).await, expected);
    }

    #[test]
    fn internal_errors_never_leak_their_cause() {
        let response = ApiError::Internal("disk exploded at /secret/path".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let pending = response.extensions().get::<PendingError>().unwrap();
        assert_eq!(pending.message, "Internal server error");
        assert_eq!(pending.details, None);
    }

    #[test]
    fn v1_server_faults_never_leak_their_cause_or_message() {
        use crate::catalogue::error::{CatalogueError, Code};
        for code in [
            Code::Internal,
            Code::MetadataInvalid,
            Code::DatabaseManifestInvalid,
        ] {
            let e = CatalogueError::new(code, "cannot write /srv/data/output/x.json")
                .with_cause("Is a directory (os error 21)");
            let response = ApiError::Catalogue(e).into_response();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let pending = response.extensions().get::<PendingError>().unwrap();
            assert!(!pending.message.contains('/'), "{}", pending.message);
            assert!(!pending.message.contains("os error"), "{}", pending.message);
            assert!(pending.message.starts_with(code.as_str()));
            // The log line keeps everything.
            assert!(pending.cause.as_deref().unwrap().contains("/srv/data"));
        }
        // A provider's refusal is the client's to read.
        let e = CatalogueError::new(Code::ProviderFailed, "generation failed")
            .with_cause("OpenAI API error (status 400): rejected");
        let response = ApiError::Catalogue(e).into_response();
        let pending = response.extensions().get::<PendingError>().unwrap();
        assert!(pending.message.contains("rejected"));
    }

    #[test]
    fn envelope_has_upstream_field_names() {
        let pending = PendingError {
            code: ErrorCode::InvalidSeries.as_str(),
            message: "Invalid series name".into(),
            details: Some("Series 'foo' not found".into()),
            cause: None,
        };
        let v = serde_json::to_value(pending.body("abcd1234")).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["error"]["code"], "INVALID_SERIES");
        assert_eq!(v["error"]["details"], "Series 'foo' not found");
        assert_eq!(v["error"]["request_id"], "abcd1234");
        assert_eq!(v["request_id"], "abcd1234");
        assert!(v["error"]["timestamp"].as_i64().unwrap() > 1_700_000_000);
    }
}
