//! Component health: the data directory and the artifact store are writable, its disk is not full, memory (process RSS)
//! is sane, every OpenAI breaker (one per operation) is closed and the attribute databases
//! loaded.
//!
//! Unlike the Go server, the probes look at the data directory rather than the working
//! directory, durations are real milliseconds and uptime real seconds, and memory above
//! 2000 MB is reachable as `unhealthy`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::json;

use crate::app::App;
use crate::openai::breaker::{BreakerState, BreakersSnapshot};
use crate::storage;
use crate::telemetry::rfc3339;

/// RSS above this is `degraded`.
const MEMORY_DEGRADED_MB: u64 = 1000;
/// RSS above this is `unhealthy`.
const MEMORY_UNHEALTHY_MB: u64 = 2000;
/// Disk use above this is `degraded`.
const DISK_DEGRADED_PERCENT: f64 = 85.0;
/// Disk use above this is `unhealthy` (and fails readiness).
const DISK_UNHEALTHY_PERCENT: f64 = 95.0;
const GIB: u64 = 1024 * 1024 * 1024;

/// A component's (or the whole server's) health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

/// One checked component.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: &'static str,
    pub status: Status,
    pub last_checked: String,
    /// How long the check took, in milliseconds.
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<BTreeMap<&'static str, serde_json::Value>>,
}

/// The full `/health` report (field names as upstream).
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: Status,
    pub timestamp: String,
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub components: BTreeMap<&'static str, Component>,
    pub system: SystemInfo,
    /// `true` while the server drains for a shutdown (it starts no new run); absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// Process figures under the Go runtime's field names.
#[derive(Debug, Clone, Serialize)]
pub struct SystemInfo {
    pub memory: MemoryInfo,
    /// Live tokio tasks.
    pub goroutines: usize,
    /// Tokio worker threads.
    pub gomaxprocs: usize,
}

/// Memory figures: `alloc_bytes` is the resident set, `total_alloc_bytes` its peak,
/// `sys_bytes` the virtual size; there is no garbage collector, so `num_gc` is 0.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryInfo {
    pub alloc_bytes: u64,
    pub total_alloc_bytes: u64,
    pub sys_bytes: u64,
    pub num_gc: u64,
}

impl HealthReport {
    /// Why the server is not ready to take traffic, if it is not: only the data dir, the
    /// disk and the databases count — an open OpenAI breaker still lets cached images out.
    pub fn readiness_problems(&self) -> Vec<String> {
        self.components
            .values()
            .filter(|c| matches!(c.name, "filesystem" | "disk_space" | "databases"))
            .filter(|c| c.status == Status::Unhealthy)
            .map(|c| format!("{}: {}", c.name, c.message))
            .collect()
    }
}

/// Runs every check. Does blocking file I/O: call it from `spawn_blocking`.
pub fn check(app: &App) -> HealthReport {
    let data_dir = app.data.root();
    let components: BTreeMap<_, _> = [
        timed("filesystem", || {
            filesystem(data_dir, app.store.probe().map_err(|e| e.to_string()))
        }),
        timed("disk_space", || disk_space(data_dir)),
        timed("memory", memory),
        timed("openai", || openai(app)),
        timed("databases", || databases(app)),
    ]
    .into_iter()
    .map(|c| (c.name, c))
    .collect();
    let status = components
        .values()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Healthy);
    let mem = process_memory();
    let (tasks, workers) = runtime_figures();
    HealthReport {
        status,
        timestamp: rfc3339(SystemTime::now()),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: app.started.elapsed().as_secs(),
        components,
        draining: app.journal.is_draining(),
        system: SystemInfo {
            memory: MemoryInfo {
                alloc_bytes: mem.rss,
                total_alloc_bytes: mem.peak_rss,
                sys_bytes: mem.virtual_size,
                num_gc: 0,
            },
            goroutines: tasks,
            gomaxprocs: workers,
        },
    }
}

type Outcome = (
    Status,
    String,
    Option<BTreeMap<&'static str, serde_json::Value>>,
);

fn timed(name: &'static str, probe: impl FnOnce() -> Outcome) -> Component {
    let start = Instant::now();
    let (status, message, details) = probe();
    Component {
        name,
        status,
        last_checked: rfc3339(SystemTime::now()),
        duration_ms: (start.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0,
        message,
        details,
    }
}

/// The data dir (statistics, user series) and the artifact store (on a local disk, the data
/// dir's `output/`), whose probe the caller ran through its trait.
fn filesystem(dir: &Path, store: Result<(), String>) -> Outcome {
    match (storage::probe_writable(dir), store) {
        (Ok(()), Ok(())) => (Status::Healthy, "Data directory writable".into(), None),
        (Err(err), _) => (
            Status::Unhealthy,
            format!("Data directory not writable: {err}"),
            None,
        ),
        (Ok(()), Err(err)) => (
            Status::Unhealthy,
            format!("Artifact store not writable: {err}"),
            None,
        ),
    }
}

fn disk_space(dir: &Path) -> Outcome {
    match storage::disk_usage(dir) {
        Err(err) => (
            Status::Unhealthy,
            format!("Failed to check disk space: {err}"),
            None,
        ),
        Ok(usage) => {
            let pct = usage.used_percent();
            let (status, label) = if pct > DISK_UNHEALTHY_PERCENT {
                (Status::Unhealthy, "Critical disk space")
            } else if pct > DISK_DEGRADED_PERCENT {
                (Status::Degraded, "Low disk space")
            } else {
                (Status::Healthy, "Disk space healthy")
            };
            let details = BTreeMap::from([
                ("free_gb", json!(usage.available_bytes / GIB)),
                ("total_gb", json!(usage.total_bytes / GIB)),
                ("usage_percent", json!((pct * 10.0).round() / 10.0)),
            ]);
            (status, format!("{label}: {pct:.1}% used"), Some(details))
        }
    }
}

fn memory() -> Outcome {
    let mem = process_memory();
    let mb = mem.rss / (1024 * 1024);
    let (status, label) = if mb > MEMORY_UNHEALTHY_MB {
        (Status::Unhealthy, "Memory usage critical")
    } else if mb > MEMORY_DEGRADED_MB {
        (Status::Degraded, "High memory usage")
    } else {
        (Status::Healthy, "Memory usage normal")
    };
    let (tasks, _) = runtime_figures();
    let details = BTreeMap::from([
        ("alloc_mb", json!(mb)),
        ("goroutines", json!(tasks)),
        ("num_gc", json!(0)),
        ("sys_mb", json!(mem.virtual_size / (1024 * 1024))),
    ]);
    (status, format!("{label}: {mb} MB resident"), Some(details))
}

fn databases(app: &App) -> Outcome {
    match app.attributes() {
        // The error names the file that failed; it is in the start-up log, not in a body.
        Err(_) => (
            Status::Unhealthy,
            "Attribute databases failed to load; the server log says why".to_string(),
            None,
        ),
        Ok(attributes) => {
            let dbs = &attributes.databases;
            let source = match &dbs.source {
                crate::attributes::database::Source::Embedded => "embedded".to_string(),
                crate::attributes::database::Source::Directory(d) => d.display().to_string(),
            };
            let details = BTreeMap::from([
                ("rows", json!(dbs.selection_rows())),
                ("series", json!(attributes.series.names().len())),
                ("source", json!(source)),
            ]);
            (
                Status::Healthy,
                "Attribute databases loaded".into(),
                Some(details),
            )
        }
    }
}

fn openai(app: &App) -> Outcome {
    let mode = if app.config.openai.mock_mode() {
        "mock"
    } else {
        "live"
    };
    openai_outcome(&app.breaker.snapshot(), mode)
}

/// Unhealthy when any breaker is open (that operation fails at once), degraded when any is
/// half-open. The single `state`, `failures`, `successes` and `last_failure` details summarise
/// every breaker (worst state, sums, latest), as they did when there was one breaker;
/// `operations` has each breaker's own.
fn openai_outcome(snap: &BreakersSnapshot, mode: &str) -> Outcome {
    let worst = snap.worst_state();
    let names_in = |state: BreakerState| {
        snap.operations
            .iter()
            .filter(|b| b.state == state)
            .map(|b| b.operation.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (status, message) = match worst {
        BreakerState::Closed => (
            Status::Healthy,
            "OpenAI circuit breakers closed (healthy)".to_string(),
        ),
        BreakerState::HalfOpen => (
            Status::Degraded,
            format!(
                "OpenAI circuit breaker half-open (recovering): {}",
                names_in(BreakerState::HalfOpen)
            ),
        ),
        BreakerState::Open => (
            Status::Unhealthy,
            format!(
                "OpenAI circuit breaker open (failing): {}",
                names_in(BreakerState::Open)
            ),
        ),
    };
    let operations: serde_json::Map<String, serde_json::Value> = snap
        .operations
        .iter()
        .map(|b| {
            let figures = json!({
                "state": b.state.as_str(),
                "failures": b.total_failures,
                "successes": b.total_successes,
                "consecutive_failures": b.consecutive_failures,
                "last_failure": b.last_failure.map(rfc3339),
                "last_error": b.last_error,
            });
            (b.operation.as_str().to_string(), figures)
        })
        .collect();
    let details = BTreeMap::from([
        ("failures", json!(snap.total_failures())),
        ("last_failure", json!(snap.last_failure().map(rfc3339))),
        ("mode", json!(mode)),
        ("operations", serde_json::Value::Object(operations)),
        ("state", json!(worst.as_str())),
        ("successes", json!(snap.total_successes())),
    ]);
    (status, message, Some(details))
}

#[derive(Debug, Default, Clone, Copy)]
struct ProcessMemory {
    rss: u64,
    peak_rss: u64,
    virtual_size: u64,
}

/// Reads `/proc/self/status` (Linux); zeros elsewhere.
fn process_memory() -> ProcessMemory {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return ProcessMemory::default();
    };
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |v| v * 1024)
    };
    ProcessMemory {
        rss: kib("VmRSS:"),
        peak_rss: kib("VmHWM:"),
        virtual_size: kib("VmSize:"),
    }
}

/// Resident set size in bytes (0 where unknown).
pub fn resident_bytes() -> u64 {
    process_memory().rss
}

/// (live tasks, worker threads) of the current tokio runtime.
fn runtime_figures() -> (usize, usize) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let m = handle.metrics();
            (m.num_alive_tasks(), m.num_workers())
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::breaker::Breakers;

    fn open(breakers: &Breakers, cause: &str) {
        for _ in 0..5 {
            let admission = breakers.image.admit().unwrap();
            breakers.image.failed(admission, cause);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn openai_is_as_bad_as_its_worst_breaker_and_lists_each() {
        let breakers = Breakers::default();
        let (status, message, details) = openai_outcome(&breakers.snapshot(), "live");
        assert_eq!(status, Status::Healthy);
        assert_eq!(message, "OpenAI circuit breakers closed (healthy)");
        let details = details.unwrap();
        assert_eq!(details["state"], "CLOSED");
        assert_eq!(details["operations"]["chat"]["state"], "CLOSED");
        assert_eq!(details["operations"]["image"]["last_error"], json!(null));

        let admission = breakers.chat.admit().unwrap();
        breakers.chat.succeeded(admission);
        open(&breakers, "OpenAI API error (status 500): boom");
        let (status, message, details) = openai_outcome(&breakers.snapshot(), "live");
        assert_eq!(status, Status::Unhealthy);
        assert_eq!(message, "OpenAI circuit breaker open (failing): image");
        let details = details.unwrap();
        assert_eq!(details["state"], "OPEN");
        assert_eq!(
            (&details["failures"], &details["successes"]),
            (&json!(5), &json!(1))
        );
        assert!(details["last_failure"].is_string());
        let image = &details["operations"]["image"];
        assert_eq!(image["state"], "OPEN");
        assert_eq!(image["consecutive_failures"], 5);
        assert_eq!(image["last_error"], "OpenAI API error (status 500): boom");
        assert_eq!(details["operations"]["chat"]["state"], "CLOSED");
        assert_eq!(details["operations"]["chat"]["successes"], 1);

        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        let (status, message, details) = openai_outcome(&breakers.snapshot(), "live");
        assert_eq!(status, Status::Degraded);
        assert_eq!(
            message,
            "OpenAI circuit breaker half-open (recovering): image"
        );
        assert_eq!(
            details.unwrap()["operations"]["image"]["state"],
            "HALF_OPEN"
        );
    }

    #[test]
    fn process_memory_is_read() {
        let mem = process_memory();
        assert!(mem.rss > 0 && mem.peak_rss >= mem.rss && mem.virtual_size >= mem.rss);
    }

    #[test]
    fn unwritable_data_dir_is_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let (status, message, _) = filesystem(&file, Ok(()));
        assert_eq!(status, Status::Unhealthy);
        assert!(message.contains("not writable"));
        assert_eq!(filesystem(dir.path(), Ok(())).0, Status::Healthy);
        let (status, message, _) = filesystem(dir.path(), Err("read-only".into()));
        assert_eq!(status, Status::Unhealthy);
        assert_eq!(message, "Artifact store not writable: read-only");
    }
}
