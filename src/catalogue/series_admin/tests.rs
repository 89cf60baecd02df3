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

fn n(name: &str) -> SeriesName {
    SeriesName::normalize(name)
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

    save(&store, &n("zeta"), body(r#"{"purpose":"z"}"#)).unwrap();
    save(&store, &n("aardvark"), body(r#"{"deleted":true}"#)).unwrap();
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
    assert_eq!(get(&store, &n(" Simple ")).unwrap().source, "builtin");
    save(&store, &n("Test Series"), body(r#"{"last":7}"#)).unwrap();
    let series = get(&store, &n("TEST SERIES")).unwrap();
    assert_eq!((series.suffix.as_str(), series.last), ("test-series", 7));
    let err = get(&store, &n("No Such")).unwrap_err();
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
        &n("Test Series"),
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
    assert_eq!(get(&store, &n("test-series")).unwrap(), saved);

    // The name given wins over a suffix in the body (the handler picks the name).
    let other = save(&store, &n("body-name"), body(r#"{"suffix":"other"}"#)).unwrap();
    assert_eq!(other.suffix, "body-name");
    assert!(!store.user_dir().join("other.json").exists());

    // Saving again replaces the file.
    let again = save(&store, &n("test-series"), body(r#"{"last":8}"#)).unwrap();
    assert_eq!((again.last, again.purpose.as_str()), (8, ""));
}

#[test]
fn save_refuses_builtins_and_dot_names() {
    let (_dir, store) = store();
    for name in ["Simple", "EMPTY"] {
        let err = save(&store, &n(name), body("{}")).unwrap_err();
        assert_eq!(err.code, Code::SeriesInvalid, "{name}");
        assert_eq!(err.message, "cannot modify built-in series");
    }
    assert_eq!(
        save(&store, &n(".hidden"), body("{}")).unwrap_err().code,
        Code::InvalidInput
    );
    assert!(
        !store.user_dir().exists() || std::fs::read_dir(store.user_dir()).unwrap().count() == 0
    );
}

#[test]
fn hiding_sets_the_flag_and_leaves_the_images_in_place() {
    let (dir, store) = store();
    let output = dir.path().join("output");
    std::fs::create_dir_all(output.join("mine/annotated")).unwrap();
    std::fs::write(output.join("mine/annotated/a.png"), "png").unwrap();
    save(&store, &n("Mine"), body(r#"{"last":3}"#)).unwrap();

    let hidden = set_hidden(&store, &output, &n("MINE"), true).unwrap();
    assert!(hidden.deleted);
    assert_eq!(hidden.last, 3, "the rest of the series is kept");
    assert!(output.join("mine/annotated/a.png").exists(), "still served");
    assert!(!output.join("mine.deleted").exists());
    assert!(!suffixes(&list(&store, false, false)).contains(&"mine"));
    assert_eq!(suffixes(&list(&store, false, true)), ["mine"]);

    let shown = set_hidden(&store, &output, &n("mine"), false).unwrap();
    assert!(!shown.deleted);
    assert!(output.join("mine/annotated/a.png").exists());

    // No output directory at all is fine.
    save(&store, &n("bare"), body("{}")).unwrap();
    assert!(
        set_hidden(&store, &output, &n("bare"), true)
            .unwrap()
            .deleted
    );
}

#[test]
fn unhiding_moves_back_a_folder_parked_by_an_older_server() {
    let (dir, store) = store();
    let output = dir.path().join("output");
    std::fs::create_dir_all(output.join("old.deleted/annotated")).unwrap();
    std::fs::write(output.join("old.deleted/annotated/a.png"), "png").unwrap();
    save(&store, &n("old"), body(r#"{"deleted":true}"#)).unwrap();
    set_hidden(&store, &output, &n("old"), false).unwrap();
    assert!(output.join("old/annotated/a.png").exists());
    assert!(!output.join("old.deleted").exists());
}

#[test]
fn hiding_refuses_builtins_and_unknown_series() {
    let (dir, store) = store();
    let output = dir.path().join("output");
    let err = set_hidden(&store, &output, &n("simple"), true).unwrap_err();
    assert_eq!(err.code, Code::SeriesInvalid);
    assert_eq!(
        set_hidden(&store, &output, &n("ghost"), true)
            .unwrap_err()
            .code,
        Code::SeriesNotFound
    );
    std::fs::create_dir_all(store.user_dir()).unwrap();
    std::fs::write(store.user_dir().join("broken.json"), "{").unwrap();
    assert_eq!(
        set_hidden(&store, &output, &n("broken"), true)
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
    save(&admin, &n("fresh"), body(r#"{"purpose":"p"}"#)).unwrap();
    assert!(store.contains("fresh"), "no wait for the periodic check");
    assert_eq!(store.get("fresh").unwrap().purpose, "p");

    set_hidden(&admin, &output, &n("fresh"), true).unwrap();
    assert!(store.get("fresh").unwrap().deleted);
    save(&admin, &n("fresh"), body(r#"{"purpose":"q"}"#)).unwrap();
    assert_eq!(store.get("fresh").unwrap().purpose, "q");
}
