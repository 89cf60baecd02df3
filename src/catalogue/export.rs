//! Export of a record's prompt texts as `<name>.txt` files into a directory under
//! `<data>/exports/`, with the run's provenance record (`provenance.json`), its raw image
//! (`raw.png`) and `manifest.json`, the CID of every file of the bundle. Blocking file I/O.
//!
//! Differences from upstream, on purpose: the directory is relative to `<data>/exports/` and
//! can never leave it, symlinks included (upstream wrote wherever a client asked, even onto the
//! path of an artifact, which then blocked that address for good); the exported "technical"
//! text is the technical prompt (upstream wrote title + terse).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{CatalogueError, Code};
use super::metadata::ImageMetadata;
use super::records::{Record, io_error};
use crate::attributes::selection::valid_filename;
use crate::attributes::series::normalize_name;

/// What to export; JSON keys match case-insensitively (`dir`, `Dir`, `includePrompt`,
/// `IncludePrompt`, `includeprompt`…) because upstream's options had Go field names and no
/// JSON tags. Unknown keys are ignored. Serialised (camelCase) as the options understood,
/// for an idempotent export's fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportOptions {
    /// The directory, relative to `<data>/exports/`: `/`-separated names, none of them empty,
    /// `.` or `..` (an absolute path is refused too). Blank or absent:
    /// `<series>/<seed>`. Exports live apart from everything else in the data directory, so
    /// no export can put a directory where a run's file or a record belongs.
    pub dir: Option<String>,
    pub include_prompt: Option<bool>,
    pub include_data: Option<bool>,
    pub include_title: Option<bool>,
    pub include_terse: Option<bool>,
    pub include_enhanced: Option<bool>,
    pub include_technical: Option<bool>,
}

impl ExportOptions {
    /// The options of an already parsed JSON body (`null` = none); a wrongly typed field or a
    /// non-object body is `invalid_input`.
    pub fn from_json(value: &serde_json::Value) -> Result<ExportOptions, CatalogueError> {
        ExportOptions::deserialize(value).map_err(|e| {
            CatalogueError::new(Code::InvalidInput, "invalid export options").with_cause(e)
        })
    }
}

impl<'de> Deserialize<'de> for ExportOptions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use serde_json::Value;
        let map = Option::<serde_json::Map<String, Value>>::deserialize(deserializer)?;
        let mut opts = ExportOptions::default();
        for (key, value) in map.unwrap_or_default() {
            let key = key.to_lowercase();
            if key == "dir" {
                opts.dir = match value {
                    Value::Null => None,
                    Value::String(s) => Some(s),
                    _ => return Err(D::Error::custom("dir must be a string")),
                };
                continue;
            }
            let slot = match key.as_str() {
                "includeprompt" => &mut opts.include_prompt,
                "includedata" => &mut opts.include_data,
                "includetitle" => &mut opts.include_title,
                "includeterse" => &mut opts.include_terse,
                "includeenhanced" => &mut opts.include_enhanced,
                "includetechnical" => &mut opts.include_technical,
                _ => continue,
            };
            *slot = match value {
                Value::Null => None,
                Value::Bool(b) => Some(b),
                _ => return Err(D::Error::custom(format!("{key} must be a boolean"))),
            };
        }
        Ok(opts)
    }
}

/// Where an export went: the directory and each written file, relative to the data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportResult {
    pub dir: String,
    pub files: BTreeMap<String, String>,
}

/// [`Records::export`] for an already found record.
pub(super) fn export_record(
    data_root: &Path,
    record: &Record,
    opts: &ExportOptions,
) -> Result<ExportResult, CatalogueError> {
    let meta = &record.metadata;
    let dir = export_dir(data_root, meta, opts.dir.as_deref())?;
    let p = &meta.prompts;
    let texts = [
        ("prompt", opts.include_prompt, &p.prompt, true),
        ("data", opts.include_data, &p.data_prompt, true),
        ("title", opts.include_title, &p.title_prompt, true),
        ("terse", opts.include_terse, &p.terse_prompt, true),
        ("enhanced", opts.include_enhanced, &p.enhanced_prompt, true),
        (
            "technical",
            opts.include_technical,
            &p.technical_prompt,
            false,
        ),
    ];
    let any_flag = texts.iter().any(|(_, flag, _, _)| *flag == Some(true));
    std::fs::create_dir_all(&dir).map_err(|e| match e.kind() {
        // The client named a path through or onto an existing file.
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
            CatalogueError::new(Code::InvalidInput, "export dir is not a directory")
        }
        _ => io_error(format!("cannot create {}", dir.display()), e),
    })?;
    let mut files = BTreeMap::new();
    for (name, flag, text, by_default) in texts {
        let wanted = if any_flag {
            flag == Some(true)
        } else {
            by_default
        };
        if !wanted || text.trim().is_empty() {
            continue;
        }
        let path = dir.join(format!("{name}.txt"));
        crate::storage::write_atomic(&path, text.as_bytes())
            .map_err(|e| io_error(format!("cannot write {}", path.display()), e))?;
        files.insert(name.to_string(), display_relative(data_root, &path));
    }
    bundle_provenance(data_root, record, &dir, &mut files)?;
    Ok(ExportResult {
        dir: display_relative(data_root, &dir),
        files,
    })
}

/// Adds the run's provenance record and its raw image (only if its bytes still have the
/// recorded CID) to the export, then `manifest.json`: the CID of every file the export wrote.
fn bundle_provenance(
    data_root: &Path,
    record: &Record,
    dir: &Path,
    files: &mut BTreeMap<String, String>,
) -> Result<(), CatalogueError> {
    let write = |name: &str, bytes: &[u8], files: &mut BTreeMap<String, String>| {
        let path = dir.join(name);
        crate::storage::write_atomic(&path, bytes)
            .map_err(|e| io_error(format!("cannot write {}", path.display()), e))?;
        let key = name.split('.').next().unwrap_or(name).to_string();
        files.insert(key, display_relative(data_root, &path));
        Ok::<_, CatalogueError>(())
    };
    let output = data_root.join("output");
    let provenance = crate::provenance::record_name_for_metadata(&record.path)
        .and_then(|name| std::fs::read(output.join(name)).ok())
        .and_then(|bytes| {
            let parsed = crate::provenance::Record::from_bytes(&bytes).ok()?;
            Some((bytes, parsed))
        });
    if let Some((bytes, parsed)) = provenance {
        write("provenance.json", &bytes, files)?;
        let making = &parsed.making;
        let stem = valid_filename(&making.subject);
        let raw = std::fs::read(
            output
                .join(&making.series)
                .join("generated")
                .join(format!("{stem}.png")),
        );
        if let Ok(raw) = raw.as_ref().map(Vec::as_slice)
            && crate::cid::Cid::of(raw) == making.raw_cid
        {
            write("raw.png", raw, files)?;
        }
    }
    let mut manifest = BTreeMap::new();
    for (name, relative) in files.iter() {
        let bytes = std::fs::read(data_root.join(relative))
            .map_err(|e| io_error(format!("cannot read {relative}"), e))?;
        let file = Path::new(relative)
            .file_name()
            .map_or_else(|| name.clone(), |f| f.to_string_lossy().into_owned());
        manifest.insert(file, crate::cid::Cid::of(&bytes));
    }
    let manifest = serde_json::json!({ "schema": 1, "cids": manifest });
    let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| {
        CatalogueError::new(Code::Internal, "cannot encode the manifest").with_cause(e)
    })?;
    bytes.push(b'\n');
    write("manifest.json", &bytes, files)
}

/// Where every export goes, under the data directory.
pub const EXPORTS: &str = "exports";

/// The export directory under `<data>/exports/`: `requested` checked as
/// [`ExportOptions::dir`] says, and the part of it that exists followed through its symlinks,
/// which must not lead out of `<data>/exports/`.
fn export_dir(
    data_root: &Path,
    meta: &ImageMetadata,
    requested: Option<&str>,
) -> Result<PathBuf, CatalogueError> {
    let invalid = |msg: &str| CatalogueError::new(Code::InvalidInput, msg);
    let relative = match requested.map(str::trim).filter(|s| !s.is_empty()) {
        None => PathBuf::from(normalize_name(&meta.series.name)).join(&*valid_filename(&meta.seed)),
        Some(dir) => relative_export_dir(dir)?,
    };
    let base = data_root.join(EXPORTS);
    std::fs::create_dir_all(&base)
        .map_err(|e| io_error(format!("cannot create {}", base.display()), e))?;
    let resolve = |path: &Path| {
        std::fs::canonicalize(path)
            .map_err(|e| io_error(format!("cannot resolve {}", path.display()), e))
    };
    let real_base = resolve(&base)?;
    if real_base != resolve(data_root)?.join(EXPORTS) {
        return Err(CatalogueError::new(
            Code::Internal,
            format!("{} is a symlink", base.display()),
        ));
    }
    let dir = base.join(relative);
    let mut existing = dir.as_path();
    while std::fs::symlink_metadata(existing).is_err() {
        existing = existing.parent().unwrap_or(&base);
    }
    match std::fs::canonicalize(existing) {
        Ok(real) if real.starts_with(&real_base) => Ok(dir),
        _ => Err(invalid("export dir must stay inside the exports directory")),
    }
}

/// A client's export dir as a relative path of plain names.
fn relative_export_dir(dir: &str) -> Result<PathBuf, CatalogueError> {
    let invalid = |msg: &str| CatalogueError::new(Code::InvalidInput, msg);
    if dir.starts_with('/') {
        return Err(invalid(
            "export dir must be relative to the exports directory",
        ));
    }
    for part in dir.split('/') {
        match part {
            "" => return Err(invalid("export dir must not have empty path components")),
            "." | ".." => return Err(invalid("export dir must not contain . or ..")),
            _ if part.chars().any(char::is_control) => {
                return Err(invalid("export dir must not contain control characters"));
            }
            _ => {}
        }
    }
    Ok(PathBuf::from(dir))
}

fn display_relative(data_root: &Path, path: &Path) -> String {
    path.strip_prefix(data_root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}
