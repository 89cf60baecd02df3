//! Per-phase duration averages (an exponential moving average per phase) and the run
//! counters, with their on-disk form `<metrics>/progress_phase_stats.json`.
//!
//! The file keeps upstream's shape (`version`, `phaseAverages`, `generationRuns`, `cacheHits`,
//! 2-space indent) so a metrics directory carries over from the Go server. Upstream also
//! appended every save to `progress_phase_history.jsonl`; nothing reads that file, so it is not
//! written here.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::estimate::{Estimates, Estimator};
use super::snapshot::Sample;
use super::{Phase, lock};

/// Weight of the newest sample in the moving average.
pub const ALPHA: f64 = 0.2;
/// Weight of the previous average (written out rather than `1.0 - ALPHA`, which is not exactly
/// 0.8 in binary floating point).
const KEEP: f64 = 0.8;
/// The only file version read or written.
pub const FILE_VERSION: &str = "v1";
/// The stats file's name inside the metrics directory.
pub const FILE_NAME: &str = "progress_phase_stats.json";

/// One phase's moving average: how many samples it has seen and the average in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseStat {
    pub count: u64,
    pub avg_ns: i64,
}

/// Every phase's moving average plus the counters of completed generations and cache hits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseStats {
    averages: BTreeMap<Phase, PhaseStat>,
    generation_runs: u64,
    cache_hits: u64,
}

/// Why a stats file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("cannot read the phase statistics file: {0}")]
    Read(#[source] io::Error),
    #[error("the phase statistics file is not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("unsupported phase statistics version {0:?} (expected \"v1\")")]
    Version(String),
    #[error("unknown phase {0:?} in the phase statistics file")]
    UnknownPhase(String),
}

/// The file as written to disk; keys are phase names so the map stays upstream-compatible.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatsFile {
    version: String,
    #[serde(default)]
    phase_averages: BTreeMap<String, PhaseStat>,
    #[serde(default)]
    generation_runs: u64,
    #[serde(default)]
    cache_hits: u64,
}

impl PhaseStats {
    /// The average of `phase`, if it has at least one sample.
    pub fn get(&self, phase: Phase) -> Option<PhaseStat> {
        self.averages.get(&phase).copied().filter(|s| s.count > 0)
    }

    /// The average duration of `phase` in nanoseconds, if it has at least one sample.
    pub fn avg_ns(&self, phase: Phase) -> Option<i64> {
        self.get(phase).map(|s| s.avg_ns)
    }

    /// Every phase with at least one sample, in phase order.
    pub fn averages(&self) -> impl Iterator<Item = (Phase, PhaseStat)> + '_ {
        self.averages
            .iter()
            .filter(|(_, s)| s.count > 0)
            .map(|(p, s)| (*p, *s))
    }

    /// Completed generations that were not cache hits.
    pub fn generation_runs(&self) -> u64 {
        self.generation_runs
    }

    /// Requests answered from an existing image.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits
    }

    /// Feeds one sample into `phase`'s average; a zero duration carries no information and is
    /// ignored. Returns whether anything changed.
    fn record(&mut self, phase: Phase, duration: Duration) -> bool {
        if duration.is_zero() {
            return false;
        }
        let ns = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        let stat = self.averages.entry(phase).or_default();
        stat.avg_ns = if stat.count == 0 {
            ns
        } else {
            // Truncation towards zero, as upstream's int64 conversion.
            (ns as f64 * ALPHA + stat.avg_ns as f64 * KEEP) as i64
        };
        stat.count = stat.count.saturating_add(1);
        true
    }

    /// Counts one completed (non-cache-hit) generation.
    fn add_generation_run(&mut self) {
        self.generation_runs = self.generation_runs.saturating_add(1);
    }

    /// Counts one cache hit.
    fn add_cache_hit(&mut self) {
        self.cache_hits = self.cache_hits.saturating_add(1);
    }

    /// The file's bytes: pretty JSON with 2-space indent, phases with samples only.
    pub fn to_json(&self) -> Vec<u8> {
        let file = StatsFile {
            version: FILE_VERSION.to_string(),
            phase_averages: self
                .averages()
                .map(|(p, s)| (p.as_str().to_string(), s))
                .collect(),
            generation_runs: self.generation_runs,
            cache_hits: self.cache_hits,
        };
        // Serialising string-keyed maps of integers cannot fail; an empty body would only
        // mean the next load starts empty.
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }

    /// Parses a stats file; only version `v1` with known phase names is accepted.
    pub fn from_json(bytes: &[u8]) -> Result<PhaseStats, StatsError> {
        let file: StatsFile = serde_json::from_slice(bytes)?;
        if file.version != FILE_VERSION {
            return Err(StatsError::Version(file.version));
        }
        let mut averages = BTreeMap::new();
        for (name, stat) in file.phase_averages {
            let phase = Phase::from_name(&name).ok_or(StatsError::UnknownPhase(name))?;
            averages.insert(phase, stat);
        }
        Ok(PhaseStats {
            averages,
            generation_runs: file.generation_runs,
            cache_hits: file.cache_hits,
        })
    }

    /// Reads the stats file at `path`.
    pub fn read(path: &Path) -> Result<PhaseStats, StatsError> {
        let bytes = std::fs::read(path).map_err(StatsError::Read)?;
        PhaseStats::from_json(&bytes)
    }

    /// Reads the stats file at start-up. A missing file is a fresh install; an unreadable or
    /// invalid one is logged and replaced by the next save — estimates are a convenience, not
    /// worth refusing to start over.
    pub(super) fn load_or_empty(path: &Path) -> PhaseStats {
        match PhaseStats::read(path) {
            Ok(stats) => {
                tracing::info!(
                    path = %path.display(),
                    phases = stats.averages().count(),
                    generation_runs = stats.generation_runs,
                    cache_hits = stats.cache_hits,
                    "loaded progress phase statistics"
                );
                stats
            }
            Err(StatsError::Read(e)) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no progress phase statistics yet; estimates start empty");
                PhaseStats::default()
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring the progress phase statistics file; estimates start empty");
                PhaseStats::default()
            }
        }
    }
}

/// The live stats with a change counter, so a writer knows whether the file is behind, and
/// the configuration that estimates combine them with.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    stats: PhaseStats,
    version: u64,
    /// Not counted in `version`: it changes no saved or rendered byte, only the clock fields.
    pub(super) estimates: Estimates,
}

impl Ledger {
    pub(super) fn new(stats: PhaseStats) -> Ledger {
        Ledger {
            stats,
            version: 0,
            estimates: Estimates::default(),
        }
    }

    pub(super) fn stats(&self) -> &PhaseStats {
        &self.stats
    }

    /// What snapshots estimate percent and ETA from.
    pub(super) fn estimator(&self) -> Estimator<'_> {
        Estimator {
            stats: &self.stats,
            estimates: &self.estimates,
        }
    }

    /// The change counter; it starts at 0, which is also what the saver starts at.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// Feeds an EMA sample, if there is one.
    pub(super) fn sample(&mut self, sample: Sample) {
        if let Some((phase, duration)) = sample
            && self.stats.record(phase, duration)
        {
            self.version += 1;
        }
    }

    pub(super) fn count_generation_run(&mut self) {
        self.stats.add_generation_run();
        self.version += 1;
    }

    pub(super) fn count_cache_hit(&mut self) {
        self.stats.add_cache_hit();
        self.version += 1;
    }
}

/// Writes the stats file atomically (`storage::write_atomic`). Its lock serialises writers and
/// remembers the version last written, so an older copy never replaces a newer one.
#[derive(Debug)]
pub(super) struct Saver {
    /// `None` keeps the stats in memory only.
    path: Option<PathBuf>,
    saved_version: Mutex<u64>,
}

impl Saver {
    pub(super) fn new(path: Option<PathBuf>) -> Saver {
        Saver {
            path,
            saved_version: Mutex::new(0),
        }
    }

    pub(super) fn is_enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Writes the stats if they changed since the last write. `newer(saved)` returns the
    /// current version and a copy of the stats when the version differs from `saved`; it is
    /// called with this saver's lock held, and the write happens after it returns, so the
    /// caller's own lock is never held across the I/O.
    pub(super) fn save_if_dirty(
        &self,
        newer: impl FnOnce(u64) -> Option<(u64, PhaseStats)>,
    ) -> io::Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let mut saved = lock(&self.saved_version);
        let Some((version, stats)) = newer(*saved) else {
            return Ok(false);
        };
        crate::storage::write_atomic(path, &stats.to_json())?;
        *saved = version;
        Ok(true)
    }
}

/// Runs a save on tokio's blocking pool when inside a runtime (so async workers never wait on
/// fsync), inline otherwise. Failures are logged here, where they are handled; the job is
/// detached because a later save, or the shutdown flush, catches up if this one is lost.
pub(super) fn in_background(save: impl FnOnce() -> io::Result<bool> + Send + 'static) {
    let job = move || {
        if let Err(error) = save() {
            tracing::warn!(%error, "could not save the progress phase statistics");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(job)),
        Err(_) => job(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Progress;
    use super::super::tests::{generate, key};
    use super::*;

    const REFERENCE: [u64; 7] = [1, 1, 2, 1, 10, 2, 3];

    #[test]
    fn first_sample_sets_the_average_then_newest_weighs_one_fifth() {
        let mut stats = PhaseStats::default();
        assert!(
            !stats.record(Phase::ImageWait, Duration::ZERO),
            "zero is not a sample"
        );
        assert!(stats.record(Phase::ImageWait, Duration::from_secs(10)));
        let stat = |s: &PhaseStats| {
            s.get(Phase::ImageWait)
                .map(|s| (s.count, s.avg_ns / 1_000_000))
        };
        assert_eq!(stat(&stats), Some((1, 10_000)));
        stats.record(Phase::ImageWait, Duration::from_secs(20));
        assert_eq!(stat(&stats), Some((2, 12_000)), "20·0.2 + 10·0.8");
        stats.record(Phase::ImageWait, Duration::from_secs(2));
        assert_eq!(stat(&stats), Some((3, 10_000)), "2·0.2 + 12·0.8");
        let mut small = PhaseStats::default();
        small.record(Phase::Setup, Duration::from_nanos(2));
        small.record(Phase::Setup, Duration::from_nanos(1));
        assert_eq!(
            small.avg_ns(Phase::Setup),
            Some(1),
            "1.8 truncates, like upstream's int64()"
        );
    }

    #[test]
    fn the_file_has_upstream_field_names_and_round_trips() {
        let mut stats = PhaseStats::default();
        stats.record(Phase::BasePrompts, Duration::from_millis(1500));
        stats.add_generation_run();
        stats.add_cache_hit();
        let bytes = stats.to_json();
        assert!(
            String::from_utf8_lossy(&bytes).contains("\n  \"version\": \"v1\""),
            "2-space indent"
        );
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let expected = serde_json::json!({
            "version": "v1",
            "phaseAverages": {"base_prompts": {"count": 1, "avgNs": 1_500_000_000}},
            "generationRuns": 1,
            "cacheHits": 1
        });
        assert_eq!(value, expected);
        assert_eq!(PhaseStats::from_json(&bytes).unwrap(), stats);
    }

    #[test]
    fn bad_files_are_rejected_and_load_as_empty() {
        let v2 = br#"{"version":"v2","phaseAverages":{},"generationRuns":1,"cacheHits":0}"#;
        assert!(matches!(PhaseStats::from_json(v2), Err(StatsError::Version(v)) if v == "v2"));
        let odd = br#"{"version":"v1","phaseAverages":{"warp":{"count":1,"avgNs":5}}}"#;
        assert!(matches!(
            PhaseStats::from_json(odd),
            Err(StatsError::UnknownPhase(_))
        ));
        assert!(matches!(
            PhaseStats::from_json(b"{"),
            Err(StatsError::Parse(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(
            PhaseStats::load_or_empty(&path),
            PhaseStats::default(),
            "missing"
        );
        std::fs::write(&path, v2).unwrap();
        assert_eq!(
            PhaseStats::load_or_empty(&path),
            PhaseStats::default(),
            "invalid"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cache_hits_and_failures_never_change_the_averages() {
        let p = Progress::in_memory(Duration::from_secs(60));
        generate(&p, &key("simple", 1), REFERENCE).await;
        let before = p.stats();
        assert_eq!((before.generation_runs(), before.cache_hits()), (1, 0));

        let hit = key("simple", 2);
        let _ = p.start(&hit, "r");
        tokio::time::advance(Duration::from_secs(7)).await;
        p.complete_cache_hit(&hit);
        let snap = p.snapshot(&hit).unwrap();
        assert!(snap.cache_hit && snap.done && snap.current_phase == Phase::Completed);

        // Phases a failed run completed before failing are normal samples (as upstream); the
        // phase it failed in is not. This run leaves setup at once, so setup gets no sample.
        let failed = key("simple", 3);
        let _ = p.start(&failed, "r");
        p.transition(&failed, Phase::BasePrompts);
        tokio::time::advance(Duration::from_secs(9)).await;
        p.fail(&failed, "broken".into(), "internal");

        let after = p.stats();
        assert!(before.averages().eq(after.averages()), "{after:?}");
        assert_eq!((after.generation_runs(), after.cache_hits()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn stats_are_saved_atomically_and_loaded_by_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics");
        let p = Progress::load(metrics.clone(), Duration::from_secs(60));
        generate(&p, &key("simple", 1), REFERENCE).await;
        p.save_if_dirty().unwrap(); // waits for (or does) the background save
        assert!(!p.save_if_dirty().unwrap(), "nothing left to write");
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(metrics.join(FILE_NAME)).unwrap()).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["cacheHits", "generationRuns", "phaseAverages", "version"]
        );
        assert_eq!(
            (&value["version"], &value["generationRuns"]),
            (&"v1".into(), &1.into())
        );
        let image_wait = serde_json::json!({"count": 1, "avgNs": 10_000_000_000_i64});
        assert_eq!(value["phaseAverages"]["image_wait"], image_wait);
        let names: Vec<_> = std::fs::read_dir(&metrics)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME], "no temporary files left behind");

        // A cache hit first thing after a restart keeps the loaded averages (upstream wiped them).
        let reloaded = Progress::load(metrics.clone(), Duration::from_secs(60));
        assert_eq!(reloaded.stats(), p.stats());
        let hit = key("simple", 2);
        let _ = reloaded.start(&hit, "r");
        reloaded.complete_cache_hit(&hit);
        reloaded.save_if_dirty().unwrap();
        let third = PhaseStats::read(&metrics.join(FILE_NAME)).unwrap();
        assert!(third.averages().eq(p.stats().averages()));
        assert_eq!((third.generation_runs(), third.cache_hits()), (1, 1));
    }
}
