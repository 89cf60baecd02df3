//! [`LocalLimiter`]: the buckets of one process, in memory, counted by [`governor`].
//!
//! API keys are few (the keys file names them), so each has a bucket of its own, made again
//! when its rate changes (a reload of the keys file with a new `rate=`: the key starts from a
//! full bucket at the new rate). Anonymous callers share one keyed limiter over the bounded
//! map of [`super::store`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota};

use super::store::{AddressGroup, BoundedStore, MAX_ADDRESSES, Shared};
use super::{Limit, Limited, Rate, RateLimiter, Scope, Ticker};
use crate::auth::Caller;

/// At most one sweep of the anonymous map a second.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The [`Ticker`] as governor's clock, in nanoseconds since the ticker's origin.
#[derive(Debug, Clone)]
struct TickClock(Arc<dyn Ticker>);

impl Clock for TickClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

type Direct = governor::RateLimiter<NotKeyed, InMemoryState, TickClock, NoOpMiddleware<Nanos>>;
type Keyed =
    governor::RateLimiter<AddressGroup, Shared<AddressGroup>, TickClock, NoOpMiddleware<Nanos>>;

/// A key's bucket, and the rate it was made for.
type KeyBucket = (Rate, Arc<Direct>);

fn quota(rate: Rate) -> Quota {
    // `interval` is never zero, so `with_period` always answers; the fallback is the same
    // rate said another way.
    Quota::with_period(rate.interval())
        .unwrap_or_else(|| Quota::per_second(rate.count))
        .allow_burst(rate.count)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The anonymous buckets: governor's keyed limiter over the bounded map.
#[derive(Debug)]
struct Anonymous {
    rate: Rate,
    limiter: Keyed,
    store: Arc<BoundedStore<AddressGroup>>,
    /// When the map was last swept (ticker nanoseconds).
    swept: AtomicU64,
}

/// A rate limiter kept by this process (see the module docs).
#[derive(Debug)]
pub struct LocalLimiter {
    clock: TickClock,
    /// `--rate-limit`: a key's rate unless its `rate=` says otherwise.
    key_default: Limit,
    keys: Mutex<HashMap<Arc<str>, KeyBucket>>,
    /// `None`: `--anon-rate-limit none`.
    anonymous: Option<Anonymous>,
}

impl LocalLimiter {
    /// A limiter with these defaults, reading time from `ticker`.
    pub fn new(key_default: Limit, anonymous: Limit, ticker: Arc<dyn Ticker>) -> LocalLimiter {
        LocalLimiter::with_capacity(key_default, anonymous, ticker, MAX_ADDRESSES)
    }

    /// The same, with room for `max_addresses` anonymous address groups.
    pub fn with_capacity(
        key_default: Limit,
        anonymous: Limit,
        ticker: Arc<dyn Ticker>,
        max_addresses: usize,
    ) -> LocalLimiter {
        let clock = TickClock(ticker);
        let anonymous = anonymous.rate().map(|rate| {
            let store = Arc::new(BoundedStore::new(max_addresses));
            Anonymous {
                rate,
                limiter: governor::RateLimiter::new(
                    quota(rate),
                    Shared(store.clone()),
                    clock.clone(),
                ),
                store,
                swept: AtomicU64::new(clock.now().as_u64()),
            }
        });
        LocalLimiter {
            clock,
            key_default,
            keys: Mutex::new(HashMap::new()),
            anonymous,
        }
    }

    /// Address groups tracked now, the most ever tracked, and the bytes their tables hold.
    pub fn anonymous_entries(&self) -> (usize, usize, usize) {
        self.anonymous.as_ref().map_or((0, 0, 0), |a| {
            (a.limiter.len(), a.store.capacity(), a.store.table_bytes())
        })
    }

    fn limited(&self, scope: Scope, rate: Rate, refused: &NotUntil<Nanos>) -> Limited {
        let retry_after: Duration = refused.wait_time_from(self.clock.now());
        // The bucket is full again once every start it holds has come back.
        let reset = retry_after + rate.interval() * (rate.count.get() - 1);
        Limited {
            scope,
            rate,
            retry_after,
            reset,
        }
    }

    fn take_key(&self, name: &Arc<str>, rate: Rate) -> Result<(), Limited> {
        let bucket = {
            let mut keys = lock(&self.keys);
            match keys.get(name) {
                Some((current, bucket)) if *current == rate => bucket.clone(),
                _ => {
                    let bucket = Arc::new(governor::RateLimiter::direct_with_clock(
                        quota(rate),
                        self.clock.clone(),
                    ));
                    keys.insert(name.clone(), (rate, bucket.clone()));
                    bucket
                }
            }
        };
        bucket
            .check()
            .map_err(|refused| self.limited(Scope::Key, rate, &refused))
    }

    fn take_anonymous(&self, anonymous: &Anonymous, group: AddressGroup) -> Result<(), Limited> {
        let taken = anonymous
            .limiter
            .check_key(&group)
            .map_err(|refused| self.limited(Scope::Anonymous, anonymous.rate, &refused));
        if anonymous.store.take_crowded() {
            let now = self.clock.now().as_u64();
            let last = anonymous.swept.load(Ordering::Relaxed);
            let due =
                Nanos::from(now).duration_since(Nanos::from(last)) >= Nanos::from(SWEEP_INTERVAL);
            if due
                && anonymous
                    .swept
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                anonymous.limiter.retain_recent();
            }
        }
        taken
    }
}

impl RateLimiter for LocalLimiter {
    fn take(&self, caller: &Caller) -> Result<(), Limited> {
        match caller {
            Caller::Key { name, limits } => match limits.rate.unwrap_or(self.key_default) {
                Limit::Unlimited => Ok(()),
                Limit::Every(rate) => self.take_key(name, rate),
            },
            Caller::Anonymous { address, .. } => match &self.anonymous {
                Some(anonymous) => self.take_anonymous(anonymous, AddressGroup::of(*address)),
                None => Ok(()),
            },
            Caller::Resumed { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::auth::KeyLimits;

    /// A ticker the test moves.
    #[derive(Debug, Default)]
    struct Manual(AtomicU64);

    impl Ticker for Manual {
        fn elapsed(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    impl Manual {
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    fn limit(text: &str) -> Limit {
        text.parse().unwrap()
    }

    fn anonymous(address: &str) -> Caller {
        Caller::Anonymous {
            address: Some(address.parse::<IpAddr>().unwrap()),
            authorized: true,
        }
    }

    fn key(name: &str, rate: Option<&str>) -> Caller {
        Caller::Key {
            name: name.into(),
            limits: KeyLimits {
                rate: rate.map(limit),
                ..KeyLimits::default()
            },
        }
    }

    #[test]
    fn an_address_gets_its_burst_then_one_start_per_interval() {
        let clock = Arc::new(Manual::default());
        let limiter = LocalLimiter::new(limit("60/min"), limit("3/min"), clock.clone());
        let me = anonymous("192.0.2.1");
        for _ in 0..3 {
            assert!(limiter.take(&me).is_ok(), "the burst");
        }
        let refused = limiter.take(&me).unwrap_err();
        assert_eq!(refused.scope, Scope::Anonymous);
        assert_eq!(refused.rate.to_string(), "3/min");
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(refused.reset, Duration::from_secs(60));
        // Another address, and the same address's other /64 neighbour in IPv6, are apart.
        assert!(limiter.take(&anonymous("192.0.2.2")).is_ok());
        clock.advance(Duration::from_secs(19));
        let still = limiter.take(&me).unwrap_err();
        assert_eq!(still.retry_after, Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert!(limiter.take(&me).is_ok(), "one start came back");
        assert!(limiter.take(&me).is_err());
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limiter.take(&me).is_ok(), "a full bucket again");
        }
    }

    #[test]
    fn keys_have_their_own_buckets_and_a_rate_of_their_own() {
        let clock = Arc::new(Manual::default());
        let limiter = LocalLimiter::new(limit("2/hour"), limit("none"), clock.clone());
        let ci = key("ci", None);
        assert!(limiter.take(&ci).is_ok() && limiter.take(&ci).is_ok());
        let refused = limiter.take(&ci).unwrap_err();
        assert_eq!(refused.scope, Scope::Key);
        assert_eq!(refused.retry_after, Duration::from_secs(1800));
        let fast = key("fast", Some("5/sec"));
        for _ in 0..5 {
            assert!(limiter.take(&fast).is_ok(), "the key's rate= wins");
        }
        assert!(limiter.take(&fast).is_err());
        let free = key("free", Some("none"));
        for _ in 0..100 {
            assert!(limiter.take(&free).is_ok());
        }
        // A reload with a new rate: a full bucket at that rate.
        let ci_now = key("ci", Some("1/day"));
        assert!(limiter.take(&ci_now).is_ok());
        assert_eq!(
            limiter.take(&ci_now).unwrap_err().retry_after,
            Duration::from_secs(86_400)
        );
        // `--anon-rate-limit none`, and runs resumed at start, are never limited.
        for _ in 0..100 {
            assert!(limiter.take(&anonymous("192.0.2.1")).is_ok());
            assert!(limiter.take(&Caller::Resumed { key: None }).is_ok());
        }
    }

    /// A flood from a million distinct addresses in one instant: the map never holds more
    /// than its cap, every address past it shares the overflow bucket (so the flood gets
    /// one bucket's burst more, not one per address), and sweeps free the room once buckets
    /// are full again.
    #[test]
    fn a_million_addresses_stay_within_the_cap() {
        let clock = Arc::new(Manual::default());
        let limiter = LocalLimiter::new(limit("60/min"), limit("10/min"), clock.clone());
        let mut admitted = 0usize;
        for n in 0..1_000_000u32 {
            let address = IpAddr::from((0x0a00_0000 + n).to_be_bytes());
            let caller = Caller::Anonymous {
                address: Some(address),
                authorized: true,
            };
            admitted += usize::from(limiter.take(&caller).is_ok());
        }
        let (tracked, cap, bytes) = limiter.anonymous_entries();
        assert!((MAX_ADDRESSES..MAX_ADDRESSES + 64).contains(&cap), "{cap}");
        assert_eq!(tracked, cap, "full, and no more");
        assert_eq!(
            admitted,
            cap + 10,
            "one bucket each, and one overflow burst"
        );
        assert!(bytes < 8 << 20, "{bytes} bytes of tables");
        eprintln!("1M addresses: {tracked} tracked, {bytes} bytes of tables");
        // A minute on every bucket is full again: the next overflow sweeps the map.
        clock.advance(Duration::from_secs(61));
        let mut admitted = 0usize;
        for n in 0..200_000u32 {
            let address = IpAddr::from((0x0b00_0000 + n).to_be_bytes());
            let caller = Caller::Anonymous {
                address: Some(address),
                authorized: true,
            };
            admitted += usize::from(limiter.take(&caller).is_ok());
        }
        let (tracked, _, _) = limiter.anonymous_entries();
        assert!(tracked <= cap);
        assert!(
            admitted > cap / 2,
            "new addresses got buckets after the sweep"
        );
    }
}
