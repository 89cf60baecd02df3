//! Which stored names hold which content: CID → the artifacts (by name) and runs (by record)
//! that refer to it, for `/cache/{cid}`. Built from the provenance records — every record lists
//! the CIDs of its run's artifacts — once, on first use, and added to by every run that writes
//! a record.
//!
//! The index only points at names; it never vouches for bytes. A reader fetches the name and
//! serves it only if the bytes' CID (computed once when the file cache reads them) is the one
//! asked for, so an entry left stale by a removal or an overwrite answers 404, never wrong
//! bytes. That also makes it work on any [`ArtifactStore`], local or not.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use super::{RECORD_FILE, Record};
use crate::cid::Cid;
use crate::run::ArtifactStore;

/// One name that held a CID when its run's record was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reference {
    /// The stored name (`<series>/<kind>/<subject>.<ext>`, what `/files/` serves).
    pub name: String,
    /// The name of the run's provenance record.
    pub record: String,
    /// The record's own CID.
    pub record_cid: Cid,
}

/// CID → references; cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct ContentIndex {
    by_cid: Mutex<HashMap<Cid, Vec<Reference>>>,
    loaded: OnceLock<()>,
}

impl ContentIndex {
    /// Indexes one record stored under `record_name` with the bytes `record_bytes`.
    pub fn add(&self, record_name: &str, record_bytes: &[u8], record: &Record) {
        let Some((series, stem)) = split_record_name(record_name) else {
            return;
        };
        let record_cid = Cid::of(record_bytes);
        let named = |kind: &str, ext: &str| format!("{series}/{kind}/{stem}.{ext}");
        let making = &record.making;
        let mut entries = vec![
            (record_cid, record_name.to_string()),
            (making.raw_cid, named("generated", "png")),
        ];
        entries.extend(record.annotated_cid.map(|c| (c, named("annotated", "png"))));
        entries.extend(making.dress_cid.map(|c| (c, named("selector", "json"))));
        entries.extend(
            making
                .prompts
                .iter()
                .map(|p| (p.cid, named(&p.kind, "txt"))),
        );
        let mut by_cid = self.by_cid.lock().unwrap_or_else(|e| e.into_inner());
        for (cid, name) in entries {
            let refs = by_cid.entry(cid).or_default();
            let reference = Reference {
                name,
                record: record_name.to_string(),
                record_cid,
            };
            // A record rewritten by a later run of the same key replaces its old references.
            refs.retain(|r| r.record != reference.record || r.name != reference.name);
            refs.push(reference);
        }
    }

    /// Reads every stored record into the index, the first time only (blocking I/O). An
    /// unreadable record is skipped: its artifacts are still served under their names.
    pub fn ensure_loaded(&self, store: &dyn ArtifactStore) {
        self.loaded.get_or_init(|| {
            let (kind, ext) = RECORD_FILE;
            for listed in store.list(kind, ext) {
                let Ok(Some(file)) = store.read_named(&listed.name) else {
                    continue;
                };
                match Record::from_bytes(&file.bytes) {
                    Ok(record) => self.add(&listed.name, &file.bytes, &record),
                    Err(err) => {
                        tracing::warn!(record = %listed.name, %err, "skipping a provenance record");
                    }
                }
            }
        });
    }

    /// The references to `cid`, oldest first.
    pub fn references(&self, cid: &Cid) -> Vec<Reference> {
        let by_cid = self.by_cid.lock().unwrap_or_else(|e| e.into_inner());
        by_cid.get(cid).cloned().unwrap_or_default()
    }
}

/// `(series, stem)` of `<series>/provenance/<stem>.json`.
fn split_record_name(name: &str) -> Option<(&str, &str)> {
    let (kind, ext) = RECORD_FILE;
    let (series, rest) = name.split_once('/')?;
    let file = rest.strip_prefix(kind)?.strip_prefix('/')?;
    let stem = file.strip_suffix(ext)?.strip_suffix('.')?;
    (!series.is_empty() && !stem.is_empty() && !stem.contains('/')).then_some((series, stem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_split_into_series_and_subject() {
        assert_eq!(
            split_record_name("simple/provenance/0xab.json"),
            Some(("simple", "0xab"))
        );
        for bad in [
            "simple/annotated/0xab.png",
            "simple/provenance/.json",
            "/provenance/x.json",
            "simple/provenance/a/b.json",
            "simple/provenancex/a.json",
        ] {
            assert_eq!(split_record_name(bad), None, "{bad}");
        }
    }
}
