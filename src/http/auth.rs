//! Who a request comes from, what needs an API key, and CORS for browser callers.
//!
//! With `--api-keys-file`, a request that spends money or changes data needs
//! `Authorization: Bearer <token>` with a key of the file ([`crate::auth::ApiKeys`]); the
//! handlers ask [`require`], or pass the request's [`Caller`] on to the run core, which
//! decides whether a request would start a run and admits it with the caller's rate limit
//! and budget. Reading never needs one. Without a keys file every request is authorised, as
//! upstream, and callers are told apart by their client address ([`super::client`]).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LINK, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::ApiError;
use crate::app::AppState;
use crate::auth::Caller;

/// The caller of a request from `peer` with these headers: its API key when it sent a
/// valid one, else an anonymous caller at its client address (authorised only when no keys
/// file is configured).
pub fn caller(state: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> Caller {
    let anonymous = |authorized| Caller::Anonymous {
        address: super::client::address(peer, headers, &state.config.limits.trusted_proxies),
        authorized,
    };
    let Some(keys) = &state.config.api_keys else {
        return anonymous(true);
    };
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match keys.authenticate(header) {
        Some(key) => Caller::key(&key),
        None => anonymous(false),
    }
}

/// The request's TCP peer, when it came over TCP (the server adds it to every request).
pub fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer)
}

/// The request's [`Caller`], as an extractor.
#[derive(Debug, Clone)]
pub struct Identified(pub Caller);

impl FromRequestParts<AppState> for Identified {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Identified, Infallible> {
        Ok(Identified(caller(
            state,
            &parts.headers,
            peer(&parts.extensions),
        )))
    }
}

/// Whether the request may start runs and change data: no keys are configured, or its
/// bearer token is one of them.
pub fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(keys) = &state.config.api_keys else {
        return true;
    };
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    keys.authenticate(header).is_some()
}

/// The 401 for a request that needed a key (counted in `dalleserver_auth_failures_total`).
/// Missing and wrong keys get this same answer.
pub fn refuse(state: &AppState, v1: bool) -> ApiError {
    state.metrics.auth_failures.inc();
    ApiError::Unauthorized { v1 }
}

/// `Ok` when [`authorized`], else the 401.
pub fn require(state: &AppState, headers: &HeaderMap, v1: bool) -> Result<(), ApiError> {
    if authorized(state, headers) {
        Ok(())
    } else {
        Err(refuse(state, v1))
    }
}

/// The CORS layer for `--cors-origin`, or `None` when no origin is allowed (then no CORS
/// headers are sent and browsers keep the same-origin rule). The request headers a client
/// needs (the key, a JSON body, its own request id) are allowed; the response headers it
/// reads are exposed.
pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let request_id = HeaderName::from_static("x-request-id");
    let (idempotency_key, replayed) = (
        super::idempotent::IDEMPOTENCY_KEY,
        super::idempotent::REPLAYED,
    );
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                request_id.clone(),
                idempotency_key,
            ])
            .expose_headers([
                request_id,
                RETRY_AFTER,
                LINK,
                WWW_AUTHENTICATE,
                replayed,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
                HeaderName::from_static("ratelimit-policy"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}
