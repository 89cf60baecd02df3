//! The `Idempotency-Key` header on `/v1` generate, regenerate and export: the glue between
//! a handler and [`crate::idempotency`].
//!
//! A request with a key is scoped to its caller (the API key's name, or every anonymous
//! caller of a server without a keys file) and fingerprinted from what the handler parsed.
//! The first request's work runs on its own task, so a client that gives up (a timeout, a
//! dropped connection) never cancels a paid run half-way: the run ends, its answer is kept,
//! and the retry gets it. A retry answered from another request's work carries
//! `Idempotent-Replayed: true` and this request's own id; the answer is otherwise the first
//! one, status and `data` or error included.
//!
//! With a keys file, a caller without a valid key is served without the store: it can
//! start nothing and change nothing, so it has nothing to retry safely, and anonymous
//! callers could otherwise fill the store and lock keyed clients out.

use std::future::Future;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::error::PendingError;
use super::{ApiError, Envelope, RequestId};
use crate::app::AppState;
use crate::catalogue::error::{CatalogueError, Code};
use crate::idempotency::{
    Answer, Begin, Fingerprint, IdempotencyKey, IdempotencyStore, Scope, Slot, StoreError, Wait,
    is_kept,
};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// On an answer replayed from an earlier request with the same key.
pub const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What the request is, for its fingerprint: a route name, its target (an image id) and the
/// parsed body.
#[derive(Debug)]
pub struct Request<'a> {
    pub route: &'static str,
    pub target: Option<&'a str>,
    pub body: Value,
}

fn coded(code: Code, message: impl Into<String>) -> ApiError {
    ApiError::Catalogue(CatalogueError::new(code, message))
}

/// Answers `work` (the envelope's `data`, or the error), honouring `Idempotency-Key`.
pub async fn answer<W>(
    state: &AppState,
    headers: &HeaderMap,
    rid: &RequestId,
    request: Request<'_>,
    work: W,
) -> Result<Response, ApiError>
where
    W: Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(raw) = values.next() else {
        return work
            .await
            .map(|data| Envelope::ok(data, rid).into_response());
    };
    if values.next().is_some() {
        return Err(coded(Code::InvalidInput, "send one Idempotency-Key header"));
    }
    let key = IdempotencyKey::parse(raw.as_bytes())
        .map_err(|e| coded(Code::InvalidInput, e.to_string()))?;
    let scope = match &state.config.api_keys {
        None => Scope::Anonymous,
        Some(keys) => {
            let auth = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match keys.authenticate(auth) {
                Some(record) => Scope::Key(record.name),
                None => {
                    return work
                        .await
                        .map(|data| Envelope::ok(data, rid).into_response());
                }
            }
        }
    };
    let slot = Slot::new(&scope, &key);
    let fingerprint = Fingerprint::of(request.route, request.target, &request.body);
    let store = state.idempotency.clone();
    loop {
        let begun = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.begin(slot, fingerprint)).await
        };
        let begun = begun
            .map_err(|e| internal("the idempotency store failed", e))?
            .map_err(store_failure)?;
        match begun {
            Begin::Claimed => break,
            Begin::Done(kept) => return Ok(replay(kept, rid)),
            Begin::InFlight(mut rx) => {
                let ended = rx
                    .wait_for(|w| !matches!(w, Wait::Running))
                    .await
                    .map(|w| w.clone());
                match ended {
                    Ok(Wait::Answered(kept)) => return Ok(replay(kept, rid)),
                    // It did nothing and gave the key back: this request tries itself.
                    Ok(_) => continue,
                    Err(_) => return Err(interrupted()),
                }
            }
            Begin::Reused => {
                return Err(coded(
                    Code::IdempotencyKeyReused,
                    "this Idempotency-Key was used for a different request; send a new key for a new request",
                ));
            }
            Begin::Interrupted => return Err(interrupted()),
            Begin::Full { retry_after } => {
                return Err(ApiError::Catalogue(
                    CatalogueError::new(
                        Code::IdempotencyStoreFull,
                        "every idempotency slot is taken; retry after Retry-After, or send the request without Idempotency-Key",
                    )
                    .with_retry_after(retry_after),
                ));
            }
        }
    }
    own(store, slot, rid.clone(), work).await
}

/// The first request with the key: runs `work` on its own task to its end, keeps the answer
/// (or gives the key back) and answers it.
async fn own<W>(
    store: std::sync::Arc<dyn IdempotencyStore>,
    slot: Slot,
    rid: RequestId,
    work: W,
) -> Result<Response, ApiError>
where
    W: Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    let task = tokio::spawn(async move {
        // A panic in the work is an answer too (500), so the key never stays in flight.
        let result = tokio::spawn(work)
            .await
            .unwrap_or_else(|e| Err(internal("the request's task failed", e)));
        let (response, kept) = match result {
            Ok(data) => {
                let response = Envelope::ok(&data, &rid).into_response();
                (response, Answer::Data { status: 200, data })
            }
            Err(err) => {
                let response = err.into_response();
                let kept = error_answer(&response);
                (response, kept)
            }
        };
        let kept = is_kept(kept.status()).then_some(kept);
        let finished = tokio::task::spawn_blocking(move || store.finish(slot, kept)).await;
        match finished {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(request_id = %rid.as_str(), %err, "the idempotent answer is kept in memory only");
            }
            Err(err) => {
                tracing::error!(request_id = %rid.as_str(), %err, "keeping the idempotent answer failed")
            }
        }
        response
    });
    task.await
        .map_err(|e| internal("the request's task failed", e))
}

fn internal(message: &str, cause: impl std::fmt::Display) -> ApiError {
    ApiError::Catalogue(CatalogueError::new(Code::Internal, message).with_cause(cause))
}

/// The key could not be recorded, so the request is not run: without the record a retry
/// could pay again. A full disk says so (507), anything else is ours (500).
fn store_failure(err: StoreError) -> ApiError {
    let (StoreError::Write { source, .. } | StoreError::Read { source, .. }) = &err;
    let code = match source.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Code::StorageFull,
        _ => Code::Internal,
    };
    ApiError::Catalogue(
        CatalogueError::new(code, "cannot record the Idempotency-Key; nothing was run")
            .with_cause(err),
    )
}

fn interrupted() -> ApiError {
    coded(
        Code::IdempotencyKeyInterrupted,
        "the first request with this Idempotency-Key was cut off by a server restart before it answered; \
         it may have been billed, so it is not run again: check GET /v1/images/{id}, and send a new key to try again",
    )
}

/// The error a response carries (rendered later by the request layer), as kept.
fn error_answer(response: &Response) -> Answer {
    let status = response.status().as_u16();
    match response.extensions().get::<PendingError>() {
        Some(pending) => Answer::Error {
            status,
            code: pending.code.to_string(),
            message: pending.message.clone(),
            details: pending.details.clone(),
        },
        None => Answer::Error {
            status,
            code: Code::Internal.as_str().to_string(),
            message: Code::Internal.public_message().to_string(),
            details: None,
        },
    }
}

/// A kept answer, as this request's response.
fn replay(kept: Answer, rid: &RequestId) -> Response {
    let mut response = match kept {
        Answer::Data { status, data } => {
            let mut response = Envelope::ok(data, rid).into_response();
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            response
        }
        Answer::Error {
            status,
            code,
            message,
            details,
        } => {
            let mut response = StatusCode::from_u16(status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response();
            response.extensions_mut().insert(PendingError {
                code: static_code(&code),
                message,
                details,
                cause: None,
            });
            response
        }
    };
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

/// The `&'static` form of a kept code (every `/v1` answer's code is an engine code).
fn static_code(code: &str) -> &'static str {
    Code::ALL
        .iter()
        .map(|c| c.as_str())
        .find(|c| *c == code)
        .unwrap_or(Code::Internal.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_errors_replay_their_code_message_and_details_without_the_cause() {
        let err = ApiError::Catalogue(
            CatalogueError::new(Code::ProviderFailed, "generation failed")
                .with_cause("OpenAI API error (status 400): refused"),
        );
        let kept = error_answer(&err.into_response());
        let Answer::Error { status, code, .. } = &kept else {
            panic!("{kept:?}");
        };
        assert_eq!((*status, code.as_str()), (502, "provider_failed"));
        let rid = RequestId::parse("retry-1").unwrap();
        let replayed = replay(kept, &rid);
        assert_eq!(replayed.status(), 502);
        assert_eq!(replayed.headers()[&REPLAYED], "true");
        let pending = replayed.extensions().get::<PendingError>().unwrap();
        assert_eq!(pending.code, "provider_failed");
        assert_eq!(pending.cause, None);
        assert_eq!(static_code("no_such_code"), "internal");
    }
}
