//! Unit tests of the image metadata record.

use super::*;
use crate::attributes::Attributes;
use crate::attributes::selection::seed_from_input;

fn sample() -> ImageMetadata {
    let attributes = Attributes::load(None, PathBuf::from("/nonexistent")).unwrap();
    let seed = seed_from_input("hello world");
    let series = attributes.series.get("simple").unwrap();
    let (dress, prompts) = attributes.dress_in(&seed, &series, None).unwrap();
    let manifest = crate::catalogue::manifest::from_databases(&attributes.databases);
    let database = DatabaseRef {
        version: manifest.version,
        archive_hash: manifest.archive_hash,
    };
    ImageMetadata::from_dress(
        "hello world",
        &seed,
        &series,
        Recipe::default(),
        database,
        &dress,
        &prompts,
    )
}

fn keys(v: &serde_json::Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn serialised_record_has_exactly_the_upstream_keys() {
    let mut meta = sample();
    let v = serde_json::to_value(&meta).unwrap();
    let mut top = keys(&v);
    top.sort_unstable();
    assert_eq!(
        top,
        [
            "artifacts",
            "database",
            "imageId",
            "input",
            "metadataVersion",
            "prompts",
            "recipe",
            "seed",
            "selectedRecords",
            "series",
            "stages",
            "status"
        ]
    );
    assert_eq!(keys(&v["series"]), ["hash", "name", "source"]);
    assert_eq!(
        v["recipe"],
        serde_json::json!({"name": "default", "version": "1.0.0"})
    );
    assert_eq!(keys(&v["database"]), ["archiveHash", "version"]);
    assert_eq!(v["database"]["version"], "1.0.0");
    assert_eq!(
        keys(&v["selectedRecords"][0]),
        ["attribute", "database", "record", "rowIndex"]
    );
    // Enhanced is still empty, so omitted; the other five prompts are present.
    assert_eq!(
        keys(&v["prompts"]),
        [
            "dataPrompt",
            "prompt",
            "technicalPrompt",
            "tersePrompt",
            "titlePrompt"
        ]
    );
    assert!(keys(&v["artifacts"]).is_empty());
    assert_eq!(
        v["stages"]["selected"],
        serde_json::json!({"status": "complete"})
    );
    assert_eq!(
        v["stages"]["annotated"],
        serde_json::json!({"status": "skipped"})
    );
    assert_eq!(
        v["status"],
        serde_json::json!({"completed": true, "cacheHit": false})
    );

    meta.artifacts.generated = "output/simple/generated/x.png".into();
    meta.stages.generated = Stage {
        status: StageStatus::Failed,
        cache_hit: true,
        error: "boom".into(),
    };
    let v = serde_json::to_value(&meta).unwrap();
    assert_eq!(keys(&v["artifacts"]), ["generated"]);
    assert_eq!(
        v["stages"]["generated"],
        serde_json::json!({"status": "failed", "cacheHit": true, "error": "boom"})
    );
}

#[test]
fn from_dress_records_every_attribute_and_the_identity() {
    let meta = sample();
    meta.validate().unwrap();
    assert_eq!(meta.series.name, "simple");
    assert_eq!(meta.series.source, "builtin");
    assert!(meta.series.hash.starts_with("sha256:"));
    assert_eq!(meta.selected_records.len(), 18);
    let back = meta.selected_records.last().unwrap();
    assert_eq!((back.attribute.as_str(), back.row_index), ("backStyle", 0));
    assert_eq!(back.database, "backstyles");
    assert_eq!(meta.selected_records[0].attribute, "adverb");
    assert!(!meta.prompts.prompt.is_empty() && !meta.prompts.technical_prompt.is_empty());
    assert_eq!(meta.image_id, meta.compute_image_id());
    assert_eq!(meta.image_id.len(), "sha256:".len() + 64);
}

#[test]
fn image_id_is_deterministic_and_sensitive_to_every_field() {
    let base = [
        "in", "seed", "s", "sha256:s", "default", "1.0.0", "1.0.0", "sha256:a",
    ];
    let id = |f: [&str; 8]| image_id(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
    assert_eq!(id(base), id(base));
    let mut seen = std::collections::HashSet::from([id(base)]);
    for i in 0..8 {
        let mut changed = base;
        changed[i] = "other";
        assert!(seen.insert(id(changed)), "field {i} must change the id");
    }
    // The NUL separator keeps field boundaries: "ab"+"c" differs from "a"+"bc".
    let mut left = base;
    (left[0], left[1]) = ("ab", "c");
    let mut right = base;
    (right[0], right[1]) = ("a", "bc");
    assert_ne!(id(left), id(right));
}

#[test]
fn series_hash_ignores_the_file_time_but_not_the_source() {
    let series = Series {
        suffix: "x".into(),
        source: "user".into(),
        ..Series::default()
    };
    let touched = Series {
        modified_at: "2024-01-01T00:00:00Z".into(),
        ..series.clone()
    };
    assert_eq!(series_hash(&series), series_hash(&touched));
    let builtin = Series {
        source: "builtin".into(),
        ..series.clone()
    };
    assert_ne!(series_hash(&series), series_hash(&builtin));
}

#[test]
fn validate_requires_the_identity_fields() {
    let good = sample();
    let broken: [fn(&mut ImageMetadata); 6] = [
        |m| m.metadata_version.clear(),
        |m| m.input = " ".into(),
        |m| m.seed.clear(),
        |m| m.series.name.clear(),
        |m| m.recipe.name.clear(),
        |m| m.recipe.version.clear(),
    ];
    for (i, f) in broken.iter().enumerate() {
        let mut m = good.clone();
        f(&mut m);
        assert_eq!(
            m.validate().unwrap_err().code,
            Code::MetadataInvalid,
            "case {i}"
        );
    }
}

#[test]
fn metadata_path_is_safe() {
    let root = Path::new("/data");
    assert_eq!(
        metadata_path(root, "Test Series", "abc"),
        Path::new("/data/output/test-series/metadata/abc.json")
    );
    assert_eq!(
        metadata_path(root, "../x", "a/../b"),
        Path::new("/data/output/x/metadata/a_.._b.json")
    );
}

#[test]
fn write_then_read_round_trips_and_bad_files_are_metadata_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let meta = sample();
    let path = metadata_path(dir.path(), "simple", &meta.seed);
    assert_eq!(read(&path).unwrap(), None);
    write(&path, &meta).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n  \"metadataVersion\"") && text.ends_with("}\n"));
    assert_eq!(read(&path).unwrap(), Some(meta.clone()));

    let mut invalid = meta;
    invalid.seed.clear();
    assert_eq!(
        write(&path, &invalid).unwrap_err().code,
        Code::MetadataInvalid
    );

    std::fs::write(&path, "{not json").unwrap();
    assert_eq!(read(&path).unwrap_err().code, Code::MetadataInvalid);
    std::fs::write(&path, r#"{"metadataVersion":"1.0.0"}"#).unwrap();
    assert_eq!(read(&path).unwrap_err().code, Code::MetadataInvalid);
    // A directory where the file should be cannot be read.
    let dir_path = dir.path().join("output/simple/metadata/dir.json");
    std::fs::create_dir_all(&dir_path).unwrap();
    assert_eq!(read(&dir_path).unwrap_err().code, Code::MetadataInvalid);
}
