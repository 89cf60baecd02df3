//! Per-key generation locks with a TTL and an owner token: one pipeline per key while it runs.
//!
//! The Go library released a lock unconditionally, so once a TTL expired a slow first run
//! could delete the lock of the second and both could write the same files. Here every lock
//! carries a token: only its owner may write artifacts, renew or release it.
//!
//! A live owner renews its lock well within the TTL (see
//! [`super::coordination::heartbeat`]), so the TTL only ever runs out for an owner that
//! stopped renewing — one that crashed, in a shared implementation — and only then can
//! [`LockTable::try_acquire`] hand the key to someone else.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::progress::RunKey;

/// Proof of holding a key's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

#[derive(Debug)]
struct Held {
    token: Token,
    expires: Instant,
}

/// The lock table (not synchronised: the generator keeps it under its own mutex, together
/// with the progress update that must be atomic with a takeover).
#[derive(Debug)]
pub struct LockTable {
    ttl: Duration,
    next: u64,
    held: HashMap<RunKey, Held>,
}

impl LockTable {
    /// An empty table whose locks expire after `ttl`.
    pub fn new(ttl: Duration) -> LockTable {
        LockTable {
            ttl,
            next: 1,
            held: HashMap::new(),
        }
    }

    /// Takes the lock when it is free or expired.
    pub fn try_acquire(&mut self, key: &RunKey) -> Option<Token> {
        let now = Instant::now();
        if self.held.get(key).is_some_and(|h| h.expires > now) {
            return None;
        }
        let token = Token(self.next);
        self.next += 1;
        self.held.insert(
            key.clone(),
            Held {
                token,
                expires: now + self.ttl,
            },
        );
        Some(token)
    }

    /// The lock's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Extends `token`'s lock on `key` by a full TTL from now; `false` when `token` no longer
    /// owns it (taken over after it expired).
    pub fn renew(&mut self, key: &RunKey, token: Token) -> bool {
        let expires = Instant::now() + self.ttl;
        match self.held.get_mut(key) {
            Some(held) if held.token == token => {
                held.expires = expires;
                true
            }
            _ => false,
        }
    }

    /// True while `token` still holds `key` (an expired lock that nobody took over still
    /// counts: no one else can be writing).
    pub fn owns(&self, key: &RunKey, token: Token) -> bool {
        self.held.get(key).is_some_and(|h| h.token == token)
    }

    /// True when some unexpired lock holds `key`.
    pub fn is_held(&self, key: &RunKey) -> bool {
        self.held
            .get(key)
            .is_some_and(|h| h.expires > Instant::now())
    }

    /// Releases `key` if `token` still owns it.
    pub fn release(&mut self, key: &RunKey, token: Token) {
        if self.owns(key, token) {
            self.held.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RunKey {
        RunKey::new(
            crate::domain::SeriesName::normalize("simple"),
            crate::domain::Seed::new("abc"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_until_release_or_expiry() {
        let mut table = LockTable::new(Duration::from_secs(300));
        let first = table.try_acquire(&key()).unwrap();
        assert!(table.try_acquire(&key()).is_none());
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(table.try_acquire(&key()).is_none());
        table.release(&key(), first);
        let second = table.try_acquire(&key()).unwrap();
        assert_ne!(first, second);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_owner_can_neither_write_nor_release_after_a_takeover() {
        let mut table = LockTable::new(Duration::from_secs(60));
        let first = table.try_acquire(&key()).unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            table.owns(&key(), first),
            "expired but not taken over: still the only writer"
        );
        assert!(!table.is_held(&key()));
        let second = table.try_acquire(&key()).unwrap();
        assert!(!table.owns(&key(), first));
        table.release(&key(), first);
        assert!(
            table.owns(&key(), second),
            "the stale owner must not release the new lock"
        );
        assert!(!table.renew(&key(), first), "nor renew it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewed_lock_outlives_its_ttl() {
        let mut table = LockTable::new(Duration::from_secs(60));
        let first = table.try_acquire(&key()).unwrap();
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(40)).await;
            assert!(table.renew(&key(), first));
            assert!(
                table.try_acquire(&key()).is_none(),
                "held past its first TTL"
            );
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            table.try_acquire(&key()).is_some(),
            "not renewed: free again"
        );
    }
}
