//! The accept loop: HTTP/1.1 connections with the server's connection timeouts and a graceful
//! shutdown, generic over any tower `Service` (the application's router in production, small
//! routers in tests).
//!
//! hyper's own header-read timer also runs while a keep-alive connection waits for its next
//! request, which would make the idle timeout equal to the 10 s header timeout. So each
//! connection carries a small `Activity` record instead, and a watchdog closes it when the
//! client takes more than 10 s to send a request's headers or stays idle for more than 120 s.
//! Time spent inside a handler is bounded separately by the per-route timeout layers.
//!
//! Transport policy (congestion control, socket buffers) is the operator's: the server sets
//! only `TCP_NODELAY`, which every HTTP server sets so small responses are not held back, and
//! corks a socket while it sends a file body with `sendfile` (see `zero_copy`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::app::AppState;
use crate::storage::ZeroCopy;

mod zero_copy;

/// Connection-level limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct ServerTimeouts {
    /// A client must send a request's complete headers within this (slow-loris protection).
    pub header_read: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub keep_alive_idle: Duration,
    /// After the shutdown signal, open requests get this long before connections are closed.
    pub shutdown_grace: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            header_read: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves the application in `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = crate::http::router(state);
    serve_service(listener, router, shutdown, ServerTimeouts::default()).await
}

/// Serves any service over HTTP/1.1; after `shutdown` resolves, stops accepting, lets open
/// requests finish for `timeouts.shutdown_grace`, then closes whatever is left. Each request
/// carries the peer's address as a [`ConnectInfo`] extension.
pub async fn serve_service<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    timeouts: ServerTimeouts,
) -> std::io::Result<()>
where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // Our watchdog owns header and idle timing (see the module docs).
    http.header_read_timeout(None).keep_alive(true);
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
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let on_request = activity.clone();
        let service = service.clone();
        // Notes each request's start for the watchdog, adds the peer address, and marks the
        // connection idle once the response body has been sent (dropped by hyper).
        let conn_service = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
            on_request.request_started();
            req.extensions_mut().insert(ConnectInfo(peer));
            let activity = on_request.clone();
            let response = service.clone().oneshot(req);
            async move {
                let mut response = response.await?;
                // A cached file's body: this connection may send it from the open file.
                if let Some(body) = response.extensions_mut().remove::<ZeroCopy>() {
                    activity.zero_copy.attach(body);
                }
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, activity }))
            }
        });
        let io = TokioIo::new(WatchedIo {
            inner: stream,
            activity: activity.clone(),
        });
        let conn =
            graceful.watch(http.serve_connection(io, TowerToHyperService::new(conn_service)));
        // Reap finished connection tasks so the set only holds live ones.
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            tokio::select! {
                result = conn => if let Err(err) = result {
                    tracing::debug!(%err, %peer, "connection closed with an error");
                },
                reason = watchdog(&activity, timeouts) => {
                    tracing::debug!(%peer, reason, "closing connection");
                }
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
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Where a connection is in its request cycle.
const READING_HEAD: u8 = 0;
const IN_REQUEST: u8 = 1;
const IDLE: u8 = 2;

/// Lock-free record of a connection's phase and when it began.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    phase: AtomicU8,
    since_ms: AtomicU64,
    /// The response body this connection may send with `sendfile`.
    zero_copy: zero_copy::Slot,
}

impl Activity {
    /// A new connection is expected to send headers promptly.
    fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            phase: AtomicU8::new(READING_HEAD),
            since_ms: AtomicU64::new(0),
            zero_copy: zero_copy::Slot::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase, Ordering::Release);
    }

    /// Bytes arrived: on an idle connection that starts the next request's header clock.
    fn bytes_arrived(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.enter(READING_HEAD);
        }
    }

    fn request_started(&self) {
        self.enter(IN_REQUEST);
    }

    fn response_finished(&self) {
        self.enter(IDLE);
    }
}

/// Resolves (with the reason) when the connection has broken one of the time limits.
async fn watchdog(activity: &Activity, timeouts: ServerTimeouts) -> &'static str {
    loop {
        let since = Duration::from_millis(activity.since_ms.load(Ordering::Acquire));
        let (limit, reason) = match activity.phase.load(Ordering::Acquire) {
            READING_HEAD => (timeouts.header_read, "request headers not received in time"),
            IDLE => (timeouts.keep_alive_idle, "keep-alive connection idle"),
            _ => {
                // The handler's own timeout applies; look again later.
                tokio::time::sleep(timeouts.header_read.min(Duration::from_secs(1))).await;
                continue;
            }
        };
        let deadline = activity.origin + since + limit;
        if Instant::now() >= deadline {
            return reason;
        }
        // The phase may change meanwhile; the loop re-reads it at the deadline.
        tokio::time::sleep_until(deadline).await;
    }
}

/// The TCP stream, noting when bytes arrive.
struct WatchedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.activity.zero_copy.is_armed()
            && let Some(sent) = zero_copy::poll_write_vectored(
                &this.inner,
                cx,
                &[std::io::IoSlice::new(buf)],
                &this.activity.zero_copy,
            )
        {
            return sent;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.activity.zero_copy.is_armed()
            && let Some(sent) =
                zero_copy::poll_write_vectored(&this.inner, cx, bufs, &this.activity.zero_copy)
        {
            return sent;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that marks the connection idle once hyper has sent (and dropped) it.
struct TrackedBody<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.activity.response_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Handle = (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    );

    async fn start(timeouts: ServerTimeouts) -> Handle {
        let router = axum::Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route("/fast", get(|| async { "fast" }))
            .route("/hang", get(std::future::pending::<&'static str>));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = rx.await;
        };
        let server = tokio::spawn(serve_service(listener, router, stop, timeouts));
        (addr, tx, server)
    }

    /// Sends one keep-alive request on `stream` and reads exactly its response.
    async fn exchange(stream: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before the response was complete");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return body.to_string();
                }
            }
        }
    }

    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(limit, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn in_flight_requests_finish_after_the_shutdown_signal() {
        let (addr, stop, server) = start(ServerTimeouts::default()).await;
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
            TcpStream::connect(addr).await.is_err(),
            "listener must be closed"
        );
    }

    #[tokio::test]
    async fn requests_still_open_after_the_grace_period_are_cut() {
        let timeouts = ServerTimeouts {
            shutdown_grace: Duration::from_millis(200),
            ..ServerTimeouts::default()
        };
        let (addr, stop, server) = start(timeouts).await;
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
        let (addr, _stop, _server) = start(timeouts).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut fast = TcpStream::connect(addr).await.unwrap();
        assert_eq!(exchange(&mut fast, "/fast").await, "fast");
        assert!(
            closed_within(&mut slow, Duration::from_secs(5)).await,
            "slow client not cut"
        );
        // A silent client is cut by the same clock.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut silent, Duration::from_secs(5)).await,
            "silent client not cut"
        );
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_outlive_the_header_timeout_then_close() {
        let timeouts = ServerTimeouts {
            header_read: Duration::from_millis(150),
            keep_alive_idle: Duration::from_millis(800),
            ..ServerTimeouts::default()
        };
        let (addr, _stop, _server) = start(timeouts).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        assert_eq!(exchange(&mut conn, "/fast").await, "fast");
        // Idle for longer than the header timeout: still open for the next request.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            exchange(&mut conn, "/slow").await,
            "done",
            "a handler slower than the header timeout is fine"
        );
        assert!(
            closed_within(&mut conn, Duration::from_secs(5)).await,
            "idle connection never closed"
        );
    }
}
