//! The circuit breakers that guard OpenAI API calls: one per operation ([`Breakers`]: chat
//! enhancement and image generation), each opened by its own failures only. Image downloads
//! bypass them (see `OpenAiClient::download`).
//!
//! One shared breaker was not enough: with image generation failing on every call while chat
//! succeeded, each chat success reset the consecutive count, so the breaker never opened and
//! every run kept paying for a doomed image request.
//!
//! Numbers are the upstream server's: open after 5 consecutive failures, half-open once 30 s
//! have passed since opening, closed again after 2 successes. The lock is held only to read and
//! update counters, never across the call itself (holding it across the call would serialise
//! every OpenAI request), and half-open admits one probe at a time instead of every caller.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Longest failure message a breaker keeps; it is quoted in every rejection.
const MAX_CAUSE_CHARS: usize = 200;

/// An OpenAI operation with its own breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Chat completion (prompt enhancement).
    Chat,
    /// Image generation.
    Image,
}

impl Operation {
    /// Every operation, in the order `/health` and `/metrics` list them.
    pub const ALL: [Operation; 2] = [Operation::Chat, Operation::Image];

    /// The `operation` label and map key: `chat` or `image`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Chat => "chat",
            Operation::Image => "image",
        }
    }
}

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

    /// How bad the state is: closed < half-open < open. The single-state summaries (the JSON
    /// snapshot's `circuit_breaker_state`, the `openai` health status) report the worst one.
    fn severity(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    /// The worse of two states.
    pub fn worst(self, other: BreakerState) -> BreakerState {
        if other.severity() > self.severity() {
            other
        } else {
            self
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

/// Why a call was not admitted. The text is what a refused run shows in its `error` field, so
/// it names the operation and the failure that opened the breaker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(
        "{} circuit breaker is OPEN after {failures} consecutive failures{}; try again later",
        operation.as_str(),
        last_cause(last.as_deref())
    )]
    Open {
        operation: Operation,
        /// Consecutive failures so far.
        failures: u32,
        /// The last failure's message, sanitised ([`sanitise`]).
        last: Option<String>,
    },
    #[error(
        "{} circuit breaker is HALF_OPEN and a probe request is already in flight; try again later",
        operation.as_str()
    )]
    ProbeInFlight { operation: Operation },
}

fn last_cause(last: Option<&str>) -> String {
    last.map(|cause| format!(" (last: {cause})"))
        .unwrap_or_default()
}

impl Rejected {
    /// The operation whose breaker refused.
    pub fn operation(&self) -> Operation {
        match self {
            Rejected::Open { operation, .. } | Rejected::ProbeInFlight { operation } => *operation,
        }
    }
}

/// A point-in-time copy of one breaker, for `/health` and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    pub operation: Operation,
    pub state: BreakerState,
    pub total_requests: u64,
    pub total_failures: u64,
    pub total_successes: u64,
    pub consecutive_failures: u32,
    pub last_failure: Option<SystemTime>,
    /// The last failure's message, sanitised.
    pub last_error: Option<String>,
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
    last_error: Option<String>,
    last_success: Option<SystemTime>,
}

/// A thread-safe circuit breaker for one [`Operation`]. Callers ask [`CircuitBreaker::admit`]
/// before a call and report the outcome with [`CircuitBreaker::succeeded`] or
/// [`CircuitBreaker::failed`].
#[derive(Debug)]
pub struct CircuitBreaker {
    operation: Operation,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// Proof that a call was admitted; hand it back to [`CircuitBreaker::succeeded`] or
/// [`CircuitBreaker::failed`].
#[derive(Debug)]
#[must_use = "report the outcome with CircuitBreaker::succeeded or CircuitBreaker::failed"]
pub struct Admission {
    probe: bool,
}

impl CircuitBreaker {
    /// A closed breaker for `operation` with the given knobs.
    pub fn new(operation: Operation, config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            operation,
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
                last_error: None,
                last_success: None,
            }),
        }
    }

    /// The operation this breaker guards.
    pub fn operation(&self) -> Operation {
        self.operation
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
            BreakerState::Open => Err(Rejected::Open {
                operation: self.operation,
                failures: inner.failures,
                last: inner.last_error.clone(),
            }),
            BreakerState::HalfOpen if inner.probe_in_flight => Err(Rejected::ProbeInFlight {
                operation: self.operation,
            }),
            BreakerState::HalfOpen => {
                inner.probe_in_flight = true;
                Ok(Admission { probe: true })
            }
        }
    }

    /// Reports that an admitted call succeeded (or failed in a way that says nothing about the
    /// service's health, such as a content refusal).
    pub fn succeeded(&self, admission: Admission) {
        let mut inner = self.lock();
        if admission.probe {
            inner.probe_in_flight = false;
        }
        inner.total_successes += 1;
        inner.last_success = Some(SystemTime::now());
        match inner.state {
            BreakerState::HalfOpen => {
                inner.half_open_successes += 1;
                if inner.half_open_successes >= self.config.success_threshold {
                    tracing::info!(
                        operation = self.operation.as_str(),
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
    }

    /// Reports that an admitted call failed with `cause` (its error text; it is sanitised
    /// before it is kept, because every later rejection quotes it).
    pub fn failed(&self, admission: Admission, cause: &str) {
        let cause = sanitise(cause);
        let mut inner = self.lock();
        if admission.probe {
            inner.probe_in_flight = false;
        }
        inner.total_failures += 1;
        inner.failures += 1;
        inner.last_failure = Some(SystemTime::now());
        inner.last_error = Some(cause);
        let trip = match inner.state {
            BreakerState::Closed => inner.failures >= self.config.failure_threshold,
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        if trip {
            tracing::warn!(
                operation = self.operation.as_str(),
                failures = inner.failures,
                last = inner.last_error.as_deref().unwrap_or_default(),
                "circuit breaker opened"
            );
            inner.state = BreakerState::Open;
            inner.opened_at = Some(Instant::now());
            inner.half_open_successes = 0;
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
                operation = self.operation.as_str(),
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
            operation: self.operation,
            state: inner.state,
            total_requests: inner.total_requests,
            total_failures: inner.total_failures,
            total_successes: inner.total_successes,
            consecutive_failures: inner.failures,
            last_failure: inner.last_failure,
            last_error: inner.last_error.clone(),
            last_success: inner.last_success,
        }
    }
}

/// One breaker per [`Operation`]; cheap to clone (the client and the app share the same ones).
#[derive(Debug, Clone)]
pub struct Breakers {
    pub chat: Arc<CircuitBreaker>,
    pub image: Arc<CircuitBreaker>,
}

impl Default for Breakers {
    fn default() -> Self {
        Breakers::new(BreakerConfig::default())
    }
}

impl Breakers {
    /// Closed breakers for every operation, all with the same knobs.
    pub fn new(config: BreakerConfig) -> Breakers {
        Breakers {
            chat: Arc::new(CircuitBreaker::new(Operation::Chat, config)),
            image: Arc::new(CircuitBreaker::new(Operation::Image, config)),
        }
    }

    /// The breaker of `operation`.
    pub fn get(&self, operation: Operation) -> &CircuitBreaker {
        match operation {
            Operation::Chat => &self.chat,
            Operation::Image => &self.image,
        }
    }

    /// Every breaker's state and counters.
    pub fn snapshot(&self) -> BreakersSnapshot {
        BreakersSnapshot {
            operations: Operation::ALL.map(|operation| self.get(operation).snapshot()),
        }
    }
}

/// Snapshots of every breaker, in [`Operation::ALL`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakersSnapshot {
    pub operations: [BreakerSnapshot; 2],
}

impl BreakersSnapshot {
    /// The snapshot of `operation`.
    pub fn get(&self, operation: Operation) -> &BreakerSnapshot {
        // `operations` is built from `Operation::ALL`, so the position always matches.
        let index = Operation::ALL
            .iter()
            .position(|o| *o == operation)
            .unwrap_or_default();
        &self.operations[index]
    }

    /// The worst state of any breaker: one open breaker means OpenAI is (partly) failing.
    pub fn worst_state(&self) -> BreakerState {
        self.operations
            .iter()
            .fold(BreakerState::Closed, |worst, snap| worst.worst(snap.state))
    }

    /// Failures recorded by every breaker together.
    pub fn total_failures(&self) -> u64 {
        self.operations.iter().map(|s| s.total_failures).sum()
    }

    /// Successes recorded by every breaker together.
    pub fn total_successes(&self) -> u64 {
        self.operations.iter().map(|s| s.total_successes).sum()
    }

    /// The most recent failure of any breaker.
    pub fn last_failure(&self) -> Option<SystemTime> {
        self.operations.iter().filter_map(|s| s.last_failure).max()
    }
}

/// Makes a failure message fit to be kept and quoted to every later caller: anything that looks
/// like an OpenAI key (`sk-…`) or an absolute file path is replaced, and the text is cut to
/// `MAX_CAUSE_CHARS`. The client already removes its own key; this also covers keys a server
/// echoes in another form and paths from TLS or OS errors, which say nothing useful to a user
/// and reveal the server's layout.
pub fn sanitise(message: &str) -> String {
    let words: Vec<String> = message.split_whitespace().map(sanitise_word).collect();
    let text = words.join(" ");
    if text.chars().count() > MAX_CAUSE_CHARS {
        let mut cut: String = text.chars().take(MAX_CAUSE_CHARS).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

fn sanitise_word(word: &str) -> String {
    // Quotes, brackets and trailing punctuation around a word are kept; only what they
    // enclose is judged.
    const OPENERS: &[char] = &['(', '[', '"', '\'', '`', '<'];
    const CLOSERS: &[char] = &[')', ']', '"', '\'', '`', '>', ',', ';', ':', '.'];
    let opened = word.trim_start_matches(OPENERS);
    let prefix = &word[..word.len() - opened.len()];
    let core = opened.trim_end_matches(CLOSERS);
    let suffix = &opened[core.len()..];
    let replacement = if core.starts_with("sk-") {
        "[redacted]"
    } else if is_absolute_path(core) {
        "[path]"
    } else {
        return word.to_string();
    };
    format!("{prefix}{replacement}{suffix}")
}

/// `/x…` (Unix) or `C:\…` / `C:/…` (Windows); a lone `/` is not a path.
fn is_absolute_path(word: &str) -> bool {
    let bytes = word.as_bytes();
    let unix = bytes.len() > 1 && bytes[0] == b'/' && bytes[1] != b'/';
    let windows = bytes.len() > 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && matches!(bytes[2], b'\\' | b'/');
    unix || windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(Operation::Image, BreakerConfig::default())
    }

    fn fail(b: &CircuitBreaker) {
        let a = b.admit().unwrap();
        b.failed(a, "OpenAI API error (status 500): boom");
    }

    fn succeed(b: &CircuitBreaker) {
        let a = b.admit().unwrap();
        b.succeeded(a);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_five_consecutive_failures_only() {
        let b = breaker();
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
        assert!(matches!(b.admit().unwrap_err(), Rejected::Open { .. }));
        assert_eq!(b.snapshot().total_failures, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_timeout_admits_one_probe_and_closes_after_two_successes() {
        let b = breaker();
        for _ in 0..5 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.snapshot().state, BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        let probe = b.admit().unwrap();
        assert_eq!(
            b.admit().unwrap_err(),
            Rejected::ProbeInFlight {
                operation: Operation::Image
            }
        );
        b.succeeded(probe);
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        succeed(&b);
        assert_eq!(b.snapshot().state, BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_full_timeout() {
        let b = breaker();
        for _ in 0..5 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        fail(&b);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(matches!(b.admit().unwrap_err(), Rejected::Open { .. }));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rejection_names_the_operation_and_the_last_failure() {
        let b = breaker();
        for _ in 0..4 {
            fail(&b);
        }
        let a = b.admit().unwrap();
        b.failed(a, "cannot reach OpenAI: connection refused");
        let rejected = b.admit().unwrap_err();
        assert_eq!(rejected.operation(), Operation::Image);
        assert_eq!(
            rejected.to_string(),
            "image circuit breaker is OPEN after 5 consecutive failures \
             (last: cannot reach OpenAI: connection refused); try again later"
        );
        assert_eq!(
            b.snapshot().last_error.as_deref(),
            Some("cannot reach OpenAI: connection refused")
        );
        let probe = Rejected::ProbeInFlight {
            operation: Operation::Chat,
        };
        assert!(
            probe
                .to_string()
                .starts_with("chat circuit breaker is HALF_OPEN")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_operation_opens_on_its_own_failures() {
        let breakers = Breakers::default();
        for _ in 0..5 {
            fail(&breakers.image);
            succeed(&breakers.chat);
        }
        let snap = breakers.snapshot();
        assert_eq!(snap.get(Operation::Image).state, BreakerState::Open);
        assert_eq!(snap.get(Operation::Chat).state, BreakerState::Closed);
        assert_eq!(snap.get(Operation::Chat).operation, Operation::Chat);
        assert_eq!(snap.worst_state(), BreakerState::Open);
        assert_eq!((snap.total_failures(), snap.total_successes()), (5, 5));
        assert!(breakers.chat.admit().is_ok());
        let err = breakers.image.admit().unwrap_err();
        assert!(err.to_string().starts_with("image circuit breaker is OPEN"));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(breakers.snapshot().worst_state(), BreakerState::HalfOpen);
    }

    #[test]
    fn worst_state_orders_open_over_half_open_over_closed() {
        use BreakerState::{Closed, HalfOpen, Open};
        assert_eq!(Closed.worst(HalfOpen), HalfOpen);
        assert_eq!(HalfOpen.worst(Closed), HalfOpen);
        assert_eq!(HalfOpen.worst(Open), Open);
        assert_eq!(Open.worst(Closed), Open);
        assert_eq!(Closed.worst(Closed), Closed);
    }

    #[test]
    fn causes_lose_keys_and_absolute_paths() {
        assert_eq!(
            sanitise("Incorrect API key provided: sk-live-123abc."),
            "Incorrect API key provided: [redacted]."
        );
        assert_eq!(
            sanitise("invalid peer certificate: (/etc/ssl/certs/ca.pem) and C:\\certs\\x.pem"),
            "invalid peer certificate: ([path]) and [path]"
        );
        assert_eq!(
            sanitise("cannot reach OpenAI:   connection\nrefused"),
            "cannot reach OpenAI: connection refused"
        );
        // A lone slash and URLs with a scheme are left alone (URLs are removed by the client).
        assert_eq!(sanitise("a / b http://x/y"), "a / b http://x/y");
        let long = sanitise(&"x ".repeat(500));
        assert_eq!(long.chars().count(), MAX_CAUSE_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
