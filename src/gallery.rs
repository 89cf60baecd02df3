//! The image listing behind `/preview`: every annotated image in the artifact store
//! (`<data>/output/<series>/annotated/*.png` on a local disk), grouped by series (ascending)
//! and newest first within a series, paginated on the server so that a gallery of ten thousand
//! images still renders quickly.

use std::time::SystemTime;

use tiny_keccak::{Hasher, Keccak};

use crate::run::ArtifactStore;

/// One annotated image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub series: String,
    /// The file stem as stored (lower case for addresses).
    pub stem: String,
    /// Path relative to the output directory, `/`-separated.
    pub rel_path: String,
    pub modified: SystemTime,
}

/// A series with the number of images it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesCount {
    pub series: String,
    pub count: usize,
}

/// One page of the gallery.
#[derive(Debug, Clone)]
pub struct Page {
    /// The images on this page, in display order.
    pub entries: Vec<Entry>,
    /// Every series with images (ignores the series filter), for navigation.
    pub series: Vec<SeriesCount>,
    /// Images matching the filter, across all pages.
    pub total: usize,
    pub page: usize,
    pub pages: usize,
    pub per_page: usize,
}

/// Default and largest page sizes.
pub const DEFAULT_PER_PAGE: usize = 120;
pub const MAX_PER_PAGE: usize = 1000;

/// Lists the annotated images in `store` (blocking I/O: call from `spawn_blocking`), sorted
/// for display. Unreadable entries are skipped, hidden files (temporary writes) never listed.
pub fn scan(store: &dyn ArtifactStore) -> Vec<Entry> {
    let (kind, ext) = crate::run::ANNOTATED;
    let mut entries: Vec<Entry> = store
        .list(kind, ext)
        .into_iter()
        .map(|listed| Entry {
            series: listed.series,
            stem: listed.stem,
            rel_path: listed.name,
            modified: listed.modified,
        })
        .collect();
    entries.sort_by(|a, b| {
        a.series
            .cmp(&b.series)
            .then(b.modified.cmp(&a.modified))
            .then(a.stem.cmp(&b.stem))
    });
    entries
}

/// Cuts page `page` (1-based, clamped) of `per_page` images, optionally of one series only.
pub fn paginate(entries: Vec<Entry>, series: Option<&str>, page: usize, per_page: usize) -> Page {
    let mut counts: Vec<SeriesCount> = Vec::new();
    for e in &entries {
        match counts.last_mut() {
            Some(last) if last.series == e.series => last.count += 1,
            _ => counts.push(SeriesCount {
                series: e.series.clone(),
                count: 1,
            }),
        }
    }
    let per_page = per_page.clamp(1, MAX_PER_PAGE);
    let selected: Vec<Entry> = match series {
        Some(s) => entries.into_iter().filter(|e| e.series == s).collect(),
        None => entries,
    };
    let total = selected.len();
    let pages = total.div_ceil(per_page).max(1);
    let page = page.clamp(1, pages);
    let entries = selected
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Page {
        entries,
        series: counts,
        total,
        page,
        pages,
        per_page,
    }
}

/// EIP-55 mixed-case checksum form of a `0x` address; anything else is returned unchanged.
pub fn checksum_address(address: &str) -> String {
    let Some(hex) = address.strip_prefix("0x") else {
        return address.to_string();
    };
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return address.to_string();
    }
    let lower = hex.to_ascii_lowercase();
    let mut hash = [0u8; 32];
    let mut keccak = Keccak::v256();
    keccak.update(lower.as_bytes());
    keccak.finalize(&mut hash);
    let checksummed: String = lower
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    format!("0x{checksummed}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn eip55_matches_the_reference_vectors() {
        // From the EIP-55 specification.
        for expected in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            assert_eq!(checksum_address(&expected.to_lowercase()), expected);
        }
        assert_eq!(checksum_address("not-an-address"), "not-an-address");
    }

    fn entry(series: &str, stem: &str, secs: u64) -> Entry {
        Entry {
            series: series.into(),
            stem: stem.into(),
            rel_path: format!("{series}/annotated/{stem}.png"),
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    #[test]
    fn scan_groups_by_series_newest_first_and_skips_noise() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
            p
        };
        let old = write("b/annotated/0x1.png");
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
            .unwrap();
        write("b/annotated/0x2.png");
        write("a/annotated/0x3.png");
        write("a/generated/0x4.png");
        write("a/annotated/.tmp-123");
        write("a/annotated/notes.txt");
        std::fs::create_dir_all(dir.path().join("a/annotated/0x5.png")).unwrap();
        // A link leading out of the store is not listed; one inside it is.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let link = |target: &std::path::Path, name: &str| {
            std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap();
        };
        link(&outside.path().join("secret"), "a/annotated/0x6.png");
        link(&old, "a/annotated/0x7.png");
        let store = crate::run::DiskStore::new(
            dir.path().to_path_buf(),
            std::sync::Arc::new(crate::storage::FileCache::new(1 << 20)),
        );
        let stems: Vec<String> = scan(&store)
            .into_iter()
            .map(|e| format!("{}:{}", e.series, e.stem))
            .collect();
        assert_eq!(stems, ["a:0x3", "a:0x7", "b:0x2", "b:0x1"]);
    }

    #[test]
    fn pages_are_clamped_and_filtered() {
        let entries: Vec<Entry> = (0..25)
            .map(|i| entry(if i < 20 { "a" } else { "b" }, &format!("0x{i}"), 100 - i))
            .collect();
        let page = paginate(entries.clone(), None, 3, 10);
        assert_eq!(
            (page.total, page.pages, page.page, page.entries.len()),
            (25, 3, 3, 5)
        );
        assert_eq!(
            page.series,
            [
                SeriesCount {
                    series: "a".into(),
                    count: 20
                },
                SeriesCount {
                    series: "b".into(),
                    count: 5
                }
            ]
        );
        let page = paginate(entries.clone(), Some("b"), 9, 10);
        assert_eq!(
            (page.total, page.pages, page.page, page.entries.len()),
            (5, 1, 1, 5)
        );
        let page = paginate(entries, Some("zzz"), 1, 0);
        assert_eq!(
            (page.total, page.pages, page.entries.len(), page.per_page),
            (0, 1, 0, 1)
        );
    }
}
