//! The application: every long-lived component in one [`App`], shared by handlers as
//! [`AppState`], and the accept loop that serves it with the contract's timeouts and a
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
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

/// Connection-level limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct ServerTimeouts {
    /// A client must send a request's complete headers within this (slow-loris protection).
    pub header_read: Duration,
    /// After the shutdown signal, open requests get this long before connections are closed.
    pub shutdown_grace: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            header_read: HEADER_READ_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Serves `state` on `listener` with the contract's timeouts until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = crate::http::router(state);
    serve_router(listener, router, shutdown, ServerTimeouts::default()).await
}

/// Serves any router over HTTP/1.1; after `shutdown` resolves, stops accepting, lets open
/// requests finish for `timeouts.shutdown_grace`, then closes whatever is left.
pub async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
    timeouts: ServerTimeouts,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
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
        let service = router
            .clone()
            .map_request(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        // Reap finished connection tasks so the set only holds live ones.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, %peer, "connection closed with an error");
            }
        });
    }
    drop(listener);
    let grace = timeouts.shutdown_grace;
    tracing::info!("shutting down: waiting up to {grace:?} for open requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        let open = connections.len();
        tracing::warn!(
            open,
            "shutdown grace period over; closing remaining connections"
        );
    }
    connections.abort_all();
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(
        router: axum::Router,
        timeouts: ServerTimeouts,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_router(
            listener,
            router,
            async {
                let _ = rx.await;
            },
            timeouts,
        ));
        (addr, tx, server)
    }

    fn slow_router() -> axum::Router {
        axum::Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route(
                "/hang",
                get(|| async { std::future::pending::<&str>().await }),
            )
    }

    #[tokio::test]
    async fn in_flight_requests_finish_after_the_shutdown_signal() {
        let (addr, stop, server) = start(slow_router(), ServerTimeouts::default()).await;
        let request = tokio::spawn(async move {
            reqwest::get(format!("http://{addr}/slow"))
                .await?
                .text()
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        assert_eq!(request.await.unwrap().unwrap(), "done");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener must be closed"
        );
    }

    #[tokio::test]
    async fn requests_still_open_after_the_grace_period_are_cut() {
        let timeouts = ServerTimeouts {
            shutdown_grace: Duration::from_millis(200),
            ..ServerTimeouts::default()
        };
        let (addr, stop, server) = start(slow_router(), timeouts).await;
        let request =
            tokio::spawn(async move { reqwest::get(format!("http://{addr}/hang")).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), request)
            .await
            .unwrap()
            .unwrap();
        assert!(
            outcome.is_err(),
            "the hung request must be closed, not answered"
        );
    }

    #[tokio::test]
    async fn slow_header_senders_are_disconnected_without_blocking_others() {
        let timeouts = ServerTimeouts {
            header_read: Duration::from_millis(300),
            ..ServerTimeouts::default()
        };
        let (addr, _stop, _server) = start(slow_router(), timeouts).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // Another client is served while the slow one dawdles.
        let body = reqwest::get(format!("http://{addr}/slow"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "done");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the slow client was not disconnected");
        assert!(!String::from_utf8_lossy(&buf).contains("done"));
    }
}
