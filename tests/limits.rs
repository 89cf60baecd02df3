//! Rate limits on run starts and per-key caps, end to end: the real server against a local
//! mock OpenAI, its clock a [`ManualClock`] the test moves (so a refill or a new day is a
//! step, never a wait), every refusal checked by its answer, its headers and the image
//! requests the mock received.
//!
//! Every live server here uses `dall-e-2`, whose one size costs $0.02.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ManualClock, Options, Running, Server, image_requests, mock_openai};
use serde_json::{Value, json};
use wiremock::MockServer;

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
const B: &str = "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6";
const C: &str = "0x0000000000000000000000000000000000000003";
const D: &str = "0x0000000000000000000000000000000000000004";
const CI: &str = "dsk_ci-token-for-tests";
const FAST: &str = "dsk_fast-token-for-tests";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A live server (no enhancement, `dall-e-2`, no budget cap) pointed at `mock`, reading
/// `clock`, with these flags.
fn live(mock: &MockServer, clock: &Arc<ManualClock>, args: &[&str]) -> Options {
    let mut options = common::live(mock, args);
    options
        .args
        .extend(["--budget-daily-usd".into(), "none".into()]);
    Options {
        clock: Some(clock.clone()),
        ..options
    }
}

/// An answer: status, headers, JSON body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A request with an optional bearer token and extra headers.
async fn send(
    server: &impl Running,
    verb: &str,
    route: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let m = reqwest::Method::from_bytes(verb.as_bytes()).unwrap();
    let mut req = client().request(m, server.url(route));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = if headers["content-type"] == "image/png" {
        Value::String("png".into())
    } else {
        resp.json().await.unwrap_or(Value::Null)
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// `?generate=1` for `address`, from a client that says it is `from` (through a proxy).
async fn generate(server: &impl Running, address: &str, from: Option<&str>) -> Answer {
    let xff: Vec<(&str, &str)> = from.map(|f| ("x-forwarded-for", f)).into_iter().collect();
    let route = format!("/dalle/simple/{address}?generate=1");
    send(server, "GET", &route, None, &xff, None).await
}

async fn generate_as(server: &impl Running, address: &str, token: &str) -> Answer {
    let route = format!("/dalle/simple/{address}?generate=1");
    send(server, "GET", &route, Some(token), &[], None).await
}

/// Polls `address` until its PNG is served (bounded).
async fn wait_png(server: &impl Running, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let route = format!("/dalle/simple/{address}");
    loop {
        let a = send(server, "GET", &route, None, &[], None).await;
        if a.body == "png" {
            return;
        }
        assert!(
            a.body["data"]["error"].as_str().unwrap_or("").is_empty(),
            "{:#}",
            a.body
        );
        assert!(Instant::now() < deadline, "no image for {address}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One sample of the Prometheus text.
async fn sample(server: &impl Running, series: &str) -> f64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Asserts a 429 with the rate-limit fields of a bucket of `limit` per `window` seconds.
fn assert_limited(a: &Answer, code: &str, limit: u32, window: u64, retry: u64, reset: u64) {
    assert_eq!(a.status, 429, "{:#}", a.body);
    assert_eq!(a.code(), code, "{:#}", a.body);
    assert_eq!(a.header("retry-after"), Some(retry.to_string().as_str()));
    assert_eq!(
        a.header("ratelimit-limit"),
        Some(limit.to_string().as_str())
    );
    assert_eq!(a.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        a.header("ratelimit-reset"),
        Some(reset.to_string().as_str())
    );
    let policy = format!("{limit};w={window}");
    assert_eq!(a.header("ratelimit-policy"), Some(policy.as_str()));
}

/// The last start the bucket allows, the first it refuses (with its headers, on `/dalle` and
/// `/v1` alike, starting nothing), hits and polls that are never counted, then the refill.
#[tokio::test]
async fn the_last_allowed_start_then_the_first_refused_then_the_refill() {
    let mock = mock_openai(Duration::ZERO).await;
    let clock = ManualClock::now();
    let server = Server::start_with(live(&mock, &clock, &["--anon-rate-limit", "2/min"]));
    for address in [A, B] {
        let a = generate(&server, address, None).await;
        assert_eq!(a.status, 200, "{:#}", a.body);
        assert_eq!(a.body["data"]["cacheHit"], false);
        wait_png(&server, address).await;
    }
    assert_eq!(
        image_requests(&mock).await,
        2,
        "the last start the bucket allows"
    );

    // Empty: one start comes back every 30 s, the whole bucket in 60.
    let refused = generate(&server, C, None).await;
    assert_limited(&refused, "RATE_LIMITED", 2, 60, 30, 60);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("2/min"), "{message}");
    let v1 = send(
        &server,
        "POST",
        "/v1/images/generate",
        None,
        &[],
        Some(json!({"input": "Wimp", "series": "simple", "image": true})),
    )
    .await;
    assert_limited(&v1, "rate_limited", 2, 60, 30, 60);
    // Nothing was started: no run to poll, no image request.
    let poll = send(
        &server,
        "GET",
        &format!("/dalle/simple/{C}"),
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(poll.body["data"], json!({}), "{:#}", poll.body);
    assert_eq!(image_requests(&mock).await, 2);
    assert_eq!(
        sample(
            &server,
            "dalleserver_rate_limited_total{scope=\"anonymous\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        sample(&server, "dalleserver_rate_limited_total{scope=\"key\"}").await,
        0.0
    );

    // Cache hits, image reads and polls are free, however many.
    for _ in 0..5 {
        let hit = generate(&server, A, None).await;
        assert_eq!(hit.status, 200);
        assert_eq!(hit.body["data"]["cacheHit"], true, "{:#}", hit.body);
        let png = send(
            &server,
            "GET",
            &format!("/dalle/simple/{A}"),
            None,
            &[],
            None,
        )
        .await;
        assert_eq!(png.body, "png");
    }

    clock.advance(Duration::from_secs(29));
    let still = generate(&server, C, None).await;
    assert_limited(&still, "RATE_LIMITED", 2, 60, 1, 31);
    clock.advance(Duration::from_secs(1));
    let refilled = generate(&server, C, None).await;
    assert_eq!(refilled.status, 200, "{:#}", refilled.body);
    wait_png(&server, C).await;
    assert_eq!(
        generate(&server, D, None).await.status,
        429,
        "one start, not two"
    );
    assert_eq!(image_requests(&mock).await, 3);
}

/// Joining a run in flight takes no token: with a bucket of one, the run's own start is the
/// only one counted however often it is asked for while it works.
#[tokio::test]
async fn joining_a_run_in_flight_is_never_limited() {
    let mock = mock_openai(Duration::from_millis(500)).await;
    let clock = ManualClock::now();
    let server = Server::start_with(live(&mock, &clock, &["--anon-rate-limit", "1/hour"]));
    assert_eq!(generate(&server, A, None).await.status, 200);
    for _ in 0..5 {
        let joined = generate(&server, A, None).await;
        assert_eq!(joined.status, 200, "{:#}", joined.body);
    }
    wait_png(&server, A).await;
    assert_eq!(image_requests(&mock).await, 1);
    assert_eq!(generate(&server, B, None).await.status, 429);
}

/// Behind a trusted proxy each client address has its own bucket; from any other peer the
/// forwarding headers are ignored, so changing them buys nothing.
#[tokio::test]
async fn a_trusted_proxy_names_the_client_and_an_untrusted_peer_cannot() {
    let mock = mock_openai(Duration::ZERO).await;
    let clock = ManualClock::now();
    let args = [
        "--anon-rate-limit",
        "1/hour",
        "--trusted-proxy",
        "127.0.0.1",
    ];
    let proxied = Server::start_with(live(&mock, &clock, &args));
    assert_eq!(generate(&proxied, A, Some("203.0.113.1")).await.status, 200);
    // The client's own X-Forwarded-For is left of the hop the proxy appended.
    let spoofed = generate(&proxied, B, Some("198.51.100.9, 203.0.113.1")).await;
    assert_limited(&spoofed, "RATE_LIMITED", 1, 3600, 3600, 3600);
    assert_eq!(generate(&proxied, B, Some("203.0.113.2")).await.status, 200);
    // IPv6 clients are counted by their /64.
    assert_eq!(
        generate(&proxied, C, Some("2001:db8:1:2::1")).await.status,
        200
    );
    let neighbour = generate(&proxied, D, Some("2001:db8:1:2::ffff")).await;
    assert_eq!(neighbour.status, 429);
    for address in [A, B, C] {
        wait_png(&proxied, address).await;
    }
    assert_eq!(image_requests(&mock).await, 3);

    let mock = mock_openai(Duration::ZERO).await;
    let direct = Server::start_with(live(&mock, &clock, &["--anon-rate-limit", "1/hour"]));
    assert_eq!(generate(&direct, A, Some("203.0.113.1")).await.status, 200);
    let ignored = generate(&direct, B, Some("203.0.113.2")).await;
    assert_limited(&ignored, "RATE_LIMITED", 1, 3600, 3600, 3600);
    wait_png(&direct, A).await;
    assert_eq!(image_requests(&mock).await, 1, "the 429 started nothing");
}

fn write_keys(path: &Path, lines: &[(&str, &str, &str)]) {
    let mut text = String::new();
    for (name, token, fields) in lines {
        text.push_str(&dalleserver::auth::key_line(name, token));
        text.push(' ');
        text.push_str(fields);
        text.push('\n');
    }
    // Written whole, then renamed: the server never reads half a file.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// Each key has its own bucket at `--rate-limit` unless its `rate=` says otherwise, and a
/// reload of the keys file changes it for the next request.
#[tokio::test]
async fn a_keys_rate_overrides_the_default_and_a_reload_changes_it() {
    let mock = mock_openai(Duration::ZERO).await;
    let clock = ManualClock::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    write_keys(&keys, &[("ci", CI, ""), ("fast", FAST, "rate=3/hour")]);
    let file = keys.display().to_string();
    let args = ["--api-keys-file", &file, "--rate-limit", "1/hour"];
    let server = Server::start_with(live(&mock, &clock, &args));

    assert_eq!(generate_as(&server, A, CI).await.status, 200);
    let refused = generate_as(&server, B, CI).await;
    assert_limited(&refused, "RATE_LIMITED", 1, 3600, 3600, 3600);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
    for address in [B, C, D] {
        let a = generate_as(&server, address, FAST).await;
        assert_eq!(a.status, 200, "fast's rate=3/hour: {:#}", a.body);
    }
    let v1 = send(
        &server,
        "POST",
        "/v1/images/generate",
        Some(FAST),
        &[],
        Some(json!({"input": "Wimp", "series": "simple", "image": true})),
    )
    .await;
    assert_limited(&v1, "rate_limited", 3, 3600, 1200, 3600);
    assert_eq!(
        sample(&server, "dalleserver_rate_limited_total{scope=\"key\"}").await,
        2.0
    );

    // A new rate for ci: a full bucket at that rate, once the server sees the file again.
    write_keys(
        &keys,
        &[("ci", CI, "rate=2/hour"), ("fast", FAST, "rate=3/hour")],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (address, next_address) = (
        "0x0000000000000000000000000000000000000005",
        "0x0000000000000000000000000000000000000006",
    );
    loop {
        let a = generate_as(&server, address, CI).await;
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 429);
        assert!(Instant::now() < deadline, "the reload never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let next = generate_as(&server, next_address, CI).await;
    assert_eq!(next.status, 200, "two starts at the new rate");
    let after = generate_as(&server, "0x0000000000000000000000000000000000000007", CI).await;
    assert_limited(&after, "RATE_LIMITED", 2, 3600, 1800, 3600);
    for address in [A, B, C, D, address, next_address] {
        wait_png(&server, address).await;
    }
    assert_eq!(image_requests(&mock).await, 6);
}

/// A key's own `daily_images=` and `daily_usd=`: the last image each allows, the first
/// refusal (before any OpenAI call), other keys unaffected, `/v1/usage` showing each key its
/// own usage only, and the reset when the UTC day changes.
#[tokio::test]
async fn per_key_caps_refuse_that_key_alone_and_usage_shows_each_key_its_own() {
    let mock = mock_openai(Duration::ZERO).await;
    let clock = ManualClock::now();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    write_keys(
        &keys,
        &[
            ("ci", CI, "daily_images=2"),
            ("fast", FAST, "daily_usd=0.02"),
        ],
    );
    let file = keys.display().to_string();
    let server = Server::start_with(live(&mock, &clock, &["--api-keys-file", &file]));

    for address in [A, B] {
        assert_eq!(generate_as(&server, address, CI).await.status, 200);
        wait_png(&server, address).await;
    }
    let refused = generate_as(&server, C, CI).await;
    assert_eq!(refused.status, 402, "{:#}", refused.body);
    assert_eq!(refused.code(), "BUDGET_EXHAUSTED");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("key ci's daily budget of 2 images"),
        "{message}"
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    assert_eq!(
        image_requests(&mock).await,
        2,
        "the third was refused before OpenAI"
    );

    // Another key has its own caps: one $0.02 image, then its own refusal.
    assert_eq!(generate_as(&server, C, FAST).await.status, 200);
    wait_png(&server, C).await;
    let request = json!({"input": "Wimp", "series": "simple", "image": true});
    let v1 = send(
        &server,
        "POST",
        "/v1/images/generate",
        Some(FAST),
        &[],
        Some(request),
    )
    .await;
    assert_eq!(v1.status, 402, "{:#}", v1.body);
    assert_eq!(v1.code(), "budget_exhausted");
    assert_eq!(image_requests(&mock).await, 3);

    let usage = |token: Option<&'static str>| {
        let server = &server;
        async move {
            let a = send(server, "GET", "/v1/usage", token, &[], None).await;
            assert_eq!(a.status, 200, "{:#}", a.body);
            a.body["data"].clone()
        }
    };
    let ci = usage(Some(CI)).await;
    assert_eq!(ci["keys"].as_object().unwrap().len(), 1, "{ci:#}");
    assert_eq!(ci["keys"]["ci"]["today"], json!({"usd": 0.04, "images": 2}));
    assert_eq!(ci["key"]["name"], "ci");
    assert_eq!(
        ci["key"]["caps"],
        json!({"dailyUsd": null, "dailyImages": 2})
    );
    assert_eq!(
        ci["key"]["remaining"],
        json!({"dailyUsd": null, "dailyImages": 0})
    );
    assert_eq!(ci["today"]["images"], 3, "the server-wide figures");
    let fast = usage(Some(FAST)).await;
    assert_eq!(
        fast["keys"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["fast"]
    );
    assert_eq!(fast["key"]["remaining"]["dailyUsd"], 0.0);
    let nobody = usage(None).await;
    assert_eq!(nobody["keys"], json!({}), "no key, no one's usage");
    assert_eq!(nobody["key"], Value::Null);

    // The estimate checks the caller's own caps too.
    let estimate = send(
        &server,
        "POST",
        "/v1/images/estimate",
        Some(CI),
        &[],
        Some(json!({"input": "Wimp", "image": true})),
    )
    .await;
    assert_eq!(
        estimate.body["data"]["allowed"], false,
        "{:#}",
        estimate.body
    );
    assert_eq!(estimate.body["data"]["refusal"]["cap"], "key_daily_images");

    // The next UTC day: both keys start again.
    clock.advance(Duration::from_secs(86_400));
    assert_eq!(generate_as(&server, D, CI).await.status, 200);
    wait_png(&server, D).await;
    assert_eq!(image_requests(&mock).await, 4);
    let ci = usage(Some(CI)).await;
    assert_eq!(ci["keys"]["ci"]["today"]["images"], 1);
}
