//! Image-record operations over the data directory: list, get (through an index of record
//! ids, see [`Records`]), soft delete into `<data>/archives`, and export of the prompt texts.
//! All blocking file I/O.
//!
//! Differences from upstream, on purpose: an export directory must stay inside the data
//! directory, symlinks included (upstream wrote wherever a client asked); the exported
//! "technical" text is the technical prompt (upstream wrote title + terse); delete moves the
//! metadata file last and fsyncs, so a crash leaves a visible record rather than an orphan;
//! and a delete skips artifacts whose file is already gone instead of failing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::FileType;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::error::{CatalogueError, Code};
use super::metadata::{self, ImageMetadata};
use crate::attributes::selection::valid_filename;
use crate::attributes::series::normalize_name;

/// One metadata record found on disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The metadata file, relative to the data directory (`output/<s>/metadata/<seed>.json`).
    pub path: String,
    pub metadata: ImageMetadata,
    /// True when the record lives under `<data>/archives` (soft-deleted).
    pub archived: bool,
}

/// Every record in `<data>/output/*/metadata/*.json` (and `<data>/archives/…` when asked),
/// optionally only those of one series, sorted by input, series name and path. One unreadable
/// or invalid record fails the whole listing with `metadata_invalid`, as upstream.
pub fn list(
    data_root: &Path,
    series: Option<&str>,
    include_archived: bool,
) -> Result<Vec<Record>, CatalogueError> {
    let mut records = Vec::new();
    collect(data_root, "output", false, &mut records)?;
    if include_archived {
        collect(data_root, "archives", true, &mut records)?;
    }
    if let Some(series) = series.filter(|s| !s.is_empty()) {
        records.retain(|r| r.metadata.series.name == series);
    }
    records.sort_by(list_order);
    Ok(records)
}

fn collect(
    data_root: &Path,
    area: &str,
    archived: bool,
    out: &mut Vec<Record>,
) -> Result<(), CatalogueError> {
    let base = data_root.join(area);
    for (series_dir, kind) in entries(&base)? {
        if !kind.is_dir() {
            continue;
        }
        let dir = base.join(&series_dir).join("metadata");
        for (file, kind) in entries(&dir)? {
            // Dot files are editor, AppleDouble or temporary files, never records.
            if !kind.is_file() || !file.ends_with(".json") || file.starts_with('.') {
                continue;
            }
            // A record deleted between listing and reading is simply gone.
            if let Some(metadata) = metadata::read(&dir.join(&file))? {
                out.push(Record {
                    path: format!("{area}/{series_dir}/metadata/{file}"),
                    metadata,
                    archived,
                });
            }
        }
    }
    Ok(())
}

/// Directory entries with UTF-8 names (symlinks are not followed), sorted; a missing
/// directory is empty.
fn entries(dir: &Path) -> Result<Vec<(String, FileType)>, CatalogueError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(format!("cannot list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?;
        let kind = entry
            .file_type()
            .map_err(|e| io_error(format!("cannot stat in {}", dir.display()), e))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, kind));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn io_error(message: String, e: std::io::Error) -> CatalogueError {
    CatalogueError::new(Code::Internal, message).with_cause(e)
}

/// The records of one data directory, with an in-memory index from `imageId` to the record
/// files, so finding one record reads one file instead of all of them. Clones share the index.
///
/// The index is a hint, never the truth: a hit is read back and must still carry the id (a
/// record rewritten or moved behind our back is a miss), and a miss rescans the whole output
/// area, as the lookup always did, and rebuilds the index from that scan. So files written by
/// another process are still found, and the index is first built by the first lookup's scan.
/// The server's own writes ([`Records::write`]) and deletes keep it current without a rescan.
#[derive(Debug, Clone)]
pub struct Records {
    root: PathBuf,
    index: Arc<Mutex<Option<Index>>>,
}

/// Live record files by `imageId`, and the id each file was last seen with.
#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, BTreeSet<String>>,
    by_path: HashMap<String, String>,
}

impl Index {
    fn from_records(records: &[Record]) -> Index {
        let mut index = Index::default();
        for record in records.iter().filter(|r| !r.archived) {
            index.insert(&record.path, &record.metadata.image_id);
        }
        index
    }

    fn insert(&mut self, path: &str, id: &str) {
        self.remove(path);
        self.by_id
            .entry(id.to_string())
            .or_default()
            .insert(path.to_string());
        self.by_path.insert(path.to_string(), id.to_string());
    }

    fn remove(&mut self, path: &str) {
        let Some(id) = self.by_path.remove(path) else {
            return;
        };
        if let Some(paths) = self.by_id.get_mut(&id) {
            paths.remove(path);
            if paths.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }
}

impl Records {
    /// The records under `data_root`; nothing is read until the first lookup.
    pub fn new(data_root: PathBuf) -> Records {
        Records {
            root: data_root,
            index: Arc::new(Mutex::new(None)),
        }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Option<Index>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live (not archived) record by exact `imageId`, else the first by seed in list order
    /// (a seed can match records of several series, as upstream).
    ///
    /// Unlike a full listing, a record found through the index is answered even while some
    /// other record file is invalid; a miss (every seed lookup among them) still scans and
    /// fails on an invalid record, as before.
    pub fn get(&self, id: &str) -> Result<Record, CatalogueError> {
        let id = id.trim();
        if id.is_empty() {
            return Err(CatalogueError::new(
                Code::InvalidInput,
                "image id is required",
            ));
        }
        if let Some(record) = self.indexed(id)? {
            return Ok(record);
        }
        let records = list(&self.root, None, false)?;
        *self.index() = Some(Index::from_records(&records));
        let by_id = records.iter().position(|r| r.metadata.image_id == id);
        let index = by_id.or_else(|| records.iter().position(|r| r.metadata.seed == id));
        index
            .and_then(|i| records.into_iter().nth(i))
            .ok_or_else(|| {
                CatalogueError::new(Code::ArtifactMissing, "image metadata record was not found")
            })
    }

    /// The first record in list order among the indexed files that still carry `id`.
    fn indexed(&self, id: &str) -> Result<Option<Record>, CatalogueError> {
        let paths: Vec<String> = match self.index().as_ref() {
            Some(index) => index.by_id.get(id).into_iter().flatten().cloned().collect(),
            None => return Ok(None),
        };
        let mut found = Vec::new();
        for path in paths {
            match metadata::read(&self.root.join(&path))? {
                Some(metadata) if metadata.image_id == id => found.push(Record {
                    path,
                    metadata,
                    archived: false,
                }),
                // Gone or rewritten behind our back: the rescan on a miss corrects the index.
                _ => {}
            }
        }
        Ok(found.into_iter().min_by(list_order))
    }

    /// Validates and writes a record atomically (as [`metadata::write`]) at `path`, normally
    /// [`metadata::metadata_path`] under this data directory, and indexes it.
    pub fn write(&self, path: &Path, meta: &ImageMetadata) -> Result<(), CatalogueError> {
        metadata::write(path, meta)?;
        if let Some(relative) = self.live_path(path) {
            if let Some(index) = self.index().as_mut() {
                index.insert(&relative, &meta.image_id);
            }
        }
        Ok(())
    }

    /// `path` as a listing would name it, when a listing would include it as a live record.
    fn live_path(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.root).ok()?;
        let parts: Vec<&str> = relative
            .components()
            .map(|c| match c {
                Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect::<Option<_>>()?;
        match parts.as_slice() {
            ["output", series, "metadata", file]
                if file.ends_with(".json") && !file.starts_with('.') =>
            {
                Some(format!("output/{series}/metadata/{file}"))
            }
            _ => None,
        }
    }

    /// Soft delete: moves the generated and annotated images (when recorded and present) and
    /// then the metadata file from `<data>/output/…` to the same place under
    /// `<data>/archives/…`, and drops the record from the index.
    pub fn delete(&self, id: &str) -> Result<(), CatalogueError> {
        let record = self.get(id)?;
        let result = archive(&self.root, &record);
        // Forgotten even when a move failed: a lookup then rereads the disk rather than trust
        // a file that may be half moved.
        if let Some(index) = self.index().as_mut() {
            index.remove(&record.path);
        }
        result
    }

    /// Writes the chosen, non-blank prompt texts of a live record as `<name>.txt` files. With
    /// no flag set: prompt, data, title, terse and enhanced. The directory defaults to
    /// `<data>/output/<series>/exports/<seed>`; a relative one is taken from the data directory.
    pub fn export(&self, id: &str, opts: &ExportOptions) -> Result<ExportResult, CatalogueError> {
        let record = self.get(id)?;
        export_record(&self.root, &record, opts)
    }

    /// Whether the index currently maps `id` to some file.
    #[cfg(test)]
    pub(crate) fn is_indexed(&self, id: &str) -> bool {
        self.index()
            .as_ref()
            .is_some_and(|index| index.by_id.contains_key(id))
    }
}

/// The order of [`list`]: input, series name, then path.
fn list_order(a: &Record, b: &Record) -> std::cmp::Ordering {
    (&a.metadata.input, &a.metadata.series.name, &a.path).cmp(&(
        &b.metadata.input,
        &b.metadata.series.name,
        &b.path,
    ))
}

/// Moves a live record's files into `<data>/archives`.
fn archive(data_root: &Path, record: &Record) -> Result<(), CatalogueError> {
    let output = data_root.join("output");
    let archives = data_root.join("archives");
    let artifacts = &record.metadata.artifacts;
    let mut moves = Vec::new();
    // Every path is checked before anything moves, so a bad record moves nothing.
    for recorded in [&artifacts.generated, &artifacts.annotated] {
        if recorded.is_empty() {
            continue;
        }
        // Upstream records hold absolute paths, ours relative ones.
        let relative =
            inside(&output, &data_root.join(recorded)).ok_or_else(|| outside(recorded))?;
        let source = output.join(&relative);
        if std::fs::symlink_metadata(&source).is_ok_and(|m| !m.is_dir()) {
            moves.push((source, archives.join(relative)));
        }
    }
    let source = data_root.join(&record.path);
    let relative = inside(&output, &source).ok_or_else(|| outside(&record.path))?;
    moves.push((output.join(&relative), archives.join(relative)));
    for (from, to) in moves {
        move_file(&from, &to)?;
    }
    Ok(())
}

fn outside(path: &str) -> CatalogueError {
    CatalogueError::new(
        Code::InvalidInput,
        format!("image path is outside the output directory: {path}"),
    )
}

/// Renames `from` to `to` (creating its directory) and makes both directory changes durable.
fn move_file(from: &Path, to: &Path) -> Result<(), CatalogueError> {
    let fail = |e| io_error(format!("cannot archive {}", from.display()), e);
    let to_dir = to.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(to_dir).map_err(fail)?;
    std::fs::rename(from, to).map_err(fail)?;
    crate::storage::sync_dir(to_dir).map_err(fail)?;
    crate::storage::sync_dir(from.parent().unwrap_or(Path::new("."))).map_err(fail)
}

/// `path` relative to `base` after resolving `.` and `..` lexically, when it lies strictly
/// inside `base`; `None` otherwise.
fn inside(base: &Path, path: &Path) -> Option<PathBuf> {
    let relative = lexical(path)?
        .strip_prefix(lexical(base)?)
        .ok()?
        .to_path_buf();
    (!relative.as_os_str().is_empty()).then_some(relative)
}

/// `path` with `.` dropped and `..` applied; `None` when `..` climbs above the start.
fn lexical(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                _ => return None,
            },
            other => out.push(other),
        }
    }
    Some(out)
}

/// What to export; JSON keys match case-insensitively (`dir`, `Dir`, `includePrompt`,
/// `IncludePrompt`, `includeprompt`…) because upstream's options had Go field names and no
/// JSON tags. Unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOptions {
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
fn export_record(
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
    Ok(ExportResult {
        dir: display_relative(data_root, &dir),
        files,
    })
}

/// The export directory, which must end up inside the data directory both lexically and
/// after following the symlinks of its existing part, so a client cannot make the server
/// write outside it.
fn export_dir(
    data_root: &Path,
    meta: &ImageMetadata,
    requested: Option<&str>,
) -> Result<PathBuf, CatalogueError> {
    let invalid = |msg: &str| CatalogueError::new(Code::InvalidInput, msg);
    let requested = requested.map(str::trim).unwrap_or("");
    let candidate = if requested.is_empty() {
        data_root
            .join("output")
            .join(normalize_name(&meta.series.name))
            .join("exports")
            .join(&*valid_filename(&meta.seed))
    } else if requested.starts_with('~') {
        return Err(invalid("export dir must not start with ~"));
    } else {
        data_root.join(requested)
    };
    let escape = || invalid("export dir must be inside the data directory");
    let relative = inside(data_root, &candidate).ok_or_else(escape)?;
    let dir = data_root.join(relative);
    let root = std::fs::canonicalize(data_root)
        .map_err(|e| io_error(format!("cannot resolve {}", data_root.display()), e))?;
    let mut existing = dir.as_path();
    while std::fs::symlink_metadata(existing).is_err() {
        existing = existing.parent().ok_or_else(escape)?;
    }
    match std::fs::canonicalize(existing) {
        Ok(real) if real.starts_with(&root) => Ok(dir),
        _ => Err(escape()),
    }
}

fn display_relative(data_root: &Path, path: &Path) -> String {
    path.strip_prefix(data_root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests;
