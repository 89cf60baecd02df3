//! End-to-end tests of `/dalle`: the in-process server in mock mode and against a local mock
//! OpenAI server (wiremock) that succeeds, fails, rate-limits and stalls. Loops are bounded in
//! time; that something did *not* happen is shown by what the server answers next, never by
//! waiting a while.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Options, Process, Running, Server, image_requests};
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
const B: &str = "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6";

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

/// The Prometheus text of `/metrics`.
async fn metrics_text(server: &Server) -> String {
    let resp = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Polls `url` (without `generate`) until the snapshot says done, for at most `limit`.
async fn poll_done(server: &impl Running, series: &str, address: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    let url = server.url(&format!("/dalle/{series}/{address}"));
    loop {
        let resp = client().get(&url).send().await.unwrap();
        let is_png = resp.headers()["content-type"] == "image/png";
        if is_png {
            return serde_json::json!({"png": true});
        }
        let body: Value = resp.json().await.unwrap();
        if body["data"]["done"] == true {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "not done within {limit:?}: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `?generate=1`, then polls until done (see [`poll_done`]).
async fn generate_and_wait(server: &impl Running, address: &str, limit: Duration) -> Value {
    get_json(&server.url(&format!("/dalle/simple/{address}?generate=1"))).await;
    poll_done(server, "simple", address, limit).await
}

/// A small real PNG for the mock OpenAI to return.
fn tiny_png(rgb: [u8; 3]) -> Vec<u8> {
    common::png(64, 48, rgb)
}

use common::b64_answer;

fn live(mock: &MockServer, extra: &[(&str, &str)]) -> Options {
    let mut env = vec![
        ("OPENAI_API_KEY".to_string(), "sk-test-key".to_string()),
        ("OPENAI_BASE_URL".to_string(), mock.uri()),
        ("TB_DALLE_RETRY_BASE".to_string(), "20ms".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Options {
        env,
        ..Options::default()
    }
}

/// Every image request to the mock gets `answer`.
async fn answer_images(mock: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(answer)
        .mount(mock)
        .await;
}

/// A mock OpenAI whose every image request gets `answer`, and a live server (no enhancement)
/// pointed at it; the mock must live as long as the server.
async fn server_answering(answer: ResponseTemplate) -> (MockServer, Server) {
    let mock = MockServer::start().await;
    answer_images(&mock, answer).await;
    let server = Server::start_with(live(&mock, &[("TB_DALLE_NO_ENHANCE", "1")]));
    (mock, server)
}

/// The next image request (only) gets `answer`; mount it before the default answer.
async fn answer_images_once(mock: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(answer)
        .up_to_n_times(1)
        .mount(mock)
        .await;
}

#[tokio::test]
async fn mock_mode_generates_a_captioned_png_end_to_end() {
    let server = Server::start();
    let first = get_json(&server.url(&format!("/dalle/simple/{A}?generate=1"))).await;
    assert_eq!(first["data"]["currentPhase"], "setup", "{first:#}");
    assert_eq!(first["data"]["series"], "simple");
    assert_eq!(first["data"]["address"], A);
    let done = poll_done(&server, "simple", A, Duration::from_secs(60)).await;
    if done.get("png").is_none() {
        assert_eq!(done["data"]["currentPhase"], "completed", "{done:#}");
        assert_eq!(done["data"]["error"], "");
    }

    let resp = client()
        .get(server.url(&format!("/dalle/simple/{A}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert!(resp.headers().contains_key("last-modified"));
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(etag, format!("\"{}\"", dalleserver::cid::Cid::of(&bytes)));
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!(img.width(), 1024);
    assert!(
        img.height() > 1024,
        "caption bar missing: {}x{}",
        img.width(),
        img.height()
    );

    let out = server.data_dir.join("output/simple");
    let mut artifacts = vec![
        format!("annotated/{A}.png"),
        format!("generated/{A}.png"),
        format!("selector/{A}.json"),
    ];
    artifacts.extend(
        ["data", "title", "terse", "prompt", "enhanced", "technical"]
            .map(|k| format!("{k}/{A}.txt")),
    );
    for rel in artifacts {
        let p = out.join(rel);
        assert!(p.is_file(), "missing artifact {}", p.display());
        assert!(
            std::fs::metadata(&p).unwrap().len() > 0,
            "empty artifact {}",
            p.display()
        );
    }
    let generated = image::open(out.join(format!("generated/{A}.png"))).unwrap();
    assert_eq!((generated.width(), generated.height()), (1024, 1024));
    let selector: Value =
        serde_json::from_slice(&std::fs::read(out.join(format!("selector/{A}.json"))).unwrap())
            .unwrap();
    assert_eq!(selector["original"], A);
    assert_eq!(selector["completed"], true);

    // Same address, same bytes (mock images and annotation are deterministic).
    let again = Server::start();
    generate_and_wait(&again, A, Duration::from_secs(60)).await;
    let second = client()
        .get(again.url(&format!("/dalle/simple/{A}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes, second, "mock mode must be deterministic");
}

#[tokio::test]
async fn png_responses_honour_conditional_range_and_head_requests() {
    let server = Server::start();
    generate_and_wait(&server, A, Duration::from_secs(60)).await;
    let url = server.url(&format!("/dalle/simple/{A}"));
    let c = client();
    let full = c.get(&url).send().await.unwrap();
    let etag = full.headers()["etag"].to_str().unwrap().to_string();
    let modified = full.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    let body = full.bytes().await.unwrap();

    let resp = c
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
    let resp = c
        .get(&url)
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c
        .get(&url)
        .header("If-Modified-Since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);

    let resp = c
        .get(&url)
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        format!("bytes 0-99/{}", body.len())
    );
    assert_eq!(resp.bytes().await.unwrap(), body.slice(0..100));
    let resp = c
        .get(&url)
        .header("Range", format!("bytes={}-", body.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{}", body.len())
    );

    let resp = c.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert_eq!(resp.headers()["etag"].to_str().unwrap(), etag);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn decision_table_for_plain_generate_and_remove() {
    let server = Server::start();
    let c = client();
    let dalle = |q: &str| server.url(&format!("/dalle/simple/{A}{q}"));

    // Missing image, no run: plain GET and ?remove answer {} and start nothing.
    assert_eq!(get_json(&dalle("")).await["data"], serde_json::json!({}));
    assert_eq!(
        get_json(&dalle("?remove")).await["data"],
        serde_json::json!({})
    );
    // Nothing started: a run registers its progress before the request that starts it is
    // answered, so a started run would answer this GET with its progress instead of {}.
    assert_eq!(get_json(&dalle("")).await["data"], serde_json::json!({}));
    assert!(
        !server.data_dir.join("output/simple").exists(),
        "a plain GET must not generate"
    );
    // `generate` needs exactly 1: anything else is refused, not silently ignored.
    let typo = c.get(dalle("?generate=true")).send().await.unwrap();
    assert_eq!(typo.status(), 400);

    get_json(&dalle("?generate=1")).await;
    poll_done(&server, "simple", A, Duration::from_secs(60)).await;
    let png = server
        .data_dir
        .join(format!("output/simple/annotated/{A}.png"));
    let before = std::fs::metadata(&png).unwrap().modified().unwrap();

    // Existing image + generate: a cache hit, no regeneration.
    let hit = get_json(&dalle("?generate=1")).await;
    assert_eq!(hit["data"]["cacheHit"], true, "{hit:#}");
    assert_eq!(hit["data"]["done"], true);
    // No regeneration: a run in flight would answer a plain GET with its progress, not the PNG.
    let resp = c.get(dalle("")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(std::fs::metadata(&png).unwrap().modified().unwrap(), before);

    // Remove: plain-text confirmation, file gone, then {} again.
    let resp = c.get(dalle("?remove=1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.unwrap(),
        format!("image removed simple/annotated/{A}.png\n")
    );
    assert!(!png.exists());
    assert_eq!(get_json(&dalle("")).await["data"], serde_json::json!({}));
}

#[tokio::test]
async fn invalid_requests_get_the_legacy_codes() {
    let server = Server::start();
    let c = client();
    for (path, status, code) in [
        (format!("/dalle/nope/{A}"), 400, "INVALID_SERIES"),
        ("/dalle/simple/0x1234".to_string(), 400, "INVALID_ADDRESS"),
        (format!("/dalle/simple/{}", &A[2..]), 400, "INVALID_ADDRESS"),
        (format!("/dalle/simple/{A}/extra"), 400, "INVALID_ADDRESS"),
        ("/dalle/simple".to_string(), 400, "INVALID_REQUEST"),
        ("/dalle/simple/".to_string(), 400, "MISSING_PARAMETER"),
    ] {
        let resp = c.get(server.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    // Upper-case series and checksummed addresses are accepted and normalised.
    let resp = c
        .get(server.url(&format!(
            "/dalle/SIMPLE/{}",
            A.to_uppercase().replacen("0X", "0x", 1)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn live_mode_with_b64_and_url_answers() {
    let mock = MockServer::start().await;
    let png = tiny_png([200, 120, 40]);
    answer_images_once(&mock, b64_answer(&png)).await;
    answer_images(
        &mock,
        ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"data": [{"url": format!("{}/files/img.png", mock.uri())}]}),
        ),
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/files/img.png"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(png.clone()))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            serde_json::json!({"choices": [{"message": {"content": "An enhanced prompt."}}]}),
        ))
        .mount(&mock)
        .await;
    // Binary: checks that the key stays out of the log lines.
    let server = Process::start_with(live(&mock, &[]));
    for address in [A, B] {
        let done = generate_and_wait(&server, address, Duration::from_secs(60)).await;
        assert!(
            done.get("png").is_some() || done["data"]["error"] == "",
            "{done:#}"
        );
        let bytes = client()
            .get(server.url(&format!("/dalle/simple/{address}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!(img.width(), 64);
        assert!(img.height() > 48);
    }
    let modes: Vec<String> = [A, B]
        .iter()
        .map(|a| {
            let sel: Value = serde_json::from_slice(
                &std::fs::read(
                    server
                        .data_dir
                        .join(format!("output/simple/selector/{a}.json")),
                )
                .unwrap(),
            )
            .unwrap();
            sel["downloadMode"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(modes, ["b64", "url"]);
    assert_eq!(image_requests(&mock).await, 2);
    let logs = server.log_text();
    assert!(
        !logs.contains("sk-test-key"),
        "the key leaked into the logs"
    );
}

#[tokio::test]
async fn simultaneous_generate_requests_cause_one_upstream_image_request() {
    let (mock, server) =
        server_answering(b64_answer(&tiny_png([10, 20, 30])).set_delay(Duration::from_millis(600)))
            .await;
    let url = server.url(&format!("/dalle/simple/{A}?generate=1"));
    let tasks: Vec<_> = (0..12)
        .map(|_| tokio::spawn(get_json_owned(url.clone())))
        .collect();
    for t in tasks {
        let body = t.await.unwrap();
        assert_eq!(body["success"], true);
    }
    poll_done(&server, "simple", A, Duration::from_secs(60)).await;
    assert_eq!(image_requests(&mock).await, 1);
}

async fn get_json_owned(url: String) -> Value {
    get_json(&url).await
}

#[tokio::test]
async fn content_policy_refusal_is_final_until_removed() {
    let (mock, server) = server_answering(ResponseTemplate::new(400).set_body_json(
            serde_json::json!({"error": {"code": "content_policy_violation", "message": "Your request was rejected by the safety system."}}),
        )).await;
    let done = generate_and_wait(&server, A, Duration::from_secs(30)).await;
    assert_eq!(done["data"]["currentPhase"], "failed", "{done:#}");
    assert_eq!(
        done["data"]["error"],
        "OpenAI API error (status 400): Your request was rejected by the safety system."
    );

    // Polling, even with generate=1, shows the failure and does not retry.
    for q in ["", "?generate=1"] {
        let again = get_json(&server.url(&format!("/dalle/simple/{A}{q}"))).await;
        assert_eq!(again["data"]["error"], done["data"]["error"]);
    }
    assert_eq!(image_requests(&mock).await, 1, "a 400 is never retried");

    assert_eq!(
        get_json(&server.url(&format!("/dalle/simple/{A}?remove"))).await["data"],
        serde_json::json!({})
    );
    generate_and_wait(&server, A, Duration::from_secs(30)).await;
    assert_eq!(
        image_requests(&mock).await,
        2,
        "after ?remove a new ?generate=1 tries again"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_the_breaker_opens_without_making_the_server_unready() {
    let (mock, server) =
        server_answering(ResponseTemplate::new(503).set_body_string("upstream overloaded")).await;
    let first = generate_and_wait(&server, A, Duration::from_secs(30)).await;
    assert!(
        first["data"]["error"]
            .as_str()
            .unwrap()
            .contains("status 503"),
        "{first:#}"
    );
    assert_eq!(image_requests(&mock).await, 3, "3 attempts");

    let second = generate_and_wait(&server, B, Duration::from_secs(30)).await;
    assert!(
        second["data"]["error"]
            .as_str()
            .unwrap()
            .contains("image circuit breaker is OPEN after 5 consecutive failures (last: OpenAI API error (status 503)"),
        "{second:#}"
    );
    assert_eq!(
        image_requests(&mock).await,
        5,
        "the breaker opened after 5 consecutive failures"
    );

    let health: Value = client()
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let openai = &health["data"]["components"]["openai"];
    assert_eq!(openai["status"], "unhealthy");
    assert_eq!(openai["details"]["operations"]["image"]["state"], "OPEN");
    assert_eq!(openai["details"]["operations"]["chat"]["state"], "CLOSED");
    assert_eq!(
        client()
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = metrics_text(&server).await;
    assert!(
        metrics.contains("dalleserver_circuit_breaker_state{operation=\"image\",state=\"OPEN\"} 1"),
        "{metrics}"
    );
    // Two retries per generation; the second generation's last retry met the open breaker.
    assert!(
        metrics.contains("dalleserver_retries_total{operation=\"image\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dalleserver_generations_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dalleserver_error_code_total{code=\"GENERATION_ERROR\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let mock = MockServer::start().await;
    answer_images_once(
        &mock,
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "1")
            .set_body_string("slow down"),
    )
    .await;
    answer_images(&mock, b64_answer(&tiny_png([1, 2, 3]))).await;
    let server = Server::start_with(live(&mock, &[("TB_DALLE_NO_ENHANCE", "1")]));
    let start = Instant::now();
    let done = generate_and_wait(&server, A, Duration::from_secs(30)).await;
    assert!(
        done.get("png").is_some() || done["data"]["error"] == "",
        "{done:#}"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(image_requests(&mock).await, 2);
}

#[tokio::test]
async fn a_stalled_image_request_is_not_repeated() {
    let mock = MockServer::start().await;
    answer_images(
        &mock,
        b64_answer(&tiny_png([1, 2, 3])).set_delay(Duration::from_secs(5)),
    )
    .await;
    let server = Server::start_with(live(
        &mock,
        &[
            ("TB_DALLE_NO_ENHANCE", "1"),
            ("TB_DALLE_IMAGE_TIMEOUT", "1s"),
        ],
    ));
    let done = generate_and_wait(&server, A, Duration::from_secs(30)).await;
    assert_eq!(done["data"]["currentPhase"], "failed", "{done:#}");
    assert!(
        done["data"]["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 1s"),
        "{done:#}"
    );
    assert_eq!(
        image_requests(&mock).await,
        1,
        "an image request that may have been billed is never repeated"
    );
}

#[tokio::test]
async fn runs_beyond_the_concurrency_limit_wait_in_a_queue() {
    let mock = MockServer::start().await;
    answer_images(
        &mock,
        b64_answer(&tiny_png([9, 9, 9])).set_delay(Duration::from_secs(2)),
    )
    .await;
    let mut opts = live(&mock, &[("TB_DALLE_NO_ENHANCE", "1")]);
    opts.args = vec!["--max-concurrent".into(), "1".into()];
    let server = Server::start_with(opts);
    let addresses = [A, B, "0x0000000000000000000000000000000000000001"];
    for a in addresses {
        get_json(&server.url(&format!("/dalle/simple/{a}?generate=1"))).await;
    }
    // One run holds the only slot (its image takes 2 s); the other two wait in setup,
    // numbered 1 and 2 once their tasks have queued (which is first depends on scheduling).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut positions = Vec::new();
        let mut snaps = Vec::new();
        for a in addresses {
            let snap = get_json(&server.url(&format!("/dalle/simple/{a}"))).await;
            if let Some(position) = snap["data"]["queuePosition"].as_u64() {
                assert_eq!(snap["data"]["currentPhase"], "setup", "{snap:#}");
                positions.push(position);
            }
            snaps.push(snap);
        }
        positions.sort_unstable();
        if positions == [1, 2] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two runs should wait behind the one running: {positions:?}\n{snaps:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for a in addresses {
        poll_done(&server, "simple", a, Duration::from_secs(60)).await;
    }
}

/// Polls `address` until `ready` holds for its snapshot's `data`, for at most 10 s.
async fn snapshot_until(server: &Server, address: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let url = server.url(&format!("/dalle/simple/{address}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = get_json(&url).await;
        if ready(&snap["data"]) {
            return snap["data"].clone();
        }
        assert!(Instant::now() < deadline, "never ready: {snap:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_queued_run_reads_0_percent_and_its_eta_includes_the_wait() {
    let mock = MockServer::start().await;
    // The image request stalls: the first run holds the only slot for the whole test.
    answer_images(
        &mock,
        b64_answer(&tiny_png([9, 9, 9])).set_delay(Duration::from_secs(20)),
    )
    .await;
    let mut opts = live(&mock, &[("TB_DALLE_NO_ENHANCE", "1")]);
    opts.args = vec!["--max-concurrent".into(), "1".into()];
    let server = Server::start_with(opts);
    get_json(&server.url(&format!("/dalle/simple/{A}?generate=1"))).await;
    snapshot_until(&server, A, |d| d["currentPhase"] == "image_wait").await;
    get_json(&server.url(&format!("/dalle/simple/{B}?generate=1"))).await;
    let queued = snapshot_until(&server, B, |d| d["queuePosition"] == 1).await;
    let running = get_json(&server.url(&format!("/dalle/simple/{A}"))).await["data"].clone();
    assert_eq!(queued["currentPhase"], "setup", "{queued:#}");
    assert_eq!(queued["percent"], 0.0, "{queued:#}");
    // No history yet: both estimates come from the priors. The queued run waits for the
    // running one (at most one whole run, with one slot), then takes a whole run itself.
    let (eta, ahead) = (&queued["etaSeconds"], &running["etaSeconds"]);
    let (eta, ahead) = (eta.as_f64().unwrap(), ahead.as_f64().unwrap());
    assert!(ahead > 1.0 && eta >= 2.0 * ahead, "{queued:#}\n{running:#}");
    let percent = running["percent"].as_f64().unwrap();
    assert!(
        percent < 50.0,
        "one image into a run of one image: {running:#}"
    );
    assert_eq!(
        image_requests(&mock).await,
        1,
        "the queued run has not asked yet"
    );
}

#[tokio::test]
async fn a_run_waiting_to_retry_its_image_request_says_so() {
    let mock = MockServer::start().await;
    let busy = ResponseTemplate::new(503)
        .insert_header("retry-after", "30")
        .set_body_json(serde_json::json!({"error": {"message": "busy", "type": "server_error"}}));
    answer_images(&mock, busy).await;
    let server = Server::start_with(live(&mock, &[("TB_DALLE_NO_ENHANCE", "1")]));
    get_json(&server.url(&format!("/dalle/simple/{A}?generate=1"))).await;
    let waiting = snapshot_until(&server, A, |d| d.get("retrying").is_some()).await;
    let retrying = &waiting["retrying"];
    assert_eq!(waiting["currentPhase"], "image_wait", "{waiting:#}");
    assert_eq!(
        (&retrying["operation"], &retrying["attempt"]),
        (&"image".into(), &2.into())
    );
    assert_eq!(
        (&retrying["attempts"], &retrying["waitSeconds"]),
        (&3.into(), &30.0.into())
    );
    assert!(
        retrying["reason"].as_str().unwrap().contains("503"),
        "{waiting:#}"
    );
    assert!(
        waiting["etaSeconds"].as_f64().unwrap() > 29.0,
        "{waiting:#}"
    );
    assert_eq!(image_requests(&mock).await, 1);
}

#[tokio::test]
async fn phase_averages_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let opts = || Options {
        args: vec!["--data-dir".into(), data.display().to_string()],
        ..Options::default()
    };
    {
        let server = Server::start_with(opts());
        generate_and_wait(&server, A, Duration::from_secs(60)).await;
    }
    let stats: Value = serde_json::from_slice(
        &std::fs::read(data.join("metrics/progress_phase_stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats["version"], "v1");
    assert!(
        stats["phaseAverages"]["annotate"]["count"]
            .as_u64()
            .unwrap()
            >= 1,
        "{stats:#}"
    );
    let server = Server::start_with(opts());
    let first = get_json(&server.url(&format!("/dalle/simple/{B}?generate=1"))).await;
    assert!(
        first["data"]["phaseAverages"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "averages must be loaded at start-up: {first:#}"
    );
}

/// Once an image is cached, a plain GET is answered by the fast lane (src/http/fast.rs) —
/// with the caller's request id, counted in /metrics like any request — and a run in flight
/// for the same key answers its progress (also from the fast lane), not the old picture,
/// until it is done.
#[tokio::test]
async fn cached_images_keep_ids_and_metrics_and_yield_to_a_run_in_flight() {
    let (_mock, server) =
        server_answering(b64_answer(&tiny_png([9, 8, 7])).set_delay(Duration::from_secs(2))).await;
    let old = tiny_png([1, 1, 1]);
    let dir = server.data_dir.join("output/simple/annotated");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{A}.png")), &old).unwrap();
    let url = server.url(&format!(
        "/dalle/simple/{}",
        A.to_uppercase().replace("0X", "0x")
    ));
    let c = client();
    for id in ["first-read", "cache-hit"] {
        let resp = c.get(&url).header("X-Request-ID", id).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-request-id"], id);
        assert_eq!(resp.headers()["content-type"], "image/png");
        assert_eq!(resp.bytes().await.unwrap(), old);
    }
    let resp = c.get(&url).send().await.unwrap();
    let minted = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(minted.len(), 8, "an id is minted when none is sent");
    let metrics = metrics_text(&server).await;
    let served = metrics
        .lines()
        .find(|l| {
            l.starts_with("dalleserver_http_request_duration_seconds_count")
                && l.contains("endpoint=\"dalle\"")
                && l.contains("status=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("no dalle requests in\n{metrics}"));
    assert!(served.ends_with(" 3"), "{served}");

    // Regenerate through /v1 (the mock takes 2 s): meanwhile /dalle shows the run.
    let generate = tokio::spawn({
        let c = c.clone();
        let url = server.url("/v1/images/generate");
        async move {
            let body = serde_json::json!({
                "seed": A, "series": "simple", "image": true, "annotate": true, "force": true
            });
            c.post(url).json(&body).send().await.unwrap().status()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = c
            .get(&url)
            .header("X-Request-ID", "poll-1")
            .send()
            .await
            .unwrap();
        if resp.headers()["content-type"] == "application/json" {
            assert_eq!(resp.headers()["x-request-id"], "poll-1");
            let snapshot: Value = resp.json().await.unwrap();
            assert_eq!(snapshot["data"]["done"], false, "{snapshot:#}");
            assert_eq!(snapshot["data"]["series"], "simple", "{snapshot:#}");
            assert_eq!(snapshot["request_id"], "poll-1", "{snapshot:#}");
            break;
        }
        assert!(Instant::now() < deadline, "the run never showed on /dalle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(generate.await.unwrap(), 200);
    let new = c.get(&url).send().await.unwrap();
    assert_eq!(new.headers()["content-type"], "image/png");
    assert_ne!(
        new.bytes().await.unwrap(),
        old,
        "the regenerated image is served"
    );
}
