//! The application: every long-lived component in one [`App`], shared by handlers as
//! [`AppState`].

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::attributes::Attributes;
use crate::attributes::database::{BACKSTYLES, SELECTION_DATABASES, Source};
use crate::budget::{self, Budget, Caps, LocalBudget, Prices, SystemClock};
use crate::catalogue::service::Catalogue;
use crate::config::Config;
use crate::idempotency::{self, IdempotencyStore, LocalStore};
use crate::limits::{LocalLimiter, MonotonicTicker, Ticker};
use crate::metrics::Metrics;
use crate::openai::breaker::Breakers;
use crate::openai::{OpenAiClient, RetryPolicy};
use crate::progress::{Estimates, Priors, Progress};
use crate::run::journal::{DrainReport, Journal, Recovered};
use crate::run::{ArtifactStore, Backends, Generator, ImageSource, RunRegistry, Settings};
use crate::storage::DataDir;
use crate::storage::FileCache;

/// Every component of the running server.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub data: DataDir,
    pub metrics: Arc<Metrics>,
    /// The breakers around OpenAI calls, one per operation (chat, image), shared with the
    /// client; `/health` and `/metrics` report their real state.
    pub breaker: Breakers,
    /// Databases and series, or why `--databases` could not be loaded (then the server runs
    /// unready so the operator sees the error on `/readyz` instead of a crash loop).
    pub attributes: Result<Arc<Attributes>, String>,
    /// Progress of every run, shared with the generator and the status printer.
    pub progress: Arc<Progress>,
    /// The `/dalle` generator; unavailable when the attributes are.
    pub generator: Result<Arc<Generator>, String>,
    /// Served files and their ETags.
    pub file_cache: Arc<FileCache>,
    /// Where artifacts are stored: what `/files`, the gallery and `/health` read, through
    /// the same trait (and containment rule) as the run core.
    pub store: Arc<dyn ArtifactStore>,
    /// The run registry as the run core sees it (the gallery's live and failed cards).
    pub runs: Arc<dyn RunRegistry>,
    /// The `/v1` catalogue; unavailable when the attributes are.
    pub catalogue: Result<Arc<Catalogue>, String>,
    /// Every live run and the durable queue under `<data>/queue` (see [`crate::run::journal`]).
    pub journal: Arc<Journal>,
    /// `Idempotency-Key` slots and kept answers, under `<data>/idempotency`.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// What the previous process left in the queue, until [`App::resume_queue`] starts it.
    recovered: Mutex<Option<Recovered>>,
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
    #[error("cannot set up the OpenAI client: {0}")]
    OpenAi(#[from] crate::openai::OpenAiError),
    #[error("cannot open the idempotency store: {0}")]
    Idempotency(std::io::Error),
    #[error("cannot read the saved budget: {0}")]
    Budget(std::io::Error),
    #[error("{0}")]
    Prices(#[from] crate::budget::prices::PricesError),
}

/// Where the components read the time: the wall clock for budget periods and idempotency
/// keys, a monotonic one
/// for rate-limit buckets. Tests give both a clock they move.
#[derive(Debug, Clone)]
pub struct Clocks {
    pub wall: Arc<dyn budget::Clock>,
    pub ticker: Arc<dyn Ticker>,
}

impl Clocks {
    /// The system's clocks.
    pub fn system() -> Clocks {
        Clocks {
            wall: Arc::new(SystemClock),
            ticker: Arc::new(MonotonicTicker::default()),
        }
    }
}

impl App {
    /// Builds every component from a configuration whose data dir is already prepared.
    pub fn build(config: Config) -> Result<App, BuildError> {
        App::build_with(config, Clocks::system())
    }

    /// [`App::build`], reading the time from `clocks`.
    pub fn build_with(config: Config, clocks: Clocks) -> Result<App, BuildError> {
        let data = DataDir::new(config.data_dir.clone());
        for dir in [data.output(), data.user_series(), data.metrics()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| BuildError::Layout { path: dir, source })?;
        }
        sweep_temp_files(&data.output());
        let queue_dir = data.root().join("queue");
        let (journal, recovered) =
            Journal::open(queue_dir.clone()).map_err(|source| BuildError::Layout {
                path: queue_dir,
                source,
            })?;
        let journal = Arc::new(journal);
        let attributes = Attributes::load(config.databases.as_deref(), data.user_series())
            .map(Arc::new)
            .map_err(|e| e.to_string());
        if let Err(err) = &attributes {
            tracing::error!("attribute databases failed to load: {err}");
        }
        let metrics = Arc::new(Metrics::new()?);
        // Exported from the start (at 0), so dashboards see the series before the first image.
        metrics.record_spend(&config.openai.image_model, 0);
        let breaker = Breakers::default();
        // Estimates before any history fit the image source; queue waits count in slots.
        let priors = if config.openai.mock_mode() {
            Priors::mock()
        } else {
            Priors::live(&config.openai.image_model, !config.openai.no_enhance)
        };
        let estimates = Estimates::new(priors, config.max_concurrent);
        // Finished runs stay visible for one lock TTL so slow pollers still see the outcome.
        let progress =
            Arc::new(Progress::load(data.metrics(), config.lock_ttl).with_estimates(estimates));
        let source = if config.openai.mock_mode() {
            ImageSource::Mock
        } else {
            let policy = RetryPolicy {
                base: config.openai.retry_base,
                ..RetryPolicy::default()
            };
            let client = OpenAiClient::new(&config.openai, breaker.clone(), metrics.clone())?;
            ImageSource::OpenAi(Arc::new(client.with_retry_policy(policy)))
        };
        let settings = Settings {
            lock_ttl: config.lock_ttl,
            max_concurrent: config.max_concurrent,
            max_queue: config.max_queue,
            no_enhance: config.openai.no_enhance,
        };
        let file_cache = Arc::new(FileCache::new(FILE_CACHE_BYTES));
        let backends = Backends::local(
            &settings,
            data.output(),
            file_cache.clone(),
            progress.clone(),
        );
        let (store, runs) = (backends.store.clone(), backends.registry.clone());
        let prices = match &config.budget.prices {
            Some(path) => Prices::with_file(path)?,
            None => Prices::built_in(),
        };
        let caps = Caps {
            daily_usd: config.budget.daily_usd.map(budget::micros),
            monthly_usd: config.budget.monthly_usd.map(budget::micros),
            daily_images: config.budget.daily_images,
        };
        let spending: Arc<dyn Budget> = Arc::new(
            LocalBudget::open(data.root().join(BUDGET_FILE), caps, clocks.wall.clone())
                .map_err(BuildError::Budget)?,
        );
        let idempotency: Arc<dyn IdempotencyStore> = Arc::new(
            LocalStore::open(
                data.root().join(idempotency::DIR),
                config.idempotency.ttl,
                config.idempotency.max_keys,
                clocks.wall,
            )
            .map_err(BuildError::Idempotency)?,
        );
        let limiter = Arc::new(LocalLimiter::new(
            config.limits.key,
            config.limits.anonymous,
            clocks.ticker,
        ));
        let generator = attributes.clone().map(|attributes| {
            Arc::new(
                Generator::new(attributes, backends, source, metrics.clone(), settings)
                    .with_journal(journal.clone())
                    .with_budget(spending, prices)
                    .with_limiter(limiter),
            )
        });
        let catalogue = match (&attributes, &generator) {
            (Ok(attributes), Ok(generator)) => Ok(Arc::new(Catalogue::new(
                attributes.clone(),
                generator.clone(),
                data.root().to_path_buf(),
            ))),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        Ok(App {
            attributes,
            progress,
            catalogue,
            generator,
            file_cache,
            store,
            runs,
            journal,
            idempotency,
            recovered: Mutex::new(Some(recovered)),
            data,
            metrics,
            breaker,
            started: Instant::now(),
            started_at: SystemTime::now(),
            config,
        })
    }

    /// Starts the runs the previous process left queued (once; needs the tokio runtime) and
    /// logs what it found. Returns how many runs were resumed.
    pub fn resume_queue(&self) -> usize {
        let Some(recovered) = self
            .recovered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return 0;
        };
        for lost in &recovered.lost {
            tracing::warn!(
                series = %lost.series,
                subject = %lost.subject,
                request_id = %lost.request_id,
                "a run had sent its image request when the previous process stopped; not repeated (ask again with ?generate=1)"
            );
        }
        let found = recovered.pending.len();
        let resumed = match &self.generator {
            Ok(generator) => generator.resume(recovered.pending),
            Err(_) => 0,
        };
        if found > 0 || !recovered.lost.is_empty() || recovered.unreadable > 0 {
            tracing::info!(
                found,
                resumed,
                lost = recovered.lost.len(),
                unreadable = recovered.unreadable,
                "resumed the queued runs of the previous process"
            );
        }
        resumed
    }

    /// The drain after SIGINT/SIGTERM: starts no new run, stops runs that have not sent
    /// their image request (the `/dalle` ones stay queued for the next start), and waits up
    /// to `timeout` for the others to finish and write their files.
    pub async fn drain(&self, timeout: std::time::Duration) -> DrainReport {
        self.journal.begin_drain();
        let (live, paid) = self.journal.live();
        tracing::info!(
            live,
            image_requests_in_flight = paid,
            "draining: no new runs; waiting up to {timeout:?} for runs that sent their image request"
        );
        self.journal.drained(timeout).await
    }

    /// The `/v1` catalogue, or why it is unavailable.
    pub fn catalogue(&self) -> Result<&Arc<Catalogue>, &str> {
        self.catalogue.as_ref().map_err(String::as_str)
    }

    /// The generator, or why it is unavailable.
    pub fn generator(&self) -> Result<&Arc<Generator>, &str> {
        self.generator.as_ref().map_err(String::as_str)
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
        let cap = |c: Option<f64>| c.map_or_else(|| "none".to_string(), |usd| format!("${usd:.2}"));
        tracing::info!(
            daily_usd = %cap(self.config.budget.daily_usd),
            monthly_usd = %cap(self.config.budget.monthly_usd),
            daily_images = %self.config.budget.daily_images.map_or_else(|| "none".to_string(), |n| n.to_string()),
            "spending caps"
        );
        tracing::info!(
            per_key = %self.config.limits.key,
            anonymous = %self.config.limits.anonymous,
            trusted_proxies = self.config.limits.trusted_proxies.len(),
            "rate limits on run starts"
        );
        tracing::info!(lock_ttl = ?self.config.lock_ttl, max_concurrent = self.config.max_concurrent, max_queue = self.config.max_queue, "generation limits");
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            local.ip().to_string()
        };
        tracing::info!("listening on {local}; open http://{host}:{}/", local.port());
    }
}

/// The spend of the current day and month, under the data directory.
pub const BUDGET_FILE: &str = "budget.json";

/// Bytes of served files kept in memory (hot images and their ETags).
const FILE_CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// Removes temporary files a killed process left behind (no writer exists at start-up).
fn sweep_temp_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sweep_temp_files(&path);
        } else if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a temporary file left by an interrupted write")
                }
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "cannot remove a leftover temporary file")
                }
            }
        }
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
