//! The provenance record: one versioned JSON document per run that says what made its image —
//! series, databases, dress, prompts, models, the raw image, the annotation — with content ids
//! ([`crate::cid`]) for every input and output, plus how long each phase took, what it cost
//! and when it ran.
//!
//! Two views of one record: [`Making`] is what made the image and nothing that varies from
//! one run to the next of the same inputs (no timings, timestamps, cost or request id), so it
//! can go inside the annotated PNG without breaking byte-identical output; [`Record`] adds
//! those and the annotated image's CID, and is stored beside the other artifacts as
//! `<series>/provenance/<subject>.json`. Its JSON Schema is [`SCHEMA_JSON`].
//!
//! Pure data and formatting: the pipeline fills it in, `verify` and the routes read it.

pub mod index;
pub mod verify;

use serde::{Deserialize, Serialize};

use crate::annotate::{self, PngText};
use crate::cid::Cid;

/// The record format version (`"schema"`); a reader refuses versions it does not know.
pub const SCHEMA_VERSION: u32 = 1;

/// The record's JSON Schema, served at `/provenance.schema.json`.
pub const SCHEMA_JSON: &str = include_str!("provenance/schema.json");

/// The store kind and extension of a run's record: `<series>/provenance/<subject>.json`.
pub const RECORD_FILE: (&str, &str) = ("provenance", "json");

/// The record name (`<series>/provenance/<seed>.json`) of the `/v1` record stored at
/// `metadata_path` (`output/<series>/metadata/<seed>.json`, relative to the data dir).
pub fn record_name_for_metadata(metadata_path: &str) -> Option<String> {
    let (dir, seed) = metadata_path
        .strip_prefix("output/")?
        .strip_suffix(".json")?
        .rsplit_once('/')?;
    let series = dir.strip_suffix("/metadata")?;
    let (kind, ext) = RECORD_FILE;
    Some(format!("{series}/{kind}/{seed}.{ext}"))
}

/// Why a provenance document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("the image carries no dalleserver:provenance chunk")]
    Missing,
    #[error("the provenance is not a valid record: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("the provenance has schema {0}; this server reads schema {SCHEMA_VERSION}")]
    Schema(u32),
    #[error(transparent)]
    Png(#[from] annotate::AnnotateError),
}

/// The server that made the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub name: String,
    pub version: String,
    /// The git commit the binary was built from, or "unknown" outside a git checkout.
    pub commit: String,
}

impl Build {
    /// This binary.
    pub fn current() -> Build {
        Build {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            commit: env!("DALLESERVER_GIT_COMMIT").to_string(),
        }
    }
}

/// One prompt text a run wrote, with its CID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// `data`, `title`, `terse`, `prompt`, `enhanced` or `technical` (the artifact kinds).
    pub kind: String,
    pub cid: Cid,
    pub text: String,
}

impl Prompt {
    /// The prompt `text` of `kind`.
    pub fn new(kind: &str, text: &str) -> Prompt {
        Prompt {
            kind: kind.to_string(),
            cid: Cid::of(text.as_bytes()),
            text: text.to_string(),
        }
    }
}

/// The chat enhancement: who rewrote the prompt, or why nobody did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enhancement {
    pub ran: bool,
    pub model: Option<String>,
    /// The chat completion's `id`.
    pub request_id: Option<String>,
    /// Why it was skipped (or that an earlier run's text was reused).
    pub skipped: Option<String>,
}

/// The image request and what the provider answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRequest {
    /// `openai` (or a compatible server) or `mock` (the local picture, no request).
    pub source: String,
    pub model: Option<String>,
    pub size: Option<String>,
    pub quality: Option<String>,
    /// `url`, `b64` or `mock`.
    pub download: String,
    pub revised_prompt: Option<String>,
    /// The answer's `id`, when the provider sends one (OpenAI's image answers carry none).
    pub response_id: Option<String>,
    /// The answer's `created` (Unix seconds).
    pub created: Option<i64>,
}

/// What made the image: every input and choice, none of what varies between two runs of the
/// same inputs. Embedded in the annotated PNG; the first half of a [`Record`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Making {
    pub schema: u32,
    pub series: String,
    /// The CID of the series definition (its JSON as `/v1/series/{name}` answers it).
    pub series_cid: Cid,
    /// The CID of the databases manifest (its JSON as `/v1/databases/` answers it).
    pub databases_cid: Cid,
    /// The address or seed.
    pub subject: String,
    /// The CID of the DalleDress JSON (the `selector` artifact), when written.
    pub dress_cid: Option<Cid>,
    pub dress: serde_json::Value,
    pub prompts: Vec<Prompt>,
    pub enhancement: Enhancement,
    pub image: ImageRequest,
    /// The CID of the raw image as stored (the `generated` artifact).
    pub raw_cid: Cid,
    /// How the caption was drawn; absent when the run wrote no annotated image.
    pub annotation: Option<annotate::Params>,
    pub server: Build,
}

/// How long one phase took; phases that did not run are `skipped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub phase: String,
    pub skipped: bool,
    pub duration_ms: f64,
}

/// What the run's image cost, at the server's price table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Millionths of a US dollar (0 for a mock image).
    pub usd_micros: u64,
    /// The model priced, when an image was requested.
    pub model: Option<String>,
}

/// The full record of one run, as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub making: Making,
    /// The annotated PNG's CID (it embeds [`Making`], so it cannot be inside it).
    pub annotated_cid: Option<Cid>,
    /// The request that started the run.
    pub request_id: String,
    pub phases: Vec<PhaseTiming>,
    pub cost: Cost,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
}

impl Record {
    /// The record as stored: pretty JSON with a final newline. Its CID is that of these bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Reads a stored record, refusing an unknown schema version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Record, ProvenanceError> {
        let record: Record = serde_json::from_slice(bytes)?;
        check_schema(record.making.schema)?;
        Ok(record)
    }
}

fn check_schema(schema: u32) -> Result<(), ProvenanceError> {
    if schema == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(ProvenanceError::Schema(schema))
    }
}

impl Making {
    /// The one-paragraph summary A1111-style readers show: the prompt, then the settings.
    pub fn parameters(&self) -> String {
        let prompt = self
            .prompts
            .iter()
            .find(|p| p.kind == "enhanced")
            .or_else(|| self.prompts.iter().find(|p| p.kind == "prompt"))
            .map_or("", |p| p.text.as_str());
        let unknown = "default";
        format!(
            "{}\nModel: {}, Size: {}, Quality: {}, Series: {}, Address: {}",
            prompt.trim(),
            self.image.model.as_deref().unwrap_or(&self.image.source),
            self.image.size.as_deref().unwrap_or(unknown),
            self.image.quality.as_deref().unwrap_or(unknown),
            self.series,
            self.subject,
        )
    }

    /// The texts the annotated PNG carries: [`Making::parameters`] and this document.
    pub fn png_text(&self) -> Result<PngText, serde_json::Error> {
        Ok(PngText {
            parameters: Some(self.parameters()),
            provenance: Some(serde_json::to_string(self)?),
        })
    }

    /// The document embedded in an annotated PNG.
    pub fn from_png(png: &[u8]) -> Result<Making, ProvenanceError> {
        let text = annotate::read_text(png)?;
        let json = text.provenance.ok_or(ProvenanceError::Missing)?;
        let making: Making = serde_json::from_str(&json)?;
        check_schema(making.schema)?;
        Ok(making)
    }
}

/// Now as RFC 3339 in UTC, whole seconds.
pub fn timestamp_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests;
