//! The run core's coordination, as narrow traits: who may run a key ([`Leases`]) and the
//! wait for a concurrency slot ([`RunQueue`]). Today's implementations keep everything in this
//! process ([`LocalLeases`], [`LocalQueue`]); a shared implementation (Redis) can stand behind
//! the same traits without anything above the run core knowing which one is in use.
//!
//! Run progress is published to a [`RunRegistry`], which answers polls; a run writes to it only
//! while it owns its key (see [`Leases::while_owned`]). Today's registry is
//! [`crate::progress::Progress`], in this process.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::locks::{LockTable, Token};
use crate::attributes::dress::DalleDress;
use crate::progress::{Phase, PolledSnapshot, Progress, RetryWait, RunKey, Snapshot, StartOutcome};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One lease per key: the run that holds it is the only one that may write the key's progress
/// and files. A lease expires after its TTL so a crashed owner cannot block a key forever; an
/// expired lease nobody has taken over still counts as owned (no one else can be writing).
pub trait Leases: Send + Sync + fmt::Debug {
    /// Takes the key's lease when it is free or expired and runs `then` with it before anyone
    /// else can take it; `None` when another run holds it.
    fn try_acquire(&self, key: &RunKey, then: &mut dyn FnMut(Token)) -> Option<Token>;

    /// Whether an unexpired lease holds `key`.
    fn is_held(&self, key: &RunKey) -> bool;

    /// Runs `f` only while `token` owns `key`, so that no takeover can happen in between;
    /// `false` (and `f` not run) when the lease was taken over.
    fn while_owned(&self, key: &RunKey, token: Token, f: &mut dyn FnMut()) -> bool;

    /// Gives the lease up (only its owner can) and runs `then` if it still owned it.
    fn release(&self, key: &RunKey, token: Token, then: &mut dyn FnMut());
}

/// Leases in this process.
#[derive(Debug)]
pub struct LocalLeases(Mutex<LockTable>);

impl LocalLeases {
    /// Leases that expire after `ttl`.
    pub fn new(ttl: Duration) -> LocalLeases {
        LocalLeases(Mutex::new(LockTable::new(ttl)))
    }
}

impl Leases for LocalLeases {
    fn try_acquire(&self, key: &RunKey, then: &mut dyn FnMut(Token)) -> Option<Token> {
        let mut table = lock(&self.0);
        let token = table.try_acquire(key)?;
        then(token);
        Some(token)
    }

    fn is_held(&self, key: &RunKey) -> bool {
        lock(&self.0).is_held(key)
    }

    fn while_owned(&self, key: &RunKey, token: Token, f: &mut dyn FnMut()) -> bool {
        let table = lock(&self.0);
        if !table.owns(key, token) {
            return false;
        }
        f();
        true
    }

    fn release(&self, key: &RunKey, token: Token, then: &mut dyn FnMut()) {
        let mut table = lock(&self.0);
        if table.owns(key, token) {
            then();
        }
        table.release(key, token);
    }
}

/// The registry of runs: one entry per key with its phases, dress, outcome and queue place,
/// kept for a retention window after the run ends, so every poll can answer it.
pub trait RunRegistry: Send + Sync + fmt::Debug {
    /// Registers a new run unless one is in flight.
    fn start(&self, key: &RunKey, request_id: &str) -> StartOutcome;
    /// Registers a new run even if one is in flight (its lease was taken over).
    fn restart(&self, key: &RunKey, request_id: &str);
    /// Sets or clears the 1-based queue place of a run waiting for a slot.
    fn set_queue_position(&self, key: &RunKey, position: Option<usize>);
    /// Moves a run to `phase`.
    fn transition(&self, key: &RunKey, phase: Phase);
    /// Marks `phase` skipped.
    fn skip(&self, key: &RunKey, phase: Phase);
    /// Sets the run's DalleDress.
    fn set_dress(&self, key: &RunKey, dress: DalleDress);
    /// Edits the run's DalleDress.
    fn update_dress(&self, key: &RunKey, edit: &mut dyn FnMut(&mut DalleDress));
    /// Completes a run.
    fn complete(&self, key: &RunKey);
    /// Completes a run as a cache hit.
    fn complete_cache_hit(&self, key: &RunKey);
    /// Fails a run with a message and its stable code.
    fn fail(&self, key: &RunKey, error: String, code: &'static str);
    /// The run's snapshot.
    fn snapshot(&self, key: &RunKey) -> Option<Snapshot>;
    /// The run's snapshot as JSON (what a poll answers).
    fn poll(&self, key: &RunKey) -> Option<PolledSnapshot>;
    /// Removes a finished run; `false` when there was none or it is still in flight.
    fn forget(&self, key: &RunKey) -> bool;
    /// Whether a run for `key` has started and not finished.
    fn is_in_flight(&self, key: &RunKey) -> bool;
    /// The runs not finished yet (the gallery's live cards).
    fn in_flight(&self) -> Vec<Snapshot>;
    /// Records that a run waits to retry a provider call (`None`: the next attempt started).
    fn set_retrying(&self, key: &RunKey, wait: Option<&RetryWait>);
}

impl RunRegistry for Progress {
    fn start(&self, key: &RunKey, request_id: &str) -> StartOutcome {
        Progress::start(self, key, request_id)
    }
    fn restart(&self, key: &RunKey, request_id: &str) {
        Progress::restart(self, key, request_id);
    }
    fn set_queue_position(&self, key: &RunKey, position: Option<usize>) {
        Progress::set_queue_position(self, key, position);
    }
    fn transition(&self, key: &RunKey, phase: Phase) {
        Progress::transition(self, key, phase);
    }
    fn skip(&self, key: &RunKey, phase: Phase) {
        Progress::skip(self, key, phase);
    }
    fn set_dress(&self, key: &RunKey, dress: DalleDress) {
        Progress::set_dress(self, key, dress);
    }
    fn update_dress(&self, key: &RunKey, edit: &mut dyn FnMut(&mut DalleDress)) {
        Progress::update_dress(self, key, edit);
    }
    fn complete(&self, key: &RunKey) {
        Progress::complete(self, key);
    }
    fn complete_cache_hit(&self, key: &RunKey) {
        Progress::complete_cache_hit(self, key);
    }
    fn fail(&self, key: &RunKey, error: String, code: &'static str) {
        Progress::fail(self, key, error, code);
    }
    fn snapshot(&self, key: &RunKey) -> Option<Snapshot> {
        Progress::snapshot(self, key)
    }
    fn poll(&self, key: &RunKey) -> Option<PolledSnapshot> {
        Progress::poll(self, key)
    }
    fn forget(&self, key: &RunKey) -> bool {
        Progress::forget(self, key)
    }
    fn is_in_flight(&self, key: &RunKey) -> bool {
        Progress::is_in_flight(self, key)
    }
    fn in_flight(&self) -> Vec<Snapshot> {
        Progress::in_flight(self)
    }
    fn set_retrying(&self, key: &RunKey, wait: Option<&RetryWait>) {
        Progress::set_retrying(self, key, wait);
    }
}

/// A slot to run in; the run holds it until it ends.
#[derive(Debug)]
// Never read: the permit is held only so that dropping the slot frees it.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

/// The boxed future of [`RunQueue::wait_turn`].
pub type Turn<'a> = Pin<Box<dyn Future<Output = Option<Slot>> + Send + 'a>>;

/// Where queue positions are published (the run registry, for polls).
pub type OnPosition = Arc<dyn Fn(&RunKey, Option<usize>) + Send + Sync>;

/// Concurrency slots and the queue of runs waiting for one, in arrival order.
pub trait RunQueue: Send + Sync + fmt::Debug {
    /// Resolves with a slot once `key` may run (at once when a slot is free); `None` only if
    /// the queue was shut down.
    fn wait_turn<'a>(&'a self, key: &'a RunKey) -> Turn<'a>;

    /// Runs waiting for a slot.
    fn waiting(&self) -> usize;
}

/// The queue in this process: a semaphore of `max_concurrent` slots, and the waiting keys in
/// arrival order, whose 1-based positions are published on every change.
pub struct LocalQueue {
    slots: Arc<Semaphore>,
    waiting: Mutex<VecDeque<RunKey>>,
    on_position: OnPosition,
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field("free_slots", &self.slots.available_permits())
            .field("waiting", &lock(&self.waiting).len())
            .finish()
    }
}

impl LocalQueue {
    /// A queue with `max_concurrent` slots (at least one) publishing positions to `on_position`.
    pub fn new(max_concurrent: usize, on_position: OnPosition) -> LocalQueue {
        LocalQueue {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            waiting: Mutex::new(VecDeque::new()),
            on_position,
        }
    }

    fn publish(&self, waiting: &VecDeque<RunKey>) {
        for (i, k) in waiting.iter().enumerate() {
            (self.on_position)(k, Some(i + 1));
        }
    }
}

impl RunQueue for LocalQueue {
    fn wait_turn<'a>(&'a self, key: &'a RunKey) -> Turn<'a> {
        Box::pin(async move {
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Some(Slot(permit));
            }
            {
                let mut waiting = lock(&self.waiting);
                waiting.push_back(key.clone());
                self.publish(&waiting);
            }
            let permit = self.slots.clone().acquire_owned().await.ok();
            let mut waiting = lock(&self.waiting);
            waiting.retain(|k| k != key);
            (self.on_position)(key, None);
            self.publish(&waiting);
            permit.map(Slot)
        })
    }

    fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Seed, SeriesName};

    fn key(n: u8) -> RunKey {
        RunKey::new(SeriesName::normalize("simple"), Seed::new(format!("s{n}")))
    }

    #[tokio::test]
    async fn the_queue_publishes_positions_in_arrival_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let queue = Arc::new(LocalQueue::new(
            1,
            Arc::new(move |k: &RunKey, p| lock(&log).push((k.subject.to_string(), p))),
        ));
        let first = queue.wait_turn(&key(1)).await.unwrap();
        let (q2, q3) = (queue.clone(), queue.clone());
        let (k2, k3) = (key(2), key(3));
        let second = tokio::spawn(async move { q2.wait_turn(&k2).await.is_some() });
        while queue.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        let third = tokio::spawn(async move { q3.wait_turn(&k3).await.is_some() });
        while queue.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(lock(&seen).contains(&("s3".into(), Some(2))));
        drop(first);
        assert!(second.await.unwrap());
        assert!(lock(&seen).contains(&("s2".into(), None)));
        assert!(lock(&seen).contains(&("s3".into(), Some(1))), "moved up");
        assert!(third.await.unwrap());
        assert_eq!(queue.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn leases_run_work_only_for_their_owner() {
        let leases = LocalLeases::new(Duration::from_secs(60));
        let mut acquired = None;
        let first = leases
            .try_acquire(&key(1), &mut |t| acquired = Some(t))
            .unwrap();
        assert_eq!(acquired, Some(first));
        assert!(leases.try_acquire(&key(1), &mut |_| {}).is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        let second = leases.try_acquire(&key(1), &mut |_| {}).unwrap();
        let mut ran = false;
        assert!(!leases.while_owned(&key(1), first, &mut || ran = true));
        assert!(!ran, "a taken-over owner writes nothing");
        assert!(leases.while_owned(&key(1), second, &mut || ran = true) && ran);
        let mut released = false;
        leases.release(&key(1), first, &mut || released = true);
        assert!(!released && leases.is_held(&key(1)));
        leases.release(&key(1), second, &mut || released = true);
        assert!(released && !leases.is_held(&key(1)));
    }
}
