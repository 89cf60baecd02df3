//! SIGTERM and `kill -9` with runs in flight and queued: a graceful stop finishes every run
//! that sent its image request, puts the queued ones in the durable queue under
//! `<data>/queue`, and the next start resumes them; every image request is counted at the
//! mock OpenAI, and none is ever made twice.
//!
//! Binary ([`Process`]): signals must hit a real process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Process, b64_answer};
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

fn addresses(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("0x{:040x}", 0x5eed_u64 * (i as u64 + 1)))
        .collect()
}

/// A mock OpenAI whose image requests each take `delay`.
async fn openai(delay: Duration) -> MockServer {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(b64_answer(&common::png(64, 48, [20, 40, 60])).set_delay(delay))
        .mount(&mock)
        .await;
    mock
}

/// Image requests the mock has received, by request body (the prompt, shown by its length
/// and a short hash so a failure message stays readable).
async fn image_requests(mock: &MockServer) -> HashMap<String, usize> {
    use std::hash::{Hash, Hasher};
    let mut by_body = HashMap::new();
    for r in mock.received_requests().await.unwrap_or_default() {
        if r.url.path().ends_with("/images/generations") {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            r.body.hash(&mut h);
            let name = format!("{} bytes #{:016x}", r.body.len(), h.finish());
            *by_body.entry(name).or_insert(0) += 1;
        }
    }
    by_body
}

async fn image_request_count(mock: &MockServer) -> usize {
    image_requests(mock).await.values().sum()
}

/// A live server against `mock`, no enhancement, on `data`, with `extra` flags.
fn options(mock: &MockServer, data: &Path, extra: &[&str]) -> Options {
    let mut args = vec!["--data-dir".to_string(), data.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Options {
        args,
        env: vec![
            ("OPENAI_API_KEY".into(), "sk-test-key".into()),
            ("OPENAI_BASE_URL".into(), mock.uri()),
            ("TB_DALLE_NO_ENHANCE".into(), "1".into()),
            ("TB_DALLE_RETRY_BASE".into(), "20ms".into()),
        ],
        ..Options::default()
    }
}

/// Blocking work (the harness's process calls) inside the async test, which must keep the
/// mock OpenAI answering meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn generate(c: &reqwest::Client, server: &Process, a: &str) -> reqwest::Response {
    c.get(server.url(&format!("/dalle/simple/{a}?generate=1")))
        .send()
        .await
        .unwrap()
}

fn annotated(data: &Path, a: &str) -> PathBuf {
    data.join("output/simple/annotated")
        .join(format!("{a}.png"))
}

fn queue_entries(data: &Path) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(data.join("queue")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm(server: &Process) {
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
}

fn wait_exit(server: &mut Process, limit: Duration) -> std::process::ExitStatus {
    blocking(|| common::wait_exit(&mut server.child, limit))
        .unwrap_or_else(|| panic!("still running after {limit:?}:\n{}", server.log_text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_the_image_in_flight_and_writes_its_png() {
    let mock = openai(Duration::from_secs(3)).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = blocking(|| Process::start_with(options(&mock, &data, &[])));
    let [a, b] = <[String; 2]>::try_from(addresses(2)).unwrap();
    let c = client();
    generate(&c, &server, &a).await;
    until("the image request", Duration::from_secs(10), async || {
        image_request_count(&mock).await == 1
    })
    .await;

    sigterm(&server);
    assert!(
        blocking(|| server.wait_for_log("draining", Duration::from_secs(5))),
        "{}",
        server.log_text()
    );
    // While draining: no new run, but polls and health still answer.
    let refused = generate(&c, &server, &b).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body:#}");
    let v1 = c
        .post(server.url("/v1/images/generate"))
        .json(&serde_json::json!({"input": "Wimp", "series": "simple", "image": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status(), 503);
    assert!(v1.headers().contains_key("retry-after"));
    let v1: Value = v1.json().await.unwrap();
    assert!(
        v1["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .contains("shutting_down"),
        "{v1:#}"
    );
    let poll = c
        .get(server.url(&format!("/dalle/simple/{a}")))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 200);
    let health = c.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["data"]["draining"], true, "{health:#}");

    let status = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", server.log_text());
    image::open(annotated(&data, &a)).expect("the paid image is written and whole");
    assert!(!annotated(&data, &b).exists());
    assert_eq!(image_request_count(&mock).await, 1);
    let logs = server.log_text();
    assert!(
        logs.contains("drained") && logs.contains("finished=1") && logs.contains("lost=0"),
        "{logs}"
    );
    assert!(
        queue_entries(&data).is_empty(),
        "a finished run leaves no entry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_requeues_the_queued_runs_and_the_next_start_completes_them() {
    let mock = openai(Duration::from_millis(1000)).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let flags = ["--max-concurrent", "1"];
    let mut server = blocking(|| Process::start_with(options(&mock, &data, &flags)));
    let keys = addresses(4);
    let c = client();
    for a in &keys {
        generate(&c, &server, a).await;
    }
    until(
        "the first image request",
        Duration::from_secs(10),
        async || image_request_count(&mock).await == 1,
    )
    .await;
    until("every run journaled", Duration::from_secs(10), async || {
        queue_entries(&data).len() == 4
    })
    .await;

    sigterm(&server);
    let status = wait_exit(&mut server, Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", server.log_text());
    let logs = server.log_text();
    assert!(
        logs.contains("finished=1") && logs.contains("requeued=3") && logs.contains("lost=0"),
        "{logs}"
    );
    assert_eq!(
        image_request_count(&mock).await,
        1,
        "queued runs paid nothing"
    );
    let queued = queue_entries(&data);
    assert_eq!(queued.len(), 3, "{queued:#?}");
    assert!(queued.iter().all(|e| e["image_requested"] == false));

    // The next start resumes the three, each paid once.
    let server = blocking(|| Process::start_with(options(&mock, &data, &flags)));
    until("every image", Duration::from_secs(60), async || {
        keys.iter().all(|a| annotated(&data, a).exists())
    })
    .await;
    for a in &keys {
        image::open(annotated(&data, a)).unwrap();
    }
    let requests = image_requests(&mock).await;
    assert_eq!(requests.values().sum::<usize>(), 4, "{requests:?}");
    assert!(requests.values().all(|&n| n == 1), "a prompt paid twice");
    until(
        "the journal to empty",
        Duration::from_secs(10),
        async || queue_entries(&data).is_empty(),
    )
    .await;
    assert!(
        server.log_text().contains("resumed=3"),
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_queued_runs_resume_and_the_paid_one_is_not_repeated() {
    let mock = openai(Duration::from_millis(1000)).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let flags = ["--max-concurrent", "1"];
    let mut server = blocking(|| Process::start_with(options(&mock, &data, &flags)));
    let keys = addresses(4);
    let c = client();
    for a in &keys {
        generate(&c, &server, a).await;
    }
    // The mark is written just before the request is sent: wait for both.
    until(
        "one request sent, three queued",
        Duration::from_secs(10),
        async || {
            let entries = queue_entries(&data);
            image_request_count(&mock).await == 1
                && entries.len() == 4
                && entries
                    .iter()
                    .filter(|e| e["image_requested"] == true)
                    .count()
                    == 1
        },
    )
    .await;
    let paid = queue_entries(&data)
        .into_iter()
        .find(|e| e["image_requested"] == true)
        .unwrap()["subject"]
        .as_str()
        .unwrap()
        .to_string();
    Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status()
        .unwrap();
    wait_exit(&mut server, Duration::from_secs(10));
    drop(server);

    let server = blocking(|| Process::start_with(options(&mock, &data, &flags)));
    let queued: Vec<&String> = keys.iter().filter(|a| **a != paid).collect();
    until("the queued images", Duration::from_secs(60), async || {
        queued.iter().all(|a| annotated(&data, a).exists())
    })
    .await;
    assert!(!annotated(&data, &paid).exists());
    let logs = server.log_text();
    assert!(
        logs.contains("not repeated") && logs.contains("resumed=3"),
        "{logs}"
    );
    // The run whose image request was in flight is gone; asking again works.
    let c = client();
    let poll: Value = c
        .get(server.url(&format!("/dalle/simple/{paid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(poll["data"], serde_json::json!({}), "{poll:#}");
    assert_eq!(generate(&c, &server, &paid).await.status(), 200);
    until(
        "the asked-again image",
        Duration::from_secs(30),
        async || annotated(&data, &paid).exists(),
    )
    .await;
    let requests = image_requests(&mock).await;
    assert_eq!(
        requests.values().sum::<usize>(),
        5,
        "{requests:?}\n{}",
        server.log_text()
    );
    assert_eq!(
        requests.values().filter(|&&n| n == 1).count(),
        3,
        "each queued run is paid once: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_bounds_the_wait_for_a_stalled_image() {
    let mock = openai(Duration::from_secs(60)).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server =
        blocking(|| Process::start_with(options(&mock, &data, &["--drain-timeout", "1s"])));
    let a = &addresses(1)[0];
    let c = client();
    generate(&c, &server, a).await;
    until("the image request", Duration::from_secs(10), async || {
        image_request_count(&mock).await == 1
    })
    .await;
    let signalled = Instant::now();
    sigterm(&server);
    let status = wait_exit(&mut server, Duration::from_secs(15));
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}\n{}", server.log_text());
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let logs = server.log_text();
    assert!(
        logs.contains("lost=1") && logs.contains("timed_out=true"),
        "{logs}"
    );
    assert_eq!(image_request_count(&mock).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_without_waiting_for_the_drain() {
    let mock = openai(Duration::from_secs(60)).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = blocking(|| Process::start_with(options(&mock, &data, &[])));
    let a = &addresses(1)[0];
    generate(&client(), &server, a).await;
    until("the image request", Duration::from_secs(10), async || {
        image_request_count(&mock).await == 1
    })
    .await;
    sigterm(&server);
    assert!(blocking(
        || server.wait_for_log("draining", Duration::from_secs(5))
    ));
    sigterm(&server);
    let status = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "{status:?}\n{}", server.log_text());
    let logs = server.log_text();
    assert!(
        logs.contains("second signal") && logs.contains("lost=1"),
        "{logs}"
    );
}

/// The deploy files give the process at least the default drain (image timeout 300 s + 30 s)
/// plus the 10 s for open connections before they kill it.
#[test]
fn deploy_grace_periods_cover_the_default_drain() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let needed = 300 + 30 + 10;
    let value = |file: &str, key: &str| -> u64 {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("{file} sets no {key}"));
        line.trim_start()[key.len()..]
            .trim_matches(|c: char| c == ':' || c == '=' || c.is_whitespace())
            .parse()
            .unwrap_or_else(|e| panic!("{file}: {line}: {e}"))
    };
    let k8s = value(
        "deploy/kubernetes/dalleserver.yaml",
        "terminationGracePeriodSeconds",
    );
    let systemd = value("deploy/systemd/dalleserver.service", "TimeoutStopSec");
    assert!(k8s >= needed, "terminationGracePeriodSeconds {k8s}");
    assert!(systemd >= needed, "TimeoutStopSec {systemd}");
}
