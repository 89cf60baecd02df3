//! The attribute databases: CSVs in the Go library's format, embedded or from a directory.
//!
//! Parsing copies the upstream quirks that decide which row an address selects: the first
//! `v0.1.0,` of each line is removed, fields are split naively on every comma, a record with
//! an empty key is skipped, and nouns are replaced by their enriched five-field form
//! (`common name, family, order, class, phylum` in common names).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The fourteen databases that seed selection draws from, in the Go library's attribute order.
pub const SELECTION_DATABASES: [&str; 14] = [
    "adverbs",
    "adjectives",
    "nouns",
    "emotions",
    "occupations",
    "actions",
    "artstyles",
    "litstyles",
    "colors",
    "viewpoints",
    "gazes",
    "compositions",
    "places",
    "tropes",
];
/// Non-seeded background styles.
pub const BACKSTYLES: &str = "backstyles";
/// The noun taxonomy lookups.
pub const TAXONOMY: [&str; 4] = ["families", "orders", "classes", "phyla"];
/// The literal version prefix stripped from every data line.
const VERSION_PREFIX: &str = "v0.1.0,";

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("data/", $name, ".csv")))),*]
    };
}

/// The embedded CSVs, by database name.
pub const EMBEDDED: [(&str, &str); 19] = embedded!(
    "adverbs",
    "adjectives",
    "nouns",
    "emotions",
    "occupations",
    "actions",
    "artstyles",
    "litstyles",
    "colors",
    "viewpoints",
    "gazes",
    "compositions",
    "places",
    "tropes",
    "backstyles",
    "families",
    "orders",
    "classes",
    "phyla",
);

/// Loading failures, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database {0} has no data rows")]
    Empty(String),
}

/// One parsed database.
#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    pub name: String,
    /// Column names after `version`.
    pub columns: Vec<String>,
    /// Each record as one comma-joined line (the line minus its `v0.1.0,` prefix).
    pub records: Vec<String>,
    /// The version column of the first data line (`v0.1.0`).
    pub version: String,
    /// Lower-case hex SHA-256 of the file's raw bytes (for the `/v1` database manifest).
    pub sha256: String,
    /// Every header field as a CSV parser reads it, `version` included (manifest `columns`;
    /// unlike [`Database::columns`] it is never replaced by the noun enrichment).
    pub raw_columns: Vec<String>,
    /// Data records as a CSV parser counts them: blank lines are skipped, the header is not
    /// counted (manifest `rows`; unlike [`Database::len`], empty keys count).
    pub raw_rows: usize,
}

impl Database {
    /// Parses a CSV in the upstream format.
    pub fn parse(name: &str, text: &str) -> Database {
        use sha2::Digest;
        let sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let (raw_columns, raw_rows) = csv_shape(text);
        let text = text.replace("\r\n", "\n");
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.last() == Some(&"") {
            lines.pop();
        }
        let columns = lines
            .first()
            .map(|h| h.split(',').skip(1).map(|c| c.trim().to_string()).collect())
            .unwrap_or_default();
        let version = lines
            .get(1)
            .and_then(|l| l.split(',').next())
            .filter(|v| v.starts_with('v'))
            .unwrap_or("v0.1.0")
            .to_string();
        let records = lines
            .iter()
            .skip(1)
            .map(|line| line.replacen(VERSION_PREFIX, "", 1))
            .filter(|record| !record.split(',').next().unwrap_or("").trim().is_empty())
            .collect();
        Database {
            name: name.to_string(),
            columns,
            records,
            version,
            sha256,
            raw_columns,
            raw_rows,
        }
    }

    /// Row count.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// The header fields and the data-record count of a CSV, read the way a standard CSV reader
/// (RFC 4180, as Go's `encoding/csv` that upstream's manifest used) reads it: quoted fields
/// may hold commas, doubled quotes and newlines, blank lines are skipped, CRLF is a newline.
/// Fields are not trimmed. Unlike the record parser above, this is only used for the
/// manifest, never for selection.
pub fn csv_shape(text: &str) -> (Vec<String>, usize) {
    let text = text.replace("\r\n", "\n");
    let mut header: Option<Vec<String>> = None;
    let mut records = 0usize;
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let (mut quoted, mut in_record) = (false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => (quoted, in_record) = (true, true),
            '\n' if !quoted => {
                if in_record {
                    fields.push(std::mem::take(&mut field));
                    let record = std::mem::take(&mut fields);
                    if header.is_none() {
                        header = Some(record);
                    } else {
                        records += 1;
                    }
                }
                in_record = false;
            }
            ',' if !quoted => {
                fields.push(std::mem::take(&mut field));
                in_record = true;
            }
            _ => {
                field.push(c);
                in_record = true;
            }
        }
    }
    if in_record {
        fields.push(field);
        if header.is_none() {
            header = Some(fields);
        } else {
            records += 1;
        }
    }
    (header.unwrap_or_default(), records)
}

/// Where a set of databases came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Embedded,
    Directory(std::path::PathBuf),
}

/// All databases, nouns enriched.
#[derive(Debug, Clone)]
pub struct Databases {
    map: BTreeMap<String, Database>,
    pub source: Source,
}

impl Databases {
    /// The databases compiled into the binary.
    pub fn embedded() -> Databases {
        let raw = EMBEDDED
            .iter()
            .map(|(name, text)| Database::parse(name, text));
        Databases::assemble(raw, Source::Embedded)
    }

    /// Reads `<dir>/<name>.csv` for every database (`--databases DIR`).
    pub fn from_dir(dir: &Path) -> Result<Databases, DatabaseError> {
        let mut raw = Vec::with_capacity(EMBEDDED.len());
        for (name, _) in EMBEDDED {
            let path = dir.join(format!("{name}.csv"));
            let text = std::fs::read_to_string(&path).map_err(|source| DatabaseError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let db = Database::parse(name, &text);
            if db.is_empty() && SELECTION_DATABASES.contains(&name) {
                return Err(DatabaseError::Empty(name.to_string()));
            }
            raw.push(db);
        }
        Ok(Databases::assemble(
            raw.into_iter(),
            Source::Directory(dir.to_path_buf()),
        ))
    }

    fn assemble(raw: impl Iterator<Item = Database>, source: Source) -> Databases {
        let mut map: BTreeMap<String, Database> = raw.map(|db| (db.name.clone(), db)).collect();
        let taxonomy = Taxonomy::new(&map);
        if let Some(nouns) = map.get_mut("nouns") {
            taxonomy.enrich(nouns);
        }
        Databases { map, source }
    }

    /// A database by name.
    pub fn get(&self, name: &str) -> Option<&Database> {
        self.map.get(name)
    }

    /// Every database, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Database> {
        self.map.values()
    }

    /// Rows across the selection databases.
    pub fn selection_rows(&self) -> usize {
        SELECTION_DATABASES
            .iter()
            .filter_map(|n| self.get(n))
            .map(Database::len)
            .sum()
    }
}

/// The four taxonomy lookups: trimmed first column → split fields.
struct Taxonomy {
    levels: [HashMap<String, Vec<String>>; 4],
}

impl Taxonomy {
    fn new(map: &BTreeMap<String, Database>) -> Taxonomy {
        let level = |name: &str| {
            map.get(name)
                .map(|db| {
                    db.records
                        .iter()
                        .map(|r| {
                            let parts: Vec<String> = r.split(',').map(str::to_string).collect();
                            (parts[0].trim().to_string(), parts)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Taxonomy {
            levels: [
                level("families"),
                level("orders"),
                level("classes"),
                level("phyla"),
            ],
        }
    }

    /// (parent key, common name) of `key` at `level`; phyla have no parent.
    fn step(&self, level: usize, key: &str) -> (String, String) {
        let min_parts = if level == 3 { 2 } else { 3 };
        match self.levels[level].get(key) {
            Some(parts) if parts.len() >= min_parts => {
                let common = parts[if level == 3 { 1 } else { 2 }].clone();
                let parent = if level == 3 {
                    String::new()
                } else {
                    parts[1].trim().to_string()
                };
                (parent, common)
            }
            _ => (String::new(), String::new()),
        }
    }

    fn enrich(&self, nouns: &mut Database) {
        for record in &mut nouns.records {
            let values: Vec<&str> = record.split(',').collect();
            if values.len() < 2 {
                continue;
            }
            let (order, family_common) = self.step(0, values[1].trim());
            let (class, order_common) = self.step(1, &order);
            let (phylum, class_common) = self.step(2, &class);
            let (_, phylum_common) = self.step(3, &phylum);
            *record = [
                values[0].trim(),
                &family_common,
                &order_common,
                &class_common,
                &phylum_common,
            ]
            .join(",");
        }
        nouns.columns = ["commonName", "family", "order", "class", "phylum"]
            .map(String::from)
            .to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_follows_the_upstream_quirks() {
        let db = Database::parse(
            "adverbs",
            "version,adverb,definition\r\nv0.1.0,gently,in a soft way, kindly\nv0.1.0, ,blank key\nv0.1.0,v0.1.0,odd\n",
        );
        assert_eq!(db.columns, ["adverb", "definition"]);
        assert_eq!(db.version, "v0.1.0");
        // Only the first prefix is stripped; the comma inside the definition stays.
        assert_eq!(db.records, ["gently,in a soft way, kindly", "v0.1.0,odd"]);
    }

    #[test]
    fn csv_shape_reads_like_a_standard_csv_reader() {
        let (header, rows) = csv_shape("version,a,b\r\nv0.1.0,x,y\n\nv0.1.0,\"q,\"\"r\"\"\ns\",z");
        assert_eq!(header, ["version", "a", "b"]);
        assert_eq!(
            rows, 2,
            "blank line skipped, quoted newline inside one record"
        );
        assert_eq!(csv_shape(""), (Vec::new(), 0));
        assert_eq!(csv_shape("h\n").1, 0);
        assert_eq!(csv_shape(" version , a\n").0, [" version ", " a"]);
    }

    #[test]
    fn parse_records_the_raw_file_shape_and_hash() {
        let text = "version,noun,family\nv0.1.0,fox,Canidae\nv0.1.0, ,none\n";
        let db = Database::parse("nouns", text);
        // The hash is of the bytes as given, before any CRLF or prefix handling.
        use sha2::Digest;
        assert_eq!(
            db.sha256,
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        );
        assert_eq!(db.sha256.len(), 64);
        assert_eq!(db.raw_columns, ["version", "noun", "family"]);
        assert_eq!(
            (db.raw_rows, db.len()),
            (2, 1),
            "the empty key still counts as a row"
        );
    }

    #[test]
    fn the_embedded_set_is_exactly_the_named_databases() {
        // EMBEDDED repeats the names because include_str! needs literals; keep them in step.
        let embedded: Vec<&str> = EMBEDDED.iter().map(|(n, _)| *n).collect();
        let named: Vec<&str> = SELECTION_DATABASES
            .iter()
            .copied()
            .chain([BACKSTYLES])
            .chain(TAXONOMY)
            .collect();
        assert_eq!(embedded, named);
    }

    #[test]
    fn embedded_databases_meet_the_minimum_sizes() {
        let dbs = Databases::embedded();
        for (name, min) in [
            ("adverbs", 400),
            ("adjectives", 400),
            ("actions", 400),
            ("nouns", 400),
            ("emotions", 150),
            ("occupations", 150),
            ("artstyles", 150),
            ("places", 150),
            ("litstyles", 50),
            ("colors", 140),
        ] {
            let n = dbs.get(name).unwrap().len();
            assert!(n >= min, "{name} has {n} rows, want at least {min}");
        }
        assert!(
            dbs.get("artstyles")
                .unwrap()
                .records
                .iter()
                .any(|r| r.contains(",sensitive,"))
        );
    }

    #[test]
    fn every_embedded_noun_enriches_to_five_common_names() {
        let dbs = Databases::embedded();
        let nouns = dbs.get("nouns").unwrap();
        assert_eq!(
            nouns.columns,
            ["commonName", "family", "order", "class", "phylum"]
        );
        for record in &nouns.records {
            let parts: Vec<&str> = record.split(',').collect();
            assert_eq!(parts.len(), 5, "{record}");
            assert!(
                parts.iter().all(|p| !p.is_empty()),
                "incomplete taxonomy: {record}"
            );
        }
    }

    #[test]
    fn embedded_keys_are_unique_and_clean() {
        for db in Databases::embedded().iter() {
            if db.name == "gazes" {
                continue; // repeated gazes are weights
            }
            let mut seen = std::collections::HashSet::new();
            for record in &db.records {
                let key = record.split(',').next().unwrap();
                assert_eq!(key, key.trim(), "{}: {record}", db.name);
                assert!(seen.insert(key), "{}: duplicate key {key}", db.name);
                assert_eq!(
                    record.split(',').count(),
                    db.columns.len(),
                    "{}: {record}",
                    db.name
                );
            }
        }
    }
}
