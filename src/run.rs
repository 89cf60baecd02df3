//! The run core behind `/dalle` and `/v1`: decides what a `/dalle` request means (the decision
//! table in [`Generator::handle`]),
//! coalesces duplicate requests onto one run per key, queues runs beyond the concurrency
//! limit and drives the pipeline on a tokio task.

pub mod coordination;
pub mod journal;
mod locks;
mod pipeline;
pub mod status;
pub mod store;
mod trace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, watch};

use crate::attributes::Attributes;
use crate::attributes::dress::DalleDress;
use crate::auth::Caller;
use crate::budget::{self, Budget, Exhausted, Micros, Prices, Reservation};
use crate::domain::SeriesName;
use crate::limits::{Limited, RateLimiter};
use crate::metrics::Metrics;
use crate::openai::OpenAiClient;
use crate::openai::retry;
use crate::progress::{Progress, RunKey, Snapshot, StartOutcome};
use crate::storage::{CachedFile, FileCache};
pub use coordination::{
    HeldLease, Leases, LocalLeases, LocalQueue, QUEUE_FULL_RETRY_AFTER, QueueFull, RunQueue,
    RunRegistry,
};
pub use journal::Journal;
pub use locks::{LockTable, Token};
pub use store::{ArtifactStore, DiskStore, Lookup};

/// Where images come from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// The deterministic local picture (no key, or `TB_DALLE_SKIP_IMAGE=1`).
    Mock,
    /// OpenAI (or any compatible server).
    OpenAi(Arc<OpenAiClient>),
}

/// The annotated PNG's `(kind, extension)`: the file whose presence means a run is done.
pub const ANNOTATED: (&str, &str) = ("annotated", "png");

/// One kind of file a run writes, under `<data>/output/<series>/<kind>/<subject>.<ext>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// The base prompts: `data`, `title`, `terse` and `prompt` texts.
    PromptTexts,
    /// The `enhanced` prompt and the `technical` prompt the image request sends.
    EnhancedTexts,
    /// The image as the provider returned it (as PNG).
    Generated,
    /// The final DalleDress as JSON.
    Selector,
    /// The captioned PNG. Written last: its presence is what tells `/dalle` a run is done.
    Annotated,
}

impl Artifact {
    /// Every artifact, in the order a run writes them.
    pub const ALL: [Artifact; 5] = [
        Artifact::PromptTexts,
        Artifact::EnhancedTexts,
        Artifact::Generated,
        Artifact::Selector,
        Artifact::Annotated,
    ];

    /// The `(kind, extension)` of each file this artifact is made of.
    pub fn files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Artifact::PromptTexts => &[
                ("data", "txt"),
                ("title", "txt"),
                ("terse", "txt"),
                ("prompt", "txt"),
            ],
            Artifact::EnhancedTexts => &[("enhanced", "txt"), ("technical", "txt")],
            // The provenance record goes with the image it describes.
            Artifact::Generated => &[("generated", "png"), ("provenance", "json")],
            Artifact::Selector => &[("selector", "json")],
            Artifact::Annotated => &[("annotated", "png")],
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The set of artifacts a job writes: what a run makes is data, not a mode flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Artifacts(u8);

impl Artifacts {
    /// Prompts only (a `/v1` preview or a run without an image).
    pub const NONE: Artifacts = Artifacts(0);
    /// Everything: the `/dalle` run.
    pub const ALL: Artifacts = Artifacts(0b1_1111);

    /// This set plus `artifact`.
    pub const fn with(self, artifact: Artifact) -> Artifacts {
        Artifacts(self.0 | artifact.bit())
    }

    /// Whether the set holds `artifact`.
    pub const fn contains(self, artifact: Artifact) -> bool {
        self.0 & artifact.bit() != 0
    }

    /// Whether every artifact of `other` is in this set too.
    pub const fn covers(self, other: Artifacts) -> bool {
        self.0 & other.0 == other.0
    }

    /// The artifacts in the set, in writing order.
    pub fn iter(self) -> impl Iterator<Item = Artifact> {
        Artifact::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// What a run should do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// The files the run writes; an image is requested only when `Generated` is among them.
    pub artifacts: Artifacts,
    /// Ask the chat model to enhance the prompt (when a key and an author are there).
    pub enhance: bool,
    pub backstyle: Option<String>,
    /// An enhanced prompt to reuse instead of calling the chat model again.
    pub enhanced: Option<String>,
}

impl JobOptions {
    /// The `/dalle` run: enhance when possible, image, caption, every sidecar.
    pub fn dalle() -> JobOptions {
        JobOptions {
            artifacts: Artifacts::ALL,
            enhance: true,
            ..JobOptions::default()
        }
    }

    /// Whether a run made with these options also answers a request for `wanted`: it writes
    /// at least the same files, enhances if asked, with the same background style.
    pub fn satisfies(&self, wanted: &JobOptions) -> bool {
        self.artifacts.covers(wanted.artifacts)
            && (self.enhance || !wanted.enhance)
            && self.backstyle == wanted.backstyle
            && (wanted.enhanced.is_none() || self.enhanced == wanted.enhanced)
    }

    /// Whether the run is whole without its caller: a `/dalle` run writes every artifact and
    /// nobody waits for it (a `/v1` caller writes the record). Only these are journaled to be
    /// resumed after a restart.
    pub fn is_detached(&self) -> bool {
        self.artifacts == Artifacts::ALL
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
    /// The stored names (`<series>/<kind>/<subject>.<ext>`) of the raw and captioned images.
    pub generated: Option<String>,
    pub annotated: Option<String>,
}

/// A run in flight: the channel its outcome arrives on, and the options it runs with.
type InFlight = (watch::Receiver<Option<RunResult>>, JobOptions);

/// How a run ended, for callers that wait for it.
pub type RunResult = Result<Arc<RunOutput>, Arc<RunError>>;
pub use pipeline::RunError;

/// The coordination and storage a generator runs on (see [`coordination`] and [`store`]).
#[derive(Debug, Clone)]
pub struct Backends {
    pub registry: Arc<dyn RunRegistry>,
    pub leases: Arc<dyn Leases>,
    pub queue: Arc<dyn RunQueue>,
    pub store: Arc<dyn ArtifactStore>,
}

impl Backends {
    /// Everything in this process and on the local disk: leases and the queue in memory,
    /// artifacts under `output` read through `cache`, runs registered with `progress`.
    pub fn local(
        settings: &Settings,
        output: PathBuf,
        cache: Arc<FileCache>,
        progress: Arc<Progress>,
    ) -> Backends {
        let registry: Arc<dyn RunRegistry> = progress;
        Backends {
            registry,
            leases: Arc::new(LocalLeases::new(settings.lock_ttl)),
            queue: Arc::new(LocalQueue::new(settings.max_concurrent, settings.max_queue)),
            store: Arc::new(DiskStore::new(output, cache)),
        }
    }
}

/// Everything the generator needs, shared with its tasks.
#[derive(Debug)]
pub struct Generator {
    pub(crate) attributes: Arc<Attributes>,
    /// The run registry polls read (see [`RunRegistry`]).
    pub(crate) progress: Arc<dyn RunRegistry>,
    pub(crate) source: ImageSource,
    pub(crate) no_enhance: bool,
    pub(crate) metrics: Arc<Metrics>,
    leases: Arc<dyn Leases>,
    queue: Arc<dyn RunQueue>,
    pub(crate) store: Arc<dyn ArtifactStore>,
    /// Per-key write gates: a run checks its ownership and writes a file while holding its
    /// key's gate, so a run that lost its lease can never write after the new owner started.
    gates: Mutex<HashMap<RunKey, Arc<Mutex<()>>>>,
    /// Decoding, captioning and encoding images: one job per core. More at once is no faster,
    /// and 50 runs whose images arrive together would hold ~17 MB of pixels each.
    pub(crate) image_slots: Semaphore,
    /// The outcome channel and options of every run of this process not finished yet,
    /// queued or working: one per key. This, not the lease, is what coalesces requests onto
    /// one run (a queued run holds no lease), for callers that wait (the `/v1` API) and for
    /// deciding whether a caller can join a run.
    running: Mutex<HashMap<RunKey, InFlight>>,
    /// Every live run, for a drain that loses no paid work, and the durable queue of
    /// `/dalle` runs a restart resumes ([`journal`]).
    pub(crate) journal: Arc<Journal>,
    /// The spending caps every new paid run is admitted against, and the image prices.
    pub(crate) budget: Arc<dyn Budget>,
    pub(crate) prices: Prices,
    /// The buckets every new run takes a start from ([`crate::limits`]).
    limiter: Arc<dyn RateLimiter>,
    /// CID → stored names, from the provenance records (for `/cache/{cid}`).
    pub(crate) contents: Arc<crate::provenance::index::ContentIndex>,
}

/// What a new run was admitted with: its place in the queue, and what it reserved of the
/// budget (given back if it ends before its image request).
#[derive(Debug)]
struct Admitted {
    admission: coordination::Admission,
    reservation: Option<Reservation>,
}

/// Why no run was started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The queue is full.
    #[error("{0}")]
    QueueFull(QueueFull),
    /// The run's image would exceed a spending cap.
    #[error("{0}")]
    Budget(Exhausted),
    /// The caller's rate-limit bucket is empty.
    #[error("{0}")]
    RateLimited(Limited),
}

/// What a `/dalle` request resolved to.
#[derive(Debug)]
pub enum Outcome {
    /// Serve this PNG.
    Image(CachedFile),
    /// Answer with this progress snapshot.
    Snapshot(Box<Snapshot>),
    /// Answer with this progress snapshot, already JSON ([`RunRegistry::poll`]).
    Progress(crate::progress::SnapshotJson),
    /// `data: {}`.
    Empty,
    /// The image was removed; the text names it relative to the output dir.
    Removed(String),
    /// No run was started: the queue is full.
    QueueFull(QueueFull),
    /// No run was started: its image would exceed a spending cap.
    BudgetExhausted(Exhausted),
    /// No run was started: the caller started too many lately.
    RateLimited(Limited),
    /// Nothing was started or removed: the request needs a key ([`Caller::authorized`]).
    Unauthorized,
    /// A new run was asked for while the server drains for a shutdown.
    ShuttingDown,
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
    /// Runs allowed to wait for a slot; more are refused ([`QueueFull`]).
    pub max_queue: usize,
    pub no_enhance: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Generator {
    /// A generator over the given components.
    pub fn new(
        attributes: Arc<Attributes>,
        backends: Backends,
        source: ImageSource,
        metrics: Arc<Metrics>,
        settings: Settings,
    ) -> Generator {
        Generator {
            attributes,
            progress: backends.registry,
            source,
            no_enhance: settings.no_enhance,
            metrics,
            leases: backends.leases,
            queue: backends.queue,
            store: backends.store,
            gates: Mutex::new(HashMap::new()),
            image_slots: Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ),
            running: Mutex::new(HashMap::new()),
            budget: Arc::new(budget::LocalBudget::in_memory(
                budget::Caps::default(),
                Arc::new(budget::SystemClock),
            )),
            prices: Prices::built_in(),
            limiter: Arc::new(crate::limits::LocalLimiter::new(
                crate::limits::Limit::Unlimited,
                crate::limits::Limit::Unlimited,
                Arc::new(crate::limits::MonotonicTicker::default()),
            )),
            journal: Arc::new(Journal::in_memory()),
            contents: Arc::default(),
        }
    }

    /// This generator, journaling its runs in `journal` instead of in memory only.
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Generator {
        self.journal = journal;
        self
    }

    /// The run journal: the drain's view of live runs.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Starts the runs a previous process left in the journal, in their arrival order; a run
    /// whose image is already stored (it completed just before a crash) is dropped. Returns
    /// how many were started.
    pub fn resume(self: &Arc<Self>, entries: Vec<journal::Entry>) -> usize {
        let mut started = 0;
        for entry in entries {
            let series = SeriesName::normalize(&entry.series);
            let address = match crate::domain::Address::parse(&entry.subject) {
                Ok(address) if self.attributes.series.contains(series.as_str()) => address,
                _ => {
                    tracing::warn!(series = %entry.series, subject = %entry.subject, "dropping a queued run whose series or address is no longer valid");
                    self.journal.discard(&entry);
                    continue;
                }
            };
            let key = RunKey::new(series, address);
            let (kind, ext) = ANNOTATED;
            if !matches!(self.store.lookup(&key, kind, ext), Lookup::Absent) {
                self.journal.discard(&entry);
                continue;
            }
            let options = JobOptions {
                enhanced: entry.enhanced,
                ..JobOptions::dalle()
            };
            let caller = Caller::Resumed {
                key: entry.key.as_deref().map(Into::into),
            };
            match self.start_job(key, options, &caller, &entry.request_id) {
                Ok((_, _, true)) => started += 1,
                Ok(_) => {}
                // Kept in the journal: the next start tries again.
                Err(refused) => {
                    tracing::warn!(%refused, "a queued run was refused; it waits for the next start")
                }
            }
        }
        started
    }

    /// The `/dalle` decision table, the only copy of it: what one request means given the
    /// image on disk and the run registry.
    ///
    /// | image | run | plain GET | `?generate=1` | `?remove` |
    /// |---|---|---|---|---|
    /// | any | in flight | its snapshot | its snapshot (joins it) | its snapshot |
    /// | present | — | the PNG | a cache-hit snapshot | removes the image |
    /// | absent | failed | its snapshot | its snapshot (no retry) | forgets the run |
    /// | absent | none or completed | `{}` | starts a run (see [`Generator::start_job`]) | `{}` |
    ///
    /// `caller` is asked about only where a run would start or an image be removed, so a
    /// cache hit, a poll and joining a run in flight never need a key or a token.
    pub async fn handle(
        self: &Arc<Self>,
        key: RunKey,
        flags: Flags,
        caller: &Caller,
        request_id: &str,
    ) -> Outcome {
        // Removing changes data whatever is stored, so it needs a key before anything is
        // looked at (an answer must not tell an anonymous caller what exists).
        if flags.remove && !caller.authorized() {
            return Outcome::Unauthorized;
        }
        // A run in flight answers its snapshot whatever is stored, so a poll (the most
        // frequent request) needs no store call. Otherwise one lookup, which the local store
        // answers without blocking (one stat, from the kernel's inode cache: a trip to the
        // blocking pool costs more than the call); an unchanged image comes from memory.
        let in_flight = self.is_in_flight(&key);
        if !in_flight {
            let (kind, ext) = ANNOTATED;
            let found = match self.store.lookup(&key, kind, ext) {
                Lookup::Cached(file) => Some(Some(file)),
                Lookup::Present => Some(None),
                Lookup::Absent => None,
            };
            if let Some(cached) = found {
                if flags.remove {
                    return self.remove(&key).await;
                }
                if flags.generate {
                    return Outcome::Snapshot(Box::new(self.cache_hit(&key, request_id)));
                }
                if let Some(file) = cached {
                    return Outcome::Image(file);
                }
                // Not cached yet: read it once. Removed in between: nothing to show.
                return match self.read_blocking(&key, kind, ext).await {
                    Some(file) => Outcome::Image(file),
                    None => Outcome::Empty,
                };
            }
        }
        match self.progress.poll(&key) {
            Some(polled) if !polled.done => Outcome::Progress(polled.json),
            // A failed run stays visible until it is removed; polling never retries it.
            Some(polled) if polled.failed => {
                if flags.remove {
                    self.clear(&key).await;
                    self.progress.forget(&key);
                    Outcome::Empty
                } else {
                    Outcome::Progress(polled.json)
                }
            }
            // The run completed between the check above and this poll (the store was not
            // asked): its final snapshot is the answer, not `{}` and never a second run.
            Some(polled) if in_flight && !flags.remove => Outcome::Progress(polled.json),
            // A new run needs a key ([`Caller::authorized`]); everything above answers without.
            _ if flags.generate && !flags.remove && !caller.authorized() => Outcome::Unauthorized,
            // A drain starts no new run (it would be lost or stopped at once).
            _ if flags.generate && !flags.remove && self.journal.is_draining() => {
                Outcome::ShuttingDown
            }
            // Completed but the file is gone (removed behind our back): as if there were no run.
            _ if flags.generate && !flags.remove => match self.start(key, caller, request_id) {
                Ok(snapshot) => Outcome::Snapshot(Box::new(snapshot)),
                Err(Refused::QueueFull(full)) => Outcome::QueueFull(full),
                Err(Refused::Budget(exhausted)) => Outcome::BudgetExhausted(exhausted),
                Err(Refused::RateLimited(limited)) => Outcome::RateLimited(limited),
            },
            _ => {
                if flags.remove {
                    self.clear(&key).await;
                }
                Outcome::Empty
            }
        }
    }

    /// Sets the budget runs are admitted against and the prices their images are counted at
    /// (by default: no caps, the built-in prices, in memory).
    pub fn with_budget(mut self, budget: Arc<dyn Budget>, prices: Prices) -> Generator {
        self.budget = budget;
        self.prices = prices;
        self
    }

    /// The budget runs are admitted against.
    pub fn budget(&self) -> &Arc<dyn Budget> {
        &self.budget
    }

    /// Sets the rate limiter new runs take a start from (by default: no limits).
    pub fn with_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Generator {
        self.limiter = limiter;
        self
    }

    /// What a new run with `options` is reserved at: `None` when it pays for nothing (mock
    /// mode, or no image), else the dearest image its model may be asked for.
    pub fn estimate(&self, options: &JobOptions) -> Option<Micros> {
        match &self.source {
            ImageSource::OpenAi(client) if options.artifacts.contains(Artifact::Generated) => {
                Some(self.prices.estimate(client.image_model()))
            }
            _ => None,
        }
    }

    /// Whether the budget would admit a new run with `options` for `caller` now (nothing
    /// is reserved).
    pub fn check_budget(&self, options: &JobOptions, caller: &Caller) -> Result<(), Exhausted> {
        match self.estimate(options) {
            Some(price) => self.budget.check(caller.payer(), price),
            None => Ok(()),
        }
    }

    /// Removes what would block a run of `key` from writing its files (a folder at a file's
    /// name, see [`ArtifactStore::check_writable`]); stored files are kept.
    async fn clear(&self, key: &RunKey) {
        let files: Vec<_> = Artifacts::ALL
            .iter()
            .flat_map(|a| a.files())
            .copied()
            .collect();
        let (store, owned) = (self.store.clone(), key.clone());
        let cleared = tokio::task::spawn_blocking(move || store.clear(&owned, &files)).await;
        if let Ok(Ok(true)) | Ok(Err(_)) = &cleared {
            self.metrics.record_file_op(matches!(cleared, Ok(Ok(_))));
        }
    }

    /// Whether a run of this process for `key` has not finished yet (queued or working).
    fn is_in_flight(&self, key: &RunKey) -> bool {
        lock(&self.running).contains_key(key)
    }

    /// Reads one stored file on the blocking pool.
    async fn read_blocking(
        &self,
        key: &RunKey,
        kind: &'static str,
        ext: &'static str,
    ) -> Option<CachedFile> {
        let (store, key) = (self.store.clone(), key.clone());
        tokio::task::spawn_blocking(move || store.read(&key, kind, ext).ok().flatten())
            .await
            .ok()
            .flatten()
    }

    /// Registers a cache-hit run (no regeneration) and returns its snapshot.
    fn cache_hit(&self, key: &RunKey, request_id: &str) -> Snapshot {
        self.metrics.cache_hits.inc();
        if let StartOutcome::Started = self.progress.start(key, request_id)
            && let Ok((dress, _)) =
                self.attributes
                    .dress(key.subject.as_str(), key.series.as_str(), None)
        {
            self.progress.set_dress(key, dress);
        }
        self.progress.complete_cache_hit(key);
        self.progress
            .snapshot(key)
            .unwrap_or_else(|| Snapshot::empty(key))
    }

    async fn remove(&self, key: &RunKey) -> Outcome {
        let (kind, ext) = ANNOTATED;
        let (store, owned) = (self.store.clone(), key.clone());
        // The record goes with the image it describes (it is written before the image, so a
        // record without an image is only ever a run that has not finished).
        let removed = tokio::task::spawn_blocking(move || {
            let (record_kind, record_ext) = crate::provenance::RECORD_FILE;
            store.remove(&owned, record_kind, record_ext)?;
            store.remove(&owned, kind, ext)
        })
        .await;
        let ok = matches!(removed, Ok(Ok(_)));
        self.metrics.record_file_op(ok);
        self.clear(key).await;
        self.progress.forget(key);
        Outcome::Removed(self.store.name(key, kind, ext))
    }

    /// Starts a legacy `/dalle` run for `key` unless one is in flight (then its snapshot is
    /// the answer); refused as [`Generator::start_job`] says.
    pub fn start(
        self: &Arc<Self>,
        key: RunKey,
        caller: &Caller,
        request_id: &str,
    ) -> Result<Snapshot, Refused> {
        self.start_job(key, JobOptions::dalle(), caller, request_id)
            .map(|(snapshot, _, _)| snapshot)
    }

    /// Starts a run for `caller` (or joins the one in flight for `key`, whatever its
    /// options, which takes nothing) and returns its first snapshot and a channel that
    /// receives the outcome; `true` when a new run was started.
    ///
    /// A new run is admitted here, before any OpenAI call, in this order, each refusal
    /// giving back what the steps before it took: the budget (its image must fit under the
    /// caller's and the server's caps; it reserves its estimated price until its image
    /// request settles it), the queue (refused when full), then the caller's rate-limit
    /// bucket — last, so only a run that does start takes a token.
    ///
    /// A new run takes its place in the queue here but no lease: it takes the lease when its
    /// slot is granted, and holds it for as long as it works ([`Generator::run`]).
    pub fn start_job(
        self: &Arc<Self>,
        key: RunKey,
        options: JobOptions,
        caller: &Caller,
        request_id: &str,
    ) -> Result<(Snapshot, watch::Receiver<Option<RunResult>>, bool), Refused> {
        let (outcome, admission) = {
            let mut running = lock(&self.running);
            match running.get(&key) {
                Some((rx, _)) => (rx.clone(), None),
                None => {
                    let reservation = match self.estimate(&options) {
                        Some(price) => Some(
                            Reservation::take(&self.budget, caller.payer(), price).map_err(
                                |exhausted| {
                                    self.metrics.budget_refusals.inc();
                                    Refused::Budget(exhausted)
                                },
                            )?,
                        ),
                        None => None,
                    };
                    // A refusal here drops the reservation, which gives it back; one by the
                    // limiter drops the place in the queue too.
                    let admission = self.queue.admit(&key).map_err(Refused::QueueFull)?;
                    self.limiter.take(caller).map_err(|limited| {
                        self.metrics.record_rate_limited(limited.scope);
                        Refused::RateLimited(limited)
                    })?;
                    // Under the registry lock, so a joiner sees this run's progress from the
                    // start.
                    self.progress.restart(&key, request_id);
                    let (tx, rx) = watch::channel(None);
                    running.insert(key.clone(), (rx.clone(), options.clone()));
                    (rx, Some((tx, admission, reservation)))
                }
            }
        };
        let Some((tx, admission, reservation)) = admission else {
            return Ok((self.snapshot_of(&key), outcome, false));
        };
        if let Some(place) = admission.place.clone() {
            self.progress.set_queue_place(&key, Some(place));
        }
        let snapshot = self.snapshot_of(&key);
        let this = Arc::clone(self);
        // Admitted before the task is spawned, so a drain starting now already waits for it.
        let ticket = self
            .journal
            .admit(&key, options.is_detached(), request_id, caller.key_name());
        let request_id = request_id.to_string();
        tokio::spawn(async move {
            let admitted = Admitted {
                admission,
                reservation,
            };
            this.run(key, admitted, tx, options, request_id, ticket)
                .await;
        });
        Ok((snapshot, outcome, true))
    }

    fn snapshot_of(&self, key: &RunKey) -> Snapshot {
        self.progress
            .snapshot(key)
            .unwrap_or_else(|| Snapshot::empty(key))
    }

    /// Runs a job for `key` to its end and returns how it ended, for callers that answer only
    /// once the work is done (`/v1`). A run in flight for the key is joined when its options
    /// cover ours; one made with other options is waited for first — two runs for one key never
    /// run side by side — and then ours starts (or joins whichever run got the key meanwhile).
    pub async fn run_to_end(
        self: &Arc<Self>,
        key: RunKey,
        options: JobOptions,
        caller: &Caller,
        request_id: &str,
    ) -> RunResult {
        loop {
            let joinable = lock(&self.running)
                .get(&key)
                .map(|(rx, running)| (rx.clone(), running.satisfies(&options)));
            let (mut outcome, ours) = match joinable {
                Some((rx, true)) => (rx, true),
                Some((rx, false)) => (rx, false),
                None if self.journal.is_draining() => {
                    return Err(Arc::new(RunError::ShuttingDown));
                }
                None => {
                    let started = self.start_job(key.clone(), options.clone(), caller, request_id);
                    match started {
                        Ok((_, rx, true)) => (rx, true),
                        // Lost a race with another start: decide again on what is running now.
                        Ok((_, _, false)) => continue,
                        Err(Refused::QueueFull(full)) => {
                            return Err(Arc::new(RunError::QueueFull(full)));
                        }
                        Err(Refused::Budget(exhausted)) => {
                            return Err(Arc::new(RunError::BudgetExhausted(exhausted)));
                        }
                        Err(Refused::RateLimited(limited)) => {
                            return Err(Arc::new(RunError::RateLimited(limited)));
                        }
                    }
                }
            };
            let ended = outcome
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|r| r.clone());
            match ended {
                // A run that lost its key to another owner made nothing for us: try again.
                Some(Err(err)) if matches!(*err, RunError::Superseded) => {
                    tokio::task::yield_now().await;
                }
                Some(result) if ours => return result,
                // Another job's end (or a dropped channel): try again for ours.
                _ => tokio::task::yield_now().await,
            }
        }
    }

    /// Joins the run in flight for `key`, if any, without starting one: its outcome when its
    /// options cover `wanted`; `None` when there is none, or (after waiting for its end, so
    /// the caller never works alongside it) when it was made with other options.
    pub async fn join_live(&self, key: &RunKey, wanted: &JobOptions) -> Option<RunResult> {
        let (mut outcome, covers) = lock(&self.running)
            .get(key)
            .map(|(rx, running)| (rx.clone(), running.satisfies(wanted)))?;
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        ended.filter(|_| covers)
    }

    /// One run, from its place in the queue to its end: wait for the slot, take the key's
    /// lease, run the pipeline while renewing the lease, then give both up and answer the
    /// waiters.
    async fn run(
        self: Arc<Self>,
        key: RunKey,
        admitted: Admitted,
        outcome: watch::Sender<Option<RunResult>>,
        options: JobOptions,
        request_id: String,
        mut ticket: journal::Ticket,
    ) {
        let Admitted {
            admission,
            reservation,
        } = admitted;
        let span = tracing::info_span!("generation", request_id = %request_id, series = %key.series, subject = %key.subject);
        // Whatever happens to this task, the key is not left registered as running.
        let _registered = Registered {
            generator: &self,
            key: &key,
            outcome: outcome.subscribe(),
        };
        ticket.record().await;
        let slot = admission.turn.await;
        // A drain lets no queued run start: it stays journaled for the next start, and its
        // snapshot stays as it was (the run is not over).
        let draining = self.journal.is_draining();
        let Some(_slot) = slot.filter(|_| !draining) else {
            if draining {
                self.finish(&key, &outcome, Err(Arc::new(RunError::ShuttingDown)));
                ticket.end(journal::End::Stopped).await;
                return;
            }
            // The local queue is never shut down; answer waiters anyway.
            let closed = RunError::Task("generation slots closed".into());
            self.progress.fail(&key, closed.to_string(), closed.code());
            self.finish(&key, &outcome, Err(Arc::new(closed)));
            ticket.end(journal::End::Failed).await;
            return;
        };
        self.progress.set_queue_place(&key, None);
        let lease = Arc::new(HeldLease::new(
            coordination::acquire(&*self.leases, &key).await,
        ));
        self.metrics.generations_in_flight.inc();
        let listener = self.retry_listener(&key, Arc::clone(&lease));
        let work = tracing::Instrument::instrument(
            retry::reporting_retries(
                listener,
                pipeline::run(
                    &self,
                    &key,
                    &lease,
                    &options,
                    &mut ticket,
                    reservation,
                    &request_id,
                ),
            ),
            span.clone(),
        );
        let result = coordination::heartbeat(&*self.leases, &key, &lease, work).await;
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
            Err(RunError::Superseded) => {
                // Only before the image was requested (see `pipeline`): nothing was paid for.
                tracing::warn!(
                    "another owner took the key's lease; this run stopped before its image request"
                );
                Err(Arc::new(RunError::Superseded))
            }
            Err(RunError::ShuttingDown) => {
                // A `/dalle` run stays journaled for the next start; a `/v1` caller retries.
                let resumes_at_start = options.is_detached();
                tracing::info!(
                    resumes_at_start,
                    "stopped before its image request for the shutdown"
                );
                Err(Arc::new(RunError::ShuttingDown))
            }
            Err(err) => {
                self.metrics
                    .generations
                    .with_label_values(&["failed"])
                    .inc();
                self.metrics.record_error("GENERATION_ERROR", "dalle");
                let code = err.code();
                tracing::error!(error = %err, code, "generation failed");
                let _ = self.guarded(&key, lease.token(), |p| {
                    p.fail(&key, err.to_string(), code);
                });
                Err(Arc::new(err))
            }
        };
        self.leases.release(&key, lease.token());
        let end = match &reported {
            Ok(_) => journal::End::Completed,
            Err(err) if matches!(**err, RunError::ShuttingDown) => journal::End::Stopped,
            Err(_) => journal::End::Failed,
        };
        self.finish(&key, &outcome, reported);
        self.drop_gate(&key);
        ticket.end(end).await;
    }

    /// Ends a run for its waiters: it leaves the registry of running keys first, so a waiter
    /// that wakes and tries again finds the key free.
    fn finish(&self, key: &RunKey, outcome: &watch::Sender<Option<RunResult>>, result: RunResult) {
        lock(&self.running).remove(key);
        outcome.send_replace(Some(result));
    }

    /// Takes `key`'s lease again for a run that lost it after its image was requested: it
    /// waits for the other owner rather than drop an image that was paid for.
    pub(crate) async fn reclaim(&self, key: &RunKey, lease: &HeldLease) {
        loop {
            if self.leases.while_owned(key, lease.token(), &mut || {}) {
                return;
            }
            if let Some(token) = self.leases.try_acquire(key) {
                tracing::warn!(%key, "took the key's lease again to keep an image already requested");
                lease.set(token);
                return;
            }
            tokio::time::sleep(coordination::renew_interval(self.leases.ttl())).await;
        }
    }

    /// Tells the run's progress of the retry waits of its OpenAI calls (while it owns `key`).
    fn retry_listener(
        self: &Arc<Self>,
        key: &RunKey,
        lease: Arc<HeldLease>,
    ) -> retry::RetryListener {
        let (this, key) = (Arc::clone(self), key.clone());
        Arc::new(move |wait: Option<&retry::RetryWait>| {
            let wait = wait.map(|w| crate::progress::RetryWait {
                operation: w.operation.label(),
                attempt: w.next_attempt,
                attempts: w.attempts,
                wait: w.wait,
                reason: w.reason.clone(),
            });
            // A run that lost its key stops reporting, like every other progress update.
            let _ = this.guarded(&key, lease.token(), |p| p.set_retrying(&key, wait.as_ref()));
        })
    }

    /// Runs `f` on the progress registry only while `token` still owns `key`.
    pub(crate) fn guarded(
        &self,
        key: &RunKey,
        token: Token,
        f: impl FnOnce(&dyn RunRegistry),
    ) -> Result<(), RunError> {
        let mut f = Some(f);
        let owned = self.leases.while_owned(key, token, &mut || {
            if let Some(f) = f.take() {
                f(&*self.progress);
            }
        });
        if owned {
            Ok(())
        } else {
            Err(RunError::Superseded)
        }
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
        self.leases.while_owned(key, token, &mut || {})
    }
}

/// Removes a run's key from the registry of running keys when the run's task ends in any way
/// (a panic included), so the key never stays "in flight" with nobody working on it; the
/// waiters then see the outcome channel close and decide again.
struct Registered<'a> {
    generator: &'a Generator,
    key: &'a RunKey,
    /// The run's own channel: after `finish`, the key may belong to a newer run.
    outcome: watch::Receiver<Option<RunResult>>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.generator.running);
        if running
            .get(self.key)
            .is_some_and(|(rx, _)| rx.same_channel(&self.outcome))
        {
            running.remove(self.key);
            // Not finished through `finish` (a panic): no poll may keep reading it as live.
            self.generator.progress.fail(
                self.key,
                "the run stopped unexpectedly".into(),
                "internal",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_sets_cover_and_options_satisfy() {
        let image = Artifacts::NONE.with(Artifact::Generated);
        let both = image.with(Artifact::Annotated);
        assert!(Artifacts::ALL.covers(both) && both.covers(image) && !image.covers(both));
        assert_eq!(
            Artifacts::ALL.iter().collect::<Vec<_>>(),
            Artifact::ALL.to_vec()
        );
        let dalle = JobOptions::dalle();
        let wanted = JobOptions {
            artifacts: both,
            enhance: true,
            ..JobOptions::default()
        };
        assert!(dalle.satisfies(&wanted));
        assert!(!wanted.satisfies(&dalle), "fewer files");
        let plain = JobOptions {
            enhance: false,
            ..wanted.clone()
        };
        assert!(wanted.satisfies(&plain) && !plain.satisfies(&wanted));
        let styled = JobOptions {
            backstyle: Some("noir".into()),
            ..wanted.clone()
        };
        assert!(!wanted.satisfies(&styled) && !styled.satisfies(&wanted));
    }
}

#[cfg(test)]
mod lease_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::domain::{Address, SeriesName};

    const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
    const B: &str = "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6";

    fn key(address: &str) -> RunKey {
        RunKey::new(
            SeriesName::normalize("simple"),
            Address::parse(address).unwrap(),
        )
    }

    /// A mock-mode generator over `leases` and a one-slot queue with room for one waiting run;
    /// artifacts under `dir`.
    fn generator(dir: &std::path::Path, leases: Arc<dyn Leases>) -> (Arc<Generator>, Backends) {
        let settings = Settings {
            lock_ttl: Duration::from_secs(3),
            max_concurrent: 1,
            max_queue: 1,
            no_enhance: true,
        };
        let progress = Arc::new(Progress::in_memory(Duration::from_secs(60)));
        let cache = Arc::new(FileCache::new(1 << 20));
        let mut backends = Backends::local(&settings, dir.join("output"), cache, progress);
        backends.leases = leases;
        let attributes = Arc::new(Attributes::load(None, PathBuf::from("/nonexistent")).unwrap());
        let metrics = Arc::new(Metrics::new().unwrap());
        let generator = Generator::new(
            attributes,
            backends.clone(),
            ImageSource::Mock,
            metrics,
            settings,
        );
        (Arc::new(generator), backends)
    }

    async fn outcome(mut rx: watch::Receiver<Option<RunResult>>) -> RunResult {
        rx.wait_for(Option::is_some).await.unwrap().clone().unwrap()
    }

    /// A run waiting for a slot holds no lease (so no TTL can run out on it) and is counted in
    /// the queue; the queue bound refuses a run for another key but not one that joins.
    #[tokio::test]
    async fn a_queued_run_holds_no_lease_until_its_slot_is_granted() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Arc::new(LocalLeases::new(Duration::from_secs(3)));
        let (generator, backends) = generator(dir.path(), leases.clone());
        let busy = backends.queue.admit(&key(B)).unwrap().turn.await.unwrap();

        let (snapshot, rx, started) = generator
            .start_job(key(A), JobOptions::dalle(), &Caller::READER, "queued")
            .unwrap();
        assert!(started);
        assert_eq!(snapshot.queue_position, Some(1));
        assert_eq!(backends.queue.waiting(), 1);
        assert!(!leases.is_held(&key(A)), "a queued run holds no lease");
        let (_, _, again) = generator
            .start_job(key(A), JobOptions::dalle(), &Caller::READER, "joins")
            .unwrap();
        assert!(!again, "a second request joins the queued run");
        let other = key("0x0000000000000000000000000000000000000003");
        let refused = generator.start_job(other, JobOptions::dalle(), &Caller::READER, "refused");
        assert_eq!(
            refused.unwrap_err(),
            Refused::QueueFull(QueueFull { waiting: 1 })
        );

        drop(busy);
        assert!(outcome(rx).await.is_ok());
        assert!(!leases.is_held(&key(A)), "given up at the end");
        assert!(!generator.is_in_flight(&key(A)));
    }

    /// Leases shared with another owner that can take a key away, as another process sharing
    /// them could once a renewal failed.
    #[derive(Debug)]
    struct Takeover {
        inner: LocalLeases,
        /// The other owner's token while it holds the key.
        thief: Mutex<Option<Token>>,
        /// How often the run asked for the key while the other owner held it.
        refused: AtomicUsize,
        /// The last token handed to the run.
        issued: Mutex<Option<Token>>,
    }

    impl Takeover {
        fn steal(&self, key: &RunKey, from: Token) {
            self.inner.release(key, from);
            *lock(&self.thief) = self.inner.try_acquire(key);
        }

        fn give_back(&self, key: &RunKey) {
            if let Some(token) = lock(&self.thief).take() {
                self.inner.release(key, token);
            }
        }

        fn stolen(&self) -> bool {
            lock(&self.thief).is_some()
        }
    }

    impl Leases for Takeover {
        fn try_acquire(&self, key: &RunKey) -> Option<Token> {
            if self.stolen() {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return None;
            }
            let token = self.inner.try_acquire(key);
            *lock(&self.issued) = token;
            token
        }
        fn renew(&self, key: &RunKey, token: Token) -> bool {
            self.inner.renew(key, token)
        }
        fn ttl(&self) -> Duration {
            self.inner.ttl()
        }
        fn is_held(&self, key: &RunKey) -> bool {
            self.inner.is_held(key)
        }
        fn while_owned(&self, key: &RunKey, token: Token, f: &mut dyn FnMut()) -> bool {
            self.inner.while_owned(key, token, f)
        }
        fn release(&self, key: &RunKey, token: Token) {
            self.inner.release(key, token);
        }
    }

    /// A run that loses its lease after its image was requested keeps the image: it waits
    /// for the other owner to give the key up, then writes every file and succeeds, and it
    /// writes nothing while the other owner holds the key.
    #[tokio::test]
    async fn a_run_that_loses_its_lease_after_the_image_request_keeps_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Arc::new(Takeover {
            inner: LocalLeases::new(Duration::from_millis(30)),
            thief: Mutex::new(None),
            refused: AtomicUsize::new(0),
            issued: Mutex::new(None),
        });
        let (generator, _) = generator(dir.path(), leases.clone());
        // Hold every image slot, so the run stops inside its (mock) image request.
        let slots = generator.image_slots.available_permits();
        let held = generator
            .image_slots
            .acquire_many(slots as u32)
            .await
            .unwrap();
        let (_, rx, _) = generator
            .start_job(key(A), JobOptions::dalle(), &Caller::READER, "paid")
            .unwrap();
        let in_image = async {
            let phase = || {
                generator
                    .progress
                    .snapshot(&key(A))
                    .map(|s| s.current_phase)
            };
            while phase() != Some(crate::progress::Phase::ImageWait) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), in_image)
            .await
            .unwrap();
        // Another owner takes the key away while the image is being made.
        let token = lock(&leases.issued).unwrap();
        leases.steal(&key(A), token);
        drop(held);
        let reclaiming = async {
            while leases.refused.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), reclaiming)
            .await
            .unwrap();
        let annotated = dir
            .path()
            .join("output/simple/annotated")
            .join(format!("{A}.png"));
        let generated = dir
            .path()
            .join("output/simple/generated")
            .join(format!("{A}.png"));
        assert!(
            !annotated.exists() && !generated.exists(),
            "nothing written while another owner holds the key"
        );
        leases.give_back(&key(A));
        let output = outcome(rx).await.expect("the paid image is kept");
        assert!(output.annotated.is_some() && annotated.is_file() && generated.is_file());
    }
}
