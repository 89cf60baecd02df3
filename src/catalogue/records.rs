//! Image-record operations over the data directory: a paged listing and lookups through an
//! index of the record files (see [`Records`]), soft delete into `<data>/archives`, and export
//! of the prompt texts ([`super::export`]). All blocking file I/O.
//!
//! Differences from upstream, on purpose: the listing is paged and ordered by `imageId` (so a
//! page is found without reading every record, and `after=<imageId>` stays a valid cursor when
//! records are deleted in between; upstream answered every record at once, sorted by input);
//! delete moves the metadata file last and fsyncs, so a crash leaves a visible record rather
//! than an orphan; and a delete skips artifacts whose file is already gone instead of failing.

use std::collections::{BTreeSet, HashMap};
use std::fs::FileType;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::error::{CatalogueError, Code};
use super::export::export_record;
pub use super::export::{EXPORTS, ExportOptions, ExportResult};
use super::metadata::{self, ImageMetadata};
use crate::domain::{ImageRef, SeriesName};

/// One metadata record found on disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The metadata file, relative to the data directory (`output/<s>/metadata/<seed>.json`).
    pub path: String,
    pub metadata: ImageMetadata,
    /// True when the record lives under `<data>/archives` (soft-deleted).
    pub archived: bool,
}

/// One page of the listing ([`Records::page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<Record>,
    /// The `imageId` to continue after, when there are more records.
    pub next: Option<String>,
}

/// Every record in `<data>/output/*/metadata/*.json` (and `<data>/archives/…` when asked),
/// optionally only those of one series, each read in full, in list order (`imageId`, then
/// path). One unreadable or invalid record fails the whole listing with `metadata_invalid`, as
/// upstream. For tools and tests: the HTTP listing pages through [`Records::page`].
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
    for (path, full) in record_files(data_root, area)? {
        // A record deleted between listing and reading is simply gone.
        if let Some(metadata) = metadata::read(&full)? {
            out.push(Record {
                path,
                metadata,
                archived,
            });
        }
    }
    Ok(())
}

/// The record files of `<data>/<area>/*/metadata/`: each one's path relative to the data
/// directory, and in full. Dot files are editor, AppleDouble or temporary files, never records.
fn record_files(data_root: &Path, area: &str) -> Result<Vec<(String, PathBuf)>, CatalogueError> {
    let base = data_root.join(area);
    let mut out = Vec::new();
    for (series_dir, kind) in entries(&base)? {
        if !kind.is_dir() {
            continue;
        }
        let dir = base.join(&series_dir).join("metadata");
        for (file, kind) in entries(&dir)? {
            if kind.is_file() && file.ends_with(".json") && !file.starts_with('.') {
                let full = dir.join(&file);
                out.push((format!("{area}/{series_dir}/metadata/{file}"), full));
            }
        }
    }
    Ok(out)
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

pub(super) fn io_error(message: String, e: std::io::Error) -> CatalogueError {
    CatalogueError::new(Code::Internal, message).with_cause(e)
}

/// The records of one data directory, with an in-memory index of the live record files: for
/// each file its size and mtime, and the `imageId`, seed and series it was last read with. So
/// finding one record reads one file, and a page of the listing reads the page's files (plus
/// any file that is new or changed since it was last read) instead of all of them. Clones
/// share the index.
///
/// The index is a hint, never the truth. A lookup hit is read back and must still carry the
/// id (a record rewritten or moved behind our back is a miss). A miss, and every page, first
/// brings the index up to date: the record directories are listed and each file `stat`ed,
/// and a file is parsed again only when its size or mtime moved (or its mtime was too recent
/// to be trusted). So files written or removed by another process are seen, and one invalid
/// record still fails a listing, as a full read does. The server's own writes
/// ([`Records::write`]) and deletes keep it current without that.
#[derive(Debug, Clone)]
pub struct Records {
    root: PathBuf,
    index: Arc<Mutex<Option<Index>>>,
}

/// Live record files by path (relative to the data directory), and the paths of each
/// `imageId`.
#[derive(Debug, Default)]
struct Index {
    files: HashMap<String, Entry>,
    by_id: HashMap<String, BTreeSet<String>>,
}

/// What the index knows of one record file.
#[derive(Debug, Clone)]
struct Entry {
    stamp: Stamp,
    /// The stamp cannot be trusted yet (see [`RACY`]): parse the file again at the next look.
    racy: bool,
    id: String,
    seed: String,
    series: String,
}

/// What must stay equal for a file to count as unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

/// A file whose mtime is this close to (or after) the moment it was read may change again
/// without its mtime moving, on file systems with coarse timestamps (FAT keeps 2 s).
const RACY: Duration = Duration::from_secs(2);

impl Stamp {
    /// The stamp of `path` (not following symlinks); `None` when it is gone.
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    fn racy(&self, read_at: SystemTime) -> bool {
        self.modified
            .and_then(|m| m.checked_add(RACY))
            .is_none_or(|settled| read_at < settled)
    }
}

impl Entry {
    fn new(meta: &ImageMetadata, stamp: Stamp, read_at: SystemTime) -> Entry {
        Entry {
            stamp,
            racy: stamp.racy(read_at),
            id: meta.image_id.clone(),
            seed: meta.seed.clone(),
            series: meta.series.name.clone(),
        }
    }
}

impl Index {
    fn insert(&mut self, path: &str, entry: Entry) {
        self.remove(path);
        self.by_id
            .entry(entry.id.clone())
            .or_default()
            .insert(path.to_string());
        self.files.insert(path.to_string(), entry);
    }

    fn remove(&mut self, path: &str) {
        let Some(entry) = self.files.remove(path) else {
            return;
        };
        if let Some(paths) = self.by_id.get_mut(&entry.id) {
            paths.remove(path);
            if paths.is_empty() {
                self.by_id.remove(&entry.id);
            }
        }
    }

    /// The indexed files matching `keep`, in list order (`imageId`, then path).
    fn ordered(&self, keep: impl Fn(&Entry) -> bool) -> Vec<(&str, &str)> {
        let mut chosen: Vec<(&str, &str)> = self
            .files
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(path, e)| (e.id.as_str(), path.as_str()))
            .collect();
        chosen.sort_unstable();
        chosen
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

    /// The index brought up to date with the disk (see [`Records`]); on a failure (an
    /// unreadable or invalid record) the index is left as it was.
    fn refreshed<'a>(
        &self,
        guard: &'a mut std::sync::MutexGuard<'_, Option<Index>>,
    ) -> Result<&'a Index, CatalogueError> {
        let read_at = SystemTime::now();
        let mut next = Index::default();
        for (path, full) in record_files(&self.root, "output")? {
            let Some(stamp) = Stamp::of(&full) else {
                continue;
            };
            let known = guard.as_ref().and_then(|index| index.files.get(&path));
            let entry = match known {
                Some(known) if known.stamp == stamp && !known.racy => known.clone(),
                // Deleted between listing and reading: simply gone.
                _ => match metadata::read(&full)? {
                    Some(meta) => Entry::new(&meta, stamp, read_at),
                    None => continue,
                },
            };
            next.insert(&path, entry);
        }
        Ok(guard.insert(next))
    }

    /// Reads the record at `path` (relative) when it still satisfies `wanted`.
    fn read_live(
        &self,
        path: String,
        wanted: impl Fn(&ImageMetadata) -> bool,
    ) -> Result<Option<Record>, CatalogueError> {
        Ok(metadata::read(&self.root.join(&path))?
            .filter(|m| wanted(m))
            .map(|metadata| Record {
                path,
                metadata,
                archived: false,
            }))
    }

    /// A live (not archived) record by exact `imageId`, else the first by seed in list order
    /// (a seed can match records of several series, as upstream).
    ///
    /// Unlike a listing, a record found through the index is answered even while some other
    /// record file is invalid; a miss (every seed lookup among them) brings the index up to
    /// date first, and that fails on an invalid record, as a full read does.
    pub fn get(&self, id: &ImageRef) -> Result<Record, CatalogueError> {
        let id = id.as_str();
        if let Some(record) = self.indexed(id)? {
            return Ok(record);
        }
        let (by_id, candidates): (bool, Vec<String>) = {
            let mut guard = self.index();
            let index = self.refreshed(&mut guard)?;
            let mut chosen = index.ordered(|e| e.id == id);
            let by_id = !chosen.is_empty();
            if !by_id {
                chosen = index.ordered(|e| e.seed == id);
            }
            let paths = chosen.into_iter().map(|(_, p)| p.to_string()).collect();
            (by_id, paths)
        };
        for path in candidates {
            let wanted = |m: &ImageMetadata| {
                if by_id {
                    m.image_id == id
                } else {
                    m.seed == id
                }
            };
            if let Some(record) = self.read_live(path, wanted)? {
                return Ok(record);
            }
        }
        Err(CatalogueError::new(
            Code::ArtifactMissing,
            "image metadata record was not found",
        ))
    }

    /// The first record in list order among the indexed files that still carry `id`.
    fn indexed(&self, id: &str) -> Result<Option<Record>, CatalogueError> {
        let paths: Vec<String> = match self.index().as_ref() {
            Some(index) => index.by_id.get(id).into_iter().flatten().cloned().collect(),
            None => return Ok(None),
        };
        for path in paths {
            // Gone or rewritten behind our back: the refresh on a miss corrects the index.
            if let Some(record) = self.read_live(path, |m| m.image_id == id)? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// One page of the live records, in list order (`imageId`, then path): at most `limit`
    /// of them (more only when several files share the last page's `imageId`, which a page
    /// never splits, so `after` never skips one), optionally of one series, after the
    /// `imageId` `after` (exclusive). Only the page's files are read in full.
    pub fn page(
        &self,
        series: Option<&SeriesName>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, CatalogueError> {
        let (chosen, more) = {
            let mut guard = self.index();
            let index = self.refreshed(&mut guard)?;
            let ordered = index.ordered(|e| {
                series.is_none_or(|s| e.series == s.as_str())
                    && after.is_none_or(|after| e.id.as_str() > after)
            });
            let mut end = ordered.len().min(limit.max(1));
            while end < ordered.len() && end > 0 && ordered[end].0 == ordered[end - 1].0 {
                end += 1;
            }
            let more = end < ordered.len();
            let chosen: Vec<(String, String)> = ordered[..end]
                .iter()
                .map(|(id, path)| (id.to_string(), path.to_string()))
                .collect();
            (chosen, more)
        };
        let next = chosen.last().map(|(id, _)| id.clone()).filter(|_| more);
        let mut records = Vec::with_capacity(chosen.len());
        for (_, path) in chosen {
            // Removed since the index saw it: simply gone.
            if let Some(record) = self.read_live(path, |_| true)? {
                records.push(record);
            }
        }
        Ok(Page { records, next })
    }

    /// Validates and writes a record atomically (as [`metadata::write`]) at `path`, normally
    /// [`metadata::metadata_path`] under this data directory, and indexes it.
    pub fn write(&self, path: &Path, meta: &ImageMetadata) -> Result<(), CatalogueError> {
        metadata::write(path, meta)?;
        if let (Some(relative), Some(stamp)) = (self.live_path(path), Stamp::of(path)) {
            if let Some(index) = self.index().as_mut() {
                index.insert(&relative, Entry::new(meta, stamp, SystemTime::now()));
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
    pub fn delete(&self, id: &ImageRef) -> Result<(), CatalogueError> {
        let record = self.get(id)?;
        let result = archive(&self.root, &record);
        // Forgotten even when a move failed: a lookup then rereads the disk rather than trust
        // a file that may be half moved.
        if let Some(index) = self.index().as_mut() {
            index.remove(&record.path);
        }
        result
    }

    /// Writes the chosen, non-blank prompt texts of a live record as `<name>.txt` files into a
    /// directory under `<data>/exports/` (see [`ExportOptions::dir`]). With no flag set:
    /// prompt, data, title, terse and enhanced.
    pub fn export(
        &self,
        id: &ImageRef,
        opts: &ExportOptions,
    ) -> Result<ExportResult, CatalogueError> {
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

/// The order of a listing: `imageId`, then path.
fn list_order(a: &Record, b: &Record) -> std::cmp::Ordering {
    (&a.metadata.image_id, &a.path).cmp(&(&b.metadata.image_id, &b.path))
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

#[cfg(test)]
mod tests;
