//! The HTTP surface: every route, its handler timeout, and the one request layer, in one place.
//!
//! Every request — cache hits and polls included — goes through the router and
//! [`observe::ObserveLayer`]: request id, tracing span, path guard, error rendering, metrics and
//! the access log. Each route states its method and its timeout here; 404 (the fallbacks) and
//! 405 (a known path, another method) come from the router, in the error family of the legacy
//! routes or of `/v1`. Handlers read path parameters and bodies through `extract`, so a
//! request that cannot be read gets an envelope too, and a body is bounded by `--max-body`
//! and a 10 s read timeout whatever the route's handler timeout.
//!
//! With `--api-keys-file`, handlers that spend money or change data ask [`auth`] for a key
//! (the `/dalle` run decision is the run core's, given whether the caller has one); with
//! `--cors-origin`, a CORS layer sits inside the request layer.

mod auth;
mod chunks;
pub mod client;
pub mod dalle;
pub mod error;
mod errors;
mod extract;
mod file;
mod files;
mod health;
mod idempotent;
mod metrics;
pub mod observe;
mod preview;
mod provenance;
mod provenance_page;
pub mod request_id;
mod root;
mod series;
mod usage;
mod v1;

use axum::Router;
use axum::routing::{get, post};

use crate::app::AppState;
pub use error::{ApiError, Envelope, ErrorCode};
use observe::{GENERATION_REQUEST_TIMEOUT, ObserveLayer, REQUEST_TIMEOUT, TimeoutLayer};
pub use request_id::RequestId;

/// Builds the router with every route and the request layer.
pub fn router(state: AppState) -> Router {
    let legacy = Router::new()
        .route("/", get(root::endpoints))
        .route("/favicon.ico", get(root::favicon))
        .route("/series", get(series::list))
        .route("/dalle", get(dalle::dalle))
        .route("/dalle/", get(dalle::dalle))
        .route("/dalle/{*rest}", get(dalle::dalle))
        .route("/files/{*path}", get(files::files))
        .route("/preview", get(preview::preview))
        .route("/preview/provenance/{*rest}", get(provenance_page::page))
        .route("/preview.js", get(preview::script))
        .route("/preview.css", get(preview::style))
        .route("/openapi.json", get(v1::openapi))
        .route("/provenance.schema.json", get(provenance::schema))
        .route("/cache/{cid}", get(provenance::cache))
        .route("/cache/{cid}/meta", get(provenance::meta))
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/errors", get(errors::errors))
        .route_layer(TimeoutLayer(REQUEST_TIMEOUT));
    let mut router = Router::new()
        .merge(legacy)
        .nest("/v1", v1_routes())
        .fallback(root::not_found);
    // Inside the request layer, so a preflight is logged and counted like any request.
    if let Some(cors) = auth::cors_layer(&state.config.cors_origins) {
        router = router.layer(cors);
    }
    router
        .layer(ObserveLayer::new(state.clone()))
        .with_state(state)
}

/// The `/v1` management API. Generate and regenerate answer when the image is done, so they
/// get the long timeout; everything else the usual one.
fn v1_routes() -> Router<AppState> {
    let quick = Router::new()
        .route("/images/preview", post(v1::preview))
        .route("/images/estimate", post(v1::estimate))
        .route("/usage", get(usage::usage))
        .route("/images", get(v1::list_images))
        .route(
            "/images/",
            get(v1::empty_image_id).delete(v1::empty_image_id),
        )
        .route("/images/{id}", get(v1::get_image).delete(v1::delete_image))
        .route("/images/{id}/export", post(v1::export))
        .route("/images/{id}/provenance", get(provenance::v1_image))
        .route("/series", get(v1::list_series))
        .route("/series/{name}", get(v1::get_series).put(v1::save_series))
        .route("/series/{name}/hidden", post(v1::set_series_hidden))
        .route("/databases", get(v1::list_databases))
        .route("/databases/", get(v1::manifest))
        .route("/databases/{version}", get(v1::database))
        .route("/databases/{version}/records/{name}", get(v1::records))
        .route("/validate", post(v1::validate))
        .route("/progress/{series}/{seed}", get(v1::progress))
        .route_layer(TimeoutLayer(REQUEST_TIMEOUT));
    let long = Router::new()
        .route("/images/generate", post(v1::generate))
        .route("/images/{id}/regenerate", post(v1::regenerate))
        .route_layer(TimeoutLayer(GENERATION_REQUEST_TIMEOUT));
    quick.merge(long).fallback(v1::not_found)
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
