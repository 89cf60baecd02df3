//! Series: named filters over the databases. Built-ins are embedded; user series live in
//! `<data>/user-series/*.json` and shadow built-ins of the same name. They are kept parsed in
//! memory and the directory is looked at again when a listing sees its mtime move, or at most
//! once per [`RECHECK`] for lookups, so a new, changed or removed file is picked up without a
//! restart while `/dalle`'s per-request series check costs no file access.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

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

/// Built-in and user series. Clones share one user catalogue, so a refresh made through any
/// clone (the series administration works on one) is seen by all of them.
#[derive(Debug, Clone)]
pub struct SeriesStore {
    builtins: Arc<BTreeMap<String, Series>>,
    user: Arc<UserCatalogue>,
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
    /// The embedded built-ins plus the user series in `user_dir` (read on first use).
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
        Ok(SeriesStore {
            builtins: Arc::new(builtins),
            user: Arc::new(UserCatalogue::new(user_dir)),
        })
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
        &self.user.dir
    }

    /// Every readable user series (`source` = `user`), in file-name order; invalid files are
    /// skipped, as [`SeriesStore::get`] treats them as absent. A listing: the directory is
    /// stat'ed, so a file added or removed is seen at once.
    pub fn user_series(&self) -> Vec<Series> {
        self.user
            .snapshot(Check::Listing)
            .files
            .values()
            .filter_map(|f| f.series.clone())
            .collect()
    }

    /// A series by (already normalised) name: the user's file first, then the built-in.
    /// Answered from memory; see [`SeriesStore::contains`] for how fresh.
    pub fn get(&self, name: &str) -> Option<Series> {
        self.user
            .snapshot(Check::Lookup)
            .series(name)
            .cloned()
            .or_else(|| self.builtins.get(name).cloned())
    }

    /// Every usable series name (built-in and user, hidden ones included), sorted. A listing,
    /// as fresh as [`SeriesStore::user_series`].
    pub fn names(&self) -> Vec<String> {
        self.names_in(&self.user.snapshot(Check::Listing))
    }

    /// [`SeriesStore::names`] without the hidden series (`deleted` set), from one look at the
    /// user directory: what `/series` lists.
    pub fn visible_names(&self) -> Vec<String> {
        let user = self.user.snapshot(Check::Listing);
        let mut names = self.names_in(&user);
        names.retain(|name| !self.hidden_in(&user, name));
        names
    }

    /// Whether `name` is a hidden series. A hidden series is still found by
    /// [`SeriesStore::get`] and [`SeriesStore::contains`], so its images are still served; it
    /// is only left out of listings and refused for new runs. Answered from memory, as
    /// fresh as [`SeriesStore::contains`].
    pub fn is_hidden(&self, name: &str) -> bool {
        self.hidden_in(&self.user.snapshot(Check::Lookup), name)
    }

    fn hidden_in(&self, user: &Listing, name: &str) -> bool {
        user.series(name)
            .or_else(|| self.builtins.get(name))
            .is_some_and(|s| s.deleted)
    }

    fn names_in(&self, user: &Listing) -> Vec<String> {
        let mut names: Vec<String> = self.builtins.keys().cloned().collect();
        names.extend(
            user.files
                .iter()
                .filter(|(_, f)| f.series.is_some())
                .map(|(stem, _)| stem.clone()),
        );
        names.sort();
        names.dedup();
        names
    }

    /// Whether [`SeriesStore::names`] lists `name`. `/dalle` asks on every request, so this is
    /// answered from memory: the user directory is looked at again at most once per
    /// [`RECHECK`], and a file is parsed again only when its size or mtime changed.
    pub fn contains(&self, name: &str) -> bool {
        self.builtins.contains_key(name) || self.user.snapshot(Check::Lookup).series(name).is_some()
    }

    /// Re-reads the user directory now. Whoever writes a series file calls this afterwards so
    /// its own next lookup sees the write without waiting for [`RECHECK`].
    pub fn refresh(&self) {
        self.user.revalidate(None);
    }

    /// How many user series files have been parsed so far.
    #[cfg(test)]
    pub(crate) fn parses(&self) -> usize {
        self.user.parses.load(Ordering::Relaxed)
    }
}

/// How long lookups trust the in-memory user catalogue before looking at the directory again.
/// It bounds how late a hand-edited file is noticed by `/dalle`; writes through the server
/// refresh at once.
pub const RECHECK: Duration = Duration::from_secs(1);

/// A file whose mtime is this close to (or after) the moment it was read may still change
/// without its mtime moving, on file systems with coarse timestamps (FAT keeps 2 s). Such a
/// file is parsed again at the next check, whatever its size and mtime say.
const RACY: Duration = Duration::from_secs(2);

/// What a caller needs from the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// A point lookup on the hot path: no syscall unless [`RECHECK`] has passed.
    Lookup,
    /// A listing: one `stat` of the directory too, so an added, removed or atomically
    /// replaced file shows up at once.
    Listing,
}

/// The user series directory, parsed, with what is needed to tell when to parse it again.
///
/// The current [`Listing`] sits behind an `RwLock<Arc<…>>`: readers clone the `Arc` and let
/// go. Revalidations are serialised by `refresh`, and each one reads the directory after it
/// took that lock, so a snapshot published later never predates one published earlier (an
/// explicit refresh after a write cannot be overtaken by an older timer-driven scan). Scans
/// are numbered, so a caller that waited for the lock can tell whether the scan it waited
/// for started after it looked (then its answer is good enough) or before.
#[derive(Debug)]
struct UserCatalogue {
    dir: PathBuf,
    current: RwLock<Arc<Listing>>,
    refresh: Mutex<()>,
    /// How many scans have started.
    scans: AtomicU64,
    #[cfg(test)]
    parses: std::sync::atomic::AtomicUsize,
}

/// One look at the user directory.
#[derive(Debug, Default)]
struct Listing {
    /// Every `<stem>.json` that names a series, by stem; invalid ones are kept (as `None`) so
    /// they are not parsed again until they change.
    files: BTreeMap<String, UserFile>,
    /// The directory's mtime just before it was listed (`None`: missing or unreadable).
    dir_modified: Option<SystemTime>,
    /// `dir_modified` is too recent to prove that nothing was added since (file systems
    /// stamp with a clock that ticks every few milliseconds, or coarser).
    dir_racy: bool,
    /// When the directory was listed; `None` until the first look.
    checked: Option<Instant>,
    /// The number of the scan that made this catalogue (0: none yet).
    scan: u64,
}

#[derive(Debug, Clone)]
struct UserFile {
    stamp: Stamp,
    /// The stamp cannot be trusted yet (see [`RACY`]).
    racy: bool,
    series: Option<Series>,
}

/// What must stay equal for a file to count as unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Listing {
    fn series(&self, name: &str) -> Option<&Series> {
        self.files.get(name)?.series.as_ref()
    }
}

impl UserCatalogue {
    fn new(dir: PathBuf) -> UserCatalogue {
        UserCatalogue {
            dir,
            current: RwLock::new(Arc::new(Listing::default())),
            refresh: Mutex::new(()),
            scans: AtomicU64::new(0),
            #[cfg(test)]
            parses: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn current(&self) -> Arc<Listing> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The catalogue, revalidated first when it may be out of date for `check`.
    fn snapshot(&self, check: Check) -> Arc<Listing> {
        // Taken before anything is looked at: a scan numbered higher started afterwards.
        let ticket = self.scans.load(Ordering::SeqCst);
        let current = self.current();
        let now = Instant::now();
        let due = match current.checked {
            None => true,
            Some(checked) => {
                now.saturating_duration_since(checked) >= RECHECK
                    || (check == Check::Listing
                        && (current.dir_racy || dir_modified(&self.dir) != current.dir_modified))
            }
        };
        if due {
            self.revalidate(Some(ticket))
        } else {
            current
        }
    }

    /// Lists the directory again and parses what changed. With a `ticket` (the scan count
    /// when the caller looked), a scan started since (another thread's, while this one
    /// waited for the lock) is good enough.
    fn revalidate(&self, ticket: Option<u64>) -> Arc<Listing> {
        let _serial = self.refresh.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = self.current();
        if ticket.is_some_and(|ticket| previous.scan > ticket) {
            return previous;
        }
        let scan = self.scans.fetch_add(1, Ordering::SeqCst) + 1;
        let next = Arc::new(self.scan(&previous, scan));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&next);
        next
    }

    fn scan(&self, previous: &Listing, scan: u64) -> Listing {
        let checked = Some(Instant::now());
        // Taken before listing: a change made during the scan then shows up as a new mtime.
        let dir_modified = dir_modified(&self.dir);
        let read_at = SystemTime::now();
        let dir_racy = dir_modified.is_some() && racy(dir_modified, read_at);
        let mut files = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Listing {
                files,
                dir_modified,
                dir_racy,
                checked,
                scan,
            };
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some(stem) = series_stem(&path) else {
                continue;
            };
            // Followed like the read that comes next; what cannot be read counts as absent.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let modified = meta.modified().ok();
            let stamp = Stamp {
                len: meta.len(),
                modified,
            };
            let series = match previous.files.get(&stem) {
                Some(known) if known.stamp == stamp && !known.racy => known.series.clone(),
                _ => self.parse(&path, &stem, modified),
            };
            let racy = racy(modified, read_at);
            files.insert(
                stem,
                UserFile {
                    stamp,
                    racy,
                    series,
                },
            );
        }
        Listing {
            files,
            dir_modified,
            dir_racy,
            checked,
            scan,
        }
    }

    /// A user series file; unreadable or invalid JSON counts as absent (as upstream).
    fn parse(&self, path: &Path, name: &str, modified: Option<SystemTime>) -> Option<Series> {
        #[cfg(test)]
        self.parses.fetch_add(1, Ordering::Relaxed);
        let text = std::fs::read_to_string(path).ok()?;
        let mut series: Series = serde_json::from_str(&text).ok()?;
        if series.suffix.is_empty() {
            series.suffix = name.to_string();
        }
        series.source = "user".into();
        series.modified_at = modified.map(crate::telemetry::rfc3339).unwrap_or_default();
        Some(series)
    }
}

/// The series name of a `<name>.json` file: never a dot file (editor, AppleDouble `._x` and
/// temporary files) and never a name a lookup could not ask for.
fn series_stem(path: &Path) -> Option<String> {
    if path.extension()? != "json" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.is_empty() && !stem.starts_with('.') && !stem.contains(['/', '\\']))
        .then(|| stem.to_string())
}

/// Whether a file modified at `modified` and read at `read_at` may change again without its
/// mtime moving (an unknown mtime is never trusted).
fn racy(modified: Option<SystemTime>, read_at: SystemTime) -> bool {
    modified
        .and_then(|m| m.checked_add(RACY))
        .is_none_or(|settled| read_at < settled)
}

fn dir_modified(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir).ok()?.modified().ok()
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

    /// Backdates `path` past the [`RACY`] window, as a file left alone for an hour.
    fn settle(path: &Path) {
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }

    fn mtime(path: &Path) -> SystemTime {
        std::fs::metadata(path).unwrap().modified().unwrap()
    }

    fn purpose(store: &SeriesStore, name: &str) -> Option<String> {
        store.get(name).map(|s| s.purpose)
    }

    #[tokio::test(start_paused = true)]
    async fn builtins_load_and_user_series_shadow_them_without_restart() {
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
        // Lookups trust memory until the next check.
        tokio::time::advance(RECHECK).await;
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

    #[tokio::test(start_paused = true)]
    async fn lookups_see_added_changed_and_removed_files_by_the_next_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        let file = dir.path().join("mine.json");
        assert!(!store.contains("mine"));

        std::fs::write(&file, r#"{"purpose":"one"}"#).unwrap();
        assert!(
            !store.contains("mine"),
            "answered from memory until the check"
        );
        tokio::time::advance(RECHECK).await;
        assert!(store.contains("mine"));
        assert_eq!(purpose(&store, "mine").as_deref(), Some("one"));

        // Rewritten in place: the directory's mtime does not move, the file's does.
        std::fs::write(&file, r#"{"purpose":"two, and longer"}"#).unwrap();
        tokio::time::advance(RECHECK).await;
        assert_eq!(purpose(&store, "mine").as_deref(), Some("two, and longer"));

        std::fs::remove_file(&file).unwrap();
        tokio::time::advance(RECHECK).await;
        assert!(!store.contains("mine"));
        assert_eq!(store.get("mine"), None);
        assert!(!store.names().contains(&"mine".to_string()));
    }

    #[tokio::test(start_paused = true)]
    async fn listings_see_added_and_removed_files_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        std::fs::write(dir.path().join("old.json"), "{}").unwrap();
        settle(&dir.path().join("old.json"));
        settle(dir.path());
        assert!(store.names().contains(&"old".to_string()));
        assert_eq!(store.parses(), 1);

        std::fs::write(dir.path().join("new.json"), r#"{"purpose":"n"}"#).unwrap();
        assert!(
            store.names().contains(&"new".to_string()),
            "no check needed"
        );
        assert!(
            store.contains("new"),
            "and lookups share what the listing read"
        );
        assert_eq!(store.parses(), 2, "only the new file was parsed");

        std::fs::remove_file(dir.path().join("new.json")).unwrap();
        let users: Vec<String> = store.user_series().into_iter().map(|s| s.suffix).collect();
        assert_eq!(users, ["old"]);
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_files_are_answered_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("calm.json");
        std::fs::write(&file, r#"{"purpose":"calm"}"#).unwrap();
        settle(&file);
        settle(dir.path());
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        for _ in 0..100 {
            assert!(store.contains("calm"));
            assert_eq!(purpose(&store, "calm").as_deref(), Some("calm"));
            assert!(!store.contains("absent"));
            assert!(store.names().contains(&"calm".to_string()));
        }
        assert_eq!(store.parses(), 1);

        // Same size and mtime: only a parse could tell, and none happens, even after checks.
        let before = mtime(&file);
        std::fs::write(&file, r#"{"purpose":"CALM"}"#).unwrap();
        std::fs::File::open(&file)
            .unwrap()
            .set_modified(before)
            .unwrap();
        for _ in 0..3 {
            tokio::time::advance(RECHECK).await;
            assert_eq!(purpose(&store, "calm").as_deref(), Some("calm"));
            assert_eq!(store.user_series().len(), 1);
        }
        assert_eq!(
            store.parses(),
            1,
            "checks stat files, they do not parse them"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_changed_within_its_mtime_tick_is_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("quick.json");
        std::fs::write(&file, r#"{"purpose":"one"}"#).unwrap();
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        assert_eq!(purpose(&store, "quick").as_deref(), Some("one"));

        // A coarse clock gives the rewrite the very same mtime (and the size is the same).
        let first = mtime(&file);
        std::fs::write(&file, r#"{"purpose":"two"}"#).unwrap();
        std::fs::File::open(&file)
            .unwrap()
            .set_modified(first)
            .unwrap();
        tokio::time::advance(RECHECK).await;
        assert_eq!(purpose(&store, "quick").as_deref(), Some("two"));

        // Once settled, the stamp is trusted again.
        settle(&file);
        tokio::time::advance(RECHECK).await;
        assert_eq!(purpose(&store, "quick").as_deref(), Some("two"));
        let parses = store.parses();
        tokio::time::advance(RECHECK).await;
        assert!(store.contains("quick"));
        assert_eq!(store.parses(), parses);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_through_one_clone_is_seen_by_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        let admin = store.clone();
        assert!(!store.contains("made"));
        std::fs::write(dir.path().join("made.json"), "{}").unwrap();
        admin.refresh();
        assert!(store.contains("made"), "without waiting for the check");
    }

    #[test]
    fn hidden_series_are_found_but_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SeriesStore::new(dir.path().to_path_buf()).unwrap();
        std::fs::write(dir.path().join("shy.json"), r#"{"deleted":true}"#).unwrap();
        std::fs::write(dir.path().join("open.json"), r#"{"deleted":false}"#).unwrap();
        store.refresh();
        assert!(store.is_hidden("shy") && store.contains("shy"));
        assert!(store.get("shy").is_some_and(|s| s.deleted));
        assert!(!store.is_hidden("open") && !store.is_hidden("simple"));
        assert!(!store.is_hidden("absent"));
        assert!(store.names().contains(&"shy".to_string()));
        let visible = store.visible_names();
        assert!(!visible.contains(&"shy".to_string()));
        assert!(visible.contains(&"open".to_string()) && visible.contains(&"simple".to_string()));
        assert_eq!(visible.len() + 1, store.names().len());
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
