//! [`Server`]: the real server running inside the test process.
//!
//! It is wired exactly as `src/main.rs` wires the binary — flags parsed by [`Flags`], the
//! environment given to [`Config::from_sources`], `prepare_data_dir`, a listener on the
//! configured address, [`App::build`], the start-up report, [`server::serve`] until stopped, and
//! the progress statistics saved after the last request — with three differences, each because
//! the binary does it for the whole process:
//!
//! - no global `tracing` subscriber (`telemetry::init` is once per process), so nothing is
//!   logged and there are no log lines to check;
//! - no `.env` loading and no reading of this process's environment: the variables a test gives
//!   in [`Options::env`] (plus a temporary `HOME`) are the whole environment the config sees;
//! - no SIGINT/SIGTERM handling and no periodic status printer on stderr: dropping the
//!   [`Server`] is the shutdown signal.
//!
//! A test may also hand it a clock ([`Options::clock`]), built in with
//! [`App::build_with_clock`], to move the server's day on without waiting.
//!
//! Tests that need any of those — exit codes, signals, `kill -9`, `.env`, log lines — use
//! [`super::Process`], which spawns the binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use clap::Parser as _;
use dalleserver::app::{App, AppState};
use dalleserver::config::{Config, Env, Flags};
use dalleserver::server;

use super::Options;

/// A server on `127.0.0.1:<free port>` with a temporary data dir, served by its own tokio
/// runtime on a background thread (so blocking `reqwest` clients and `#[tokio::test]`s both
/// work against it). Dropping it shuts the server down and waits for it.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// `127.0.0.1:<port>`, for raw sockets.
    pub addr: String,
    /// The data directory the server uses (absolute, as the server resolved it).
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

/// The environment handed to the config: the test's pairs, the last one winning like repeated
/// `Command::env` calls.
struct Pairs(Vec<(String, String)>);

impl Env for Pairs {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }
}

impl Server {
    /// Starts a server with defaults (mock mode, temp data dir).
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    /// Starts a server from `opts` (flags as on the command line, environment pairs) and waits
    /// until it listens. Panics on a configuration the server would refuse.
    pub fn start_with(opts: Options) -> Server {
        assert!(
            opts.dotenv.is_none(),
            "`.env` is loaded by the binary from its working directory: use Process for it"
        );
        let tmp = tempfile::tempdir().unwrap();
        let mut argv: Vec<String> = ["dalleserver", "--bind", "127.0.0.1", "--port", "0"]
            .map(String::from)
            .into();
        if !super::data_dir_given(&opts) {
            argv.push("--data-dir".into());
            argv.push(tmp.path().join("data").display().to_string());
        }
        argv.extend(opts.args);
        let flags = Flags::try_parse_from(&argv)
            .unwrap_or_else(|err| panic!("the server refuses {argv:?}:\n{err}"));
        let mut env = vec![("HOME".to_string(), tmp.path().display().to_string())];
        env.extend(opts.env);
        let mut config = Config::from_sources(flags, &Pairs(env))
            .unwrap_or_else(|err| panic!("the server refuses its configuration: {err}"));
        config
            .prepare_data_dir()
            .unwrap_or_else(|err| panic!("the server refuses its data dir: {err}"));
        let data_dir = config.data_dir.clone();
        let clocks = opts
            .clock
            .as_ref()
            .map_or_else(dalleserver::app::Clocks::system, |clock| clock.clocks());

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("server-under-test".into())
            .spawn(move || run(config, clocks, ready_tx, stop_rx))
            .unwrap();
        let local = match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(local)) => local,
            Ok(Err(err)) => panic!("the server did not start: {err}"),
            Err(err) => panic!("the server did not start: {err}"),
        };
        Server {
            base: format!("http://{local}"),
            addr: local.to_string(),
            data_dir,
            stop: Some(stop_tx),
            thread: Some(thread),
            _tmp: tmp,
        }
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            if joined.is_err() && !std::thread::panicking() {
                panic!("the server thread panicked");
            }
        }
    }
}

/// The binary's `run`, with a channel instead of a log line to say where it listens.
fn run(
    config: Config,
    clocks: dalleserver::app::Clocks,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    // Two workers whatever the machine: many servers run at once in one test binary.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(err) => {
                let _ = ready.send(Err(format!("cannot listen on {addr}: {err}")));
                return;
            }
        };
        let local = listener.local_addr().unwrap();
        let app = match App::build_with(config, clocks) {
            Ok(app) => app,
            Err(err) => {
                let _ = ready.send(Err(err.to_string()));
                return;
            }
        };
        app.log_startup_report(local);
        let app = Arc::new(app);
        let progress = app.progress.clone();
        let _ = ready.send(Ok(local));
        let served = server::serve(listener, AppState(app), async {
            let _ = stop.await;
        })
        .await;
        if let Err(err) = served {
            eprintln!("server under test: serve failed: {err}");
        }
        // Like the binary: the phase averages survive a restart (tests rely on it).
        match tokio::task::spawn_blocking(move || progress.save_if_dirty()).await {
            Ok(Err(err)) => eprintln!("server under test: could not save progress: {err}"),
            Err(err) => eprintln!("server under test: saving progress panicked: {err}"),
            Ok(Ok(_)) => {}
        }
    });
    // Runs still in flight (annotation on the blocking pool) get a moment, then are dropped.
    runtime.shutdown_timeout(Duration::from_secs(5));
}
