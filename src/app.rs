//! The application: every long-lived component in one [`App`], shared by handlers as
//! [`AppState`].

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::attributes::Attributes;
use crate::attributes::database::{BACKSTYLES, SELECTION_DATABASES, Source};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::openai::breaker::CircuitBreaker;
use crate::storage::DataDir;

/// Every component of the running server.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub data: DataDir,
    pub metrics: Arc<Metrics>,
    /// The breaker around OpenAI calls; `/health` and `/metrics` report its real state.
    pub breaker: Arc<CircuitBreaker>,
    /// Databases and series, or why `--databases` could not be loaded (then the server runs
    /// unready so the operator sees the error on `/readyz` instead of a crash loop).
    pub attributes: Result<Arc<Attributes>, String>,
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
        let attributes = Attributes::load(config.databases.as_deref(), data.user_series())
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let Err(err) = &attributes {
            tracing::error!("attribute databases failed to load: {err}");
        }
        Ok(App {
            attributes,
            data,
            metrics: Arc::new(Metrics::new()?),
            breaker: Arc::new(CircuitBreaker::default()),
            started: Instant::now(),
            started_at: SystemTime::now(),
            config,
        })
    }

    /// The attribute engine, or the load error as a 503 for handlers that need it.
    pub fn attributes(&self) -> Result<&Arc<Attributes>, &str> {
        self.attributes.as_ref().map_err(String::as_str)
    }

    /// Logs the start-up report: version, data dir, mode, databases and series, and where to
    /// point a browser.
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
        if let Ok(attributes) = &self.attributes {
            let dbs = &attributes.databases;
            let source = match &dbs.source {
                Source::Embedded => "embedded".to_string(),
                Source::Directory(dir) => dir.display().to_string(),
            };
            for name in SELECTION_DATABASES.iter().chain([&BACKSTYLES]) {
                let rows = dbs.get(name).map_or(0, |db| db.len());
                tracing::info!(database = name, rows, "database");
            }
            tracing::info!(
                source = %source,
                databases = SELECTION_DATABASES.len(),
                rows = dbs.selection_rows(),
                series = attributes.series.names().len(),
                "attributes loaded"
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
