//! The data directory on disk: its layout and the one way we write files (atomically).
//!
//! Every write goes to a uniquely named temporary file in the target's own directory, is
//! fsynced, renamed over the target and followed by an fsync of the directory, so a reader (or
//! a restart after `kill -9`) sees the old file or the new one, never a torn one. The Go server
//! used a fixed `.tmp` name and no fsync, so two writers collided and a crash could tear a file.

mod file_cache;

pub use file_cache::{CachedFile, FileCache, FileSource, ZeroCopy};

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically, creating parent directories as needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory")
        })?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Flushes a directory entry change (a rename or an unlink) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Proves `dir` is an existing, writable directory by atomically writing and removing a
/// probe file. It never creates `dir`: a vanished data directory must show up as a failure.
pub fn probe_writable(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let probe = dir.join(format!(".write_test_{}", uuid::Uuid::new_v4().simple()));
    write_atomic(&probe, b"test")?;
    std::fs::remove_file(&probe)
}

/// Space on the file system holding `path`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
}

impl DiskUsage {
    /// Used space as a percentage of the total (0 when the size is unknown).
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.used_bytes as f64 / self.total_bytes as f64 * 100.0
        }
    }
}

/// `statvfs` of the file system holding `path`.
pub fn disk_usage(path: &Path) -> io::Result<DiskUsage> {
    let st = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    let block = st.f_frsize.max(1);
    let total = st.f_blocks.saturating_mul(block);
    Ok(DiskUsage {
        total_bytes: total,
        available_bytes: st.f_bavail.saturating_mul(block),
        used_bytes: total.saturating_sub(st.f_bfree.saturating_mul(block)),
    })
}

/// The directory layout under the data dir: the Go server's layout, so existing data carries over.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps an existing, absolute data directory.
    pub fn new(root: PathBuf) -> DataDir {
        DataDir { root }
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<data>/output`: every generated artifact, served read-only under `/files/`.
    pub fn output(&self) -> PathBuf {
        self.root.join("output")
    }

    /// `<data>/user-series`: series JSON files written by users.
    pub fn user_series(&self) -> PathBuf {
        self.root.join("user-series")
    }

    /// `<data>/metrics`: persisted progress statistics.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/file.txt");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.txt")]);
    }

    #[test]
    fn probe_detects_read_only_directories() {
        let dir = tempfile::tempdir().unwrap();
        probe_writable(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(
            probe_writable(&file).is_err(),
            "a file is not a writable directory"
        );
    }

    #[test]
    fn disk_usage_reports_a_sane_filesystem() {
        let usage = disk_usage(Path::new("/")).unwrap();
        assert!(usage.total_bytes > 0);
        assert!(usage.used_percent() >= 0.0 && usage.used_percent() <= 100.0);
    }
}
