//! The engine's coded errors (the Go library's codes) and their HTTP statuses.
//!
//! One deliberate difference from upstream: an error without a code is `internal` with
//! status 500, where the Go server answered `invalid_input` with status 500.

use std::fmt;

use serde::Serialize;

/// What went wrong, as a stable lower-case code that `/v1` clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    InvalidInput,
    SeriesNotFound,
    SeriesInvalid,
    /// Ours: the series is hidden, so it starts no new work (its records are still served).
    SeriesHidden,
    DatabaseManifestInvalid,
    DatabaseVersionUnavailable,
    DatabaseHashMismatch,
    RegenerationRefused,
    MetadataInvalid,
    ArtifactMissing,
    ProviderUnavailable,
    ProviderFailed,
    /// Ours: no `/v1` endpoint at that path.
    NotFound,
    /// Ours: the server's disk (or quota) is full, so a run could not save its files.
    StorageFull,
    /// Ours: every failure upstream left uncoded (I/O, serialisation, bugs).
    Internal,
    /// Ours: the generation queue is full; nothing was started (503 with `Retry-After`).
    QueueFull,
    /// Ours: the run's image would exceed a spending cap; nothing was started (402 with
    /// `Retry-After` to the start of the next period).
    BudgetExhausted,
    /// Ours: a valid API key is required (401 with `WWW-Authenticate: Bearer`).
    Unauthorized,
    /// Ours: the caller's rate limit on run starts is reached; nothing was started (429 with
    /// `Retry-After` and the `RateLimit-*` fields).
    RateLimited,
    /// Ours: the server is draining for a shutdown and starts no run; retry after
    /// `Retry-After`.
    ShuttingDown,
    /// Ours: the `Idempotency-Key` was first used for a different request (422).
    IdempotencyKeyReused,
    /// Ours: the first request with the `Idempotency-Key` was cut off by a restart before it
    /// answered, and may have been billed, so it is not run again (409).
    IdempotencyKeyInterrupted,
    /// Ours: every idempotency slot is taken by a key that has not expired (503 with
    /// `Retry-After`); nothing was started.
    IdempotencyStoreFull,
}

impl Code {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [Code; 23] = [
        Code::InvalidInput,
        Code::SeriesNotFound,
        Code::SeriesInvalid,
        Code::SeriesHidden,
        Code::DatabaseManifestInvalid,
        Code::DatabaseVersionUnavailable,
        Code::DatabaseHashMismatch,
        Code::RegenerationRefused,
        Code::MetadataInvalid,
        Code::ArtifactMissing,
        Code::ProviderUnavailable,
        Code::ProviderFailed,
        Code::NotFound,
        Code::StorageFull,
        Code::Internal,
        Code::QueueFull,
        Code::BudgetExhausted,
        Code::Unauthorized,
        Code::RateLimited,
        Code::ShuttingDown,
        Code::IdempotencyKeyReused,
        Code::IdempotencyKeyInterrupted,
        Code::IdempotencyStoreFull,
    ];

    /// The wire form, e.g. `invalid_input`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidInput => "invalid_input",
            Code::SeriesNotFound => "series_not_found",
            Code::SeriesInvalid => "series_invalid",
            Code::SeriesHidden => "series_hidden",
            Code::DatabaseManifestInvalid => "database_manifest_invalid",
            Code::DatabaseVersionUnavailable => "database_version_unavailable",
            Code::DatabaseHashMismatch => "database_hash_mismatch",
            Code::RegenerationRefused => "regeneration_refused",
            Code::MetadataInvalid => "metadata_invalid",
            Code::ArtifactMissing => "artifact_missing",
            Code::ProviderUnavailable => "provider_unavailable",
            Code::ProviderFailed => "provider_failed",
            Code::NotFound => "not_found",
            Code::StorageFull => "storage_full",
            Code::Internal => "internal",
            Code::QueueFull => "queue_full",
            Code::BudgetExhausted => "budget_exhausted",
            Code::Unauthorized => "unauthorized",
            Code::RateLimited => "rate_limited",
            Code::ShuttingDown => "shutting_down",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::IdempotencyKeyInterrupted => "idempotency_key_interrupted",
            Code::IdempotencyStoreFull => "idempotency_store_full",
        }
    }

    /// What a client is told of a fault of ours (a 5xx that is not the provider's): a fixed
    /// text, so no path or internal detail can reach a response. The full error is logged.
    pub fn public_message(self) -> &'static str {
        match self {
            Code::DatabaseManifestInvalid => "the attribute database manifest is invalid",
            Code::MetadataInvalid => "an image metadata record could not be read or written",
            Code::StorageFull => "the server's disk is full; nothing was saved",
            Code::QueueFull => "the generation queue is full; nothing was started, retry later",
            Code::ShuttingDown => {
                "the server is shutting down and starts no new run; retry after Retry-After"
            }
            Code::IdempotencyStoreFull => {
                "every idempotency slot is taken; nothing was started, retry after Retry-After"
            }
            _ => "internal error; the server log has the details under this request id",
        }
    }

    /// A failure reported by the image or chat provider (its text is the provider's answer).
    pub fn is_provider(self) -> bool {
        matches!(self, Code::ProviderFailed | Code::ProviderUnavailable)
    }

    /// The HTTP status of each code; the manifest, metadata and uncoded failures are server
    /// faults.
    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidInput | Code::SeriesInvalid | Code::SeriesHidden => 400,
            Code::SeriesNotFound
            | Code::ArtifactMissing
            | Code::DatabaseVersionUnavailable
            | Code::NotFound => 404,
            Code::RegenerationRefused
            | Code::DatabaseHashMismatch
            | Code::IdempotencyKeyInterrupted => 409,
            Code::IdempotencyKeyReused => 422,
            Code::BudgetExhausted => 402,
            Code::Unauthorized => 401,
            Code::RateLimited => 429,
            Code::ProviderUnavailable
            | Code::QueueFull
            | Code::ShuttingDown
            | Code::IdempotencyStoreFull => 503,
            Code::ProviderFailed => 502,
            Code::StorageFull => 507,
            Code::DatabaseManifestInvalid | Code::MetadataInvalid | Code::Internal => 500,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A coded engine failure. Its text is upstream's: `<code>: <message>` or
/// `<code>: <message>: <cause>` (the code is repeated inside the `/v1` error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueError {
    pub code: Code,
    pub message: String,
    /// The underlying failure, already rendered (an I/O or JSON error, or a wrapped engine error).
    pub cause: Option<String>,
    /// When the client may try again (sent as `Retry-After`).
    pub retry_after: Option<std::time::Duration>,
    /// The rate limit that refused the run (sent as the `RateLimit-*` fields).
    pub rate_limited: Option<crate::limits::Limited>,
}

impl CatalogueError {
    /// An error with a code and a message, no cause.
    pub fn new(code: Code, message: impl Into<String>) -> CatalogueError {
        CatalogueError {
            code,
            message: message.into(),
            cause: None,
            retry_after: None,
            rate_limited: None,
        }
    }

    /// Says when the client may try again.
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> CatalogueError {
        self.retry_after = Some(wait);
        self
    }

    /// Says which rate limit refused the run, and when the client may try again.
    pub fn with_rate_limit(mut self, limited: crate::limits::Limited) -> CatalogueError {
        self.retry_after = Some(limited.retry_after);
        self.rate_limited = Some(limited);
        self
    }

    /// Attaches the underlying failure.
    pub fn with_cause(mut self, cause: impl fmt::Display) -> CatalogueError {
        self.cause = Some(cause.to_string());
        self
    }
}

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for CatalogueError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_render_and_map_like_upstream() {
        let table = [
            (Code::InvalidInput, "invalid_input", 400),
            (Code::SeriesNotFound, "series_not_found", 404),
            (Code::SeriesInvalid, "series_invalid", 400),
            (Code::SeriesHidden, "series_hidden", 400),
            (
                Code::DatabaseManifestInvalid,
                "database_manifest_invalid",
                500,
            ),
            (
                Code::DatabaseVersionUnavailable,
                "database_version_unavailable",
                404,
            ),
            (Code::DatabaseHashMismatch, "database_hash_mismatch", 409),
            (Code::RegenerationRefused, "regeneration_refused", 409),
            (Code::MetadataInvalid, "metadata_invalid", 500),
            (Code::ArtifactMissing, "artifact_missing", 404),
            (Code::ProviderUnavailable, "provider_unavailable", 503),
            (Code::ProviderFailed, "provider_failed", 502),
            (Code::NotFound, "not_found", 404),
            (Code::StorageFull, "storage_full", 507),
            (Code::Internal, "internal", 500),
            (Code::QueueFull, "queue_full", 503),
            (Code::BudgetExhausted, "budget_exhausted", 402),
            (Code::Unauthorized, "unauthorized", 401),
            (Code::RateLimited, "rate_limited", 429),
            (Code::ShuttingDown, "shutting_down", 503),
            (Code::IdempotencyKeyReused, "idempotency_key_reused", 422),
            (
                Code::IdempotencyKeyInterrupted,
                "idempotency_key_interrupted",
                409,
            ),
            (Code::IdempotencyStoreFull, "idempotency_store_full", 503),
        ];
        assert_eq!(table.len(), Code::ALL.len());
        for ((code, text, status), listed) in table.into_iter().zip(Code::ALL) {
            assert_eq!(code, listed);
            assert_eq!(code.as_str(), text);
            assert_eq!(code.to_string(), text);
            assert_eq!(serde_json::to_value(code).unwrap(), text);
            assert_eq!(code.http_status(), status, "{text}");
        }
    }

    #[test]
    fn display_repeats_the_code_and_appends_the_cause() {
        let e = CatalogueError::new(Code::ArtifactMissing, "image metadata record was not found");
        assert_eq!(
            e.to_string(),
            "artifact_missing: image metadata record was not found"
        );
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = CatalogueError::new(Code::Internal, "reading x").with_cause(io);
        assert_eq!(e.to_string(), "internal: reading x: gone");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.source().is_none());
    }
}
