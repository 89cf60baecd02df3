//! What one run records (phase timings, dress, outcome) and the [`Snapshot`] a client sees of
//! it, with percent and ETA estimated from the phase averages exactly as the Go library does.
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

use super::{Phase, PhaseStats, RunKey, SharedDress};

const NS_PER_SECOND: f64 = 1e9;

/// A run's progress as served by `/dalle`: upstream's `ProgressReport` fields, every one
/// always present, plus the additive `requestId` and `queuePosition`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub series: String,
    pub address: String,
    pub current_phase: Phase,
    /// When the run started, in Unix nanoseconds.
    pub started_ns: i64,
    /// Overall progress, 0–100.
    pub percent: f64,
    pub eta_seconds: f64,
    /// Progress through the current phase, 0–100.
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
        Run::new("", now).snapshot(key, &PhaseStats::default(), now)
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
    pub(super) fn set_queue_place(&mut self, place: Option<QueuePlace>) {
        if !self.done && self.current == Phase::Setup {
            self.queue_place = place;
        }
    }

    /// The run's 1-based queue position now, while it waits for a slot.
    pub(super) fn queue_position(&self) -> Option<usize> {
        self.queue_place.as_ref().and_then(QueuePlace::position)
    }

    /// Ends the running current phase; returns its duration as a sample when `feed` and the
    /// phase was really run (not skipped) and the run is not a cache hit.
    fn end_current(&mut self, now: Instant, feed: bool) -> Sample {
        let cache_hit = self.cache_hit;
        let t = &mut self.timings[self.current.slot()];
        let started = t.started.filter(|_| t.ended.is_none())?;
        t.ended = Some(now);
        (feed && !t.skipped && !cache_hit)
            .then(|| (self.current, now.saturating_duration_since(started)))
    }

    /// Upstream's `Transition`: ends the current phase (if it differs), starts `phase` if it
    /// has not started, and makes it current. Ignored once the run is done.
    pub(super) fn transition(&mut self, phase: Phase, now: Instant) -> Sample {
        if self.done {
            return None;
        }
        let sample = if self.current == phase {
            None
        } else {
            self.end_current(now, true)
        };
        let next = &mut self.timings[phase.slot()];
        next.started.get_or_insert(now);
        self.current = phase;
        if phase != Phase::Setup {
            self.queue_place = None;
        }
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
    pub(super) fn fail(&mut self, error: String, code: &'static str, now: Instant) {
        if self.done {
            return;
        }
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
        self.queue_place = None;
    }

    fn unix_ns_at(&self, at: Option<Instant>) -> i64 {
        at.map_or(0, |t| {
            let offset = t.saturating_duration_since(self.started_at).as_nanos();
            self.started_unix_ns
                .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
        })
    }

    /// The run as a client sees it at `now`.
    pub(super) fn snapshot(&self, key: &RunKey, stats: &PhaseStats, now: Instant) -> Snapshot {
        let (phase_percent, phase_eta_seconds) = self.phase_progress(stats, now);
        let (percent, eta_seconds) = self.overall_progress(stats, now);
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
            phase_averages: stats.averages().map(|(p, s)| (p, s.avg_ns)).collect(),
            request_id: self.request_id.clone(),
            queue_position: self.queue_position(),
        }
    }

    fn elapsed_ns(&self, phase: Phase, now: Instant) -> f64 {
        self.timings[phase.slot()].elapsed(now).as_nanos() as f64
    }

    /// Percent through the current work phase and its remaining seconds, from its average.
    pub(super) fn phase_progress(&self, stats: &PhaseStats, now: Instant) -> (f64, f64) {
        match average(stats, self.current) {
            Some(avg) if self.current.is_work() => {
                let elapsed = self.elapsed_ns(self.current, now);
                (
                    (elapsed / avg * 100.0).min(100.0),
                    (avg - elapsed).max(0.0) / NS_PER_SECOND,
                )
            }
            _ => (0.0, 0.0),
        }
    }

    /// Overall percent and ETA, as upstream computes them: the averages of the phases already
    /// ended, plus the time spent in the current one (capped at its average), over the sum of
    /// all work averages.
    pub(super) fn overall_progress(&self, stats: &PhaseStats, now: Instant) -> (f64, f64) {
        let total: f64 = Phase::WORK.iter().filter_map(|&p| average(stats, p)).sum();
        if total <= 0.0 {
            return (0.0, 0.0);
        }
        let mut done = 0.0;
        for phase in Phase::ALL.into_iter().filter(|&p| p != Phase::Completed) {
            if phase == self.current {
                let elapsed = self.elapsed_ns(phase, now);
                done += average(stats, phase).map_or(elapsed, |avg| elapsed.min(avg));
                break;
            }
            if self.timings[phase.slot()].ended.is_some() {
                done += average(stats, phase).unwrap_or(0.0);
            }
        }
        // Upstream could exceed 100 % while in a phase that has no average yet, and a run
        // still working read "100 %" once the known phases were behind it; a run in flight
        // tops out at 99 % until it really completes.
        let cap = if self.current.is_work() { 99.0 } else { 100.0 };
        (
            (done / total * 100.0).min(cap),
            (total - done).max(0.0) / NS_PER_SECOND,
        )
    }
}

/// A phase's average in nanoseconds, if it has a positive one.
fn average(stats: &PhaseStats, phase: Phase) -> Option<f64> {
    stats
        .avg_ns(phase)
        .filter(|&avg| avg > 0)
        .map(|avg| avg as f64)
}

/// Nanoseconds since the Unix epoch (0 for a clock set before 1970).
fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{generate, key};
    use super::super::{Progress, StartOutcome};
    use super::*;
    use crate::attributes::dress::DalleDress;
    use tokio::time::advance;

    const RETENTION: Duration = Duration::from_secs(60);
    /// Work-phase durations (seconds) of the reference run: the averages sum to 20 s.
    const REFERENCE: [u64; 7] = [1, 1, 2, 1, 10, 2, 3];

    const PHASE_NAMES: &str = r#"["setup","base_prompts","enhance_prompt","image_prep","image_wait","image_download","annotate","failed","completed"]"#;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_in_flight_never_reads_100_percent() {
        let p = Progress::in_memory(RETENTION);
        let k = key("simple", 3);
        let _ = p.start(&k, "r");
        // The first run ever: once setup has an average and the run sits in a phase that has
        // none, the known phases are all behind it. Upstream showed 100 % here.
        p.transition(&k, Phase::BasePrompts);
        advance(secs(1)).await;
        p.transition(&k, Phase::ImageWait);
        advance(secs(3)).await;
        let snap = p.snapshot(&k).unwrap();
        assert!(!snap.done);
        assert_eq!(snap.percent, 99.0);
        p.complete(&k);
        assert_eq!(p.snapshot(&k).unwrap().percent, 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn percent_and_eta_in_the_middle_of_a_phase() {
        let p = Progress::in_memory(RETENTION);
        generate(&p, &key("simple", 1), REFERENCE).await;
        let k = key("simple", 2);
        let _ = p.start(&k, "r");
        let at_start = p.snapshot(&k).unwrap();
        assert_eq!((at_start.percent, at_start.eta_seconds), (0.0, 20.0));
        // Same durations as the reference, so the averages stay exact while we go.
        for (phase, s) in Phase::WORK.into_iter().zip(REFERENCE).take(4) {
            p.transition(&k, phase);
            advance(secs(s)).await;
        }
        p.transition(&k, Phase::ImageWait);
        advance(secs(5)).await;
        let snap = p.snapshot(&k).unwrap();
        assert_eq!(snap.current_phase, Phase::ImageWait);
        assert_eq!((snap.phase_index, snap.phase_count), (5, 7));
        assert_eq!((snap.phase_percent, snap.phase_eta_seconds), (50.0, 5.0));
        // done = 1 + 1 + 2 + 1 + 5 of 20 s
        assert_eq!((snap.percent, snap.eta_seconds), (50.0, 10.0));
        assert_eq!(snap.phase_averages.len(), 7);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["phaseAverages"]["image_wait"], 10_000_000_000_i64);

        // Overrunning the average caps the phase at 100 % and its share of the total.
        advance(secs(10)).await;
        let late = p.snapshot(&k).unwrap();
        assert_eq!((late.phase_percent, late.phase_eta_seconds), (100.0, 0.0));
        assert_eq!((late.percent, late.eta_seconds), (75.0, 5.0));
    }

    #[tokio::test(start_paused = true)]
    async fn phase_index_counts_work_phases_from_one_and_is_zero_when_finished() {
        let p = Progress::in_memory(RETENTION);
        let k = key("simple", 1);
        let _ = p.start(&k, "r");
        for (i, phase) in Phase::WORK.into_iter().enumerate() {
            p.transition(&k, phase);
            assert_eq!(p.snapshot(&k).unwrap().phase_index, i + 1);
        }
        p.complete(&k);
        let done = p.snapshot(&k).unwrap();
        assert_eq!(
            (done.phase_index, done.percent),
            (0, 0.0),
            "no averages yet"
        );

        let failed = key("simple", 2);
        let _ = p.start(&failed, "r");
        p.transition(&failed, Phase::ImageWait);
        advance(secs(3)).await;
        p.fail(
            &failed,
            "OpenAI API error (status 400): no".into(),
            "provider_failed",
        );
        p.transition(&failed, Phase::Annotate); // ignored: the run is over
        p.complete(&failed);
        let snap = p.snapshot(&failed).unwrap();
        assert_eq!((snap.phase_index, snap.current_phase), (0, Phase::Failed));
        assert!(snap.done && !snap.cache_hit && snap.error == "OpenAI API error (status 400): no");
        let wait = &snap.phases[Phase::ImageWait as usize];
        assert!(wait.ended_ns - wait.started_ns == 3_000_000_000 && wait.error == snap.error);
        let later = &snap.phases[Phase::Annotate as usize];
        assert!(
            later.started_ns == 0 && !later.skipped,
            "not run; not skipped"
        );
    }

    fn sorted_keys(value: &serde_json::Value) -> String {
        let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(|k| &**k).collect();
        keys.sort_unstable();
        keys.join(" ")
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_json_has_exactly_the_documented_keys() {
        let p = Progress::in_memory(RETENTION);
        let k = key("simple", 1);
        assert_eq!(p.start(&k, "req-1"), StartOutcome::Started);
        let json = |p: &Progress| serde_json::to_value(p.snapshot(&k).unwrap()).unwrap();
        let documented = "address cacheHit currentPhase dalleDress done error etaSeconds \
                          percent phaseAverages phaseCount phaseETASeconds phaseIndex \
                          phasePercent phases requestId series startedNs";
        assert_eq!(sorted_keys(&json(&p)), documented);

        p.set_queue_position(&k, Some(2));
        let value = json(&p);
        assert!(value["queuePosition"] == 2 && value["currentPhase"] == "setup");
        assert!(value["dalleDress"].is_null() && value["error"] == "");
        assert_eq!(value["phases"].to_string().matches("\"name\"").count(), 9);
        assert_eq!(serde_json::to_string(&Phase::ALL).unwrap(), PHASE_NAMES);
        assert!(
            Phase::ALL
                .into_iter()
                .all(|p| Phase::from_name(p.as_str()) == Some(p))
        );
        let phase_keys = sorted_keys(&value["phases"][0]);
        assert_eq!(phase_keys, "endedNs error name skipped startedNs");
        assert_eq!(value["phases"][0]["startedNs"], value["startedNs"]);

        p.set_queue_position(&k, None);
        assert_eq!(sorted_keys(&json(&p)), documented);
        p.set_queue_position(&k, Some(1));
        p.transition(&k, Phase::BasePrompts);
        assert_eq!(
            sorted_keys(&json(&p)),
            documented,
            "left setup, left the queue"
        );
        p.set_dress(&k, DalleDress::default());
        p.update_dress(&k, |d| d.image_url = "https://x/y.png".into());
        assert_eq!(json(&p)["dalleDress"]["imageUrl"], "https://x/y.png");
    }

    #[tokio::test(start_paused = true)]
    async fn unstarted_work_phases_are_skipped_at_completion() {
        let p = Progress::in_memory(RETENTION);
        let k = key("simple", 1);
        let _ = p.start(&k, "r");
        advance(secs(1)).await;
        p.transition(&k, Phase::BasePrompts);
        p.skip(&k, Phase::EnhancePrompt);
        advance(secs(1)).await;
        p.transition(&k, Phase::Annotate);
        advance(secs(1)).await;
        p.complete(&k);
        let snap = p.snapshot(&k).unwrap();
        for t in &snap.phases {
            let ran = matches!(t.name, Phase::Setup | Phase::BasePrompts | Phase::Annotate);
            let took = t.ended_ns - t.started_ns;
            match t.name {
                _ if ran => assert!(!t.skipped && took == 1_000_000_000, "{}", t.name),
                Phase::Completed => assert!(!t.skipped && t.ended_ns > 0),
                Phase::Failed => assert!(!t.skipped && t.started_ns == 0),
                _ => assert!(t.skipped && t.started_ns > 0 && took == 0, "{}", t.name),
            }
        }
        assert_eq!(snap.percent, 100.0, "skipped phases count as done");
    }
}
