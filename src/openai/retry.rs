//! Retry with exponential backoff for OpenAI calls (upstream's numbers: 3 attempts, 2 s doubling).
//!
//! Unlike the Go helper, which retried every error, only failures that a second attempt can fix
//! are retried, and never an image request whose outcome is unknown (a timeout or dropped
//! connection after sending, a 408 or a 504): it may already have been billed. Retries are
//! counted in the metrics (the Go server never counted them). The loop
//! returns the last error itself rather than wrapping it, so the user still reads
//! `OpenAI API error (status N): …`.
//!
//! Each wait is also told to the [`RetryListener`] of the task making the call, if it has one
//! ([`reporting_retries`]), so a run's progress can say it is waiting to retry. The client is
//! shared by every run and a run is one task, so the listener is scoped to the task rather
//! than passed through every client method.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;

use super::OpenAiError;
use crate::metrics::Metrics;

/// Share of the computed delay that jitter may add or remove (±25 %).
const JITTER: f64 = 0.25;

/// How many times to try and how long to wait in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (at least one is always made).
    pub attempts: u32,
    /// Wait after the first failed attempt, before jitter.
    pub base: Duration,
    /// Longest wait before jitter; also caps a server's `Retry-After`.
    pub max: Duration,
    /// Growth of the wait from one failed attempt to the next.
    pub factor: f64,
}

impl Default for RetryPolicy {
    /// The contract's numbers: 3 attempts, 2 s doubling up to 60 s.
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            factor: 2.0,
        }
    }
}

/// The kind of call being retried: it names the retry metric and decides whether a call whose
/// outcome is unknown may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Chat completion (prompt enhancement).
    Enhance,
    /// Image generation.
    Image,
    /// Download of a generated image.
    Download,
}

impl Operation {
    /// The `operation` label of the retry metric.
    pub fn label(self) -> &'static str {
        match self {
            Operation::Enhance => "enhance",
            Operation::Image => "image",
            Operation::Download => "download",
        }
    }

    /// Whether repeating a call that may have reached the server is harmless (this decides the
    /// fate of a timeout or dropped connection after sending, and of a 408 or 504). Image
    /// generation is not: a second request may produce, and bill, a second image. A chat
    /// completion is: a repeat costs a few tokens and leaves nothing behind, and giving up
    /// would fail the whole run over one slow answer. A download fetches an image already
    /// made, so repeating it is free.
    pub fn repeatable(self) -> bool {
        !matches!(self, Operation::Image)
    }
}

/// A wait between two attempts, as a [`RetryListener`] is told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryWait {
    pub operation: Operation,
    /// The attempt that will run after the wait (2 for the first retry), 1-based.
    pub next_attempt: u32,
    /// Attempts allowed in total.
    pub attempts: u32,
    pub wait: Duration,
    /// Why the previous attempt failed (the error's text).
    pub reason: String,
}

/// Told of each retry wait when it starts (`Some`) and when the next attempt starts (`None`).
pub type RetryListener = Arc<dyn Fn(Option<&RetryWait>) + Send + Sync>;

tokio::task_local! {
    static LISTENER: RetryListener;
}

/// Runs `future` with `listener` told of the retry waits of every OpenAI call it makes.
pub async fn reporting_retries<F: Future>(listener: RetryListener, future: F) -> F::Output {
    LISTENER.scope(listener, future).await
}

/// Tells the current task's listener, if there is one.
fn tell(wait: Option<&RetryWait>) {
    let _ = LISTENER.try_with(|listener| listener(wait));
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `base · factor^(attempt−1)`
    /// capped at `max`, moved by up to ±25 % according to `jitter_unit` (0 → −25 %, 0.5 → none,
    /// 1 → +25 %), and never below `base / 2`.
    pub fn backoff(&self, attempt: u32, jitter_unit: f64) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let max = self.max.as_secs_f64();
        let raw = (self.base.as_secs_f64() * self.factor.powi(exponent)).min(max);
        // NaN or infinity (a silly factor) degrades to the cap rather than panicking below.
        let delay = if raw.is_finite() { raw } else { max };
        let unit = if jitter_unit.is_finite() {
            jitter_unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let jittered = delay * (1.0 + JITTER * (2.0 * unit - 1.0));
        let floor = self.base.as_secs_f64() / 2.0;
        Duration::try_from_secs_f64(jittered.max(floor)).unwrap_or(self.max)
    }

    /// How long to wait after a failed attempt: the server's `Retry-After` when it sent one
    /// (capped at `max`), else the jittered backoff.
    fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(after) => after.min(self.max),
            None => self.backoff(attempt, jitter_unit()),
        }
    }

    /// Runs `attempt` until it succeeds, fails in a way a retry cannot fix, or the attempts are
    /// used up; returns the last error unchanged. Each retry is logged and counted.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        operation: Operation,
        metrics: &Metrics,
        mut attempt: F,
    ) -> Result<T, OpenAiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OpenAiError>>,
    {
        let attempts = self.attempts.max(1);
        let mut number = 1;
        loop {
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if number >= attempts || !error.is_retryable(operation.repeatable()) {
                return Err(error);
            }
            let wait = self.wait(number, error.retry_after());
            tracing::warn!(
                operation = operation.label(),
                attempt = number,
                attempts,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "OpenAI call failed; retrying"
            );
            metrics.record_retry(operation.label());
            tell(Some(&RetryWait {
                operation,
                next_attempt: number + 1,
                attempts,
                wait,
                reason: error.to_string(),
            }));
            tokio::time::sleep(wait).await;
            tell(None);
            number += 1;
        }
    }
}

/// A uniform number in `[0, 1)` for jitter. Backoff jitter only has to de-synchronise clients,
/// so the random bits of a v4 UUID (the OS generator) are plenty and need no extra dependency.
fn jitter_unit() -> f64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    // Bytes 10..16 carry no version or variant bits: 48 uniformly random bits.
    let bits = bytes[10..16]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    bits as f64 / (1u64 << 48) as f64
}

/// Parses a `Retry-After` value: whole seconds, or an HTTP date (a date in the past means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait a 429 or 503 asks for: OpenAI's `retry-after-ms` header, else `Retry-After`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    text("retry-after-ms")
        .and_then(parse_retry_after_ms)
        .or_else(|| parse_retry_after(text("retry-after")?, SystemTime::now()))
}

/// Parses OpenAI's non-standard `retry-after-ms` header (milliseconds, possibly fractional).
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let millis: f64 = value.trim().parse().ok()?;
    (millis.is_finite() && millis >= 0.0).then(|| Duration::from_secs_f64(millis / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn backoff_doubles_from_two_seconds_and_caps_at_sixty() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, 0.5), Duration::from_secs(2));
        assert_eq!(p.backoff(2, 0.5), Duration::from_secs(4));
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(8));
        assert_eq!(p.backoff(6, 0.5), Duration::from_secs(60));
        assert_eq!(p.backoff(40, 0.5), Duration::from_secs(60));
        assert_eq!(p.backoff(u32::MAX, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn jitter_moves_the_delay_by_up_to_a_quarter() {
        let p = RetryPolicy::default();
        assert!((secs(p.backoff(2, 0.0)) - 3.0).abs() < 1e-9);
        assert!((secs(p.backoff(2, 1.0)) - 5.0).abs() < 1e-9);
        assert!((secs(p.backoff(2, 0.75)) - 4.5).abs() < 1e-9);
        assert!((secs(p.backoff(6, 1.0)) - 75.0).abs() < 1e-9);
        // Out-of-range units are clamped rather than trusted.
        assert_eq!(p.backoff(2, 7.0), p.backoff(2, 1.0));
        assert_eq!(p.backoff(2, f64::NAN), Duration::from_secs(4));
    }

    #[test]
    fn backoff_never_drops_below_half_the_base() {
        let p = RetryPolicy {
            attempts: 3,
            base: Duration::from_secs(2),
            max: Duration::from_secs(1),
            factor: 2.0,
        };
        assert_eq!(p.backoff(1, 0.0), Duration::from_secs(1));
        let shrinking = RetryPolicy {
            factor: 0.1,
            ..RetryPolicy::default()
        };
        assert_eq!(shrinking.backoff(3, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(
            parse_retry_after_ms("1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after_ms("2.5"),
            Some(Duration::from_micros(2500))
        );
        assert_eq!(parse_retry_after_ms("-1"), None);
    }

    #[test]
    fn retry_after_ms_header_wins_over_retry_after() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "4".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(4)));
        headers.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        headers.insert("retry-after-ms", "junk".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(4)));
    }

    #[test]
    fn retry_after_is_capped_at_max() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
        assert_eq!(p.wait(1, Some(Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn jitter_units_stay_in_range() {
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    fn api(status: u16) -> OpenAiError {
        OpenAiError::Api {
            status,
            code: None,
            message: "boom".into(),
            retry_after: None,
        }
    }

    async fn count_attempts(operation: Operation, error: fn() -> OpenAiError) -> (u32, Duration) {
        let metrics = Metrics::new().unwrap();
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let result: Result<(), _> = RetryPolicy::default()
            .run(operation, &metrics, || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(error()) }
            })
            .await;
        assert!(result.is_err());
        (calls.load(Ordering::SeqCst), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn server_errors_are_tried_three_times_with_growing_waits() {
        let (calls, elapsed) = count_attempts(Operation::Image, || api(503)).await;
        assert_eq!(calls, 3);
        // 2 s and 4 s, each ±25 %.
        assert!(elapsed >= Duration::from_millis(4500), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(7500), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_and_unknown_image_outcomes_are_not_retried() {
        assert_eq!(count_attempts(Operation::Enhance, || api(400)).await.0, 1);
        assert_eq!(count_attempts(Operation::Image, || api(401)).await.0, 1);
        let sent_timeout = || OpenAiError::Timeout {
            sent: true,
            after: Duration::from_secs(1),
        };
        assert_eq!(count_attempts(Operation::Image, sent_timeout).await.0, 1);
        assert_eq!(count_attempts(Operation::Enhance, sent_timeout).await.0, 3);
        assert_eq!(count_attempts(Operation::Download, sent_timeout).await.0, 3);
        let refused = || OpenAiError::Connect {
            sent: false,
            message: "refused".into(),
        };
        assert_eq!(count_attempts(Operation::Image, refused).await.0, 3);
        let refused_by_breaker = || {
            OpenAiError::BreakerOpen(crate::openai::breaker::Rejected::ProbeInFlight {
                operation: crate::openai::breaker::Operation::Image,
            })
        };
        assert_eq!(
            count_attempts(Operation::Image, refused_by_breaker).await.0,
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_s_listener_hears_each_wait_and_the_attempt_after_it() {
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = heard.clone();
        let listener: RetryListener = Arc::new(move |wait: Option<&RetryWait>| {
            let at = tokio::time::Instant::now();
            log.lock().unwrap().push((at, wait.cloned()));
        });
        let start = tokio::time::Instant::now();
        let metrics = Metrics::new().unwrap();
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            max: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let retried = policy.run(Operation::Image, &metrics, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err(OpenAiError::Api {
                        status: 429,
                        code: None,
                        message: "boom".into(),
                        retry_after: Some(Duration::from_secs(3)),
                    }),
                    _ => Ok(()),
                }
            }
        });
        reporting_retries(listener, retried).await.unwrap();
        let heard = heard.lock().unwrap().clone();
        let wait = RetryWait {
            operation: Operation::Image,
            next_attempt: 2,
            attempts: 3,
            wait: Duration::from_secs(3),
            reason: api(429).to_string(),
        };
        let expected = vec![(start, Some(wait)), (start + Duration::from_secs(3), None)];
        assert_eq!(heard, expected);
        // Without a listener the loop works the same.
        assert_eq!(count_attempts(Operation::Image, || api(503)).await.0, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_408_or_504_is_repeated_for_chat_but_never_for_an_image() {
        assert_eq!(count_attempts(Operation::Image, || api(408)).await.0, 1);
        assert_eq!(count_attempts(Operation::Image, || api(504)).await.0, 1);
        assert_eq!(count_attempts(Operation::Enhance, || api(408)).await.0, 3);
        assert_eq!(count_attempts(Operation::Enhance, || api(504)).await.0, 3);
        assert_eq!(count_attempts(Operation::Download, || api(504)).await.0, 3);
        // Answers that the request was not carried out stay retryable for images.
        assert_eq!(count_attempts(Operation::Image, || api(429)).await.0, 3);
        assert_eq!(count_attempts(Operation::Image, || api(502)).await.0, 3);
    }
}
