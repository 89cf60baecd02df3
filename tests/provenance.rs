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

/// The `tEXt` and `iTXt` chunks of a PNG, read with the `png` crate's own decoder.
fn text_chunks(png_bytes: &[u8]) -> (Vec<(String, String)>, Vec<(String, String)>) {
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
