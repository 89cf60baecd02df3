//! [`LocalStore`]: the idempotency slots of one process, indexed in memory, each kept in its
//! own file `<data>/idempotency/<slot>.json`, written atomically when the key is claimed and
//! again when it is answered. The index holds no answers (they are read back from the file
//! on a replay), so memory stays at about a hundred bytes a slot whatever the answers weigh.
//!
//! File I/O for a slot happens under the index lock, so a slot being swept can never delete
//! the file of the request that claims it next. That serialises claims, at two fsyncs each;
//! the routes that take a key start paid runs, which are far slower.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Answer, Begin, Fingerprint, IdempotencyStore, Slot, StoreError, Wait};
use crate::budget::Clock;

/// One slot's file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    version: u32,
    fingerprint: String,
    /// When the key was first used, in milliseconds since the epoch: it expires a TTL later.
    created_ms: u64,
    /// `None` while the first request is in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answer: Option<Answer>,
}

#[derive(Debug)]
enum State {
    /// The owner works; retries subscribe.
    InFlight(watch::Sender<Wait>),
    /// Answered. The answer is in the file, or here when there is no file (in memory only,
    /// or its write failed).
    Done(Option<Answer>),
    /// Claimed by an earlier process that stopped before answering.
    Interrupted,
}

#[derive(Debug)]
struct Held {
    /// `None`: the file could not be read at start, so no request can be told apart from
    /// the first (every one is answered as interrupted).
    fingerprint: Option<Fingerprint>,
    created: SystemTime,
    state: State,
}

/// The slots of this process (see the module docs).
#[derive(Debug)]
pub struct LocalStore {
    /// `None`: in memory only.
    dir: Option<PathBuf>,
    ttl: Duration,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    slots: Mutex<HashMap<Slot, Held>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LocalStore {
    /// A store in memory only (tests).
    pub fn in_memory(ttl: Duration, max_keys: usize, clock: Arc<dyn Clock>) -> LocalStore {
        LocalStore {
            dir: None,
            ttl,
            max_keys,
            clock,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The store kept in `dir` (created if missing), with what an earlier process left there:
    /// answered slots are replayed, slots still in flight become interrupted, expired ones
    /// and leftover temporary files are removed.
    pub fn open(
        dir: PathBuf,
        ttl: Duration,
        max_keys: usize,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<LocalStore> {
        std::fs::create_dir_all(&dir)?;
        let now = clock.now();
        let mut slots = HashMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(slot) = name.strip_suffix(".json").and_then(Slot::from_hex) else {
                continue;
            };
            let held = load(&path);
            if held.created + ttl <= now {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            slots.insert(slot, held);
        }
        if !slots.is_empty() {
            let interrupted = slots
                .values()
                .filter(|h| matches!(h.state, State::Interrupted))
                .count();
            tracing::info!(
                slots = slots.len(),
                interrupted,
                "idempotency keys of the previous process loaded"
            );
        }
        Ok(LocalStore {
            dir: Some(dir),
            ttl,
            max_keys,
            clock,
            slots: Mutex::new(slots),
        })
    }

    fn path(&self, slot: Slot) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.json", slot.hex())))
    }

    fn write(&self, slot: Slot, stored: &Stored) -> Result<(), StoreError> {
        let Some(path) = self.path(slot) else {
            return Ok(());
        };
        serde_json::to_vec(stored)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::storage::write_atomic(&path, &bytes))
            .map_err(|source| StoreError::Write { path, source })
    }

    fn remove_file(&self, slot: Slot) {
        if let Some(path) = self.path(slot)
            && let Err(err) = std::fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %err, "cannot remove an idempotency record");
        }
    }

    fn expired(&self, held: &Held, now: SystemTime) -> bool {
        !matches!(held.state, State::InFlight(_)) && held.created + self.ttl <= now
    }

    /// Forgets every expired slot (the index is full).
    fn sweep(&self, slots: &mut HashMap<Slot, Held>, now: SystemTime) {
        let expired: Vec<Slot> = slots
            .iter()
            .filter(|(_, h)| self.expired(h, now))
            .map(|(s, _)| *s)
            .collect();
        for slot in expired {
            slots.remove(&slot);
            self.remove_file(slot);
        }
    }

    /// The answer of a done slot.
    fn answer(&self, slot: Slot, kept: &Option<Answer>) -> Option<Answer> {
        if kept.is_some() {
            return kept.clone();
        }
        let path = self.path(slot)?;
        let read = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Stored>(&b).map_err(|e| e.to_string()));
        match read {
            Ok(stored) => stored.answer,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot read a kept idempotent answer");
                None
            }
        }
    }
}

/// A slot's file as found at start. Unreadable, it stays held (interrupted, no fingerprint)
/// until it expires by its modification time: forgetting it could run a paid request twice.
fn load(path: &Path) -> Held {
    let parsed = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<Stored>(&b).map_err(|e| e.to_string()));
    match parsed {
        Ok(stored) => Held {
            fingerprint: Fingerprint::from_hex(&stored.fingerprint),
            created: UNIX_EPOCH + Duration::from_millis(stored.created_ms),
            state: match stored.answer {
                Some(_) => State::Done(None),
                None => State::Interrupted,
            },
        },
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "unreadable idempotency record; its key answers as interrupted until it expires");
            Held {
                fingerprint: None,
                created: std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| SystemTime::now()),
                state: State::Interrupted,
            }
        }
    }
}

impl IdempotencyStore for LocalStore {
    fn begin(&self, slot: Slot, fingerprint: Fingerprint) -> Result<Begin, StoreError> {
        let now = self.clock.now();
        let mut slots = lock(&self.slots);
        if slots.get(&slot).is_some_and(|h| self.expired(h, now)) {
            slots.remove(&slot);
            self.remove_file(slot);
        }
        if let Some(held) = slots.get(&slot) {
            if held.fingerprint.is_some_and(|f| f != fingerprint) {
                return Ok(Begin::Reused);
            }
            return Ok(match (&held.state, held.fingerprint) {
                (State::InFlight(tx), Some(_)) => Begin::InFlight(tx.subscribe()),
                (State::Done(kept), Some(_)) => match self.answer(slot, kept) {
                    Some(answer) => Begin::Done(answer),
                    None => Begin::Interrupted,
                },
                _ => Begin::Interrupted,
            });
        }
        if slots.len() >= self.max_keys {
            self.sweep(&mut slots, now);
        }
        if slots.len() >= self.max_keys {
            let retry_after = slots
                .values()
                .map(|h| {
                    (h.created + self.ttl)
                        .duration_since(now)
                        .unwrap_or_default()
                })
                .min()
                .unwrap_or(self.ttl)
                .max(Duration::from_secs(1));
            return Ok(Begin::Full { retry_after });
        }
        self.write(
            slot,
            &Stored {
                version: 1,
                fingerprint: fingerprint.hex(),
                created_ms: millis(now),
                answer: None,
            },
        )?;
        let (tx, _) = watch::channel(Wait::Running);
        slots.insert(
            slot,
            Held {
                fingerprint: Some(fingerprint),
                created: now,
                state: State::InFlight(tx),
            },
        );
        Ok(Begin::Claimed)
    }

    fn finish(&self, slot: Slot, answer: Option<Answer>) -> Result<(), StoreError> {
        let mut slots = lock(&self.slots);
        let Some(held) = slots.get_mut(&slot) else {
            return Ok(());
        };
        let State::InFlight(tx) = &held.state else {
            return Ok(());
        };
        let tx = tx.clone();
        let Some(answer) = answer else {
            slots.remove(&slot);
            self.remove_file(slot);
            tx.send_replace(Wait::Released);
            return Ok(());
        };
        let written = self.write(
            slot,
            &Stored {
                version: 1,
                fingerprint: held.fingerprint.map(|f| f.hex()).unwrap_or_default(),
                created_ms: millis(held.created),
                answer: Some(answer.clone()),
            },
        );
        // Kept in memory when there is no file, or when writing it failed: this process
        // still replays it, and a restart finds the key interrupted, never free.
        held.state = State::Done(match (&written, &self.dir) {
            (Ok(()), Some(_)) => None,
            _ => Some(answer.clone()),
        });
        tx.send_replace(Wait::Answered(answer));
        written
    }

    fn len(&self) -> usize {
        lock(&self.slots).len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IdempotencyKey, Scope};
    use super::*;

    #[derive(Debug)]
    struct Manual(Mutex<SystemTime>);

    impl Clock for Manual {
        fn now(&self) -> SystemTime {
            *lock(&self.0)
        }
    }

    impl Manual {
        fn advance(&self, by: Duration) {
            *lock(&self.0) += by;
        }
    }

    /// Starts at the real time: a torn file is dated by its modification time.
    fn clock() -> Arc<Manual> {
        Arc::new(Manual(Mutex::new(SystemTime::now())))
    }

    fn slot(key: &str) -> Slot {
        Slot::new(
            &Scope::Anonymous,
            &IdempotencyKey::parse(key.as_bytes()).unwrap(),
        )
    }

    fn fp(body: &str) -> Fingerprint {
        Fingerprint::of("generate", None, &serde_json::json!({"input": body}))
    }

    fn ok(n: u64) -> Answer {
        Answer::Data {
            status: 200,
            data: serde_json::json!({"n": n}),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_claim_is_joined_while_in_flight_then_replayed_and_a_new_body_refused() {
        let store = LocalStore::in_memory(DAY, 10, clock());
        assert!(matches!(
            store.begin(slot("a"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        let Begin::InFlight(mut rx) = store.begin(slot("a"), fp("x")).unwrap() else {
            panic!("a retry joins the request in flight");
        };
        assert_eq!(*rx.borrow_and_update(), Wait::Running);
        assert!(matches!(
            store.begin(slot("a"), fp("y")).unwrap(),
            Begin::Reused
        ));
        store.finish(slot("a"), Some(ok(1))).unwrap();
        assert_eq!(*rx.borrow(), Wait::Answered(ok(1)));
        match store.begin(slot("a"), fp("x")).unwrap() {
            Begin::Done(answer) => assert_eq!(answer, ok(1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.begin(slot("a"), fp("y")).unwrap(),
            Begin::Reused
        ));
        assert!(matches!(
            store.begin(slot("b"), fp("y")).unwrap(),
            Begin::Claimed
        ));
    }

    #[test]
    fn a_released_key_is_free_again_and_wakes_its_waiters() {
        let store = LocalStore::in_memory(DAY, 10, clock());
        assert!(matches!(
            store.begin(slot("a"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        let Begin::InFlight(rx) = store.begin(slot("a"), fp("x")).unwrap() else {
            panic!();
        };
        store.finish(slot("a"), None).unwrap();
        assert_eq!(*rx.borrow(), Wait::Released);
        assert!(store.is_empty());
        assert!(matches!(
            store.begin(slot("a"), fp("y")).unwrap(),
            Begin::Claimed
        ));
    }

    #[test]
    fn keys_expire_after_the_ttl_and_a_full_store_refuses_until_the_oldest_does() {
        let clock = clock();
        let store = LocalStore::in_memory(DAY, 2, clock.clone());
        assert!(matches!(
            store.begin(slot("a"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        store.finish(slot("a"), Some(ok(1))).unwrap();
        clock.advance(Duration::from_secs(3600));
        assert!(matches!(
            store.begin(slot("b"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        match store.begin(slot("c"), fp("x")).unwrap() {
            Begin::Full { retry_after } => assert_eq!(retry_after, DAY - Duration::from_secs(3600)),
            other => panic!("{other:?}"),
        }
        // Still replayed a second before its day ends, forgotten at the end.
        clock.advance(DAY - Duration::from_secs(3601));
        assert!(matches!(
            store.begin(slot("a"), fp("x")).unwrap(),
            Begin::Done(_)
        ));
        clock.advance(Duration::from_secs(1));
        assert!(matches!(
            store.begin(slot("c"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        assert!(
            matches!(
                store.begin(slot("a"), fp("other")).unwrap(),
                Begin::Full { .. }
            ),
            "a's slot went to c: the store is full again"
        );
        // A request in flight never expires under its owner.
        clock.advance(2 * DAY);
        assert!(matches!(
            store.begin(slot("b"), fp("x")).unwrap(),
            Begin::InFlight(_)
        ));
    }

    #[test]
    fn a_reopened_store_replays_answers_and_holds_interrupted_keys() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock();
        let open = || LocalStore::open(dir.path().join("idem"), DAY, 10, clock.clone()).unwrap();
        let store = open();
        assert!(matches!(
            store.begin(slot("done"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        store.finish(slot("done"), Some(ok(7))).unwrap();
        assert!(matches!(
            store.begin(slot("cut"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        assert!(matches!(
            store.begin(slot("gone"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        store.finish(slot("gone"), None).unwrap();
        drop(store);
        std::fs::write(dir.path().join("idem/.tmp-leftover"), b"x").unwrap();

        let store = open();
        assert_eq!(store.len(), 2, "the released key left no file");
        match store.begin(slot("done"), fp("x")).unwrap() {
            Begin::Done(answer) => assert_eq!(answer, ok(7)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.begin(slot("done"), fp("y")).unwrap(),
            Begin::Reused
        ));
        assert!(matches!(
            store.begin(slot("cut"), fp("x")).unwrap(),
            Begin::Interrupted
        ));
        assert!(matches!(
            store.begin(slot("cut"), fp("y")).unwrap(),
            Begin::Reused
        ));
        assert!(matches!(
            store.begin(slot("gone"), fp("x")).unwrap(),
            Begin::Claimed
        ));
        assert!(!dir.path().join("idem/.tmp-leftover").exists());

        // A torn record (it cannot happen with atomic writes, but a disk can rot) holds its
        // key rather than free it.
        std::fs::write(
            dir.path().join(format!("idem/{}.json", slot("rot").hex())),
            b"{",
        )
        .unwrap();
        drop(store);
        let store = open();
        assert!(matches!(
            store.begin(slot("rot"), fp("x")).unwrap(),
            Begin::Interrupted
        ));

        clock.advance(DAY + Duration::from_secs(60));
        drop(store);
        let store = open();
        assert!(
            store.is_empty(),
            "a day on, every key is forgotten, the torn one too"
        );
    }
}
