//! Where a run's artifacts live, as a narrow trait ([`ArtifactStore`]) with today's local-disk
//! implementation ([`DiskStore`]): `<output>/<series>/<kind>/<subject>.<ext>`, the Go server's
//! layout, so existing data dirs and scripts that read them keep working.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

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

/// A run's files. Writes are atomic: a reader sees the old bytes or the new, never a part.
pub trait ArtifactStore: Send + Sync + fmt::Debug {
    /// Writes one file of `key` (blocking I/O).
    fn put(&self, key: &RunKey, kind: &str, ext: &str, bytes: &[u8]) -> io::Result<()>;

    /// Whether the file exists, answered without blocking I/O where the store can (one `stat`
    /// of a local file, which the kernel answers from its inode cache).
    fn lookup(&self, key: &RunKey, kind: &str, ext: &str) -> Lookup;

    /// Reads the file (blocking I/O); `Ok(None)` when it does not exist.
    fn read(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<Option<CachedFile>>;

    /// Removes the file (blocking I/O); `Ok(false)` when there was none.
    fn remove(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<bool>;

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
}

impl DiskStore {
    /// The store under `root` (the data dir's `output/`), caching reads in `cache`.
    pub fn new(root: PathBuf, cache: Arc<FileCache>) -> DiskStore {
        DiskStore { root, cache }
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
}

impl ArtifactStore for DiskStore {
    fn put(&self, key: &RunKey, kind: &str, ext: &str, bytes: &[u8]) -> io::Result<()> {
        crate::storage::write_atomic(&self.path(key, kind, ext), bytes)
    }

    fn lookup(&self, key: &RunKey, kind: &str, ext: &str) -> Lookup {
        match self.cache.fresh(&self.path(key, kind, ext)) {
            Ok(Some(file)) => Lookup::Cached(file),
            Ok(None) => Lookup::Present,
            Err(_) => Lookup::Absent,
        }
    }

    fn read(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<Option<CachedFile>> {
        match self.cache.read(&self.path(key, kind, ext)) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove(&self, key: &RunKey, kind: &str, ext: &str) -> io::Result<bool> {
        let path = self.path(key, kind, ext);
        self.cache.forget(&path);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    crate::storage::sync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
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
}
