//! Series documents: the serde parse of `Series` (what `SeriesStore` reads from
//! `<data>/user-series/*.json` and `/v1/series` accepts), a series as a filter over the
//! embedded databases, the store reading the file back, and `normalize_name`.
//!
//! Input: the bytes of a series JSON file (the seeds are the built-in series).

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dalleserver::attributes::Attributes;
use dalleserver::attributes::database::SELECTION_DATABASES;
use dalleserver::attributes::selection::filtered_records;
use dalleserver::attributes::series::{Series, normalize_name};
use libfuzzer_sys::fuzz_target;

const ADDRESS: &str = "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6";
/// The seeded databases a series can filter (all but places and tropes).
fn filterable() -> impl Iterator<Item = &'static str> {
    SELECTION_DATABASES
        .into_iter()
        .filter(|db| !matches!(*db, "places" | "tropes"))
}

/// The embedded databases and a store over a temp user-series directory, made once.
fn attributes() -> &'static (Attributes, PathBuf) {
    static ATTRIBUTES: OnceLock<(Attributes, PathBuf)> = OnceLock::new();
    ATTRIBUTES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let attributes = Attributes::load(None, dir.clone()).expect("embedded attributes");
        (attributes, dir)
    })
}

fn check_name(raw: &str) {
    let name = normalize_name(raw);
    assert!(!name.is_empty(), "empty name from {raw:?}");
    assert!(
        !name.contains(['/', '\\']) && !name.contains("..") && !name.contains(char::is_whitespace),
        "unsafe name {name:?} from {raw:?}"
    );
    assert!(!name.starts_with('-') && !name.ends_with('-'), "{name:?}");
    assert_eq!(normalize_name(&name), name, "not idempotent for {raw:?}");
}

fn check_series(series: &Series, text: &str) {
    // What we write back reads back the same (the store saves with `to_vec_pretty`).
    let json = serde_json::to_vec_pretty(series).expect("a series serialises");
    let back: Series = serde_json::from_slice(&json).expect("our own JSON parses");
    assert_eq!(&back, series, "round trip changed {text:?}");

    let (attributes, dir) = attributes();
    for db in filterable() {
        let field = match db {
            "adverbs" => &series.adverbs,
            "adjectives" => &series.adjectives,
            "nouns" => &series.nouns,
            "emotions" => &series.emotions,
            "occupations" => &series.occupations,
            "actions" => &series.actions,
            "artstyles" => &series.artstyles,
            "litstyles" => &series.litstyles,
            "colors" => &series.colors,
            "viewpoints" => &series.viewpoints,
            "gazes" => &series.gazes,
            _ => &series.compositions,
        };
        assert_eq!(series.filter(db), field.as_deref(), "{db}");
        // A filter keeps only matching records, or the single `none`.
        let records = filtered_records(&attributes.databases, series, db);
        assert!(!records.is_empty());
        if let Some(filters) = series.filter(db).filter(|f| !f.is_empty()) {
            for r in &records {
                assert!(
                    r == "none" || filters.iter().any(|f| r.contains(f.as_str())),
                    "{db}: {r:?} matches none of {filters:?}"
                );
            }
        }
    }
    for db in ["places", "tropes", "backstyles"] {
        assert!(series.filter(db).is_none());
    }

    let (dress, prompts) = attributes
        .dress_in(ADDRESS, series, None)
        .expect("an address always dresses");
    assert_eq!(dress.attribs.len(), 16);
    for a in dress.attribs.iter().take(15) {
        assert!(a.count >= 1 && a.selector < a.count, "{a:?}");
        if let Some(filters) = series.filter(&a.database).filter(|f| !f.is_empty()) {
            assert!(
                a.value == "none" || filters.iter().any(|f| a.value.contains(f.as_str())),
                "{} = {:?} ignores the filter",
                a.name,
                a.value
            );
        }
    }
    assert!(!prompts.base.is_empty());
    check_name(&series.suffix);

    // The store reads the same file as the same series (suffix defaulted, source set).
    std::fs::write(dir.join("fuzz.json"), text).expect("write series");
    let stored = attributes
        .series
        .get("fuzz")
        .expect("a valid file is found");
    assert_eq!(stored.source, "user");
    let expected_suffix = if series.suffix.is_empty() {
        "fuzz"
    } else {
        series.suffix.as_str()
    };
    assert_eq!(stored.suffix, expected_suffix);
    assert_eq!(stored.nouns, series.nouns);
    assert!(attributes.series.names().iter().any(|n| n == "fuzz"));
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_name(&text);
    match serde_json::from_str::<Series>(&text) {
        Ok(series) => check_series(&series, &text),
        Err(_) => {
            // Invalid JSON is absent to the store, never an error or a panic.
            let (attributes, dir) = attributes();
            std::fs::write(dir.join("fuzz.json"), text.as_bytes()).expect("write series");
            assert!(attributes.series.get("fuzz").is_none());
            assert!(!attributes.series.names().iter().any(|n| n == "fuzz"));
        }
    }
});
