//! Prometheus metrics in a registry owned by the app (no global registry), keeping the Go
//! server's series names but feeding them from real events, plus the upstream JSON snapshot
//! used by `/metrics?format=json` and `/errors`.
//!
//! Counters are the single source of truth: the JSON snapshot reads them back rather than
//! keeping a second tally. Only the upstream response-time figures (min/max/p95/p99 over the
//! last 1 000 requests) need their own small window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;

use crate::openai::breaker::{BreakerState, BreakersSnapshot};

const PREFIX: &str = "dalleserver";
/// Response-time samples kept for the upstream percentile figures.
const WINDOW: usize = 1000;
/// Upstream reports percentiles only once this many samples exist.
const MIN_SAMPLES_FOR_PERCENTILES: usize = 20;
/// OpenAI operations that can be retried; their series exist (at 0) from the start.
pub const RETRY_OPERATIONS: [&str; 3] = ["enhance", "image", "download"];
/// Generation outcomes; their series exist (at 0) from the start.
pub const OUTCOMES: [&str; 2] = ["completed", "failed"];

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    errors: IntCounter,
    retries: IntCounterVec,
    openai_requests: IntCounter,
    openai_errors: IntCounter,
    openai_timeouts: IntCounter,
    file_operations: IntCounter,
    file_operation_errors: IntCounter,
    breaker_state: IntGaugeVec,
    error_code: IntCounterVec,
    error_endpoint: IntCounterVec,
    request_duration: HistogramVec,
    /// Per-phase generation durations (fed by the generation pipeline).
    pub phase_duration: HistogramVec,
    /// Generations currently running.
    pub generations_in_flight: IntGauge,
    /// Generations finished, by outcome (`completed`, `failed`).
    pub generations: IntCounterVec,
    /// `?generate=1` requests answered from an existing image.
    pub cache_hits: IntCounter,
    /// Runs refused because their image would exceed a spending cap.
    pub budget_refusals: IntCounter,
    spend: CounterVec,
    budget_remaining: GaugeVec,
    /// Requests refused 401 for want of a valid API key (missing and wrong alike).
    pub auth_failures: IntCounter,
    /// Runs refused 429 by a rate limit, by `scope` (`key`, `anonymous`).
    rate_limited: IntCounterVec,
    ledger: Mutex<Ledger>,
}

#[derive(Debug)]
struct Ledger {
    count: u64,
    sum_ms: u64,
    min_ms: u64,
    max_ms: u64,
    window: VecDeque<u64>,
    last_updated: SystemTime,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            count: 0,
            sum_ms: 0,
            min_ms: i64::MAX as u64,
            max_ms: 0,
            window: VecDeque::with_capacity(WINDOW),
            last_updated: SystemTime::now(),
        }
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(format!("{PREFIX}_{name}"), help))?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Creates the series for each label value so they are exported (at 0) before first use.
fn labelled(vec: IntCounterVec, values: &[&str]) -> IntCounterVec {
    for value in values {
        vec.with_label_values(&[value]);
    }
    vec
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(format!("{PREFIX}_{name}"), help).buckets(buckets),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Registers every series in a fresh registry.
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let up = IntGauge::with_opts(Opts::new(
            format!("{PREFIX}_up"),
            "1 while the server is running",
        ))?;
        up.set(1);
        r.register(Box::new(up))?;
        let breaker_state = IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}_circuit_breaker_state"),
                "OpenAI circuit breaker state per operation: 1 for the current state, 0 for the others",
            ),
            &["operation", "state"],
        )?;
        r.register(Box::new(breaker_state.clone()))?;
        let generations_in_flight = IntGauge::with_opts(Opts::new(
            format!("{PREFIX}_generations_in_flight"),
            "Generations currently running",
        ))?;
        r.register(Box::new(generations_in_flight.clone()))?;
        let spend = CounterVec::new(
            Opts::new(
                format!("{PREFIX}_spend_usd_total"),
                "US dollars spent on image requests (counted when each is sent), by image model",
            ),
            &["model"],
        )?;
        r.register(Box::new(spend.clone()))?;
        let budget_remaining = GaugeVec::new(
            Opts::new(
                format!("{PREFIX}_budget_remaining_usd"),
                "US dollars left under the spending cap of the period (day or month, UTC), after spend and reservations; +Inf without a cap",
            ),
            &["period"],
        )?;
        r.register(Box::new(budget_remaining.clone()))?;

        Ok(Metrics {
            errors: counter(
                &r,
                "errors_total",
                "Responses with status >= 400 plus failed generations",
            )?,
            retries: labelled(
                counter_vec(
                    &r,
                    "retries_total",
                    "Retried OpenAI calls, by operation",
                    &["operation"],
                )?,
                &RETRY_OPERATIONS,
            ),
            openai_requests: counter(&r, "openai_requests_total", "Requests sent to OpenAI")?,
            openai_errors: counter(&r, "openai_errors_total", "OpenAI requests that failed")?,
            openai_timeouts: counter(
                &r,
                "openai_timeouts_total",
                "OpenAI requests that timed out",
            )?,
            file_operations: counter(
                &r,
                "file_operations_total",
                "Artifact file writes and removals",
            )?,
            file_operation_errors: counter(
                &r,
                "file_operation_errors_total",
                "Artifact file operations that failed",
            )?,
            error_code: counter_vec(&r, "error_code_total", "Errors by code", &["code"])?,
            error_endpoint: counter_vec(
                &r,
                "error_endpoint_total",
                "Errors by endpoint",
                &["endpoint"],
            )?,
            request_duration: histogram_vec(
                &r,
                "http_request_duration_seconds",
                "HTTP request latency",
                &["method", "endpoint", "status"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ],
            )?,
            phase_duration: histogram_vec(
                &r,
                "generation_phase_duration_seconds",
                "Time spent in each generation phase",
                &["phase"],
                vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                ],
            )?,
            generations: labelled(
                counter_vec(
                    &r,
                    "generations_total",
                    "Finished generations, by outcome",
                    &["outcome"],
                )?,
                &OUTCOMES,
            ),
            cache_hits: counter(
                &r,
                "cache_hits_total",
                "Generate requests answered from an existing image",
            )?,
            budget_refusals: counter(
                &r,
                "budget_refusals_total",
                "Runs refused because their image would exceed a spending cap",
            )?,
            spend,
            budget_remaining,
            auth_failures: counter(
                &r,
                "auth_failures_total",
                "Requests refused 401 because they needed an API key and had no valid one",
            )?,
            rate_limited: labelled(
                counter_vec(
                    &r,
                    "rate_limited_total",
                    "Runs refused 429 because the caller's rate limit on run starts was reached, by scope (key or anonymous)",
                    &["scope"],
                )?,
                &crate::limits::Scope::ALL.map(crate::limits::Scope::as_str),
            ),
            generations_in_flight,
            breaker_state,
            ledger: Mutex::new(Ledger::new()),
            registry: r,
        })
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one finished HTTP request. `status >= 400` also counts as an error under the
    /// status-derived code the Go server used, so dashboards built for the Go server keep working.
    pub fn observe_request(
        &self,
        method: &str,
        endpoint: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.request_duration
            .with_label_values(&[method, endpoint, class])
            .observe(elapsed.as_secs_f64());
        if status >= 400 {
            self.record_error(status_code_name(status), endpoint);
        }
        let ms = elapsed.as_millis() as u64;
        let mut l = self.ledger();
        l.count += 1;
        l.sum_ms += ms;
        l.min_ms = l.min_ms.min(ms);
        l.max_ms = l.max_ms.max(ms);
        if l.window.len() == WINDOW {
            l.window.pop_front();
        }
        l.window.push_back(ms);
        l.last_updated = SystemTime::now();
    }

    /// Counts one error under `code` at `endpoint`.
    pub fn record_error(&self, code: &str, endpoint: &str) {
        self.errors.inc();
        self.error_code.with_label_values(&[code]).inc();
        self.error_endpoint.with_label_values(&[endpoint]).inc();
        self.ledger().last_updated = SystemTime::now();
    }

    /// Counts a retried OpenAI call.
    pub fn record_retry(&self, operation: &str) {
        self.retries.with_label_values(&[operation]).inc();
    }

    /// Counts one OpenAI request and how it ended.
    pub fn record_openai(&self, ok: bool, timed_out: bool) {
        self.openai_requests.inc();
        if !ok {
            self.openai_errors.inc();
        }
        if timed_out {
            self.openai_timeouts.inc();
        }
    }

    /// Counts one artifact file operation.
    pub fn record_file_op(&self, ok: bool) {
        self.file_operations.inc();
        if !ok {
            self.file_operation_errors.inc();
        }
    }

    /// Resets the error figures and the response-time window (`/errors?clear`), under one lock
    /// so a concurrent request is counted either before or after, never half.
    pub fn clear_errors(&self) {
        let mut l = self.ledger();
        self.errors.reset();
        self.error_code.reset();
        self.error_endpoint.reset();
        self.retries.reset();
        labelled(self.retries.clone(), &RETRY_OPERATIONS);
        *l = Ledger::new();
    }

    /// Counts one image request sent with `model` at `micros` millionths of a dollar.
    pub fn record_spend(&self, model: &str, micros: u64) {
        self.spend
            .with_label_values(&[model])
            .inc_by(crate::budget::usd(micros));
    }

    /// Counts a run refused by a rate limit.
    pub fn record_rate_limited(&self, scope: crate::limits::Scope) {
        self.rate_limited.with_label_values(&[scope.as_str()]).inc();
    }

    /// Brings the remaining-budget gauges up to date; a period without a cap has `+Inf` left.
    pub fn set_budget(&self, usage: &crate::budget::Usage) {
        use crate::budget::Period;
        for period in [Period::Day, Period::Month] {
            let left = usage
                .remaining_usd(period)
                .map_or(f64::INFINITY, crate::budget::usd);
            self.budget_remaining
                .with_label_values(&[period.as_str()])
                .set(left);
        }
    }

    /// The Prometheus text exposition, with the breaker gauges brought up to date first.
    pub fn render_text(&self, breakers: &BreakersSnapshot) -> Result<String, prometheus::Error> {
        for breaker in &breakers.operations {
            for state in BreakerState::ALL {
                self.breaker_state
                    .with_label_values(&[breaker.operation.as_str(), state.as_str()])
                    .set(i64::from(breaker.state == state));
            }
        }
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    /// The upstream JSON snapshot. Its single breaker fields summarise every breaker (the worst
    /// state, summed counts) so clients written for one breaker keep working;
    /// `circuit_breakers_by_operation` has each one.
    pub fn snapshot(&self, breakers: &BreakersSnapshot) -> MetricsSnapshot {
        let l = self.ledger();
        let (p95, p99) = percentiles(&l.window);
        MetricsSnapshot {
            total_errors: self.errors.get(),
            errors_by_code: label_totals(&self.error_code),
            errors_by_endpoint: label_totals(&self.error_endpoint),
            circuit_breaker_state: breakers.worst_state().as_str(),
            circuit_breaker_failures: breakers.total_failures(),
            circuit_breaker_successes: breakers.total_successes(),
            circuit_breakers_by_operation: breakers
                .operations
                .iter()
                .map(|b| {
                    let figures = BreakerFigures {
                        state: b.state.as_str(),
                        failures: b.total_failures,
                        successes: b.total_successes,
                        consecutive_failures: b.consecutive_failures,
                        last_failure: b.last_failure.map(crate::telemetry::rfc3339),
                        last_error: b.last_error.clone(),
                    };
                    (b.operation.as_str(), figures)
                })
                .collect(),
            total_retries: label_totals(&self.retries).values().sum(),
            retries_by_operation: label_totals(&self.retries),
            response_times: ResponseTimes {
                count: l.count,
                sum_ms: l.sum_ms,
                min_ms: l.min_ms,
                max_ms: l.max_ms,
                avg_ms: if l.count == 0 {
                    0.0
                } else {
                    l.sum_ms as f64 / l.count as f64
                },
                p95_ms: p95,
                p99_ms: p99,
            },
            openai_requests: self.openai_requests.get(),
            openai_errors: self.openai_errors.get(),
            openai_timeouts: self.openai_timeouts.get(),
            file_operations: self.file_operations.get(),
            file_operation_errors: self.file_operation_errors.get(),
            last_updated: crate::telemetry::rfc3339(l.last_updated),
        }
    }

    /// A histogram for one generation phase.
    pub fn phase_histogram(&self, phase: &str) -> Histogram {
        self.phase_duration.with_label_values(&[phase])
    }
}

/// p95 and p99 as upstream computes them: sorted window, index ⌊p·n/100⌋ clamped to n−1.
fn percentiles(window: &VecDeque<u64>) -> (u64, u64) {
    if window.len() < MIN_SAMPLES_FOR_PERCENTILES {
        return (0, 0);
    }
    let mut sorted: Vec<u64> = window.iter().copied().collect();
    sorted.sort_unstable();
    let at = |p: usize| sorted[(p * sorted.len() / 100).min(sorted.len() - 1)];
    (at(95), at(99))
}

/// Sums a one-label counter vector by label value.
fn label_totals(vec: &IntCounterVec) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for family in vec.collect() {
        for metric in family.get_metric() {
            if let Some(label) = metric.get_label().first() {
                *out.entry(label.value().to_string()).or_default() +=
                    metric.get_counter().get_value() as u64;
            }
        }
    }
    out
}

/// The error code the Go server derived from a status.
pub fn status_code_name(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        408 => "REQUEST_TIMEOUT",
        429 => "RATE_LIMITED",
        500 => "INTERNAL_ERROR",
        502 => "BAD_GATEWAY",
        503 => "SERVICE_UNAVAILABLE",
        504 => "GATEWAY_TIMEOUT",
        s if (400..500).contains(&s) => "CLIENT_ERROR",
        _ => "SERVER_ERROR",
    }
}

/// The upstream JSON snapshot, field order as upstream (`circuit_breakers_by_operation` is
/// ours).
#[derive(Debug, Serialize)]
pub struct MetricsSnapshot {
    pub total_errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub errors_by_endpoint: BTreeMap<String, u64>,
    /// The worst state of any breaker (`OPEN` if one is open).
    pub circuit_breaker_state: &'static str,
    /// Failures of every breaker together.
    pub circuit_breaker_failures: u64,
    /// Successes of every breaker together.
    pub circuit_breaker_successes: u64,
    /// Each breaker, keyed by operation (`chat`, `image`).
    pub circuit_breakers_by_operation: BTreeMap<&'static str, BreakerFigures>,
    pub total_retries: u64,
    pub retries_by_operation: BTreeMap<String, u64>,
    pub response_times: ResponseTimes,
    pub openai_requests: u64,
    pub openai_errors: u64,
    pub openai_timeouts: u64,
    pub file_operations: u64,
    pub file_operation_errors: u64,
    pub last_updated: String,
}

/// One breaker in the JSON snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerFigures {
    pub state: &'static str,
    pub failures: u64,
    pub successes: u64,
    pub consecutive_failures: u32,
    /// RFC 3339; `null` until a failure.
    pub last_failure: Option<String>,
    /// The last failure's message, sanitised; `null` until a failure.
    pub last_error: Option<String>,
}

/// Response-time figures in whole milliseconds.
#[derive(Debug, Serialize)]
pub struct ResponseTimes {
    pub count: u64,
    pub sum_ms: u64,
    pub min_ms: u64,
    pub max_ms: u64,
    pub avg_ms: f64,
    pub p95_ms: u64,
    pub p99_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::breaker::Breakers;

    #[test]
    fn errors_are_counted_by_status_code_and_endpoint() {
        let m = Metrics::new().unwrap();
        m.observe_request("GET", "dalle", 400, Duration::from_millis(3));
        m.observe_request("GET", "other", 404, Duration::from_millis(1));
        m.observe_request("GET", "health", 200, Duration::from_millis(2));
        let s = m.snapshot(&Breakers::default().snapshot());
        assert_eq!(s.total_errors, 2);
        assert_eq!(s.errors_by_code["BAD_REQUEST"], 1);
        assert_eq!(s.errors_by_code["NOT_FOUND"], 1);
        assert_eq!(s.errors_by_endpoint["dalle"], 1);
        assert_eq!(s.response_times.count, 3);
        assert_eq!(s.response_times.min_ms, 1);
        assert_eq!(s.response_times.max_ms, 3);
        assert_eq!(
            s.response_times.p95_ms, 0,
            "no percentiles before 20 samples"
        );
        m.clear_errors();
        let s = m.snapshot(&Breakers::default().snapshot());
        assert_eq!(s.total_errors, 0);
        assert!(s.errors_by_code.is_empty());
        assert_eq!(s.response_times.min_ms, i64::MAX as u64);
    }

    #[test]
    fn percentiles_match_the_upstream_index_rule() {
        let window: VecDeque<u64> = (1..=20).collect();
        assert_eq!(percentiles(&window), (20, 20));
        let window: VecDeque<u64> = (1..=100).collect();
        assert_eq!(percentiles(&window), (96, 100));
    }

    #[test]
    fn text_exposition_has_help_type_and_one_state_per_breaker() {
        let m = Metrics::new().unwrap();
        let breakers = Breakers::default();
        for _ in 0..5 {
            let admission = breakers.image.admit().unwrap();
            breakers
                .image
                .failed(admission, "OpenAI API error (status 500): boom");
        }
        let text = m.render_text(&breakers.snapshot()).unwrap();
        assert!(text.contains("# TYPE dalleserver_up gauge"));
        assert!(text.contains("dalleserver_up 1"));
        assert!(text.contains("# TYPE dalleserver_circuit_breaker_state gauge"));
        for (operation, current) in [("chat", "CLOSED"), ("image", "OPEN")] {
            for state in ["CLOSED", "OPEN", "HALF_OPEN"] {
                let line = format!(
                    "dalleserver_circuit_breaker_state{{operation=\"{operation}\",state=\"{state}\"}} {}",
                    i32::from(state == current)
                );
                assert!(text.contains(&line), "missing {line:?} in\n{text}");
            }
        }
        assert!(text.contains("# HELP dalleserver_errors_total"));
    }

    #[test]
    fn the_json_snapshot_keeps_the_worst_state_and_adds_each_breaker() {
        let m = Metrics::new().unwrap();
        let breakers = Breakers::default();
        let admission = breakers.chat.admit().unwrap();
        breakers.chat.succeeded(admission);
        for _ in 0..5 {
            let admission = breakers.image.admit().unwrap();
            breakers
                .image
                .failed(admission, "cannot reach OpenAI: connection refused");
        }
        let s = m.snapshot(&breakers.snapshot());
        assert_eq!(s.circuit_breaker_state, "OPEN");
        assert_eq!(s.circuit_breaker_failures, 5);
        assert_eq!(s.circuit_breaker_successes, 1);
        let chat = &s.circuit_breakers_by_operation["chat"];
        assert_eq!(
            (chat.state, chat.successes, chat.failures),
            ("CLOSED", 1, 0)
        );
        assert_eq!(chat.last_error, None);
        let image = &s.circuit_breakers_by_operation["image"];
        assert_eq!((image.state, image.consecutive_failures), ("OPEN", 5));
        assert_eq!(
            image.last_error.as_deref(),
            Some("cannot reach OpenAI: connection refused")
        );
        assert!(image.last_failure.is_some());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["circuit_breakers_by_operation"]["image"]["state"],
            "OPEN"
        );
    }
}
