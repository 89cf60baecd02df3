//! One generation run: attributes → prompts → enhancement → image → download or decode →
//! annotation → artifacts, reporting each phase to the progress registry.
//!
//! CPU work (image encode/decode, annotation) and file writes run on the blocking pool. Every
//! artifact is written atomically, and only while this run still owns its key's lock.
//!
//! A run that finds its lock taken over stops if it has not requested its image yet (nothing
//! was paid for). From the image request on, it never gives up its work: it waits to take
//! the lock again ([`Generator::reclaim`]) and then reports and writes as usual, so an image
//! that may have been billed is always kept.

use std::sync::Arc;
use std::time::Instant;

use super::trace::{Inputs, Trace};
use super::{Artifact, Artifacts, Generator, HeldLease, ImageSource, JobOptions, RunOutput};
use crate::annotate;
use crate::attributes::dress::DalleDress;
use crate::cid::Cid;
use crate::openai::{ImageAnswer, OpenAiError, enhancement_system_prompt};
use crate::progress::{Phase, RunKey};
use crate::provenance::{self, ImageRequest, Making};

/// Why a run ended without an image. Each cause has its own stable code, so a full disk is
/// not reported as the provider's failure, and no message carries a path (the artifact is named
/// by its kind; the path is in the run's log line).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Another run took the key over after this run's lock expired, before this run requested
    /// its image.
    #[error("superseded by a newer run")]
    Superseded,
    /// The run was not started: the queue is full.
    #[error("{0}")]
    QueueFull(super::QueueFull),
    /// The run was not started: its image would exceed a spending cap.
    #[error("{0}")]
    BudgetExhausted(crate::budget::Exhausted),
    /// The run was not started: the caller's rate-limit bucket is empty.
    #[error("{0}")]
    RateLimited(crate::limits::Limited),
    #[error("{0}")]
    Attributes(#[from] crate::attributes::DressError),
    #[error("{0}")]
    OpenAi(#[from] OpenAiError),
    #[error("error annotating image: {0}")]
    Annotate(#[from] annotate::AnnotateError),
    #[error("{}", storage_text(.artifact, .source))]
    Storage {
        /// The artifact's kind (`annotated`, `selector`, …).
        artifact: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Something other than a file is where the run must write one (found before it spends).
    #[error("{0}")]
    Blocked(#[from] super::store::Blocked),
    #[error("decoding the image: {0}")]
    Image(String),
    #[error("background task failed: {0}")]
    Task(String),
    /// The server is draining for a shutdown: the run did not start (or stopped before its
    /// image request). A `/dalle` run is resumed at the next start.
    #[error("the server is shutting down; the run did not send its image request")]
    ShuttingDown,
}

impl RunError {
    /// The stable code of this failure (snapshots' `errorCode`, `/v1` error codes).
    pub fn code(&self) -> &'static str {
        match self {
            RunError::Superseded => "superseded",
            RunError::QueueFull(_) => "queue_full",
            RunError::BudgetExhausted(_) => "budget_exhausted",
            RunError::RateLimited(_) => "rate_limited",
            RunError::Attributes(_) => "invalid_input",
            RunError::OpenAi(OpenAiError::BreakerOpen(_)) => "provider_unavailable",
            RunError::OpenAi(_) => "provider_failed",
            RunError::Annotate(_) => "annotate_failed",
            RunError::Storage { source, .. } if is_disk_full(source) => "storage_full",
            RunError::Storage { .. } => "storage_failed",
            RunError::Blocked(_) => "storage_blocked",
            RunError::Image(_) => "image_invalid",
            RunError::Task(_) => "internal",
            RunError::ShuttingDown => "shutting_down",
        }
    }
}

/// `ENOSPC` or `EDQUOT`: the disk (or the quota) is full.
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn storage_text(artifact: &str, source: &std::io::Error) -> String {
    // The kind, not the OS text: some OS messages name the path.
    let what = if is_disk_full(source) {
        "the disk is full".to_string()
    } else {
        format!("{}", source.kind())
    };
    format!("writing the {artifact} artifact failed: {what}")
}

/// Times phases for the phase-duration histogram.
struct PhaseClock {
    current: Option<(Phase, Instant)>,
}

impl PhaseClock {
    fn enter(&mut self, generator: &Generator, phase: Phase) {
        if let Some((previous, since)) = self.current.take() {
            generator
                .metrics
                .phase_histogram(previous.as_str())
                .observe(since.elapsed().as_secs_f64());
        }
        self.current = Some((phase, Instant::now()));
    }
}

struct Run<'a> {
    generator: &'a Arc<Generator>,
    key: &'a RunKey,
    lease: &'a HeldLease,
    clock: PhaseClock,
    artifacts: Artifacts,
    /// Set just before the image request: from then on the run keeps its work whatever
    /// happens to its lease.
    paid: bool,
    /// What the run reserved of the budget when it was admitted; settled (spent) just
    /// before the image request, given back if the run ends before it.
    reservation: Option<crate::budget::Reservation>,
    /// Notes for the provenance record.
    trace: Trace,
}

impl Run<'_> {
    /// Runs `f` on the progress registry while this run owns its key. Without the lease it
    /// fails with [`RunError::Superseded`] before the image request, and waits to take the
    /// lease again after it.
    async fn report(&self, f: impl FnOnce(&dyn super::RunRegistry) + Send) -> Result<(), RunError> {
        let mut f = Some(f);
        loop {
            let reported = self.generator.guarded(self.key, self.lease.token(), |p| {
                if let Some(f) = f.take() {
                    f(p);
                }
            });
            match reported {
                Err(RunError::Superseded) if self.paid => {
                    self.generator.reclaim(self.key, self.lease).await;
                }
                other => return other,
            }
        }
    }

    async fn phase(&mut self, phase: Phase) -> Result<(), RunError> {
        self.clock.enter(self.generator, phase);
        self.trace.enter(phase);
        let key = self.key;
        self.report(move |p| p.transition(key, phase)).await
    }

    async fn skip(&mut self, phase: Phase) -> Result<(), RunError> {
        self.trace.skip(phase);
        let key = self.key;
        self.report(move |p| p.skip(key, phase)).await
    }

    async fn dress(&self, f: impl FnOnce(&mut DalleDress) + Send) -> Result<(), RunError> {
        let key = self.key;
        self.report(move |p| {
            let mut f = Some(f);
            p.update_dress(key, &mut |d| {
                if let Some(f) = f.take() {
                    f(d);
                }
            });
        })
        .await
    }

    /// Atomically writes one artifact. The ownership check and the write happen together
    /// under the key's write gate, so a run that lost its lock never writes after the new
    /// owner has started writing; after the image request it takes the lock again and writes.
    async fn write(
        &self,
        kind: &'static str,
        ext: &'static str,
        bytes: Vec<u8>,
    ) -> Result<String, RunError> {
        let name = self.generator.store.name(self.key, kind, ext);
        let bytes = Arc::new(bytes);
        let written = loop {
            let generator = Arc::clone(self.generator);
            let (key, token, bytes) = (self.key.clone(), self.lease.token(), bytes.clone());
            let written = tokio::task::spawn_blocking(move || {
                let gate = generator.gate(&key);
                let _held = gate.lock().unwrap_or_else(|e| e.into_inner());
                if !generator.owns(&key, token) {
                    return Ok(false);
                }
                generator.store.put(&key, kind, ext, &bytes).map(|()| true)
            })
            .await
            .map_err(|e| RunError::Task(e.to_string()))?;
            match written {
                Ok(false) if self.paid => self.generator.reclaim(self.key, self.lease).await,
                other => break other,
            }
        };
        match written {
            Ok(true) => {
                self.generator.metrics.record_file_op(true);
                Ok(name)
            }
            Ok(false) => Err(RunError::Superseded),
            Err(source) => {
                self.generator.metrics.record_file_op(false);
                tracing::error!(artifact = %name, error = %source, "writing an artifact failed");
                Err(RunError::Storage {
                    artifact: kind,
                    source,
                })
            }
        }
    }
}

/// The raw image as PNG: PNG bytes pass through, JPEG or WebP (from a URL) are re-encoded.
fn ensure_png(raw: Vec<u8>) -> Result<Vec<u8>, RunError> {
    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
    if raw.starts_with(PNG_MAGIC) {
        return Ok(raw);
    }
    let image = image::load_from_memory(&raw).map_err(|e| RunError::Image(e.to_string()))?;
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| RunError::Image(e.to_string()))?;
    Ok(out.into_inner())
}

/// Runs CPU-bound image work on the blocking pool once one of the generator's image slots
/// (one per core) is free.
async fn image_work<T: Send + 'static>(
    generator: &Generator,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RunError> {
    let _slot = generator
        .image_slots
        .acquire()
        .await
        .map_err(|e| RunError::Task(e.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RunError::Task(e.to_string()))
}

/// Runs the whole pipeline for `key` with `options`.
pub async fn run(
    generator: &Arc<Generator>,
    key: &RunKey,
    lease: &HeldLease,
    options: &JobOptions,
    ticket: &mut super::journal::Ticket,
    reservation: Option<crate::budget::Reservation>,
    request_id: &str,
) -> Result<RunOutput, RunError> {
    let mut run = Run {
        reservation,
        trace: Trace::new(request_id),
        generator,
        key,
        lease,
        clock: PhaseClock { current: None },
        artifacts: options.artifacts,
        paid: false,
    };
    run.clock.enter(generator, Phase::Setup);
    run.trace.enter(Phase::Setup);
    // Before anything is spent: a folder where a file must go would fail the run only after
    // the paid image.
    let (store, owned) = (generator.store.clone(), key.clone());
    let files: Vec<_> = options
        .artifacts
        .iter()
        .flat_map(|a| a.files())
        .copied()
        .collect();
    tokio::task::spawn_blocking(move || store.check_writable(&owned, &files))
        .await
        .map_err(|e| RunError::Task(e.to_string()))??;

    run.phase(Phase::BasePrompts).await?;
    let (dress, prompts) = generator.attributes.dress(
        key.subject.as_str(),
        key.series.as_str(),
        options.backstyle.as_deref(),
    )?;
    let shown = dress.clone();
    run.report(move |p| p.set_dress(key, shown)).await?;
    let texts = [&prompts.data, &prompts.title, &prompts.terse, &prompts.base];
    for ((kind, ext), text) in Artifact::PromptTexts.files().iter().zip(texts) {
        run.trace.prompt(kind, text);
        if options.artifacts.contains(Artifact::PromptTexts) {
            run.write(kind, ext, text.clone().into_bytes()).await?;
        }
    }

    let client = match &generator.source {
        ImageSource::OpenAi(client) => Some(client.clone()),
        ImageSource::Mock => None,
    };
    let (enhanced, enhanced_ran) = match (&options.enhanced, &client) {
        (Some(previous), _) => {
            run.skip(Phase::EnhancePrompt).await?;
            run.trace.enhancement.skipped =
                Some("reused the enhanced prompt of an earlier run".into());
            (previous.clone(), true)
        }
        (None, Some(client))
            if options.enhance && !generator.no_enhance && !prompts.author.is_empty() =>
        {
            run.phase(Phase::EnhancePrompt).await?;
            let system = enhancement_system_prompt(&prompts.author);
            let enhanced = client.enhance_traced(&system, &prompts.base).await?;
            let noted = &mut run.trace.enhancement;
            (noted.ran, noted.model, noted.request_id) =
                (true, Some(enhanced.model), enhanced.request_id);
            (enhanced.text, true)
        }
        _ => {
            run.skip(Phase::EnhancePrompt).await?;
            let why = if client.is_none() {
                "mock mode: no OpenAI key, or TB_DALLE_SKIP_IMAGE=1"
            } else if !options.enhance {
                "not asked for"
            } else if generator.no_enhance {
                "TB_DALLE_NO_ENHANCE=1"
            } else {
                "the dress has no literary style to write as"
            };
            run.trace.enhancement.skipped = Some(why.into());
            (prompts.base.clone(), false)
        }
    };
    let technical = format!("{}\n\n{}", prompts.technical, enhanced);
    let texts = [&enhanced, &technical];
    for ((kind, ext), text) in Artifact::EnhancedTexts.files().iter().zip(texts) {
        run.trace.prompt(kind, text);
        if options.artifacts.contains(Artifact::EnhancedTexts) {
            run.write(kind, ext, text.clone().into_bytes()).await?;
        }
    }
    let shown = enhanced.clone();
    run.dress(move |d| d.enhanced_prompt = shown).await?;

    let mut output = RunOutput {
        dress,
        prompts,
        enhanced,
        enhanced_ran,
        technical,
        generated: None,
        annotated: None,
    };
    if !options.artifacts.contains(Artifact::Generated) {
        for phase in [
            Phase::ImagePrep,
            Phase::ImageWait,
            Phase::ImageDownload,
            Phase::Annotate,
        ] {
            run.skip(phase).await?;
        }
        return finish(&mut run, output, None).await;
    }

    run.phase(Phase::ImagePrep).await?;
    // The last point where a drain can stop the run for free: from here on it pays. What
    // the chat model wrote is kept for the resumed run. Only a real request is marked (a
    // mock image costs nothing, so a crash may repeat it).
    if enhanced_ran && options.enhanced.is_none() {
        ticket.set_enhanced(output.enhanced.clone());
    }
    if !ticket.before_image_request(client.is_some()).await {
        return Err(RunError::ShuttingDown);
    }
    let raw = match &client {
        Some(client) => {
            run.phase(Phase::ImageWait).await?;
            // From here the image may be billed: this run keeps its work to the end.
            run.paid = true;
            spend(&mut run, client.image_model(), &output.enhanced).await;
            let receipt = client
                .request_image_traced(&output.technical, &output.enhanced)
                .await?;
            run.trace.image = ImageRequest {
                source: "openai".into(),
                model: Some(receipt.model),
                size: receipt.size.map(str::to_string),
                quality: receipt.quality.map(str::to_string),
                download: match &receipt.answer {
                    ImageAnswer::Url(_) => "url".into(),
                    ImageAnswer::Bytes(_) => "b64".into(),
                },
                revised_prompt: receipt.revised_prompt,
                response_id: receipt.response_id,
                created: receipt.created,
            };
            match receipt.answer {
                ImageAnswer::Url(url) => {
                    output.dress.image_url.clone_from(&url);
                    output.dress.download_mode = "url".into();
                    let shown = url.clone();
                    run.dress(move |d| {
                        d.image_url = shown;
                        d.download_mode = "url".into();
                    })
                    .await?;
                    run.phase(Phase::ImageDownload).await?;
                    client.download(&url).await?
                }
                ImageAnswer::Bytes(bytes) => {
                    output.dress.download_mode = "b64".into();
                    run.dress(|d| d.download_mode = "b64".into()).await?;
                    run.phase(Phase::ImageDownload).await?;
                    bytes
                }
            }
        }
        None => {
            run.phase(Phase::ImageWait).await?;
            // Free, but treated as the paid image it stands in for.
            run.paid = true;
            let palette = [1, 2, 3].map(|n| {
                annotate::parse_hex_color(&output.dress.color(false, n)).unwrap_or([128, 128, 128])
            });
            let address = key.subject.to_string();
            let png =
                image_work(generator, move || annotate::mock_png(&address, palette)).await??;
            run.skip(Phase::ImageDownload).await?;
            png
        }
    };

    let caption = options
        .artifacts
        .contains(Artifact::Annotated)
        .then(|| output.prompts.terse.clone());
    if caption.is_some() {
        run.phase(Phase::Annotate).await?;
    } else {
        run.skip(Phase::Annotate).await?;
    }
    settle_dress(&run, &mut output, caption.is_some(), true);
    let making = run.trace.making(inputs(&run, &output)?);
    let (generated, annotated, making) = image_work(generator, move || -> Result<_, RunError> {
        let generated = ensure_png(raw)?;
        let mut making: Making = making;
        making.raw_cid = Cid::of(&generated);
        let annotated = match caption {
            Some(caption) => {
                let (png, params) = annotate::annotate_png_with(&generated, &caption, |params| {
                    making.annotation = Some(params.clone());
                    making.png_text().unwrap_or_default()
                })?;
                making.annotation = Some(params);
                Some(png)
            }
            None => None,
        };
        Ok((generated, annotated, making))
    })
    .await??;
    output.generated = Some(run.write("generated", "png", generated).await?);
    let record = run.trace.record(making, annotated.as_deref().map(Cid::of));
    let record_bytes = record
        .to_bytes()
        .map_err(|e| RunError::Task(e.to_string()))?;
    let (kind, ext) = provenance::RECORD_FILE;
    let name = run.write(kind, ext, record_bytes.clone()).await?;
    generator.contents.add(&name, &record_bytes, &record);
    finish(&mut run, output, annotated).await
}

/// What the run was made from: the series definition and databases (by CID), the subject and
/// the final dress (the raw image's CID is filled in once it is known).
fn inputs(run: &Run<'_>, output: &RunOutput) -> Result<Inputs, RunError> {
    let generator = run.generator;
    let task = |e: serde_json::Error| RunError::Task(e.to_string());
    let series = generator
        .attributes
        .series
        .get(run.key.series.as_str())
        .unwrap_or_default();
    let manifest = crate::catalogue::manifest::from_databases(&generator.attributes.databases);
    let selector = serde_json::to_vec_pretty(&output.dress).map_err(task)?;
    Ok(Inputs {
        series: run.key.series.to_string(),
        series_cid: Cid::of(&serde_json::to_vec(&series).map_err(task)?),
        databases_cid: Cid::of(&serde_json::to_vec(&manifest).map_err(task)?),
        subject: run.key.subject.to_string(),
        dress_cid: run
            .artifacts
            .contains(Artifact::Selector)
            .then(|| Cid::of(&selector)),
        dress: serde_json::to_value(&output.dress).map_err(task)?,
    })
}

/// The dress as the run leaves it: final prompt, the names of its images, completed.
fn settle_dress(run: &Run<'_>, output: &mut RunOutput, annotated: bool, generated: bool) {
    let store = &run.generator.store;
    let name = |(kind, ext): (&str, &str), made: bool| {
        if made {
            store.name(run.key, kind, ext)
        } else {
            String::new()
        }
    };
    output.dress.enhanced_prompt = output.enhanced.clone();
    output.dress.generated_path = name(("generated", "png"), generated);
    output.dress.annotated_path = name(super::ANNOTATED, annotated);
    output.dress.completed = true;
}

/// Counts the image about to be requested against the budget, at its price (size and
/// quality follow `orientation_text`, as the request's do), settling the run's reservation.
/// Written to disk before the request leaves, so a crash cannot forget it.
async fn spend(run: &mut Run<'_>, model: &str, orientation_text: &str) {
    let generator = run.generator;
    let price = generator.prices.image(model, orientation_text);
    generator.metrics.record_spend(model, price);
    run.trace.cost = crate::provenance::Cost {
        usd_micros: price,
        model: Some(model.to_string()),
    };
    let (budget, reservation, model) = (
        Arc::clone(&generator.budget),
        run.reservation.take(),
        model.to_string(),
    );
    let recorded = tokio::task::spawn_blocking(move || match reservation {
        Some(reservation) => reservation.settle(&model, price),
        None => budget.spend(None, None, &model, price),
    })
    .await;
    if let Err(err) = recorded {
        tracing::error!(%err, "recording the image's spend failed");
    }
}

/// Records the artifact paths, writes the legacy selector, then the annotated PNG (last: its
/// presence is what tells `/dalle` the image is done) and completes the run.
async fn finish(
    run: &mut Run<'_>,
    mut output: RunOutput,
    annotated: Option<Vec<u8>>,
) -> Result<RunOutput, RunError> {
    let generator = run.generator;
    let generated = output.generated.is_some();
    settle_dress(run, &mut output, annotated.is_some(), generated);
    let final_dress = output.dress.clone();
    run.dress(move |d| *d = final_dress).await?;
    if run.artifacts.contains(Artifact::Selector) {
        let selector =
            serde_json::to_vec_pretty(&output.dress).map_err(|e| RunError::Task(e.to_string()))?;
        run.write("selector", "json", selector).await?;
    }
    if let Some(bytes) = annotated {
        output.annotated = Some(run.write("annotated", "png", bytes).await?);
    }
    run.clock.enter(generator, Phase::Completed);
    let key = run.key;
    run.report(move |p| p.complete(key)).await?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_failures_have_their_own_codes_and_no_paths() {
        let full = RunError::Storage {
            artifact: "annotated",
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert_eq!(full.code(), "storage_full");
        assert_eq!(
            full.to_string(),
            "writing the annotated artifact failed: the disk is full"
        );
        let denied = RunError::Storage {
            artifact: "selector",
            source: std::io::Error::other("cannot open /srv/data/output/x.json"),
        };
        assert_eq!(denied.code(), "storage_failed");
        assert!(!denied.to_string().contains('/'), "{denied}");
        let open = crate::openai::breaker::Rejected::Open {
            operation: crate::openai::breaker::Operation::Image,
            failures: 5,
            last: Some("connection refused".into()),
        };
        let refused = RunError::OpenAi(OpenAiError::BreakerOpen(open));
        assert_eq!(refused.code(), "provider_unavailable");
        assert!(
            refused.to_string().contains("connection refused"),
            "{refused}"
        );
        assert_eq!(RunError::Superseded.code(), "superseded");
        let blocked = RunError::from(super::super::store::Blocked {
            kind: "annotated",
            what: "a directory",
        });
        assert_eq!(blocked.code(), "storage_blocked");
        assert!(!blocked.to_string().contains('/'), "{blocked}");
    }
}
