//! The image metadata record: the authoritative JSON document of one `/v1` image at
//! `<data>/output/<series>/metadata/<seed>.json`, with the identity hashes that tie it to
//! its input, series, recipe and databases.
//!
//! Differences from upstream, on purpose: artifact paths are stored relative to the data
//! directory (upstream stored absolute paths, which break when the directory moves);
//! `prompts.technicalPrompt` is recorded (upstream had no place for it); `series.source` is
//! the series' own `builtin`/`user` (upstream probed a legacy directory and so always wrote
//! `embedded`); and a stage may be `failed`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{CatalogueError, Code};
use crate::attributes::dress::DalleDress;
use crate::attributes::selection::valid_filename;
use crate::attributes::series::{Series, normalize_name};

/// The document format version.
pub const METADATA_VERSION: &str = "1.0.0";
/// The recipe used when a request names none.
pub const DEFAULT_RECIPE: &str = "default";
/// The only recipe version there is.
pub const RECIPE_VERSION: &str = "1.0.0";

/// One image's record, serialised with upstream's camelCase names and omission rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ImageMetadata {
    pub metadata_version: String,
    /// `sha256:` + hex, see [`image_id`].
    pub image_id: String,
    pub input: String,
    pub seed: String,
    pub series: SeriesRef,
    pub recipe: Recipe,
    pub database: DatabaseRef,
    pub selected_records: Vec<SelectedRecord>,
    pub prompts: Prompts,
    pub artifacts: Artifacts,
    pub stages: Stages,
    pub status: Status,
}

/// The series an image was made under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesRef {
    pub name: String,
    /// See [`series_hash`].
    pub hash: String,
    pub source: String,
}

/// The prompt recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    pub name: String,
    pub version: String,
}

impl Default for Recipe {
    fn default() -> Recipe {
        Recipe {
            name: DEFAULT_RECIPE.to_string(),
            version: RECIPE_VERSION.to_string(),
        }
    }
}

/// The database set an image's attributes were drawn from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DatabaseRef {
    pub version: String,
    pub archive_hash: String,
}

/// One selected attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SelectedRecord {
    pub attribute: String,
    pub database: String,
    pub row_index: usize,
    pub record: String,
}

/// The prompt texts; each is omitted when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Prompts {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data_prompt: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub title_prompt: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub terse_prompt: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub enhanced_prompt: String,
    /// Ours: the technical specification sent with the image request.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub technical_prompt: String,
}

/// Image files, relative to the data directory (e.g. `output/empty/generated/<seed>.png`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Artifacts {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub generated: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub annotated: String,
}

/// The five pipeline stages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stages {
    pub selected: Stage,
    pub prompted: Stage,
    pub enhanced: Stage,
    pub generated: Stage,
    pub annotated: Stage,
}

/// How one stage ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Stage {
    pub status: StageStatus,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cache_hit: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl Stage {
    /// A stage with just a status.
    pub fn with(status: StageStatus) -> Stage {
        Stage {
            status,
            ..Stage::default()
        }
    }
}

/// A stage's outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Complete,
    #[default]
    Skipped,
    Failed,
}

/// The run as a whole; `cacheHit` is set on answers served from an existing record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    pub completed: bool,
    pub cache_hit: bool,
}

/// `sha256:` + hex of the series' compact JSON, `source` included. `modifiedAt` is left out:
/// it is the file's mtime, and touching a file must not change every image id.
pub fn series_hash(series: &Series) -> String {
    let series = Series {
        modified_at: String::new(),
        ..series.clone()
    };
    let json = serde_json::to_vec(&series).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(json)))
}

/// `sha256:` + hex of the eight identity fields joined with NUL, as the Go library computes
/// it. Prompts, backstyle and artifacts are deliberately not part of an image's identity.
#[allow(clippy::too_many_arguments)] // the identity is exactly these eight fields, in this order
pub fn image_id(
    input: &str,
    seed: &str,
    series_name: &str,
    series_hash: &str,
    recipe_name: &str,
    recipe_version: &str,
    db_version: &str,
    archive_hash: &str,
) -> String {
    let fields = [
        input,
        seed,
        series_name,
        series_hash,
        recipe_name,
        recipe_version,
        db_version,
        archive_hash,
    ];
    format!("sha256:{}", hex::encode(Sha256::digest(fields.join("\0"))))
}

/// `<data>/output/<series>/metadata/<seed>.json`, with both parts made path-safe.
pub fn metadata_path(data_root: &Path, series: &str, seed: &str) -> PathBuf {
    data_root
        .join("output")
        .join(normalize_name(series))
        .join("metadata")
        .join(format!("{}.json", valid_filename(seed)))
}

impl ImageMetadata {
    /// A fresh record for a dress: selection and prompts complete, everything else skipped,
    /// `imageId` computed. The caller adds enhancement, artifacts and stage outcomes.
    pub fn from_dress(
        input: &str,
        seed: &str,
        series: &Series,
        recipe: Recipe,
        database: DatabaseRef,
        dress: &DalleDress,
        prompts: &crate::prompts::Prompts,
    ) -> ImageMetadata {
        let mut meta = ImageMetadata {
            metadata_version: METADATA_VERSION.to_string(),
            input: input.to_string(),
            seed: seed.to_string(),
            series: SeriesRef {
                name: series.suffix.clone(),
                hash: series_hash(series),
                source: series.source.clone(),
            },
            recipe,
            database,
            selected_records: dress
                .attribs
                .iter()
                .map(|a| SelectedRecord {
                    attribute: a.name.clone(),
                    database: a.database.clone(),
                    row_index: a.selector,
                    record: a.value.clone(),
                })
                .collect(),
            prompts: Prompts {
                prompt: prompts.base.clone(),
                data_prompt: prompts.data.clone(),
                title_prompt: prompts.title.clone(),
                terse_prompt: prompts.terse.clone(),
                enhanced_prompt: dress.enhanced_prompt.clone(),
                technical_prompt: prompts.technical.clone(),
            },
            artifacts: Artifacts::default(),
            stages: Stages {
                selected: Stage::with(StageStatus::Complete),
                prompted: Stage::with(StageStatus::Complete),
                ..Stages::default()
            },
            status: Status {
                completed: true,
                cache_hit: false,
            },
            image_id: String::new(),
        };
        meta.image_id = meta.compute_image_id();
        meta
    }

    /// [`image_id`] of this record's identity fields.
    pub fn compute_image_id(&self) -> String {
        image_id(
            &self.input,
            &self.seed,
            &self.series.name,
            &self.series.hash,
            &self.recipe.name,
            &self.recipe.version,
            &self.database.version,
            &self.database.archive_hash,
        )
    }

    /// The checks upstream ran on every read and write; failure is `metadata_invalid`.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        let required = [
            ("metadataVersion", &self.metadata_version),
            ("input", &self.input),
            ("seed", &self.seed),
            ("series.name", &self.series.name),
            ("recipe.name", &self.recipe.name),
            ("recipe.version", &self.recipe.version),
        ];
        match required.iter().find(|(_, v)| v.trim().is_empty()) {
            Some((field, _)) => Err(CatalogueError::new(
                Code::MetadataInvalid,
                format!("image metadata {field} is required"),
            )),
            None => Ok(()),
        }
    }
}

/// Reads and validates a record; a missing file is `None`, anything unusable is
/// `metadata_invalid`.
pub fn read(path: &Path) -> Result<Option<ImageMetadata>, CatalogueError> {
    let invalid = |what: &str| {
        CatalogueError::new(
            Code::MetadataInvalid,
            format!("{what} image metadata {}", path.display()),
        )
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid("cannot read").with_cause(e)),
    };
    let meta: ImageMetadata =
        serde_json::from_slice(&bytes).map_err(|e| invalid("cannot parse").with_cause(e))?;
    meta.validate()?;
    Ok(Some(meta))
}

/// Validates, then writes the record atomically as indented JSON plus a newline.
pub fn write(path: &Path, meta: &ImageMetadata) -> Result<(), CatalogueError> {
    meta.validate()?;
    let mut json = serde_json::to_vec_pretty(meta).map_err(|e| {
        CatalogueError::new(Code::Internal, "cannot serialise image metadata").with_cause(e)
    })?;
    json.push(b'\n');
    crate::storage::write_atomic(path, &json).map_err(|e| {
        CatalogueError::new(
            Code::Internal,
            format!("cannot write image metadata {}", path.display()),
        )
        .with_cause(e)
    })
}

#[cfg(test)]
mod tests;
