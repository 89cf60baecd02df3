//! The `/v1` engine: image metadata records, the database manifest and series
//! administration over the one explicit data directory, with the engine's coded errors.
//! Everything here is blocking file I/O; async callers run it on `spawn_blocking`.

pub mod error;
pub mod export;
pub mod manifest;
pub mod metadata;
pub mod records;
pub mod series_admin;
pub mod service;
