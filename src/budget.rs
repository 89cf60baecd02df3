//! Spending caps on paid images: what has been spent today (UTC) and this month, what runs in
//! flight have reserved, and whether a new run fits under the caps.
//!
//! Money is counted where it is spent: one image at its price ([`prices`]) just before the
//! image request is sent, whatever its outcome (the client retries an image request only on
//! answers saying it was not carried out, so one request is at most one billed image). A run
//! is admitted (before any OpenAI call, the chat call included) against the caps with its
//! estimated price, which it reserves until its image request settles it, so runs admitted
//! together can never overshoot a cap; a run in flight is never cut off.
//!
//! The state sits behind the narrow [`Budget`] trait, like the run core's coordination
//! traits, so it can move to a shared store; [`LocalBudget`] keeps it in memory and in one
//! atomically written file under the data directory. Usage is kept by API key name (`None` is
//! the anonymous caller). The server-wide caps apply to the total; a key's own caps (from the
//! keys file, [`KeyCaps`]) come with each admission ([`Payer`]), so a reload of the file
//! changes them at once.

mod local;
pub mod prices;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use time::{Date, Month, OffsetDateTime};

pub use local::LocalBudget;
pub use prices::{Micros, Prices, micros, usd};

/// The key name usage is reported under for callers without an API key.
pub const ANONYMOUS: &str = "anonymous";

/// Health turns `degraded` once this share of any cap is used.
pub const DEGRADED_SHARE: f64 = 0.8;

/// Where the time comes from: injectable so tests can cross a period boundary.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The caps; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Caps {
    pub daily_usd: Option<Micros>,
    pub monthly_usd: Option<Micros>,
    pub daily_images: Option<u64>,
}

/// A budget period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// Which cap refused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cap {
    DailyUsd,
    MonthlyUsd,
    DailyImages,
    /// The key's own `daily_usd=` from the keys file.
    KeyDailyUsd,
    /// The key's own `daily_images=` from the keys file.
    KeyDailyImages,
}

impl Cap {
    pub fn period(self) -> Period {
        match self {
            Cap::DailyUsd | Cap::DailyImages | Cap::KeyDailyUsd | Cap::KeyDailyImages => {
                Period::Day
            }
            Cap::MonthlyUsd => Period::Month,
        }
    }

    /// Whether the cap counts images rather than dollars.
    fn counts_images(self) -> bool {
        matches!(self, Cap::DailyImages | Cap::KeyDailyImages)
    }
}

/// A key's own caps (`daily_usd=`, `daily_images=` in the keys file); `None` is no cap of
/// its own (the server-wide caps still apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCaps {
    pub daily_usd: Option<Micros>,
    pub daily_images: Option<u64>,
}

/// Who a run is paid for: an API key's name with its own caps, or the anonymous caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Payer<'a> {
    /// `None`: a caller without a key (reported as [`ANONYMOUS`]).
    pub key: Option<&'a str>,
    pub caps: KeyCaps,
}

impl Payer<'_> {
    /// A caller without a key: only the server-wide caps apply.
    pub const ANONYMOUS: Payer<'static> = Payer {
        key: None,
        caps: KeyCaps {
            daily_usd: None,
            daily_images: None,
        },
    };
}

/// A run refused because it would exceed a cap; nothing was started or spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub cap: Cap,
    /// The key whose own cap it is ([`Cap::KeyDailyUsd`], [`Cap::KeyDailyImages`]).
    pub key: Option<String>,
    /// The cap (micro-dollars or images).
    pub limit: u64,
    /// Spent and reserved in the period (micro-dollars or images).
    pub used: u64,
    /// What the run needed (micro-dollars or images).
    pub needed: u64,
    /// Until the next period starts.
    pub retry_after: Duration,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.retry_after.as_secs();
        let whose = match &self.key {
            Some(key) => format!("key {key}'s "),
            None => String::new(),
        };
        let period = match self.cap.period() {
            Period::Day => "daily",
            Period::Month => "monthly",
        };
        if self.cap.counts_images() {
            write!(
                f,
                "the {whose}{period} budget of {} images is used ({} spent or reserved); it resets in {secs} s",
                self.limit, self.used
            )
        } else {
            write!(
                f,
                "the {whose}{period} budget of ${:.2} cannot cover this image (${:.3} spent or reserved, ${:.3} needed); it resets in {secs} s",
                usd(self.limit),
                usd(self.used),
                usd(self.needed)
            )
        }
    }
}

impl std::error::Error for Exhausted {}

/// Spend and images in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct Tally {
    pub usd_micros: Micros,
    pub images: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.usd_micros = self.usd_micros.saturating_add(other.usd_micros);
        self.images = self.images.saturating_add(other.images);
    }
}

/// One key's usage (or everyone's, in [`Usage::total`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Spent today and this month.
    pub day: Tally,
    pub month: Tally,
    /// Reserved by its runs in flight (not spent yet).
    pub reserved: Tally,
}

impl KeyUsage {
    /// What is left under a key's own caps today, after spend and reservations.
    pub fn remaining(&self, caps: KeyCaps) -> (Option<Micros>, Option<u64>) {
        (
            caps.daily_usd.map(|c| {
                c.saturating_sub(self.day.usd_micros.saturating_add(self.reserved.usd_micros))
            }),
            caps.daily_images
                .map(|c| c.saturating_sub(self.day.images.saturating_add(self.reserved.images))),
        )
    }
}

/// Everything `/v1/usage`, `/health` and `/metrics` report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// `YYYY-MM` (UTC).
    pub month: String,
    pub caps: Caps,
    /// Spent and reserved, all keys together.
    pub total: KeyUsage,
    /// Spent and reserved, by key name ([`ANONYMOUS`] for callers without a key).
    pub by_key: Vec<(String, KeyUsage)>,
    /// Spent this month, by image model.
    pub models: Vec<(String, Micros)>,
    /// Until the day and the month end.
    pub day_ends_in: Duration,
    pub month_ends_in: Duration,
}

impl Usage {
    /// What is left under each money cap (`None`: no cap), after spend and reservations.
    pub fn remaining_usd(&self, period: Period) -> Option<Micros> {
        let (cap, spent) = match period {
            Period::Day => (self.caps.daily_usd, self.total.day.usd_micros),
            Period::Month => (self.caps.monthly_usd, self.total.month.usd_micros),
        };
        cap.map(|c| c.saturating_sub(spent.saturating_add(self.total.reserved.usd_micros)))
    }

    /// The usage of the key `name` (zero when it has none).
    pub fn key(&self, name: &str) -> KeyUsage {
        self.by_key
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, usage)| *usage)
            .unwrap_or_default()
    }

    /// Images left today under the image cap.
    pub fn remaining_images(&self) -> Option<u64> {
        self.caps.daily_images.map(|c| {
            c.saturating_sub(
                self.total
                    .day
                    .images
                    .saturating_add(self.total.reserved.images),
            )
        })
    }

    /// The largest share of any cap spent (0 without caps): `/health` degrades above
    /// [`DEGRADED_SHARE`].
    pub fn highest_share(&self) -> f64 {
        let share = |cap: Option<u64>, used: u64| match cap {
            Some(0) => 1.0,
            Some(c) => used as f64 / c as f64,
            None => 0.0,
        };
        [
            share(self.caps.daily_usd, self.total.day.usd_micros),
            share(self.caps.monthly_usd, self.total.month.usd_micros),
            share(self.caps.daily_images, self.total.day.images),
        ]
        .into_iter()
        .fold(0.0, f64::max)
    }
}

/// The id of a reservation held by a run in flight.
pub type ReservationId = u64;

/// Budget state: admission, spend and usage. Implementations keep the totals of every
/// process sharing them; the caps are theirs to enforce atomically with the reservation.
pub trait Budget: Send + Sync + fmt::Debug {
    /// Admits a run paid by `payer` that will cost about `price`, reserving it; refused when
    /// spend plus reservations plus `price` (or one more image) would exceed a server-wide
    /// cap or one of the payer's own.
    fn reserve(&self, payer: Payer<'_>, price: Micros) -> Result<ReservationId, Exhausted>;
    /// Whether [`Budget::reserve`] would admit `price` now, reserving nothing.
    fn check(&self, payer: Payer<'_>, price: Micros) -> Result<(), Exhausted>;
    /// Records one image sent for `key` at `price`, settling reservation `id` if given;
    /// durable when it returns (blocking I/O). A failure to persist is logged, never lost in
    /// memory.
    fn spend(&self, id: Option<ReservationId>, key: Option<&str>, model: &str, price: Micros);
    /// Gives a reservation up (the run ended before its image request).
    fn release(&self, id: ReservationId);
    /// Today's and this month's figures.
    fn usage(&self) -> Usage;
}

/// A run's reservation: settled by [`Reservation::settle`] when the image request is sent,
/// released when dropped unsettled (the run ended before it).
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<dyn Budget>,
    id: Option<ReservationId>,
    key: Option<String>,
}

impl Reservation {
    /// Reserves `price` for a run paid by `payer` on `budget`.
    pub fn take(
        budget: &Arc<dyn Budget>,
        payer: Payer<'_>,
        price: Micros,
    ) -> Result<Reservation, Exhausted> {
        let id = budget.reserve(payer, price)?;
        Ok(Reservation {
            budget: Arc::clone(budget),
            id: Some(id),
            key: payer.key.map(str::to_string),
        })
    }

    /// Records the image the run is about to request, at its actual `price` (blocking I/O).
    pub fn settle(mut self, model: &str, price: Micros) {
        let id = self.id.take();
        self.budget.spend(id, self.key.as_deref(), model, price);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.budget.release(id);
        }
    }
}

/// The UTC calendar around `now`: today, and how long until the day and the month end.
fn calendar(now: SystemTime) -> (Date, Duration, Duration) {
    let now = OffsetDateTime::from(now);
    let today = now.date();
    // Rounded up: a client that waits `Retry-After` seconds arrives in the new period.
    let until = |date: Date| {
        let left = date.midnight().assume_utc() - now;
        let mut secs = left.whole_seconds();
        if left.subsec_nanoseconds() > 0 {
            secs += 1;
        }
        Duration::from_secs(secs.max(1).unsigned_abs())
    };
    let tomorrow = today.next_day().unwrap_or(today);
    let (year, month) = match today.month() {
        Month::December => (today.year() + 1, Month::January),
        m => (today.year(), m.next()),
    };
    let next_month = Date::from_calendar_date(year, month, 1).unwrap_or(tomorrow);
    (today, until(tomorrow), until(next_month))
}

fn day_key(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn month_key(date: Date) -> String {
    format!("{:04}-{:02}", date.year(), u8::from(date.month()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calendar_counts_to_the_next_utc_day_and_month() {
        // 2026-12-31T23:59:30Z.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_570);
        let (today, day, month) = calendar(t);
        assert_eq!(day_key(today), "2026-12-31");
        assert_eq!(month_key(today), "2026-12");
        assert_eq!(day, Duration::from_secs(30));
        assert_eq!(month, Duration::from_secs(30));
        let (_, day, _) = calendar(t + Duration::from_millis(500));
        assert_eq!(
            day,
            Duration::from_secs(30),
            "rounded up to the period's start"
        );
        let mid_month = t + Duration::from_secs(30 + 14 * 86_400);
        let (today, day, month) = calendar(mid_month);
        assert_eq!(day_key(today), "2027-01-15");
        assert_eq!(day, Duration::from_secs(86_400));
        assert_eq!(month, Duration::from_secs(17 * 86_400));
    }

    #[test]
    fn health_degrades_only_above_eighty_percent_of_a_cap() {
        let mut usage = Usage {
            caps: Caps {
                daily_usd: Some(micros(10.0)),
                daily_images: Some(100),
                ..Caps::default()
            },
            ..Usage::default()
        };
        usage.total.day.usd_micros = micros(8.0);
        assert!(usage.highest_share() <= DEGRADED_SHARE);
        usage.total.day.images = 81;
        assert!(
            usage.highest_share() > DEGRADED_SHARE,
            "the image cap counts too"
        );
        usage.caps = Caps::default();
        assert_eq!(usage.highest_share(), 0.0, "no caps, nothing to use up");
    }

    #[test]
    fn refusals_say_which_cap_and_when_it_resets() {
        let e = Exhausted {
            cap: Cap::DailyUsd,
            key: None,
            limit: micros(1.0),
            used: micros(0.9),
            needed: micros(0.25),
            retry_after: Duration::from_secs(60),
        };
        assert_eq!(
            e.to_string(),
            "the daily budget of $1.00 cannot cover this image ($0.900 spent or reserved, $0.250 needed); it resets in 60 s"
        );
        assert_eq!(Cap::MonthlyUsd.period(), Period::Month);
        let e = Exhausted {
            cap: Cap::KeyDailyImages,
            key: Some("alice".into()),
            limit: 3,
            used: 3,
            needed: 1,
            retry_after: Duration::from_secs(5),
        };
        assert_eq!(
            e.to_string(),
            "the key alice's daily budget of 3 images is used (3 spent or reserved); it resets in 5 s"
        );
    }
}
