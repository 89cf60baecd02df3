//! Snapshot tests (insta) of what clients and dashboards see: the error envelopes, the metric
//! families of a fresh server and the `/preview` page. The `.snap` files under
//! `tests/snapshots/` are the expected output; a change shows as a diff.
//!
//! After an intended change, review and accept with `cargo insta review` (or rerun with
//! `INSTA_UPDATE=always` and read the diff of the `.snap` files). With `CI` set, or with
//! `INSTA_UPDATE=no`, a mismatch fails and nothing is written.
//!
//! Volatile values (request ids, timestamps) are replaced before the comparison by
//! [`redact`], which fails when the value is not where the test says, so a moved field shows
//! up instead of slipping into the snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::Server;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Replaces the value at each JSON `pointer` with `"[<last segment>]"`; panics when absent.
fn redact(value: &mut Value, pointers: &[&str]) {
    for pointer in pointers {
        let shown = value.to_string();
        let slot = value
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("nothing at {pointer} to redact in {shown}"));
        *slot = Value::String(format!("[{}]", pointer.rsplit('/').next().unwrap()));
    }
}

/// Status, content type and body (JSON, with the volatile fields redacted) of one request.
fn envelope(resp: reqwest::blocking::Response, volatile: &[&str]) -> Value {
    let status = resp.status().as_u16();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body: Value = resp.json().unwrap();
    assert_eq!(
        body["request_id"],
        request_id.as_str(),
        "header and body agree"
    );
    redact(&mut body, volatile);
    json!({"status": status, "content_type": content_type, "body": body})
}

const VOLATILE: &[&str] = &["/request_id", "/error/request_id", "/error/timestamp"];

#[test]
fn error_envelopes() {
    let server = Server::start();
    let c = client();
    insta::assert_json_snapshot!(
        "not_found",
        envelope(
            c.get(server.url("/no/such/thing")).send().unwrap(),
            VOLATILE
        )
    );
    insta::assert_json_snapshot!(
        "dalle_invalid_address",
        envelope(
            c.get(server.url("/dalle/simple/0x1234")).send().unwrap(),
            VOLATILE
        )
    );
    insta::assert_json_snapshot!(
        "v1_invalid_input",
        envelope(
            c.post(server.url("/v1/images/generate"))
                .body("{not json")
                .send()
                .unwrap(),
            VOLATILE
        )
    );
}

/// The `# TYPE` lines of `/metrics` on a server that has served nothing yet, sorted: every
/// metric family and its kind, which dashboards and alerts depend on.
#[test]
fn metric_families_of_a_fresh_server() {
    let server = Server::start();
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let mut families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    families.sort_unstable();
    insta::assert_snapshot!("metric_families", families.join("\n"));
}

/// The `/preview` page with its times (file times, the footer's "Generated at") redacted.
fn preview(server: &Server) -> String {
    let resp = client().get(server.url("/preview")).send().unwrap();
    assert_eq!(resp.status(), 200);
    redact_times(&resp.text().unwrap())
}

/// Replaces every `YYYY-MM-DD HH:MM:SS` with `[time]`.
fn redact_times(text: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-dd dd:dd:dd";
    let bytes = text.as_bytes();
    let matches_at = |i: usize| {
        bytes.len() >= i + SHAPE.len()
            && SHAPE.iter().zip(&bytes[i..]).all(|(shape, b)| match shape {
                b'd' => b.is_ascii_digit(),
                other => other == b,
            })
    };
    let (mut out, mut i, mut copied) = (String::new(), 0, 0);
    while i < bytes.len() {
        if matches_at(i) {
            out.push_str(&text[copied..i]);
            out.push_str("[time]");
            i += SHAPE.len();
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[test]
fn time_redaction_finds_every_time() {
    assert_eq!(
        redact_times("a 2026-12-07 17:45:28 UTC, 1999-01-02 03:04:05"),
        "a [time] UTC, [time]"
    );
    assert_eq!(redact_times("2026-12-07 17:45"), "2026-12-07 17:45");
}

#[test]
fn gallery_of_an_empty_data_dir() {
    let server = Server::start();
    insta::assert_snapshot!("preview_empty", preview(&server));
}

/// One image made by mock mode (deterministic for a given address).
#[test]
fn gallery_with_one_mock_image() {
    let server = Server::start();
    let c = client();
    c.get(server.url(&format!("/dalle/simple/{A}?generate=1")))
        .send()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while c
        .get(server.url(&format!("/dalle/simple/{A}")))
        .send()
        .unwrap()
        .headers()["content-type"]
        != "image/png"
    {
        assert!(Instant::now() < deadline, "the mock image was not made");
        std::thread::sleep(Duration::from_millis(50));
    }
    insta::assert_snapshot!("preview_one_image", preview(&server));
}

/// A failed run, still retained, shows on the page with its error and how to retry. The run
/// fails the same way every time: a folder stands where its captioned image must go.
#[test]
fn gallery_with_a_failed_run() {
    let server = Server::start();
    let c = client();
    std::fs::create_dir_all(
        server
            .data_dir
            .join(format!("output/simple/annotated/{A}.png")),
    )
    .unwrap();
    c.get(server.url(&format!("/dalle/simple/{A}?generate=1")))
        .send()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body: Value = c
            .get(server.url(&format!("/dalle/simple/{A}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if body["data"]["done"] == true {
            assert_eq!(body["data"]["errorCode"], "storage_blocked", "{body:#}");
            break;
        }
        assert!(Instant::now() < deadline, "the run did not fail: {body:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = preview(&server);
    insta::assert_snapshot!("preview_failed_run", page);
}
