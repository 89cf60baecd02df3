//! The circuit breaker that guards every OpenAI API call (CONTRACT §5.2, S§9); image downloads
//! bypass it (see `OpenAiClient::download`).
//!
//! Numbers are the upstream server's: open after 5 consecutive failures, half-open once 30 s
//! have passed since the last failure, closed again after 2 successes. Unlike the Go breaker
//! the lock is held only to read and update counters, never across the call itself, and
//! half-open admits one probe at a time instead of every caller.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Breaker state, with the upstream names and numeric values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// All states, in the order `/metrics` lists them.
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    /// The upstream string form (`CLOSED`, `OPEN`, `HALF_OPEN`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "CLOSED",
            BreakerState::Open => "OPEN",
            BreakerState::HalfOpen => "HALF_OPEN",
        }
    }
}

/// Tuning knobs; [`BreakerConfig::default`] holds the contract's numbers.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            reset_timeout: Duration::from_secs(30),
            success_threshold: 2,
        }
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("circuit breaker is OPEN - OpenAI is unavailable, try again later")]
    Open,
    #[error("circuit breaker is HALF_OPEN and a probe request is already in flight")]
    ProbeInFlight,
}

/// A point-in-time copy of the breaker, for `/health` and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub total_requests: u64,
    pub total_failures: u64,
    pub total_successes: u64,
    pub consecutive_failures: u32,
    pub last_failure: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    half_open_successes: u32,
    probe_in_flight: bool,
    opened_at: Option<Instant>,
    total_requests: u64,
    total_failures: u64,
    total_successes: u64,
    last_failure: Option<SystemTime>,
    last_success: Option<SystemTime>,
}

/// A thread-safe circuit breaker. Callers ask [`CircuitBreaker::admit`] before a call and
/// report the outcome with [`CircuitBreaker::record`].
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker::new(BreakerConfig::default())
    }
}

/// Proof that a call was admitted; hand it back to [`CircuitBreaker::record`].
#[derive(Debug)]
#[must_use = "report the outcome with CircuitBreaker::record"]
pub struct Admission {
    probe: bool,
}

impl CircuitBreaker {
    /// A closed breaker with the given knobs.
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                half_open_successes: 0,
                probe_in_flight: false,
                opened_at: None,
                total_requests: 0,
                total_failures: 0,
                total_successes: 0,
                last_failure: None,
                last_success: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way that
        // matters more than refusing all OpenAI traffic would, so recover from poisoning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks to make a call. Open → rejected; half-open → only one probe at a time.
    pub fn admit(&self) -> Result<Admission, Rejected> {
        let mut inner = self.lock();
        inner.total_requests += 1;
        self.refresh(&mut inner);
        match inner.state {
            BreakerState::Closed => Ok(Admission { probe: false }),
            BreakerState::Open => Err(Rejected::Open),
            BreakerState::HalfOpen if inner.probe_in_flight => Err(Rejected::ProbeInFlight),
            BreakerState::HalfOpen => {
                inner.probe_in_flight = true;
                Ok(Admission { probe: true })
            }
        }
    }

    /// Reports how an admitted call ended.
    pub fn record(&self, admission: Admission, success: bool) {
        let mut inner = self.lock();
        if admission.probe {
            inner.probe_in_flight = false;
        }
        if success {
            inner.total_successes += 1;
            inner.last_success = Some(SystemTime::now());
            match inner.state {
                BreakerState::HalfOpen => {
                    inner.half_open_successes += 1;
                    if inner.half_open_successes >= self.config.success_threshold {
                        tracing::info!(
                            "circuit breaker closed after {} successful probes",
                            inner.half_open_successes
                        );
                        inner.state = BreakerState::Closed;
                        inner.failures = 0;
                        inner.half_open_successes = 0;
                    }
                }
                BreakerState::Closed | BreakerState::Open => inner.failures = 0,
            }
        } else {
            inner.total_failures += 1;
            inner.failures += 1;
            inner.last_failure = Some(SystemTime::now());
            let trip = match inner.state {
                BreakerState::Closed => inner.failures >= self.config.failure_threshold,
                BreakerState::HalfOpen => true,
                BreakerState::Open => false,
            };
            if trip {
                tracing::warn!(failures = inner.failures, "circuit breaker opened");
                inner.state = BreakerState::Open;
                inner.opened_at = Some(Instant::now());
                inner.half_open_successes = 0;
            }
        }
    }

    /// Open → half-open once the reset timeout has passed.
    fn refresh(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open
            && inner
                .opened_at
                .is_some_and(|t| t.elapsed() >= self.config.reset_timeout)
        {
            tracing::info!(
                "circuit breaker half-open after {:?}",
                self.config.reset_timeout
            );
            inner.state = BreakerState::HalfOpen;
            inner.half_open_successes = 0;
            inner.probe_in_flight = false;
        }
    }

    /// The current state and counters.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        BreakerSnapshot {
            state: inner.state,
            total_requests: inner.total_requests,
            total_failures: inner.total_failures,
            total_successes: inner.total_successes,
            consecutive_failures: inner.failures,
            last_failure: inner.last_failure,
            last_success: inner.last_success,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(b: &CircuitBreaker) {
        let a = b.admit().unwrap();
        b.record(a, false);
    }

    fn succeed(b: &CircuitBreaker) {
        let a = b.admit().unwrap();
        b.record(a, true);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_five_consecutive_failures_only() {
        let b = CircuitBreaker::default();
        for _ in 0..4 {
            fail(&b);
        }
        succeed(&b); // resets the consecutive count
        for _ in 0..4 {
            fail(&b);
        }
        assert_eq!(b.snapshot().state, BreakerState::Closed);
        fail(&b);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        assert_eq!(b.admit().unwrap_err(), Rejected::Open);
        assert_eq!(b.snapshot().total_failures, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_timeout_admits_one_probe_and_closes_after_two_successes() {
        let b = CircuitBreaker::default();
        for _ in 0..5 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.snapshot().state, BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        let probe = b.admit().unwrap();
        assert_eq!(b.admit().unwrap_err(), Rejected::ProbeInFlight);
        b.record(probe, true);
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        succeed(&b);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_full_timeout() {
        let b = CircuitBreaker::default();
        for _ in 0..5 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        fail(&b);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.admit().unwrap_err(), Rejected::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    }
}
