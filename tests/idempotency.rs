//! `Idempotency-Key` on `/v1` generate, regenerate and export, end to end: the real server
//! (in process, or the spawned binary where `kill -9` matters) against a local mock OpenAI,
//! counting the image requests it receives after every step. Generate is sent with
//! `force: true`, which pays for a new image on every request without a key, so a replay
//! that paid again would show in the count.
//!
//! Time is never waited for: expiry moves the server's injected clock; a request is known to
//! be in flight when the mock has received its image request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use std::time::{Duration, Instant};

use common::{Options, Process, Running, Server, image_requests, mock_openai};
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

const ALICE: &str = "dsk_alice-token-for-tests";
const BOB: &str = "dsk_bob-token-for-tests";
const GENERATE: &str = "/v1/images/generate";
const DAY: Duration = Duration::from_secs(86_400);
/// A paid generate: a new image whatever exists.
const PAID: &str = r#"{"input":"hello idempotency","series":"simple","image":true,"force":true}"#;

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}

/// A live server (no enhancement, `dall-e-2`, no spending cap) pointed at `mock`.
fn live(mock: &MockServer, args: &[&str]) -> Options {
    let mut options = common::live(mock, args);
    options
        .args
        .extend(["--budget-daily-usd".into(), "none".into()]);
    options
}

#[derive(Debug)]
struct Answer {
    status: u16,
    replayed: bool,
    request_id: String,
    retry_after: Option<u64>,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// `POST route` with `body` (raw JSON text), an optional `Idempotency-Key` and bearer token.
async fn post(
    server: &impl Running,
    route: &str,
    key: Option<&str>,
    token: Option<&str>,
    body: &str,
) -> Answer {
    post_with(
        &client(Duration::from_secs(60)),
        server,
        route,
        key,
        token,
        body,
    )
    .await
    .unwrap()
}

async fn post_with(
    client: &reqwest::Client,
    server: &impl Running,
    route: &str,
    key: Option<&str>,
    token: Option<&str>,
    body: &str,
) -> reqwest::Result<Answer> {
    let mut req = client
        .post(server.url(route))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, replayed) = (resp.status().as_u16(), header("idempotent-replayed"));
    let (request_id, retry_after) = (
        header("x-request-id").unwrap(),
        header("retry-after").map(|v| v.parse().unwrap()),
    );
    assert!(
        replayed.as_deref().is_none_or(|v| v == "true"),
        "{replayed:?}"
    );
    let body: Value = resp.json().await?;
    assert_eq!(body["request_id"], request_id.as_str(), "{body:#}");
    Ok(Answer {
        status,
        replayed: replayed.is_some(),
        request_id,
        retry_after,
        body,
    })
}

/// Waits (bounded) until `mock` has received `n` image requests: then the run is in flight.
async fn until_image_requests(mock: &MockServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while image_requests(mock).await < n {
        assert!(
            Instant::now() < deadline,
            "no image request reached the mock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_request_is_answered_again_without_paying() {
    let mock = mock_openai(Duration::ZERO).await;
    let server = Server::start_with(live(&mock, &[]));

    let first = post(&server, GENERATE, Some("order-1"), None, PAID).await;
    assert_eq!(first.status, 200, "{:#}", first.body);
    assert!(!first.replayed);
    assert_eq!(image_requests(&mock).await, 1);

    // The same request, written differently: other key order and spacing, a field the
    // server ignores, the series in capitals (names are lower-cased).
    let same = r#"{ "force" : true, "image": true, "series": "SIMPLE",
                    "input": "hello idempotency", "colour": "ignored" }"#;
    let again = post(&server, GENERATE, Some("order-1"), None, same).await;
    assert_eq!(again.status, 200, "{:#}", again.body);
    assert!(again.replayed, "a replay says so");
    assert_eq!(again.body["data"], first.body["data"], "the same result");
    assert_ne!(
        again.request_id, first.request_id,
        "with the retry's own id"
    );
    assert_eq!(image_requests(&mock).await, 1, "a replay pays nothing");

    // A new key is a new request: `force` pays again (so the count above could fail).
    let other = post(&server, GENERATE, Some("order-2"), None, PAID).await;
    assert_eq!((other.status, other.replayed), (200, false));
    assert_eq!(image_requests(&mock).await, 2);

    // The key with another body, or on another route, is refused and runs nothing.
    let changed = PAID.replace("hello", "goodbye");
    let reused = post(&server, GENERATE, Some("order-1"), None, &changed).await;
    assert_eq!(reused.status, 422, "{:#}", reused.body);
    assert_eq!(reused.code(), "idempotency_key_reused");
    let seed = first.body["data"]["seed"].as_str().unwrap().to_string();
    let regen = format!("/v1/images/{seed}/regenerate");
    let elsewhere = post(&server, &regen, Some("order-1"), None, "").await;
    assert_eq!(elsewhere.code(), "idempotency_key_reused");
    assert_eq!(image_requests(&mock).await, 2);

    // Regenerate always pays for a new run: a retried one must not.
    let regenerated = post(&server, &regen, Some("regen-1"), None, "").await;
    assert_eq!((regenerated.status, regenerated.replayed), (200, false));
    assert_eq!(image_requests(&mock).await, 3);
    let retried = post(&server, &regen, Some("regen-1"), None, "").await;
    assert_eq!((retried.status, retried.replayed), (200, true));
    assert_eq!(retried.body["data"], regenerated.body["data"]);
    assert_eq!(
        image_requests(&mock).await,
        3,
        "the retried regenerate paid nothing"
    );
    let unkeyed = post(&server, &regen, None, None, "").await;
    assert_eq!((unkeyed.status, unkeyed.replayed), (200, false));
    assert_eq!(
        image_requests(&mock).await,
        4,
        "without a key it pays, as it should"
    );
}

#[tokio::test]
async fn a_retry_joins_the_request_in_flight_even_when_the_first_client_gave_up() {
    let mock = mock_openai(Duration::from_secs(2)).await;
    let server = Server::start_with(live(&mock, &[]));
    let made = post(&server, "/v1/images/generate", None, None, PAID).await;
    assert_eq!(made.status, 200, "{:#}", made.body);
    assert_eq!(image_requests(&mock).await, 1);
    let seed = made.body["data"]["seed"].as_str().unwrap().to_string();
    let regen = format!("/v1/images/{seed}/regenerate");

    // The first client gives up while the image is being made; its run goes on.
    let impatient = {
        let (url, regen) = (server.base.clone(), regen.clone());
        tokio::spawn(async move {
            let base = Base(url);
            let quick = client(Duration::from_millis(500));
            post_with(&quick, &base, &regen, Some("regen-join"), None, "").await
        })
    };
    until_image_requests(&mock, 2).await;
    // Two retries while it is in flight join it.
    let (a, b) = tokio::join!(
        post(&server, &regen, Some("regen-join"), None, ""),
        post(&server, &regen, Some("regen-join"), None, ""),
    );
    assert!(
        impatient.await.unwrap().is_err(),
        "the first client timed out"
    );
    for joined in [&a, &b] {
        assert_eq!((joined.status, joined.replayed), (200, true), "{joined:?}");
        assert_eq!(joined.body["data"]["metadata"]["status"]["cacheHit"], false);
    }
    assert_eq!(a.body["data"], b.body["data"]);
    assert_eq!(image_requests(&mock).await, 2, "one run for three requests");
    let later = post(&server, &regen, Some("regen-join"), None, "").await;
    assert_eq!((later.status, later.replayed), (200, true));
    assert_eq!(later.body["data"], a.body["data"]);
    assert_eq!(image_requests(&mock).await, 2);
}

/// `Running` for a base URL, for requests sent from a spawned task.
struct Base(String);

impl Running for Base {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.0, path)
    }
}

#[tokio::test]
async fn keys_are_scoped_per_api_key() {
    let mock = mock_openai(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let lines = [("alice", ALICE), ("bob", BOB)]
        .map(|(name, token)| dalleserver::auth::key_line(name, token))
        .join("\n");
    std::fs::write(&keys, lines).unwrap();
    let server = Server::start_with(live(&mock, &["--api-keys-file", keys.to_str().unwrap()]));

    let alice = post(&server, GENERATE, Some("shared"), Some(ALICE), PAID).await;
    assert_eq!((alice.status, alice.replayed), (200, false), "{alice:?}");
    assert_eq!(image_requests(&mock).await, 1);
    // Bob's `shared` is not Alice's: his request runs.
    let bob = post(&server, GENERATE, Some("shared"), Some(BOB), PAID).await;
    assert_eq!((bob.status, bob.replayed), (200, false), "{bob:?}");
    assert_eq!(image_requests(&mock).await, 2);
    // Each one's retry is answered from their own first request.
    for (token, first) in [(ALICE, &alice), (BOB, &bob)] {
        let again = post(&server, GENERATE, Some("shared"), Some(token), PAID).await;
        assert_eq!((again.status, again.replayed), (200, true));
        assert_eq!(again.body["data"], first.body["data"]);
    }
    // Bob reusing his key for another request is refused, whatever Alice did with hers.
    let changed = PAID.replace("hello", "goodbye");
    let reused = post(&server, GENERATE, Some("shared"), Some(BOB), &changed).await;
    assert_eq!(reused.code(), "idempotency_key_reused");
    // Without a key, a paid run is refused before the store is asked: nothing kept.
    let anonymous = post(&server, GENERATE, Some("shared"), None, PAID).await;
    assert_eq!((anonymous.status, anonymous.code()), (401, "unauthorized"));
    assert_eq!(image_requests(&mock).await, 2);
}

#[tokio::test]
async fn keys_expire_after_a_day_and_a_full_store_refuses_new_ones_until_then() {
    let mock = mock_openai(Duration::ZERO).await;
    let clock = common::ManualClock::now();
    let server = Server::start_with(Options {
        clock: Some(clock.clone()),
        ..live(&mock, &["--idempotency-max-keys", "1"])
    });
    let first = post(&server, GENERATE, Some("day-1"), None, PAID).await;
    assert_eq!((first.status, first.replayed), (200, false));
    assert_eq!(image_requests(&mock).await, 1);

    // The one slot is taken: a new key is refused until it expires, the old one replays.
    clock.advance(Duration::from_secs(3600));
    let full = post(&server, GENERATE, Some("day-2"), None, PAID).await;
    assert_eq!((full.status, full.code()), (503, "idempotency_store_full"));
    assert_eq!(full.retry_after, Some(DAY.as_secs() - 3600));
    assert_eq!(image_requests(&mock).await, 1);

    clock.advance(DAY - Duration::from_secs(3601));
    let late = post(&server, GENERATE, Some("day-1"), None, PAID).await;
    assert_eq!(
        (late.status, late.replayed),
        (200, true),
        "a second before the day ends"
    );
    assert_eq!(image_requests(&mock).await, 1);

    // A day after the first request the key is forgotten: the same request is new again.
    clock.advance(Duration::from_secs(1));
    let expired = post(&server, GENERATE, Some("day-1"), None, PAID).await;
    assert_eq!((expired.status, expired.replayed), (200, false));
    assert_eq!(image_requests(&mock).await, 2);
    // It took the one slot again, so `day-2` still waits (a day from now).
    let full = post(&server, GENERATE, Some("day-2"), None, PAID).await;
    assert_eq!(
        (full.code(), full.retry_after),
        ("idempotency_store_full", Some(DAY.as_secs()))
    );
    assert_eq!(image_requests(&mock).await, 2);
}

/// A server on `data` (kept across restarts).
fn on(data: &Path, mut options: Options) -> Options {
    options.args.push("--data-dir".into());
    options.args.push(data.display().to_string());
    options
}

#[tokio::test]
async fn answers_survive_a_restart_and_refusals_that_did_nothing_are_not_kept() {
    let mock = mock_openai(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Refused by a cap of 0 images: nothing done, so the key is not spent on it.
    let capped = Server::start_with(on(&data, live(&mock, &["--budget-daily-images", "0"])));
    let refused = post(&capped, GENERATE, Some("restart-1"), None, PAID).await;
    assert_eq!((refused.status, refused.code()), (402, "budget_exhausted"));
    assert_eq!(image_requests(&mock).await, 0);
    drop(capped);

    let server = Server::start_with(on(&data, live(&mock, &[])));
    let first = post(&server, GENERATE, Some("restart-1"), None, PAID).await;
    assert_eq!((first.status, first.replayed), (200, false), "{first:?}");
    assert_eq!(image_requests(&mock).await, 1);
    let seed = first.body["data"]["seed"].as_str().unwrap().to_string();
    let export = format!("/v1/images/{seed}/export");
    let exported = post(
        &server,
        &export,
        Some("export-1"),
        None,
        r#"{"includePrompt":true}"#,
    )
    .await;
    assert_eq!(
        (exported.status, exported.replayed),
        (200, false),
        "{exported:?}"
    );
    drop(server);

    let restarted = Server::start_with(on(&data, live(&mock, &[])));
    let again = post(&restarted, GENERATE, Some("restart-1"), None, PAID).await;
    assert_eq!((again.status, again.replayed), (200, true), "{again:?}");
    assert_eq!(again.body["data"], first.body["data"]);
    let changed = PAID.replace("hello", "goodbye");
    let reused = post(&restarted, GENERATE, Some("restart-1"), None, &changed).await;
    assert_eq!(reused.code(), "idempotency_key_reused");
    // Export's options are compared as understood: key case does not matter.
    let same = post(
        &restarted,
        &export,
        Some("export-1"),
        None,
        r#"{"IncludePrompt": true}"#,
    )
    .await;
    assert_eq!((same.status, same.replayed), (200, true), "{same:?}");
    assert_eq!(same.body["data"], exported.body["data"]);
    let other = post(
        &restarted,
        &export,
        Some("export-1"),
        None,
        r#"{"includeData":true}"#,
    )
    .await;
    assert_eq!(
        (other.status, other.code()),
        (422, "idempotency_key_reused")
    );
    assert_eq!(image_requests(&mock).await, 1, "nothing ran twice");
}

#[tokio::test]
async fn a_request_cut_off_by_kill_9_is_never_run_again_by_its_retry() {
    let mock = MockServer::start().await;
    let png = common::png(64, 48, [10, 200, 90]);
    // The first image takes longer than the test; any later one is immediate.
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(common::b64_answer(&png).set_delay(Duration::from_secs(120)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(common::b64_answer(&png))
        .with_priority(2)
        .mount(&mock)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let mut first = Process::start_with(on(&data, live(&mock, &[])));
    let cut = {
        let base = Base(first.base.clone());
        tokio::spawn(async move {
            post_with(
                &client(Duration::from_secs(60)),
                &base,
                GENERATE,
                Some("cut-1"),
                None,
                PAID,
            )
            .await
        })
    };
    until_image_requests(&mock, 1).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        cut.await.unwrap().is_err(),
        "the first request got no answer"
    );

    let restarted = Process::start_with(on(&data, live(&mock, &[])));
    let retry = post(&restarted, GENERATE, Some("cut-1"), None, PAID).await;
    assert_eq!(retry.status, 409, "{:#}", retry.body);
    assert_eq!(retry.code(), "idempotency_key_interrupted");
    assert_eq!(
        image_requests(&mock).await,
        1,
        "the retry did not pay again"
    );
    let changed = PAID.replace("hello", "goodbye");
    let reused = post(&restarted, GENERATE, Some("cut-1"), None, &changed).await;
    assert_eq!(reused.code(), "idempotency_key_reused");
    // A new key is the client's decision to pay again.
    let fresh = post(&restarted, GENERATE, Some("cut-2"), None, PAID).await;
    assert_eq!((fresh.status, fresh.replayed), (200, false), "{fresh:?}");
    assert_eq!(image_requests(&mock).await, 2);
}

#[tokio::test]
async fn bad_keys_are_refused_before_anything_runs() {
    let mock = mock_openai(Duration::ZERO).await;
    let server = Server::start_with(live(&mock, &[]));
    let generate = server.url(GENERATE);
    let long = "k".repeat(256);
    let bad: [&[u8]; 5] = [
        b"",
        long.as_bytes(),
        b"two words",
        b"tab\there",
        b"caf\xc3\xa9",
    ];
    for key in bad {
        let resp = client(Duration::from_secs(30))
            .post(&generate)
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(key).unwrap(),
            )
            .body(PAID)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{key:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_input", "{body:#}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{body:#}"
        );
    }
    let twice = client(Duration::from_secs(30))
        .post(&generate)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(PAID)
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    assert_eq!(image_requests(&mock).await, 0, "no bad key started a run");
    // The longest key accepted, every visible character in it, works.
    let visible: String = (b'!'..=b'~').map(char::from).collect();
    let longest = format!("{visible}{}", "x".repeat(255 - visible.len()));
    let ok = post(&server, "/v1/images/generate", Some(&longest), None, PAID).await;
    assert_eq!((ok.status, ok.replayed), (200, false), "{ok:?}");
    let again = post(&server, "/v1/images/generate", Some(&longest), None, PAID).await;
    assert!(again.replayed);
    assert_eq!(image_requests(&mock).await, 1);
}

#[tokio::test]
async fn the_openapi_document_describes_the_header_the_codes_and_the_replay() {
    let server = Server::start();
    let doc: Value = client(Duration::from_secs(30))
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for route in [
        "/v1/images/generate",
        "/v1/images/{id}/regenerate",
        "/v1/images/{id}/export",
    ] {
        let op = &doc["paths"][route]["post"];
        let header = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .unwrap_or_else(|| panic!("{route} documents no Idempotency-Key"));
        assert_eq!(header["in"], "header");
        assert_eq!(header["schema"]["maxLength"], 255);
        let responses = &op["responses"];
        assert!(
            responses["200"]["headers"]["Idempotent-Replayed"].is_object(),
            "{route}"
        );
        for (status, code) in [
            ("422", "idempotency_key_reused"),
            ("409", "idempotency_key_interrupted"),
            ("503", "idempotency_store_full"),
        ] {
            let text = responses[status]["description"].as_str().unwrap_or("");
            assert!(text.contains(code), "{route} {status}: {text}");
        }
    }
}

#[tokio::test]
async fn browsers_may_send_the_key_and_read_the_replay_header() {
    let server = Server::start_with(Options {
        args: vec!["--cors-origin".into(), "https://app.example".into()],
        ..Options::default()
    });
    let preflight = client(Duration::from_secs(30))
        .request(reqwest::Method::OPTIONS, server.url(GENERATE))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "idempotency-key")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("idempotency-key"), "{allowed}");
    let answer = client(Duration::from_secs(30))
        .get(server.url("/series"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let exposed = answer.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("idempotent-replayed"), "{exposed}");
}

#[tokio::test]
async fn a_key_that_cannot_be_recorded_runs_nothing() {
    let mock = mock_openai(Duration::ZERO).await;
    let server = Server::start_with(live(&mock, &[]));
    // Where the slots are written, a plain file: no claim can be recorded.
    let slots = server.data_dir.join("idempotency");
    std::fs::remove_dir_all(&slots).unwrap();
    std::fs::write(&slots, b"not a directory").unwrap();
    let refused = post(&server, GENERATE, Some("unrecorded"), None, PAID).await;
    assert_eq!(
        (refused.status, refused.code()),
        (500, "internal"),
        "{refused:?}"
    );
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(!message.contains(slots.to_str().unwrap()), "{message}");
    assert_eq!(image_requests(&mock).await, 0, "not recorded, not run");
    let unkeyed = post(&server, GENERATE, None, None, PAID).await;
    assert_eq!(unkeyed.status, 200, "{unkeyed:?}");
    assert_eq!(image_requests(&mock).await, 1);
}
