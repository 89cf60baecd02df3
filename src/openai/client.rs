//! The OpenAI HTTP client: prompt enhancement (chat completions), image generation and the
//! download of a generated image.
//!
//! Every API attempt asks its operation's [`CircuitBreaker`] first (chat and image each have
//! their own, see [`Breakers`]) and reports its outcome back; failed attempts are retried per
//! [`RetryPolicy`]. Deliberate differences from the Go library: the orientation typo is fixed,
//! the image URL download has a timeout, a status check and a size limit, and error texts carry
//! no request-id prefix.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::breaker::{Admission, Breakers, CircuitBreaker};
use super::image_prompt;
use super::retry::{Operation, RetryPolicy, retry_after};
// The pure request shaping lives in the parent module; re-exported so `client::…` paths work too.
pub use super::{ImageParams, OpenAiError, Orientation, enhancement_system_prompt, image_params};
use crate::config::{ApiKey, OpenAiConfig};
use crate::metrics::Metrics;

/// Kept well under the per-attempt timeouts so a dead host is reported as "not sent" (retryable).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest raw error body quoted in an error message.
const MAX_ERROR_BODY_CHARS: usize = 512;
/// Largest response read into memory; a base64 high-quality PNG is a few MB.
const MAX_BODY_BYTES: usize = 64 << 20;

/// What an image request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageAnswer {
    /// A URL to fetch with [`OpenAiClient::download`].
    Url(String),
    /// The image itself (decoded from `b64_json`).
    Bytes(Vec<u8>),
}

/// What an image request produced, with what the provider said about it (for provenance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReceipt {
    pub answer: ImageAnswer,
    pub model: String,
    pub size: Option<&'static str>,
    pub quality: Option<&'static str>,
    /// `data[0].revised_prompt`, when the model rewrote the prompt.
    pub revised_prompt: Option<String>,
    /// The answer's `id`, when it has one.
    pub response_id: Option<String>,
    /// The answer's `created` (Unix seconds).
    pub created: Option<i64>,
}

/// An enhanced prompt and the chat completion that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enhanced {
    pub text: String,
    pub model: String,
    /// The completion's `id`.
    pub request_id: Option<String>,
}

/// Whether an attempt goes through a circuit breaker, and which.
#[derive(Debug, Clone, Copy)]
enum Guard<'a> {
    /// Admitted by this breaker (or refused with [`OpenAiError::BreakerOpen`]) and reported to it.
    Breaker(&'a CircuitBreaker),
    /// Neither admitted nor reported: the download of an image already made.
    Bypass,
}

/// What a dropped attempt tells the breaker it failed with.
const ABANDONED: &str = "the call was abandoned before OpenAI answered";

/// Reports an admitted attempt to its breaker exactly once. If the caller drops the future
/// mid-flight the attempt counts as failed, so a half-open probe slot is never leaked.
struct AttemptGuard<'a> {
    breaker: Option<&'a CircuitBreaker>,
    admission: Option<Admission>,
}

impl AttemptGuard<'_> {
    /// Reports the outcome: a failure the service is to blame for, or anything else.
    fn finish(mut self, service_failure: Option<&OpenAiError>) {
        if let (Some(breaker), Some(admission)) = (self.breaker, self.admission.take()) {
            match service_failure {
                Some(error) => breaker.failed(admission, &error.to_string()),
                None => breaker.succeeded(admission),
            }
        }
    }
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        if let (Some(breaker), Some(admission)) = (self.breaker, self.admission.take()) {
            breaker.failed(admission, ABANDONED);
        }
    }
}

/// The OpenAI client shared by every generation; cheap to clone.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    key: Option<ApiKey>,
    base_url: String,
    image_model: String,
    chat_model: String,
    image_timeout: Duration,
    enhance_timeout: Duration,
    /// One breaker per operation, shared with the app (which reports them).
    breakers: Breakers,
    metrics: Arc<Metrics>,
    retry: RetryPolicy,
    /// Response bodies being read at once (see [`BODY_READS`]).
    body_reads: Arc<tokio::sync::Semaphore>,
}

/// How many response bodies are read at the same time. Image answers are ~3 MB of base64;
/// when a burst of runs gets its images together, reading all of them at once held every body
/// in memory at the same moment. The others wait in their sockets' buffers meanwhile; waiting
/// for the answers themselves (the slow part) is never limited.
const BODY_READS: usize = 8;

impl OpenAiClient {
    /// A client for `config`, reporting to the shared breakers and metrics.
    pub fn new(
        config: &OpenAiConfig,
        breakers: Breakers,
        metrics: Arc<Metrics>,
    ) -> Result<Self, OpenAiError> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("dalleserver/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OpenAiError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenAiClient {
            http,
            key: config.api_key.clone(),
            base_url: config.base_url.trim_end_matches('/').to_string(),
            image_model: config.image_model.clone(),
            chat_model: config.chat_model.clone(),
            image_timeout: config.image_timeout,
            enhance_timeout: config.enhance_timeout,
            breakers,
            metrics,
            body_reads: Arc::new(tokio::sync::Semaphore::new(BODY_READS)),
            retry: RetryPolicy {
                base: config.retry_base,
                ..RetryPolicy::default()
            },
        })
    }

    /// The image model every image request names (what its price is looked up by).
    pub fn image_model(&self) -> &str {
        &self.image_model
    }

    /// Replaces the retry policy (by default the contract's, starting at `config.retry_base`).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Rewrites `user` (the base prompt) with the chat model; `system` is the persona and
    /// instruction ([`enhancement_system_prompt`]). An empty answer returns `user` unchanged.
    pub async fn enhance(&self, system: &str, user: &str) -> Result<String, OpenAiError> {
        self.enhance_traced(system, user).await.map(|e| e.text)
    }

    /// [`OpenAiClient::enhance`], with the model and the completion's id.
    pub async fn enhance_traced(&self, system: &str, user: &str) -> Result<Enhanced, OpenAiError> {
        let key = self.key.as_ref().ok_or(OpenAiError::NoKey)?;
        let mut body = json!({
            "model": self.chat_model,
            "seed": 1337,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        });
        // The gpt-5 family rejects any temperature but its default.
        if !self.chat_model.starts_with("gpt-5") {
            body["temperature"] = json!(0.2);
        }
        let body = to_json(&body)?;
        let url = format!("{}/chat/completions", self.base_url);
        tracing::debug!(model = %self.chat_model, prompt_chars = user.len(), "enhancing prompt");
        // Chat is `Operation::Enhance`, which may be repeated after an unknown outcome (a 408,
        // 504 or timeout after sending): see `Operation::repeatable`.
        let bytes = self
            .retry
            .run(Operation::Enhance, &self.metrics, || {
                self.exchange(
                    self.post(key, &url, &body),
                    self.enhance_timeout,
                    Guard::Breaker(&self.breakers.chat),
                )
            })
            .await?;
        let reply = parse(&bytes, "chat completion")?;
        let content = reply
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .filter(|content| !content.trim().is_empty());
        Ok(Enhanced {
            text: content.unwrap_or(user).to_string(),
            model: self.chat_model.clone(),
            request_id: reply.get("id").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// Asks for one image of `prompt`; size follows the orientation of `orientation_text`
    /// (the enhanced prompt). Never retried once the request may have been received.
    pub async fn request_image(
        &self,
        prompt: &str,
        orientation_text: &str,
    ) -> Result<ImageAnswer, OpenAiError> {
        self.request_image_traced(prompt, orientation_text)
            .await
            .map(|r| r.answer)
    }

    /// [`OpenAiClient::request_image`], with what was asked and what the answer said.
    pub async fn request_image_traced(
        &self,
        prompt: &str,
        orientation_text: &str,
    ) -> Result<ImageReceipt, OpenAiError> {
        let key = self.key.as_ref().ok_or(OpenAiError::NoKey)?;
        let model = self.image_model.as_str();
        let params = image_params(model, orientation_text);
        if params.size.is_none() {
            tracing::warn!(
                model,
                "unknown image model; letting the server choose the size"
            );
        }
        let prompt = image_prompt(model, prompt);
        let mut body = json!({"prompt": prompt, "n": 1, "model": model});
        let optional = [
            ("size", params.size),
            ("quality", params.quality),
            ("style", params.style),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                body[name] = json!(value);
            }
        }
        let body = to_json(&body)?;
        let url = format!("{}/images/generations", self.base_url);
        tracing::info!(
            model,
            size = params.size,
            quality = params.quality,
            prompt_chars = prompt.len(),
            "requesting image"
        );
        let bytes = self
            .retry
            .run(Operation::Image, &self.metrics, || {
                self.exchange(
                    self.post(key, &url, &body),
                    self.image_timeout,
                    Guard::Breaker(&self.breakers.image),
                )
            })
            .await?;
        let (answer, about) = image_answer(&bytes)?;
        Ok(ImageReceipt {
            answer,
            model: model.to_string(),
            size: params.size,
            quality: params.quality,
            revised_prompt: about.revised_prompt,
            response_id: about.id,
            created: about.created,
        })
    }

    /// Fetches a generated image. The API key is not sent: the URL is already signed and may
    /// point at another host. No breaker refuses or counts it: the image is already
    /// made (and billed), so fetching it is never a wasted call, and the storage host's health
    /// says nothing about the API's.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>, OpenAiError> {
        let bytes = self
            .retry
            .run(Operation::Download, &self.metrics, || {
                self.exchange(self.http.get(url), self.image_timeout, Guard::Bypass)
            })
            .await?;
        if bytes.is_empty() {
            return Err(OpenAiError::Decode("downloaded image is empty".into()));
        }
        Ok(bytes)
    }

    fn post(&self, key: &ApiKey, url: &str, body: &[u8]) -> reqwest::RequestBuilder {
        // `bearer_auth` marks the header sensitive, so it never shows in Debug output.
        self.http
            .post(url)
            .bearer_auth(key.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
    }

    /// One attempt: breaker admission (when `guard` names a breaker), the request, the whole
    /// body, the breaker and metric reports. Returns the body of a 2xx answer.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
        guard: Guard<'_>,
    ) -> Result<Vec<u8>, OpenAiError> {
        // Build first: a malformed URL is our fault, not the service's.
        let request = request
            .timeout(timeout)
            .build()
            .map_err(|e| OpenAiError::Setup(format!("invalid request: {}", e.without_url())))?;
        let (breaker, admission) = match guard {
            Guard::Breaker(breaker) => {
                let admission = breaker.admit().map_err(|rejected| {
                    tracing::debug!(reason = %rejected, "OpenAI call refused by the circuit breaker");
                    OpenAiError::BreakerOpen(rejected)
                })?;
                (Some(breaker), Some(admission))
            }
            Guard::Bypass => (None, None),
        };
        let guard = AttemptGuard { breaker, admission };
        let host = request.url().host_str().unwrap_or_default().to_string();
        let started = tokio::time::Instant::now();
        let result = self.send(request, timeout).await;
        guard.finish(result.as_ref().err().filter(|e| e.is_service_failure()));
        self.metrics.record_openai(
            result.is_ok(),
            result.as_ref().is_err_and(OpenAiError::is_timeout),
        );
        tracing::debug!(
            host,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            status = result.as_ref().err().and_then(OpenAiError::status),
            ok = result.is_ok(),
            "OpenAI attempt finished"
        );
        result
    }

    async fn send(
        &self,
        request: reqwest::Request,
        timeout: Duration,
    ) -> Result<Vec<u8>, OpenAiError> {
        let mut response = self
            .http
            .execute(request)
            .await
            .map_err(|e| self.transport_error(e, timeout))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            // The status is what matters; a body that cannot be read just makes a vaguer message.
            let body = response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default();
            return Err(self.api_error(status.as_u16(), &body, retry_after));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        // The semaphore is never closed; if it were, reading anyway is harmless.
        let _reading = self.body_reads.acquire().await.ok();
        // Sized from Content-Length when known: a 3 MB image answer then needs no regrowth.
        let expected = response.content_length().unwrap_or(0) as usize;
        let mut body = Vec::with_capacity(expected.min(MAX_BODY_BYTES));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e, timeout))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Classifies a transport failure. Only a connect error proves the request never left;
    /// anything later may have reached the server.
    fn transport_error(&self, error: reqwest::Error, timeout: Duration) -> OpenAiError {
        // Signed download URLs carry credentials in the query string: keep them out of messages.
        let error = error.without_url();
        let sent = !error.is_connect();
        if error.is_timeout() {
            let after = if sent {
                timeout
            } else {
                CONNECT_TIMEOUT.min(timeout)
            };
            return OpenAiError::Timeout { sent, after };
        }
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        OpenAiError::Connect {
            sent,
            message: self.redact(message),
        }
    }

    /// An API error from a non-2xx answer: OpenAI's own message when the body has one, else
    /// the start of the raw body.
    fn api_error(&self, status: u16, body: &[u8], retry_after: Option<Duration>) -> OpenAiError {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let code = error.and_then(|e| match e.get("code") {
            Some(Value::String(code)) if !code.is_empty() => Some(code.clone()),
            Some(Value::Number(code)) => Some(code.to_string()),
            _ => e.get("type").and_then(Value::as_str).map(str::to_string),
        });
        let message = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .filter(|m| !m.trim().is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                let raw = String::from_utf8_lossy(body);
                let raw = raw.trim();
                if raw.is_empty() {
                    reqwest::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("empty response body")
                        .to_string()
                } else {
                    raw.chars().take(MAX_ERROR_BODY_CHARS).collect()
                }
            });
        OpenAiError::Api {
            status,
            code,
            message: self.redact(message),
            retry_after,
        }
    }

    /// Servers may echo the key back (a 401 quoting it, say); it must not reach logs or users.
    fn redact(&self, text: String) -> String {
        match &self.key {
            Some(key) if text.contains(key.expose()) => text.replace(key.expose(), "[redacted]"),
            _ => text,
        }
    }
}

fn to_json(body: &Value) -> Result<Vec<u8>, OpenAiError> {
    serde_json::to_vec(body).map_err(|e| OpenAiError::Setup(format!("cannot encode request: {e}")))
}

/// What an image answer says besides the image.
#[derive(Debug, Default)]
struct AboutImage {
    revised_prompt: Option<String>,
    id: Option<String>,
    created: Option<i64>,
}

/// The first image of an image-generation answer.
fn image_answer(bytes: &[u8]) -> Result<(ImageAnswer, AboutImage), OpenAiError> {
    // The usual answer is read in place: its multi-megabyte `b64_json` borrowed from the body,
    // not copied into a `Value` first. Any other shape takes the general path below.
    if let Ok(reply) = serde_json::from_slice::<ImageReply<'_>>(bytes) {
        let first = reply
            .data
            .and_then(|data| data.into_iter().next())
            .ok_or_else(|| OpenAiError::Decode("no images returned".into()))?;
        let about = AboutImage {
            revised_prompt: first.revised_prompt.map(|p| p.into_owned()),
            id: reply.id,
            created: reply.created,
        };
        return Ok((image_fields(first.url, first.b64_json)?, about));
    }
    let reply = parse(bytes, "image generation")?;
    let first = reply
        .pointer("/data/0")
        .ok_or_else(|| OpenAiError::Decode("no images returned".into()))?;
    let field = |name| first.get(name).and_then(Value::as_str);
    let about = AboutImage {
        revised_prompt: field("revised_prompt").map(str::to_string),
        id: reply.get("id").and_then(Value::as_str).map(str::to_string),
        created: reply.get("created").and_then(Value::as_i64),
    };
    Ok((image_fields(field("url"), field("b64_json"))?, about))
}

/// The answer's `data[0]` as far as it is read.
#[derive(serde::Deserialize)]
struct ImageReply<'a> {
    #[serde(default, borrow)]
    data: Option<Vec<ImageDatum<'a>>>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    created: Option<i64>,
}

/// Strings borrowed from the body: one with escapes fails this parse and takes the general
/// path (base64 and URLs normally have none).
#[derive(serde::Deserialize)]
struct ImageDatum<'a> {
    #[serde(default, borrow)]
    url: Option<&'a str>,
    #[serde(default, borrow)]
    b64_json: Option<&'a str>,
    /// Free text, so it may have escapes: borrowed when it has none.
    #[serde(default, borrow)]
    revised_prompt: Option<std::borrow::Cow<'a, str>>,
}

/// A URL when there is one, else the decoded `b64_json`.
fn image_fields(url: Option<&str>, b64_json: Option<&str>) -> Result<ImageAnswer, OpenAiError> {
    fn present(text: Option<&str>) -> Option<&str> {
        text.map(str::trim).filter(|text| !text.is_empty())
    }
    if let Some(url) = present(url) {
        return Ok(ImageAnswer::Url(url.to_string()));
    }
    match present(b64_json) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(ImageAnswer::Bytes)
            .map_err(|e| OpenAiError::Decode(format!("image response has invalid base64: {e}"))),
        None => Err(OpenAiError::Decode(
            "image response missing both url and b64_json".into(),
        )),
    }
}

fn parse(bytes: &[u8], what: &str) -> Result<Value, OpenAiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| OpenAiError::Decode(format!("invalid {what} response: {e}")))
}

fn too_large() -> OpenAiError {
    OpenAiError::Decode(format!("response is larger than {MAX_BODY_BYTES} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> OpenAiClient {
        let config = OpenAiConfig {
            api_key: ApiKey::new("sk-unit-secret"),
            base_url: "http://127.0.0.1:9".into(),
            skip_image: false,
            no_enhance: false,
            image_model: "gpt-image-2".into(),
            chat_model: "gpt-5.5".into(),
            image_timeout: Duration::from_secs(1),
            enhance_timeout: Duration::from_secs(1),
            retry_base: Duration::from_millis(10),
        };
        let metrics = Arc::new(Metrics::new().unwrap());
        OpenAiClient::new(&config, Breakers::default(), metrics).unwrap()
    }

    #[test]
    fn api_errors_prefer_the_json_message_then_the_raw_body() {
        let c = client();
        let body = br#"{"error":{"message":"Rejected by the safety system","code":"content_policy_violation"}}"#;
        let err = c.api_error(400, body, None);
        assert_eq!(
            err.to_string(),
            "OpenAI API error (status 400): Rejected by the safety system"
        );
        assert!(
            matches!(&err, OpenAiError::Api { code: Some(code), .. } if code == "content_policy_violation")
        );
        let long = "x".repeat(2000);
        let err = c.api_error(502, long.as_bytes(), None);
        assert_eq!(
            err.to_string(),
            format!("OpenAI API error (status 502): {}", "x".repeat(512))
        );
        let err = c.api_error(503, b"", Some(Duration::from_secs(3)));
        assert_eq!(
            err.to_string(),
            "OpenAI API error (status 503): Service Unavailable"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn echoed_keys_are_redacted() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-unit-secret","type":"invalid_request_error"}}"#;
        let err = client().api_error(401, body, None);
        assert!(!err.to_string().contains("sk-unit-secret"), "{err}");
        assert!(err.to_string().ends_with("provided: [redacted]"));
        assert!(!format!("{:?}", client()).contains("sk-unit-secret"));
    }

    #[test]
    fn image_answers_in_every_shape() {
        let bytes = |a: &ImageAnswer| match a {
            ImageAnswer::Bytes(b) => b.clone(),
            ImageAnswer::Url(u) => u.as_bytes().to_vec(),
        };
        let ok = |body: &str| image_answer(body.as_bytes()).map(|(a, _)| bytes(&a));
        let err = |body: &str| image_answer(body.as_bytes()).unwrap_err().to_string();
        // "aGk/" is base64 for "hi?"; the second form escapes its slash, as JSON allows.
        assert_eq!(
            ok(r#"{"data":[{"b64_json":"aGk/"}],"created":1}"#).unwrap(),
            b"hi?"
        );
        assert_eq!(ok(r#"{"data":[{"b64_json":"aGk\/"}]}"#).unwrap(), b"hi?");
        assert_eq!(
            ok(r#"{"data":[{"url":" https://x/y.png ","b64_json":"aGk/"}]}"#).unwrap(),
            b"https://x/y.png"
        );
        assert_eq!(
            ok(r#"{"data":[{"url":7,"b64_json":"aGk/"}]}"#).unwrap(),
            b"hi?"
        );
        for empty in [
            r#"{"data":[]}"#,
            r#"{"data":null}"#,
            "{}",
            r#"{"data":{"x":1}}"#,
        ] {
            assert_eq!(err(empty), "no images returned", "{empty}");
        }
        assert_eq!(
            err(r#"{"data":[{"url":"","b64_json":null}]}"#),
            "image response missing both url and b64_json"
        );
        assert!(err(r#"{"data":[{"b64_json":"@@@"}]}"#).contains("invalid base64"));
        assert!(err("not json").contains("invalid image generation response"));
    }

    #[test]
    fn image_answers_say_what_the_provider_revised() {
        for body in [
            r#"{"id":"img-1","created":7,"data":[{"b64_json":"aGk/","revised_prompt":"a \"fox\""}]}"#,
            // An unexpected shape (`url` a number) takes the general path: same fields.
            r#"{"id":"img-1","created":7,"data":[{"url":7,"b64_json":"aGk/","revised_prompt":"a \"fox\""}]}"#,
        ] {
            let (_, about) = image_answer(body.as_bytes()).unwrap();
            assert_eq!(about.revised_prompt.as_deref(), Some("a \"fox\""), "{body}");
            assert_eq!(about.id.as_deref(), Some("img-1"));
            assert_eq!(about.created, Some(7));
        }
        let (_, about) = image_answer(br#"{"data":[{"b64_json":"aGk/"}]}"#).unwrap();
        assert!(about.revised_prompt.is_none() && about.id.is_none() && about.created.is_none());
    }
}
