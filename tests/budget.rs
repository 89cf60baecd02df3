//! Spending caps end to end: the real server (in process, or the spawned binary where a
//! restart matters) against a local mock OpenAI, counting the image requests it receives.
//! What was refused is shown by the answer and the mock's count, never by waiting.
//!
//! Every live server here uses `dall-e-2`, whose one size costs $0.02 in the built-in table,
//! so a cap of $0.04 is exactly two images. The reset at the start of a new period is
//! covered with an injectable clock in the budget's unit tests; here, by a saved budget of
//! an earlier day.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Options, Process, Running, Server, image_requests, live, mock_openai};
use serde_json::{Value, json};
use wiremock::MockServer;

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
const B: &str = "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6";
const C: &str = "0x0000000000000000000000000000000000000003";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn openai_requests(mock: &MockServer) -> usize {
    mock.received_requests().await.unwrap_or_default().len()
}

/// `?generate=1` for `address`: the status, the `Retry-After` header and the body.
async fn generate(server: &impl Running, address: &str) -> (u16, Option<u64>, Value) {
    let resp = client()
        .get(server.url(&format!("/dalle/simple/{address}?generate=1")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, resp.json().await.unwrap())
}

/// Polls `address` until its PNG is served (bounded).
async fn wait_png(server: &impl Running, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = client()
            .get(server.url(&format!("/dalle/simple/{address}")))
            .send()
            .await
            .unwrap();
        if resp.headers()["content-type"] == "image/png" {
            return;
        }
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["data"]["error"].as_str().unwrap_or("").is_empty(),
            "{body:#}"
        );
        assert!(
            Instant::now() < deadline,
            "no image for {address}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn get_json(server: &impl Running, route: &str) -> Value {
    let resp = client().get(server.url(route)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{route}");
    resp.json().await.unwrap()
}

async fn post_json(server: &impl Running, route: &str, body: Value) -> (u16, Option<u64>, Value) {
    let resp = client()
        .post(server.url(route))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, resp.json().await.unwrap())
}

/// One sample of the Prometheus text, e.g. `dalleserver_budget_refusals_total`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} not in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

fn assert_next_day(retry: Option<u64>) {
    let retry = retry.expect("Retry-After");
    assert!((1..=86_400).contains(&retry), "Retry-After {retry}");
}

#[tokio::test]
async fn the_last_image_under_the_daily_cap_is_made_and_the_next_run_is_refused_before_openai() {
    let mock = mock_openai(Duration::ZERO).await;
    let server = Server::start_with(live(&mock, &["--budget-daily-usd", "0.04"]));
    for address in [A, B] {
        let (status, _, body) = generate(&server, address).await;
        assert_eq!(status, 200, "{body:#}");
        wait_png(&server, address).await;
    }
    assert_eq!(
        image_requests(&mock).await,
        2,
        "the last image the cap allows"
    );

    let (status, retry, body) = generate(&server, C).await;
    assert_eq!(status, 402, "{body:#}");
    assert_eq!(body["error"]["code"], "BUDGET_EXHAUSTED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily budget of $0.04"),
        "{body:#}"
    );
    assert_next_day(retry);
    // The same refusal on /v1, with its own code.
    let request = json!({"input": "Wimp", "series": "simple", "image": true});
    let (status, retry, body) = post_json(&server, "/v1/images/generate", request).await;
    assert_eq!(status, 402, "{body:#}");
    assert_eq!(body["error"]["code"], "budget_exhausted");
    assert_next_day(retry);
    assert_eq!(
        image_requests(&mock).await,
        2,
        "no image request after the cap"
    );
    assert_eq!(
        openai_requests(&mock).await,
        2,
        "no OpenAI call of any kind"
    );

    // A made image is still served, and a cache hit needs no budget.
    let (status, _, hit) = generate(&server, A).await;
    assert_eq!(status, 200);
    assert_eq!(hit["data"]["cacheHit"], true, "{hit:#}");

    let usage = get_json(&server, "/v1/usage").await["data"].clone();
    assert_eq!(
        usage["today"],
        json!({"usd": 0.04, "images": 2}),
        "{usage:#}"
    );
    assert_eq!(usage["thisMonth"], json!({"usd": 0.04, "images": 2}));
    assert_eq!(usage["keys"]["anonymous"]["today"]["images"], 2);
    assert_eq!(usage["caps"]["dailyUsd"], 0.04);
    assert_eq!(usage["caps"]["monthlyUsd"], Value::Null);
    assert_eq!(usage["remaining"]["dailyUsd"], 0.0);
    assert_eq!(usage["reserved"]["images"], 0);
    assert_eq!(usage["monthByModel"]["dall-e-2"], 0.04);
    for reset in ["dayResetsAt", "monthResetsAt"] {
        let at = usage[reset].as_str().unwrap();
        assert!(at.ends_with("T00:00:00Z"), "{reset} {at}");
    }

    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spent = sample(&metrics, "dalleserver_spend_usd_total{model=\"dall-e-2\"}");
    assert!((spent - 0.04).abs() < 1e-9, "{spent}");
    assert_eq!(sample(&metrics, "dalleserver_budget_refusals_total"), 2.0);
    assert_eq!(
        sample(&metrics, "dalleserver_budget_remaining_usd{period=\"day\"}"),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "dalleserver_budget_remaining_usd{period=\"month\"}"
        ),
        f64::INFINITY
    );

    let health = get_json(&server, "/health").await;
    let budget = &health["data"]["components"]["budget"];
    assert_eq!(budget["status"], "degraded", "{budget:#}");
    assert_ne!(health["data"]["status"], "unhealthy");
}

#[tokio::test]
async fn runs_admitted_together_cannot_overshoot_the_image_cap() {
    // Slow images: both admitted runs are still in flight when the third asks.
    let mock = mock_openai(Duration::from_millis(400)).await;
    let server = Server::start_with(live(
        &mock,
        &["--budget-daily-usd", "none", "--budget-daily-images", "2"],
    ));
    assert_eq!(generate(&server, A).await.0, 200);
    assert_eq!(generate(&server, B).await.0, 200);
    let (status, retry, body) = generate(&server, C).await;
    assert_eq!(status, 402, "{body:#}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 images"),
        "{body:#}"
    );
    assert_next_day(retry);
    let usage = get_json(&server, "/v1/usage").await["data"].clone();
    assert_eq!(usage["caps"]["dailyUsd"], Value::Null, "none lifts the cap");
    // The runs in flight are not cut off: both finish.
    wait_png(&server, A).await;
    wait_png(&server, B).await;
    assert_eq!(image_requests(&mock).await, 2);
    let usage = get_json(&server, "/v1/usage").await["data"].clone();
    assert_eq!(usage["today"]["images"], 2);
    assert_eq!(usage["remaining"]["dailyImages"], 0);
}

#[tokio::test]
async fn mock_mode_spends_nothing_even_with_a_zero_cap() {
    let server = Server::start_with(Options {
        args: vec!["--budget-daily-usd".into(), "0".into()],
        ..Options::default()
    });
    for address in [A, B] {
        assert_eq!(generate(&server, address).await.0, 200);
        wait_png(&server, address).await;
    }
    let usage = get_json(&server, "/v1/usage").await["data"].clone();
    assert_eq!(usage["mock"], true);
    assert_eq!(
        usage["today"],
        json!({"usd": 0.0, "images": 0}),
        "{usage:#}"
    );
    assert_eq!(usage["keys"], json!({}));
    let (status, _, estimate) = post_json(
        &server,
        "/v1/images/estimate",
        json!({"input": "Wimp", "image": true}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(estimate["data"]["usd"], 0.0);
    assert_eq!(estimate["data"]["allowed"], true);
    assert!(!server.data_dir.join("budget.json").exists());
}

#[tokio::test]
async fn an_estimate_prices_the_request_and_runs_nothing() {
    let mock = mock_openai(Duration::ZERO).await;
    let server = Server::start_with(live(&mock, &["--budget-daily-usd", "0.03"]));
    let with_image = json!({"input": "Wimp", "series": "simple", "image": true});
    let (status, _, estimate) = post_json(&server, "/v1/images/estimate", with_image.clone()).await;
    assert_eq!(status, 200, "{estimate:#}");
    let data = &estimate["data"];
    assert_eq!(data["usd"], 0.02);
    assert_eq!(data["images"], 1);
    assert_eq!(data["model"], "dall-e-2");
    assert_eq!(data["allowed"], true);
    let (_, _, prompts_only) =
        post_json(&server, "/v1/images/estimate", json!({"input": "Wimp"})).await;
    assert_eq!(prompts_only["data"]["usd"], 0.0);
    // The generate body's checks apply.
    let (status, _, bad) = post_json(&server, "/v1/images/estimate", json!({"input": " "})).await;
    assert_eq!(status, 400, "{bad:#}");
    assert_eq!(openai_requests(&mock).await, 0, "an estimate calls nothing");

    // One image spent: the next would pass $0.03, and the estimate says so.
    assert_eq!(generate(&server, A).await.0, 200);
    wait_png(&server, A).await;
    let (_, _, estimate) = post_json(&server, "/v1/images/estimate", with_image).await;
    let data = &estimate["data"];
    assert_eq!(data["allowed"], false, "{data:#}");
    assert_eq!(data["refusal"]["code"], "budget_exhausted");
    assert_eq!(data["refusal"]["cap"], "daily_usd");
    assert!(data["refusal"]["retryAfterSeconds"].as_u64().unwrap() >= 1);
    assert_eq!(image_requests(&mock).await, 1);
    let usage = get_json(&server, "/v1/usage").await["data"].clone();
    assert_eq!(usage["reserved"], json!({"usd": 0.0, "images": 0}));
}

#[tokio::test]
async fn spend_survives_a_restart() {
    let mock = mock_openai(Duration::ZERO).await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data").display().to_string();
    let args = ["--data-dir", dir.as_str(), "--budget-daily-usd", "0.02"];
    let mut first = Process::start_with(live(&mock, &args));
    assert_eq!(generate(&first, A).await.0, 200);
    wait_png(&first, A).await;
    first.terminate(Duration::from_secs(20)).expect("exits");

    let second = Process::start_with(live(&mock, &args));
    let usage = get_json(&second, "/v1/usage").await["data"].clone();
    assert_eq!(
        usage["today"],
        json!({"usd": 0.02, "images": 1}),
        "{usage:#}"
    );
    let (status, retry, body) = generate(&second, B).await;
    assert_eq!(status, 402, "{body:#}");
    assert_next_day(retry);
    assert_eq!(image_requests(&mock).await, 1);
}

#[tokio::test]
async fn spend_of_an_earlier_day_does_not_count_today() {
    let mock = mock_openai(Duration::ZERO).await;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let spent = json!({"usd_micros": 5_000_000, "images": 250});
    let saved = json!({
        "version": 1,
        "day": "2001-02-03",
        "month": "2001-02",
        "keys": {"anonymous": {"day": spent, "month": spent}},
    });
    std::fs::write(dir.join("budget.json"), saved.to_string()).unwrap();
    let dir = dir.display().to_string();
    let server = Server::start_with(live(
        &mock,
        &[
            "--data-dir",
            dir.as_str(),
            "--budget-daily-usd",
            "0.02",
            "--budget-monthly-usd",
            "1",
        ],
    ));
    let usage = get_json(&server, "/v1/usage").await["data"].clone();
    assert_eq!(usage["today"]["images"], 0, "{usage:#}");
    assert_eq!(usage["thisMonth"]["images"], 0);
    assert_eq!(generate(&server, A).await.0, 200);
    wait_png(&server, A).await;
    assert_eq!(image_requests(&mock).await, 1);
}

#[test]
fn a_bad_prices_file_or_cap_stops_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let prices = tmp.path().join("prices.json");
    std::fs::write(&prices, "{not json").unwrap();
    let run = |args: &[&str]| {
        common::command(tmp.path(), tmp.path())
            .args(["--bind", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--prices", prices.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prices.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--budget-daily-usd", "lots"]);
    assert_eq!(out.status.code(), Some(2));
}
