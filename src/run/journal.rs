//! The run journal: every run from its start to its end, for a shutdown that loses no paid
//! work.
//!
//! In memory it tracks each live run and whether it has sent its image request (the paid
//! call), so a drain knows what it waits for and can say how many runs finished, were put
//! back in the queue, or were lost.
//!
//! On disk (`<data>/queue/<job>.json`, each written atomically) it holds the `/dalle` runs
//! that have not finished: a run is journaled when it is admitted, marked once its image
//! request is sent, and removed when it completes or fails. A run stopped by a drain before
//! its image request keeps its entry. At the next start every unmarked entry is resumed, in
//! arrival order, so queued runs survive both a graceful stop and `kill -9`. A marked entry
//! found at start belongs to a run whose process died after its image request was sent: its
//! outcome is unknown and may have been billed, so it is dropped, never repeated.
//!
//! `/v1` runs are tracked but not journaled: their caller waits for the answer and writes the
//! record, so a resumed run would pay for an image nobody records. A drain answers them
//! `shutting_down` (503, `Retry-After`) instead, and the caller retries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::progress::RunKey;

/// Seconds a client refused during a drain is told to wait (`Retry-After`): a restart, or
/// another replica, answers by then.
pub const DRAIN_RETRY_AFTER_SECS: u64 = 10;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One journaled run, as stored in `<data>/queue/<job>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub series: String,
    pub subject: String,
    /// The request that started the run, so the resumed run's log lines can be traced back.
    pub request_id: String,
    /// Milliseconds since the epoch when the run was first admitted: the resume order.
    pub queued_at_ms: u64,
    /// Tie-breaker for runs admitted in the same millisecond.
    #[serde(default)]
    pub seq: u64,
    /// The enhanced prompt, when the chat model already wrote one (a resumed run reuses it
    /// instead of paying for it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    /// The image request was sent: after a crash this run is not resumed.
    #[serde(default)]
    pub image_requested: bool,
    /// The API key that started the run: a resumed run is charged to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Where a live run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Queued, or working before its image request.
    BeforeImage,
    /// Its image request has been sent: a drain waits for it.
    ImageRequested,
}

#[derive(Debug)]
struct Live {
    stage: Stage,
    durable: bool,
}

/// How a run ended, as the journal counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Completed,
    Failed,
    /// Stopped by a drain before its image request.
    Stopped,
}

/// What a drain did, for its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Runs that completed (their files written) while the server drained.
    pub finished: usize,
    /// Runs that failed while the server drained.
    pub failed: usize,
    /// `/dalle` runs put back in the durable queue; the next start resumes them.
    pub requeued: usize,
    /// `/v1` runs stopped before their image request; their callers were told to retry.
    pub handed_back: usize,
    /// Runs that had sent their image request and were still running at the drain timeout.
    pub lost: usize,
    /// Whether the drain ended because the timeout ran out.
    pub timed_out: bool,
}

impl DrainReport {
    /// Logs the report: one line, every count.
    pub fn log(&self) {
        let Self {
            finished,
            failed,
            requeued,
            handed_back,
            lost,
            timed_out,
        } = *self;
        if lost > 0 {
            tracing::warn!(
                finished,
                failed,
                requeued,
                handed_back,
                lost,
                timed_out,
                "drained: runs whose image request was sent did not finish in time"
            );
        } else {
            tracing::info!(
                finished,
                failed,
                requeued,
                handed_back,
                lost,
                timed_out,
                "drained"
            );
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    finished: AtomicUsize,
    failed: AtomicUsize,
    requeued: AtomicUsize,
    handed_back: AtomicUsize,
}

/// The run journal (see the module docs).
#[derive(Debug)]
pub struct Journal {
    /// `<data>/queue`; `None` keeps nothing on disk.
    dir: Option<PathBuf>,
    draining: AtomicBool,
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
    idle: Notify,
    tally: Tally,
}

/// What [`Journal::open`] found on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Entries to resume, in arrival order.
    pub pending: Vec<Entry>,
    /// Entries whose image request had been sent when the process died (now removed).
    pub lost: Vec<Entry>,
    /// Files that could not be read or parsed (now removed).
    pub unreadable: usize,
}

impl Journal {
    /// A journal that keeps nothing on disk (tests, and generators built without a data dir).
    pub fn in_memory() -> Journal {
        Journal::with_dir(None)
    }

    fn with_dir(dir: Option<PathBuf>) -> Journal {
        Journal {
            dir,
            draining: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            idle: Notify::new(),
            tally: Tally::default(),
        }
    }

    /// Opens the journal in `dir` (created if missing) and reads what a previous process
    /// left there. Entries whose image request was sent, and unreadable files, are removed.
    pub fn open(dir: PathBuf) -> std::io::Result<(Journal, Recovered)> {
        std::fs::create_dir_all(&dir)?;
        let mut recovered = Recovered::default();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp-") {
                // An interrupted write: the entry it replaced (if any) is still there.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Entry>(&bytes).ok());
            match parsed {
                Some(e) if e.image_requested => {
                    let _ = std::fs::remove_file(&path);
                    recovered.lost.push(e);
                }
                Some(e) => recovered.pending.push(e),
                None => {
                    tracing::warn!(path = %path.display(), "removing an unreadable queue entry");
                    let _ = std::fs::remove_file(&path);
                    recovered.unreadable += 1;
                }
            }
        }
        recovered
            .pending
            .sort_by_key(|e| (e.queued_at_ms, e.seq, e.series.clone(), e.subject.clone()));
        let _ = crate::storage::sync_dir(&dir);
        Ok((Journal::with_dir(Some(dir)), recovered))
    }

    /// Starts a drain: from now on no run starts its image request.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs alive now, and how many of them have sent their image request.
    pub fn live(&self) -> (usize, usize) {
        let live = lock(&self.live);
        let paid = live
            .values()
            .filter(|l| l.stage == Stage::ImageRequested)
            .count();
        (live.len(), paid)
    }

    /// Waits until every live run has ended, or `timeout`; then reports the drain. Runs
    /// still alive at the timeout are counted: durable ones before their image request as
    /// requeued (their entries stay), the others as lost or handed back.
    pub async fn drained(&self, timeout: Duration) -> DrainReport {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut timed_out = false;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so an end in between still wakes us.
            notified.as_mut().enable();
            if lock(&self.live).is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                timed_out = true;
                break;
            }
        }
        let t = &self.tally;
        let mut report = DrainReport {
            finished: t.finished.load(Ordering::SeqCst),
            failed: t.failed.load(Ordering::SeqCst),
            requeued: t.requeued.load(Ordering::SeqCst),
            handed_back: t.handed_back.load(Ordering::SeqCst),
            lost: 0,
            timed_out,
        };
        for live in lock(&self.live).values() {
            match (live.stage, live.durable) {
                (Stage::ImageRequested, _) => report.lost += 1,
                (Stage::BeforeImage, true) => report.requeued += 1,
                (Stage::BeforeImage, false) => report.handed_back += 1,
            }
        }
        report
    }

    /// Admits a new run for `key`; `durable` runs get a queue entry (see [`Ticket::record`]).
    pub fn admit(
        self: &Arc<Self>,
        key: &RunKey,
        durable: bool,
        request_id: &str,
        api_key: Option<&str>,
    ) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        lock(&self.live).insert(
            id,
            Live {
                stage: Stage::BeforeImage,
                durable,
            },
        );
        let queued_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ticket {
            journal: Arc::clone(self),
            id,
            durable: durable && self.dir.is_some(),
            entry: Entry {
                series: key.series.to_string(),
                subject: key.subject.to_string(),
                request_id: request_id.to_string(),
                queued_at_ms,
                seq: id,
                enhanced: None,
                image_requested: false,
                key: api_key.map(str::to_string),
            },
        }
    }

    /// `<dir>/<job>.json` of `series`/`subject`: a hash, since a seed may hold any character.
    fn path(dir: &Path, series: &str, subject: &str) -> PathBuf {
        let digest = Sha256::digest(format!("{series}\n{subject}").as_bytes());
        let job: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("{job}.json"))
    }

    /// Removes the entry of a run that will not be resumed (its image is already there).
    pub fn discard(&self, entry: &Entry) {
        if let Some(dir) = &self.dir {
            remove(&Journal::path(dir, &entry.series, &entry.subject));
        }
    }

    fn set_stage(&self, id: u64, stage: Stage) {
        if let Some(live) = lock(&self.live).get_mut(&id) {
            live.stage = stage;
        }
    }
}

/// Removes an entry. The directory is not synced: an unlink lost to a power cut only brings
/// back the entry of a run that completed, and the resume skips a run whose image is stored.
fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(path = %path.display(), %err, "cannot remove a queue entry"),
    }
}

/// A live run's place in the journal; dropping it (however the run ends) forgets the run.
#[derive(Debug)]
pub struct Ticket {
    journal: Arc<Journal>,
    id: u64,
    durable: bool,
    entry: Entry,
}

impl Ticket {
    /// Writes the run's queue entry (on the blocking pool). A failed write is logged and the
    /// run goes on, not durable: the journal must never cost a run.
    pub async fn record(&mut self) {
        if !self.durable {
            return;
        }
        if let Err(err) = self.write().await {
            tracing::warn!(%err, "cannot journal the run; it will not survive a restart");
            self.durable = false;
            if let Some(live) = lock(&self.journal.live).get_mut(&self.id) {
                live.durable = false;
            }
        }
    }

    /// Keeps `enhanced` for a resumed run, so the chat model is not paid twice.
    pub fn set_enhanced(&mut self, enhanced: String) {
        self.entry.enhanced = Some(enhanced);
    }

    /// Called just before the image request. `false` when the server is draining: the run
    /// must stop there (its entry, updated with what it learnt, is kept for the next start).
    /// Otherwise the run counts as paid from here on; with `mark`, its entry says so, so a
    /// crash from here on never repeats the request.
    pub async fn before_image_request(&mut self, mark: bool) -> bool {
        // Set before looking at the flag, so a drain that starts in between waits for us.
        self.journal.set_stage(self.id, Stage::ImageRequested);
        if self.journal.is_draining() {
            self.journal.set_stage(self.id, Stage::BeforeImage);
            if self.durable && self.entry.enhanced.is_some() {
                let _ = self.write().await;
            }
            return false;
        }
        if mark && self.durable {
            self.entry.image_requested = true;
            if let Err(err) = self.write().await {
                tracing::warn!(%err, "cannot mark the queue entry; a crash now would resume it");
            }
        }
        true
    }

    /// Ends the run: its entry is removed unless a drain stopped it (then it is resumed at
    /// the next start). During a drain the end is counted in the drain's report.
    pub async fn end(self, end: End) {
        let journal = &self.journal;
        if journal.is_draining() {
            let counter = match (end, self.durable) {
                (End::Completed, _) => &journal.tally.finished,
                (End::Failed, _) => &journal.tally.failed,
                (End::Stopped, true) => &journal.tally.requeued,
                (End::Stopped, false) => &journal.tally.handed_back,
            };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        if end != End::Stopped
            && self.durable
            && let Some(dir) = &journal.dir
        {
            let path = Journal::path(dir, &self.entry.series, &self.entry.subject);
            let _ = tokio::task::spawn_blocking(move || remove(&path)).await;
        }
    }

    async fn write(&self) -> std::io::Result<()> {
        let Some(dir) = &self.journal.dir else {
            return Ok(());
        };
        let path = Journal::path(dir, &self.entry.series, &self.entry.subject);
        let bytes = serde_json::to_vec_pretty(&self.entry).map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(move || crate::storage::write_atomic(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut live = lock(&self.journal.live);
        live.remove(&self.id);
        if live.is_empty() {
            self.journal.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Seed, SeriesName};

    fn key(n: u8) -> RunKey {
        RunKey::new(SeriesName::normalize("simple"), Seed::new(format!("s{n}")))
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn entries_live_from_admission_to_the_end_and_survive_a_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (journal, found) = Journal::open(dir.clone()).unwrap();
        assert!(found.pending.is_empty());
        let journal = Arc::new(journal);
        let mut done = journal.admit(&key(1), true, "r1", None);
        done.record().await;
        let mut stopped = journal.admit(&key(2), true, "r2", Some("ci"));
        stopped.record().await;
        let mut paid = journal.admit(&key(3), true, "r3", None);
        paid.record().await;
        assert_eq!(files(&dir).len(), 3);
        assert!(paid.before_image_request(true).await);
        done.end(End::Completed).await;
        journal.begin_drain();
        stopped.set_enhanced("an enhanced prompt".into());
        assert!(!stopped.before_image_request(true).await);
        stopped.end(End::Stopped).await;
        assert_eq!(files(&dir).len(), 2, "the stopped run and the paid one");
        let report = journal.drained(Duration::from_millis(50)).await;
        assert_eq!(
            (report.requeued, report.lost, report.timed_out),
            (1, 1, true)
        );
        drop(paid); // kill -9: the paid run's entry stays, marked

        let (_, found) = Journal::open(dir.clone()).unwrap();
        assert_eq!(found.pending.len(), 1);
        assert_eq!(found.pending[0].subject, "s2");
        assert_eq!(
            found.pending[0].enhanced.as_deref(),
            Some("an enhanced prompt")
        );
        assert_eq!(
            found.pending[0].key.as_deref(),
            Some("ci"),
            "a resumed run is charged to the key that started it"
        );
        assert_eq!(
            found.lost.len(),
            1,
            "a sent image request is never repeated"
        );
        assert_eq!(found.lost[0].subject, "s3");
        assert_eq!(files(&dir).len(), 1, "the lost entry is removed");
    }

    #[tokio::test]
    async fn a_drain_waits_for_live_runs_and_counts_them() {
        let journal = Arc::new(Journal::in_memory());
        let mut paid = journal.admit(&key(1), true, "r1", None);
        assert!(paid.before_image_request(false).await);
        let queued = journal.admit(&key(2), false, "r2", None);
        journal.begin_drain();
        assert_eq!(journal.live(), (2, 1));
        let waiter = {
            let journal = journal.clone();
            tokio::spawn(async move { journal.drained(Duration::from_secs(30)).await })
        };
        queued.end(End::Stopped).await;
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the paid run is still alive");
        paid.end(End::Completed).await;
        let report = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            report,
            DrainReport {
                finished: 1,
                handed_back: 1,
                ..DrainReport::default()
            }
        );
    }

    #[test]
    fn resume_order_is_arrival_order_and_junk_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        for (i, at) in [(1u64, 300u64), (2, 100), (3, 200)] {
            let entry = Entry {
                series: "simple".into(),
                subject: format!("s{i}"),
                request_id: String::new(),
                queued_at_ms: at,
                seq: 0,
                enhanced: None,
                image_requested: false,
                key: None,
            };
            let path = Journal::path(&dir, &entry.series, &entry.subject);
            std::fs::write(path, serde_json::to_vec(&entry).unwrap()).unwrap();
        }
        std::fs::write(dir.join("torn.json"), b"{\"series\":").unwrap();
        std::fs::write(dir.join(".tmp-abc"), b"x").unwrap();
        let (_, found) = Journal::open(dir.clone()).unwrap();
        let order: Vec<_> = found.pending.iter().map(|e| e.subject.as_str()).collect();
        assert_eq!(order, ["s2", "s3", "s1"]);
        assert_eq!(found.unreadable, 1);
        assert_eq!(files(&dir).len(), 3);
    }
}
