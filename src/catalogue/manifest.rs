//! The database manifest of `/v1/databases` and `/v1/validate`: one entry per CSV
//! with its hash, header and row count, plus a hash over the whole set.
//!
//! Upstream hashed the embedded `databases.tar.gz`; we embed plain CSVs (or read a
//! `--databases` directory), so there is no archive to hash. `archiveHash` is therefore the
//! SHA-256 of a canonical listing of the per-file hashes (see [`listing_hash`]): it changes
//! exactly when any file's bytes, name or the set of files change, which is what image
//! metadata records use it for.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{CatalogueError, Code};
use crate::attributes::database::{Databases, csv_shape};

/// The manifest version recorded in image metadata (`database.version`). It is unrelated to
/// the `v0.1.0` version column inside the CSVs, as upstream.
pub const DATABASE_VERSION: &str = "1.0.0";

/// The hash prefix every manifest hash carries.
const SHA256_PREFIX: &str = "sha256:";

/// The manifest document, serialised with upstream's JSON names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: String,
    pub archive_hash: String,
    pub files: Vec<ManifestFile>,
}

/// One CSV of the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Database name: the file name without `.csv`.
    pub name: String,
    /// `databases/<name>.csv`, as inside upstream's archive.
    pub path: String,
    /// `sha256:` + lower-case hex of the raw file bytes.
    pub hash: String,
    /// Data records (the header is not counted).
    pub rows: usize,
    /// Every header field, `version` included, as upstream's CSV reader returned them.
    pub columns: Vec<String>,
}

impl ManifestFile {
    fn new(name: &str, hex_hash: &str, columns: Vec<String>, rows: usize) -> ManifestFile {
        ManifestFile {
            name: name.to_string(),
            path: format!("databases/{name}.csv"),
            hash: format!("{SHA256_PREFIX}{hex_hash}"),
            rows,
            columns,
        }
    }
}

/// Builds the manifest of `(name, raw CSV bytes)` pairs.
pub fn build(files: &[(String, &[u8])]) -> Manifest {
    let files = files
        .iter()
        .map(|(name, bytes)| {
            let (columns, rows) = csv_shape(&String::from_utf8_lossy(bytes));
            ManifestFile::new(name, &hex::encode(Sha256::digest(bytes)), columns, rows)
        })
        .collect();
    assemble(files)
}

/// The manifest of loaded databases, from the hash, header and row count recorded when each
/// file was parsed (equal to [`build`] over the same bytes, without reading them again).
pub fn from_databases(dbs: &Databases) -> Manifest {
    let files = dbs
        .iter()
        .map(|db| ManifestFile::new(&db.name, &db.sha256, db.raw_columns.clone(), db.raw_rows))
        .collect();
    assemble(files)
}

fn assemble(mut files: Vec<ManifestFile>) -> Manifest {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Manifest {
        version: DATABASE_VERSION.to_string(),
        archive_hash: listing_hash(&files),
        files,
    }
}

/// `sha256:` + hex SHA-256 of, for each file in the given (path) order, its `path`, a NUL
/// byte, its `hash` (with prefix) and a line feed. NUL and LF cannot occur in either field,
/// so distinct listings never hash the same bytes.
pub fn listing_hash(files: &[ManifestFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.path.as_bytes());
        hasher.update([0]);
        hasher.update(file.hash.as_bytes());
        hasher.update([b'\n']);
    }
    format!("{SHA256_PREFIX}{}", hex::encode(hasher.finalize()))
}

impl Manifest {
    /// The Go library's structural checks (a version, `sha256:` hashes, at least one file, unique
    /// paths, at least one column); any failure is `database_manifest_invalid`.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        let invalid = |msg: String| Err(CatalogueError::new(Code::DatabaseManifestInvalid, msg));
        if self.version.trim().is_empty() {
            return invalid("database manifest version is required".into());
        }
        if !self.archive_hash.starts_with(SHA256_PREFIX) {
            return invalid("database manifest archive hash must use the sha256: prefix".into());
        }
        if self.files.is_empty() {
            return invalid("database manifest has no files".into());
        }
        let mut seen = HashSet::new();
        for file in &self.files {
            if file.name.is_empty() {
                return invalid("database manifest file name is required".into());
            }
            if file.path.is_empty() {
                return invalid("database manifest file path is required".into());
            }
            if !seen.insert(file.path.as_str()) {
                return invalid(format!("duplicate database manifest path: {}", file.path));
            }
            if !file.hash.starts_with(SHA256_PREFIX) {
                return invalid(format!(
                    "file hash must use the sha256: prefix: {}",
                    file.path
                ));
            }
            if file.columns.is_empty() {
                return invalid(format!("file columns are required: {}", file.path));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::database::EMBEDDED;

    fn embedded_build() -> Manifest {
        let owned: Vec<(String, &[u8])> = EMBEDDED
            .iter()
            .map(|(name, text)| (name.to_string(), text.as_bytes()))
            .collect();
        build(&owned)
    }

    #[test]
    fn embedded_manifest_is_valid_deterministic_and_matches_the_file_bytes() {
        let manifest = from_databases(&Databases::embedded());
        manifest.validate().unwrap();
        assert_eq!(manifest.version, "1.0.0");
        assert_eq!(manifest.files.len(), 19);
        assert_eq!(manifest, from_databases(&Databases::embedded()));
        assert_eq!(
            manifest,
            embedded_build(),
            "stored hashes equal hashing the bytes"
        );
        let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.windows(2).all(|w| w[0] < w[1]), "sorted: {paths:?}");
        assert_eq!(paths[0], "databases/actions.csv");
        for file in &manifest.files {
            assert_eq!(file.path, format!("databases/{}.csv", file.name));
            assert_eq!(file.hash.len(), "sha256:".len() + 64);
            assert_eq!(file.columns[0], "version");
            assert!(file.rows > 0, "{}", file.name);
        }
        assert_eq!(manifest.archive_hash, listing_hash(&manifest.files));
    }

    #[test]
    fn json_uses_upstream_names() {
        let manifest = build(&[("gazes".to_string(), b"version,gaze\nv0.1.0,up\n".as_slice())]);
        let v = serde_json::to_value(&manifest).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["archiveHash", "files", "version"]);
        let file = &v["files"][0];
        assert_eq!(file["name"], "gazes");
        assert_eq!(file["path"], "databases/gazes.csv");
        assert_eq!(file["rows"], 1);
        assert_eq!(file["columns"], serde_json::json!(["version", "gaze"]));
        assert_eq!(
            file["hash"],
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"version,gaze\nv0.1.0,up\n"))
            )
        );
        let back: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, manifest);
    }

    #[test]
    fn archive_hash_follows_every_file() {
        let a = build(&[
            ("b".to_string(), b"version,x\nv,1\n".as_slice()),
            ("a".to_string(), b"version,y\n".as_slice()),
        ]);
        let reordered = build(&[
            ("a".to_string(), b"version,y\n".as_slice()),
            ("b".to_string(), b"version,x\nv,1\n".as_slice()),
        ]);
        assert_eq!(a, reordered, "input order does not matter");
        let changed = build(&[
            ("a".to_string(), b"version,y\n".as_slice()),
            ("b".to_string(), b"version,x\nv,2\n".as_slice()),
        ]);
        assert_ne!(a.archive_hash, changed.archive_hash);
        let renamed = build(&[
            ("a".to_string(), b"version,y\n".as_slice()),
            ("c".to_string(), b"version,x\nv,1\n".as_slice()),
        ]);
        assert_ne!(a.archive_hash, renamed.archive_hash);
    }

    #[test]
    fn tampering_is_rejected() {
        let good = embedded_build();
        let tampered: [fn(&mut Manifest); 8] = [
            |m| m.version = " ".into(),
            |m| m.archive_hash = "md5:abc".into(),
            |m| m.files.clear(),
            |m| m.files[0].name.clear(),
            |m| m.files[0].path.clear(),
            |m| m.files[1].path = m.files[0].path.clone(),
            |m| m.files[2].hash = "deadbeef".into(),
            |m| m.files[3].columns.clear(),
        ];
        for (i, tamper) in tampered.iter().enumerate() {
            let mut m = good.clone();
            tamper(&mut m);
            let err = m.validate().expect_err(&format!("case {i}"));
            assert_eq!(err.code, Code::DatabaseManifestInvalid, "case {i}");
        }
    }

    #[test]
    fn a_databases_directory_hashes_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut owned = Vec::new();
        for (name, text) in EMBEDDED {
            // CRLF files hash as they are on disk, not as parsed.
            let text = if name == "gazes" {
                text.replace('\n', "\r\n")
            } else {
                text.to_string()
            };
            std::fs::write(dir.path().join(format!("{name}.csv")), &text).unwrap();
            owned.push((name.to_string(), text));
        }
        let dbs = Databases::from_dir(dir.path()).unwrap();
        let pairs: Vec<(String, &[u8])> = owned
            .iter()
            .map(|(n, t)| (n.clone(), t.as_bytes()))
            .collect();
        let manifest = from_databases(&dbs);
        assert_eq!(manifest, build(&pairs));
        assert_ne!(manifest.archive_hash, embedded_build().archive_hash);
    }
}
