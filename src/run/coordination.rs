//! The run core's coordination, as narrow traits: who may run a key ([`Leases`]) and the
//! wait for a concurrency slot ([`RunQueue`]). Today's implementations keep everything in this
//! process ([`LocalLeases`], [`LocalQueue`]); a shared implementation (Redis) can stand behind
//! the same traits without anything above the run core knowing which one is in use.
//!
//! Run progress is published to a [`RunRegistry`], which answers polls; a run writes to it only
//! while it owns its key (see [`Leases::while_owned`]). Today's registry is
//! [`crate::progress::Progress`], in this process.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::locks::{LockTable, Token};
use crate::attributes::dress::DalleDress;
use crate::progress::{
    Phase, PolledSnapshot, Progress, QueuePlace, RetryWait, RunKey, Snapshot, StartOutcome,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One lease per key: the run that holds it is the only one that may write the key's progress
/// and files. A run holds its lease only while it works — not while it waits in the queue —
/// and renews it while it is alive ([`heartbeat`]); the TTL is only for an owner that stopped
/// renewing (crashed), so that it cannot block a key forever. An expired lease nobody has
/// taken over still counts as owned (no one else can be writing).
pub trait Leases: Send + Sync + fmt::Debug {
    /// Takes the key's lease when it is free or expired; `None` when another run holds it.
    fn try_acquire(&self, key: &RunKey) -> Option<Token>;

    /// Extends `token`'s lease by a full TTL; `false` when it no longer owns `key`.
    fn renew(&self, key: &RunKey, token: Token) -> bool;

    /// The lease's time to live.
    fn ttl(&self) -> Duration;

    /// Whether an unexpired lease holds `key`.
    fn is_held(&self, key: &RunKey) -> bool;

    /// Runs `f` only while `token` owns `key`, so that no takeover can happen in between;
    /// `false` (and `f` not run) when the lease was taken over.
    fn while_owned(&self, key: &RunKey, token: Token, f: &mut dyn FnMut()) -> bool;

    /// Gives the lease up (only its owner can).
    fn release(&self, key: &RunKey, token: Token);
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
    fn try_acquire(&self, key: &RunKey) -> Option<Token> {
        lock(&self.0).try_acquire(key)
    }

    fn renew(&self, key: &RunKey, token: Token) -> bool {
        lock(&self.0).renew(key, token)
    }

    fn ttl(&self) -> Duration {
        lock(&self.0).ttl()
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

    fn release(&self, key: &RunKey, token: Token) {
        lock(&self.0).release(key, token);
    }
}

/// The lease a run holds: its current token, shared by the run and its [`heartbeat`] (a run
/// that had to take its lease again gets a new token).
#[derive(Debug)]
pub struct HeldLease(Mutex<Token>);

impl HeldLease {
    /// The lease `token` proves.
    pub fn new(token: Token) -> HeldLease {
        HeldLease(Mutex::new(token))
    }

    /// The current token.
    pub fn token(&self) -> Token {
        *lock(&self.0)
    }

    /// Replaces the token (the lease was taken again).
    pub fn set(&self, token: Token) {
        *lock(&self.0) = token;
    }
}

/// How often a live run renews its lease, and how often a run waits before asking again for a
/// lease someone else holds: a third of the TTL, so two renewals can be missed (a stalled
/// runtime) before the lease runs out.
pub fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

/// Takes `key`'s lease, waiting while another run holds it. In this process no other run can
/// hold it (the generator starts one run per key), so this returns at once; with a shared
/// implementation the other holder is a live run elsewhere, or a crashed one whose TTL runs
/// out.
pub async fn acquire(leases: &dyn Leases, key: &RunKey) -> Token {
    loop {
        if let Some(token) = leases.try_acquire(key) {
            return token;
        }
        tokio::time::sleep(renew_interval(leases.ttl())).await;
    }
}

/// Drives `work` to its end while renewing `lease` every [`renew_interval`], so the lease is
/// held for as long as the run is alive, however long its image takes.
pub async fn heartbeat<F: Future>(
    leases: &dyn Leases,
    key: &RunKey,
    lease: &HeldLease,
    work: F,
) -> F::Output {
    let period = renew_interval(leases.ttl());
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    let mut lost = false;
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            _ = beat.tick() => {
                let renewed = leases.renew(key, lease.token());
                if !renewed && !lost {
                    tracing::warn!(%key, "the run's lease was taken over; it can no longer write until it takes it again");
                }
                lost = !renewed;
            }
        }
    }
}

/// The registry of runs: one entry per key with its phases, dress, outcome and queue place,
/// kept for a retention window after the run ends, so every poll can answer it.
pub trait RunRegistry: Send + Sync + fmt::Debug {
    /// Registers a new run unless one is in flight.
    fn start(&self, key: &RunKey, request_id: &str) -> StartOutcome;
    /// Registers a new run, replacing whatever the registry holds for the key (the caller has
    /// made sure no run of its own is in flight for it).
    fn restart(&self, key: &RunKey, request_id: &str);
    /// Sets or clears the place of a run waiting for a slot (its position is read from it).
    fn set_queue_place(&self, key: &RunKey, place: Option<QueuePlace>);
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
    /// The runs that failed and are still retained (the gallery's failed cards).
    fn failed(&self) -> Vec<Snapshot>;
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
    fn set_queue_place(&self, key: &RunKey, place: Option<QueuePlace>) {
        Progress::set_queue_place(self, key, place);
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
    fn failed(&self) -> Vec<Snapshot> {
        Progress::failed(self)
    }

    fn set_retrying(&self, key: &RunKey, wait: Option<&RetryWait>) {
        Progress::set_retrying(self, key, wait);
    }
}

/// A slot to run in; the run holds it until it ends, and dropping it hands it to the next run
/// in the queue.
#[derive(Debug)]
pub struct Slot(Arc<Mutex<Waiting>>);

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.0).release_slot();
    }
}

/// The boxed future of [`Admission::turn`].
pub type Turn = Pin<Box<dyn Future<Output = Option<Slot>> + Send>>;

/// A run admitted to the queue.
pub struct Admission {
    /// Where the run stands while it waits; `None` when a slot was free at once.
    pub place: Option<QueuePlace>,
    /// Resolves with the run's slot once its turn has come (at once when a slot was free);
    /// `None` only if the queue was shut down. Dropping it leaves the queue.
    pub turn: Turn,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

/// The queue already holds its maximum of waiting runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the generation queue is full ({waiting} runs waiting); retry later")]
pub struct QueueFull {
    /// Runs waiting when this one was refused.
    pub waiting: usize,
}

/// How long a client refused with [`QueueFull`] is asked to wait (`Retry-After`).
pub const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Concurrency slots and the bounded queue of runs waiting for one, served in arrival order.
pub trait RunQueue: Send + Sync + fmt::Debug {
    /// Admits a run for `key`: a free slot at once, or the next place in the queue; refused
    /// when the queue already holds its maximum of waiting runs.
    fn admit(&self, key: &RunKey) -> Result<Admission, QueueFull>;

    /// Runs waiting for a slot.
    fn waiting(&self) -> usize;
}

/// The queue in this process: `max_concurrent` slots and at most `max_queue` waiting runs.
///
/// Each waiting run holds a ticket, numbered in arrival order; a freed slot goes to the lowest
/// live ticket. A run's position is the number of live tickets up to its own, counted by a
/// Fenwick tree over the tickets, so entering, leaving (from anywhere: the head when a slot is
/// granted, the middle when a waiting run is dropped) and reading a position each cost
/// O(log n), and nothing is republished when the queue moves.
pub struct LocalQueue {
    state: Arc<Mutex<Waiting>>,
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("LocalQueue")
            .field("free_slots", &state.free)
            .field("waiting", &state.tickets.live)
            .field("max_queue", &state.max_queue)
            .finish()
    }
}

impl LocalQueue {
    /// A queue with `max_concurrent` slots (at least one) and room for `max_queue` waiting
    /// runs.
    pub fn new(max_concurrent: usize, max_queue: usize) -> LocalQueue {
        LocalQueue {
            state: Arc::new(Mutex::new(Waiting {
                free: max_concurrent.max(1),
                max_queue,
                tickets: Tickets::default(),
                waiters: HashMap::new(),
            })),
        }
    }
}

impl RunQueue for LocalQueue {
    fn admit(&self, _key: &RunKey) -> Result<Admission, QueueFull> {
        let mut state = lock(&self.state);
        // A live ticket means no slot is free (a freed slot goes to it), so a free slot can
        // be taken only when nobody waits in the order.
        if state.free > 0 && state.tickets.live == 0 {
            state.free -= 1;
            let slot = Slot(self.state.clone());
            return Ok(Admission {
                place: None,
                turn: Box::pin(std::future::ready(Some(slot))),
            });
        }
        if state.tickets.live >= state.max_queue {
            return Err(QueueFull {
                waiting: state.tickets.live,
            });
        }
        let ticket = state.tickets.push();
        let notify = Arc::new(Notify::new());
        state.waiters.insert(
            ticket,
            Waiter {
                notify: notify.clone(),
                granted: false,
            },
        );
        drop(state);
        let reader = Arc::downgrade(&self.state);
        let place = QueuePlace::new(move || {
            let state = reader.upgrade()?;
            let state = lock(&state);
            state.position(ticket)
        });
        let mut queued = Queued {
            state: self.state.clone(),
            ticket,
            done: false,
        };
        let turn = async move {
            loop {
                if queued.take_grant() {
                    queued.done = true;
                    return Some(Slot(queued.state.clone()));
                }
                notify.notified().await;
            }
        };
        Ok(Admission {
            place: Some(place),
            turn: Box::pin(turn),
        })
    }

    fn waiting(&self) -> usize {
        lock(&self.state).tickets.live
    }
}

/// The queue's state: free slots, the live tickets and who waits on each.
#[derive(Debug)]
struct Waiting {
    free: usize,
    max_queue: usize,
    tickets: Tickets,
    /// Every waiting run by ticket, granted or not (a granted run has left the order but not
    /// yet taken its slot).
    waiters: HashMap<u64, Waiter>,
}

#[derive(Debug)]
struct Waiter {
    notify: Arc<Notify>,
    granted: bool,
}

impl Waiting {
    /// A slot came free: it goes to the lowest live ticket, or back to the pool.
    fn release_slot(&mut self) {
        match self.tickets.pop_first() {
            Some(ticket) => match self.waiters.get_mut(&ticket) {
                Some(waiter) => {
                    waiter.granted = true;
                    waiter.notify.notify_one();
                }
                // Every live ticket has a waiter; never leak the slot if that ever breaks.
                None => self.free += 1,
            },
            None => self.free += 1,
        }
    }

    /// The 1-based position of a ticket still waiting in the order (a granted ticket has
    /// left it).
    fn position(&self, ticket: u64) -> Option<usize> {
        self.tickets.rank(ticket)
    }
}

/// A waiting run's ticket: leaving the queue without taking the slot (the run was dropped)
/// removes the ticket, or passes on a slot already granted to it.
struct Queued {
    state: Arc<Mutex<Waiting>>,
    ticket: u64,
    done: bool,
}

impl Queued {
    /// Whether the slot was granted; if so the ticket is gone and the slot is the caller's.
    fn take_grant(&self) -> bool {
        let mut state = lock(&self.state);
        if state.waiters.get(&self.ticket).is_some_and(|w| w.granted) {
            state.waiters.remove(&self.ticket);
            return true;
        }
        false
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = lock(&self.state);
        match state.waiters.remove(&self.ticket) {
            Some(waiter) if waiter.granted => state.release_slot(),
            Some(_) => state.tickets.remove(self.ticket),
            None => {}
        }
    }
}

/// Live tickets in arrival order: ticket `t` is index `t - offset` of a Fenwick tree of 0/1
/// counts, appended to as tickets are issued. The dead front is cut off once it is most of
/// the tree, so its size follows the queue's, at O(1) amortised cost.
#[derive(Debug, Default)]
struct Tickets {
    /// Fenwick tree, 1-based: `tree[i - 1]` sums the counts of indices `(i - lowbit(i), i]`.
    tree: Vec<u32>,
    /// The ticket at index 1.
    offset: u64,
    live: usize,
}

fn lowbit(i: usize) -> usize {
    i & i.wrapping_neg()
}

impl Tickets {
    /// Issues the next ticket, live.
    fn push(&mut self) -> u64 {
        let i = self.tree.len() + 1;
        // The new node covers (i - lowbit(i), i]: itself plus the indices before it.
        let covered = self.prefix(i - 1) - self.prefix(i - lowbit(i));
        self.tree.push(covered + 1);
        self.live += 1;
        self.offset + i as u64 - 1
    }

    /// Live tickets at indices 1..=i.
    fn prefix(&self, mut i: usize) -> u32 {
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i - 1];
            i -= lowbit(i);
        }
        sum
    }

    fn index(&self, ticket: u64) -> Option<usize> {
        let i = usize::try_from(ticket.checked_sub(self.offset)?).ok()? + 1;
        (i <= self.tree.len()).then_some(i)
    }

    /// Whether `ticket` is live.
    fn is_live(&self, ticket: u64) -> bool {
        self.index(ticket)
            .is_some_and(|i| self.prefix(i) - self.prefix(i - 1) == 1)
    }

    /// The 1-based rank of a live ticket among the live ones.
    fn rank(&self, ticket: u64) -> Option<usize> {
        let i = self.index(ticket)?;
        self.is_live(ticket).then(|| self.prefix(i) as usize)
    }

    /// Removes a live ticket (from anywhere in the order).
    fn remove(&mut self, ticket: u64) {
        if !self.is_live(ticket) {
            return;
        }
        let Some(mut i) = self.index(ticket) else {
            return;
        };
        while i <= self.tree.len() {
            self.tree[i - 1] -= 1;
            i += lowbit(i);
        }
        self.live -= 1;
        self.trim();
    }

    /// Removes and returns the lowest live ticket.
    fn pop_first(&mut self) -> Option<u64> {
        let first = self.first()?;
        self.remove(first);
        Some(first)
    }

    /// The lowest live ticket: the smallest index whose prefix is 1, by descending the tree.
    fn first(&self) -> Option<u64> {
        if self.live == 0 {
            return None;
        }
        let (mut at, mut step) = (0, self.tree.len().next_power_of_two());
        while step > 0 {
            let next = at + step;
            if next <= self.tree.len() && self.tree[next - 1] == 0 {
                at = next;
            }
            step /= 2;
        }
        Some(self.offset + at as u64)
    }

    /// Cuts off the dead front once it is more than half the tree (rebuilding what is left in
    /// O(n), after at least n/2 removals), or everything once no ticket is live.
    fn trim(&mut self) {
        let len = self.tree.len();
        if self.live == 0 {
            self.offset += len as u64;
            self.tree.clear();
            return;
        }
        let Some(first) = self.first() else { return };
        let dead = usize::try_from(first - self.offset).unwrap_or(0);
        if len < 64 || dead * 2 < len {
            return;
        }
        let counts: Vec<u32> = (dead + 1..=len)
            .map(|i| self.prefix(i) - self.prefix(i - 1))
            .collect();
        let mut tree = counts;
        for i in 1..=tree.len() {
            let parent = i + lowbit(i);
            if parent <= tree.len() {
                tree[parent - 1] += tree[i - 1];
            }
        }
        self.tree = tree;
        self.offset = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Seed, SeriesName};

    fn key(n: u8) -> RunKey {
        RunKey::new(SeriesName::normalize("simple"), Seed::new(format!("s{n}")))
    }

    /// Positions of the admitted places, in admission order.
    fn positions(places: &[Option<QueuePlace>]) -> Vec<Option<usize>> {
        places
            .iter()
            .map(|p| p.as_ref().and_then(QueuePlace::position))
            .collect()
    }

    #[tokio::test]
    async fn positions_follow_arrivals_and_removals_from_anywhere() {
        let queue = LocalQueue::new(1, 10);
        let running = queue.admit(&key(0)).unwrap();
        assert!(running.place.is_none(), "a free slot: no queue place");
        let slot = running.turn.await.unwrap();
        let mut admitted: Vec<Admission> = (1..=4).map(|n| queue.admit(&key(n)).unwrap()).collect();
        let places: Vec<Option<QueuePlace>> = admitted.iter().map(|a| a.place.clone()).collect();
        assert_eq!(positions(&places), [Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(queue.waiting(), 4);

        // The third run leaves from the middle: the fourth moves up, the first two stay.
        drop(admitted.remove(2));
        assert_eq!(positions(&places), [Some(1), Some(2), None, Some(3)]);
        assert_eq!(queue.waiting(), 3);

        // The slot goes to the head of the queue, the rest move up.
        drop(slot);
        assert_eq!(positions(&places), [None, Some(1), None, Some(2)]);
        let first = admitted.remove(0).turn.await.unwrap();
        // A newcomer queues behind the others.
        let late = queue.admit(&key(9)).unwrap();
        assert_eq!(late.place.as_ref().and_then(QueuePlace::position), Some(3));
        drop(first);
        let second = admitted.remove(0).turn.await.unwrap();
        drop(second);
        let fourth = admitted.remove(0).turn.await.unwrap();
        assert_eq!(late.place.as_ref().and_then(QueuePlace::position), Some(1));
        drop(fourth);
        assert!(late.turn.await.is_some());
        assert_eq!(queue.waiting(), 0);
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_run_that_left_goes_to_the_next() {
        let queue = LocalQueue::new(1, 10);
        let slot = queue.admit(&key(0)).unwrap().turn.await.unwrap();
        let gone = queue.admit(&key(1)).unwrap();
        let next = queue.admit(&key(2)).unwrap();
        drop(slot); // granted to `gone`, which never takes it
        drop(gone);
        assert!(
            next.turn.await.is_some(),
            "the slot was passed on, not lost"
        );
    }

    #[test]
    fn a_full_queue_refuses_and_room_comes_back() {
        let queue = LocalQueue::new(1, 2);
        let _running = queue.admit(&key(0)).unwrap();
        let first = queue.admit(&key(1)).unwrap();
        let _second = queue.admit(&key(2)).unwrap();
        assert_eq!(queue.admit(&key(3)).unwrap_err(), QueueFull { waiting: 2 });
        drop(first);
        assert!(queue.admit(&key(3)).is_ok());
    }

    #[test]
    fn tickets_rank_like_a_sorted_list_through_trims() {
        let mut tickets = Tickets::default();
        let mut model: Vec<u64> = Vec::new();
        // A deterministic mix of arrivals, head removals and removals from the middle, long
        // enough for the dead front to be trimmed many times.
        let mut state = 7u64;
        for round in 0..5000u64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            match state >> 61 {
                0..=3 => model.push(tickets.push()),
                4 | 5 if !model.is_empty() => {
                    assert_eq!(tickets.pop_first(), Some(model.remove(0)));
                }
                _ if !model.is_empty() => {
                    let at = (state as usize >> 8) % model.len();
                    tickets.remove(model.remove(at));
                }
                _ => {}
            }
            if round % 97 == 0 {
                for (i, t) in model.iter().enumerate() {
                    assert_eq!(tickets.rank(*t), Some(i + 1), "round {round}");
                }
            }
            assert_eq!(tickets.live, model.len());
            assert_eq!(tickets.first(), model.first().copied());
            // Trimmed on removal: after any removal the dead front is under half the tree.
            if let (Some(first), false) = (tickets.first(), state >> 61 <= 3) {
                let dead = usize::try_from(first - tickets.offset).unwrap();
                let len = tickets.tree.len();
                assert!(
                    len < 64 || dead * 2 < len,
                    "round {round}: {dead} of {len} dead"
                );
            }
            if model.is_empty() {
                assert!(tickets.tree.is_empty(), "emptied: nothing kept");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leases_run_work_only_for_their_owner() {
        let leases = LocalLeases::new(Duration::from_secs(60));
        let first = leases.try_acquire(&key(1)).unwrap();
        assert!(leases.try_acquire(&key(1)).is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        let second = leases.try_acquire(&key(1)).unwrap();
        let mut ran = false;
        assert!(!leases.while_owned(&key(1), first, &mut || ran = true));
        assert!(!ran, "a taken-over owner writes nothing");
        assert!(leases.while_owned(&key(1), second, &mut || ran = true) && ran);
        assert!(!leases.renew(&key(1), first));
        leases.release(&key(1), first);
        assert!(leases.is_held(&key(1)), "the stale owner cannot release it");
        leases.release(&key(1), second);
        assert!(!leases.is_held(&key(1)));
    }

    /// A run whose work outlasts the TTL many times over keeps its lease the whole time: no
    /// one can take it over while the run is alive, and it is free the moment the run ends.
    #[tokio::test(start_paused = true)]
    async fn a_working_run_renews_its_lease_past_the_ttl() {
        let ttl = Duration::from_secs(3);
        let leases = LocalLeases::new(ttl);
        let token = acquire(&leases, &key(1)).await;
        let held = HeldLease::new(token);
        let (checked_tx, checked_rx) = tokio::sync::oneshot::channel();
        let work = async {
            // Check twenty times over a span of ten TTLs, each check a moment before a
            // lease that had not been renewed would have run out.
            for _ in 0..20 {
                tokio::time::sleep(ttl / 2).await;
                assert!(leases.is_held(&key(1)));
                assert!(
                    leases.try_acquire(&key(1)).is_none(),
                    "taken over while alive"
                );
            }
            let _ = checked_tx.send(());
        };
        heartbeat(&leases, &key(1), &held, work).await;
        checked_rx.await.unwrap();
        assert!(leases.while_owned(&key(1), held.token(), &mut || {}));
        leases.release(&key(1), held.token());
        assert!(leases.try_acquire(&key(1)).is_some());
    }
}
