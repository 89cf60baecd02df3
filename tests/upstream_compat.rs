//! Loads the Go library's own databases and series (when `../shared/reference/upstream-data`
//! is present) through our loader and checks that we select exactly what upstream selects for
//! the worked examples below. The archives are reference material only: nothing from them
//! is copied into the project.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use dalleserver::attributes::Attributes;
use dalleserver::attributes::dress::DalleDress;
use dalleserver::attributes::selection::seed_from_input;
use dalleserver::attributes::series::Series;

fn upstream_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/upstream-data");
    dir.join("databases.tar.gz").is_file().then_some(dir)
}

/// Unpacks both archives into a temp dir; `None` (with a note) when they are absent.
fn unpack() -> Option<(tempfile::TempDir, Attributes)> {
    let Some(src) = upstream_dir() else {
        eprintln!(
            "SKIPPED: ../shared/reference/upstream-data is absent; upstream compatibility not checked"
        );
        return None;
    };
    let tmp = tempfile::tempdir().unwrap();
    for archive in ["databases.tar.gz", "series.tar.gz"] {
        let status = Command::new("tar")
            .arg("xzf")
            .arg(src.join(archive))
            .arg("-C")
            .arg(tmp.path())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tar failed on {archive}");
    }
    let attributes =
        Attributes::load(Some(&tmp.path().join("databases")), tmp.path().join("none")).unwrap();
    Some((tmp, attributes))
}

fn upstream_series(tmp: &Path, name: &str) -> Series {
    let text = std::fs::read_to_string(tmp.join("series").join(format!("{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn first_fields(d: &DalleDress) -> Vec<(String, String, usize, usize)> {
    d.attribs
        .iter()
        .map(|a| {
            (
                a.name.clone(),
                a.value.split(',').next().unwrap().to_string(),
                a.count,
                a.selector,
            )
        })
        .collect()
}

fn check(d: &DalleDress, expected: &[(&str, &str)]) {
    let got = first_fields(d);
    for (name, value) in expected {
        let found = got
            .iter()
            .find(|(n, ..)| n == name)
            .unwrap_or_else(|| panic!("{name} not selected"));
        assert_eq!(found.1, *value, "{name}: {got:?}");
    }
}

#[test]
fn example_a_engine_seed_in_series_empty() {
    let Some((tmp, attributes)) = unpack() else {
        return;
    };
    let seed = "e18ce5143adc3581502cbb7c70988de13c61c16948ba57f83cf0ddc07f6fd5e5";
    assert_eq!(seed_from_input("Wimp"), seed);
    let (d, prompts) = attributes
        .dress_in(seed, &upstream_series(tmp.path(), "empty"), None)
        .unwrap();
    assert_eq!(d.seed.len(), 128);
    check(
        &d,
        &[
            ("adverb", "usefully"),
            ("adjective", "unconscious"),
            ("noun", "coryphodon"),
            ("emotion", "defeat"),
            ("occupation", "gemologist"),
            ("action", "scribbling"),
            ("artStyle1", "japanese avant-garde"),
            ("artStyle2", "mono-ha"),
            ("litStyle", "detective novel"),
            ("color1", "peachpuff"),
            ("color2", "dimgray"),
            ("color3", "goldenrod"),
            ("viewpoint", "overhead"),
            ("gaze", "into the camera"),
            ("composition", "unbalanced"),
            ("place", "st. catherine's monastery"),
            ("trope", "rebirth"),
        ],
    );
    let counts: Vec<(usize, usize)> = d
        .attribs
        .iter()
        .take(17)
        .map(|a| (a.count, a.selector))
        .collect();
    assert_eq!(
        counts,
        [
            (2937, 2587),
            (1295, 1158),
            (2902, 667),
            (279, 58),
            (338, 105),
            (1035, 758),
            (298, 131),
            (298, 165),
            (95, 22),
            (139, 105),
            (139, 39),
            (139, 47),
            (32, 7),
            (8, 6),
            (20, 9),
            (1800, 1503),
            (16, 5)
        ]
    );
    assert_eq!(
        d.value("noun"),
        "coryphodon,coryphodonts,pantodonts,mammals,chordates"
    );
    assert_eq!(
        d.value("place"),
        "st. catherine's monastery,south sinai,egypt"
    );
    assert_eq!(d.mixing_level(), 2);
    assert_eq!(
        prompts.title,
        "defeat usefully unconscious gemologist coryphodon"
    );
}

#[test]
fn example_b_filtered_series() {
    let Some((tmp, attributes)) = unpack() else {
        return;
    };
    let seed = seed_from_input("Show me how to funk it up.");
    assert!(
        seed.starts_with("02b62e93") && seed.ends_with("d5d4"),
        "{seed}"
    );
    let (d, _) = attributes
        .dress_in(
            &seed,
            &upstream_series(tmp.path(), "five-tone-postal-protozoa"),
            None,
        )
        .unwrap();
    check(
        &d,
        &[
            ("adverb", "accusatively"),
            ("adjective", "dead"),
            ("noun", "dinoflagellata"),
            ("emotion", "loathing"),
            ("occupation", "wildlife biologist"),
            ("action", "devising"),
            ("artStyle1", "acrylic painting"),
            ("artStyle2", "watercolor"),
            ("litStyle", "folklore"),
            ("color1", "tomato"),
            ("color2", "rosybrown"),
            ("color3", "lightsteelblue"),
            ("viewpoint", "Dutch angle"),
            ("gaze", "to the left"),
            ("composition", "asymmetrical"),
            ("place", "st. catherine's monastery"),
            ("trope", "voyage and return"),
        ],
    );
    let count = |name: &str| d.attribs.iter().find(|a| a.name == name).unwrap().count;
    assert_eq!(
        (count("noun"), count("emotion"), count("artStyle1")),
        (2, 23, 5)
    );
    assert_eq!(d.mixing_level(), 4);
}

#[test]
fn example_c_legacy_address() {
    let Some((tmp, attributes)) = unpack() else {
        return;
    };
    let (d, _) = attributes
        .dress_in(
            "0xf503017d7baf7fbc0fff7492b751025c6a78179b",
            &upstream_series(tmp.path(), "empty"),
            None,
        )
        .unwrap();
    assert_eq!(
        d.seed,
        "f503017d7baf7fbc0fff7492b751025c6a78179bb97187a6c520157b2947fff0"
    );
    assert_eq!(d.seed_chunks.len(), 15);
    check(
        &d,
        &[
            ("adverb", "wiggly"),
            ("adjective", "accomplished"),
            ("noun", "jackson’s chameleon"),
            ("emotion", "ilinx"),
            ("occupation", "bike courier"),
            ("action", "knowing"),
            ("artStyle1", "pre-raphaelite"),
            ("artStyle2", "abstract lyricism"),
            ("litStyle", "fiction"),
            ("color1", "cadetblue"),
            ("color2", "palegoldenrod"),
            ("color3", "lightyellow"),
            ("viewpoint", "two-point perspective"),
            ("gaze", "into the camera"),
            ("composition", "spiral composition"),
        ],
    );
    assert_eq!(d.mixing_level(), 1);
    assert!(
        !d.attribs
            .iter()
            .any(|a| a.name == "place" || a.name == "trope")
    );
}
