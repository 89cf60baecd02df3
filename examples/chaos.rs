//! The `make chaos` driver: starts many generations on a running dalleserver (pointed at the
//! misbehaving `chaos_openai` mock), polls them all constantly until each ends, and checks the
//! invariants: every run ends `done` with a PNG or an error, every PNG decodes, no image
//! request was repeated after an ambiguous failure, the breaker opened and recovered, memory
//! stayed flat. Exits non-zero on any violation. Loopback only, bounded in count and time.
//!
//! `cargo run --release --example chaos -- --server http://127.0.0.1:P --mock http://127.0.0.1:Q
//!  --data-dir DIR --runs 500 --minutes 6`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

#[derive(Default)]
struct Monitor {
    states: Mutex<Vec<String>>,
    rss: Mutex<Vec<u64>>,
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let server = arg(&args, "--server", "http://127.0.0.1:8080");
    let mock = arg(&args, "--mock", "");
    let data_dir = std::path::PathBuf::from(arg(&args, "--data-dir", ""));
    let runs: usize = arg(&args, "--runs", "500").parse().unwrap();
    let verify_only = args.iter().any(|a| a == "--verify-only");
    let expect_breaker = !args.iter().any(|a| a == "--no-breaker-check");
    let key_offset: u64 = arg(&args, "--key-offset", "0").parse().unwrap();
    let deadline = Instant::now()
        + Duration::from_secs(60 * arg(&args, "--minutes", "6").parse::<u64>().unwrap());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    // Watch the breaker and the server's memory the whole time.
    let monitor = Arc::new(Monitor::default());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (http, server, monitor, stop) =
            (http.clone(), server.clone(), monitor.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = http
                    .get(format!("{server}/metrics?format=json"))
                    .send()
                    .await
                    && let Ok(v) = r.json::<Value>().await
                {
                    let state = v["data"]["circuit_breaker_state"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string();
                    let mut states = monitor.states.lock().await;
                    if states.last() != Some(&state) {
                        states.push(state);
                    }
                }
                if let Ok(r) = http.get(format!("{server}/health")).send().await
                    && let Ok(v) = r.json::<Value>().await
                {
                    monitor.rss.lock().await.push(
                        v["data"]["system"]["memory"]["alloc_bytes"]
                            .as_u64()
                            .unwrap_or(0),
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let keys: Vec<String> = (0..runs)
        .map(|i| format!("0x{:040x}", 0xc4a05_u64 * (i as u64 + 7 + key_offset)))
        .collect();
    if verify_only {
        let mut all = Vec::new();
        files(&data_dir.join("output"), &mut all);
        let pngs: Vec<_> = all
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        let corrupt: Vec<_> = pngs.iter().filter(|p| image::open(p).is_err()).collect();
        println!(
            "verify: {} PNG files on disk, {} corrupt",
            pngs.len(),
            corrupt.len()
        );
        stop.store(true, Ordering::Relaxed);
        watcher.await.unwrap();
        if !corrupt.is_empty() {
            for p in corrupt {
                println!("  corrupt: {}", p.display());
            }
            std::process::exit(1);
        }
        return;
    }
    let started = Instant::now();
    let pending = Arc::new(Mutex::new(BTreeSet::<String>::new()));
    let all_started = Arc::new(AtomicBool::new(false));
    let (pngs, errors, polls) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));

    // Start runs at a steady rate, so the breaker's open window is followed by more traffic
    // that lets it recover; poll every started run until it ends.
    let rate: f64 = arg(&args, "--rate", "8").parse().unwrap();
    let starter = {
        let (http, server, pending, all_started) = (
            http.clone(),
            server.clone(),
            pending.clone(),
            all_started.clone(),
        );
        let keys = keys.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for a in keys {
                tick.tick().await;
                if http
                    .get(format!("{server}/dalle/simple/{a}?generate=1"))
                    .send()
                    .await
                    .is_ok()
                {
                    pending.lock().await.insert(a);
                }
            }
            all_started.store(true, Ordering::Relaxed);
        })
    };
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (http, server, pending, pngs, errors, polls, violations) = (
                http.clone(),
                server.clone(),
                pending.clone(),
                pngs.clone(),
                errors.clone(),
                polls.clone(),
                violations.clone(),
            );
            let all_started = all_started.clone();
            tokio::spawn(async move {
                let mut turn = w;
                while Instant::now() < deadline {
                    let next = {
                        let p = pending.lock().await;
                        if p.is_empty() {
                            if all_started.load(Ordering::Relaxed) {
                                return;
                            }
                            None
                        } else {
                            p.iter().nth(turn % p.len()).cloned()
                        }
                    };
                    turn += 32;
                    let Some(a) = next else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    polls.fetch_add(1, Ordering::Relaxed);
                    let Ok(resp) = http.get(format!("{server}/dalle/simple/{a}")).send().await
                    else {
                        continue;
                    };
                    if resp
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v == "image/png")
                    {
                        let bytes = resp.bytes().await.unwrap_or_default();
                        if image::load_from_memory(&bytes).is_err() {
                            violations
                                .lock()
                                .await
                                .push(format!("{a}: served a PNG that does not decode"));
                        }
                        if pending.lock().await.remove(&a) {
                            pngs.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    let v: Value = resp.json().await.unwrap_or(Value::Null);
                    let data = &v["data"];
                    // Several workers may poll one key; only the one that removes it counts it.
                    if data["done"] == true && !data["error"].as_str().unwrap_or("").is_empty() {
                        if pending.lock().await.remove(&a) {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if data.as_object().is_some_and(|m| m.is_empty())
                        && pending.lock().await.remove(&a)
                    {
                        violations
                            .lock()
                            .await
                            .push(format!("{a}: the run vanished (answered {{}})"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    starter.abort();
    let elapsed = started.elapsed();
    // Let the breaker come back if it is still open, then stop watching.
    let settle = Instant::now() + Duration::from_secs(45);
    while Instant::now() < settle
        && monitor
            .states
            .lock()
            .await
            .last()
            .is_some_and(|s| s != "CLOSED")
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    let mut violations = violations.lock().await.clone();
    let unfinished = pending.lock().await.len();
    if unfinished > 0 {
        violations.push(format!(
            "{unfinished} runs did not end within the time limit"
        ));
    }
    // Every file on disk is whole.
    let mut all = Vec::new();
    files(&data_dir.join("output"), &mut all);
    let (mut png_files, mut corrupt) = (0, 0);
    for p in &all {
        if p.extension().is_some_and(|e| e == "png") {
            png_files += 1;
            if image::open(p).is_err() {
                corrupt += 1;
                violations.push(format!("corrupt file {}", p.display()));
            }
        }
    }
    let stats: Value = if mock.is_empty() {
        Value::Null
    } else {
        http.get(format!("{mock}/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let repeated = stats["repeated_after_ambiguous"].as_u64().unwrap_or(0);
    if repeated > 0 {
        violations.push(format!(
            "{repeated} image requests repeated after an ambiguous failure"
        ));
    }
    let states = monitor.states.lock().await.clone();
    let opened = states.iter().any(|s| s == "OPEN");
    let recovered = states
        .iter()
        .skip_while(|s| *s != "OPEN")
        .any(|s| s == "CLOSED");
    if expect_breaker && (!opened || !recovered) {
        violations.push(format!("breaker did not open and recover: {states:?}"));
    }
    let rss = monitor.rss.lock().await.clone();
    let mb = |b: u64| b / (1024 * 1024);
    let (first, peak, last) = (
        rss.first().copied().unwrap_or(0),
        rss.iter().copied().max().unwrap_or(0),
        rss.last().copied().unwrap_or(0),
    );

    println!(
        "chaos run: {runs} generations in {:.1}s, {} polls",
        elapsed.as_secs_f64(),
        polls.load(Ordering::Relaxed)
    );
    println!(
        "  ended with a PNG: {}   ended with an error: {}   unfinished: {unfinished}",
        pngs.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
    println!("  PNG files on disk: {png_files}   corrupt: {corrupt}");
    println!("  mock OpenAI: {stats}");
    println!("  breaker states seen: {}", states.join(" -> "));
    println!(
        "  server RSS: start {} MB, peak {} MB, end {} MB ({} samples)",
        mb(first),
        mb(peak),
        mb(last),
        rss.len()
    );
    if violations.is_empty() {
        println!("RESULT: all invariants held");
    } else {
        println!("RESULT: {} violations", violations.len());
        for v in violations.iter().take(20) {
            println!("  - {v}");
        }
        std::process::exit(1);
    }
}
