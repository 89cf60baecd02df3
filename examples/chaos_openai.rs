//! A misbehaving OpenAI for `make chaos`: on loopback, answers image requests with a real
//! PNG, a 500/503, a 429 with `Retry-After`, a stall (never answers), or a closed connection,
//! at random. It keeps score: how often a prompt came back after an *ambiguous* failure
//! (stall or close after the request was read), which the server must never cause.
//!
//! `cargo run --release --example chaos_openai -- --port 0 --seed 7` prints `listening on
//! 127.0.0.1:PORT`; `GET /stats` returns the counters as JSON. With `--calm`, every image
//! request succeeds after `--delay-ms` (the shutdown round of `make chaos`); `repeated`
//! counts any prompt that came a second time, whatever the first answer was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    rate_limited: AtomicU64,
    stalled: AtomicU64,
    closed: AtomicU64,
    /// Prompts whose last attempt ended ambiguously, and how often they came back.
    ambiguous: Mutex<HashMap<u64, u32>>,
    repeated_after_ambiguous: AtomicU64,
    /// Every prompt seen, and how many came more than once.
    seen: Mutex<HashMap<u64, u32>>,
    repeated: AtomicU64,
}

struct Chaos {
    stats: Stats,
    png_b64: String,
    rng: Mutex<u64>,
    started: Instant,
    /// For this long after start, failures are frequent enough to open the breaker.
    storm: Duration,
    /// `Some(delay)`: no failures, every image answers after `delay`.
    calm: Option<Duration>,
}

impl Chaos {
    fn roll(&self) -> u32 {
        let mut s = self.rng.lock().unwrap();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % 100) as u32
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Some((head, body));
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes()).await;
}

async fn handle(chaos: Arc<Chaos>, mut stream: TcpStream) {
    let Some((head, body)) = read_request(&mut stream).await else {
        return;
    };
    let line = head.lines().next().unwrap_or_default().to_string();
    if line.starts_with("GET /stats") {
        let s = &chaos.stats;
        let json = serde_json::json!({
            "requests": s.requests.load(Ordering::Relaxed),
            "ok": s.ok.load(Ordering::Relaxed),
            "errors": s.errors.load(Ordering::Relaxed),
            "rate_limited": s.rate_limited.load(Ordering::Relaxed),
            "stalled": s.stalled.load(Ordering::Relaxed),
            "closed": s.closed.load(Ordering::Relaxed),
            "repeated_after_ambiguous": s.repeated_after_ambiguous.load(Ordering::Relaxed),
            "repeated": s.repeated.load(Ordering::Relaxed),
        });
        respond(&mut stream, "200 OK", "", &json.to_string()).await;
        return;
    }
    if line.contains("/chat/completions") {
        respond(
            &mut stream,
            "200 OK",
            "",
            r#"{"choices":[{"message":{"content":"An enhanced prompt."}}]}"#,
        )
        .await;
        return;
    }
    let s = &chaos.stats;
    s.requests.fetch_add(1, Ordering::Relaxed);
    let prompt = fnv(&body);
    if chaos.stats.ambiguous.lock().unwrap().contains_key(&prompt) {
        s.repeated_after_ambiguous.fetch_add(1, Ordering::Relaxed);
    }
    let times = {
        let mut seen = s.seen.lock().unwrap();
        let n = seen.entry(prompt).or_insert(0);
        *n += 1;
        *n
    };
    if times > 1 {
        s.repeated.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(delay) = chaos.calm {
        s.ok.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        let json = format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, chaos.png_b64);
        respond(&mut stream, "200 OK", "", &json).await;
        return;
    }
    let storm = chaos.started.elapsed() < chaos.storm;
    let roll = chaos.roll();
    let (fail, limit, stall, close) = if storm {
        (70, 80, 85, 90)
    } else {
        (10, 15, 19, 23)
    };
    if roll < fail {
        s.errors.fetch_add(1, Ordering::Relaxed);
        let status = if roll % 2 == 0 {
            "500 Internal Server Error"
        } else {
            "503 Service Unavailable"
        };
        respond(
            &mut stream,
            status,
            "",
            r#"{"error":{"message":"chaos says no"}}"#,
        )
        .await;
    } else if roll < limit {
        s.rate_limited.fetch_add(1, Ordering::Relaxed);
        respond(
            &mut stream,
            "429 Too Many Requests",
            "retry-after: 1\r\n",
            r#"{"error":{"message":"slow down"}}"#,
        )
        .await;
    } else if roll < stall {
        s.stalled.fetch_add(1, Ordering::Relaxed);
        chaos.stats.ambiguous.lock().unwrap().insert(prompt, 1);
        // Hold the connection well past the server's image timeout, then drop it.
        tokio::time::sleep(Duration::from_secs(20)).await;
    } else if roll < close {
        s.closed.fetch_add(1, Ordering::Relaxed);
        chaos.stats.ambiguous.lock().unwrap().insert(prompt, 1);
        drop(stream);
    } else {
        s.ok.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50 + u64::from(roll) * 3)).await;
        let json = format!(r#"{{"data":[{{"b64_json":"{}"}}]}}"#, chaos.png_b64);
        respond(&mut stream, "200 OK", "", &json).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let port: u16 = arg("--port", "0").parse().unwrap();
    let seed: u64 = arg("--seed", "7").parse().unwrap();
    let storm = Duration::from_secs(arg("--storm-seconds", "8").parse().unwrap());
    let calm = args
        .iter()
        .any(|a| a == "--calm")
        .then(|| Duration::from_millis(arg("--delay-ms", "1000").parse().unwrap()));
    let img = image::RgbImage::from_fn(256, 256, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let chaos = Arc::new(Chaos {
        stats: Stats::default(),
        png_b64: base64::engine::general_purpose::STANDARD.encode(png.into_inner()),
        rng: Mutex::new(seed.max(1)),
        started: Instant::now(),
        storm,
        calm,
    });
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    println!("listening on {}", listener.local_addr().unwrap());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(handle(chaos.clone(), stream));
    }
}
