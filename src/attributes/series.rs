//! Series: named filters over the databases (L§3.2). Built-ins are embedded; user series live
//! in `<data>/user-series/*.json`, shadow built-ins of the same name and are read on every
//! lookup, so a new file is picked up without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

macro_rules! builtin {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("series/", $name, ".json")))),*]
    };
}

/// The embedded series, by name.
const BUILTIN: [(&str, &str); 7] = builtin!(
    "empty",
    "simple",
    "deep-sea-night-shift",
    "film-noir-detectives",
    "garden-of-delight",
    "artisans-workshop",
    "skyward-dreamers",
);

/// A series document, with the upstream JSON names and omission rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last: i64,
    #[serde(default)]
    pub suffix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// The hidden flag.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    #[serde(default)]
    pub adverbs: Option<Vec<String>>,
    #[serde(default)]
    pub adjectives: Option<Vec<String>>,
    #[serde(default)]
    pub nouns: Option<Vec<String>>,
    #[serde(default)]
    pub emotions: Option<Vec<String>>,
    #[serde(default)]
    pub occupations: Option<Vec<String>>,
    #[serde(default)]
    pub actions: Option<Vec<String>>,
    #[serde(default)]
    pub artstyles: Option<Vec<String>>,
    #[serde(default)]
    pub litstyles: Option<Vec<String>>,
    #[serde(default)]
    pub colors: Option<Vec<String>>,
    #[serde(default)]
    pub viewpoints: Option<Vec<String>>,
    #[serde(default)]
    pub gazes: Option<Vec<String>>,
    /// Accepted and kept, but inert (as upstream).
    #[serde(default)]
    pub backstyles: Option<Vec<String>>,
    #[serde(default)]
    pub compositions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub color_limit: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modified_at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Series {
    /// The filter list for a database; `None` for databases a series cannot filter
    /// (places, tropes, backstyles).
    pub fn filter(&self, database: &str) -> Option<&[String]> {
        let list = match database {
            "adverbs" => &self.adverbs,
            "adjectives" => &self.adjectives,
            "nouns" => &self.nouns,
            "emotions" => &self.emotions,
            "occupations" => &self.occupations,
            "actions" => &self.actions,
            "artstyles" => &self.artstyles,
            "litstyles" => &self.litstyles,
            "colors" => &self.colors,
            "viewpoints" => &self.viewpoints,
            "gazes" => &self.gazes,
            "compositions" => &self.compositions,
            _ => return None,
        };
        list.as_deref()
    }
}

/// Built-in and user series.
#[derive(Debug, Clone)]
pub struct SeriesStore {
    builtins: BTreeMap<String, Series>,
    user_dir: PathBuf,
}

/// Why the embedded series could not be loaded (a build defect, caught by tests).
#[derive(Debug, thiserror::Error)]
#[error("built-in series {name}: {source}")]
pub struct BuiltinError {
    name: &'static str,
    #[source]
    source: serde_json::Error,
}

impl SeriesStore {
    /// The embedded built-ins plus the user series in `user_dir`.
    pub fn new(user_dir: PathBuf) -> Result<SeriesStore, BuiltinError> {
        let mut builtins = BTreeMap::new();
        for (name, text) in BUILTIN {
            let mut series: Series =
                serde_json::from_str(text).map_err(|source| BuiltinError { name, source })?;
            if series.suffix.is_empty() {
                series.suffix = name.to_string();
            }
            series.source = "builtin".into();
            builtins.insert(name.to_string(), series);
        }
        Ok(SeriesStore { builtins, user_dir })
    }

    /// The names of the embedded series.
    pub fn builtin_names(&self) -> impl Iterator<Item = &str> {
        self.builtins.keys().map(String::as_str)
    }

    /// Every embedded series, sorted by name (`source` = `builtin`).
    pub fn builtins(&self) -> impl Iterator<Item = &Series> {
        self.builtins.values()
    }

    /// The embedded series called `name`, if any.
    pub fn builtin(&self, name: &str) -> Option<&Series> {
        self.builtins.get(name)
    }

    /// The directory holding the user series files.
    pub fn user_dir(&self) -> &Path {
        &self.user_dir
    }

    /// Every readable user series (`source` = `user`), in file-name order; invalid files are
    /// skipped, as [`SeriesStore::get`] treats them as absent.
    pub fn user_series(&self) -> Vec<Series> {
        let Ok(entries) = std::fs::read_dir(&self.user_dir) else {
            return Vec::new();
        };
        let mut stems: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let path = e.path();
                let stem = path.file_stem()?.to_str()?.to_string();
                (path.extension()? == "json" && !stem.starts_with("._")).then_some(stem)
            })
            .collect();
        stems.sort();
        stems.iter().filter_map(|n| self.read_user(n)).collect()
    }

    /// A series by (already normalised) name: the user's file first, then the built-in.
    pub fn get(&self, name: &str) -> Option<Series> {
        self.read_user(name)
            .or_else(|| self.builtins.get(name).cloned())
    }

    /// Every usable series name (built-in and user, hidden ones included), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.builtins.keys().cloned().collect();
        names.extend(self.user_names());
        names.sort();
        names.dedup();
        names
    }

    /// Whether [`SeriesStore::names`] lists `name`, without listing the user directory: a
    /// built-in costs nothing, a user series one file read (`/dalle` asks on every request).
    pub fn contains(&self, name: &str) -> bool {
        self.builtins.contains_key(name) || self.read_user(name).is_some()
    }

    fn user_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.user_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let path = e.path();
                let stem = path.file_stem()?.to_str()?.to_string();
                (path.extension()? == "json"
                    && !stem.starts_with("._")
                    && self.read_user(&stem).is_some())
                .then_some(stem)
            })
            .collect()
    }

    /// A user series file; unreadable or invalid JSON counts as absent (as upstream).
    fn read_user(&self, name: &str) -> Option<Series> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return None;
        }
        let path = self.user_dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).ok()?;
        let mut series: Series = serde_json::from_str(&text).ok()?;
        if series.suffix.is_empty() {
            series.suffix = name.to_string();
        }
        series.source = "user".into();
        series.modified_at = modified_rfc3339(&path).unwrap_or_default();
        Some(series)
    }
}

fn modified_rfc3339(path: &Path) -> Option<String> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(crate::telemetry::rfc3339(modified))
}

/// Upstream's series-name normalisation: trim, lower-case, spaces and path separators become
/// `-`, `..` becomes `-`, surrounding dashes go, and an empty result is `unknown` (as is one of
/// only dots, which upstream kept: `...` became `.`).
pub fn normalize_name(raw: &str) -> String {
    let lowered = raw.trim().to_lowercase().replace("..", "-");
    let mapped: String = lowered
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '/' || c == '\\' {
                '-'
            } else {
                c
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    // Only dots left ("...", "-.-") would name the directory itself or its parent.
    if trimmed.chars().all(|c| c == '.' || c == '-') {
        "unknown".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_load_and_user_series_shadow_them_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        assert!(store.names().contains(&"empty".to_string()));
        assert!(store.names().contains(&"simple".to_string()));
        assert_eq!(store.get("simple").unwrap().source, "builtin");

        std::fs::write(
            dir.path().join("simple.json"),
            r#"{"purpose":"mine","nouns":["fox"]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("fresh.json"), r#"{"suffix":"fresh"}"#).unwrap();
        std::fs::write(dir.path().join("broken.json"), "{not json").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let simple = store.get("simple").unwrap();
        assert_eq!(
            (simple.source.as_str(), simple.purpose.as_str()),
            ("user", "mine")
        );
        assert_eq!(simple.suffix, "simple");
        assert!(!simple.modified_at.is_empty());
        let names = store.names();
        assert!(names.contains(&"fresh".to_string()));
        assert!(!names.contains(&"broken".to_string()));
        assert!(!names.contains(&"notes".to_string()));
        assert!(
            names.windows(2).all(|w| w[0] < w[1]),
            "sorted and unique: {names:?}"
        );
        for name in [
            "simple", "empty", "fresh", "broken", "notes", "nope", "", ".hidden",
        ] {
            assert_eq!(
                store.contains(name),
                names.iter().any(|n| n == name),
                "contains({name:?}) must agree with names()"
            );
        }
    }

    #[test]
    fn accessors_expose_builtins_and_valid_user_series() {
        let dir = tempfile::tempdir().unwrap();
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        assert_eq!(store.user_dir(), dir.path());
        assert!(store.builtins().all(|s| s.source == "builtin"));
        assert_eq!(store.builtins().count(), store.builtin_names().count());
        assert_eq!(store.builtin("simple").unwrap().suffix, "simple");
        assert!(store.builtin("nope").is_none());
        assert!(store.user_series().is_empty());
        std::fs::write(dir.path().join("b.json"), r#"{"purpose":"b"}"#).unwrap();
        std::fs::write(dir.path().join("a.json"), r#"{"suffix":"a"}"#).unwrap();
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        std::fs::write(dir.path().join("._a.json"), "{}").unwrap();
        let users = store.user_series();
        let names: Vec<&str> = users.iter().map(|s| s.suffix.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(users.iter().all(|s| s.source == "user"));
        assert!(
            store.builtin("b").is_none(),
            "user series are not built-ins"
        );
    }

    #[test]
    fn json_keeps_upstream_names_and_nulls() {
        let series: Series =
            serde_json::from_str(r#"{"suffix":"x","colorLimit":"three","last":2}"#).unwrap();
        let v = serde_json::to_value(&series).unwrap();
        assert_eq!(v["colorLimit"], "three");
        assert_eq!(v["last"], 2);
        assert!(v["nouns"].is_null());
        assert!(v.get("purpose").is_none());
        assert!(v.get("deleted").is_none());
    }

    #[test]
    fn names_normalise_like_upstream() {
        assert_eq!(normalize_name("  Beta Series "), "beta-series");
        assert_eq!(
            normalize_name("Test%20Series".replace("%20", " ").as_str()),
            "test-series"
        );
        assert_eq!(normalize_name("../etc/passwd"), "etc-passwd");
        assert_eq!(normalize_name("   "), "unknown");
        assert_eq!(normalize_name("..."), "unknown");
        assert_eq!(normalize_name(". ."), "unknown");
        assert_eq!(normalize_name("v1.2"), "v1.2");
    }
}
