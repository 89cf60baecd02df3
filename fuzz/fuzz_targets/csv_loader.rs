//! The attribute CSV loader: `Database::parse` on arbitrary text, and — for half the inputs —
//! the whole `--databases DIR` path: the text replaces one database in a directory of small
//! versions of the embedded CSVs, `Databases::from_dir` assembles them and enriches the nouns,
//! and an address is dressed and its prompts rendered with the result.
//!
//! Input: one selector byte, then the CSV text. The low five bits pick the database name
//! (modulo the list), the top bit asks for the directory path.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dalleserver::attributes::Attributes;
use dalleserver::attributes::database::{
    Database, DatabaseError, Databases, EMBEDDED, SELECTION_DATABASES,
};
use dalleserver::attributes::series::{Series, SeriesStore};
use libfuzzer_sys::fuzz_target;

const ADDRESS: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";

/// Rows of each database in the background directory: small, so a run stays fast.
const ROWS: usize = 12;

/// The background CSVs: the header and first rows of every embedded database, and the
/// taxonomy rows that those nouns reach (so their enrichment is complete).
fn background() -> &'static Vec<(&'static str, String)> {
    static BACKGROUND: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    BACKGROUND.get_or_init(|| {
        let mut wanted: Vec<String> = EMBEDDED[2]
            .1
            .lines()
            .skip(1)
            .take(ROWS)
            .filter_map(|l| l.split(',').nth(2).map(str::to_string))
            .collect();
        let mut out = Vec::new();
        for (name, text) in EMBEDDED {
            let header = text.lines().next().unwrap_or("");
            let rows: Vec<&str> = match name {
                "families" | "orders" | "classes" | "phyla" => {
                    let rows: Vec<&str> = text
                        .lines()
                        .skip(1)
                        .filter(|l| {
                            l.split(',')
                                .nth(1)
                                .is_some_and(|k| wanted.iter().any(|w| w == k))
                        })
                        .collect();
                    wanted = rows
                        .iter()
                        .filter_map(|l| l.split(',').nth(2).map(str::to_string))
                        .collect();
                    rows
                }
                _ => text.lines().skip(1).take(ROWS).collect(),
            };
            out.push((name, format!("{header}\n{}\n", rows.join("\n"))));
        }
        out
    })
}

/// The built-in series (parsed once; the user directory never exists).
fn store() -> &'static SeriesStore {
    static STORE: OnceLock<SeriesStore> = OnceLock::new();
    STORE.get_or_init(|| {
        SeriesStore::new(data_dir().join("no-user-series")).expect("built-in series")
    })
}

/// A directory holding the background CSVs, written once; each run overwrites one file and
/// puts it back afterwards.
fn data_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        for (name, text) in background() {
            std::fs::write(dir.join(format!("{name}.csv")), text).expect("write csv");
        }
        dir
    })
}

fn lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
}

fn check_parse(name: &str, text: &str) -> Database {
    let db = Database::parse(name, text);
    assert_eq!(db.name, name);
    assert_eq!(db, Database::parse(name, text), "not deterministic");
    assert_eq!(db.sha256.len(), 64);
    assert!(
        db.sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert!(db.version.starts_with('v'), "version {:?}", db.version);
    let normalised = text.replace("\r\n", "\n");
    let lines = lines(&normalised);
    // One record per data line at most; blank keys are dropped; no record spans lines.
    assert!(db.len() <= lines.len().saturating_sub(1));
    for record in &db.records {
        assert!(!record.contains('\n'), "record spans lines: {record:?}");
        let key = record.split(',').next().unwrap_or("");
        assert!(!key.trim().is_empty(), "blank key kept: {record:?}");
    }
    match lines.first() {
        Some(header) => assert_eq!(db.columns.len(), header.split(',').count() - 1),
        None => assert!(db.columns.is_empty() && db.records.is_empty()),
    }
    // The manifest's view: never more data rows than non-blank lines after the first.
    assert!(db.raw_rows <= lines.iter().filter(|l| !l.is_empty()).count());
    db
}

fn check_directory(index: usize, text: &str, parsed: &Database) {
    let dir = data_dir();
    let (name, original) = (background()[index].0, background()[index].1.as_str());
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, text).expect("write fuzzed csv");
    let loaded = Databases::from_dir(dir);
    std::fs::write(&path, original).expect("restore csv");
    let databases = match loaded {
        Ok(dbs) => dbs,
        Err(DatabaseError::Empty(n)) => {
            assert_eq!(n, name);
            assert!(parsed.is_empty() && SELECTION_DATABASES.contains(&name));
            return;
        }
        Err(e) => panic!("unexpected load error: {e}"),
    };
    assert!(!(parsed.is_empty() && SELECTION_DATABASES.contains(&name)));
    let nouns = databases.get("nouns").expect("nouns");
    assert_eq!(
        nouns.columns,
        ["commonName", "family", "order", "class", "phylum"]
    );
    let raw_nouns = if name == "nouns" {
        parsed.clone()
    } else {
        Database::parse("nouns", &background()[2].1)
    };
    assert_eq!(
        nouns.len(),
        raw_nouns.len(),
        "enrichment changed the row count"
    );
    for (enriched, raw) in nouns.records.iter().zip(&raw_nouns.records) {
        if raw.contains(',') {
            assert_eq!(enriched.split(',').count(), 5, "{raw:?} → {enriched:?}");
            assert_eq!(
                enriched.split(',').next(),
                raw.split(',').next().map(str::trim)
            );
        } else {
            assert_eq!(enriched, raw, "a one-field noun is kept as it is");
        }
    }

    // Selection and prompts over the loaded databases.
    let attributes = Attributes {
        databases,
        series: store().clone(),
    };
    let series = Series {
        suffix: "empty".into(),
        ..Series::default()
    };
    let (dress, prompts) = attributes
        .dress_in(ADDRESS, &series, None)
        .expect("an address always dresses");
    assert_eq!(
        dress.attribs.len(),
        16,
        "15 seeded attributes and the back style"
    );
    for a in dress.attribs.iter().take(15) {
        assert!(a.count >= 1 && a.selector < a.count, "{a:?}");
    }
    assert!(!prompts.base.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let index = usize::from(selector & 0x1f) % EMBEDDED.len();
    let text = String::from_utf8_lossy(body);
    let parsed = check_parse(EMBEDDED[index].0, &text);
    if selector & 0x80 != 0 {
        check_directory(index, &text, &parsed);
    }
});
