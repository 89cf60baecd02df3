//! dalleserver: turns `GET /dalle/<series>/<address>?generate=1` into an AI-generated,
//! captioned PNG, with live progress, a gallery, metrics and health probes.
//!
//! Crate map (dependencies point downwards; the book's architecture page draws it):
//! - [`server`]: the accept loop and connection timeouts, generic over any tower service.
//! - [`http`]: the router, the one request layer and the handlers — the only module that
//!   knows axum.
//! - [`app`]: the [`app::App`] that owns every component.
//! - [`catalogue`]: the `/v1` records, database manifest and series administration, on top
//!   of the run core.
//! - [`run`]: **generate an image** — the run core for `/dalle` and `/v1` alike: the `/dalle`
//!   decision table ([`run::Generator::handle`]), one run per key, queue and slots, the
//!   pipeline stages, the artifacts a job writes, typed run failures; coordination
//!   ([`run::coordination`]) and artifact storage ([`run::store`]) behind narrow traits.
//! - [`progress`]: the run registry polls read, and the phase statistics behind the ETA.
//! - [`openai`], [`annotate`]: the provider client with its breakers and retries; captions.
//! - [`gallery`], [`health`], [`metrics`]: views over the components.
//! - [`domain`], [`attributes`], [`prompts`]: identifiers parsed at the edge, and the pure
//!   domain — databases, series, selection, prompts.
//! - [`budget`]: spending caps on paid images, behind a narrow trait.
//! - [`idempotency`]: `Idempotency-Key` slots and kept answers, behind a narrow trait.
//! - [`limits`]: rate limits on run starts (token buckets), behind a narrow trait.
//! - [`storage`]: the data directory, atomic writes and the file cache.
//! - [`cid`], [`provenance`]: content ids (CIDv1, raw codec, SHA-256), and the record of
//!   how each image was made.
//! - [`config`], [`telemetry`]: flags, environment, `.env`; logging.
//! - [`auth`]: the API keys file, bearer tokens and the [`auth::Caller`] a run is admitted
//!   for (the router decides what needs a key).

pub mod annotate;
pub mod app;
pub mod attributes;
pub mod auth;
pub mod budget;
pub mod catalogue;
pub mod cid;
pub mod config;
pub mod domain;
pub mod gallery;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod progress;
pub mod prompts;
pub mod provenance;
pub mod run;
pub mod server;
pub mod storage;
pub mod telemetry;
