//! The anonymous callers' buckets: a sharded map from client address group to its bucket's
//! state (the GCRA's theoretical arrival time), bounded in entries however many distinct
//! addresses arrive.
//!
//! A flood from a million addresses must not grow the map to a million entries. Each of
//! [`SHARDS`] shards holds at most its share of [`MAX_ADDRESSES`]; an address that finds its
//! shard full is charged to one **overflow** bucket shared by every such address, at the same
//! rate, until a sweep makes room. So past the cap a flood gets one bucket's worth of runs
//! more, not one per address, and memory stays fixed. A sweep drops the buckets that are full
//! again (indistinguishable from a fresh one, governor's `retain_recent`); the limiter runs
//! one when an address overflowed, at most once a second ([`LocalLimiter`]).
//!
//! [`LocalLimiter`]: super::LocalLimiter

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

/// Shards of the map: concurrent callers rarely wait on one another's lock.
pub const SHARDS: usize = 64;
/// Most anonymous address groups tracked at once (rounded up to a multiple of [`SHARDS`]).
pub const MAX_ADDRESSES: usize = 100_000;

/// The bucket an anonymous caller is counted in: its IPv4 address, or the /64 network of its
/// IPv6 address (a host, or one subscriber, is usually given a whole /64, so counting single
/// IPv6 addresses would give one client 2^64 buckets). IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressGroup {
    V4([u8; 4]),
    V6([u8; 8]),
    /// No address known (a request that did not come over TCP): one shared bucket.
    Unknown,
}

impl AddressGroup {
    /// The group of `address`.
    pub fn of(address: Option<IpAddr>) -> AddressGroup {
        match address.map(|a| a.to_canonical()) {
            Some(IpAddr::V4(v4)) => AddressGroup::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                AddressGroup::V6(prefix)
            }
            None => AddressGroup::Unknown,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bounded map (see the module docs).
#[derive(Debug)]
pub struct BoundedStore<K> {
    shards: Box<[Mutex<HashMap<K, Nanos>>]>,
    per_shard: usize,
    hasher: RandomState,
    /// The bucket shared by the addresses that found their shard full.
    overflow: Mutex<Option<Nanos>>,
    /// An address overflowed since the last sweep.
    crowded: AtomicBool,
}

impl<K: Hash + Eq + Clone> BoundedStore<K> {
    /// A map of at most `max` entries (rounded up to a multiple of [`SHARDS`]).
    pub fn new(max: usize) -> BoundedStore<K> {
        BoundedStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            overflow: Mutex::new(None),
            crowded: AtomicBool::new(false),
        }
    }

    /// The most entries the map ever holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Nanos>> {
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &self.shards[index]
    }

    /// Whether an address overflowed since the last call (which clears it).
    pub fn take_crowded(&self) -> bool {
        self.crowded.swap(false, Ordering::Relaxed)
    }

    /// Bytes the entry tables hold now: each bucket of a table stores a key, a state and one
    /// control byte, and a table has 8 buckets for every 7 entries it can hold.
    pub fn table_bytes(&self) -> usize {
        let per_bucket = std::mem::size_of::<(K, Nanos)>() + 1;
        self.shards
            .iter()
            .map(|s| lock(s).capacity().div_ceil(7) * 8 * per_bucket)
            .sum()
    }
}

impl<K: Hash + Eq + Clone> StateStore for BoundedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut shard = lock(self.shard(key));
        if let Some(tat) = shard.get_mut(key) {
            let (out, next) = f(Some(*tat))?;
            *tat = next;
            return Ok(out);
        }
        if shard.len() < self.per_shard {
            let (out, next) = f(None)?;
            shard.insert(key.clone(), next);
            return Ok(out);
        }
        drop(shard);
        self.crowded.store(true, Ordering::Relaxed);
        let mut overflow = lock(&self.overflow);
        let (out, next) = f(*overflow)?;
        *overflow = Some(next);
        Ok(out)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for BoundedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        for shard in self.shards.iter() {
            lock(shard).retain(|_, tat| *tat > drop_below);
        }
        let mut overflow = lock(&self.overflow);
        if overflow.is_some_and(|tat| tat <= drop_below) {
            *overflow = None;
        }
    }

    fn shrink_to_fit(&self) {
        for shard in self.shards.iter() {
            lock(shard).shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| lock(s).is_empty())
    }
}

/// The store shared between the governor limiter that owns it and the [`super::LocalLimiter`]
/// that sweeps it and reads its size.
#[derive(Debug)]
pub struct Shared<K>(pub Arc<BoundedStore<K>>);

impl<K: Hash + Eq + Clone> StateStore for Shared<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for Shared<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_its_64_bit_prefix_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddressGroup::of(Some(a)), AddressGroup::of(Some(b)));
        assert_ne!(AddressGroup::of(Some(a)), AddressGroup::of(Some(c)));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            AddressGroup::of(Some(mapped)),
            AddressGroup::V4([192, 0, 2, 7])
        );
        assert_eq!(AddressGroup::of(None), AddressGroup::Unknown);
    }

    /// One admission as the GCRA would make it: a fresh or known bucket moves on by one.
    fn touch(store: &BoundedStore<AddressGroup>, key: AddressGroup, now: u64) {
        let _: Result<(), ()> = store.measure_and_replace(&key, |tat| {
            let tat = tat.map_or(now, u64::from).max(now);
            Ok(((), Nanos::from(tat + 1)))
        });
    }

    #[test]
    fn a_full_shard_sends_new_addresses_to_the_overflow_bucket() {
        let store = BoundedStore::new(SHARDS); // one entry a shard
        for n in 0..1000u32 {
            touch(&store, AddressGroup::V4(n.to_be_bytes()), 10);
        }
        assert_eq!(store.len(), SHARDS);
        assert!(store.take_crowded());
        assert!(!store.take_crowded(), "cleared by reading it");
        assert!(lock(&store.overflow).is_some());
        // Every bucket is full again by t = 2000: a sweep empties the map and the overflow.
        store.retain_recent(Nanos::from(2000));
        assert!(store.is_empty());
        assert!(lock(&store.overflow).is_none());
    }
}
