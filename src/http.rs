//! The HTTP surface: every route and the ordered middleware stack, in one place.
//!
//! Stack, outermost first (CONTRACT §3): request id → tracing span and log line → metrics →
//! path guard → request timeout → handler. It wraps every route and the 404 fallback alike.

pub mod error;
mod errors;
mod health;
mod metrics;
pub mod observe;
pub mod request_id;
mod root;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use tower::ServiceBuilder;

use crate::app::AppState;
pub use error::{ApiError, Envelope, ErrorCode};
pub use request_id::RequestId;

/// Builds the router with every route and the middleware stack.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root::endpoints))
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/errors", get(errors::errors))
        .fallback(root::not_found)
        .layer(
            ServiceBuilder::new()
                .layer(from_fn(request_id::middleware))
                .layer(from_fn(observe::trace))
                .layer(from_fn_with_state(state.clone(), observe::metrics))
                .layer(from_fn(observe::path_guard))
                .layer(from_fn(observe::timeout)),
        )
        .with_state(state)
}
