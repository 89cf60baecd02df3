//! A bounded in-memory cache of served files and their strong ETags.
//!
//! Every served file is validated against its metadata (inode, length, modification time) on
//! each request, so an atomic replace (a new inode) or a removal is seen at once; only the
//! bytes and their SHA-256 are reused. Files are small PNGs, so the cache holds whole files up
//! to a byte budget and drops the oldest entries first.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Files larger than this are read per request and not kept.
const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;

/// A file ready to serve.
#[derive(Debug, Clone)]
pub struct CachedFile {
    pub bytes: Bytes,
    /// Strong validator: `"` + hex SHA-256 of the bytes + `"`.
    pub etag: Arc<str>,
    pub modified: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<PathBuf, (Stamp, CachedFile)>,
    order: VecDeque<PathBuf>,
    bytes: u64,
}

/// The cache; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct FileCache {
    budget: u64,
    inner: Mutex<Inner>,
}

impl FileCache {
    /// A cache holding at most `budget` bytes of file content.
    pub fn new(budget: u64) -> FileCache {
        FileCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `path` (blocking I/O: call from `spawn_blocking`), from the cache when the file
    /// on disk is unchanged. `NotFound` when it is missing or not a regular file.
    pub fn read(&self, path: &Path) -> io::Result<CachedFile> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not a regular file",
            ));
        }
        let stamp = Stamp::of(&meta);
        if let Some((cached_stamp, file)) = self.lock().entries.get(path)
            && *cached_stamp == stamp
        {
            return Ok(file.clone());
        }
        let bytes = Bytes::from(std::fs::read(path)?);
        let etag: Arc<str> = format!("\"{}\"", hex::encode(Sha256::digest(&bytes))).into();
        let file = CachedFile {
            bytes,
            etag,
            modified: meta.modified()?,
        };
        // The file may have been replaced between stat and read; then the stamp is stale and
        // the next request simply reads again.
        if stamp.len == file.bytes.len() as u64 && stamp.len <= MAX_ENTRY_BYTES {
            self.insert(path, stamp, file.clone());
        }
        Ok(file)
    }

    fn insert(&self, path: &Path, stamp: Stamp, file: CachedFile) {
        let mut inner = self.lock();
        let size = file.bytes.len() as u64;
        if let Some((_, old)) = inner.entries.insert(path.to_path_buf(), (stamp, file)) {
            inner.bytes -= old.bytes.len() as u64;
        } else {
            inner.order.push_back(path.to_path_buf());
        }
        inner.bytes += size;
        while inner.bytes > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some((_, evicted)) = inner.entries.remove(&oldest) {
                inner.bytes -= evicted.bytes.len() as u64;
            }
        }
    }

    /// Drops a path (after a removal), so its bytes are not held any longer.
    pub fn forget(&self, path: &Path) {
        let mut inner = self.lock();
        if let Some((_, old)) = inner.entries.remove(path) {
            inner.bytes -= old.bytes.len() as u64;
            inner.order.retain(|p| p != path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_atomic_replacements_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let cache = FileCache::new(1024);
        crate::storage::write_atomic(&path, b"first").unwrap();
        let one = cache.read(&path).unwrap();
        assert_eq!(&one.bytes[..], b"first");
        assert_eq!(cache.read(&path).unwrap().etag, one.etag);
        crate::storage::write_atomic(&path, b"second").unwrap();
        let two = cache.read(&path).unwrap();
        assert_eq!(&two.bytes[..], b"second");
        assert_ne!(two.etag, one.etag);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            cache.read(&path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn etag_is_the_quoted_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        let file = FileCache::new(1024).read(&path).unwrap();
        assert_eq!(
            &*file.etag,
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
    }

    #[test]
    fn stays_within_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(10);
        for i in 0..5 {
            let path = dir.path().join(format!("{i}"));
            std::fs::write(&path, b"1234").unwrap();
            cache.read(&path).unwrap();
        }
        assert!(cache.lock().bytes <= 10);
        assert!(cache.lock().entries.len() <= 2);
    }
}
