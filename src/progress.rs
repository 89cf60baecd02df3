//! The registry of generation runs and their progress: per
//! `(series, address)`, the current phase, each phase's times, the DalleDress and the outcome,
//! served as upstream's `ProgressReport` ([`Snapshot`]) with percent and ETA from per-phase
//! moving averages persisted in `<metrics>/progress_phase_stats.json`.
//!
//! Deliberate differences from the Go library:
//! - Reads are not destructive. Upstream deleted a finished run on the first `GetProgress`, and
//!   the status printer's `ActiveProgressReports` deleted finished runs too, so a poller could
//!   miss `done:true` and the error. Here a finished run stays visible for a retention window,
//!   then is pruned by time (lazily, whenever the registry is touched).
//! - [`Progress::start`] replaces a finished run. Upstream's `StartRun` was a no-op whenever a
//!   run existed under the key, so the next attempt after a failure went untracked.
//! - Stats are loaded at start-up. Upstream loaded them lazily in the first EMA update, so a
//!   cache hit before that overwrote the file with empty averages.
//! - Work phases that never ran are marked skipped at completion. Upstream left them neither
//!   ended nor skipped (e.g. the image phases in mock mode).
//!
//! The API is synchronous: a `std::sync::Mutex` guards in-memory state only, never held across
//! I/O or an `.await`. Saving the stats (an fsynced atomic write) happens after it is released,
//! on tokio's blocking pool when inside a runtime (async workers never wait on fsync), inline
//! otherwise; [`Progress::save_if_dirty`] flushes synchronously (shutdown, tests).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::attributes::dress::DalleDress;
use crate::domain::{SeriesName, Subject};

mod estimate;
mod rendered;
mod shared_dress;
mod snapshot;
mod stats;

pub use estimate::{Estimates, Priors};
pub use rendered::{PolledSnapshot, SnapshotJson};
pub use shared_dress::SharedDress;
use snapshot::Run;
pub use snapshot::{PhaseTiming, QueuePlace, RetryWait, Retrying, Snapshot};
use stats::{Ledger, Saver};
pub use stats::{PhaseStat, PhaseStats, StatsError};

/// A step of a generation run, serialised in snake_case as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Setup,
    BasePrompts,
    EnhancePrompt,
    ImagePrep,
    ImageWait,
    ImageDownload,
    Annotate,
    Failed,
    Completed,
}

impl Phase {
    /// All phases, in upstream's `OrderedPhases` order.
    pub const ALL: [Phase; 9] = [
        Phase::Setup,
        Phase::BasePrompts,
        Phase::EnhancePrompt,
        Phase::ImagePrep,
        Phase::ImageWait,
        Phase::ImageDownload,
        Phase::Annotate,
        Phase::Failed,
        Phase::Completed,
    ];

    /// The seven phases that do work (all but `failed` and `completed`).
    pub const WORK: [Phase; 7] = {
        let [a, b, c, d, e, f, g, _, _] = Phase::ALL;
        [a, b, c, d, e, f, g]
    };

    /// The wire name (`base_prompts`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::BasePrompts => "base_prompts",
            Phase::EnhancePrompt => "enhance_prompt",
            Phase::ImagePrep => "image_prep",
            Phase::ImageWait => "image_wait",
            Phase::ImageDownload => "image_download",
            Phase::Annotate => "annotate",
            Phase::Failed => "failed",
            Phase::Completed => "completed",
        }
    }

    /// The phase with wire name `name`.
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether this is one of the seven work phases.
    pub fn is_work(self) -> bool {
        !matches!(self, Phase::Failed | Phase::Completed)
    }

    /// The snapshot's `phaseIndex`: 1-based among the work phases, 0 for failed/completed.
    pub fn phase_index(self) -> usize {
        Phase::WORK
            .iter()
            .position(|&p| p == self)
            .map_or(0, |i| i + 1)
    }

    /// Index into per-phase arrays (declaration order, as `ALL`).
    fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies a run: one per series and subject (address or seed) at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub series: SeriesName,
    pub subject: Subject,
}

impl RunKey {
    /// The key of `subject` in `series`.
    pub fn new(series: SeriesName, subject: impl Into<Subject>) -> RunKey {
        RunKey {
            series,
            subject: subject.into(),
        }
    }
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.series, self.subject)
    }
}

/// What [`Progress::start`] did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// A new run was registered in phase `setup` (replacing any finished one).
    Started,
    /// A run for the key is in flight; nothing changed.
    AlreadyRunning,
}

/// The registry of runs and phase statistics; cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    saver: Saver,
    retention: Duration,
}

#[derive(Debug)]
struct State {
    /// Ordered, so `active()` lists by series then address without sorting.
    runs: BTreeMap<RunKey, Run>,
    ledger: Ledger,
    /// No finished run's retention ends before this, so pruning (a scan of every run) is only
    /// needed from then on, not on each of the many polls in between.
    next_expiry: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps half-updated in a way worth refusing service.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Progress {
    /// A registry whose stats are loaded now from `<metrics_dir>/progress_phase_stats.json` (a
    /// missing or invalid file gives empty stats, logged) and saved there on every change.
    /// Finished runs stay visible for `retention`.
    pub fn load(metrics_dir: PathBuf, retention: Duration) -> Progress {
        let path = metrics_dir.join(stats::FILE_NAME);
        let stats = PhaseStats::load_or_empty(&path);
        Progress::build(Some(path), stats, retention)
    }

    /// A registry that never touches the disk (for tests and tools).
    pub fn in_memory(retention: Duration) -> Progress {
        Progress::build(None, PhaseStats::default(), retention)
    }

    fn build(stats_path: Option<PathBuf>, stats: PhaseStats, retention: Duration) -> Progress {
        let state = State {
            runs: BTreeMap::new(),
            ledger: Ledger::new(stats),
            next_expiry: None,
        };
        Progress {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                saver: Saver::new(stats_path),
                retention,
            }),
        }
    }

    /// Sets what percent and ETA are estimated from before a phase has history, and how many
    /// runs work at once (see [`Estimates`]); the default assumes OpenAI's default image model
    /// and one slot.
    pub fn with_estimates(self, estimates: Estimates) -> Progress {
        lock(&self.inner.state).ledger.estimates = estimates;
        self
    }

    /// Locks the state after pruning runs whose retention has passed.
    fn state(&self) -> (MutexGuard<'_, State>, Instant) {
        let mut state = lock(&self.inner.state);
        let now = Instant::now();
        if state.next_expiry.is_some_and(|at| now >= at) {
            let retention = self.inner.retention;
            state.runs.retain(|_, run| !run.expired(now, retention));
            state.next_expiry = state
                .runs
                .values()
                .filter_map(|run| run.expires_at(retention))
                .min();
        }
        (state, now)
    }

    /// Applies `f` to the key's run, if any, then saves the stats if `f` changed them.
    fn update(&self, key: &RunKey, f: impl FnOnce(&mut Run, &mut Ledger, Instant)) {
        let changed = {
            let (mut guard, now) = self.state();
            let State {
                runs,
                ledger,
                next_expiry,
            } = &mut *guard;
            let before = ledger.version();
            if let Some(run) = runs.get_mut(key) {
                f(run, ledger, now);
                run.version += 1;
                // Runs finish only in here, so this keeps `next_expiry` the earliest one.
                if let Some(at) = run.expires_at(self.inner.retention) {
                    *next_expiry = Some(next_expiry.map_or(at, |next| next.min(at)));
                }
            }
            ledger.version() != before
        };
        if changed {
            self.persist();
        }
    }

    /// Registers a new run for `key` in phase `setup`, started by `request_id`, unless one is in
    /// flight. A finished run still retained for the key is replaced (upstream kept it, which
    /// made every later update for the key a no-op).
    pub fn start(&self, key: &RunKey, request_id: &str) -> StartOutcome {
        let (mut state, now) = self.state();
        if state.runs.get(key).is_some_and(|run| !run.done) {
            return StartOutcome::AlreadyRunning;
        }
        state.runs.insert(key.clone(), Run::new(request_id, now));
        StartOutcome::Started
    }

    /// Registers a new run for `key` even if one is in flight: for a caller that has taken over
    /// the key's generation lock after its TTL, whose stale run must stop being reported.
    pub fn restart(&self, key: &RunKey, request_id: &str) {
        let (mut state, now) = self.state();
        state.runs.insert(key.clone(), Run::new(request_id, now));
    }

    /// Sets (or, with `None`, clears) the place of a run waiting for a slot; its position is
    /// read from it whenever a snapshot is taken.
    pub fn set_queue_place(&self, key: &RunKey, place: Option<QueuePlace>) {
        self.update(key, |run, _, now| run.set_queue_place(place, now));
    }

    /// Sets (or, with `None`, clears) a fixed 1-based queue position (tests, tools).
    pub fn set_queue_position(&self, key: &RunKey, position: Option<usize>) {
        self.set_queue_place(key, position.map(QueuePlace::fixed));
    }

    /// Records that the run waits to retry a provider call (`None`: the next attempt started).
    /// Cleared by the run's next phase and by its end.
    pub fn set_retrying(&self, key: &RunKey, wait: Option<&RetryWait>) {
        self.update(key, |run, _, now| run.set_retrying(wait, now));
    }

    /// Moves an in-flight run to `phase`, ending the current phase (which feeds its average).
    /// Ignored for a finished or unknown run; `failed`/`completed` go through
    /// [`fail`](Self::fail) and [`complete`](Self::complete).
    pub fn transition(&self, key: &RunKey, phase: Phase) {
        if !phase.is_work() {
            tracing::warn!(series = %key.series, subject = %key.subject, %phase, "ignored a transition to a terminal phase");
            return;
        }
        self.update(key, |run, ledger, now| {
            ledger.sample(run.transition(phase, now))
        });
    }

    /// Marks `phase` skipped (started = ended = now when unset); the current phase is unchanged.
    pub fn skip(&self, key: &RunKey, phase: Phase) {
        self.update(key, |run, _, now| run.skip(phase, now));
    }

    /// Sets the run's DalleDress.
    pub fn set_dress(&self, key: &RunKey, dress: DalleDress) {
        self.update(key, |run, _, _| run.dress = Some(SharedDress::new(dress)));
    }

    /// Edits the run's DalleDress (no-op when it has none). The edit makes a new copy that
    /// later snapshots share, so unlike upstream's shared pointer, encoding never races with it.
    pub fn update_dress(&self, key: &RunKey, f: impl FnOnce(&mut DalleDress)) {
        self.update(key, |run, _, _| {
            run.dress = run.dress.as_ref().map(|dress| dress.edited(f));
        });
    }

    /// Completes an in-flight run: the current phase feeds its average, unstarted work phases
    /// are marked skipped, `generationRuns` grows and the stats are saved.
    pub fn complete(&self, key: &RunKey) {
        self.update(key, |run, ledger, now| {
            if !run.done {
                ledger.sample(run.complete(now));
                ledger.count_generation_run();
            }
        });
    }

    /// Completes an in-flight run as a cache hit (`cacheHit:true`, `done:true`): no phase feeds
    /// an average, `cacheHits` grows and the stats are saved.
    pub fn complete_cache_hit(&self, key: &RunKey) {
        self.update(key, |run, ledger, now| {
            if !run.done {
                run.cache_hit = true;
                ledger.sample(run.complete(now));
                ledger.count_cache_hit();
            }
        });
    }

    /// Fails an in-flight run with `error` (`currentPhase:"failed"`, `done:true`), keeping the
    /// percent it had reached; the failed phase never feeds its average.
    pub fn fail(&self, key: &RunKey, error: String, code: &'static str) {
        self.update(key, |run, ledger, now| {
            run.fail(error, code, ledger.estimator(), now);
        });
    }

    /// The run's snapshot, in flight or finished within the retention window. Reading never
    /// removes anything (upstream deleted finished runs on the first read).
    pub fn snapshot(&self, key: &RunKey) -> Option<Snapshot> {
        let (state, now) = self.state();
        state
            .runs
            .get(key)
            .map(|run| run.snapshot(key, state.ledger.estimator(), now))
    }

    /// The run's snapshot as JSON, the same bytes as serialising [`Progress::snapshot`] but
    /// mostly reused from the previous poll (see [`PolledSnapshot`]).
    pub fn poll(&self, key: &RunKey) -> Option<PolledSnapshot> {
        let (mut guard, now) = self.state();
        let State { runs, ledger, .. } = &mut *guard;
        let run = runs.get_mut(key)?;
        Some(rendered::render(
            run,
            key,
            ledger.estimator(),
            ledger.version(),
            now,
        ))
    }

    /// The runs not finished yet, sorted by series then address: what the status printer and
    /// the gallery show. Finished runs are skipped before they are snapshotted, so the lock is
    /// not held for the retained ones. Non-destructive, so the status printer cannot steal a
    /// poller's `done:true` (it could upstream).
    pub fn in_flight(&self) -> Vec<Snapshot> {
        let (state, now) = self.state();
        let estimator = state.ledger.estimator();
        state
            .runs
            .iter()
            .filter(|(_, run)| !run.done)
            .map(|(key, run)| run.snapshot(key, estimator, now))
            .collect()
    }

    /// The failed runs still within their retention, sorted by series then address: the
    /// gallery shows them with their error until they are removed or expire.
    pub fn failed(&self) -> Vec<Snapshot> {
        let (state, now) = self.state();
        let estimator = state.ledger.estimator();
        state
            .runs
            .iter()
            .filter(|(_, run)| run.done && !run.cache_hit)
            .map(|(key, run)| run.snapshot(key, estimator, now))
            .filter(|s| s.current_phase == Phase::Failed)
            .collect()
    }

    /// Removes a finished run before its retention ends (`?remove`); an in-flight run is kept.
    /// Returns whether a run was removed.
    pub fn forget(&self, key: &RunKey) -> bool {
        let (mut state, _) = self.state();
        let finished = state.runs.get(key).is_some_and(|run| run.done);
        finished && state.runs.remove(key).is_some()
    }

    /// Whether a run for `key` has started and not finished.
    pub fn is_in_flight(&self, key: &RunKey) -> bool {
        let (state, _) = self.state();
        state.runs.get(key).is_some_and(|run| !run.done)
    }

    /// How many runs are in flight.
    pub fn in_flight_count(&self) -> usize {
        let (state, _) = self.state();
        state.runs.values().filter(|run| !run.done).count()
    }

    /// A copy of the phase statistics.
    pub fn stats(&self) -> PhaseStats {
        lock(&self.inner.state).ledger.stats().clone()
    }

    /// Writes the stats file now if it is behind the in-memory stats; returns whether it wrote.
    /// Blocking (fsync): from async code call it on the blocking pool.
    pub fn save_if_dirty(&self) -> io::Result<bool> {
        self.inner.saver.save_if_dirty(|saved| {
            let state = lock(&self.inner.state);
            let ledger = &state.ledger;
            (ledger.version() != saved).then(|| (ledger.version(), ledger.stats().clone()))
        })
    }

    /// Saves the stats after a change without blocking an async worker.
    fn persist(&self) {
        if self.inner.saver.is_enabled() {
            let this = self.clone();
            stats::in_background(move || this.save_if_dirty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const RETENTION: Duration = Duration::from_secs(60);

    pub(super) fn key(series: &str, n: u8) -> RunKey {
        let address = crate::domain::Address::parse(&format!("0x{n:040x}"));
        RunKey::new(
            SeriesName::normalize(series),
            address.expect("a valid address"),
        )
    }

    /// A whole generation whose seven work phases take `secs[i]` seconds each.
    pub(super) async fn generate(p: &Progress, key: &RunKey, secs: [u64; 7]) {
        assert_eq!(p.start(key, "gen"), StartOutcome::Started);
        for (phase, s) in Phase::WORK.into_iter().zip(secs) {
            p.transition(key, phase);
            advance(Duration::from_secs(s)).await;
        }
        p.complete(key);
    }

    #[tokio::test(start_paused = true)]
    async fn start_on_an_in_flight_key_changes_nothing_but_replaces_a_finished_run() {
        let p = Progress::in_memory(RETENTION);
        let k = key("simple", 1);
        let who = |p: &Progress| {
            p.snapshot(&k)
                .map(|s| (s.request_id, s.current_phase, s.done))
        };
        assert_eq!(p.start(&k, "first"), StartOutcome::Started);
        p.transition(&k, Phase::BasePrompts);
        assert_eq!(p.start(&k, "second"), StartOutcome::AlreadyRunning);
        assert_eq!(who(&p), Some(("first".into(), Phase::BasePrompts, false)));
        assert!(
            p.is_in_flight(&k) && !p.forget(&k),
            "in-flight runs are never forgotten"
        );
        p.fail(&k, "boom".into(), "internal");
        assert!(!p.is_in_flight(&k));
        assert_eq!(p.start(&k, "third"), StartOutcome::Started);
        assert_eq!(who(&p), Some(("third".into(), Phase::Setup, false)));
        p.restart(&k, "fourth");
        assert_eq!(who(&p), Some(("fourth".into(), Phase::Setup, false)));
    }

    #[tokio::test(start_paused = true)]
    async fn finished_runs_stay_visible_for_the_retention_window_only() {
        let p = Progress::in_memory(RETENTION);
        let k = key("simple", 1);
        generate(&p, &k, [1; 7]).await;
        for _ in 0..3 {
            assert!(p.snapshot(&k).unwrap().done, "reading deletes nothing");
            assert!(p.in_flight().is_empty(), "neither does the status printer");
        }
        advance(RETENTION - Duration::from_millis(1)).await;
        assert!(p.snapshot(&k).is_some());
        advance(Duration::from_millis(1)).await;
        assert!(p.snapshot(&k).is_none());

        generate(&p, &k, [1; 7]).await;
        assert!(p.forget(&k), "?remove drops a retained run early");
        assert!(p.snapshot(&k).is_none() && !p.forget(&k));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_lists_unfinished_runs_sorted_by_series_then_address() {
        let p = Progress::in_memory(RETENTION);
        let keys = [
            key("simple", 2),
            key("empty", 9),
            key("simple", 3),
            key("simple", 1),
        ];
        for k in &keys {
            let _ = p.start(k, "r");
        }
        p.complete(&keys[0]);
        assert_eq!(p.in_flight_count(), 3);
        let listed = |p: &Progress| {
            let running = p.in_flight().into_iter();
            running
                .map(|s| format!("{}:{}", s.series, s.address))
                .collect::<Vec<_>>()
        };
        let expected = [&keys[1], &keys[3], &keys[2]].map(RunKey::to_string);
        assert_eq!(listed(&p), expected);
        assert_eq!(listed(&p), expected, "listing twice changes nothing");
        assert!(
            p.snapshot(&keys[0]).unwrap().done,
            "the finished run is still retained"
        );
    }
}
