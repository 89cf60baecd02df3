//! dalleserver: turns `GET /dalle/<series>/<address>?generate=1` into an AI-generated,
//! captioned PNG, with live progress, a gallery, metrics and health probes.
//!
//! Crate map (dependencies point downwards):
//! - [`http`]: the router, middleware and handlers — the only module that knows axum.
//! - [`app`]: the [`app::App`] that owns every component; [`server`]: the accept loop.
//! - [`health`], [`metrics`]: operational views over the components.
//! - [`attributes`], [`prompts`]: the pure domain — databases, series, selection, prompts.
//! - [`generation`], [`progress`], [`openai`], [`annotate`]: the `/dalle` pipeline.
//! - [`gallery`]: the image listing behind `/preview`.
//! - [`storage`]: the data directory and atomic writes.
//! - [`config`]: flags, environment and `.env`.

pub mod annotate;
pub mod app;
pub mod attributes;
pub mod config;
pub mod domain;
pub mod engine;
pub mod gallery;
pub mod generation;
pub mod health;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod progress;
pub mod prompts;
pub mod server;
pub mod storage;
pub mod telemetry;
