//! The application: every long-lived component in one [`App`], shared by handlers as
//! [`AppState`].

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::openai::breaker::CircuitBreaker;
use crate::storage::DataDir;

/// Every component of the running server.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub data: DataDir,
    pub metrics: Metrics,
    /// The breaker around OpenAI calls; `/health` and `/metrics` report its real state.
    pub breaker: Arc<CircuitBreaker>,
    pub started: Instant,
    pub started_at: SystemTime,
}

/// Errors while assembling the [`App`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot create {path}: {source}")]
    Layout {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl App {
    /// Builds every component from a configuration whose data dir is already prepared.
    pub fn build(config: Config) -> Result<App, BuildError> {
        let data = DataDir::new(config.data_dir.clone());
        for dir in [data.output(), data.user_series(), data.metrics()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| BuildError::Layout { path: dir, source })?;
        }
        Ok(App {
            data,
            metrics: Metrics::new()?,
            breaker: Arc::new(CircuitBreaker::default()),
            started: Instant::now(),
            started_at: SystemTime::now(),
            config,
        })
    }

    /// Logs the start-up report: version, data dir, mode and where to point a browser.
    pub fn log_startup_report(&self, local: SocketAddr) {
        let mode = if self.config.openai.mock_mode() {
            "mock"
        } else {
            "live"
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "dalleserver starting");
        tracing::info!(data_dir = %self.data.root().display(), "data directory");
        tracing::info!(mode, base_url = %self.config.openai.base_url, image_model = %self.config.openai.image_model, "image generation");
        if self.config.openai.api_key.is_none() {
            tracing::warn!(
                "OPENAI_API_KEY is not set: running in mock mode (local images, no enhancement)"
            );
        }
        tracing::info!(lock_ttl = ?self.config.lock_ttl, max_concurrent = self.config.max_concurrent, "generation limits");
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            local.ip().to_string()
        };
        tracing::info!("listening on {local}; open http://{host}:{}/", local.port());
    }
}

/// Cheap, cloneable handle to the [`App`] for handlers.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}
