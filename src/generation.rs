//! The generator behind `/dalle`: decides what a request means (CONTRACT §4 decision table),
//! coalesces duplicate requests onto one run per key, queues runs beyond the concurrency
//! limit and drives the pipeline on a tokio task.

mod locks;
mod pipeline;
pub mod status;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, watch};

use crate::attributes::Attributes;
use crate::attributes::dress::DalleDress;
use crate::metrics::Metrics;
use crate::openai::OpenAiClient;
use crate::progress::{Progress, RunKey, Snapshot, StartOutcome};
use crate::storage::{CachedFile, DataDir, FileCache};
pub use locks::{LockTable, Token};

/// Where images come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// The deterministic local picture (no key, or `TB_DALLE_SKIP_IMAGE=1`).
    Mock,
    /// OpenAI (or any compatible server).
    OpenAi(Arc<OpenAiClient>),
}

/// What a run should do.
#[derive(Debug, Clone, Default)]
pub struct JobOptions {
    /// Legacy `/dalle` runs also write the prompt sidecars and the selector JSON.
    pub legacy: bool,
    pub enhance: bool,
    pub image: bool,
    pub annotate: bool,
    pub backstyle: Option<String>,
    /// An enhanced prompt to reuse instead of calling the chat model again.
    pub enhanced: Option<String>,
}

impl JobOptions {
    /// The `/dalle` run: enhance when possible, image, caption, sidecars.
    pub fn legacy() -> JobOptions {
        JobOptions {
            legacy: true,
            enhance: true,
            image: true,
            annotate: true,
            ..JobOptions::default()
        }
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub dress: DalleDress,
    pub prompts: crate::prompts::Prompts,
    pub enhanced: String,
    /// True when `enhanced` came from the chat model (now or reused), not the base prompt.
    pub enhanced_ran: bool,
    /// The technical prompt followed by the enhanced one: what the image request sends.
    pub technical: String,
    pub generated: Option<PathBuf>,
    pub annotated: Option<PathBuf>,
}

/// How a run ended, for callers that wait for it.
pub type RunResult = Result<Arc<RunOutput>, String>;

/// Everything the generator needs, shared with its tasks.
#[derive(Debug)]
pub struct Generator {
    pub(crate) attributes: Arc<Attributes>,
    pub(crate) data: DataDir,
    pub(crate) progress: Arc<Progress>,
    pub(crate) source: ImageSource,
    pub(crate) no_enhance: bool,
    pub(crate) metrics: Arc<Metrics>,
    locks: Mutex<LockTable>,
    /// Per-key write gates: a run checks its ownership and writes a file while holding its
    /// key's gate, so a run that lost its lock can never write after the new owner started.
    gates: Mutex<HashMap<RunKey, Arc<Mutex<()>>>>,
    slots: Arc<Semaphore>,
    /// Decoding, captioning and encoding images: one job per core. More at once is no faster,
    /// and 50 runs whose images arrive together would hold ~17 MB of pixels each.
    pub(crate) image_slots: Semaphore,
    queue: Mutex<VecDeque<RunKey>>,
    /// The outcome channel of every run in flight, for callers that wait (the `/v1` API).
    running: Mutex<HashMap<RunKey, watch::Receiver<Option<RunResult>>>>,
}

/// What a `/dalle` request resolved to.
#[derive(Debug)]
pub enum Outcome {
    /// Serve this PNG, already in the file cache and unchanged on disk.
    Cached(CachedFile),
    /// Serve this PNG (not cached yet: read it).
    Png(PathBuf),
    /// Answer with this progress snapshot.
    Snapshot(Box<Snapshot>),
    /// Answer with this progress snapshot, already JSON ([`Progress::poll`]).
    Progress(Vec<u8>),
    /// `data: {}`.
    Empty,
    /// The image was removed; the text names it relative to the output dir.
    Removed(String),
}

/// The parsed flags of a `/dalle` request.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    pub generate: bool,
    pub remove: bool,
}

/// Settings the generator takes from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub lock_ttl: std::time::Duration,
    pub max_concurrent: usize,
    pub no_enhance: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Generator {
    /// A generator over the given components.
    pub fn new(
        attributes: Arc<Attributes>,
        data: DataDir,
        progress: Arc<Progress>,
        source: ImageSource,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Generator {
        Generator {
            attributes,
            data,
            progress,
            source,
            no_enhance: settings.no_enhance,
            metrics,
            locks: Mutex::new(LockTable::new(settings.lock_ttl)),
            gates: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            image_slots: Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ),
            queue: Mutex::new(VecDeque::new()),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// `<data>/output/<series>/annotated/<address>.png`.
    pub fn annotated_path(&self, key: &RunKey) -> PathBuf {
        self.artifact_path(key, "annotated", "png")
    }

    /// `<data>/output/<series>/<kind>/<address>.<ext>`, built in one allocation (every plain
    /// GET builds one).
    pub(crate) fn artifact_path(&self, key: &RunKey, kind: &str, ext: &str) -> PathBuf {
        let stem = crate::attributes::selection::valid_filename(&key.address);
        let root = self.data.root().as_os_str();
        // "output", four separators and the dot fit in the 16 spare bytes.
        let len = root.len() + key.series.len() + kind.len() + stem.len() + ext.len() + 16;
        let mut path = PathBuf::with_capacity(len);
        path.push(root);
        path.push("output");
        path.push(&key.series);
        path.push(kind);
        path.push(&*stem);
        path.as_mut_os_string().push(".");
        path.as_mut_os_string().push(ext);
        path
    }

    /// The `/dalle` decision table, the only copy of it: what one request means given the
    /// image on disk and the run registry.
    ///
    /// | image | run | plain GET | `?generate=1` | `?remove` |
    /// |---|---|---|---|---|
    /// | any | in flight | its snapshot | its snapshot (joins it) | its snapshot |
    /// | present | — | the PNG | a cache-hit snapshot | removes the image |
    /// | absent | failed | its snapshot | its snapshot (no retry) | forgets the run |
    /// | absent | none or completed | `{}` | starts a run | `{}` |
    pub async fn handle(
        self: &Arc<Self>,
        key: RunKey,
        flags: Flags,
        request_id: &str,
        cache: &FileCache,
    ) -> Outcome {
        // A run in flight answers its snapshot whatever is on disk, so a poll (the most
        // frequent request) needs no file-system call. Otherwise one stat of a local file,
        // answered from the kernel's inode cache: done inline, as a trip to the blocking pool
        // costs more than the call. An unchanged cached image is answered from memory.
        if !self.is_in_flight(&key) {
            let png = self.annotated_path(&key);
            let found = match cache.fresh(&png) {
                Ok(Some(file)) => Some(Outcome::Cached(file)),
                Ok(None) => Some(Outcome::Png(png.clone())),
                Err(_) => None,
            };
            if let Some(found) = found {
                if flags.remove {
                    cache.forget(&png);
                    return self.remove(&key, png).await;
                }
                if flags.generate {
                    return Outcome::Snapshot(Box::new(self.cache_hit(&key, request_id)));
                }
                return found;
            }
        }
        match self.progress.poll(&key) {
            Some(polled) if !polled.done => Outcome::Progress(polled.json),
            // A failed run stays visible until it is removed; polling never retries it.
            Some(polled) if polled.failed => {
                if flags.remove {
                    self.progress.forget(&key);
                    Outcome::Empty
                } else {
                    Outcome::Progress(polled.json)
                }
            }
            // Completed but the file is gone (removed behind our back): as if there were no run.
            _ if flags.generate && !flags.remove => {
                Outcome::Snapshot(Box::new(self.start(key, request_id)))
            }
            _ => Outcome::Empty,
        }
    }

    fn is_in_flight(&self, key: &RunKey) -> bool {
        self.progress.is_in_flight(key) && lock(&self.locks).is_held(key)
    }

    /// Registers a cache-hit run (no regeneration) and returns its snapshot.
    fn cache_hit(&self, key: &RunKey, request_id: &str) -> Snapshot {
        self.metrics.cache_hits.inc();
        if let StartOutcome::Started = self.progress.start(key, request_id)
            && let Ok((dress, _)) = self.attributes.dress(&key.address, &key.series, None)
        {
            self.progress.set_dress(key, dress);
        }
        self.progress.complete_cache_hit(key);
        self.progress
            .snapshot(key)
            .unwrap_or_else(|| Snapshot::empty(key))
    }

    async fn remove(&self, key: &RunKey, png: PathBuf) -> Outcome {
        let removed = tokio::task::spawn_blocking(move || {
            std::fs::remove_file(&png)
                .and_then(|()| png.parent().map_or(Ok(()), crate::storage::sync_dir))
        })
        .await;
        let ok = matches!(removed, Ok(Ok(())));
        self.metrics.record_file_op(ok);
        self.progress.forget(key);
        Outcome::Removed(format!(
            "{}/annotated/{}.png",
            key.series,
            crate::attributes::selection::valid_filename(&key.address)
        ))
    }

    /// Starts a legacy `/dalle` run for `key` unless one is in flight (then its snapshot is
    /// the answer).
    pub fn start(self: &Arc<Self>, key: RunKey, request_id: &str) -> Snapshot {
        self.start_job(key, JobOptions::legacy(), request_id).0
    }

    /// Starts a run (or joins the one in flight for `key`) and returns its first snapshot and
    /// a channel that receives the outcome; `true` when a new run was started.
    pub fn start_job(
        self: &Arc<Self>,
        key: RunKey,
        options: JobOptions,
        request_id: &str,
    ) -> (Snapshot, watch::Receiver<Option<RunResult>>, bool) {
        let (token, outcome) = {
            let mut locks = lock(&self.locks);
            let Some(token) = locks.try_acquire(&key) else {
                drop(locks);
                let snapshot = self
                    .progress
                    .snapshot(&key)
                    .unwrap_or_else(|| Snapshot::empty(&key));
                let outcome = lock(&self.running)
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| watch::channel(None).1);
                return (snapshot, outcome, false);
            };
            // Under the lock table's mutex, so a stale run cannot update progress in between.
            self.progress.restart(&key, request_id);
            let (tx, rx) = watch::channel(None);
            lock(&self.running).insert(key.clone(), rx.clone());
            ((token, tx), rx)
        };
        let snapshot = self
            .progress
            .snapshot(&key)
            .unwrap_or_else(|| Snapshot::empty(&key));
        let this = Arc::clone(self);
        let request_id = request_id.to_string();
        tokio::spawn(async move { this.run(key, token, options, request_id).await });
        (snapshot, outcome, true)
    }

    async fn run(
        self: Arc<Self>,
        key: RunKey,
        (token, outcome): (Token, watch::Sender<Option<RunResult>>),
        options: JobOptions,
        request_id: String,
    ) {
        let span = tracing::info_span!("generation", request_id = %request_id, series = %key.series, address = %key.address);
        let _permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.enqueue(&key);
                let permit = self.slots.clone().acquire_owned().await;
                self.dequeue(&key);
                match permit {
                    Ok(permit) => permit,
                    // The semaphore is never closed; answer waiters anyway.
                    Err(_) => {
                        outcome.send_replace(Some(Err("generation slots closed".into())));
                        return;
                    }
                }
            }
        };
        self.metrics.generations_in_flight.inc();
        let result = tracing::Instrument::instrument(
            pipeline::run(&self, &key, token, &options),
            span.clone(),
        )
        .await;
        self.metrics.generations_in_flight.dec();
        let _enter = span.enter();
        let reported = match result {
            Ok(output) => {
                self.metrics
                    .generations
                    .with_label_values(&["completed"])
                    .inc();
                tracing::info!("generation completed");
                Ok(Arc::new(output))
            }
            Err(pipeline::Error::Superseded) => {
                tracing::warn!("lock taken over after its TTL; this run stopped");
                Err(pipeline::Error::Superseded.to_string())
            }
            Err(err) => {
                self.metrics
                    .generations
                    .with_label_values(&["failed"])
                    .inc();
                self.metrics.record_error("GENERATION_ERROR", "dalle");
                tracing::error!(error = %err, "generation failed");
                let _ = self.guarded(&key, token, |p| p.fail(&key, err.to_string()));
                Err(err.to_string())
            }
        };
        {
            let mut locks = lock(&self.locks);
            if locks.owns(&key, token) {
                lock(&self.running).remove(&key);
            }
            locks.release(&key, token);
        }
        outcome.send_replace(Some(reported));
        self.drop_gate(&key);
    }

    fn enqueue(&self, key: &RunKey) {
        let mut queue = lock(&self.queue);
        queue.push_back(key.clone());
        self.publish_positions(&queue);
    }

    fn dequeue(&self, key: &RunKey) {
        let mut queue = lock(&self.queue);
        queue.retain(|k| k != key);
        self.progress.set_queue_position(key, None);
        self.publish_positions(&queue);
    }

    fn publish_positions(&self, queue: &VecDeque<RunKey>) {
        for (i, k) in queue.iter().enumerate() {
            self.progress.set_queue_position(k, Some(i + 1));
        }
    }

    /// Runs `f` on the progress registry only while `token` still owns `key`.
    pub(crate) fn guarded(
        &self,
        key: &RunKey,
        token: Token,
        f: impl FnOnce(&Progress),
    ) -> Result<(), pipeline::Error> {
        let locks = lock(&self.locks);
        if !locks.owns(key, token) {
            return Err(pipeline::Error::Superseded);
        }
        f(&self.progress);
        Ok(())
    }

    /// The write gate of `key`.
    pub(crate) fn gate(&self, key: &RunKey) -> Arc<Mutex<()>> {
        lock(&self.gates).entry(key.clone()).or_default().clone()
    }

    fn drop_gate(&self, key: &RunKey) {
        let mut gates = lock(&self.gates);
        if gates.get(key).is_some_and(|g| Arc::strong_count(g) == 1) {
            gates.remove(key);
        }
    }

    /// Ownership check for a write (called with the key's gate held).
    pub(crate) fn owns(&self, key: &RunKey, token: Token) -> bool {
        lock(&self.locks).owns(key, token)
    }
}
