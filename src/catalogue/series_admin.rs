//! Series administration for `/v1/series`: list with the hidden filters, get, save a user
//! series and hide or unhide one. Built-ins are read-only. Blocking I/O. Every write refreshes
//! the store's in-memory catalogue, so the next lookup anywhere sees it.
//!
//! Names arrive parsed ([`SeriesName`]); the handler applies upstream's quirk, kept on purpose
//! for clients written against it: when a saved body carries a suffix, it wins over the name
//! in the path. Ours: a blank name is refused rather than saved as `unknown`; `modifiedAt` and
//! `source` are never written into the file (they are derived on read); and hiding a series
//! only sets its flag: upstream also renamed `output/<s>` to `output/<s>.deleted`, which made
//! every image of the series vanish from `/dalle` and `/files`.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{CatalogueError, Code};
use crate::attributes::series::{Series, SeriesStore};
use crate::domain::SeriesName;

/// Built-in and user series merged (a user series shadows the built-in with its suffix),
/// sorted by suffix. By default hidden (`deleted`) series are left out; `include_hidden`
/// keeps them; `only_hidden` wins over both and keeps only hidden ones.
pub fn list(store: &SeriesStore, include_hidden: bool, only_hidden: bool) -> Vec<Series> {
    let mut by_suffix: BTreeMap<String, Series> = store
        .builtins()
        .map(|s| (s.suffix.clone(), s.clone()))
        .collect();
    for series in store.user_series() {
        by_suffix.insert(series.suffix.clone(), series);
    }
    by_suffix
        .into_values()
        .filter(|s| match (only_hidden, include_hidden) {
            (true, _) => s.deleted,
            (false, true) => true,
            (false, false) => !s.deleted,
        })
        .collect()
}

/// A series by name: the user's file, else the built-in.
pub fn get(store: &SeriesStore, name: &SeriesName) -> Result<Series, CatalogueError> {
    store
        .get(name.as_str())
        .ok_or_else(|| not_found(name.as_str()))
}

fn not_found(name: &str) -> CatalogueError {
    CatalogueError::new(Code::SeriesNotFound, format!("series not found: {name}"))
}

fn builtin_refused() -> CatalogueError {
    CatalogueError::new(Code::SeriesInvalid, "cannot modify built-in series")
}

/// Writes a user series to `<user-series>/<name>.json` (its suffix set to `name`) and
/// returns it as read back.
pub fn save(
    store: &SeriesStore,
    name: &SeriesName,
    series: Series,
) -> Result<Series, CatalogueError> {
    let suffix = name.as_str().to_string();
    // A leading dot would make a hidden file that the store deliberately never reads.
    if suffix.starts_with('.') || suffix.contains('\0') {
        return Err(CatalogueError::new(
            Code::InvalidInput,
            format!("invalid series name: {suffix}"),
        ));
    }
    if store.builtin(&suffix).is_some() {
        return Err(builtin_refused());
    }
    let doc = Series {
        suffix: suffix.clone(),
        ..series
    };
    write_user(store, &suffix, doc)?;
    store.get(&suffix).ok_or_else(|| {
        CatalogueError::new(
            Code::Internal,
            format!("saved series {suffix} could not be read back"),
        )
    })
}

/// Sets a user series' hidden flag; its images stay where they are, so they are still
/// served. Unhiding also moves back an `output/<s>.deleted` left by a server that renamed on
/// hide (only when `output/<s>` does not exist, so nothing is ever overwritten). Built-ins
/// cannot be hidden.
pub fn set_hidden(
    store: &SeriesStore,
    output_dir: &Path,
    name: &SeriesName,
    hidden: bool,
) -> Result<Series, CatalogueError> {
    let name = name.as_str();
    if store.builtin(name).is_some() {
        return Err(builtin_refused());
    }
    let mut doc = store
        .get(name)
        .filter(|s| s.source == "user")
        .ok_or_else(|| not_found(name))?;
    doc.deleted = hidden;
    write_user(store, name, doc)?;

    let (from, to) = (
        output_dir.join(format!("{name}.deleted")),
        output_dir.join(name),
    );
    if !hidden && from.is_dir() && std::fs::symlink_metadata(&to).is_err() {
        let fail = |e| {
            CatalogueError::new(Code::Internal, format!("cannot move {}", from.display()))
                .with_cause(e)
        };
        std::fs::rename(&from, &to).map_err(fail)?;
        crate::storage::sync_dir(output_dir).map_err(fail)?;
    }
    store.get(name).ok_or_else(|| not_found(name))
}

/// Writes `<user-series>/<name>.json` atomically as indented JSON, without the fields that
/// are derived on read, then refreshes the catalogue: lookups otherwise trust memory for up
/// to a second, and the caller reads its write straight back.
fn write_user(store: &SeriesStore, name: &str, mut doc: Series) -> Result<(), CatalogueError> {
    doc.source.clear();
    doc.modified_at.clear();
    let path = store.user_dir().join(format!("{name}.json"));
    let fail = |e: &dyn std::fmt::Display| {
        CatalogueError::new(Code::Internal, format!("cannot write {}", path.display()))
            .with_cause(e)
    };
    let mut json = serde_json::to_vec_pretty(&doc).map_err(|e| fail(&e))?;
    json.push(b'\n');
    crate::storage::write_atomic(&path, &json).map_err(|e| fail(&e))?;
    store.refresh();
    Ok(())
}

#[cfg(test)]
mod tests;
