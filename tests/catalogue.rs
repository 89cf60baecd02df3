//! The `/v1` catalogue under attack: exports that aim at an artifact's path, oversized inputs,
//! listings too large to answer at once, and a hidden series asked to start new work. Runs go
//! to a local mock OpenAI that counts every image request, so "nothing was started" is shown
//! by the count and by what the server answers next, never by waiting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Options, Server, image_requests};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

const A: &str = "0x2222222222222222222222222222222222222222";
const B: &str = "0x3333333333333333333333333333333333333333";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A mock OpenAI answering every image request with a small PNG, and a live server (no
/// enhancement) pointed at it; the mock must live as long as the server.
async fn live_server() -> (MockServer, Server) {
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(common::b64_answer(&common::png(64, 48, [40, 90, 160])))
        .mount(&mock)
        .await;
    let env = [
        ("OPENAI_API_KEY", "sk-test-key"),
        ("OPENAI_BASE_URL", &mock.uri()),
        ("TB_DALLE_RETRY_BASE", "20ms"),
        ("TB_DALLE_NO_ENHANCE", "1"),
    ];
    let server = Server::start_with(Options {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    });
    (mock, server)
}

/// Sends `method path` with an optional JSON body: (status, headers, body).
async fn call(
    server: &Server,
    method: &str,
    url_path: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(m, server.url(url_path));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, value)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Every directory and file under `dir`, relative to it, sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The attack on the export route: a `dir` naming the annotated PNG of an address made a
/// directory there, and every later generation of that address failed after the paid image.
/// Now the export lands under `<data>/exports/`, nothing appears under `output/`, and the
/// address generates (one image request).
#[tokio::test]
async fn an_export_cannot_put_a_directory_at_an_artifact_path() {
    let (mock, server) = live_server().await;
    let data = &server.data_dir;
    let (s, _, preview) = call(
        &server,
        "POST",
        "/v1/images/preview",
        Some(json!({"seed": A, "series": "simple"})),
    )
    .await;
    assert_eq!(s, 200, "{preview:#}");
    let output_before = tree(&data.join("output"));

    let artifact = format!("output/simple/annotated/{A}.png");
    let (s, _, exported) = call(
        &server,
        "POST",
        &format!("/v1/images/{A}/export"),
        Some(json!({ "dir": artifact })),
    )
    .await;
    assert_eq!(s, 200, "{exported:#}");
    assert_eq!(exported["data"]["dir"], format!("exports/{artifact}"));
    assert!(
        data.join("exports")
            .join(&artifact)
            .join("prompt.txt")
            .is_file()
    );
    assert!(
        !data.join(&artifact).exists(),
        "nothing at the artifact path"
    );
    assert_eq!(
        tree(&data.join("output")),
        output_before,
        "nothing new under output/"
    );

    for bad in [
        data.join("exports/abs").display().to_string(),
        "/tmp/x".into(),
        "../output/simple".into(),
        "a/../../output".into(),
        "a//b".into(),
        "a/".into(),
        "./a".into(),
    ] {
        let (s, _, e) = call(
            &server,
            "POST",
            &format!("/v1/images/{A}/export"),
            Some(json!({ "dir": bad })),
        )
        .await;
        assert_eq!((s, code(&e)), (400, "invalid_input"), "{bad}: {e:#}");
    }
    assert_eq!(tree(&data.join("output")), output_before);

    // The address is not blocked: it generates, and its annotated PNG is a file.
    let (s, _, generated) = call(
        &server,
        "POST",
        "/v1/images/generate",
        Some(json!({"seed": A, "series": "simple", "image": true, "annotate": true})),
    )
    .await;
    assert_eq!(s, 200, "{generated:#}");
    assert!(data.join(&artifact).is_file());
    assert_eq!(image_requests(&mock).await, 1);
}

/// 150 records with a 1.9 MB input took 274 MB of disk: an input (and the other free texts
/// of the body) is at most 1 KiB, and a longer one is refused before any work.
#[tokio::test]
async fn inputs_over_one_kib_are_refused_before_any_work() {
    let (mock, server) = live_server().await;
    let at_limit = "x".repeat(1024);
    for route in ["/v1/images/preview", "/v1/images/generate"] {
        for body in [
            json!({"input": format!("{at_limit}y"), "image": true}),
            // Counted in bytes, not characters: 513 two-byte characters.
            json!({"input": "é".repeat(513), "image": true}),
            json!({"input": "ok", "recipe": format!("{at_limit}y"), "image": true}),
            json!({"input": "ok", "backstyle": format!("{at_limit}y"), "image": true}),
            json!({"seed": "s".repeat(201), "image": true}),
        ] {
            let (s, _, e) = call(&server, "POST", route, Some(body)).await;
            assert_eq!((s, code(&e)), (400, "invalid_input"), "{route}: {e:#}");
        }
    }
    assert_eq!(image_requests(&mock).await, 0);
    let written = tree(&server.data_dir.join("output"));
    assert!(
        !written.iter().any(|p| p.ends_with(".json")),
        "no record written: {written:?}"
    );

    let (s, _, ok) = call(
        &server,
        "POST",
        "/v1/images/preview",
        Some(json!({"input": at_limit})),
    )
    .await;
    assert_eq!(s, 200, "{ok:#}");
    assert_eq!(
        ok["data"]["metadata"]["input"].as_str().unwrap().len(),
        1024
    );
}

/// `GET /v1/images` answered every record at once (286 MB). Now it answers pages: `limit`
/// (default 100, at most 1000) and `after=<imageId>`, with a `Link: <…>; rel="next"` header
/// while there is more; following the links yields every record once.
#[tokio::test]
async fn the_image_listing_is_paged_with_next_links() {
    let server = Server::start();
    for i in 0..7 {
        let series = if i % 2 == 0 { "simple" } else { "empty" };
        let (s, _, _) = call(
            &server,
            "POST",
            "/v1/images/preview",
            Some(json!({"input": format!("record {i}"), "series": series})),
        )
        .await;
        assert_eq!(s, 200);
    }

    let (s, headers, all) = call(&server, "GET", "/v1/images", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        7,
        "all fit the default page"
    );
    assert!(headers.get("link").is_none(), "no next page");
    let ids: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["imageId"].as_str().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ordered by imageId: {ids:?}"
    );

    let mut next = Some("/v1/images?limit=3".to_string());
    let (mut walked, mut pages) = (Vec::new(), 0);
    while let Some(url) = next.take() {
        let (s, headers, page) = call(&server, "GET", &url, None).await;
        assert_eq!(s, 200, "{url}: {page:#}");
        let records = page["data"].as_array().unwrap();
        assert!(records.len() <= 3);
        walked.extend(records.iter().cloned());
        pages += 1;
        assert!(pages <= 3, "7 records in pages of 3");
        next = headers.get("link").map(|link| {
            let link = link.to_str().unwrap();
            assert!(link.ends_with(r#">; rel="next""#), "{link}");
            link.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap()
                .to_string()
        });
    }
    assert_eq!(pages, 3);
    assert_eq!(Value::Array(walked), all["data"]);

    // The series filter carries into the next link.
    let (_, headers, simple) = call(&server, "GET", "/v1/images?series=simple&limit=2", None).await;
    assert_eq!(simple["data"].as_array().unwrap().len(), 2);
    let link = headers["link"].to_str().unwrap().to_string();
    assert!(
        link.contains("series=simple") && link.contains("limit=2"),
        "{link}"
    );
    let url = link.trim_start_matches('<').split('>').next().unwrap();
    let (_, _, rest) = call(&server, "GET", url, None).await;
    assert_eq!(
        rest["data"].as_array().unwrap().len(),
        2,
        "4 simple records"
    );
    assert!(
        rest["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["metadata"]["series"]["name"] == "simple")
    );

    for bad in ["0", "1001", "-1", "ten", "1.5"] {
        let (s, _, e) = call(&server, "GET", &format!("/v1/images?limit={bad}"), None).await;
        assert_eq!((s, code(&e)), (400, "invalid_input"), "limit={bad}");
    }
    let (s, _, max) = call(&server, "GET", "/v1/images?limit=1000&limit=", None).await;
    assert_eq!((s, max["data"].as_array().unwrap().len()), (200, 7));
}

/// After hiding a series, `/series` still listed it and `?generate=1` generated. Now it is
/// not listed, starts nothing new on either API (400 `INVALID_SERIES` / `series_hidden`), and
/// its existing images are still served by `/dalle`, `/files` and `/v1`.
#[tokio::test]
async fn a_hidden_series_serves_its_images_but_starts_nothing() {
    let (mock, server) = live_server().await;
    let (s, _, _) = call(
        &server,
        "PUT",
        "/v1/series/My%20Cats",
        Some(json!({"purpose": "cats only", "nouns": ["cats"]})),
    )
    .await;
    assert_eq!(s, 200);
    let made = json!({"seed": A, "series": "my-cats", "image": true, "annotate": true});
    let (s, _, generated) = call(&server, "POST", "/v1/images/generate", Some(made.clone())).await;
    assert_eq!(s, 200, "{generated:#}");
    let image_id = generated["data"]["metadata"]["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(image_requests(&mock).await, 1);

    let (s, _, hidden) = call(
        &server,
        "POST",
        "/v1/series/my-cats/hidden",
        Some(json!({"hidden": true})),
    )
    .await;
    assert_eq!((s, &hidden["data"]["deleted"]), (200, &json!(true)));

    // Not listed; the admin listing shows it only when asked, with its flag.
    let (_, _, legacy) = call(&server, "GET", "/series", None).await;
    let names = legacy["data"]["series"].as_array().unwrap();
    assert!(!names.contains(&json!("my-cats")), "{legacy:#}");
    assert_eq!(legacy["data"]["count"], names.len());
    let (_, _, admin) = call(&server, "GET", "/v1/series", None).await;
    assert!(
        !admin["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["suffix"] == "my-cats")
    );
    let (_, _, admin) = call(&server, "GET", "/v1/series?includeHidden=1", None).await;
    let mine = admin["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["suffix"] == "my-cats");
    assert_eq!(mine.unwrap()["deleted"], true);

    // Its images are still served.
    let resp = client()
        .get(server.url(&format!("/dalle/my-cats/{A}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/png");
    let resp = client()
        .get(server.url(&format!("/files/my-cats/annotated/{A}.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, _, hit) = call(
        &server,
        "GET",
        &format!("/dalle/my-cats/{A}?generate=1"),
        None,
    )
    .await;
    assert_eq!(s, 200, "an existing image is a cache hit: {hit:#}");
    let (s, _, hit) = call(&server, "POST", "/v1/images/generate", Some(made)).await;
    assert_eq!(
        (s, &hit["data"]["metadata"]["status"]["cacheHit"]),
        (200, &json!(true))
    );
    let (s, _, got) = call(&server, "GET", &format!("/v1/images/{image_id}"), None).await;
    assert_eq!(s, 200, "{got:#}");

    // Nothing new starts.
    let (s, _, e) = call(
        &server,
        "GET",
        &format!("/dalle/my-cats/{B}?generate=1"),
        None,
    )
    .await;
    assert_eq!((s, code(&e)), (400, "INVALID_SERIES"), "{e:#}");
    let (s, _, nothing) = call(&server, "GET", &format!("/dalle/my-cats/{B}"), None).await;
    assert_eq!(
        (s, &nothing["data"]),
        (200, &json!({})),
        "no run was started"
    );
    for (route, body) in [
        (
            "/v1/images/generate",
            json!({"seed": B, "series": "my-cats", "image": true}),
        ),
        (
            "/v1/images/generate",
            json!({"seed": A, "series": "my-cats", "image": true, "force": true}),
        ),
        (
            "/v1/images/preview",
            json!({"input": "new", "series": "My Cats"}),
        ),
    ] {
        let (s, _, e) = call(&server, "POST", route, Some(body.clone())).await;
        assert_eq!(
            (s, code(&e)),
            (400, "series_hidden"),
            "{route} {body}: {e:#}"
        );
    }
    let (s, _, e) = call(
        &server,
        "POST",
        &format!("/v1/images/{image_id}/regenerate"),
        None,
    )
    .await;
    assert_eq!((s, code(&e)), (400, "series_hidden"), "{e:#}");
    assert_eq!(image_requests(&mock).await, 1, "no image was requested");

    // Shown again, it works again.
    let (s, _, _) = call(
        &server,
        "POST",
        "/v1/series/my-cats/hidden",
        Some(json!({"hidden": false})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, again) = call(
        &server,
        "POST",
        "/v1/images/generate",
        Some(json!({"seed": B, "series": "my-cats", "image": true})),
    )
    .await;
    assert_eq!(s, 200, "{again:#}");
    assert_eq!(image_requests(&mock).await, 2);
}

/// Every `/v1` route that takes a series or an id parses it at the edge: a blank id is
/// `invalid_input` on each, and series names are normalised on each (as `/dalle` does).
#[tokio::test]
async fn v1_identifiers_are_parsed_at_the_edge() {
    let server = Server::start();
    let (s, _, preview) = call(
        &server,
        "POST",
        "/v1/images/preview",
        Some(json!({"input": "Wimp", "series": " SIMPLE "})),
    )
    .await;
    assert_eq!((s, &preview["data"]["series"]), (200, &json!("simple")));
    for (method, url) in [
        ("GET", "/v1/images/%20"),
        ("DELETE", "/v1/images/%20"),
        ("POST", "/v1/images/%20/regenerate"),
        ("POST", "/v1/images/%20/export"),
    ] {
        let (s, _, e) = call(&server, method, url, None).await;
        assert_eq!(
            (s, code(&e)),
            (400, "invalid_input"),
            "{method} {url}: {e:#}"
        );
    }
    let (s, _, e) = call(&server, "PUT", "/v1/series/%20", Some(json!({}))).await;
    assert_eq!((s, code(&e)), (400, "invalid_input"), "{e:#}");
    let (s, _, saved) = call(
        &server,
        "PUT",
        "/v1/series/path-name",
        Some(json!({"suffix": "Body Name"})),
    )
    .await;
    assert_eq!(
        (s, &saved["data"]["suffix"]),
        (200, &json!("body-name")),
        "the body wins"
    );
    let (s, _, got) = call(&server, "GET", "/v1/series/BODY%20NAME", None).await;
    assert_eq!((s, &got["data"]["suffix"]), (200, &json!("body-name")));
    let (s, _, listed) = call(&server, "GET", "/v1/images?series=Simple", None).await;
    assert_eq!((s, listed["data"].as_array().unwrap().len()), (200, 1));
}

/// The OpenAPI document describes the paging and the new code.
#[tokio::test]
async fn the_openapi_document_describes_paging_and_hidden_series() {
    let server = Server::start();
    let (_, _, doc) = call(&server, "GET", "/openapi.json", None).await;
    let list = &doc["paths"]["/v1/images"]["get"];
    let params: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        params.contains(&"limit") && params.contains(&"after"),
        "{params:?}"
    );
    assert!(list["responses"]["200"]["headers"]["Link"].is_object());
    assert!(list["responses"]["400"].is_object());
    let text = doc.to_string();
    assert!(text.contains("series_hidden"));
}
