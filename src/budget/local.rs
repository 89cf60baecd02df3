//! [`LocalBudget`]: the budget of one process, in memory and in one file (`<data>/budget.json`)
//! rewritten atomically on every spend, so spend survives restarts and `kill -9`.
//!
//! Reservations are not written: they belong to runs of this process, which a restart ends.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::{
    ANONYMOUS, Budget, Cap, Caps, Clock, Exhausted, KeyUsage, Micros, Payer, ReservationId, Tally,
    Usage, calendar, day_key, month_key,
};

/// The file's layout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    /// The UTC day (`YYYY-MM-DD`) and month (`YYYY-MM`) the tallies belong to.
    day: String,
    month: String,
    keys: BTreeMap<String, StoredKey>,
    /// Spent this month, by image model (micro-dollars).
    #[serde(default)]
    models: BTreeMap<String, Micros>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct StoredKey {
    day: Tally,
    month: Tally,
}

/// A run's reservation: the key it is for ([`ANONYMOUS`] without one) and its price.
#[derive(Debug)]
struct Reserved {
    key: String,
    price: Micros,
}

#[derive(Debug, Default)]
struct State {
    stored: Stored,
    reservations: HashMap<ReservationId, Reserved>,
    next_id: ReservationId,
}

impl State {
    /// Starts the new day or month when the clock has moved into one.
    fn roll(&mut self, day: &str, month: &str) {
        if self.stored.month != month {
            self.stored.month = month.to_string();
            self.stored.models.clear();
            for key in self.stored.keys.values_mut() {
                key.month = Tally::default();
            }
        }
        if self.stored.day != day {
            self.stored.day = day.to_string();
            for key in self.stored.keys.values_mut() {
                key.day = Tally::default();
            }
        }
    }

    fn total(&self) -> KeyUsage {
        let mut total = KeyUsage {
            reserved: self.reserved(None),
            ..KeyUsage::default()
        };
        for key in self.stored.keys.values() {
            total.day.add(key.day);
            total.month.add(key.month);
        }
        total
    }

    /// What runs in flight have reserved: all of them, or those of one key.
    fn reserved(&self, key: Option<&str>) -> Tally {
        let mut tally = Tally::default();
        for reserved in self.reservations.values() {
            if key.is_none_or(|k| k == reserved.key) {
                tally.add(Tally {
                    usd_micros: reserved.price,
                    images: 1,
                });
            }
        }
        tally
    }

    /// One key's spend and reservations.
    fn key(&self, name: &str) -> KeyUsage {
        let stored = self.stored.keys.get(name).copied().unwrap_or_default();
        KeyUsage {
            day: stored.day,
            month: stored.month,
            reserved: self.reserved(Some(name)),
        }
    }
}

/// A budget kept by this process (see the module docs).
#[derive(Debug)]
pub struct LocalBudget {
    /// `None`: in memory only.
    path: Option<PathBuf>,
    caps: Caps,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Held while the file is written, so writes land in the order of the spends.
    writer: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalBudget {
    /// A budget in memory only (tests, and a server whose caps need no history).
    pub fn in_memory(caps: Caps, clock: Arc<dyn Clock>) -> LocalBudget {
        LocalBudget {
            path: None,
            caps,
            clock,
            state: Mutex::new(State::default()),
            writer: Mutex::new(()),
        }
    }

    /// The budget saved at `path`, or an empty one when there is no file yet. A file that
    /// cannot be read is an error: starting from zero would forget money already spent.
    pub fn open(
        path: PathBuf,
        caps: Caps,
        clock: Arc<dyn Clock>,
    ) -> Result<LocalBudget, std::io::Error> {
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Stored>(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ));
            }
        };
        Ok(LocalBudget {
            path: Some(path),
            caps,
            clock,
            state: Mutex::new(State {
                stored,
                ..State::default()
            }),
            writer: Mutex::new(()),
        })
    }

    /// The state, rolled to the clock's day and month, and the time to each period's end.
    fn current(
        &self,
    ) -> (
        MutexGuard<'_, State>,
        std::time::Duration,
        std::time::Duration,
    ) {
        let (today, day_left, month_left) = calendar(self.clock.now());
        let mut state = lock(&self.state);
        state.roll(&day_key(today), &month_key(today));
        (state, day_left, month_left)
    }

    /// Whether a run of `price` fits under the payer's own caps (checked first: they say
    /// what the caller can change) and the server-wide ones.
    fn admit(
        &self,
        state: &State,
        payer: Payer<'_>,
        price: Micros,
        day_left: std::time::Duration,
        month_left: std::time::Duration,
    ) -> Result<(), Exhausted> {
        let total = state.total();
        let own = payer.key.map(|name| (name, state.key(name)));
        let mut checks = Vec::with_capacity(5);
        if let Some((_, own)) = own {
            checks.extend([
                (
                    Cap::KeyDailyUsd,
                    payer.caps.daily_usd,
                    own.day.usd_micros + own.reserved.usd_micros,
                    price,
                ),
                (
                    Cap::KeyDailyImages,
                    payer.caps.daily_images,
                    own.day.images + own.reserved.images,
                    1,
                ),
            ]);
        }
        checks.extend([
            (
                Cap::DailyUsd,
                self.caps.daily_usd,
                total.day.usd_micros + total.reserved.usd_micros,
                price,
            ),
            (
                Cap::MonthlyUsd,
                self.caps.monthly_usd,
                total.month.usd_micros + total.reserved.usd_micros,
                price,
            ),
            (
                Cap::DailyImages,
                self.caps.daily_images,
                total.day.images + total.reserved.images,
                1,
            ),
        ]);
        for (cap, limit, used, needed) in checks {
            if let Some(limit) = limit
                && used.saturating_add(needed) > limit
            {
                let retry_after = match cap.period() {
                    super::Period::Day => day_left,
                    super::Period::Month => month_left,
                };
                let key = matches!(cap, Cap::KeyDailyUsd | Cap::KeyDailyImages)
                    .then(|| own.map(|(name, _)| name.to_string()))
                    .flatten();
                return Err(Exhausted {
                    cap,
                    key,
                    limit,
                    used,
                    needed,
                    retry_after,
                });
            }
        }
        Ok(())
    }
}

impl Budget for LocalBudget {
    fn reserve(&self, payer: Payer<'_>, price: Micros) -> Result<ReservationId, Exhausted> {
        let (mut state, day_left, month_left) = self.current();
        self.admit(&state, payer, price, day_left, month_left)?;
        state.next_id += 1;
        let id = state.next_id;
        let key = payer.key.unwrap_or(ANONYMOUS).to_string();
        state.reservations.insert(id, Reserved { key, price });
        Ok(id)
    }

    fn check(&self, payer: Payer<'_>, price: Micros) -> Result<(), Exhausted> {
        let (state, day_left, month_left) = self.current();
        self.admit(&state, payer, price, day_left, month_left)
    }

    fn spend(&self, id: Option<ReservationId>, key: Option<&str>, model: &str, price: Micros) {
        let _writing = lock(&self.writer);
        let bytes = {
            let (mut state, _, _) = self.current();
            if let Some(id) = id {
                state.reservations.remove(&id);
            }
            let entry = state
                .stored
                .keys
                .entry(key.unwrap_or(ANONYMOUS).to_string())
                .or_default();
            let one = Tally {
                usd_micros: price,
                images: 1,
            };
            entry.day.add(one);
            entry.month.add(one);
            let by_model = state.stored.models.entry(model.to_string()).or_default();
            *by_model = by_model.saturating_add(price);
            state.stored.version = 1;
            serde_json::to_vec_pretty(&state.stored)
        };
        let Some(path) = &self.path else {
            return;
        };
        let written = bytes
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::storage::write_atomic(path, &bytes));
        if let Err(err) = written {
            tracing::error!(path = %path.display(), %err, "cannot save the budget; the spend is kept in memory");
        }
    }

    fn release(&self, id: ReservationId) {
        lock(&self.state).reservations.remove(&id);
    }

    fn usage(&self) -> Usage {
        let (state, day_ends_in, month_ends_in) = self.current();
        // Every key with spend this month or a run in flight, in name order.
        let mut names: Vec<&String> = state.stored.keys.keys().collect();
        names.extend(state.reservations.values().map(|r| &r.key));
        names.sort();
        names.dedup();
        Usage {
            day: state.stored.day.clone(),
            month: state.stored.month.clone(),
            caps: self.caps,
            total: state.total(),
            by_key: names
                .into_iter()
                .map(|name| (name.clone(), state.key(name)))
                .collect(),
            models: state.stored.models.clone().into_iter().collect(),
            day_ends_in,
            month_ends_in,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::super::{Reservation, micros};
    use super::*;

    /// A clock the test moves.
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

    /// 2026-12-31T23:59:00Z: a minute before a new day and a new month.
    fn new_years_eve() -> Arc<Manual> {
        Arc::new(Manual(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_540),
        )))
    }

    #[test]
    fn the_last_image_that_fits_is_admitted_the_next_refused_until_the_day_ends() {
        let clock = new_years_eve();
        let caps = Caps {
            daily_usd: Some(micros(0.5)),
            ..Caps::default()
        };
        let budget: Arc<dyn Budget> = Arc::new(LocalBudget::in_memory(caps, clock.clone()));
        let price = micros(0.25);
        let first = Reservation::take(&budget, Payer::ANONYMOUS, price).unwrap();
        // Reserved, not spent: a second run fits, a third does not (no overshoot by runs
        // admitted together).
        let second = Reservation::take(&budget, Payer::ANONYMOUS, price).unwrap();
        let refused = Reservation::take(&budget, Payer::ANONYMOUS, price).unwrap_err();
        assert_eq!(refused.cap, Cap::DailyUsd);
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        first.settle("gpt-image-1", price);
        drop(second); // ended before its image: its reservation is given back
        let third = Reservation::take(&budget, Payer::ANONYMOUS, price).unwrap();
        third.settle("gpt-image-1", price);
        assert!(budget.check(Payer::ANONYMOUS, price).is_err());
        let usage = budget.usage();
        assert_eq!(
            usage.total.day,
            Tally {
                usd_micros: micros(0.5),
                images: 2
            }
        );
        assert_eq!(usage.remaining_usd(super::super::Period::Day), Some(0));
        assert_eq!(usage.by_key[0].0, ANONYMOUS);

        clock.advance(Duration::from_secs(60));
        assert!(
            budget.check(Payer::ANONYMOUS, price).is_ok(),
            "a new day starts from zero"
        );
        let usage = budget.usage();
        assert_eq!(usage.day, "2027-01-01");
        assert_eq!(
            usage.total.month,
            Tally::default(),
            "and so does a new month"
        );
    }

    #[test]
    fn the_image_cap_and_the_monthly_cap_refuse_with_their_own_period() {
        let clock = new_years_eve();
        let caps = Caps {
            daily_usd: None,
            monthly_usd: Some(micros(1.0)),
            daily_images: Some(1),
        };
        let budget = LocalBudget::in_memory(caps, clock.clone());
        budget.spend(None, None, "dall-e-2", micros(0.9));
        let refused = budget.check(Payer::ANONYMOUS, micros(0.2)).unwrap_err();
        assert_eq!(refused.cap, Cap::MonthlyUsd);
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        let refused = budget.check(Payer::ANONYMOUS, micros(0.05)).unwrap_err();
        assert_eq!(refused.cap, Cap::DailyImages);
        clock.advance(Duration::from_secs(60));
        assert!(budget.check(Payer::ANONYMOUS, micros(0.9)).is_ok());
    }

    #[test]
    fn a_keys_own_caps_refuse_it_alone_and_count_its_reservations() {
        use super::super::KeyCaps;
        let clock = new_years_eve();
        let caps = Caps {
            daily_images: Some(10),
            ..Caps::default()
        };
        let budget: Arc<dyn Budget> = Arc::new(LocalBudget::in_memory(caps, clock.clone()));
        let alice = Payer {
            key: Some("alice"),
            caps: KeyCaps {
                daily_usd: Some(micros(0.07)),
                daily_images: Some(2),
            },
        };
        let price = micros(0.02);
        let first = Reservation::take(&budget, alice, price).unwrap();
        let second = Reservation::take(&budget, alice, price).unwrap();
        // Both in flight: the third would be the key's third image today.
        let refused = Reservation::take(&budget, alice, price).unwrap_err();
        assert_eq!(refused.cap, Cap::KeyDailyImages);
        assert_eq!(refused.key.as_deref(), Some("alice"));
        assert_eq!((refused.limit, refused.used), (2, 2));
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        // Another key and the anonymous caller are not held back by alice's caps.
        let bob = Payer {
            key: Some("bob"),
            caps: KeyCaps::default(),
        };
        assert!(budget.check(bob, price).is_ok());
        assert!(budget.check(Payer::ANONYMOUS, price).is_ok());
        first.settle("dall-e-2", price);
        drop(second);
        let usage = budget.usage();
        let own = usage.key("alice");
        assert_eq!(own.day.images, 1);
        assert_eq!(own.reserved, Tally::default());
        assert_eq!(own.remaining(alice.caps), (Some(micros(0.05)), Some(1)));
        // $0.02 spent: another $0.02 fits the key's $0.07, a $0.06 image does not.
        let dear = budget.check(alice, micros(0.06)).unwrap_err();
        assert_eq!(dear.cap, Cap::KeyDailyUsd);
        assert!(
            dear.to_string()
                .contains("key alice's daily budget of $0.07"),
            "{dear}"
        );
        assert!(budget.check(alice, price).is_ok());
        // The server-wide cap still applies to a key.
        let roomy = Payer {
            key: Some("carol"),
            caps: KeyCaps::default(),
        };
        for _ in 0..9 {
            budget.spend(None, Some("carol"), "dall-e-2", price);
        }
        assert_eq!(
            budget.check(roomy, price).unwrap_err().cap,
            Cap::DailyImages
        );
        let names: Vec<_> = budget.usage().by_key.into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["alice", "carol"]);
        clock.advance(Duration::from_secs(60));
        assert!(
            budget.check(alice, micros(0.07)).is_ok(),
            "a new day resets the key's caps"
        );
    }

    #[test]
    fn spend_survives_reopening_the_file_but_reservations_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budget.json");
        let clock = new_years_eve();
        let caps = Caps {
            daily_usd: Some(micros(1.0)),
            ..Caps::default()
        };
        let budget = LocalBudget::open(path.clone(), caps, clock.clone()).unwrap();
        budget.spend(None, Some("alice"), "dall-e-3", micros(0.12));
        let _held = budget.reserve(Payer::ANONYMOUS, micros(0.5)).unwrap();
        let reopened = LocalBudget::open(path.clone(), caps, clock.clone()).unwrap();
        let usage = reopened.usage();
        assert_eq!(usage.total.day.usd_micros, micros(0.12));
        assert_eq!(usage.total.reserved, Tally::default());
        assert_eq!(usage.by_key[0].0, "alice");
        std::fs::write(&path, b"{torn").unwrap();
        assert!(LocalBudget::open(path, caps, clock).is_err());
    }
}
