//! The HTTP surface: every route and the ordered middleware stack, in one place.
//!
//! Stack, outermost first (CONTRACT §3): request id → tracing span and log line → metrics →
//! path guard → request timeout → handler. It wraps every route and the 404 fallback alike.

pub mod dalle;
pub mod error;
mod errors;
pub mod fast;
mod file;
mod files;
mod health;
mod metrics;
pub mod observe;
mod preview;
pub mod request_id;
mod root;
mod series;
mod v1;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{any, get, post};
use tower::ServiceBuilder;

use crate::app::AppState;
pub use error::{ApiError, Envelope, ErrorCode};
pub use request_id::RequestId;

/// Builds the router with every route and the middleware stack.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root::endpoints))
        .route("/series", get(series::list))
        .route("/dalle", get(dalle::dalle))
        .route("/dalle/", get(dalle::dalle))
        .route("/dalle/{*rest}", get(dalle::dalle))
        .route("/files/{*path}", get(files::files))
        .route("/preview", get(preview::preview))
        .route("/openapi.json", get(v1::openapi))
        .route("/v1/images/generate", post(v1::generate))
        .route("/v1/images/preview", post(v1::preview))
        .route("/v1/images", get(v1::list_images))
        .route("/v1/images/", any(v1::empty_image_id))
        .route("/v1/images/{*rest}", any(v1::image_item))
        .route("/v1/series", get(v1::list_series))
        .route("/v1/series/{*rest}", any(v1::series_item))
        .route("/v1/databases", get(v1::list_databases))
        .route("/v1/databases/{*rest}", any(v1::database_item))
        .route("/v1/validate", post(v1::validate))
        .route("/v1/progress/{series}/{seed}", get(v1::progress))
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/errors", get(errors::errors))
        .fallback(root::not_found)
        .layer(
            ServiceBuilder::new()
                .layer(from_fn(request_id::middleware))
                .layer(from_fn_with_state(state.clone(), observe::observe)),
        )
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::config::{Config, Flags};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use clap::Parser;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tower::ServiceExt;

    fn app(dir: &std::path::Path) -> Router {
        let flags =
            Flags::try_parse_from(["dalleserver", "--data-dir", dir.to_str().unwrap()]).unwrap();
        let mut config = Config::from_sources(flags, &[("HOME", "/nonexistent")]).unwrap();
        config.prepare_data_dir().unwrap();
        router(AppState(Arc::new(App::build(config).unwrap())))
    }

    async fn body_json(response: axum::response::Response) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn fallback_runs_through_the_whole_stack() {
        let dir = tempfile::tempdir().unwrap();
        let response = app(dir.path())
            .oneshot(Request::get("/nowhere").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body = body_json(response).await;
        assert_eq!(body["error"]["code"], "NOT_FOUND");
        assert_eq!(body["request_id"], id.as_str());
    }

    #[tokio::test]
    async fn wrong_method_keeps_allow_and_gets_an_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let response = app
            .clone()
            .oneshot(Request::delete("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "GET,HEAD");
        assert_eq!(
            body_json(response).await["error"]["code"],
            "INVALID_REQUEST"
        );
    }

    #[tokio::test]
    async fn path_guard_runs_before_routing() {
        let dir = tempfile::tempdir().unwrap();
        let response = app(dir.path())
            .oneshot(
                Request::get("/files/%2E%2E/secret")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body_json(response).await["error"]["code"],
            "INVALID_REQUEST"
        );
    }
}
