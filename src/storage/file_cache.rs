//! A bounded in-memory cache of served files and their strong ETags.
//!
//! Every served file is validated against its metadata (inode, length, modification time) on
//! each request, so an atomic replace (a new inode) or a removal is seen at once; only the
//! bytes and their SHA-256 are reused. Files are small PNGs, so the cache holds whole files up
//! to a byte budget. Eviction is "second chance" (CLOCK): entries leave in insertion order,
//! except that one served since it was last considered goes round again, so hot images stay.
//!
//! A hit costs one `stat` of a local file, which the kernel answers from its inode cache in
//! about a microsecond: [`FileCache::fresh`] is cheap enough to call on an async worker (as
//! nginx stats files on its event loop). Only reading bytes goes to the blocking pool.
//!
//! Responses are written from these bytes, the very bytes the ETag was computed from: a file
//! replaced on disk gets a new stamp, so it is read (and hashed) again before it is served.
//!
//! A file of at least [`ZERO_COPY_MIN_BYTES`] also keeps the open file its bytes were read
//! from ([`FileSource`], at most [`MAX_OPEN_SOURCES`] at a time), so the connection can send
//! the body with `sendfile(2)` instead of copying it (see [`ZeroCopy`]). The open file is the
//! same inode the bytes and ETag came from, and it is only handed out with an entry whose
//! stamp (inode, length, modification time) the request's `stat` just matched: the bytes
//! `sendfile` sends are the bytes the ETag names.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::HeaderValue;
use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Files larger than this are read per request and not kept.
const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;
/// Files at least this large keep their open file for `sendfile`; below it the copy costs
/// less than the extra system call.
pub const ZERO_COPY_MIN_BYTES: u64 = 16 * 1024;
/// At most this many cached files are kept open, so the cache never competes with
/// connections for file descriptors; later ones are served by copying.
pub const MAX_OPEN_SOURCES: usize = 256;

/// A file ready to serve.
#[derive(Debug, Clone)]
pub struct CachedFile {
    pub bytes: Bytes,
    pub modified: SystemTime,
    /// `ETag`, `Last-Modified` and `Content-Length` of a full response, rendered once when the
    /// file is read: every hit clones them (a reference count each) instead of formatting
    /// and allocating three header values.
    pub header_values: Arc<HeaderValues>,
    /// The open file the bytes were read from, for `sendfile` (large cached files only).
    pub source: Option<Arc<FileSource>>,
    /// The bytes' content id, hashed once when the file is read (the ETag is this CID).
    pub cid: crate::cid::Cid,
}

/// An open file whose content is a [`CachedFile`]'s bytes.
#[derive(Debug)]
pub struct FileSource {
    pub file: File,
    /// Counts this file against [`MAX_OPEN_SOURCES`] until it is closed.
    open: Arc<AtomicUsize>,
}

impl Drop for FileSource {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that is `bytes`, which are the bytes of `source` from `offset` on: the
/// file handler attaches it to a response (as an extension) and the connection may then send
/// those bytes with `sendfile` from the file (see `crate::server`). Holding `bytes` keeps
/// their memory allocated, so no other buffer can share their address while it is attached.
#[derive(Debug, Clone)]
pub struct ZeroCopy {
    pub bytes: Bytes,
    pub source: Arc<FileSource>,
    pub offset: u64,
}

/// Response header values that only depend on the file.
#[derive(Debug)]
pub struct HeaderValues {
    /// Strong validator: `"` + the bytes' CID (a SHA-256 multihash, [`crate::cid`]) + `"`.
    pub etag: HeaderValue,
    pub last_modified: HeaderValue,
    pub content_length: HeaderValue,
}

impl CachedFile {
    /// The file with these bytes, strong ETag and modification time.
    pub fn new(bytes: Bytes, modified: SystemTime) -> CachedFile {
        let cid = crate::cid::Cid::from_digest(Sha256::digest(&bytes).into());
        let etag = format!("\"{cid}\"");
        let header_values = HeaderValues {
            // Quoted hex and an IMF-fixdate are visible ASCII: both are valid header values.
            etag: HeaderValue::try_from(etag).unwrap_or_else(|_| HeaderValue::from_static("")),
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(modified))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            content_length: HeaderValue::from(bytes.len()),
        };
        CachedFile {
            bytes,
            modified,
            header_values: Arc::new(header_values),
            source: None,
            cid,
        }
    }

    /// What lets the connection send `self.bytes[start..end]` with `sendfile`, if the file
    /// kept its open file.
    pub fn zero_copy(&self, start: usize, end: usize) -> Option<ZeroCopy> {
        let source = self.source.clone()?;
        let bytes = self
            .bytes
            .get(start..end)
            .map(|_| self.bytes.slice(start..end))?;
        Some(ZeroCopy {
            bytes,
            source,
            offset: start as u64,
        })
    }

    /// The strong ETag, quotes included.
    pub fn etag(&self) -> &str {
        self.header_values.etag.to_str().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    /// With the inode, which file this is: a link put in place of a cached file resolves to
    /// another file, never to the cached one (the store checks containment on a miss).
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

#[derive(Debug)]
struct Entry {
    stamp: Stamp,
    file: CachedFile,
    /// Served since eviction last looked at it: it gets a second chance.
    referenced: bool,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<PathBuf, Entry>,
    order: VecDeque<PathBuf>,
    bytes: u64,
}

impl Inner {
    fn remove(&mut self, path: &Path) -> Option<Entry> {
        let old = self.entries.remove(path)?;
        self.bytes -= old.file.bytes.len() as u64;
        Some(old)
    }
}

/// The cache; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct FileCache {
    budget: u64,
    inner: Mutex<Inner>,
    /// How many [`FileSource`]s are open.
    open_sources: Arc<AtomicUsize>,
}

impl FileCache {
    /// A cache holding at most `budget` bytes of file content.
    pub fn new(budget: u64) -> FileCache {
        FileCache {
            budget,
            inner: Mutex::new(Inner::default()),
            open_sources: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached copy of `path` when the file on disk is unchanged, after one `stat` and no
    /// read; `Ok(None)` when its bytes must be read with [`FileCache::read`]. `NotFound` when
    /// it is missing or not a regular file.
    pub fn fresh(&self, path: &Path) -> io::Result<Option<CachedFile>> {
        let meta = regular_file(std::fs::metadata(path)?)?;
        Ok(self.hit(path, Stamp::of(&meta)))
    }

    fn hit(&self, path: &Path, stamp: Stamp) -> Option<CachedFile> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(path).filter(|e| e.stamp == stamp)?;
        entry.referenced = true;
        Some(entry.file.clone())
    }

    /// Reads `path` (blocking I/O: call from `spawn_blocking`), from the cache when the file
    /// on disk is unchanged. `NotFound` when it is missing or not a regular file.
    pub fn read(&self, path: &Path) -> io::Result<CachedFile> {
        if let Some(file) = self.fresh(path)? {
            return Ok(file);
        }
        // Stamp, bytes and the kept file all come from one open file: one inode.
        let mut handle = File::open(path)?;
        let meta = regular_file(handle.metadata()?)?;
        let stamp = Stamp::of(&meta);
        let mut buffer = Vec::new();
        handle.read_to_end(&mut buffer)?;
        let mut file = CachedFile::new(Bytes::from(buffer), meta.modified()?);
        // Written in place while we read (this server only ever renames new files in): serve
        // what was read, keep nothing, and the next request reads again.
        let unchanged = Stamp::of(&handle.metadata()?) == stamp;
        if unchanged && stamp.len == file.bytes.len() as u64 && stamp.len <= MAX_ENTRY_BYTES {
            if stamp.len >= ZERO_COPY_MIN_BYTES {
                file.source = self.keep_open(handle);
            }
            self.insert(path, stamp, file.clone());
        }
        Ok(file)
    }

    /// `file` as a [`FileSource`], unless [`MAX_OPEN_SOURCES`] are open already.
    fn keep_open(&self, file: File) -> Option<Arc<FileSource>> {
        let taken = self
            .open_sources
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_OPEN_SOURCES).then_some(n + 1)
            });
        taken.is_ok().then(|| {
            Arc::new(FileSource {
                file,
                open: self.open_sources.clone(),
            })
        })
    }

    /// How many cached files are open for `sendfile`.
    pub fn open_sources(&self) -> usize {
        self.open_sources.load(Ordering::Acquire)
    }

    fn insert(&self, path: &Path, stamp: Stamp, file: CachedFile) {
        let mut inner = self.lock();
        // A replaced entry keeps its place in the eviction order.
        let replaced = inner.remove(path).is_some();
        inner.bytes += file.bytes.len() as u64;
        let entry = Entry {
            stamp,
            file,
            referenced: false,
        };
        inner.entries.insert(path.to_path_buf(), entry);
        if !replaced {
            inner.order.push_back(path.to_path_buf());
        }
        // Each pass either evicts an entry or clears a flag, so this ends within two rounds.
        while inner.bytes > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            let Some(entry) = inner.entries.get_mut(&oldest) else {
                continue;
            };
            if entry.referenced {
                entry.referenced = false;
                inner.order.push_back(oldest);
            } else {
                inner.remove(&oldest);
            }
        }
    }

    /// Drops a path (after a removal), so its bytes are not held any longer.
    pub fn forget(&self, path: &Path) {
        let mut inner = self.lock();
        if inner.remove(path).is_some() {
            inner.order.retain(|p| p != path);
        }
    }
}

/// `meta` if it describes a regular file (after symlinks), else `NotFound`.
fn regular_file(meta: std::fs::Metadata) -> io::Result<std::fs::Metadata> {
    if meta.is_file() {
        Ok(meta)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not a regular file",
        ))
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
        assert_eq!(cache.read(&path).unwrap().etag(), one.etag());
        crate::storage::write_atomic(&path, b"second").unwrap();
        let two = cache.read(&path).unwrap();
        assert_eq!(&two.bytes[..], b"second");
        assert_ne!(two.etag(), one.etag());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            cache.read(&path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn large_files_keep_their_open_file_up_to_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(1 << 30);
        let small = dir.path().join("small");
        std::fs::write(&small, vec![1u8; ZERO_COPY_MIN_BYTES as usize - 1]).unwrap();
        assert!(
            cache.read(&small).unwrap().source.is_none(),
            "small: copied"
        );
        let mut kept = Vec::new();
        for i in 0..MAX_OPEN_SOURCES + 3 {
            let path = dir.path().join(format!("big-{i}"));
            std::fs::write(&path, vec![i as u8; ZERO_COPY_MIN_BYTES as usize]).unwrap();
            kept.push(cache.read(&path).unwrap());
        }
        assert_eq!(cache.open_sources(), MAX_OPEN_SOURCES);
        assert!(kept[0].zero_copy(0, kept[0].bytes.len()).is_some());
        assert!(
            kept[MAX_OPEN_SOURCES].source.is_none(),
            "over the bound: copied"
        );
        // The open file is the one the bytes came from, even after the path is replaced.
        let first = dir.path().join("big-0");
        crate::storage::write_atomic(&first, b"replaced").unwrap();
        let source = &kept[0].source.as_ref().unwrap().file;
        let mut old = vec![9u8; kept[0].bytes.len()];
        std::os::unix::fs::FileExt::read_exact_at(source, &mut old, 0).unwrap();
        assert!(
            old == kept[0].bytes,
            "the open file still has the old bytes"
        );
        assert_eq!(&cache.read(&first).unwrap().bytes[..], b"replaced");
        // Closing them gives the descriptors back.
        cache.forget(&first);
        drop(kept);
        assert!(cache.open_sources() < MAX_OPEN_SOURCES);
    }

    #[test]
    fn etag_is_the_quoted_cid_of_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        let file = FileCache::new(1024).read(&path).unwrap();
        assert_eq!(
            file.etag(),
            // Python: 'b' + b32encode(bytes([1, 0x55, 0x12, 0x20]) + sha256(b"abc")), lower case.
            "\"bafkreif2pall7dybz7vecqka3zo24irdwabwdi4wc55jznaq75q7eaavvu\""
        );
        assert_eq!(file.cid, crate::cid::Cid::of(b"abc"));
    }

    #[test]
    fn header_values_describe_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abcde").unwrap();
        let file = FileCache::new(1024).read(&path).unwrap();
        let values = &file.header_values;
        assert_eq!(values.etag.to_str().unwrap(), file.etag());
        assert_eq!(values.content_length.to_str().unwrap(), "5");
        let stated = httpdate::parse_http_date(values.last_modified.to_str().unwrap()).unwrap();
        let modified = file
            .modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let stated = stated.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(stated.as_secs(), modified.as_secs());
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

    #[test]
    fn fresh_answers_hits_only_and_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let cache = FileCache::new(1024);
        crate::storage::write_atomic(&path, b"first").unwrap();
        assert!(cache.fresh(&path).unwrap().is_none(), "not read yet");
        cache.read(&path).unwrap();
        assert_eq!(&cache.fresh(&path).unwrap().unwrap().bytes[..], b"first");
        crate::storage::write_atomic(&path, b"second").unwrap();
        assert!(cache.fresh(&path).unwrap().is_none(), "replaced on disk");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            cache.fresh(&path).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            cache.fresh(dir.path()).unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "a directory is not served"
        );
    }

    #[test]
    fn served_entries_get_a_second_chance() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FileCache::new(8);
        let path = |name: &str| dir.path().join(name);
        for name in ["hot", "cold", "new"] {
            std::fs::write(path(name), b"1234").unwrap();
        }
        cache.read(&path("hot")).unwrap();
        cache.read(&path("cold")).unwrap();
        assert!(cache.fresh(&path("hot")).unwrap().is_some());
        // Over budget: "hot" was served since it was cached, so "cold" goes instead.
        cache.read(&path("new")).unwrap();
        assert!(cache.fresh(&path("hot")).unwrap().is_some());
        assert!(cache.fresh(&path("cold")).unwrap().is_none());
        assert!(cache.fresh(&path("new")).unwrap().is_some());
        assert!(cache.lock().bytes <= 8);
    }
}
