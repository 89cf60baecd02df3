//! End-to-end tests of the `/preview` page's run cards: queued runs in queue order, failed
//! runs with their error and a way to retry, addresses kept whole. (The page's bytes are
//! pinned by the snapshots in `tests/snapshots.rs`; the browser test checks the layout.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Options, Server};
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get_json(url: &str) -> Value {
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

async fn get_text(url: &str) -> String {
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.text().await.unwrap()
}

async fn page(server: &Server) -> String {
    let resp = client().get(server.url("/preview")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Polls `/dalle/simple/<address>` until `done(data)`, for at most 20 s.
async fn wait_until(server: &Server, address: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = get_json(&server.url(&format!("/dalle/simple/{address}"))).await;
        if done(&body["data"]) {
            return;
        }
        assert!(Instant::now() < deadline, "{address}: {what}: {body:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where `needle` first appears on the page.
fn at(page: &str, needle: &str) -> usize {
    page.find(needle)
        .unwrap_or_else(|| panic!("{needle} is not on the page:\n{page}"))
}

#[tokio::test]
async fn queued_cards_are_in_queue_order() {
    // One slot; the image answer is slow enough that the runs behind it stay queued while the
    // page is read (the mock is dropped first, which ends the waiting runs at once).
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(
            common::b64_answer(&common::png(64, 48, [9, 9, 9])).set_delay(Duration::from_secs(30)),
        )
        .mount(&mock)
        .await;
    let server = Server::start_with(Options {
        args: vec!["--max-concurrent".into(), "1".into()],
        env: vec![
            ("OPENAI_API_KEY".into(), "sk-test-key".into()),
            ("OPENAI_BASE_URL".into(), mock.uri()),
            ("TB_DALLE_NO_ENHANCE".into(), "1".into()),
        ],
        ..Options::default()
    });
    get_json(&server.url(&format!("/dalle/simple/{A}?generate=1"))).await;
    wait_until(&server, A, "holds the slot", |d| {
        d["currentPhase"] == "image_wait"
    })
    .await;
    // Queued in the reverse of the registry's (address) order, one at a time so that the
    // queue order is known.
    let queued = [
        "0xffffffffffffffffffffffffffffffffffffffff",
        "0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
        "0xdddddddddddddddddddddddddddddddddddddddd",
    ];
    for (i, address) in queued.iter().enumerate() {
        get_json(&server.url(&format!("/dalle/simple/{address}?generate=1"))).await;
        wait_until(&server, address, "queued", |d| d["queuePosition"] == i + 1).await;
    }
    let page = page(&server).await;
    let running = at(&page, &format!("data-url=\"/dalle/simple/{A}\""));
    let cards: Vec<usize> = queued
        .iter()
        .map(|a| at(&page, &format!("data-url=\"/dalle/simple/{a}\"")))
        .collect();
    assert!(
        running < cards[0] && cards[0] < cards[1] && cards[1] < cards[2],
        "the running card, then the queue in its order: {running} {cards:?}\n{page}"
    );
    assert!(page.contains("queued · #1"), "{page}");
    drop(mock);
}

#[tokio::test]
async fn a_failed_run_shows_its_error_and_a_retry_that_works() {
    let server = Server::start();
    let taken = server
        .data_dir
        .join(format!("output/simple/annotated/{A}.png"));
    std::fs::create_dir_all(&taken).unwrap();
    get_json(&server.url(&format!("/dalle/simple/{A}?generate=1"))).await;
    wait_until(&server, A, "failed", |d| d["done"] == true).await;

    let page = page(&server).await;
    at(&page, "<h2>Failed</h2>");
    at(
        &page,
        "storage_blocked: cannot write the annotated artifact",
    );
    let retry = format!("data-retry=\"/dalle/simple/{A}\"");
    at(&page, &retry);
    at(&page, &format!("/dalle/simple/{A}?remove"));
    at(&page, &format!("/dalle/simple/{A}?generate=1"));

    // What the button does: ?remove, then ?generate=1; the image is then made.
    get_json(&server.url(&format!("/dalle/simple/{A}?remove"))).await;
    get_json(&server.url(&format!("/dalle/simple/{A}?generate=1"))).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !taken.is_file() {
        assert!(Instant::now() < deadline, "the retry made no image");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = self::page(&server).await;
    assert!(!page.contains("<h2>Failed</h2>"), "{page}");
}

#[tokio::test]
async fn addresses_are_never_broken_mid_string() {
    // The rules live in the page's stylesheet, served beside it.
    let server = Server::start();
    let page = page(&server).await + &get_text(&server.url("/preview.css")).await;
    assert!(!page.contains("break-all"), "no rule breaks text anywhere");
    at(
        &page,
        ".addr { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }",
    );
}
