//! What one run records (phase timings, dress, outcome) and the [`Snapshot`] a client sees of
//! it, with percent and ETA estimated from the phase averages as the Go library does, except:
//! - a run waiting in the queue reads 0 %, and its ETA includes the expected wait (upstream
//!   counted the wait as setup time, so queued runs read 60–70 % with an ETA of a second);
//! - the queue wait never feeds setup's average, for the same reason;
//! - phases without history use a prior duration ([`super::Priors`]);
//! - a failed run keeps the percent it had reached (upstream counted the failed phase and
//!   everything before it as done, often 100 %), a completed one reads 100 %;
//! - percentages are rounded to one decimal;
//! - a run waiting to retry a provider call says so (`retrying`), and its ETA includes the wait.
//!
//! Elapsed times come from `tokio::time::Instant` (so paused-clock tests are exact); the
//! Unix-nanosecond fields are the run's wall-clock start plus the monotonic offset, so they
//! never go backwards within a run even if the wall clock is adjusted.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use super::estimate::{Estimator, one_decimal};
use super::{Estimates, Phase, PhaseStats, RunKey, SharedDress};

const NS_PER_SECOND: f64 = 1e9;

/// A run's progress as served by `/dalle`: upstream's `ProgressReport` fields, every one
/// always present, plus the additive `requestId`, `queuePosition` and `retrying`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub series: String,
    pub address: String,
    pub current_phase: Phase,
    /// When the run started, in Unix nanoseconds.
    pub started_ns: i64,
    /// Overall progress, 0–100, one decimal; 0 while queued.
    pub percent: f64,
    /// Seconds until the run is expected to finish, queue and retry waits included.
    pub eta_seconds: f64,
    /// Progress through the current phase, 0–100, one decimal.
    pub phase_percent: f64,
    #[serde(rename = "phaseETASeconds")]
    pub phase_eta_seconds: f64,
    /// 1-based position of the current phase among the 7 work phases; 0 once finished.
    pub phase_index: usize,
    /// Always 7 (the work phases).
    pub phase_count: usize,
    pub done: bool,
    /// The failure message, "" when none.
    pub error: String,
    /// The failure's stable code (e.g. `provider_failed`, `storage_full`), only on failed runs.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub error_code: &'static str,
    pub cache_hit: bool,
    /// All 9 phases, in order.
    pub phases: Vec<PhaseTiming>,
    /// Shared with the run and serialised once per change (see [`SharedDress`]).
    pub dalle_dress: Option<SharedDress>,
    /// Average nanoseconds of every phase with at least one sample.
    pub phase_averages: BTreeMap<Phase, i64>,
    /// The request that started the run.
    pub request_id: String,
    /// 1-based place in the queue while the run waits for a concurrency slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// Present while the run waits to retry a failed provider call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Retrying>,
}

/// A retry wait of one of a run's provider calls, as the run's progress is told of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryWait {
    /// The call: `enhance`, `image` or `download`.
    pub operation: &'static str,
    /// The attempt that will run after the wait (2 for the first retry), 1-based.
    pub attempt: u32,
    /// Attempts allowed in total.
    pub attempts: u32,
    pub wait: Duration,
    /// Why the previous attempt failed.
    pub reason: String,
}

/// The snapshot's `retrying`: the wait a run is in before its next attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retrying {
    pub operation: &'static str,
    /// The attempt that will run after the wait (2 for the first retry), 1-based.
    pub attempt: u32,
    pub attempts: u32,
    /// When the next attempt starts, in Unix nanoseconds.
    pub until_ns: i64,
    /// The whole wait, in seconds.
    pub wait_seconds: f64,
    /// Why the previous attempt failed.
    pub reason: String,
}

/// Where a queued run stands, asked of the queue whenever a snapshot is taken. The queue
/// answers it cheaply (an order-statistics lookup), so it never has to push every position
/// to every queued run when one run leaves the queue. `None` once the run has left the queue.
#[derive(Clone)]
pub struct QueuePlace(Arc<dyn Fn() -> Option<usize> + Send + Sync>);

impl QueuePlace {
    /// A place answered by `position`.
    pub fn new(position: impl Fn() -> Option<usize> + Send + Sync + 'static) -> QueuePlace {
        QueuePlace(Arc::new(position))
    }

    /// A place that does not move (tests, tools).
    pub fn fixed(position: usize) -> QueuePlace {
        QueuePlace::new(move || Some(position))
    }

    /// The 1-based position now.
    pub fn position(&self) -> Option<usize> {
        (self.0)()
    }
}

impl fmt::Debug for QueuePlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("QueuePlace").field(&self.position()).finish()
    }
}

/// One phase of a snapshot; times are Unix nanoseconds, 0 when unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTiming {
    pub name: Phase,
    pub started_ns: i64,
    pub ended_ns: i64,
    pub skipped: bool,
    /// The failure message on the phase the run failed in (upstream always left it "").
    pub error: String,
}

impl Snapshot {
    /// What a run registered just now looks like: for a caller that lost a race with pruning
    /// or `forget` and still owes the client a snapshot.
    pub fn empty(key: &RunKey) -> Snapshot {
        let now = Instant::now();
        let estimator = Estimator {
            stats: &PhaseStats::default(),
            estimates: &Estimates::default(),
        };
        Run::new("", now).snapshot(key, estimator, now)
    }
}

/// One phase's times within a run.
#[derive(Debug, Clone, Default)]
struct Timing {
    started: Option<Instant>,
    ended: Option<Instant>,
    skipped: bool,
    error: String,
}

impl Timing {
    /// Time spent in the phase: up to its end, or up to `now` while it runs.
    fn elapsed(&self, now: Instant) -> Duration {
        self.started.map_or(Duration::ZERO, |s| {
            self.ended.unwrap_or(now).saturating_duration_since(s)
        })
    }
}

/// An EMA sample produced by ending a phase.
pub(super) type Sample = Option<(Phase, Duration)>;

/// Everything recorded about one generation run.
#[derive(Debug)]
pub(super) struct Run {
    request_id: String,
    started_at: Instant,
    started_unix_ns: i64,
    current: Phase,
    timings: [Timing; 9],
    pub(super) done: bool,
    finished_at: Option<Instant>,
    error: String,
    error_code: &'static str,
    pub(super) cache_hit: bool,
    pub(super) dress: Option<SharedDress>,
    /// Read at snapshot time, never stored as a number (see [`QueuePlace`]).
    queue_place: Option<QueuePlace>,
    /// Since when the run waits in the queue, while it does.
    queued_since: Option<Instant>,
    /// Time spent in the queue before `queued_since` (a run can be requeued).
    queued_for: Duration,
    /// The retry wait the run is in, and when it ends.
    retrying: Option<(Retrying, Instant)>,
    /// Percent and ETA frozen when the run failed.
    frozen: Option<(f64, f64)>,
    /// Counts changes (every [`super::Progress`] update), so a rendering knows it is current.
    pub(super) version: u64,
    /// The last JSON rendering of this run's snapshot (see [`super::rendered`]).
    pub(super) rendered: Option<super::rendered::Rendered>,
}

impl Run {
    /// A run in phase `setup`, started now.
    pub(super) fn new(request_id: &str, now: Instant) -> Run {
        let mut timings: [Timing; 9] = Default::default();
        timings[Phase::Setup.slot()].started = Some(now);
        Run {
            request_id: request_id.to_string(),
            started_at: now,
            started_unix_ns: unix_ns(SystemTime::now()),
            current: Phase::Setup,
            timings,
            done: false,
            finished_at: None,
            error: String::new(),
            error_code: "",
            cache_hit: false,
            dress: None,
            queue_place: None,
            queued_since: None,
            queued_for: Duration::ZERO,
            retrying: None,
            frozen: None,
            version: 0,
            rendered: None,
        }
    }

    /// Finished with an error.
    pub(super) fn failed(&self) -> bool {
        self.done && !self.error.is_empty()
    }

    /// Whether the run finished at least `retention` ago.
    pub(super) fn expired(&self, now: Instant, retention: Duration) -> bool {
        self.finished_at
            .is_some_and(|at| now.saturating_duration_since(at) >= retention)
    }

    /// When the run's retention ends, once it has finished (`None` while in flight).
    pub(super) fn expires_at(&self, retention: Duration) -> Option<Instant> {
        self.finished_at.and_then(|at| at.checked_add(retention))
    }

    /// Records the queue place; a queued run is still in `setup`, so leaving setup clears it.
    pub(super) fn set_queue_place(&mut self, place: Option<QueuePlace>, now: Instant) {
        if self.done || self.current != Phase::Setup {
            return;
        }
        match place {
            Some(place) => {
                self.queued_since.get_or_insert(now);
                self.queue_place = Some(place);
            }
            None => self.leave_queue(now),
        }
    }

    /// The run's 1-based queue position now, while it waits for a slot.
    pub(super) fn queue_position(&self) -> Option<usize> {
        self.queue_place
            .as_ref()
            .and_then(QueuePlace::position)
            .filter(|_| !self.done && self.current == Phase::Setup)
    }

    fn leave_queue(&mut self, now: Instant) {
        if let Some(since) = self.queued_since.take() {
            self.queued_for += now.saturating_duration_since(since);
        }
        self.queue_place = None;
    }

    /// Records (or, with `None`, clears) the retry wait the run is in.
    pub(super) fn set_retrying(&mut self, wait: Option<&RetryWait>, now: Instant) {
        if self.done {
            return;
        }
        self.retrying = wait.map(|w| {
            let until = now + w.wait;
            let retrying = Retrying {
                operation: w.operation,
                attempt: w.attempt,
                attempts: w.attempts,
                until_ns: self.unix_ns_at(Some(until)),
                wait_seconds: w.wait.as_secs_f64(),
                reason: w.reason.clone(),
            };
            (retrying, until)
        });
    }

    /// Time spent in `phase` that was work: setup's time in the queue is not.
    fn work_elapsed(&self, phase: Phase, now: Instant) -> Duration {
        let elapsed = self.timings[phase.slot()].elapsed(now);
        if phase != Phase::Setup {
            return elapsed;
        }
        let queued = self.queued_for
            + self
                .queued_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        elapsed.saturating_sub(queued)
    }

    /// Ends the running current phase; returns its working time as a sample when `feed` and
    /// the phase was really run (not skipped) and the run is not a cache hit.
    fn end_current(&mut self, now: Instant, feed: bool) -> Sample {
        let current = self.current;
        let worked = self.work_elapsed(current, now);
        let cache_hit = self.cache_hit;
        let t = &mut self.timings[current.slot()];
        t.started.filter(|_| t.ended.is_none())?;
        t.ended = Some(now);
        (feed && !t.skipped && !cache_hit).then_some((current, worked))
    }

    /// Upstream's `Transition`: ends the current phase (if it differs), starts `phase` if it
    /// has not started, and makes it current. Ignored once the run is done.
    pub(super) fn transition(&mut self, phase: Phase, now: Instant) -> Sample {
        if self.done {
            return None;
        }
        if phase != Phase::Setup {
            self.leave_queue(now);
        }
        self.retrying = None;
        let sample = if self.current == phase {
            None
        } else {
            self.end_current(now, true)
        };
        let next = &mut self.timings[phase.slot()];
        next.started.get_or_insert(now);
        self.current = phase;
        sample
    }

    /// Marks `phase` skipped; unset times become `now`. The current phase does not change.
    pub(super) fn skip(&mut self, phase: Phase, now: Instant) {
        let t = &mut self.timings[phase.slot()];
        t.skipped = true;
        t.started.get_or_insert(now);
        t.ended.get_or_insert(now);
    }

    /// Completes the run: ends the current phase, marks every work phase that never started as
    /// skipped (so the snapshot accounts for every phase), and records `completed`.
    pub(super) fn complete(&mut self, now: Instant) -> Sample {
        let sample = self.end_current(now, true);
        for phase in Phase::WORK {
            if self.timings[phase.slot()].started.is_none() {
                self.skip(phase, now);
            }
        }
        self.finish(Phase::Completed, now);
        sample
    }

    /// Fails the run. The phase it failed in is ended without a sample (a failure's duration
    /// says nothing about a normal run) and carries the message. Phases after it stay unset:
    /// they were not skipped, the run stopped.
    pub(super) fn fail(
        &mut self,
        error: String,
        code: &'static str,
        estimator: Estimator<'_>,
        now: Instant,
    ) {
        if self.done {
            return;
        }
        let (percent, _) = self.overall_progress(estimator, now);
        self.frozen = Some((percent, 0.0));
        let _ = self.end_current(now, false);
        self.timings[self.current.slot()].error.clone_from(&error);
        self.error = error;
        self.error_code = code;
        self.finish(Phase::Failed, now);
    }

    fn finish(&mut self, terminal: Phase, now: Instant) {
        let t = &mut self.timings[terminal.slot()];
        t.started = Some(now);
        t.ended = Some(now);
        self.current = terminal;
        self.done = true;
        self.finished_at = Some(now);
        self.leave_queue(now);
        self.retrying = None;
    }

    fn unix_ns_at(&self, at: Option<Instant>) -> i64 {
        at.map_or(0, |t| {
            let offset = t.saturating_duration_since(self.started_at).as_nanos();
            self.started_unix_ns
                .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
        })
    }

    /// The run as a client sees it at `now`.
    pub(super) fn snapshot(
        &self,
        key: &RunKey,
        estimator: Estimator<'_>,
        now: Instant,
    ) -> Snapshot {
        let (phase_percent, phase_eta_seconds) = self.phase_progress(estimator, now);
        let (percent, eta_seconds) = self.overall_progress(estimator, now);
        Snapshot {
            series: key.series.to_string(),
            address: key.subject.to_string(),
            current_phase: self.current,
            started_ns: self.started_unix_ns,
            percent,
            eta_seconds,
            phase_percent,
            phase_eta_seconds,
            phase_index: self.current.phase_index(),
            phase_count: Phase::WORK.len(),
            done: self.done,
            error: self.error.clone(),
            error_code: self.error_code,
            cache_hit: self.cache_hit,
            phases: Phase::ALL
                .into_iter()
                .map(|name| {
                    let t = &self.timings[name.slot()];
                    PhaseTiming {
                        name,
                        started_ns: self.unix_ns_at(t.started),
                        ended_ns: self.unix_ns_at(t.ended),
                        skipped: t.skipped,
                        error: t.error.clone(),
                    }
                })
                .collect(),
            dalle_dress: self.dress.clone(),
            phase_averages: estimator
                .stats
                .averages()
                .map(|(p, s)| (p, s.avg_ns))
                .collect(),
            request_id: self.request_id.clone(),
            queue_position: self.queue_position(),
            retrying: self.retrying.as_ref().map(|(r, _)| r.clone()),
        }
    }

    fn elapsed_ns(&self, phase: Phase, now: Instant) -> f64 {
        self.work_elapsed(phase, now).as_nanos() as f64
    }

    /// Percent through the current work phase and its remaining seconds, from its estimate.
    pub(super) fn phase_progress(&self, estimator: Estimator<'_>, now: Instant) -> (f64, f64) {
        match estimator.phase_ns(self.current) {
            Some(avg) if self.current.is_work() => {
                let elapsed = self.elapsed_ns(self.current, now);
                (
                    one_decimal((elapsed / avg * 100.0).min(100.0)),
                    (avg - elapsed).max(0.0) / NS_PER_SECOND,
                )
            }
            _ => (0.0, 0.0),
        }
    }

    /// Overall percent and ETA, as upstream computes them: the estimates of the phases already
    /// ended, plus the time spent in the current one (capped at its estimate), over the sum of
    /// all work estimates. Queued, failed and completed runs are the exceptions the module
    /// documentation lists.
    pub(super) fn overall_progress(&self, estimator: Estimator<'_>, now: Instant) -> (f64, f64) {
        if let Some(frozen) = self.frozen {
            return frozen;
        }
        if self.current == Phase::Completed {
            return (100.0, 0.0);
        }
        let total = estimator.run_ns();
        if let Some(position) = self.queue_position() {
            let wait = estimator.queue_wait_seconds(position);
            return (0.0, wait + total / NS_PER_SECOND);
        }
        let retry_wait = self.retrying.as_ref().map_or(0.0, |(_, until)| {
            until.saturating_duration_since(now).as_secs_f64()
        });
        if total <= 0.0 {
            return (0.0, retry_wait);
        }
        let mut done = 0.0;
        for phase in Phase::ALL.into_iter().filter(|&p| p != Phase::Completed) {
            if phase == self.current {
                let elapsed = self.elapsed_ns(phase, now);
                done += estimator
                    .phase_ns(phase)
                    .map_or(elapsed, |avg| elapsed.min(avg));
                break;
            }
            if self.timings[phase.slot()].ended.is_some() {
                done += estimator.phase_ns(phase).unwrap_or(0.0);
            }
        }
        // Upstream could exceed 100 % while in a phase that has no estimate, and a run still
        // working read "100 %" once the known phases were behind it; a run in flight tops out
        // at 99 % until it really completes.
        let cap = if self.current.is_work() { 99.0 } else { 100.0 };
        (
            one_decimal((done / total * 100.0).min(cap)),
            (total - done).max(0.0) / NS_PER_SECOND + retry_wait,
        )
    }
}

/// Nanoseconds since the Unix epoch (0 for a clock set before 1970).
fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
