//! A local stand-in for the OpenAI API, used by `scripts/load.sh` (and handy by hand): every
//! image request waits `--delay-ms`, then answers one real 1024×1024 PNG as `b64_json`.
//!
//! ```sh
//! cargo run --release --example mock_openai -- --port 9999 --delay-ms 1000
//! OPENAI_API_KEY=x OPENAI_BASE_URL=http://127.0.0.1:9999 TB_DALLE_NO_ENHANCE=1 \
//!     target/release/dalleserver
//! ```
//!
//! The picture is made once at start-up with smooth gradients plus per-pixel noise, so it
//! compresses like a photograph (about 2.5 MB of PNG), not like flat test tiles. The answer
//! body is rendered once too: the mock spends almost no CPU per request, leaving the machine
//! to the server under test. `--write-png PATH` writes the same picture and exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use clap::Parser;

/// Flags.
#[derive(Debug, Parser)]
#[command(about = "A stalling OpenAI stand-in for load tests")]
struct Args {
    /// Port on 127.0.0.1 (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How long each image request waits before answering, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    delay_ms: u64,
    /// Side of the square picture, in pixels.
    #[arg(long, default_value_t = 1024)]
    size: u32,
    /// Write the picture to this file and exit.
    #[arg(long)]
    write_png: Option<PathBuf>,
}

#[derive(Debug)]
struct Mock {
    delay: Duration,
    image_body: Bytes,
    images: AtomicU64,
    chats: AtomicU64,
}

/// Smooth colour fields plus ±8 of hashed noise per channel: photo-like for the encoder.
fn photo(size: u32) -> image::RgbaImage {
    let s = size.max(1) as f32;
    image::RgbaImage::from_fn(size, size, |x, y| {
        let (fx, fy) = (x as f32 / s, y as f32 / s);
        let noise = |salt: u32| {
            let h = (x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663) ^ salt)
                .wrapping_mul(2_654_435_761);
            ((h >> 24) % 17) as f32 - 8.0
        };
        let channel = |base: f32, salt: u32| (base + noise(salt)).clamp(0.0, 255.0) as u8;
        image::Rgba([
            channel(128.0 + 100.0 * (6.0 * fx + 2.0 * fy).sin(), 1),
            channel(120.0 + 90.0 * (5.0 * fy - 3.0 * fx).cos(), 2),
            channel(110.0 + 80.0 * (9.0 * fx * fy).sin(), 3),
            255,
        ])
    })
}

async fn image_generation(State(mock): State<Arc<Mock>>, _body: Bytes) -> impl IntoResponse {
    tokio::time::sleep(mock.delay).await;
    mock.images.fetch_add(1, Ordering::Relaxed);
    (
        [(CONTENT_TYPE, "application/json")],
        mock.image_body.clone(),
    )
}

async fn chat_completion(State(mock): State<Arc<Mock>>, _body: Bytes) -> impl IntoResponse {
    mock.chats.fetch_add(1, Ordering::Relaxed);
    (
        [(CONTENT_TYPE, "application/json")],
        r#"{"id":"mock","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"A quiet harbour at dusk, painted in warm amber light."},"finish_reason":"stop"}]}"#,
    )
}

async fn stats(State(mock): State<Arc<Mock>>) -> String {
    format!(
        "{{\"images\":{},\"chats\":{}}}\n",
        mock.images.load(Ordering::Relaxed),
        mock.chats.load(Ordering::Relaxed)
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let png = dalleserver::annotate::encode_png(&photo(args.size)).expect("encode the picture");
    if let Some(path) = &args.write_png {
        std::fs::write(path, &png).expect("write the picture");
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let body = format!(r#"{{"created":1700000000,"data":[{{"b64_json":"{b64}"}}]}}"#);
    let mock = Arc::new(Mock {
        delay: Duration::from_millis(args.delay_ms),
        image_body: Bytes::from(body),
        images: AtomicU64::new(0),
        chats: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/images/generations", post(image_generation))
        .route("/chat/completions", post(chat_completion))
        .route("/stats", get(stats))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local address");
    println!(
        "mock_openai listening on http://{addr} (delay {} ms, PNG {} bytes)",
        args.delay_ms,
        png.len()
    );
    std::io::stdout().flush().expect("flush stdout");
    axum::serve(listener, app).await.expect("serve");
}
