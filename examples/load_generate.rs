//! Fires `--count` distinct synchronous generations (`POST /v1/images/generate`, image and
//! caption, no enhancement) at once and reports how long they took, as one JSON line.
//! Used by `scripts/load.sh`:
//!
//! ```sh
//! cargo run --release --example load_generate -- --url http://127.0.0.1:8080 --count 200
//! ```
//!
//! Seeds are the addresses `0x…<first + i>` (40 hex digits), so a run with a new `--first`
//! never hits the image cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use clap::Parser;

/// Flags.
#[derive(Debug, Parser)]
#[command(about = "Concurrent /v1/images/generate load")]
struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// How many distinct generations to request, all at once.
    #[arg(long, default_value_t = 200)]
    count: u64,
    /// The first seed number (seeds are `0x` + 40 hex digits of `first + i`).
    #[arg(long, default_value_t = 1)]
    first: u64,
    #[arg(long, default_value = "simple")]
    series: String,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let url = format!("{}/v1/images/generate", args.url.trim_end_matches('/'));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let (client, url) = (client.clone(), url.clone());
        let seed = format!("0x{:040x}", args.first + i);
        let body = serde_json::json!({
            "input": seed, "seed": seed, "series": args.series,
            "image": true, "annotate": true, "enhance": false,
        });
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = match client.post(&url).json(&body).send().await {
                Ok(resp) if resp.status().is_success() => {
                    let json: serde_json::Value = resp.json().await.unwrap_or_default();
                    if json["data"]["annotatedPath"]
                        .as_str()
                        .is_some_and(|p| !p.is_empty())
                    {
                        Ok(())
                    } else {
                        Err(format!("no annotated image: {json}"))
                    }
                }
                Ok(resp) => Err(format!(
                    "HTTP {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                )),
                Err(err) => Err(err.to_string()),
            };
            (sent.elapsed(), result)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (elapsed, result) = joined.expect("task");
        latencies.push(elapsed.as_secs_f64());
        if let Err(err) = result {
            errors.push(err);
        }
    }
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "count": args.count,
            "ok": args.count - errors.len() as u64,
            "failed": errors.len(),
            "wall_s": (wall * 1000.0).round() / 1000.0,
            "latency_min_s": at(0.0),
            "latency_p50_s": at(0.5),
            "latency_max_s": at(1.0),
            "first_error": errors.first(),
        })
    );
}
