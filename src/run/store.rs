//! Where a run's artifacts live, as a narrow trait ([`ArtifactStore`]) with today's local-disk
//! implementation ([`DiskStore`]): `<output>/<series>/<kind>/<subject>.<ext>`, the Go server's
//! layout, so existing data dirs and scripts that read them keep working.
//!
//! Everything that reads or lists stored files (`/dalle`, `/files`, the gallery, `/health`)
//! goes through the trait, so none of it knows whether the store is a local disk.
//!
//! Containment, the one rule for every read: a stored file is served only when the real path
//! it leads to (after following symbolic links) is inside the output directory. A link planted
//! in the data dir that leads elsewhere (`annotated/<a>.png -> /etc/passwd`) is treated as no
//! file at all, by `/dalle` and `/files` alike.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::progress::RunKey;
use crate::storage::{CachedFile, FileCache};

/// What [`ArtifactStore::lookup`] found, without blocking.
#[derive(Debug)]
pub enum Lookup {
    /// The artifact, unchanged since it was last read: its bytes from memory.
    Cached(CachedFile),
    /// The artifact exists; [`ArtifactStore::read`] fetches it.
    Present,
    /// No such artifact.
    Absent,
}

/// One stored file of a listing ([`ArtifactStore::list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub series: String,
    /// The file name without its extension, as stored (lower case for addresses).
    pub stem: String,
    /// The name relative to the store, `<series>/<kind>/<stem>.<ext>` (what `/files/` serves
    /// it under).
    pub name: String,
    pub modified: SystemTime,
}

/// `(kind, extension)` of one file a run writes.
pub type FileKind = (&'static str, &'static str);

/// Why a run cannot write one of its files: something other than a file stands where the file
/// (or the folder it goes in) must be. Found before the run spends anything; removing the key's
/// image clears it ([`ArtifactStore::clear`]). The text names the artifact by its kind, never
/// by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot write the {kind} artifact: {what} is in its place (removing the image clears it)")]
pub struct Blocked {
    /// The artifact's kind (`annotated`, `selector`, …).
    pub kind: &'static str,
    /// What is in the way, e.g. "a directory".
    pub what: &'static str,
}

/// A run's files. Writes are atomic: a reader sees the old bytes or the new, never a part.
pub trait ArtifactStore: Send + Sync + fmt::Debug {
    /// Writes one file of `key` (blocking I/O).
    fn put(&self, key: &RunKey, kind: &str, ext: &str, bytes: &[u8]) -> io::Result<()>;

    /// Whether the file exists, answered without blocking I/O where the store can (one `stat`
    /// of a local file, which the kernel answers from its inode cache).
    fn lookup(&self, key: &RunKey, kind: &str, ext: &str) -> Lookup;

    /// Reads the file (blocking I/O); `Ok(None)` when it does not exist.
    fn read(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<Option<CachedFile>>;

    /// Removes the file (blocking I/O), or whatever else is at its name (a directory too);
    /// `Ok(false)` when there was nothing.
    fn remove(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<bool>;

    /// Checks, before a run spends anything, that each of `files` of `key` can be written
    /// (blocking I/O): nothing but a file is at its name or in place of its folder.
    fn check_writable(&self, key: &RunKey, files: &[FileKind]) -> Result<(), Blocked>;

    /// Removes whatever would make [`ArtifactStore::check_writable`] refuse `files` of `key`
    /// (blocking I/O); stored files are kept. Returns whether anything was removed.
    fn clear(&self, key: &RunKey, files: &[FileKind]) -> io::Result<bool>;

    /// Every stored file of `kind` with extension `ext`, of every series (blocking I/O), in no
    /// particular order. Hidden names (temporary writes) are never listed.
    fn list(&self, kind: &str, ext: &str) -> Vec<Listed>;

    /// [`ArtifactStore::lookup`] by stored name (`<series>/<kind>/<file>`, what `/files/`
    /// serves); a name with an empty, hidden, `.` or `..` segment, a backslash or a NUL is
    /// [`Lookup::Absent`].
    fn lookup_named(&self, name: &str) -> Lookup;

    /// [`ArtifactStore::read`] by stored name (blocking I/O), with the naming rules of
    /// [`ArtifactStore::lookup_named`].
    fn read_named(&self, name: &str) -> io::Result<Option<CachedFile>>;

    /// Proves the store can be written now (blocking I/O), for `/health`.
    fn probe(&self) -> io::Result<()>;

    /// The file's name relative to the store, `<series>/<kind>/<subject>.<ext>` (what
    /// `/files/` serves it under).
    fn name(&self, key: &RunKey, kind: &str, ext: &str) -> String {
        let stem = crate::attributes::selection::valid_filename(key.subject.as_str());
        format!("{}/{kind}/{stem}.{ext}", key.series)
    }
}

/// Artifacts as files under the data dir's `output/`, read through the shared file cache.
#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
    cache: Arc<FileCache>,
    /// `root` with every link resolved, found once (the output dir does not move while the
    /// server runs).
    real_root: OnceLock<PathBuf>,
}

impl DiskStore {
    /// The store under `root` (the data dir's `output/`), caching reads in `cache`.
    pub fn new(root: PathBuf, cache: Arc<FileCache>) -> DiskStore {
        DiskStore {
            root,
            cache,
            real_root: OnceLock::new(),
        }
    }

    /// `<root>/<series>/<kind>/<subject>.<ext>`, built in one allocation (every hit builds one).
    pub fn path(&self, key: &RunKey, kind: &str, ext: &str) -> PathBuf {
        let stem = crate::attributes::selection::valid_filename(key.subject.as_str());
        let root = self.root.as_os_str();
        let series = key.series.as_str();
        // Three separators and the dot fit in the 8 spare bytes.
        let len = root.len() + series.len() + kind.len() + stem.len() + ext.len() + 8;
        let mut path = PathBuf::with_capacity(len);
        path.push(root);
        path.push(series);
        path.push(kind);
        path.push(&*stem);
        path.as_mut_os_string().push(".");
        path.as_mut_os_string().push(ext);
        path
    }

    /// `<root>/<name>` when every segment of `name` is a plain, visible name.
    fn named_path(&self, name: &str) -> Option<PathBuf> {
        let relative = Path::new(name);
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(s) if !s.to_string_lossy().starts_with('.')));
        if name.is_empty() || name.contains(['\\', '\0']) || !plain {
            return None;
        }
        Some(self.root.join(relative))
    }

    /// The containment rule: `path` leads (after every link) to somewhere inside the output
    /// directory. Costs a `realpath`, so it is checked where a file is read from disk, not on
    /// a cache hit: a cached entry was read from a contained file, and a link put in its place
    /// later resolves to another file (another device or inode), which is a miss.
    fn contained(&self, path: &Path) -> bool {
        let root = match self.real_root.get() {
            Some(root) => root,
            None => match self.root.canonicalize() {
                Ok(real) => self.real_root.get_or_init(|| real),
                Err(_) => return false,
            },
        };
        path.canonicalize().is_ok_and(|real| real.starts_with(root))
    }

    /// A hit costs one `stat`; a miss adds the containment check (a `realpath`: one `lstat`
    /// per path segment, from the kernel's inode cache), and is followed by a read anyway.
    fn lookup_path(&self, path: &Path) -> Lookup {
        match self.cache.fresh(path) {
            Ok(Some(file)) => Lookup::Cached(file),
            Ok(None) if self.contained(path) => Lookup::Present,
            Ok(None) | Err(_) => Lookup::Absent,
        }
    }

    fn read_path(&self, path: &Path) -> io::Result<Option<CachedFile>> {
        match self.cache.fresh(path) {
            Ok(Some(file)) => return Ok(Some(file)),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        if !self.contained(path) {
            return Ok(None);
        }
        match self.cache.read(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What stands at a folder a run writes into, if it is not one the run can use: a file,
    /// or a link that does not lead to a folder inside the output directory.
    fn folder_in_the_way(&self, dir: &Path) -> Option<&'static str> {
        let meta = std::fs::symlink_metadata(dir).ok()?;
        if meta.is_dir() {
            return None;
        }
        if meta.file_type().is_symlink() {
            let to_dir = std::fs::metadata(dir).is_ok_and(|m| m.is_dir());
            return (!to_dir || !self.contained(dir))
                .then_some("a link that does not lead to a folder of the store");
        }
        Some("a file")
    }

    /// The folders of `key`'s files of `kind`: `<root>/<series>` and `<root>/<series>/<kind>`.
    fn folders(&self, key: &RunKey, kind: &str) -> [PathBuf; 2] {
        let series = self.root.join(key.series.as_str());
        let kind = series.join(kind);
        [series, kind]
    }
}

/// Whether a directory is at an artifact's own name: the rename that writes the artifact would
/// fail. (A file or a link there is simply replaced by the rename; nothing is written through a
/// link.)
fn dir_at(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir())
}

/// Removes whatever is at `path` without following a link: a directory with its contents.
fn remove_any(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path)?;
    } else {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        crate::storage::sync_dir(dir)?;
    }
    Ok(true)
}

impl ArtifactStore for DiskStore {
    fn put(&self, key: &RunKey, kind: &str, ext: &str, bytes: &[u8]) -> io::Result<()> {
        crate::storage::write_atomic(&self.path(key, kind, ext), bytes)
    }

    fn lookup(&self, key: &RunKey, kind: &str, ext: &str) -> Lookup {
        self.lookup_path(&self.path(key, kind, ext))
    }

    fn read(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<Option<CachedFile>> {
        self.read_path(&self.path(key, kind, ext))
    }

    fn remove(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<bool> {
        let path = self.path(key, kind, ext);
        self.cache.forget(&path);
        remove_any(&path)
    }

    fn check_writable(&self, key: &RunKey, files: &[FileKind]) -> Result<(), Blocked> {
        for &(kind, ext) in files {
            for dir in self.folders(key, kind) {
                if let Some(what) = self.folder_in_the_way(&dir) {
                    return Err(Blocked { kind, what });
                }
            }
            if dir_at(&self.path(key, kind, ext)) {
                return Err(Blocked {
                    kind,
                    what: "a directory",
                });
            }
        }
        Ok(())
    }

    fn clear(&self, key: &RunKey, files: &[FileKind]) -> io::Result<bool> {
        let mut removed = false;
        for &(kind, ext) in files {
            for dir in self.folders(key, kind) {
                if self.folder_in_the_way(&dir).is_some() {
                    removed |= remove_any(&dir)?;
                }
            }
            let path = self.path(key, kind, ext);
            if dir_at(&path) {
                self.cache.forget(&path);
                removed |= remove_any(&path)?;
            }
        }
        Ok(removed)
    }

    fn list(&self, kind: &str, ext: &str) -> Vec<Listed> {
        let Ok(series_dirs) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let suffix = format!(".{ext}");
        let mut listed = Vec::new();
        for dir in series_dirs.flatten() {
            let series = dir.file_name().to_string_lossy().into_owned();
            if series.starts_with('.') {
                continue;
            }
            let folder = dir.path().join(kind);
            let linked = [dir.path(), folder.clone()]
                .iter()
                .any(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()));
            if linked && !self.contained(&folder) {
                continue;
            }
            let Ok(files) = std::fs::read_dir(&folder) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                let Some(stem) = name.strip_suffix(suffix.as_str()) else {
                    continue;
                };
                if stem.is_empty() || name.starts_with('.') {
                    continue;
                }
                let Ok(mut meta) = file.metadata() else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    if !self.contained(&file.path()) {
                        continue;
                    }
                    let Ok(target) = std::fs::metadata(file.path()) else {
                        continue;
                    };
                    meta = target;
                }
                if !meta.is_file() {
                    continue;
                }
                listed.push(Listed {
                    name: format!("{series}/{kind}/{name}"),
                    stem: stem.to_string(),
                    series: series.clone(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        listed
    }

    fn lookup_named(&self, name: &str) -> Lookup {
        match self.named_path(name) {
            Some(path) => self.lookup_path(&path),
            None => Lookup::Absent,
        }
    }

    fn read_named(&self, name: &str) -> io::Result<Option<CachedFile>> {
        match self.named_path(name) {
            Some(path) => self.read_path(&path),
            None => Ok(None),
        }
    }

    fn probe(&self) -> io::Result<()> {
        crate::storage::probe_writable(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Address, SeriesName};

    #[test]
    fn disk_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::new(dir.path().join("output"), Arc::new(FileCache::new(1 << 20)));
        let key = RunKey::new(
            SeriesName::normalize("simple"),
            Address::parse("0xf503017d7baf7fbc0fff7492b751025c6a78179b").unwrap(),
        );
        assert!(matches!(
            store.lookup(&key, "annotated", "png"),
            Lookup::Absent
        ));
        store.put(&key, "annotated", "png", b"png bytes").unwrap();
        assert_eq!(
            store.path(&key, "annotated", "png"),
            dir.path()
                .join("output/simple/annotated/0xf503017d7baf7fbc0fff7492b751025c6a78179b.png")
        );
        assert!(matches!(
            store.lookup(&key, "annotated", "png"),
            Lookup::Present
        ));
        let read = store.read(&key, "annotated", "png").unwrap().unwrap();
        assert_eq!(&read.bytes[..], b"png bytes");
        assert!(matches!(
            store.lookup(&key, "annotated", "png"),
            Lookup::Cached(_)
        ));
        assert_eq!(
            store.name(&key, "annotated", "png"),
            "simple/annotated/0xf503017d7baf7fbc0fff7492b751025c6a78179b.png"
        );
        assert!(store.remove(&key, "annotated", "png").unwrap());
        assert!(!store.remove(&key, "annotated", "png").unwrap());
        assert!(matches!(
            store.lookup(&key, "annotated", "png"),
            Lookup::Absent
        ));
        assert!(store.read(&key, "annotated", "png").unwrap().is_none());
    }

    fn key(address: &str) -> RunKey {
        RunKey::new(
            SeriesName::normalize("simple"),
            Address::parse(address).unwrap(),
        )
    }

    const B: &str = "0x2222222222222222222222222222222222222222";

    /// A store under `<tmp>/output` and a file outside it.
    fn store_and_secret() -> (tempfile::TempDir, DiskStore, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("output");
        std::fs::create_dir_all(root.join("simple/annotated")).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"root:x:0:0").unwrap();
        let store = DiskStore::new(root, Arc::new(FileCache::new(1 << 20)));
        (dir, store, secret)
    }

    #[test]
    fn a_link_out_of_the_store_is_no_file_by_key_or_by_name() {
        let (_dir, store, secret) = store_and_secret();
        let k = key(B);
        let path = store.path(&k, "annotated", "png");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        assert!(matches!(
            store.lookup(&k, "annotated", "png"),
            Lookup::Absent
        ));
        assert!(store.read(&k, "annotated", "png").unwrap().is_none());
        let name = store.name(&k, "annotated", "png");
        assert!(matches!(store.lookup_named(&name), Lookup::Absent));
        assert!(store.read_named(&name).unwrap().is_none());
        assert!(store.list("annotated", "png").is_empty());

        // The same file, read while it was a real file, then swapped for the link: the cached
        // copy is not served for the link (another file), and the link is refused.
        std::fs::remove_file(&path).unwrap();
        store.put(&k, "annotated", "png", b"png bytes").unwrap();
        assert!(store.read(&k, "annotated", "png").unwrap().is_some());
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        assert!(matches!(
            store.lookup(&k, "annotated", "png"),
            Lookup::Absent
        ));
        assert!(store.read_named(&name).unwrap().is_none());

        // A link that stays inside the store is served (and listed).
        std::fs::remove_file(&path).unwrap();
        store.put(&k, "generated", "png", b"inside").unwrap();
        std::os::unix::fs::symlink(store.path(&k, "generated", "png"), &path).unwrap();
        let inside = store.read(&k, "annotated", "png").unwrap().unwrap();
        assert_eq!(&inside.bytes[..], b"inside");
        assert_eq!(store.list("annotated", "png").len(), 1);
        // Removing the image removes the link, not what it points at.
        assert!(store.remove(&k, "annotated", "png").unwrap());
        assert!(store.path(&k, "generated", "png").exists());
    }

    #[test]
    fn only_plain_names_inside_the_store_are_read() {
        let (_dir, store, secret) = store_and_secret();
        std::fs::write(store.root.join("simple/annotated/a.png"), b"x").unwrap();
        std::os::unix::fs::symlink(&secret, store.root.join("simple/link")).unwrap();
        assert!(
            store
                .read_named("simple/annotated/a.png")
                .unwrap()
                .is_some()
        );
        for bad in [
            "",
            "../secret",
            "simple/../../secret",
            "/etc/passwd",
            "simple/link",
            ".hidden",
            "simple/.hidden",
            "simple\\a",
            "simple/annotated",
            "simple/annotated/a.png\0",
        ] {
            assert!(
                store.read_named(bad).unwrap_or(None).is_none(),
                "{bad:?} was read"
            );
            assert!(matches!(store.lookup_named(bad), Lookup::Absent), "{bad:?}");
        }
    }

    #[test]
    fn a_folder_in_place_of_an_artifact_is_found_before_writing_and_cleared() {
        let (_dir, store, secret) = store_and_secret();
        let k = key(B);
        let files: &[FileKind] = &[("selector", "json"), ("annotated", "png")];
        assert_eq!(store.check_writable(&k, files), Ok(()));
        store.put(&k, "selector", "json", b"{}").unwrap();
        assert_eq!(
            store.check_writable(&k, files),
            Ok(()),
            "a file is replaced"
        );

        let path = store.path(&k, "annotated", "png");
        std::fs::create_dir_all(path.join("inner")).unwrap();
        std::fs::write(path.join("inner/file"), b"x").unwrap();
        let blocked = store.check_writable(&k, files).unwrap_err();
        assert_eq!(
            blocked,
            Blocked {
                kind: "annotated",
                what: "a directory"
            }
        );
        assert!(!blocked.to_string().contains('/'), "{blocked}");
        assert!(matches!(
            store.lookup(&k, "annotated", "png"),
            Lookup::Absent
        ));

        assert!(store.clear(&k, files).unwrap());
        assert!(!path.exists());
        assert!(
            store.path(&k, "selector", "json").exists(),
            "files are kept"
        );
        assert_eq!(store.check_writable(&k, files), Ok(()));
        assert!(!store.clear(&k, files).unwrap(), "nothing left to clear");

        // A file where a folder goes, and a folder linked out of the store.
        let kind_dir = store.root.join("simple/generated");
        std::fs::write(&kind_dir, b"x").unwrap();
        let files: &[FileKind] = &[("generated", "png")];
        assert_eq!(store.check_writable(&k, files).unwrap_err().what, "a file");
        assert!(store.clear(&k, files).unwrap());
        std::os::unix::fs::symlink(secret.parent().unwrap(), &kind_dir).unwrap();
        assert!(store.check_writable(&k, files).is_err());
        assert!(store.clear(&k, files).unwrap());
        assert_eq!(store.check_writable(&k, files), Ok(()));
        assert!(secret.exists(), "clearing a link leaves its target alone");

        // `remove` takes a folder at the image's name too.
        std::fs::create_dir_all(&path).unwrap();
        assert!(store.remove(&k, "annotated", "png").unwrap());
        assert!(!path.exists());
    }
}
