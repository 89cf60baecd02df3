//! Test harness shared by the end-to-end tests.
//!
//! - [`Server`] (the default): the real server inside the test process, on `127.0.0.1:0` with a
//!   temporary data dir. Start it with `Server::start()` or `Server::start_with(Options { .. })`.
//! - [`Process`]: the same, as the spawned binary, for tests of the process itself (exit codes,
//!   signals, `kill -9`, `.env`, stderr logs). It takes the same [`Options`], so moving a test
//!   from one to the other is a one-word change.
//! - [`require_tools`]: for tests that need an outside program (see `make test-tools`).
//! - Small helpers: raw HTTP requests, PNGs and OpenAI answers for wiremock, and the count of
//!   image requests a mock OpenAI received ([`image_requests`]), which every fault test checks.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod process;
mod server;

#[allow(unused_imports)] // each test crate uses a different part
pub use process::{Process, binary, command, wait_exit};
pub use server::Server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How to start a [`Server`] or a [`Process`].
#[derive(Default)]
pub struct Options {
    /// Command-line flags, as the binary would get them.
    pub args: Vec<String>,
    /// Environment variables; the server sees no others (except a temporary `HOME`).
    pub env: Vec<(String, String)>,
    /// Written to `.env` in the working directory ([`Process`] only).
    pub dotenv: Option<String>,
    /// The clock the budget and the rate limiter read ([`Server`] only): the test moves it
    /// instead of waiting.
    pub clock: Option<Arc<ManualClock>>,
}

/// A clock a test moves: wall time from a start the test picks, and the monotonic time the
/// rate limiter reads, both advanced together by [`ManualClock::advance`].
#[derive(Debug)]
pub struct ManualClock {
    start: SystemTime,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock reading `start` until it is moved.
    pub fn at(start: SystemTime) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            start,
            offset: Mutex::new(Duration::ZERO),
        })
    }

    /// A clock reading the real time now until it is moved.
    pub fn now() -> Arc<ManualClock> {
        ManualClock::at(SystemTime::now())
    }

    /// Moves both readings forward.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
    }

    /// The clocks to build the app with.
    pub fn clocks(self: &Arc<Self>) -> dalleserver::app::Clocks {
        dalleserver::app::Clocks {
            wall: self.clone(),
            ticker: self.clone(),
        }
    }
}

impl dalleserver::budget::Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.start + *self.offset.lock().unwrap()
    }
}

impl dalleserver::limits::Ticker for ManualClock {
    fn elapsed(&self) -> Duration {
        *self.offset.lock().unwrap()
    }
}

/// What a test needs from either kind of server, for helpers that work with both.
pub trait Running {
    /// `http://127.0.0.1:<port>` + `path`.
    fn url(&self, path: &str) -> String;
}

impl Running for Server {
    fn url(&self, path: &str) -> String {
        Server::url(self, path)
    }
}

impl Running for Process {
    fn url(&self, path: &str) -> String {
        Process::url(self, path)
    }
}

/// Whether the test chose the data dir itself (otherwise the harness adds a temporary one).
fn data_dir_given(opts: &Options) -> bool {
    opts.args.iter().any(|a| a.starts_with("--data-dir"))
        || opts.env.iter().any(|(k, _)| k == "TB_DALLE_DATA_DIR")
        || opts
            .dotenv
            .as_deref()
            .is_some_and(|d| d.contains("TB_DALLE_DATA_DIR"))
}

/// A raw HTTP/1.1 response.
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends `method path` exactly as written (no client-side normalisation of `..` or `%2e`).
pub fn raw_request(addr: &str, method: &str, path: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    RawResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real PNG (`width`×`height`, a gradient over `rgb`) for the mock OpenAI to return.
pub fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            rgb[0],
            rgb[1].wrapping_add(x as u8),
            rgb[2].wrapping_add(y as u8),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// An OpenAI image answer carrying `png` as `b64_json`.
pub fn b64_answer(png: &[u8]) -> wiremock::ResponseTemplate {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    wiremock::ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"data": [{"b64_json": b64}]}))
}

/// A mock OpenAI answering every image request with a small PNG after `delay`.
pub async fn mock_openai(delay: Duration) -> wiremock::MockServer {
    let mock = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/images/generations"))
        .respond_with(b64_answer(&png(64, 48, [10, 200, 90])).set_delay(delay))
        .mount(&mock)
        .await;
    mock
}

/// A live-mode server pointed at `mock` with these flags: no enhancement, `dall-e-2`, and
/// retries 20 ms apart.
pub fn live(mock: &wiremock::MockServer, args: &[&str]) -> Options {
    Options {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: [
            ("OPENAI_API_KEY", "sk-test-key"),
            ("OPENAI_BASE_URL", mock.uri().as_str()),
            ("TB_DALLE_RETRY_BASE", "20ms"),
            ("TB_DALLE_NO_ENHANCE", "1"),
            ("TB_DALLE_IMAGE_MODEL", "dall-e-2"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Options::default()
    }
}

/// Panics, naming what to install, unless every program in `tools` is installed (a name found
/// on `PATH`, or an absolute path that exists).
///
/// For the tests that need outside programs. Each lives in a module named `needs_<tool>…`
/// (e.g. `needs_curl_jq`) and is `#[ignore = "needs …"]`, so a plain `cargo test` lists it as
/// ignored with the reason instead of passing without checking anything. `make test` runs each
/// such module when its tools are installed (`tests/tool-tests.sh`); with `CI` set it always
/// runs them, and a missing tool fails here.
pub fn require_tools(tools: &[&str], install: &str) {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| !installed(tool))
        .collect();
    assert!(
        missing.is_empty(),
        "this test needs {} (install: {install})",
        missing.join(", ")
    );
}

fn installed(tool: &str) -> bool {
    if tool.contains('/') {
        return std::path::Path::new(tool).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// How many image requests (`POST …/images/generations`) `mock` has received: what the
/// operator pays for, so every fault path counts it.
pub async fn image_requests(mock: &wiremock::MockServer) -> usize {
    mock.received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.url.path().ends_with("/images/generations"))
        .count()
}
