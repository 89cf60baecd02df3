//! One run per key, paid once: the lease a run holds while it works, the queue it waits in
//! without one, and the bound on that queue.
//!
//! The attack these reproduce: with a short lock TTL and a slow image, a second identical
//! request sent after the TTL must join the first run (one image request at the mock, both
//! answered from it), never take the key over and throw the first, paid image away. The mock
//! OpenAI counts every image request. Waiting past the TTL is a real wait — it is what the
//! attack does — but no test waits to show that something did not happen: the counts at the
//! mock and the answers say it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Options, Server, image_requests};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
const B: &str = "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6";
const C: &str = "0x0000000000000000000000000000000000000001";
const D: &str = "0x0000000000000000000000000000000000000002";

/// The lock TTL of these tests, and how long each image takes at the mock: well past it.
const TTL: &str = "1s";
const IMAGE_TAKES: Duration = Duration::from_millis(2500);
/// Past the TTL, before the image is back.
const AFTER_TTL: Duration = Duration::from_millis(1500);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A mock OpenAI whose images take `delay`.
async fn slow_images(delay: Duration) -> MockServer {
    let mock = MockServer::start().await;
    let png = common::png(32, 32, [30, 160, 90]);
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(common::b64_answer(&png).set_delay(delay))
        .mount(&mock)
        .await;
    mock
}

/// A live server on `mock` with the short TTL and `args`.
fn server(mock: &MockServer, args: &[&str]) -> Server {
    Server::start_with(Options {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![
            ("OPENAI_API_KEY".into(), "sk-lease-test".into()),
            ("OPENAI_BASE_URL".into(), mock.uri()),
            ("TB_DALLE_NO_ENHANCE".into(), "1".into()),
            ("TB_DALLE_RETRY_BASE".into(), "20ms".into()),
            ("TB_DALLE_LOCK_TTL".into(), TTL.into()),
        ],
        ..Options::default()
    })
}

/// Waits (bounded) until the mock has seen `n` image requests.
async fn until_image_requests(mock: &MockServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while image_requests(mock).await < n {
        assert!(Instant::now() < deadline, "fewer than {n} image requests");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `POST path` with `body`: (status, JSON, Retry-After).
async fn post(server: &Server, path: &str, body: Value) -> (u16, Value, Option<String>) {
    let resp = client()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().await.unwrap(), retry)
}

fn spawn_post(
    server: &std::sync::Arc<Server>,
    path: &str,
    body: Value,
) -> tokio::task::JoinHandle<(u16, Value, Option<String>)> {
    let (server, path) = (server.clone(), path.to_string());
    tokio::spawn(async move { post(&server, &path, body).await })
}

/// `GET /dalle/simple/<address>[?query]`: (status, JSON or `{"png":true}`, Retry-After).
async fn dalle(server: &Server, address: &str, query: &str) -> (u16, Value, Option<String>) {
    let resp = client()
        .get(server.url(&format!("/dalle/simple/{address}{query}")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    if resp.headers()["content-type"] == "image/png" {
        return (status, json!({"png": true}), retry);
    }
    (status, resp.json().await.unwrap(), retry)
}

/// Polls `/dalle` for `address` until its image is served; panics on a failed run.
async fn until_png(server: &Server, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body, _) = dalle(server, address, "").await;
        assert_eq!(status, 200, "{body:#}");
        if body["png"] == true {
            return;
        }
        assert_eq!(body["data"]["error"], "", "the run failed: {body:#}");
        assert!(Instant::now() < deadline, "no image: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_second_identical_generate_after_the_lock_ttl_joins_the_paid_run() {
    let mock = slow_images(IMAGE_TAKES).await;
    let server = std::sync::Arc::new(server(&mock, &[]));
    let body = json!({"input": "ttl takeover", "image": true, "annotate": true});
    let first = spawn_post(&server, "/v1/images/generate", body.clone());
    until_image_requests(&mock, 1).await;
    tokio::time::sleep(AFTER_TTL).await;
    let second = spawn_post(&server, "/v1/images/generate", body);
    let (s1, v1, _) = first.await.unwrap();
    let (s2, v2, _) = second.await.unwrap();
    assert_eq!(s1, 200, "the first, paid run is kept: {v1:#}");
    assert_eq!(s2, 200, "{v2:#}");
    assert_eq!(v1["data"]["annotatedPath"], v2["data"]["annotatedPath"]);
    assert_eq!(
        v1["data"]["metadata"]["imageId"], v2["data"]["metadata"]["imageId"],
        "both answered from the one run"
    );
    assert_eq!(image_requests(&mock).await, 1, "paid once");
    let annotated = v1["data"]["annotatedPath"].as_str().unwrap();
    assert!(server.data_dir.join(annotated).is_file(), "{annotated}");
}

#[tokio::test]
async fn a_second_dalle_generate_after_the_lock_ttl_joins_the_paid_run() {
    let mock = slow_images(IMAGE_TAKES).await;
    let server = server(&mock, &[]);
    let (_, first, _) = dalle(&server, A, "?generate=1").await;
    until_image_requests(&mock, 1).await;
    tokio::time::sleep(AFTER_TTL).await;
    let (status, again, _) = dalle(&server, A, "?generate=1").await;
    assert_eq!(status, 200);
    assert_eq!(
        again["data"]["requestId"], first["data"]["requestId"],
        "the same run answers: {again:#}"
    );
    until_png(&server, A).await;
    assert_eq!(image_requests(&mock).await, 1, "paid once");
}

/// One slot, two inputs, and each request sent twice, the second time after the TTL (while
/// the other input still waits for the slot): two image requests, every caller answered.
#[tokio::test]
async fn one_slot_two_inputs_two_image_requests() {
    let mock = slow_images(IMAGE_TAKES).await;
    let server = std::sync::Arc::new(server(&mock, &["--max-concurrent", "1"]));
    let a = json!({"input": "first of two", "image": true});
    let b = json!({"input": "second of two", "image": true});
    let first_a = spawn_post(&server, "/v1/images/generate", a.clone());
    until_image_requests(&mock, 1).await;
    let first_b = spawn_post(&server, "/v1/images/generate", b.clone());
    tokio::time::sleep(AFTER_TTL).await;
    let again_a = spawn_post(&server, "/v1/images/generate", a);
    let again_b = spawn_post(&server, "/v1/images/generate", b);
    let mut paths = Vec::new();
    for call in [first_a, again_a, first_b, again_b] {
        let (status, value, _) = call.await.unwrap();
        assert_eq!(status, 200, "{value:#}");
        paths.push(value["data"]["generatedPath"].as_str().unwrap().to_string());
    }
    assert_eq!(paths[0], paths[1]);
    assert_eq!(paths[2], paths[3]);
    assert_ne!(paths[0], paths[2]);
    assert_eq!(image_requests(&mock).await, 2, "one image per input");
}

/// A preview sent while a generate for its seed is in flight joins it: it is answered from the
/// run (with its image) and writes no record of its own alongside it.
#[tokio::test]
async fn a_preview_joins_the_generate_in_flight_for_its_seed() {
    let mock = slow_images(IMAGE_TAKES).await;
    let server = std::sync::Arc::new(server(&mock, &[]));
    let body = json!({"input": "preview joins", "image": true});
    let generate = spawn_post(&server, "/v1/images/generate", body.clone());
    until_image_requests(&mock, 1).await;
    let (status, preview, _) = post(
        &server,
        "/v1/images/preview",
        json!({"input": "preview joins"}),
    )
    .await;
    assert_eq!(status, 200, "{preview:#}");
    let (status, generated, _) = generate.await.unwrap();
    assert_eq!(status, 200, "{generated:#}");
    assert!(
        preview["data"]["generatedPath"]
            .as_str()
            .is_some_and(|p| p == generated["data"]["generatedPath"]),
        "answered from the run: {preview:#}"
    );
    assert_eq!(image_requests(&mock).await, 1);
}

/// Two regenerates of one record at once share one run: one more image request, not two.
#[tokio::test]
async fn concurrent_regenerates_share_one_run() {
    let mock = slow_images(Duration::from_millis(800)).await;
    let server = std::sync::Arc::new(server(&mock, &[]));
    let (status, made, _) = post(
        &server,
        "/v1/images/generate",
        json!({"input": "regenerated", "image": true}),
    )
    .await;
    assert_eq!(status, 200, "{made:#}");
    let id = made["data"]["metadata"]["imageId"].as_str().unwrap();
    let url = format!("/v1/images/{id}/regenerate");
    let calls = [
        spawn_post(&server, &url, json!({})),
        spawn_post(&server, &url, json!({})),
    ];
    for call in calls {
        let (status, value, _) = call.await.unwrap();
        assert_eq!(status, 200, "{value:#}");
    }
    assert_eq!(
        image_requests(&mock).await,
        2,
        "the first generate and one regenerate"
    );
}

/// With one slot and room for two waiting runs, the next run is refused with 503 and a
/// `Retry-After`, on the legacy route and on `/v1`; a run for a key already queued still
/// joins, and queue positions read 1 and 2.
#[tokio::test]
async fn a_full_queue_refuses_new_runs_with_503_and_retry_after() {
    let mock = slow_images(IMAGE_TAKES).await;
    let server = server(&mock, &["--max-concurrent", "1", "--max-queue", "2"]);
    dalle(&server, A, "?generate=1").await;
    until_image_requests(&mock, 1).await;
    let (_, b, _) = dalle(&server, B, "?generate=1").await;
    let (_, c, _) = dalle(&server, C, "?generate=1").await;
    assert_eq!(b["data"]["queuePosition"], 1, "{b:#}");
    assert_eq!(c["data"]["queuePosition"], 2, "{c:#}");

    let (status, refused, retry) = dalle(&server, D, "?generate=1").await;
    assert_eq!(status, 503, "{refused:#}");
    assert_eq!(
        refused["error"]["code"], "SERVICE_UNAVAILABLE",
        "{refused:#}"
    );
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() > 0));

    let (status, refused, retry) = post(
        &server,
        "/v1/images/generate",
        json!({"input": "one too many", "image": true}),
    )
    .await;
    assert_eq!(status, 503, "{refused:#}");
    assert_eq!(refused["error"]["code"], "queue_full", "{refused:#}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() > 0));

    // Joining a queued run needs no room.
    let (status, joined, _) = dalle(&server, C, "?generate=1").await;
    assert_eq!((status, &joined["data"]["queuePosition"]), (200, &json!(2)));

    // The queue drains in order: B runs, C moves up to the head.
    until_image_requests(&mock, 2).await;
    let (_, c, _) = dalle(&server, C, "").await;
    assert_eq!(c["data"]["queuePosition"], 1, "{c:#}");
    until_png(&server, C).await;
    assert_eq!(
        image_requests(&mock).await,
        3,
        "the refused runs cost nothing"
    );
}

/// A `/v1` run for an address seed renders the same files as `/dalle` does for the address, so
/// it is the same key. While it works past the lock TTL, `/dalle` requests for the address —
/// a generate (the old image is on disk), a remove, a generate again — must all answer the run
/// in flight: the lease of a working run never runs out, so no request can take the key over,
/// start a second paid run and throw the first run's image away.
#[tokio::test]
async fn dalle_requests_after_the_ttl_never_take_over_a_working_v1_run() {
    let mock = slow_images(IMAGE_TAKES).await;
    let server = std::sync::Arc::new(server(&mock, &[]));
    // An image on disk from an earlier run.
    dalle(&server, A, "?generate=1").await;
    until_png(&server, A).await;
    assert_eq!(image_requests(&mock).await, 1);

    let body = json!({"input": A, "seed": A, "series": "simple", "image": true, "annotate": true, "force": true});
    let regenerate = spawn_post(&server, "/v1/images/generate", body);
    until_image_requests(&mock, 2).await;
    tokio::time::sleep(AFTER_TTL).await;
    for query in ["?generate=1", "?remove", "?generate=1"] {
        let (status, answer, _) = dalle(&server, A, query).await;
        assert_eq!(status, 200, "{query}: {answer:#}");
        assert_eq!(
            answer["data"]["done"], false,
            "{query}: the run in flight answers: {answer:#}"
        );
    }
    let (status, done, _) = regenerate.await.unwrap();
    assert_eq!(status, 200, "the paid run is kept: {done:#}");
    until_png(&server, A).await;
    assert_eq!(
        image_requests(&mock).await,
        2,
        "no run started beside the one in flight"
    );
}
