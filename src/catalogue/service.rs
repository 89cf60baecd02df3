//! The `/v1` catalogue: input → seed → dress → metadata
//! record, with generation running through the same generator as `/dalle` (locks, queue,
//! breaker, retries, progress keyed by series + seed, mock mode) and answering when done.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::error::{CatalogueError, Code};
use super::manifest::{DATABASE_VERSION, Manifest};
use super::metadata::{
    self, Artifacts, DatabaseRef, ImageMetadata, RECIPE_VERSION, Recipe, Stage, StageStatus,
    metadata_path,
};
use super::{records, series_admin};
use crate::attributes::Attributes;
use crate::attributes::series::{Series, normalize_name};
use crate::auth::Caller;
use crate::domain::{ImageRef, Seed, SeriesName};
use crate::progress::{RunKey, Snapshot};
use crate::run::{self, Artifact, Generator, JobOptions, RunError, RunOutput};

/// A `POST /v1/images/generate` or `/preview` request, as the handler parsed its body.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The input text, at most [`MAX_TEXT`] bytes; a blank input has taken the seed's value
    /// (a record needs an input; upstream wrote none and failed with `500 metadata_invalid`,
    /// after generating the image).
    pub input: String,
    pub seed: Seed,
    pub series: SeriesName,
    pub recipe: Option<String>,
    pub backstyle: Option<String>,
    pub enhance: bool,
    pub image: bool,
    pub annotate: bool,
    pub force: bool,
    /// Who asks. A caller that may not start runs ([`Caller::authorized`]) is refused
    /// `unauthorized` by a request that would start work; a hit is still answered. A new
    /// run is admitted with the caller's rate limit and budget.
    pub caller: Caller,
}

/// The longest `input`, `recipe` or `backstyle` a request may carry, in bytes. Each is kept in
/// the record, and a record is read whole by every lookup and listing.
pub const MAX_TEXT: usize = 1024;

/// The most records one page of `GET /v1/images` answers, and how many it answers by default.
pub const MAX_PAGE: usize = 1000;
pub const DEFAULT_PAGE: usize = 100;

/// What generate, preview and regenerate answer. Paths are relative to the data directory.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResult {
    pub input: String,
    pub seed: String,
    pub series: String,
    pub recipe: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metadata_path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generated_path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub annotated_path: String,
    pub metadata: ImageMetadata,
}

/// One database's rows (`GET /v1/databases/{version}/records/{name}`).
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRecords {
    pub name: String,
    pub version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    pub records: Vec<RecordRow>,
}

/// One row: its key (first field) and all its fields.
#[derive(Debug, Clone, Serialize)]
pub struct RecordRow {
    pub key: String,
    pub values: Vec<String>,
}

/// The engine.
#[derive(Debug)]
pub struct Catalogue {
    attributes: Arc<Attributes>,
    generator: Arc<Generator>,
    root: PathBuf,
    records: records::Records,
    manifest: Manifest,
}

fn internal(e: impl std::fmt::Display) -> CatalogueError {
    CatalogueError::new(Code::Internal, "background task failed").with_cause(e)
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CatalogueError> + Send + 'static,
) -> Result<T, CatalogueError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

impl Catalogue {
    /// An engine over the app's attributes, generator and data directory.
    pub fn new(attributes: Arc<Attributes>, generator: Arc<Generator>, root: PathBuf) -> Catalogue {
        let manifest = super::manifest::from_databases(&attributes.databases);
        Catalogue {
            attributes,
            generator,
            records: records::Records::new(root.clone()),
            root,
            manifest,
        }
    }

    /// The databases' manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn relative(&self, path: &std::path::Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn series(&self, name: &SeriesName) -> Result<Series, CatalogueError> {
        self.attributes.series.get(name.as_str()).ok_or_else(|| {
            CatalogueError::new(Code::SeriesInvalid, format!("series not found: {name}"))
        })
    }

    /// A hidden series still answers the records it has, but makes no new ones.
    fn refuse_hidden(series: &Series) -> Result<(), CatalogueError> {
        if series.deleted {
            return Err(CatalogueError::new(
                Code::SeriesHidden,
                format!(
                    "series {} is hidden: its images are still served, but it starts no new work",
                    series.suffix
                ),
            ));
        }
        Ok(())
    }

    /// Refuses records made with other databases — also under `force` (upstream skipped the
    /// check then, and regenerated with different data under the old identity).
    fn check_compatible(&self, meta: &ImageMetadata) -> Result<(), CatalogueError> {
        let refused = |cause: CatalogueError| {
            CatalogueError::new(
                Code::RegenerationRefused,
                "the stored record was made with other databases",
            )
            .with_cause(cause)
        };
        if !meta.database.version.is_empty() && meta.database.version != DATABASE_VERSION {
            return Err(refused(CatalogueError::new(
                Code::DatabaseVersionUnavailable,
                format!(
                    "database version {} is not available",
                    meta.database.version
                ),
            )));
        }
        if !meta.database.archive_hash.is_empty()
            && meta.database.archive_hash != self.manifest.archive_hash
        {
            return Err(refused(CatalogueError::new(
                Code::DatabaseHashMismatch,
                format!(
                    "recorded {}, current {}",
                    meta.database.archive_hash, self.manifest.archive_hash
                ),
            )));
        }
        Ok(())
    }

    fn result(&self, meta: ImageMetadata, path: &std::path::Path) -> GenerateResult {
        GenerateResult {
            input: meta.input.clone(),
            seed: meta.seed.clone(),
            series: meta.series.name.clone(),
            recipe: meta.recipe.name.clone(),
            metadata_path: self.relative(path),
            generated_path: meta.artifacts.generated.clone(),
            annotated_path: meta.artifacts.annotated.clone(),
            metadata: meta,
        }
    }

    fn new_record(
        &self,
        req: &GenerateRequest,
        series: &Series,
        output: &RunOutput,
    ) -> ImageMetadata {
        let recipe = Recipe {
            name: req
                .recipe
                .clone()
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| Recipe::default().name),
            version: RECIPE_VERSION.to_string(),
        };
        let database = DatabaseRef {
            version: DATABASE_VERSION.to_string(),
            archive_hash: self.manifest.archive_hash.clone(),
        };
        let mut dress = output.dress.clone();
        dress.enhanced_prompt = if output.enhanced_ran {
            output.enhanced.clone()
        } else {
            String::new()
        };
        let mut meta = ImageMetadata::from_dress(
            &req.input,
            req.seed.as_str(),
            series,
            recipe,
            database,
            &dress,
            &output.prompts,
        );
        meta.prompts.technical_prompt = output.technical.clone();
        let stage = |done: bool| {
            Stage::with(if done {
                StageStatus::Complete
            } else {
                StageStatus::Skipped
            })
        };
        meta.stages.enhanced = stage(output.enhanced_ran);
        meta.stages.generated = stage(output.generated.is_some());
        meta.stages.annotated = stage(output.annotated.is_some());
        // Records name artifacts relative to the data dir, where the store keeps `output/`.
        let recorded = |name: &Option<String>| {
            name.as_deref()
                .map(|n| format!("output/{n}"))
                .unwrap_or_default()
        };
        meta.artifacts = Artifacts {
            generated: recorded(&output.generated),
            annotated: recorded(&output.annotated),
        };
        meta
    }

    /// `POST /v1/images/generate`: cached record unless `force`, else a run through the
    /// generator; answers when the run is done.
    pub async fn generate(
        &self,
        req: GenerateRequest,
        request_id: &str,
    ) -> Result<GenerateResult, CatalogueError> {
        // A contradiction in the request: 400 (upstream answered 503 provider_unavailable,
        // which invites retrying a request that can never succeed).
        if req.annotate && !req.image {
            return Err(CatalogueError::new(
                Code::InvalidInput,
                "annotation requires image generation",
            ));
        }
        let series = self.series(&req.series)?;
        let path = metadata_path(&self.root, &series.suffix, req.seed.as_str());
        let existing = blocking({
            let path = path.clone();
            move || metadata::read(&path)
        })
        .await?;
        if let Some(meta) = &existing {
            self.check_compatible(meta)?;
            if !req.force && satisfies(meta, &req) {
                let mut hit = meta.clone();
                hit.status.cache_hit = true;
                return Ok(self.result(hit, &path));
            }
        }
        if !req.caller.authorized() {
            return Err(CatalogueError::new(
                Code::Unauthorized,
                "a valid API key is required",
            ));
        }
        Catalogue::refuse_hidden(&series)?;
        let mut artifacts = run::Artifacts::NONE;
        if req.image {
            artifacts = artifacts.with(Artifact::Generated);
        }
        if req.annotate {
            artifacts = artifacts.with(Artifact::Annotated);
        }
        let options = JobOptions {
            artifacts,
            enhance: req.enhance,
            backstyle: req.backstyle.clone().filter(|b| !b.trim().is_empty()),
            enhanced: existing
                .as_ref()
                .filter(|_| req.enhance)
                .map(|m| m.prompts.enhanced_prompt.clone())
                .filter(|e| !e.is_empty()),
        };
        let key = RunKey::new(SeriesName::normalize(&series.suffix), req.seed.clone());
        let output = self.run(key, options, &req.caller, request_id).await?;
        self.save_record(&req, &series, &output, path).await
    }

    /// Writes the record of a finished run (or preview) and answers it.
    async fn save_record(
        &self,
        req: &GenerateRequest,
        series: &Series,
        output: &RunOutput,
        path: PathBuf,
    ) -> Result<GenerateResult, CatalogueError> {
        let meta = self.new_record(req, series, output);
        let written = meta.clone();
        blocking({
            let (path, records) = (path.clone(), self.records.clone());
            move || records.write(&path, &written)
        })
        .await?;
        Ok(self.result(meta, &path))
    }

    /// Runs (or joins) the job for `key` and waits for its end; a run failure keeps its own
    /// code (a provider failure, a full disk, …).
    async fn run(
        &self,
        key: RunKey,
        options: JobOptions,
        caller: &Caller,
        request_id: &str,
    ) -> Result<Arc<RunOutput>, CatalogueError> {
        self.generator
            .run_to_end(key, options, caller, request_id)
            .await
            .map_err(|err| run_failure(&err))
    }

    /// `POST /v1/images/preview`: prompts only, no provider calls; writes the record.
    pub async fn preview(&self, req: GenerateRequest) -> Result<GenerateResult, CatalogueError> {
        let series = self.series(&req.series)?;
        let path = metadata_path(&self.root, &series.suffix, req.seed.as_str());
        let attributes = Arc::clone(&self.attributes);
        let backstyle = req.backstyle.clone().filter(|b| !b.trim().is_empty());
        // A run in flight for the seed is joined, as `/dalle` and generate do: the preview is
        // answered from it (its prompts are the preview's) and never written alongside it.
        let key = RunKey::new(SeriesName::normalize(&series.suffix), req.seed.clone());
        let wanted = JobOptions {
            backstyle: backstyle.clone(),
            ..JobOptions::default()
        };
        if let Some(Ok(output)) = self.generator.join_live(&key, &wanted).await {
            return self.save_record(&req, &series, &output, path).await;
        }
        let existing = blocking({
            let path = path.clone();
            move || metadata::read(&path)
        })
        .await?;
        if let Some(meta) = existing {
            self.check_compatible(&meta)?;
            if !req.force {
                let mut hit = meta;
                hit.status.cache_hit = true;
                return Ok(self.result(hit, &path));
            }
        }
        Catalogue::refuse_hidden(&series)?;
        let (dress, prompts) = attributes
            .dress_in(req.seed.as_str(), &series, backstyle.as_deref())
            .map_err(|e| {
                CatalogueError::new(Code::InvalidInput, "cannot build the prompts").with_cause(e)
            })?;
        let output = RunOutput {
            technical: prompts.technical.clone(),
            enhanced: String::new(),
            enhanced_ran: false,
            dress,
            prompts,
            generated: None,
            annotated: None,
        };
        self.save_record(&req, &series, &output, path).await
    }

    /// `GET /v1/images`: one page of at most `limit` records (the handler keeps it within
    /// [`MAX_PAGE`]) after the `imageId` `after`.
    pub async fn list_images(
        &self,
        series: Option<SeriesName>,
        after: Option<String>,
        limit: usize,
    ) -> Result<records::Page, CatalogueError> {
        let records = self.records.clone();
        blocking(move || records.page(series.as_ref(), after.as_deref(), limit)).await
    }

    /// `GET /v1/images/{id}`: by image id, then by seed.
    pub async fn get_image(&self, id: &ImageRef) -> Result<records::Record, CatalogueError> {
        let (records, id) = (self.records.clone(), id.clone());
        blocking(move || records.get(&id)).await
    }

    /// `DELETE /v1/images/{id}`: soft delete into `<data>/archives/`.
    pub async fn delete_image(&self, id: &ImageRef) -> Result<(), CatalogueError> {
        let (records, id) = (self.records.clone(), id.clone());
        blocking(move || records.delete(&id)).await
    }

    /// `POST /v1/images/{id}/regenerate`: the record's request again, with `force` and an image.
    /// It always starts a run, for `caller`.
    pub async fn regenerate(
        &self,
        id: &ImageRef,
        caller: Caller,
        request_id: &str,
    ) -> Result<GenerateResult, CatalogueError> {
        let meta = self.get_image(id).await?.metadata;
        let backstyle = meta
            .selected_records
            .iter()
            .find(|r| r.attribute == "backStyle")
            .map(|r| r.record.clone());
        // The record's own seed and series: written by a generate or preview that checked them.
        let req = GenerateRequest {
            input: meta.input.clone(),
            seed: Seed::new(meta.seed.as_str()),
            series: SeriesName::normalize(&meta.series.name),
            recipe: Some(meta.recipe.name.clone()),
            backstyle,
            enhance: !meta.prompts.enhanced_prompt.is_empty(),
            image: true,
            annotate: !meta.artifacts.annotated.is_empty(),
            force: true,
            caller,
        };
        self.generate(req, request_id).await
    }

    /// `POST /v1/images/{id}/export`.
    pub async fn export(
        &self,
        id: &ImageRef,
        options: serde_json::Value,
    ) -> Result<records::ExportResult, CatalogueError> {
        let options = records::ExportOptions::from_json(&options)?;
        let (records, id) = (self.records.clone(), id.clone());
        blocking(move || records.export(&id, &options)).await
    }

    /// `GET /v1/series`: hidden series only when asked for (the admin's view; `/series`
    /// never lists them).
    pub fn list_series(&self, include_hidden: bool, only_hidden: bool) -> Vec<Series> {
        series_admin::list(&self.attributes.series, include_hidden, only_hidden)
    }

    /// `GET /v1/series/{name}`.
    pub fn get_series(&self, name: &SeriesName) -> Result<Series, CatalogueError> {
        series_admin::get(&self.attributes.series, name)
    }

    /// `PUT /v1/series/{name}`.
    pub async fn save_series(
        &self,
        name: &SeriesName,
        series: Series,
    ) -> Result<Series, CatalogueError> {
        let (store, name) = (self.attributes.series.clone(), name.clone());
        blocking(move || series_admin::save(&store, &name, series)).await
    }

    /// `POST /v1/series/{name}/hidden`.
    pub async fn set_series_hidden(
        &self,
        name: &SeriesName,
        hidden: bool,
    ) -> Result<Series, CatalogueError> {
        let (store, name, output) = (
            self.attributes.series.clone(),
            name.clone(),
            self.root.join("output"),
        );
        blocking(move || series_admin::set_hidden(&store, &output, &name, hidden)).await
    }

    /// `GET /v1/databases/{version}`: the manifest for an empty or matching version.
    pub fn database(&self, version: &str) -> Result<Manifest, CatalogueError> {
        let version = version.trim_end_matches('/');
        if version.is_empty() || version == self.manifest.version {
            Ok(self.manifest.clone())
        } else {
            Err(CatalogueError::new(
                Code::DatabaseVersionUnavailable,
                format!("database version {version} is not available"),
            ))
        }
    }

    /// `GET /v1/databases/{version}/records/{name}`: the first `limit` rows (≤ 0 or > 10 000
    /// means 200). The version must match (upstream ignored it).
    pub fn records(
        &self,
        version: &str,
        name: &str,
        limit: i64,
    ) -> Result<DatabaseRecords, CatalogueError> {
        self.database(version)?;
        let name = normalize_name(name.trim_end_matches(".csv"));
        if name == "unknown" {
            return Err(CatalogueError::new(
                Code::InvalidInput,
                "database name is required",
            ));
        }
        let db = self.attributes.databases.get(&name).ok_or_else(|| {
            CatalogueError::new(
                Code::DatabaseVersionUnavailable,
                format!("database {name} is not available"),
            )
        })?;
        let limit = if limit <= 0 || limit > 10_000 {
            200
        } else {
            limit as usize
        };
        Ok(DatabaseRecords {
            name: db.name.clone(),
            version: db.version.clone(),
            columns: db.columns.clone(),
            records: db
                .records
                .iter()
                .take(limit)
                .map(|r| {
                    let values: Vec<String> = r.split(',').map(str::to_string).collect();
                    RecordRow {
                        key: values
                            .first()
                            .map(|k| k.trim().to_string())
                            .unwrap_or_default(),
                        values,
                    }
                })
                .collect(),
        })
    }

    /// `POST /v1/validate`.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        self.manifest.validate()
    }

    /// The live (or retained) snapshot of the engine run for `series` and `seed`.
    pub fn progress(&self, series: SeriesName, seed: Seed) -> Result<Snapshot, CatalogueError> {
        let key = RunKey::new(series, seed);
        self.generator.progress.snapshot(&key).ok_or_else(|| {
            CatalogueError::new(
                Code::ArtifactMissing,
                format!("no run for {}/{}", key.series, key.subject),
            )
        })
    }
}

/// The `/v1` error of a failed run: the run's own code where `/v1` has one.
fn run_failure(err: &RunError) -> CatalogueError {
    let code = match err.code() {
        "provider_unavailable" => Code::ProviderUnavailable,
        "provider_failed" => Code::ProviderFailed,
        "invalid_input" => Code::InvalidInput,
        "storage_full" => Code::StorageFull,
        "queue_full" => Code::QueueFull,
        "budget_exhausted" => Code::BudgetExhausted,
        "rate_limited" => Code::RateLimited,
        "shutting_down" => Code::ShuttingDown,
        _ => Code::Internal,
    };
    let message = match code {
        Code::ProviderFailed | Code::ProviderUnavailable => "generation failed",
        Code::InvalidInput => "cannot build the prompts",
        Code::StorageFull => "the server's disk is full; nothing was saved",
        Code::QueueFull => "the generation queue is full; retry later",
        Code::BudgetExhausted => "the spending cap is reached; nothing was started",
        Code::RateLimited => "nothing was started",
        Code::ShuttingDown => "the server is shutting down; retry after Retry-After",
        _ => "the generation failed",
    };
    let failure = CatalogueError::new(code, message).with_cause(err);
    match err {
        RunError::BudgetExhausted(exhausted) => failure.with_retry_after(exhausted.retry_after),
        RunError::RateLimited(limited) => failure.with_rate_limit(limited.clone()),
        _ => failure,
    }
}

/// Does a stored record already hold what the request asks for (then it is answered as a
/// cache hit instead of paying for the work again)?
fn satisfies(meta: &ImageMetadata, req: &GenerateRequest) -> bool {
    let backstyle_ok = req
        .backstyle
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .is_none_or(|wanted| {
            meta.selected_records
                .iter()
                .any(|r| r.attribute == "backStyle" && r.record == wanted)
        });
    (!req.enhance || !meta.prompts.enhanced_prompt.is_empty())
        && (!req.image || !meta.artifacts.generated.is_empty())
        && (!req.annotate || !meta.artifacts.annotated.is_empty())
        && backstyle_ok
}
