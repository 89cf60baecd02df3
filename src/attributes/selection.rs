//! Deterministic selection, exactly as the Go library does it (same input, same rows):
//! input → extended seed → 6-hex windows → one row per attribute of the series-filtered
//! databases.
//!
//! The row is `(count × number) >> 24`, not a modulo (the upstream book says modulo; the code
//! does this, and so must we to pick the same rows).

use std::borrow::Cow;

use super::database::{BACKSTYLES, Databases};
use super::dress::{Attribute, DalleDress};
use super::series::Series;

/// Attribute names and their databases, in seed-window order (the Go library's order, which
/// decides every image's attributes).
pub const ATTRIBUTES: [(&str, &str); 17] = [
    ("adverb", "adverbs"),
    ("adjective", "adjectives"),
    ("noun", "nouns"),
    ("emotion", "emotions"),
    ("occupation", "occupations"),
    ("action", "actions"),
    ("artStyle1", "artstyles"),
    ("artStyle2", "artstyles"),
    ("litStyle", "litstyles"),
    ("color1", "colors"),
    ("color2", "colors"),
    ("color3", "colors"),
    ("viewpoint", "viewpoints"),
    ("gaze", "gazes"),
    ("composition", "compositions"),
    ("place", "places"),
    ("trope", "tropes"),
];

/// Selection failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// The input (doubled) is shorter than 66 bytes; upstream's exact wording.
    #[error("seed length is less than 66")]
    SeedTooShort,
}

/// The extended seed: the first comma-separated part, followed by its reverse; for `0x`
/// inputs the 64 characters after the prefix, otherwise the whole string.
pub fn extended_seed(input: &str) -> Result<String, SelectionError> {
    let first = input.split(',').next().unwrap_or("");
    let reversed: String = first.chars().rev().collect();
    let doubled = format!("{first}{reversed}");
    if doubled.len() < 66 {
        return Err(SelectionError::SeedTooShort);
    }
    match doubled.strip_prefix("0x") {
        // 66 bytes with a 2-byte ASCII prefix: bytes 2..66; fall back to chars if not ASCII.
        Some(_) => Ok(doubled.get(2..66).map_or_else(
            || doubled.chars().skip(2).take(64).collect(),
            str::to_string,
        )),
        None => Ok(doubled),
    }
}

/// The engine seed of an input: the lower-case hex SHA-256 of its trimmed UTF-8 bytes (the
/// series is deliberately not mixed in, as in the Go library: an input has one seed everywhere).
pub fn seed_from_input(input: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(input.trim().as_bytes()))
}

/// The number a window encodes (0 when it is not hex) and the row it selects in `count` rows.
pub fn select_row(count: usize, window: &str) -> (u64, usize) {
    let number = if !window.is_empty() && window.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(window, 16).unwrap_or(0)
    } else {
        0
    };
    let row = ((count as u128 * number as u128) >> 24) as usize;
    (number, row.min(count.saturating_sub(1)))
}

/// The records of one database as a series sees them, borrowed from the databases.
#[derive(Debug)]
pub enum View<'a> {
    /// Unfiltered and nothing dropped.
    All(&'a [String]),
    /// A filtered (or sensitive-free) subset, in database order.
    Subset(Vec<&'a str>),
    /// Nothing matched: the single record `none`.
    Nothing,
}

impl View<'_> {
    /// Row count (`none` counts as one row).
    pub fn len(&self) -> usize {
        match self {
            View::All(r) => r.len(),
            View::Subset(r) => r.len(),
            View::Nothing => 1,
        }
    }

    /// Never empty: an empty list becomes `none`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The record at `i`.
    pub fn get(&self, i: usize) -> &str {
        match self {
            View::All(r) => r.get(i).map_or("none", String::as_str),
            View::Subset(r) => r.get(i).copied().unwrap_or("none"),
            View::Nothing => "none",
        }
    }
}

/// The series' view of a database: case-sensitive substring filters, sensitive art and
/// literary styles dropped when unfiltered, `none` when nothing is left.
pub fn filtered_view<'a>(dbs: &'a Databases, series: &Series, database: &str) -> View<'a> {
    let records: &[String] = dbs.get(database).map_or(&[], |db| db.records.as_slice());
    let filters = series.filter(database).filter(|f| !f.is_empty());
    let subset: Vec<&str> = match filters {
        Some(filters) => records
            .iter()
            .filter(|r| filters.iter().any(|f| r.contains(f.as_str())))
            .map(String::as_str)
            .collect(),
        None if database == "artstyles" || database == "litstyles" => records
            .iter()
            .filter(|r| !r.contains(",sensitive,"))
            .map(String::as_str)
            .collect(),
        None if !records.is_empty() => return View::All(records),
        None => Vec::new(),
    };
    if subset.is_empty() {
        View::Nothing
    } else {
        View::Subset(subset)
    }
}

/// [`filtered_view`] as owned records.
pub fn filtered_records(dbs: &Databases, series: &Series, database: &str) -> Vec<String> {
    let view = filtered_view(dbs, series, database);
    (0..view.len()).map(|i| view.get(i).to_string()).collect()
}

/// Builds the dress for `original` (an address or an engine seed) under `series`.
/// `backstyle` overrides the default (first) background style.
pub fn make_dress(
    original: &str,
    series: &Series,
    dbs: &Databases,
    backstyle: Option<&str>,
) -> Result<DalleDress, SelectionError> {
    let seed = extended_seed(original)?;
    let mut dress = DalleDress {
        original: original.to_string(),
        file_name: valid_filename(original).into_owned(),
        seed: seed.clone(),
        series: series.suffix.clone(),
        color_limit: series.color_limit.clone(),
        ..DalleDress::default()
    };
    let mut views: Vec<(&str, View<'_>)> = Vec::new();
    for (j, (name, database)) in ATTRIBUTES.iter().enumerate() {
        let Some(window) = seed.get(4 * j..4 * j + 6) else {
            break;
        };
        if !views.iter().any(|(db, _)| db == database) {
            views.push((database, filtered_view(dbs, series, database)));
        }
        let Some((_, view)) = views.iter().find(|(db, _)| db == database) else {
            break;
        };
        let count = view.len();
        let (number, selector) = select_row(count, window);
        let value = view.get(selector).to_string();
        dress.seed_chunks.push(value.clone());
        dress.selected_tokens.push(name.to_string());
        dress.selected_records.push(value.clone());
        dress.attribs.push(Attribute {
            database: database.to_string(),
            name: name.to_string(),
            bytes: window.to_string(),
            number,
            factor: number as f64 / f64::from(1u32 << 24),
            count,
            selector,
            value,
        });
    }
    let back = match backstyle.map(str::trim).filter(|b| !b.is_empty()) {
        Some(b) => b.to_string(),
        None => dbs
            .get(BACKSTYLES)
            .and_then(|db| db.records.first())
            .and_then(|r| r.split(',').next())
            .unwrap_or("none")
            .to_string(),
    };
    dress.selected_tokens.push("backStyle".into());
    dress.selected_records.push(back.clone());
    dress.attribs.push(Attribute {
        database: BACKSTYLES.into(),
        name: "backStyle".into(),
        bytes: String::new(),
        number: 0,
        factor: 0.0,
        count: 0,
        selector: 0,
        value: back,
    });
    Ok(dress)
}

/// Upstream's file-name cleaning: `/ \ : * ? " < > |` become `_`, spaces are trimmed, then
/// one left-to-right pass turns `__` into `_`. Borrowed when nothing changes.
pub fn valid_filename(name: &str) -> Cow<'_, str> {
    // Addresses and series names (every request builds a path from one) need no change.
    let special = |c: char| matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|');
    if !name.contains(special) && !name.contains("__") && name.trim() == name {
        return Cow::Borrowed(name);
    }
    let replaced: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    Cow::Owned(replaced.trim().replace("__", "_"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn worked_row_numbers_from_the_contract() {
        for (count, chunk, row) in [
            (2937, "e18ce5", 2587),
            (1295, "e5143a", 1158),
            (2902, "3adc35", 667),
            (279, "358150", 58),
            (338, "502cbb", 105),
            (1035, "bb7c70", 758),
            (298, "70988d", 131),
            (298, "8de13c", 165),
            (95, "3c61c1", 22),
            (32, "3cf0dd", 7),
            (8, "ddc07f", 6),
            (20, "7f6fd5", 9),
            (1800, "d5e55e", 1503),
            (16, "5e5df6", 5),
        ] {
            assert_eq!(select_row(count, chunk).1, row, "({count}, {chunk})");
        }
        assert_eq!(select_row(100, "zzzzzz"), (0, 0), "unparsable → row 0");
        assert_eq!(select_row(100, "+abcde"), (0, 0), "a sign is not hex");
        assert_eq!(select_row(100, "FFFFFF").1, 99);
    }

    #[test]
    fn extended_seed_of_an_address() {
        assert_eq!(
            extended_seed("0xf503017d7baf7fbc0fff7492b751025c6a78179b").unwrap(),
            "f503017d7baf7fbc0fff7492b751025c6a78179bb97187a6c520157b2947fff0"
        );
        let hash = "e18ce5143adc3581502cbb7c70988de13c61c16948ba57f83cf0ddc07f6fd5e5";
        let extended = extended_seed(hash).unwrap();
        assert_eq!(extended.len(), 128);
        assert!(extended.ends_with(&hash.chars().rev().collect::<String>()));
        assert_eq!(extended_seed("short"), Err(SelectionError::SeedTooShort));
        assert_eq!(extended_seed(&format!("{hash},ignored")).unwrap(), extended);
    }

    #[test]
    fn addresses_select_fifteen_attributes_plus_backstyle() {
        let dbs = Databases::embedded();
        let d = make_dress(
            "0xf503017d7baf7fbc0fff7492b751025c6a78179b",
            &Series::default(),
            &dbs,
            None,
        )
        .unwrap();
        assert_eq!(d.seed_chunks.len(), 15);
        assert_eq!(d.attribs.len(), 16);
        assert_eq!(d.selected_tokens.last().unwrap(), "backStyle");
        assert_eq!(d.value("place"), "");
        let seed = "e18ce5143adc3581502cbb7c70988de13c61c16948ba57f83cf0ddc07f6fd5e5";
        assert_eq!(
            make_dress(seed, &Series::default(), &dbs, None)
                .unwrap()
                .seed_chunks
                .len(),
            17
        );
    }

    #[test]
    fn filters_and_the_sensitive_rule() {
        let dbs = Databases::embedded();
        let all = dbs.get("artstyles").unwrap().len();
        let unfiltered = filtered_records(&dbs, &Series::default(), "artstyles");
        assert!(unfiltered.len() < all && unfiltered.iter().all(|r| !r.contains(",sensitive,")));
        let series = Series {
            artstyles: Some(vec!["sensitive".into()]),
            ..Series::default()
        };
        let kept = filtered_records(&dbs, &series, "artstyles");
        assert!(
            !kept.is_empty() && kept.iter().all(|r| r.contains("sensitive")),
            "filtered lists keep sensitive rows"
        );
        let series = Series {
            nouns: Some(vec!["NoSuchThing".into()]),
            ..Series::default()
        };
        assert_eq!(filtered_records(&dbs, &series, "nouns"), ["none"]);
        let series = Series {
            colors: Some(vec!["Blue".into()]),
            ..Series::default()
        };
        assert_eq!(
            filtered_records(&dbs, &series, "colors"),
            ["none"],
            "filters are case-sensitive"
        );
    }

    #[test]
    fn every_builtin_filter_matches_something() {
        let dbs = Databases::embedded();
        let store = crate::attributes::series::SeriesStore::new("/nonexistent".into()).unwrap();
        for name in store.builtin_names() {
            let series = store.get(name).unwrap();
            for (_, database) in ATTRIBUTES {
                for filter in series.filter(database).unwrap_or(&[]) {
                    let hits = dbs
                        .get(database)
                        .unwrap()
                        .records
                        .iter()
                        .filter(|r| r.contains(filter.as_str()))
                        .count();
                    assert!(
                        hits > 0,
                        "series {name}: {database} filter {filter:?} matches nothing"
                    );
                }
            }
        }
    }

    #[test]
    fn file_names_are_cleaned_like_upstream() {
        assert_eq!(
            valid_filename("file/name|test?*<>.txt"),
            "file_name_test__.txt"
        );
        assert_eq!(valid_filename("  0xabc  "), "0xabc");
        assert_eq!(valid_filename("a__b"), "a_b");
        assert_eq!(valid_filename("simple"), "simple");
    }

    proptest! {
        #[test]
        fn row_is_always_in_range(count in 1usize..100_000, window in "[0-9a-fA-F]{6}") {
            let (_, row) = select_row(count, &window);
            prop_assert!(row < count);
        }

        #[test]
        fn same_input_same_dress(hex in "[0-9a-f]{40}") {
            let dbs = Databases::embedded();
            let address = format!("0x{hex}");
            let a = make_dress(&address, &Series::default(), &dbs, None).unwrap();
            let b = make_dress(&address, &Series::default(), &dbs, None).unwrap();
            prop_assert_eq!(a, b);
        }
    }
}
