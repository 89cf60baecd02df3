//! Provenance end to end (issue 16): a mock-mode run writes a record beside its artifacts, the
//! annotated PNG carries the `parameters` and `dalleserver:provenance` text chunks (read back
//! with the `png` crate's decoder, not our reader), every CID in the record is the CID of the
//! bytes it names, and the record fits its published JSON Schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, image_requests};
use dalleserver::cid::Cid;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Starts a run for `A` and waits (bounded) until its PNG is served.
async fn generate(server: &Server, series: &str) -> Vec<u8> {
    let url = server.url(&format!("/dalle/{series}/{A}"));
    let first = client()
        .get(format!("{url}?generate=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let resp = client().get(&url).send().await.unwrap();
        if resp.headers()["content-type"] == "image/png" {
            return resp.bytes().await.unwrap().to_vec();
        }
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["data"]["error"].as_str().unwrap_or("").is_empty(),
            "{body:#}"
        );
        assert!(Instant::now() < deadline, "no image in time: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(keyword, text)` of each text chunk of one kind.
type Chunks = Vec<(String, String)>;

/// The `tEXt` and `iTXt` chunks of a PNG, read with the `png` crate's own decoder.
fn text_chunks(png_bytes: &[u8]) -> (Chunks, Chunks) {
    let reader = png::Decoder::new(Cursor::new(png_bytes))
        .read_info()
        .unwrap();
    let info = reader.info();
    let latin1 = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    let utf8 = info
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    (latin1, utf8)
}

fn read(out: &Path, kind: &str, ext: &str) -> Vec<u8> {
    std::fs::read(out.join(format!("{kind}/{A}.{ext}"))).unwrap()
}

fn cid(value: &Value) -> Cid {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_mock_run_writes_a_record_whose_cids_name_its_artifacts() {
    let server = Server::start();
    let annotated = generate(&server, "simple").await;
    let out = server.data_dir.join("output/simple");
    let record: Value = serde_json::from_slice(&read(&out, "provenance", "json")).unwrap();

    assert_eq!(record["schema"], 1);
    assert_eq!(record["series"], "simple");
    assert_eq!(record["subject"], A);
    assert_eq!(cid(&record["annotated_cid"]), Cid::of(&annotated));
    assert_eq!(
        cid(&record["raw_cid"]),
        Cid::of(&read(&out, "generated", "png"))
    );
    assert_eq!(
        cid(&record["dress_cid"]),
        Cid::of(&read(&out, "selector", "json"))
    );
    let prompts = record["prompts"].as_array().unwrap();
    let kinds: Vec<_> = prompts
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["data", "title", "terse", "prompt", "enhanced", "technical"]
    );
    for prompt in prompts {
        let kind = prompt["kind"].as_str().unwrap();
        let text = read(&out, kind, "txt");
        assert_eq!(cid(&prompt["cid"]), Cid::of(&text), "{kind}");
        assert_eq!(prompt["text"].as_str().unwrap().as_bytes(), text, "{kind}");
    }
    // The series definition and the databases manifest, as the /v1 API answers them.
    let series: Value = client()
        .get(server.url("/v1/series/simple"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Read into the server's own type, so the bytes are its serialisation (a `Value` would
    // sort the keys).
    let series: dalleserver::attributes::series::Series =
        serde_json::from_value(series["data"].clone()).unwrap();
    let series_bytes = serde_json::to_vec(&series).unwrap();
    assert_eq!(cid(&record["series_cid"]), Cid::of(&series_bytes));
    assert_eq!(record["image"]["source"], "mock");
    assert_eq!(record["enhancement"]["ran"], false);
    assert!(
        record["enhancement"]["skipped"]
            .as_str()
            .unwrap()
            .contains("mock mode")
    );
    assert_eq!(record["cost"]["usd_micros"], 0);
    let phases: Vec<_> = record["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["phase"].as_str().unwrap(), p["skipped"] == true))
        .collect();
    assert!(phases.contains(&("enhance_prompt", true)), "{phases:?}");
    assert!(phases.contains(&("annotate", false)), "{phases:?}");
    let annotation = &record["annotation"];
    assert_eq!(
        annotation["caption"].as_str().unwrap().as_bytes(),
        read(&out, "terse", "txt")
    );
    assert_eq!(annotation["input_width"], 1024);
    let commit = record["server"]["commit"].as_str().unwrap();
    assert!(commit == "unknown" || commit.len() == 40, "{commit}");
    assert_eq!(record["server"]["version"], env!("CARGO_PKG_VERSION"));

    // Inside the PNG: the A1111-style summary and the record less what varies between runs.
    let (latin1, utf8) = text_chunks(&annotated);
    let parameters = &latin1.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        parameters.contains(&format!("Series: simple, Address: {A}")),
        "{parameters}"
    );
    assert!(parameters.contains("Model: mock"), "{parameters}");
    let embedded = &utf8
        .iter()
        .find(|(k, _)| k == "dalleserver:provenance")
        .unwrap()
        .1;
    let embedded: Value = serde_json::from_str(embedded).unwrap();
    for varying in [
        "phases",
        "cost",
        "started_at",
        "finished_at",
        "request_id",
        "annotated_cid",
    ] {
        assert!(embedded.get(varying).is_none(), "{varying} is embedded");
    }
    let mut made = record.clone();
    for varying in [
        "phases",
        "cost",
        "started_at",
        "finished_at",
        "request_id",
        "annotated_cid",
    ] {
        made.as_object_mut().unwrap().remove(varying);
    }
    assert_eq!(embedded, made);
}

#[tokio::test]
async fn a_paid_run_records_the_models_the_answer_and_the_cost() {
    let mock = MockServer::start().await;
    let raw = common::png(64, 48, [200, 40, 40]);
    let answer = serde_json::json!({
        "created": 1_700_000_000,
        "data": [{
            "b64_json": base64_encode(&raw),
            "revised_prompt": "a red \"square\", revised"
        }]
    });
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&mock)
        .await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "id": "chatcmpl-42",
            "choices": [{"message": {"content": "an enhanced prompt"}}]
        })))
        .mount(&mock)
        .await;
    let server = Server::start_with(common::Options {
        env: vec![
            ("OPENAI_API_KEY".into(), "sk-test".into()),
            ("OPENAI_BASE_URL".into(), mock.uri()),
        ],
        ..Default::default()
    });
    let annotated = generate(&server, "simple").await;
    assert_eq!(image_requests(&mock).await, 1);
    let out = server.data_dir.join("output/simple");
    let record: Value = serde_json::from_slice(&read(&out, "provenance", "json")).unwrap();
    let image = &record["image"];
    assert_eq!(image["source"], "openai");
    assert_eq!(image["model"], "gpt-image-2");
    assert_eq!(image["download"], "b64");
    assert_eq!(image["revised_prompt"], "a red \"square\", revised");
    assert_eq!(image["created"], 1_700_000_000);
    assert_eq!(record["cost"]["model"], "gpt-image-2");
    assert!(
        record["cost"]["usd_micros"].as_u64().unwrap() > 0,
        "{record:#}"
    );
    assert_eq!(cid(&record["raw_cid"]), Cid::of(&raw));
    assert_eq!(cid(&record["annotated_cid"]), Cid::of(&annotated));
    // `simple` dresses have a literary style, so the chat model rewrote the prompt once.
    let chats = mock
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/chat/completions")
        .count();
    assert_eq!(chats, 1);
    let enhancement = &record["enhancement"];
    assert_eq!(enhancement["ran"], true);
    assert_eq!(enhancement["model"], "gpt-5.5");
    assert_eq!(enhancement["request_id"], "chatcmpl-42");
    assert!(enhancement["skipped"].is_null());
    let (latin1, _) = text_chunks(&annotated);
    let parameters = &latin1.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(
        parameters.contains("Model: gpt-image-2, Size: "),
        "{parameters}"
    );
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn records_fit_the_published_schema() {
    let server = Server::start();
    generate(&server, "simple").await;
    let schema: Value = client()
        .get(server.url("/provenance.schema.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let out = server.data_dir.join("output/simple");
    let record: Value = serde_json::from_slice(&read(&out, "provenance", "json")).unwrap();
    schema::check(&schema, &schema, &record, "$").unwrap();
    let annotated = read(&out, "annotated", "png");
    let (_, utf8) = text_chunks(&annotated);
    let embedded: Value = serde_json::from_str(&utf8[0].1).unwrap();
    schema::check(&schema, &schema["$defs"]["making"], &embedded, "$").unwrap();
    // The checker is not a rubber stamp.
    let mut broken = record.clone();
    broken["raw_cid"] = Value::from(7);
    assert!(schema::check(&schema, &schema, &broken, "$").is_err());
    broken = record.clone();
    broken["extra"] = Value::from(1);
    assert!(schema::check(&schema, &schema, &broken, "$").is_err());
    broken = record;
    broken.as_object_mut().unwrap().remove("cost");
    assert!(schema::check(&schema, &schema, &broken, "$").is_err());
}

/// A checker for the JSON Schema keywords the provenance schema uses (`type`, `enum`, `const`,
/// `required`, `properties`, `additionalProperties: false`, `items`, `anyOf`, `$ref` into
/// `$defs`, `minimum`; `pattern` is checked by parsing CIDs instead). The full standard is
/// checked by the `needs_python3` test with the `jsonschema` package.
mod schema {
    use serde_json::Value;

    pub fn check(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.strip_prefix("#/$defs/").ok_or(reference)?;
            return check(root, &root["$defs"][name], value, at);
        }
        if let Some(options) = schema.get("anyOf").and_then(Value::as_array) {
            return options
                .iter()
                .find(|s| check(root, s, value, at).is_ok())
                .map(|_| ())
                .ok_or(format!("{at}: matches no anyOf branch"));
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let fits = |t: &str| match t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "null" => value.is_null(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                _ => false,
            };
            if !types.iter().any(|t| fits(t)) {
                return Err(format!("{at}: {value} is not {types:?}"));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            return Err(format!("{at}: {value} not in {allowed:?}"));
        }
        if let Some(constant) = schema.get("const")
            && constant != value
        {
            return Err(format!("{at}: {value} is not {constant}"));
        }
        if let (Some(min), Some(n)) = (
            schema.get("minimum").and_then(Value::as_f64),
            value.as_f64(),
        ) && n < min
        {
            return Err(format!("{at}: {n} < {min}"));
        }
        if schema.get("pattern").is_some()
            && schema["pattern"].as_str().unwrap().contains("bafkrei")
        {
            value
                .as_str()
                .unwrap_or_default()
                .parse::<dalleserver::cid::Cid>()
                .map_err(|e| format!("{at}: {e}"))?;
        }
        if let Some(object) = value.as_object() {
            let properties = schema.get("properties").and_then(Value::as_object);
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap();
                if !object.contains_key(name) {
                    return Err(format!("{at}: missing {name}"));
                }
            }
            for (name, field) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(sub) => check(root, sub, field, &format!("{at}.{name}"))?,
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        return Err(format!("{at}: unexpected {name}"));
                    }
                    None => {}
                }
            }
        }
        if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                check(root, items, item, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }
}

/// The record against the full JSON Schema standard, with Python's `jsonschema` package.
mod needs_python3 {
    use super::*;

    #[tokio::test]
    #[ignore = "needs python3 with the jsonschema package (tests/tool-tests.sh runs it)"]
    async fn records_validate_with_python_jsonschema() {
        let server = Server::start();
        generate(&server, "simple").await;
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("schema.json");
        std::fs::write(&schema, dalleserver::provenance::SCHEMA_JSON).unwrap();
        let record = server
            .data_dir
            .join(format!("output/simple/provenance/{A}.json"));
        let script = "import json,sys,jsonschema\n\
            s=json.load(open(sys.argv[1]));r=json.load(open(sys.argv[2]))\n\
            jsonschema.Draft202012Validator.check_schema(s)\n\
            jsonschema.Draft202012Validator(s).validate(r)\n\
            print('valid')";
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&schema)
            .arg(&record)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn content_is_served_by_cid_and_says_who_refers_to_it() {
    let server = Server::start();
    let annotated = generate(&server, "simple").await;
    let out = server.data_dir.join("output/simple");
    let record_bytes = read(&out, "provenance", "json");
    let record: Value = serde_json::from_slice(&record_bytes).unwrap();
    let c = client();

    // The PNG on /dalle and /files has the CID as its strong ETag.
    let cid_annotated = Cid::of(&annotated);
    for route in [
        format!("/dalle/simple/{A}"),
        format!("/files/simple/annotated/{A}.png"),
    ] {
        let resp = c.get(server.url(&route)).send().await.unwrap();
        assert_eq!(
            resp.headers()["etag"],
            format!("\"{cid_annotated}\""),
            "{route}"
        );
    }

    for (cid, bytes, content_type) in [
        (cid_annotated, annotated.clone(), "image/png"),
        (
            cid(&record["raw_cid"]),
            read(&out, "generated", "png"),
            "image/png",
        ),
        (
            cid(&record["dress_cid"]),
            read(&out, "selector", "json"),
            "application/json",
        ),
        (
            cid(&record["prompts"][0]["cid"]),
            read(&out, "data", "txt"),
            "text/plain; charset=utf-8",
        ),
        (
            Cid::of(&record_bytes),
            record_bytes.clone(),
            "application/json",
        ),
    ] {
        let resp = c
            .get(server.url(&format!("/cache/{cid}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{cid}");
        assert_eq!(resp.headers()["content-type"], content_type);
        assert_eq!(resp.headers()["etag"], format!("\"{cid}\""));
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(resp.bytes().await.unwrap(), bytes);
    }

    let meta: Value = c
        .get(server.url(&format!("/cache/{cid_annotated}/meta")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = &meta["data"];
    assert_eq!(data["cid"], cid_annotated.to_string());
    assert_eq!(data["size"], annotated.len());
    assert_eq!(data["content_type"], "image/png");
    assert_eq!(
        data["names"],
        serde_json::json!([format!("simple/annotated/{A}.png")])
    );
    let run = &data["runs"][0];
    assert_eq!(run["record"], format!("simple/provenance/{A}.json"));
    assert_eq!(cid(&run["record_cid"]), Cid::of(&record_bytes));

    // 400 for what is not a CID, 404 for one nothing here has.
    let bad = c.get(server.url("/cache/not-a-cid")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    let absent = Cid::of(b"nothing stored has these bytes");
    for route in [format!("/cache/{absent}"), format!("/cache/{absent}/meta")] {
        let resp = c.get(server.url(&route)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{route}");
    }

    // The record by address; removing the image drops it, and its CID is no longer served.
    let by_address = c
        .get(server.url(&format!("/dalle/simple/{A}/provenance")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_address.status(), 200);
    assert_eq!(
        by_address.headers()["etag"],
        format!("\"{}\"", Cid::of(&record_bytes))
    );
    assert_eq!(by_address.bytes().await.unwrap(), record_bytes);
    let removed = c
        .get(server.url(&format!("/dalle/simple/{A}?remove")))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    for route in [
        format!("/dalle/simple/{A}/provenance"),
        format!("/cache/{cid_annotated}"),
        format!("/cache/{}", Cid::of(&record_bytes)),
    ] {
        let resp = c.get(server.url(&route)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{route}");
    }
    let unknown_series = c
        .get(server.url(&format!("/dalle/nosuch/{A}/provenance")))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_series.status(), 400);
}

#[tokio::test]
async fn a_restarted_server_indexes_the_records_it_finds() {
    let first = Server::start();
    let annotated = generate(&first, "simple").await;
    let data = first.data_dir.clone();
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data, copy.path());
    drop(first);
    let second = Server::start_with(common::Options {
        args: vec!["--data-dir".into(), copy.path().display().to_string()],
        ..Default::default()
    });
    let resp = client()
        .get(second.url(&format!("/cache/{}", Cid::of(&annotated))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), annotated);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn v1_images_have_their_provenance() {
    let server = Server::start();
    let c = client();
    let made: Value = c
        .post(server.url("/v1/images/generate"))
        .json(&serde_json::json!({"input": "provenance of a v1 image", "series": "simple", "image": true, "annotate": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(made["success"], true, "{made:#}");
    let id = made["data"]["metadata"]["imageId"].as_str().unwrap();
    let seed = made["data"]["metadata"]["seed"].as_str().unwrap();
    let resp = c
        .get(server.url(&format!("/v1/images/{id}/provenance")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let record: Value = resp.json().await.unwrap();
    assert_eq!(record["subject"], seed);
    let annotated = std::fs::read(
        server
            .data_dir
            .join(format!("output/simple/annotated/{seed}.png")),
    )
    .unwrap();
    assert_eq!(cid(&record["annotated_cid"]), Cid::of(&annotated));
    // Prompts only: no image, so no record.
    let preview: Value = c
        .post(server.url("/v1/images/preview"))
        .json(&serde_json::json!({"input": "only prompts", "series": "simple"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = preview["data"]["metadata"]["imageId"].as_str().unwrap();
    let resp = c
        .get(server.url(&format!("/v1/images/{id}/provenance")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body:#}");
}

/// `dalleserver verify …` run as the real binary: (exit code, stdout, stderr).
async fn verify_cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let out = common::command(dir.path(), dir.path())
            .arg("verify")
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn verify_accepts_a_good_file_and_names_the_first_difference_otherwise() {
    let server = Server::start();
    let annotated = generate(&server, "simple").await;
    let out = server.data_dir.join("output/simple");
    let (good, raw) = (
        out.join(format!("annotated/{A}.png")),
        out.join(format!("generated/{A}.png")),
    );
    let path = |p: &Path| p.display().to_string();

    let (code, stdout, stderr) = verify_cli(vec![path(&good), "--raw".into(), path(&raw)]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("ok  raw image: bafkrei"), "{stdout}");
    assert!(stdout.contains("ok  pixels: all 1024x"), "{stdout}");
    // The raw image fetched by its CID from the server instead.
    let (code, stdout, stderr) =
        verify_cli(vec![path(&good), "--server".into(), server.url("")]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    let making = dalleserver::provenance::Making::from_png(&annotated).unwrap();
    let text = making.png_text().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // One pixel changed, the chunks kept.
    let mut pixels = image::load_from_memory(&annotated).unwrap().into_rgba8();
    pixels.get_pixel_mut(500, 1100).0[2] ^= 0x10;
    let tampered = dir.path().join("pixel.png");
    std::fs::write(
        &tampered,
        dalleserver::annotate::encode_png_with_text(&pixels, Some(&text)).unwrap(),
    )
    .unwrap();
    let (code, _, stderr) = verify_cli(vec![path(&tampered), "--raw".into(), path(&raw)]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("pixel (500, 1100)"), "{stderr}");

    // Another caption drawn on the same raw image, the original record kept.
    let raw_pixels = image::open(&raw).unwrap().into_rgba8();
    let recaptioned =
        dalleserver::annotate::annotate(&raw_pixels, "a caption nobody recorded").unwrap();
    let forged = dir.path().join("caption.png");
    std::fs::write(
        &forged,
        dalleserver::annotate::encode_png_with_text(&recaptioned, Some(&text)).unwrap(),
    )
    .unwrap();
    let (code, _, stderr) = verify_cli(vec![path(&forged), "--raw".into(), path(&raw)]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("MISMATCH "), "{stderr}");
    assert!(
        stderr.contains("pixel") || stderr.contains("pixels"),
        "{stderr}"
    );

    // Without a way to get the raw image there is nothing to check.
    let (code, _, stderr) = verify_cli(vec![path(&good)]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("--raw"), "{stderr}");
}

#[tokio::test]
async fn the_gallery_links_each_image_to_its_provenance_page() {
    let server = Server::start();
    let annotated = generate(&server, "simple").await;
    let c = client();
    let gallery = c
        .get(server.url("/preview"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let link = format!("/preview/provenance/simple/{A}");
    assert!(gallery.contains(&format!("href=\"{link}\"")), "{gallery}");
    let resp = c.get(server.url(&link)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("content-security-policy"));
    let page = resp.text().await.unwrap();
    let record: Value = serde_json::from_slice(
        &std::fs::read(
            server
                .data_dir
                .join(format!("output/simple/provenance/{A}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    for cid in [
        Cid::of(&annotated).to_string(),
        record["raw_cid"].as_str().unwrap().to_string(),
        record["series_cid"].as_str().unwrap().to_string(),
        record["prompts"][5]["cid"].as_str().unwrap().to_string(),
    ] {
        assert!(
            page.contains(&format!("href=\"/cache/{cid}\"")),
            "{cid} not linked"
        );
    }
    assert!(page.contains(&format!("src=\"/files/simple/annotated/{A}.png\"")));
    assert!(
        page.contains("annotate</th><td>") && page.contains(" ms</td>"),
        "{page}"
    );
    assert!(page.contains("skipped: mock mode"), "{page}");
    let missing = c
        .get(server.url("/preview/provenance/simple/0x0000000000000000000000000000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn an_export_bundles_the_record_the_raw_image_and_a_manifest_of_cids() {
    let server = Server::start();
    let c = client();
    let made: Value = c
        .post(server.url("/v1/images/generate"))
        .json(&serde_json::json!({"input": "an exported image", "series": "simple", "image": true, "annotate": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = made["data"]["metadata"]["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let seed = made["data"]["metadata"]["seed"]
        .as_str()
        .unwrap()
        .to_string();
    let exported: Value = c
        .post(server.url(&format!("/v1/images/{id}/export")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(exported["success"], true, "{exported:#}");
    let files = exported["data"]["files"].as_object().unwrap();
    let file =
        |name: &str| std::fs::read(server.data_dir.join(files[name].as_str().unwrap())).unwrap();
    let record: Value = serde_json::from_slice(&file("provenance")).unwrap();
    assert_eq!(record["subject"], seed.as_str());
    let raw = file("raw");
    assert_eq!(cid(&record["raw_cid"]), Cid::of(&raw));
    assert_eq!(
        raw,
        std::fs::read(
            server
                .data_dir
                .join(format!("output/simple/generated/{seed}.png"))
        )
        .unwrap()
    );
    let manifest: Value = serde_json::from_slice(&file("manifest")).unwrap();
    let cids = manifest["cids"].as_object().unwrap();
    for (name, relative) in files {
        if name == "manifest" {
            continue;
        }
        let relative = relative.as_str().unwrap();
        let bytes = std::fs::read(server.data_dir.join(relative)).unwrap();
        let file_name = relative.rsplit('/').next().unwrap();
        assert_eq!(cid(&cids[file_name]), Cid::of(&bytes), "{file_name}");
    }
    assert!(cids.contains_key("raw.png") && cids.contains_key("provenance.json"));
}
