//! The application: every long-lived component in one [`App`], shared by handlers as
//! [`AppState`], and the accept loop that serves it with the contract's timeouts and a
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::openai::breaker::CircuitBreaker;
use crate::storage::DataDir;

/// How long a client may take to send a request's headers (slow-loris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish after SIGINT/SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
        tracing::info!(
            "listening on {local}; open http://{host}:{}/preview",
            local.port()
        );
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

/// Serves `state` on `listener` until `shutdown` resolves, then drains connections for up to
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = crate::http::router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service =
            router
                .clone()
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                });
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, %peer, "connection closed with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        "shutting down: waiting up to {:?} for open requests",
        SHUTDOWN_GRACE
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
