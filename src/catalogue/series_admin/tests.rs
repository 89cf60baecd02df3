//! Unit tests of series administration, each on its own temporary user-series directory.

use super::*;

fn store() -> (tempfile::TempDir, SeriesStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SeriesStore::new(dir.path().join("user-series")).unwrap();
    (dir, store)
}

fn suffixes(list: &[Series]) -> Vec<&str> {
    list.iter().map(|s| s.suffix.as_str()).collect()
}

fn body(json: &str) -> Series {
    serde_json::from_str(json).unwrap()
}

#[test]
fn list_merges_shadows_sorts_and_filters_hidden() {
    let (_dir, store) = store();
    let builtins = list(&store, false, false);
    assert!(builtins.iter().all(|s| s.source == "builtin"));
    assert!(suffixes(&builtins).contains(&"simple"));
    assert!(suffixes(&builtins).windows(2).all(|w| w[0] < w[1]));

    save(&store, "zeta", body(r#"{"purpose":"z"}"#)).unwrap();
    save(&store, "aardvark", body(r#"{"deleted":true}"#)).unwrap();
    // A user file named like a built-in shadows it (only possible by hand: save refuses).
    std::fs::write(
        store.user_dir().join("simple.json"),
        r#"{"purpose":"mine","deleted":true}"#,
    )
    .unwrap();

    let visible = list(&store, false, false);
    let names = suffixes(&visible);
    assert!(names.contains(&"zeta") && !names.contains(&"aardvark"));
    assert!(
        !names.contains(&"simple"),
        "the hidden user copy shadows the built-in"
    );
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");

    let all = list(&store, true, false);
    assert_eq!(all.len(), builtins.len() + 2);
    assert_eq!(all[0].suffix, "aardvark");
    let simple = all.iter().find(|s| s.suffix == "simple").unwrap();
    assert_eq!(
        (simple.source.as_str(), simple.purpose.as_str()),
        ("user", "mine")
    );

    let hidden = list(&store, true, true);
    assert_eq!(suffixes(&hidden), ["aardvark", "simple"]);
    assert_eq!(suffixes(&list(&store, false, true)), ["aardvark", "simple"]);
}

#[test]
fn get_normalises_and_prefers_the_user_series() {
    let (_dir, store) = store();
    assert_eq!(get(&store, " Simple ").unwrap().source, "builtin");
    save(&store, "Test Series", body(r#"{"last":7}"#)).unwrap();
    let series = get(&store, "TEST SERIES").unwrap();
    assert_eq!((series.suffix.as_str(), series.last), ("test-series", 7));
    let err = get(&store, "No Such").unwrap_err();
    assert_eq!(err.code, Code::SeriesNotFound);
    assert_eq!(
        err.to_string(),
        "series_not_found: series not found: no-such"
    );
}

#[test]
fn save_writes_the_user_file_and_reads_it_back() {
    let (_dir, store) = store();
    let saved = save(
        &store,
        "Test Series",
        body(r#"{"last":7,"purpose":"test"}"#),
    )
    .unwrap();
    assert_eq!(saved.suffix, "test-series");
    assert_eq!((saved.last, saved.purpose.as_str()), (7, "test"));
    assert_eq!(saved.source, "user");
    assert!(
        !saved.modified_at.is_empty(),
        "derived from the file on read"
    );
    let text = std::fs::read_to_string(store.user_dir().join("test-series.json")).unwrap();
    assert!(
        text.starts_with("{\n  \"last\": 7,") && text.ends_with("}\n"),
        "{text}"
    );
    assert!(
        !text.contains("source") && !text.contains("modifiedAt"),
        "{text}"
    );
    assert_eq!(get(&store, "test-series").unwrap(), saved);

    // As upstream: the body's suffix wins over the path name.
    let other = save(&store, "path-name", body(r#"{"suffix":"Body Name"}"#)).unwrap();
    assert_eq!(other.suffix, "body-name");
    assert!(!store.user_dir().join("path-name.json").exists());

    // Saving again replaces the file.
    let again = save(&store, "test-series", body(r#"{"last":8}"#)).unwrap();
    assert_eq!((again.last, again.purpose.as_str()), (8, ""));
}

#[test]
fn save_refuses_builtins_and_blank_or_hidden_names() {
    let (_dir, store) = store();
    for (path, json) in [("Simple", "{}"), ("anything", r#"{"suffix":"EMPTY"}"#)] {
        let err = save(&store, path, body(json)).unwrap_err();
        assert_eq!(err.code, Code::SeriesInvalid, "{path} {json}");
        assert_eq!(err.message, "cannot modify built-in series");
    }
    assert_eq!(
        save(&store, "  ", body("{}")).unwrap_err().code,
        Code::InvalidInput
    );
    assert_eq!(
        save(&store, ".hidden", body("{}")).unwrap_err().code,
        Code::InvalidInput
    );
    assert!(
        !store.user_dir().exists() || std::fs::read_dir(store.user_dir()).unwrap().count() == 0
    );
}

#[test]
fn hiding_sets_the_flag_and_moves_the_output_dir_both_ways() {
    let (dir, store) = store();
    let output = dir.path().join("output");
    std::fs::create_dir_all(output.join("mine/annotated")).unwrap();
    std::fs::write(output.join("mine/annotated/a.png"), "png").unwrap();
    save(&store, "Mine", body(r#"{"last":3}"#)).unwrap();

    let hidden = set_hidden(&store, &output, "MINE", true).unwrap();
    assert!(hidden.deleted);
    assert_eq!(hidden.last, 3, "the rest of the series is kept");
    assert!(!output.join("mine").exists());
    assert!(output.join("mine.deleted/annotated/a.png").exists());
    assert!(!suffixes(&list(&store, false, false)).contains(&"mine"));
    assert_eq!(suffixes(&list(&store, false, true)), ["mine"]);

    let shown = set_hidden(&store, &output, "mine", false).unwrap();
    assert!(!shown.deleted);
    assert!(output.join("mine/annotated/a.png").exists());
    assert!(!output.join("mine.deleted").exists());

    // No output directory at all is fine.
    save(&store, "bare", body("{}")).unwrap();
    assert!(set_hidden(&store, &output, "bare", true).unwrap().deleted);
}

#[test]
fn hiding_refuses_builtins_and_unknown_series() {
    let (dir, store) = store();
    let output = dir.path().join("output");
    let err = set_hidden(&store, &output, "simple", true).unwrap_err();
    assert_eq!(err.code, Code::SeriesInvalid);
    assert_eq!(
        set_hidden(&store, &output, "ghost", true).unwrap_err().code,
        Code::SeriesNotFound
    );
    std::fs::create_dir_all(store.user_dir()).unwrap();
    std::fs::write(store.user_dir().join("broken.json"), "{").unwrap();
    assert_eq!(
        set_hidden(&store, &output, "broken", true)
            .unwrap_err()
            .code,
        Code::SeriesNotFound
    );
}

#[tokio::test(start_paused = true)]
async fn writes_are_seen_by_every_clone_at_once() {
    let (dir, store) = store();
    let output = dir.path().join("output");
    assert!(
        !store.contains("fresh"),
        "the catalogue is loaded, and empty"
    );
    // The server saves on a clone of the store (on a blocking thread).
    let admin = store.clone();
    save(&admin, "fresh", body(r#"{"purpose":"p"}"#)).unwrap();
    assert!(store.contains("fresh"), "no wait for the periodic check");
    assert_eq!(store.get("fresh").unwrap().purpose, "p");

    set_hidden(&admin, &output, "fresh", true).unwrap();
    assert!(store.get("fresh").unwrap().deleted);
    save(&admin, "fresh", body(r#"{"purpose":"q"}"#)).unwrap();
    assert_eq!(store.get("fresh").unwrap().purpose, "q");
}
