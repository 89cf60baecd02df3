//! The OpenAI client against a local mock OpenAI (wiremock): answers, retries, timeouts, the
//! circuit breaker and key hygiene. Retry waits are tiny so the whole file runs in about a second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dalleserver::config::{ApiKey, OpenAiConfig};
use dalleserver::metrics::{Metrics, MetricsSnapshot};
use dalleserver::openai::breaker::{BreakerState, Breakers};
use dalleserver::openai::{ImageAnswer, OpenAiClient, OpenAiError, RetryPolicy};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-0123456789-do-not-leak";
const CHAT: &str = "/chat/completions";
const IMAGES: &str = "/images/generations";
const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot-really-a-png";

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        api_key: ApiKey::new(KEY),
        base_url: base_url.to_string(),
        skip_image: false,
        no_enhance: false,
        image_model: "gpt-image-2".into(),
        chat_model: "gpt-5.5".into(),
        image_timeout: Duration::from_secs(5),
        enhance_timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(10),
    }
}

fn tiny_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
        factor: 2.0,
    }
}

struct Harness {
    client: OpenAiClient,
    breakers: Breakers,
    metrics: Arc<Metrics>,
}

impl Harness {
    fn new(config: OpenAiConfig) -> Harness {
        Harness::with_policy(config, tiny_retries())
    }

    fn with_policy(config: OpenAiConfig, policy: RetryPolicy) -> Harness {
        let breakers = Breakers::default();
        let metrics = Arc::new(Metrics::new().unwrap());
        let client = OpenAiClient::new(&config, breakers.clone(), metrics.clone())
            .unwrap()
            .with_retry_policy(policy);
        Harness {
            client,
            breakers,
            metrics,
        }
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot(&self.breakers.snapshot())
    }

    /// An image request with a throwaway prompt that must fail.
    async fn image_err(&self) -> OpenAiError {
        self.client.request_image("a", "a").await.unwrap_err()
    }

    /// An enhancement that must fail.
    async fn enhance_err(&self) -> OpenAiError {
        self.client.enhance("p", "u").await.unwrap_err()
    }

    fn retries(&self, operation: &str) -> u64 {
        self.metrics().retries_by_operation[operation]
    }
}

async fn received(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap()
}

async fn get(server: &MockServer, route: &str, answer: ResponseTemplate) {
    let mock = Mock::given(method("GET")).and(path(route));
    mock.respond_with(answer).mount(server).await;
}

async fn post(server: &MockServer, route: &str, answer: ResponseTemplate) {
    let mock = Mock::given(method("POST")).and(path(route));
    mock.respond_with(answer).mount(server).await;
}

/// Answers the next matching request with `answer`, ahead of any other mock.
async fn post_once(server: &MockServer, route: &str, answer: ResponseTemplate) {
    let mock = Mock::given(method("POST")).and(path(route));
    let mock = mock.respond_with(answer).up_to_n_times(1).with_priority(1);
    mock.mount(server).await;
}

fn answer(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

fn image_url_answer(url: &str) -> ResponseTemplate {
    answer(200, json!({"data": [{"url": url}]}))
}

fn chat_answer(content: &str) -> ResponseTemplate {
    answer(
        200,
        json!({"choices": [{"message": {"role": "assistant", "content": content}}]}),
    )
}

#[tokio::test]
async fn image_url_answer_then_download_without_the_key() {
    let server = MockServer::start().await;
    let image_url = format!("{}/blob/img.png?sig=secret-signature", server.uri());
    Mock::given(method("POST"))
        .and(path(IMAGES))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .respond_with(image_url_answer(&image_url))
        .mount(&server)
        .await;
    let reply = ResponseTemplate::new(200).set_body_bytes(PNG);
    get(&server, "/blob/img.png", reply).await;
    let h = Harness::new(config(&server.uri()));

    // The prompt says landscape, but orientation comes from the enhanced text only.
    let answer = h
        .client
        .request_image("a landscape of ideas", "a Vertical scroll")
        .await
        .unwrap();
    assert_eq!(answer, ImageAnswer::Url(image_url.clone()));
    assert_eq!(h.client.download(&image_url).await.unwrap(), PNG);

    let requests = received(&server).await;
    assert_eq!(requests.len(), 2);
    let body: Value = requests[0].body_json().unwrap();
    assert_eq!(
        body,
        json!({"prompt": "a landscape of ideas", "n": 1, "model": "gpt-image-2",
               "size": "1024x1536", "quality": "high"})
    );
    assert!(requests[1].headers.get("authorization").is_none());
    let m = h.metrics();
    assert_eq!((m.openai_requests, m.openai_errors), (2, 0));
}

#[tokio::test]
async fn b64_answers_are_decoded_and_unusable_answers_are_errors() {
    let server = MockServer::start().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
    let answers = [
        json!({"data": [{"b64_json": b64}]}),
        json!({"data": []}),
        json!({"data": [{"url": "", "b64_json": null}]}),
    ];
    for body in answers {
        // Equal-priority mocks are tried in mount order, so these answer in turn.
        post_once(&server, IMAGES, answer(200, body)).await;
    }
    let h = Harness::new(config(&server.uri()));
    let image = h.client.request_image("a fox", "a fox").await.unwrap();
    assert_eq!(image, ImageAnswer::Bytes(PNG.to_vec()));
    let err = h.image_err().await;
    assert_eq!(err.to_string(), "no images returned");
    let err = h.image_err().await;
    assert_eq!(
        err.to_string(),
        "image response missing both url and b64_json"
    );
}

#[tokio::test]
async fn chat_sends_persona_seed_and_temperature_for_older_models() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(CHAT))
        .and(body_partial_json(json!({
            "model": "gpt-4o", "seed": 1337, "temperature": 0.2,
            "messages": [{"role": "system", "content": "persona"},
                         {"role": "user", "content": "a fox"}]})))
        .respond_with(chat_answer("a luminous fox"))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.chat_model = "gpt-4o".into();
    let h = Harness::new(cfg);
    let enhanced = h.client.enhance("persona", "a fox").await.unwrap();
    assert_eq!(enhanced, "a luminous fox");
}

#[tokio::test]
async fn chat_omits_temperature_for_gpt5_models() {
    let server = MockServer::start().await;
    post(&server, CHAT, chat_answer("a fox, vivid")).await;
    let h = Harness::new(config(&server.uri()));
    assert_eq!(
        h.client.enhance("persona", "a fox").await.unwrap(),
        "a fox, vivid"
    );
    let body: Value = received(&server).await[0].body_json().unwrap();
    assert_eq!(body["model"], "gpt-5.5");
    assert_eq!(body["seed"], 1337);
    assert!(body.get("temperature").is_none(), "{body}");
}

#[tokio::test]
async fn empty_chat_answers_return_the_original_prompt() {
    let server = MockServer::start().await;
    post_once(&server, CHAT, answer(200, json!({"choices": []}))).await;
    post(&server, CHAT, chat_answer("  ")).await;
    let h = Harness::new(config(&server.uri()));
    for _ in 0..2 {
        let enhanced = h.client.enhance("p", "base prompt").await.unwrap();
        assert_eq!(enhanced, "base prompt");
    }
}

#[tokio::test]
async fn a_server_error_is_retried_once_then_succeeds() {
    let server = MockServer::start().await;
    let reply = ResponseTemplate::new(500).set_body_string("upstream hiccup");
    post_once(&server, IMAGES, reply).await;
    let reply = image_url_answer("https://example.invalid/i.png");
    post(&server, IMAGES, reply).await;
    let h = Harness::new(config(&server.uri()));
    h.client.request_image("a", "a").await.unwrap();
    assert_eq!(received(&server).await.len(), 2);
    assert_eq!(h.retries("image"), 1);
    let m = h.metrics();
    assert_eq!((m.openai_requests, m.openai_errors), (2, 1));
    assert_eq!(h.breakers.image.snapshot().consecutive_failures, 0);
}

#[tokio::test]
async fn persistent_503_fails_after_three_attempts() {
    let server = MockServer::start().await;
    let body =
        json!({"error": {"message": "The engine is currently overloaded", "type": "server_error"}});
    post(&server, CHAT, answer(503, body)).await;
    let h = Harness::new(config(&server.uri()));
    let err = h.enhance_err().await;
    assert_eq!(
        err.to_string(),
        "OpenAI API error (status 503): The engine is currently overloaded"
    );
    assert_eq!(received(&server).await.len(), 3);
    assert_eq!(h.retries("enhance"), 2);
}

#[tokio::test]
async fn retry_after_replaces_a_long_backoff() {
    let server = MockServer::start().await;
    let reply = ResponseTemplate::new(429).insert_header("Retry-After", "0");
    post_once(&server, CHAT, reply).await;
    post(&server, CHAT, chat_answer("ok")).await;
    // Without the header this would wait at least 5 s before the second attempt.
    let slow = RetryPolicy {
        base: Duration::from_secs(10),
        max: Duration::from_secs(20),
        ..RetryPolicy::default()
    };
    let h = Harness::with_policy(config(&server.uri()), slow);
    let started = Instant::now();
    assert_eq!(h.client.enhance("p", "u").await.unwrap(), "ok");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(received(&server).await.len(), 2);
}

#[tokio::test]
async fn content_policy_refusal_is_not_retried_and_keeps_the_breaker_closed() {
    let server = MockServer::start().await;
    let body = json!({"error": {
        "message": "Your request was rejected as a result of our safety system.",
        "code": "content_policy_violation", "type": "invalid_request_error"}});
    post(&server, IMAGES, answer(400, body)).await;
    let h = Harness::new(config(&server.uri()));
    for _ in 0..6 {
        let err = h.image_err().await;
        assert_eq!(
            err.to_string(),
            "OpenAI API error (status 400): Your request was rejected as a result of our safety system."
        );
    }
    assert_eq!(received(&server).await.len(), 6);
    assert_eq!(h.retries("image"), 0);
    assert_eq!(h.breakers.image.snapshot().state, BreakerState::Closed);
    assert_eq!(h.breakers.image.snapshot().consecutive_failures, 0);
}

#[tokio::test]
async fn a_stalled_image_request_is_never_repeated() {
    let server = MockServer::start().await;
    let reply = image_url_answer("https://example.invalid/i.png").set_delay(Duration::from_secs(3));
    post(&server, IMAGES, reply).await;
    let mut cfg = config(&server.uri());
    cfg.image_timeout = Duration::from_millis(200);
    let h = Harness::new(cfg);
    let err = h.image_err().await;
    assert!(err.is_timeout(), "{err}");
    assert!(matches!(err, OpenAiError::Timeout { sent: true, .. }));
    assert_eq!(received(&server).await.len(), 1);
    assert_eq!(h.metrics().openai_timeouts, 1);
}

#[tokio::test]
async fn a_stalled_chat_request_may_be_repeated() {
    let server = MockServer::start().await;
    let reply = chat_answer("late").set_delay(Duration::from_secs(3));
    post(&server, CHAT, reply).await;
    let mut cfg = config(&server.uri());
    cfg.enhance_timeout = Duration::from_millis(100);
    let h = Harness::new(cfg);
    assert!(h.enhance_err().await.is_timeout());
    assert_eq!(received(&server).await.len(), 3);
}

/// A server that reads each request and hangs up without answering; counts connections.
async fn hang_up_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            drop(socket);
        }
    });
    (base, count)
}

#[tokio::test]
async fn a_connection_dropped_after_sending_repeats_chat_but_not_images() {
    let (base, connections) = hang_up_server().await;
    let h = Harness::new(config(&base));
    let err = h.image_err().await;
    assert!(
        matches!(err, OpenAiError::Connect { sent: true, .. }),
        "{err:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let err = h.enhance_err().await;
    assert!(
        matches!(err, OpenAiError::Connect { sent: true, .. }),
        "{err:?}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_refused_connection_is_retried_even_for_images() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let h = Harness::new(config(&base));
    let err = h.image_err().await;
    assert!(
        matches!(err, OpenAiError::Connect { sent: false, .. }),
        "{err:?}"
    );
    assert_eq!(h.metrics().openai_requests, 3);
    assert_eq!(h.retries("image"), 2);
    assert!(!err.to_string().contains(KEY));
}

fn server_error() -> ResponseTemplate {
    let body = json!({"error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error"}});
    answer(500, body)
}

/// Requests the mock received on `route`.
async fn count(server: &MockServer, route: &str) -> usize {
    let requests = received(server).await;
    requests.iter().filter(|r| r.url.path() == route).count()
}

#[tokio::test]
async fn five_failures_open_the_breaker_and_later_calls_fail_fast() {
    let server = MockServer::start().await;
    post(&server, IMAGES, server_error()).await;
    let once = RetryPolicy {
        attempts: 1,
        ..tiny_retries()
    };
    let h = Harness::with_policy(config(&server.uri()), once);
    for _ in 0..5 {
        let err = h.image_err().await;
        assert_eq!(err.status(), Some(500));
    }
    assert_eq!(h.breakers.image.snapshot().state, BreakerState::Open);
    let err = h.image_err().await;
    assert!(matches!(err, OpenAiError::BreakerOpen(_)));
    assert_eq!(
        err.to_string(),
        "image circuit breaker is OPEN after 5 consecutive failures (last: OpenAI API error \
         (status 500): The server had an error while processing your request.); try again later"
    );
    assert_eq!(received(&server).await.len(), 5);
    assert_eq!(h.metrics().openai_requests, 5);
}

/// The measured failure of the single shared breaker: images failing on every call while chat
/// succeeds. Each run enhances (one chat request) and then asks for its image.
#[tokio::test]
async fn a_failing_image_endpoint_opens_only_the_image_breaker() {
    let server = MockServer::start().await;
    post(&server, CHAT, chat_answer("a vivid fox")).await;
    post(&server, IMAGES, server_error()).await;
    let h = Harness::new(config(&server.uri()));

    let mut errors = Vec::new();
    for _ in 0..3 {
        assert_eq!(h.client.enhance("p", "a fox").await.unwrap(), "a vivid fox");
        errors.push(h.image_err().await);
    }
    // Run 1: 3 attempts. Run 2: 2 attempts make 5 consecutive failures, so its third attempt is
    // refused. Run 3: refused before sending anything.
    assert_eq!(count(&server, IMAGES).await, 5);
    assert_eq!(count(&server, CHAT).await, 3);
    assert_eq!(errors[0].status(), Some(500));
    for err in &errors[1..] {
        assert!(matches!(err, OpenAiError::BreakerOpen(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("image circuit breaker is OPEN after 5 consecutive failures (last: OpenAI API error (status 500)"),
            "{err}"
        );
    }
    let image = h.breakers.image.snapshot();
    assert_eq!((image.state, image.total_failures), (BreakerState::Open, 5));
    let chat = h.breakers.chat.snapshot();
    assert_eq!(
        (chat.state, chat.total_successes),
        (BreakerState::Closed, 3)
    );
    assert_eq!(chat.total_failures, 0);

    // Chat is still admitted while the image breaker is open.
    assert_eq!(h.client.enhance("p", "a fox").await.unwrap(), "a vivid fox");
    assert_eq!(count(&server, CHAT).await, 4);

    let text = h.metrics.render_text(&h.breakers.snapshot()).unwrap();
    for line in [
        r#"dalleserver_circuit_breaker_state{operation="chat",state="CLOSED"} 1"#,
        r#"dalleserver_circuit_breaker_state{operation="chat",state="OPEN"} 0"#,
        r#"dalleserver_circuit_breaker_state{operation="image",state="OPEN"} 1"#,
        r#"dalleserver_circuit_breaker_state{operation="image",state="CLOSED"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let m = h.metrics();
    assert_eq!(m.circuit_breaker_state, "OPEN");
    assert_eq!(m.circuit_breakers_by_operation["chat"].state, "CLOSED");
    assert_eq!(m.circuit_breakers_by_operation["image"].state, "OPEN");
}

#[tokio::test]
async fn the_rejection_names_a_refused_connection_without_the_key() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let once = RetryPolicy {
        attempts: 1,
        ..tiny_retries()
    };
    let h = Harness::with_policy(config(&base), once);
    for _ in 0..5 {
        let err = h.image_err().await;
        assert!(
            matches!(err, OpenAiError::Connect { sent: false, .. }),
            "{err:?}"
        );
    }
    let err = h.image_err().await.to_string();
    assert!(
        err.starts_with("image circuit breaker is OPEN after 5 consecutive failures (last: cannot reach OpenAI: "),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(err.ends_with("); try again later"), "{err}");
    assert!(!err.contains(KEY), "{err}");
    // A refused chat call is its own breaker's business.
    assert!(matches!(h.enhance_err().await, OpenAiError::Connect { .. }));
}

/// 408 and 504 mean the image request may have been carried out (and billed): one request,
/// however many attempts the policy allows. Chat may repeat them; it bills no image.
#[tokio::test]
async fn a_408_or_504_image_answer_is_never_repeated() {
    for status in [408, 504] {
        let server = MockServer::start().await;
        let body = json!({"error": {"message": "Request timed out.", "type": "timeout"}});
        post(&server, IMAGES, answer(status, body.clone())).await;
        post(&server, CHAT, answer(status, body)).await;
        let h = Harness::new(config(&server.uri()));
        let err = h.image_err().await;
        assert_eq!(err.status(), Some(status));
        assert_eq!(count(&server, IMAGES).await, 1, "{status}");
        assert_eq!(h.retries("image"), 0, "{status}");
        assert_eq!(h.enhance_err().await.status(), Some(status));
        assert_eq!(count(&server, CHAT).await, 3, "{status}");
        // Still a failure of the service: the image breaker counts it.
        assert_eq!(h.breakers.image.snapshot().consecutive_failures, 1);
    }
}

#[tokio::test]
async fn a_429_or_a_503_with_an_error_body_is_still_retried_for_images() {
    let answers = [
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "0")
            .set_body_json(json!({"error": {"message": "Rate limit reached", "type": "requests"}})),
        answer(
            503,
            json!({"error": {"message": "The engine is currently overloaded", "type": "server_error"}}),
        ),
    ];
    for reply in answers {
        let server = MockServer::start().await;
        post(&server, IMAGES, reply).await;
        let h = Harness::new(config(&server.uri()));
        h.image_err().await;
        assert_eq!(count(&server, IMAGES).await, 3);
        assert_eq!(h.retries("image"), 2);
    }
}

/// Production numbers (open after 5, half-open after 30 s, closed after 2), with the 30 s
/// skipped on paused time: the HTTP calls run on real time, the wait does not.
#[tokio::test]
async fn the_breaker_recovers_when_openai_does() {
    let server = MockServer::start().await;
    let once = RetryPolicy {
        attempts: 1,
        ..tiny_retries()
    };
    let h = Harness::with_policy(config(&server.uri()), once);
    Mock::given(method("POST"))
        .and(path(IMAGES))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(5)
        .mount(&server)
        .await;
    post(
        &server,
        IMAGES,
        image_url_answer("http://127.0.0.1:9/x.png"),
    )
    .await;
    for _ in 0..5 {
        assert!(h.client.request_image("p", "").await.is_err());
    }
    let breaker = &h.breakers.image;
    assert_eq!(breaker.snapshot().state, BreakerState::Open);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(breaker.snapshot().state, BreakerState::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(breaker.snapshot().state, BreakerState::HalfOpen);
    tokio::time::resume();
    h.client.request_image("p", "").await.unwrap();
    assert_eq!(
        breaker.snapshot().state,
        BreakerState::HalfOpen,
        "one success is not enough"
    );
    h.client.request_image("p", "").await.unwrap();
    assert_eq!(breaker.snapshot().state, BreakerState::Closed);
    assert_eq!(received(&server).await.len(), 7);
    assert_eq!(h.breakers.chat.snapshot().total_requests, 0);
}

#[tokio::test]
async fn downloads_need_a_success_status_and_a_body() {
    let server = MockServer::start().await;
    get(&server, "/gone.png", ResponseTemplate::new(404)).await;
    get(&server, "/empty.png", ResponseTemplate::new(200)).await;
    let h = Harness::new(config(&server.uri()));
    let url = |name: &str| format!("{}/{name}", server.uri());
    let err = h.client.download(&url("gone.png")).await.unwrap_err();
    assert_eq!(err.to_string(), "OpenAI API error (status 404): Not Found");
    let err = h.client.download(&url("empty.png")).await.unwrap_err();
    assert_eq!(err.to_string(), "downloaded image is empty");
    assert_eq!(received(&server).await.len(), 2);
}

/// A URL answer is already made and billed: the breaker opening between the image request
/// and its download must not lose it, and a failing storage host must not open the breaker.
#[tokio::test]
async fn downloads_bypass_the_breaker() {
    let server = MockServer::start().await;
    post(&server, IMAGES, ResponseTemplate::new(500)).await;
    get(
        &server,
        "/img.png",
        ResponseTemplate::new(200).set_body_bytes(PNG),
    )
    .await;
    get(&server, "/broken.png", ResponseTemplate::new(500)).await;
    let once = RetryPolicy {
        attempts: 1,
        ..tiny_retries()
    };
    let h = Harness::with_policy(config(&server.uri()), once);
    let url = |name: &str| format!("{}/{name}", server.uri());

    for _ in 0..5 {
        let err = h.client.download(&url("broken.png")).await.unwrap_err();
        assert_eq!(err.status(), Some(500));
    }
    for breaker in [&h.breakers.chat, &h.breakers.image] {
        let snap = breaker.snapshot();
        assert_eq!(snap.state, BreakerState::Closed);
        assert_eq!((snap.total_requests, snap.consecutive_failures), (0, 0));
    }

    for _ in 0..5 {
        h.image_err().await;
    }
    assert_eq!(h.breakers.image.snapshot().state, BreakerState::Open);
    assert_eq!(h.client.download(&url("img.png")).await.unwrap(), PNG);
    assert_eq!(h.breakers.image.snapshot().state, BreakerState::Open);
    assert!(matches!(h.image_err().await, OpenAiError::BreakerOpen(_)));
}

#[tokio::test]
async fn no_key_means_no_request() {
    let server = MockServer::start().await;
    let mut cfg = config(&server.uri());
    cfg.api_key = None;
    let h = Harness::new(cfg);
    assert!(matches!(h.enhance_err().await, OpenAiError::NoKey));
    assert!(matches!(h.image_err().await, OpenAiError::NoKey));
    assert!(received(&server).await.is_empty());
}

#[tokio::test]
async fn the_key_never_appears_in_errors_even_when_echoed() {
    let server = MockServer::start().await;
    let echo = json!({"error": {"message": format!("Incorrect API key provided: {KEY}."),
                                "code": "invalid_api_key"}});
    post(&server, CHAT, answer(401, echo)).await;
    let reply = ResponseTemplate::new(403).set_body_string(format!("forbidden for {KEY}"));
    post(&server, IMAGES, reply).await;
    let h = Harness::new(config(&server.uri()));
    let chat = h.enhance_err().await;
    let image = h.image_err().await;
    let texts = [
        chat.to_string(),
        format!("{chat:?}"),
        image.to_string(),
        format!("{image:?}"),
    ];
    for text in texts.iter().chain([&format!("{:?}", h.client)]) {
        assert!(!text.contains(KEY), "{text}");
    }
    // Each was answered once: 401 and 403 are not retried.
    assert_eq!(received(&server).await.len(), 2);
}
