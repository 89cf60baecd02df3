//! The flood client of `scripts/flood.sh`: exactly `--requests` anonymous `?generate=1` for
//! random addresses, paced evenly over `--seconds`, while a second client asks for one
//! cached image every `--hit-every-ms` and times each answer. Loopback only; every request
//! has a 10 s timeout and the whole run ends within `--seconds` plus that.
//!
//! ```sh
//! cargo run --release --example flood -- --base http://127.0.0.1:8080 \
//!     --hit /dalle/simple/0x…  --clients random   # or: --clients 198.51.100.1
//! ```
//!
//! `--clients random` sends each request with an `X-Forwarded-For` of its own random IPv4
//! address (a server that trusts the loopback proxy counts each as a new client); any other
//! value is sent as the `X-Forwarded-For` of every request (one client). Prints one JSON line:
//! the answers by status and code, and the hit client's latency percentiles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

/// Flags.
#[derive(Debug, Parser)]
#[command(about = "A bounded flood of anonymous ?generate=1 on loopback")]
struct Args {
    /// The server, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    base: String,
    /// How many `?generate=1` requests to send.
    #[arg(long, default_value_t = 10_000)]
    requests: u32,
    /// Over how many seconds to spread them.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// `random` (a new client address each request) or one address for every request.
    #[arg(long, default_value = "random")]
    clients: String,
    /// The path of a cached image for the second client.
    #[arg(long)]
    hit: String,
    /// How often the second client asks for it.
    #[arg(long, default_value_t = 20)]
    hit_every_ms: u64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
}

/// A small xorshift generator: random addresses without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn address(&mut self) -> String {
        let (a, b, c) = (self.next(), self.next(), self.next() as u32);
        format!("0x{a:016x}{b:016x}{c:08x}")
    }

    /// A public-looking IPv4 address (never loopback).
    fn client(&mut self) -> String {
        let n = self.next();
        format!(
            "{}.{}.{}.{}",
            11 + (n % 200),
            (n >> 8) as u8,
            (n >> 16) as u8,
            1 + (n >> 24) as u8 % 250
        )
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.base.starts_with("http://127.") || args.base.starts_with("http://[::1]"),
        "loopback only"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.in_flight)
        .build()
        .unwrap();
    let answers: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(args.in_flight));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The second client: one cached image, on its own connection, timed.
    let hits = {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (url, every, done) = (
            format!("{}{}", args.base, args.hit),
            Duration::from_millis(args.hit_every_ms),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut times = Vec::new();
            let mut failed = 0u64;
            let mut tick = tokio::time::interval(every);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let start = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(resp) if resp.status() == 200 => resp.bytes().await.is_ok(),
                    _ => false,
                };
                if ok {
                    times.push(start.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
            }
            (times, failed)
        })
    };

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let gap = Duration::from_secs(args.seconds) / args.requests.max(1);
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.requests as usize);
    for _ in 0..args.requests {
        tick.tick().await;
        let permit = slots.clone().acquire_owned().await.unwrap();
        let url = format!("{}/dalle/simple/{}?generate=1", args.base, rng.address());
        let from = if args.clients == "random" {
            rng.client()
        } else {
            args.clients.clone()
        };
        let (client, answers) = (client.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            let label = match client
                .get(&url)
                .header("x-forwarded-for", from)
                .send()
                .await
            {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    match body["error"]["code"].as_str() {
                        Some(code) => format!("{status} {code}"),
                        None => status.to_string(),
                    }
                }
                Err(e) if e.is_timeout() => "timeout".to_string(),
                Err(_) => "connection error".to_string(),
            };
            *answers.lock().unwrap().entry(label).or_default() += 1;
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut times, failed) = hits.await.unwrap();
    times.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "requests": args.requests,
        "seconds": (elapsed * 10.0).round() / 10.0,
        "answers": *answers.lock().unwrap(),
        "hits": {
            "count": times.len(),
            "failed": failed,
            "p50_ms": (percentile(&times, 50.0) * 100.0).round() / 100.0,
            "p99_ms": (percentile(&times, 99.0) * 100.0).round() / 100.0,
            "max_ms": (percentile(&times, 100.0) * 100.0).round() / 100.0,
        },
    });
    println!("{report}");
}
