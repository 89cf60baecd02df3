//! dalleserver: turns `GET /dalle/<series>/<address>?generate=1` into an AI-generated,
//! captioned PNG, with live progress, a gallery, metrics and health probes.
//!
//! Crate map (dependencies point downwards):
//! - [`http`]: the router, middleware and handlers — the only module that knows axum.
//! - [`app`]: the [`app::App`] that owns every component; [`server`]: the accept loop.
//! - [`health`], [`metrics`]: operational views over the components.
//! - [`openai`]: the circuit breaker (and, later, the OpenAI client).
//! - [`attributes`], [`prompts`]: the pure domain — databases, series, selection, prompts.
//! - [`storage`]: the data directory and atomic writes.
//! - [`config`]: flags, environment and `.env`.

pub mod app;
pub mod attributes;
pub mod config;
pub mod health;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod prompts;
pub mod server;
pub mod storage;
pub mod telemetry;
