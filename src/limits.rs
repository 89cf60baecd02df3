//! Rate limits on run starts: token buckets that say how many new runs a caller may start.
//!
//! Only a request that would start a run takes a token; the run core asks ([`RateLimiter`])
//! at the point where it knows a run starts (`run::Generator::start_job`), after the key
//! check and the budget. Polls, cache hits, joining a run in flight and every read are never
//! counted: they cost nothing.
//!
//! - A caller with an API key has a bucket of its own: the key's `rate=` from the keys file,
//!   else `--rate-limit` (default `60/min`).
//! - An anonymous caller (no keys file) has a bucket per client address, IPv6 grouped by
//!   /64 (one host or one subscriber's network): `--anon-rate-limit` (default `10/min`).
//!   The client address is the TCP peer, or what a trusted proxy says (`http::client`).
//! - `none` lifts a limit.
//!
//! A rate `<n>/<period>` is a bucket of `n` starts that refills one start every
//! `period / n` ([`rate::Rate`]); [`governor`] does the arithmetic (GCRA). The state sits
//! behind the narrow [`RateLimiter`] trait, like the budget, so it can move to a store shared
//! by several replicas; [`LocalLimiter`] keeps it in memory, with the anonymous buckets in a
//! map bounded whatever the number of distinct addresses ([`store`]).

mod local;
pub mod rate;
pub mod store;

use std::fmt;
use std::time::{Duration, Instant};

pub use local::LocalLimiter;
pub use rate::{BadRate, Limit, Per, Rate};

use crate::auth::Caller;

/// `n` starts a minute (`n` is never 0 here).
const fn per_minute(n: u32) -> Limit {
    match std::num::NonZeroU32::new(n) {
        Some(count) => Limit::Every(Rate {
            count,
            per: Per::Min,
        }),
        None => Limit::Unlimited,
    }
}

/// The default `--rate-limit`: per API key.
pub const DEFAULT_KEY_LIMIT: Limit = per_minute(60);

/// The default `--anon-rate-limit`: per client address of anonymous callers.
pub const DEFAULT_ANON_LIMIT: Limit = per_minute(10);

/// Whose bucket refused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// An API key's bucket.
    Key,
    /// An anonymous client address's bucket.
    Anonymous,
}

impl Scope {
    /// The `scope` label of `dalleserver_rate_limited_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Anonymous => "anonymous",
        }
    }

    /// Every scope, so the metric exports each from the start.
    pub const ALL: [Scope; 2] = [Scope::Key, Scope::Anonymous];
}

/// A run refused because the caller's bucket is empty; nothing was taken or started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    /// The rate that refused it.
    pub rate: Rate,
    /// Until one more run may start (`Retry-After`).
    pub retry_after: Duration,
    /// Until the bucket is full again (`RateLimit-Reset`).
    pub reset: Duration,
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.scope {
            Scope::Key => "this API key",
            Scope::Anonymous => "this client address",
        };
        write!(
            f,
            "too many new runs: {whose} may start {} (a burst of {}, then one every {}); retry in {} s",
            self.rate,
            self.rate.count,
            human(self.rate.interval()),
            whole_seconds(self.retry_after)
        )
    }
}

impl std::error::Error for Limited {}

/// A duration in whole seconds, rounded up and at least 1: what `Retry-After` and
/// `RateLimit-Reset` carry, so a client that waits that long finds a token.
pub fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) && d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis().max(1))
    }
}

/// Rate-limit state: one token per run start. Implementations keep the buckets of every
/// process sharing them.
pub trait RateLimiter: Send + Sync + fmt::Debug {
    /// Takes one run start from `caller`'s bucket, or refuses (taking nothing) when it is
    /// empty. A caller with no limit is always admitted.
    fn take(&self, caller: &Caller) -> Result<(), Limited>;
}

/// Monotonic time for the limiter: how long since a fixed origin. Injectable so tests move
/// it instead of waiting.
pub trait Ticker: Send + Sync + fmt::Debug {
    fn elapsed(&self) -> Duration;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicTicker(Instant);

impl Default for MonotonicTicker {
    fn default() -> MonotonicTicker {
        MonotonicTicker(Instant::now())
    }
}

impl Ticker for MonotonicTicker {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusal_text() {
        assert_eq!(DEFAULT_KEY_LIMIT.to_string(), "60/min");
        assert_eq!(DEFAULT_ANON_LIMIT.to_string(), "10/min");
        let rate = DEFAULT_ANON_LIMIT.rate().unwrap();
        let limited = Limited {
            scope: Scope::Anonymous,
            rate,
            retry_after: Duration::from_millis(5_500),
            reset: Duration::from_secs(60),
        };
        assert_eq!(
            limited.to_string(),
            "too many new runs: this client address may start 10/min (a burst of 10, then one every 6 s); retry in 6 s"
        );
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }
}
