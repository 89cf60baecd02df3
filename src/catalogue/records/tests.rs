//! Unit tests of the image-record operations, each on its own temporary data directory.

use std::time::{Duration, SystemTime};

use super::*;
use crate::catalogue::metadata::{Prompts, metadata_path};

/// An id as the handler parses it.
fn r(id: &str) -> ImageRef {
    ImageRef::parse(id).unwrap()
}

/// A valid record for `input` in `series`, with every prompt set.
fn meta(input: &str, series: &str, seed: &str) -> ImageMetadata {
    let mut m = ImageMetadata {
        metadata_version: "1.0.0".into(),
        input: input.into(),
        seed: seed.into(),
        prompts: Prompts {
            prompt: "the prompt".into(),
            data_prompt: "the data".into(),
            title_prompt: "the title".into(),
            terse_prompt: "the terse".into(),
            enhanced_prompt: "the enhanced".into(),
            technical_prompt: "the technical".into(),
        },
        ..ImageMetadata::default()
    };
    m.series.name = series.into();
    m.recipe = metadata::Recipe::default();
    m.image_id = m.compute_image_id();
    m
}

fn save(root: &Path, m: &ImageMetadata) -> PathBuf {
    let path = metadata_path(root, &m.series.name, &m.seed);
    metadata::write(&path, m).unwrap();
    path
}

fn paths(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.path.as_str()).collect()
}

// One-shot lookups through a fresh index: each one scans, exactly as a lookup without an
// index does, so the tests below pin the answers the index must not change.
fn get(root: &Path, id: &str) -> Result<Record, CatalogueError> {
    Records::new(root.to_path_buf()).get(&r(id))
}

fn delete(root: &Path, id: &str) -> Result<(), CatalogueError> {
    Records::new(root.to_path_buf()).delete(&r(id))
}

fn export(root: &Path, id: &str, opts: &ExportOptions) -> Result<ExportResult, CatalogueError> {
    Records::new(root.to_path_buf()).export(&r(id), opts)
}

/// Writes a record file the way another process would, unseen by any index.
fn write_behind(root: &Path, m: &ImageMetadata) -> PathBuf {
    let path = metadata_path(root, &m.series.name, &m.seed);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec(m).unwrap()).unwrap();
    path
}

#[test]
fn an_indexed_record_is_read_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = meta("a", "alpha", "s1");
    let b = meta("b", "beta", "s2");
    save(root, &a);
    let b_path = save(root, &b);
    let records = Records::new(root.to_path_buf());
    assert!(!records.is_indexed(&a.image_id), "nothing read before use");
    assert_eq!(records.get(&r(&a.image_id)).unwrap().metadata, a);
    assert!(records.is_indexed(&a.image_id) && records.is_indexed(&b.image_id));

    // Were every record read, this broken file would fail the lookup (as a scan does).
    std::fs::write(&b_path, "{").unwrap();
    let found = records.get(&r(&format!(" {} ", a.image_id))).unwrap();
    assert_eq!(
        (found.path.as_str(), found.archived, &found.metadata),
        ("output/alpha/metadata/s1.json", false, &a)
    );
    // A seed is not an id: it still takes the scan, and the scan still fails.
    assert_eq!(
        records.get(&r("s1")).unwrap_err().code,
        Code::MetadataInvalid
    );
}

#[test]
fn a_record_written_behind_the_index_is_found_after_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = meta("a", "alpha", "s1");
    save(root, &a);
    let records = Records::new(root.to_path_buf());
    records.get(&r(&a.image_id)).unwrap();

    let c = meta("c", "gamma", "s3");
    write_behind(root, &c);
    assert!(!records.is_indexed(&c.image_id));
    assert_eq!(records.get(&r(&c.image_id)).unwrap().metadata, c);
    assert!(
        records.is_indexed(&c.image_id),
        "the rescan rebuilt the index"
    );
    assert_eq!(
        records.get(&r("s3")).unwrap().metadata,
        c,
        "and seeds still work"
    );
}

#[test]
fn a_record_rewritten_or_removed_behind_the_index_is_not_answered_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = meta("a", "alpha", "s1");
    let path = save(root, &a);
    let records = Records::new(root.to_path_buf());
    records.get(&r(&a.image_id)).unwrap();

    // Same file, other identity (the input changed): the old id is gone.
    let renamed = meta("a2", "alpha", "s1");
    write_behind(root, &renamed);
    let err = records.get(&r(&a.image_id)).unwrap_err();
    assert_eq!(err.code, Code::ArtifactMissing);
    assert!(!records.is_indexed(&a.image_id));
    assert_eq!(
        records.get(&r(&renamed.image_id)).unwrap().metadata,
        renamed
    );

    std::fs::remove_file(&path).unwrap();
    let err = records.get(&r(&renamed.image_id)).unwrap_err();
    assert_eq!(err.code, Code::ArtifactMissing);
    assert!(!records.is_indexed(&renamed.image_id));
}

#[test]
fn server_writes_and_deletes_keep_the_index_current() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = meta("a", "alpha", "s1");
    let b = meta("b", "beta", "s2");
    save(root, &a);
    let b_path = save(root, &b);
    let records = Records::new(root.to_path_buf());
    records.get(&r(&a.image_id)).unwrap();

    let c = meta("c", "gamma", "s3");
    records
        .write(&metadata_path(root, "gamma", "s3"), &c)
        .unwrap();
    assert!(records.is_indexed(&c.image_id), "indexed without a rescan");
    // Rewriting a record under a new identity moves its index entry.
    let c2 = meta("c2", "gamma", "s3");
    records
        .write(&metadata_path(root, "gamma", "s3"), &c2)
        .unwrap();
    assert!(!records.is_indexed(&c.image_id) && records.is_indexed(&c2.image_id));
    // Not a live record path: written, never indexed.
    let archived = meta("d", "delta", "s4");
    records
        .write(&root.join("archives/delta/metadata/s4.json"), &archived)
        .unwrap();
    assert!(!records.is_indexed(&archived.image_id));

    // Broken neighbour: only an index hit can still answer.
    std::fs::write(&b_path, "{").unwrap();
    assert_eq!(records.get(&r(&c2.image_id)).unwrap().metadata, c2);
    records.delete(&r(&c2.image_id)).unwrap();
    assert!(
        !records.is_indexed(&c2.image_id),
        "deleted records are forgotten"
    );
    assert!(root.join("archives/gamma/metadata/s3.json").exists());
    std::fs::write(&b_path, serde_json::to_vec(&b).unwrap()).unwrap();
    assert_eq!(
        records.get(&r(&c2.image_id)).unwrap_err().code,
        Code::ArtifactMissing
    );
    assert_eq!(records.get(&r(&a.image_id)).unwrap().metadata, a);
}

#[test]
fn list_sorts_by_image_id_and_path_and_filters_by_series() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    assert!(
        list(root, None, true).unwrap().is_empty(),
        "no output dir yet"
    );
    save(root, &meta("b", "alpha", "s1"));
    save(root, &meta("a", "beta", "s2"));
    save(root, &meta("a", "alpha", "s4"));
    save(root, &meta("a", "alpha", "s3"));
    // Noise that is not a record.
    std::fs::write(root.join("output/alpha/metadata/notes.txt"), "x").unwrap();
    std::fs::write(root.join("output/alpha/metadata/._s1.json"), "junk").unwrap();
    std::fs::create_dir_all(root.join("output/alpha/metadata/sub.json")).unwrap();
    std::fs::write(root.join("output/stray.json"), "{}").unwrap();

    let all = list(root, None, false).unwrap();
    assert_eq!(all.len(), 4);
    let ids: Vec<&str> = all.iter().map(|r| r.metadata.image_id.as_str()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(all.iter().all(|r| !r.archived));
    let alpha = list(root, Some("alpha"), false).unwrap();
    assert_eq!(alpha.len(), 3);
    assert_eq!(list(root, Some(""), false).unwrap().len(), 4, "empty = all");
    assert!(
        list(root, Some("Alpha"), false).unwrap().is_empty(),
        "exact match"
    );

    let json = serde_json::to_value(&all[0]).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["archived", "metadata", "path"]);
}

/// Sets `path`'s mtime to an hour ago (past the window in which a stamp is not trusted).
fn backdate(path: &Path) -> SystemTime {
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();
    hour_ago
}

#[test]
fn pages_walk_the_listing_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..7 {
        let series = if i % 2 == 0 { "even" } else { "odd" };
        save(root, &meta(&format!("in-{i}"), series, &format!("s{i}")));
    }
    let all = list(root, None, false).unwrap();
    let records = Records::new(root.to_path_buf());

    // Pages of 3 walk the whole listing in order; the last one has no next cursor.
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = records.page(None, after.as_deref(), 3).unwrap();
        assert!(page.records.len() <= 3);
        walked.extend(page.records);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(walked, all);

    let even = records
        .page(Some(&SeriesName::normalize("even")), None, 100)
        .unwrap();
    assert_eq!(even.records.len(), 4);
    assert_eq!(even.next, None);
    // A cursor that is no record's id (its record was deleted in between) still works.
    let cut = format!("{}0", all[2].metadata.image_id);
    let rest = records.page(None, Some(&cut), 100).unwrap();
    assert_eq!(rest.records, all[3..]);
    // Written behind the index: seen by the next page.
    let late = meta("late", "odd", "s9");
    write_behind(root, &late);
    assert_eq!(records.page(None, None, 100).unwrap().records.len(), 8);
}

#[test]
fn a_page_reads_only_its_own_record_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for i in 0..5 {
        save(root, &meta(&format!("in-{i}"), "alpha", &format!("s{i}")));
    }
    let all = list(root, None, false).unwrap();
    let stamps: Vec<SystemTime> = all.iter().map(|r| backdate(&root.join(&r.path))).collect();
    let records = Records::new(root.to_path_buf());
    assert_eq!(records.page(None, None, 2).unwrap().records, all[..2]);

    // Every record after the first page is overwritten with junk of the same size and given
    // back its mtime: a page that read any of them would fail.
    for (record, stamp) in all.iter().zip(&stamps).skip(2) {
        let path = root.join(&record.path);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        std::fs::write(&path, " ".repeat(len)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(*stamp)
            .unwrap();
    }
    let page = records.page(None, None, 2).unwrap();
    assert_eq!(page.records, all[..2]);
    assert_eq!(
        page.next.as_deref(),
        Some(all[1].metadata.image_id.as_str())
    );
    assert_eq!(
        list(root, None, false).unwrap_err().code,
        Code::MetadataInvalid,
        "the junk is there: a full read fails"
    );
    // A changed file is read again, and an invalid one fails the page, as a full read does.
    std::fs::write(root.join(&all[4].path), "{").unwrap();
    assert_eq!(
        records.page(None, None, 2).unwrap_err().code,
        Code::MetadataInvalid
    );
}

#[test]
fn a_page_never_splits_records_sharing_an_image_id() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = meta("a", "alpha", "s1");
    save(root, &a);
    // The same record copied under another seed's name, by hand: the same imageId twice.
    std::fs::copy(
        metadata_path(root, "alpha", "s1"),
        metadata_path(root, "alpha", "s1-copy"),
    )
    .unwrap();
    save(root, &meta("b", "alpha", "s2"));
    let records = Records::new(root.to_path_buf());
    let all = list(root, None, false).unwrap();
    let first = records.page(None, None, 1).unwrap();
    let firsts: Vec<&str> = first
        .records
        .iter()
        .map(|r| r.metadata.image_id.as_str())
        .collect();
    assert!(firsts.windows(2).all(|w| w[0] == w[1]), "{firsts:?}");
    let rest = records
        .page(None, first.next.as_deref(), 1000)
        .unwrap()
        .records;
    assert_eq!(first.records.len() + rest.len(), all.len(), "none skipped");
}

#[test]
fn one_invalid_record_fails_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), &meta("a", "alpha", "s1"));
    std::fs::write(dir.path().join("output/alpha/metadata/bad.json"), "{").unwrap();
    let err = list(dir.path(), None, false).unwrap_err();
    assert_eq!(err.code, Code::MetadataInvalid);
    assert_eq!(
        get(dir.path(), "s1").unwrap_err().code,
        Code::MetadataInvalid
    );
}

#[test]
fn archived_records_are_listed_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(root, &meta("a", "alpha", "live"));
    let archived = meta("b", "alpha", "gone");
    let path = root.join("archives/alpha/metadata/gone.json");
    metadata::write(&path, &archived).unwrap();
    assert_eq!(
        paths(&list(root, None, false).unwrap()),
        ["output/alpha/metadata/live.json"]
    );
    let all = list(root, None, true).unwrap();
    assert_eq!(all.len(), 2);
    let gone = all.iter().find(|r| r.archived).unwrap();
    assert_eq!(gone.path, "archives/alpha/metadata/gone.json");
    assert_eq!(all.iter().filter(|r| r.archived).count(), 1);
    assert_eq!(get(root, "gone").unwrap_err().code, Code::ArtifactMissing);
}

#[test]
fn get_finds_by_image_id_first_then_by_seed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let b = meta("b", "beta", "seed-b");
    // `a` sorts first and its seed is `b`'s image id: the id match must still win.
    let a = meta("a", "alpha", &b.image_id);
    save(root, &a);
    save(root, &b);
    assert_eq!(get(root, &b.image_id).unwrap().metadata, b);
    assert_eq!(get(root, &a.image_id).unwrap().metadata, a);
    assert_eq!(get(root, " seed-b ").unwrap().metadata, b);
    let missing = get(root, "nope").unwrap_err();
    assert_eq!(
        missing.to_string(),
        "artifact_missing: image metadata record was not found"
    );
    assert!(
        ImageRef::parse("  ").is_err(),
        "blank ids are refused at the edge"
    );
}

#[test]
fn delete_moves_images_then_metadata_into_archives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut m = meta("a", "alpha", "s1");
    m.artifacts.generated = "output/alpha/generated/s1.png".into();
    m.artifacts.annotated = "output/alpha/annotated/s1.png".into();
    save(root, &m);
    for kind in ["generated", "annotated"] {
        std::fs::create_dir_all(root.join(format!("output/alpha/{kind}"))).unwrap();
        std::fs::write(root.join(format!("output/alpha/{kind}/s1.png")), kind).unwrap();
    }
    delete(root, &m.image_id).unwrap();
    for kind in ["generated", "annotated"] {
        assert!(!root.join(format!("output/alpha/{kind}/s1.png")).exists());
        let moved = std::fs::read_to_string(root.join(format!("archives/alpha/{kind}/s1.png")));
        assert_eq!(moved.unwrap(), kind);
    }
    assert!(!root.join("output/alpha/metadata/s1.json").exists());
    assert!(list(root, None, false).unwrap().is_empty());
    let archived = list(root, None, true).unwrap();
    assert_eq!(paths(&archived), ["archives/alpha/metadata/s1.json"]);
    assert!(archived[0].archived);
    assert_eq!(delete(root, "s1").unwrap_err().code, Code::ArtifactMissing);
}

#[test]
fn delete_skips_absent_images_and_refuses_paths_outside_output() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut m = meta("a", "alpha", "s1");
    m.artifacts.generated = "output/alpha/generated/s1.png".into(); // never written
    save(root, &m);
    delete(root, "s1").unwrap();
    assert!(root.join("archives/alpha/metadata/s1.json").exists());

    std::fs::write(root.join("secret"), "keep").unwrap();
    for bad in [
        "output/../secret",
        "/etc/passwd",
        "user-series/x.json",
        "output",
    ] {
        let mut m = meta("b", "beta", "s2");
        m.artifacts.annotated = bad.into();
        let path = save(root, &m);
        let err = delete(root, "s2").unwrap_err();
        assert_eq!(err.code, Code::InvalidInput, "{bad}");
        assert!(path.exists(), "nothing moved for {bad}");
    }
    assert!(root.join("secret").exists());
}

#[test]
fn export_writes_the_default_texts_into_the_default_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut m = meta("a", "alpha", "s1");
    m.prompts.data_prompt = "  ".into(); // blank texts are not written
    save(root, &m);
    let result = export(root, "s1", &ExportOptions::default()).unwrap();
    assert_eq!(result.dir, "exports/alpha/s1");
    let names: Vec<&String> = result.files.keys().collect();
    // With the manifest of their CIDs (no provenance record here: no run made an image).
    assert_eq!(names, ["enhanced", "manifest", "prompt", "terse", "title"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(&result.files["manifest"])).unwrap())
            .unwrap();
    assert_eq!(
        manifest["cids"]["terse.txt"],
        crate::cid::Cid::of(b"the terse").to_string()
    );
    assert_eq!(result.files["prompt"], "exports/alpha/s1/prompt.txt");
    let text = std::fs::read_to_string(root.join(&result.files["terse"])).unwrap();
    assert_eq!(text, "the terse");
    assert!(!root.join("exports/alpha/s1/technical.txt").exists());
    assert!(!root.join("output/alpha/exports").exists());
    assert_eq!(
        export(root, "nope", &ExportOptions::default())
            .unwrap_err()
            .code,
        Code::ArtifactMissing
    );
}

#[test]
fn export_flags_choose_the_texts_and_technical_is_the_technical_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(root, &meta("a", "alpha", "s1"));
    let opts = ExportOptions {
        include_technical: Some(true),
        include_title: Some(true),
        include_prompt: Some(false),
        ..ExportOptions::default()
    };
    let result = export(root, "s1", &opts).unwrap();
    let names: Vec<&String> = result.files.keys().collect();
    assert_eq!(names, ["manifest", "technical", "title"]);
    let technical = std::fs::read_to_string(root.join(&result.files["technical"])).unwrap();
    assert_eq!(technical, "the technical");
    // Only false flags count as no flags: the defaults apply.
    let none_true = ExportOptions {
        include_prompt: Some(false),
        ..ExportOptions::default()
    };
    assert_eq!(export(root, "s1", &none_true).unwrap().files.len(), 6);
}

#[test]
fn export_options_match_keys_case_insensitively() {
    let parse = |json: &str| serde_json::from_str::<ExportOptions>(json);
    let opts = parse(
        r#"{"Dir":"x","IncludePrompt":true,"includedata":false,"INCLUDETITLE":true,
            "includeTerse":null,"IncludeEnhanced":true,"includeTechnical":true,"other":[1]}"#,
    )
    .unwrap();
    assert_eq!(
        opts,
        ExportOptions {
            dir: Some("x".into()),
            include_prompt: Some(true),
            include_data: Some(false),
            include_title: Some(true),
            include_terse: None,
            include_enhanced: Some(true),
            include_technical: Some(true),
        }
    );
    assert_eq!(parse(r#"{"dir":"y"}"#).unwrap().dir.as_deref(), Some("y"));
    assert_eq!(parse("null").unwrap(), ExportOptions::default());
    assert_eq!(parse("{}").unwrap(), ExportOptions::default());
    assert!(parse(r#"{"includePrompt":"yes"}"#).is_err());
    assert!(parse(r#"{"DIR":7}"#).is_err());
    assert!(parse("[]").is_err());

    let value = serde_json::json!({"IncludeTechnical": true});
    let opts = ExportOptions::from_json(&value).unwrap();
    assert_eq!(opts.include_technical, Some(true));
    assert_eq!(
        ExportOptions::from_json(&serde_json::Value::Null).unwrap(),
        ExportOptions::default()
    );
    let err = ExportOptions::from_json(&serde_json::json!({"dir": false})).unwrap_err();
    assert_eq!(err.code, Code::InvalidInput);
    assert!(
        err.to_string()
            .starts_with("invalid_input: invalid export options: "),
        "{err}"
    );
}

#[test]
fn export_dirs_are_relative_to_the_exports_dir() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    save(root, &meta("a", "alpha", "s1"));
    let with_dir = |d: &str| ExportOptions {
        dir: Some(d.into()),
        ..ExportOptions::default()
    };
    let relative = export(root, "s1", &with_dir("mine")).unwrap();
    assert_eq!(relative.dir, "exports/mine");
    assert!(root.join("exports/mine/prompt.txt").exists());
    let nested = export(root, "s1", &with_dir(" deep/er ")).unwrap();
    assert_eq!(nested.dir, "exports/deep/er");
    // The attack: a directory named like an artifact lands under exports, not on the artifact.
    let artifact = "output/alpha/annotated/s1.png";
    let result = export(root, "s1", &with_dir(artifact)).unwrap();
    assert_eq!(result.dir, format!("exports/{artifact}"));
    assert!(
        root.join("exports")
            .join(artifact)
            .join("title.txt")
            .exists()
    );
    assert!(!root.join(artifact).exists());
    assert!(!root.join("output/alpha/annotated").exists());
}

#[test]
fn export_dirs_escaping_the_exports_dir_are_rejected() {
    let parent = tempfile::tempdir().unwrap();
    let root = parent.path().join("data");
    std::fs::create_dir_all(root.join("exports")).unwrap();
    save(&root, &meta("a", "alpha", "s1"));
    let outside = parent.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("exports/link")).unwrap();
    std::fs::write(root.join("exports/file.txt"), "x").unwrap();
    let before = list(&root, None, false).unwrap();
    for bad in [
        "../..".to_string(),
        "../outside".to_string(),
        "output/../../outside".to_string(),
        outside.display().to_string(),
        root.join("exports/ok").display().to_string(),
        "/tmp".to_string(),
        ".".to_string(),
        "./a".to_string(),
        "a/./b".to_string(),
        "a//b".to_string(),
        "a/".to_string(),
        "a/b\nc".to_string(),
        "link".to_string(),
        "link/sub".to_string(),
        "file.txt".to_string(),
        "file.txt/sub".to_string(),
    ] {
        let opts = ExportOptions {
            dir: Some(bad.clone()),
            ..ExportOptions::default()
        };
        let err = export(&root, "s1", &opts).unwrap_err();
        assert_eq!(err.code, Code::InvalidInput, "{bad}");
        assert!(!err.to_string().contains(&*root.to_string_lossy()), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    let names: Vec<String> = std::fs::read_dir(root.join("exports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "nothing created: {names:?}");
    assert_eq!(list(&root, None, false).unwrap(), before);
}
