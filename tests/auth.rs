//! API keys, CORS and the gallery's Content-Security-Policy, against the real server: every
//! route that spends money or changes data without a key, with a wrong one and with a good
//! one; the public routes without one; a cache hit and a join without one; the keys file
//! reloaded while running; a bad line at start; `keys new` round-tripping. Loops are bounded
//! and wait for something that must happen (a log line, a key starting to work).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Options, Process, Running, Server, image_requests, mock_openai};
use serde_json::{Value, json};

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
const B: &str = "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6";
const GOOD: &str = "dsk_good-token-for-tests";
const WRONG: &str = "dsk_wrong-token-for-tests";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A keys file holding `keys` (name, token) as the server wants them: hashes only.
fn write_keys(path: &Path, keys: &[(&str, &str)], extra: &str) {
    let mut text = String::from("# test keys\n\n");
    for (name, token) in keys {
        text.push_str(&dalleserver::auth::key_line(name, token));
        text.push('\n');
    }
    text.push_str(extra);
    std::fs::write(path, text).unwrap();
}

fn keyed(dir: &Path, mut extra: Options) -> (Options, PathBuf) {
    let file = dir.join("keys");
    write_keys(&file, &[("ci", GOOD)], "");
    extra.args.push("--api-keys-file".into());
    extra.args.push(file.display().to_string());
    (extra, file)
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(
    server: &impl Running,
    verb: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let m = reqwest::Method::from_bytes(verb.as_bytes()).unwrap();
    let mut req = client().request(m, server.url(url));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Answer {
        status,
        headers,
        body: resp.text().await.unwrap(),
    }
}

/// Polls `/dalle/<series>/<address>` until it serves the PNG.
async fn wait_png(server: &impl Running, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = send(
            server,
            "GET",
            &format!("/dalle/simple/{address}"),
            None,
            None,
        )
        .await;
        if a.headers["content-type"] == "image/png" {
            return;
        }
        assert!(Instant::now() < deadline, "no image: {}", a.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn auth_failures(server: &impl Running) -> u64 {
    let text = send(server, "GET", "/metrics", None, None).await.body;
    text.lines()
        .find_map(|l| l.strip_prefix("dalleserver_auth_failures_total "))
        .unwrap_or_else(|| panic!("no auth failure counter in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The parts of a refusal a client can see, minus the request id and clock.
fn refusal(a: &Answer) -> (u16, Option<String>, Value) {
    let mut body = a.json();
    if let Some(o) = body.as_object_mut() {
        o.remove("request_id");
    }
    if let Some(o) = body["error"].as_object_mut() {
        o.remove("request_id");
        o.remove("timestamp");
    }
    let www = a
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (a.status, www, body)
}

#[tokio::test]
async fn protected_routes_refuse_a_missing_or_wrong_key_alike_and_take_a_good_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (opts, _file) = keyed(tmp.path(), Options::default());
    let server = Server::start_with(opts);

    // What the protected routes act on, made with the good key.
    let a = send(
        &server,
        "GET",
        &format!("/dalle/simple/{A}?generate=1"),
        Some(GOOD),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    wait_png(&server, A).await;
    let record = json!({"input": "Wimp", "series": "simple", "image": true});
    let made = send(
        &server,
        "POST",
        "/v1/images/generate",
        Some(GOOD),
        Some(&record),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let id = made.json()["data"]["metadata"]["imageId"]
        .as_str()
        .unwrap()
        .to_string();
    let saved = send(
        &server,
        "PUT",
        "/v1/series/mine",
        Some(GOOD),
        Some(&json!({"last": 3})),
    )
    .await;
    assert_eq!(saved.status, 200, "{}", saved.body);

    let miss = json!({"input": "Someone new", "series": "simple", "image": true});
    // (verb, path, body, on /v1); in an order the good key can run them all.
    let routes: Vec<(&str, String, Option<Value>, bool)> = vec![
        ("GET", format!("/dalle/simple/{B}?generate=1"), None, false),
        ("POST", "/v1/images/generate".into(), Some(miss), true),
        ("POST", format!("/v1/images/{id}/regenerate"), None, true),
        ("POST", format!("/v1/images/{id}/export"), None, true),
        (
            "PUT",
            "/v1/series/mine".into(),
            Some(json!({"last": 4})),
            true,
        ),
        (
            "POST",
            "/v1/series/mine/hidden".into(),
            Some(json!({"hidden": true})),
            true,
        ),
        ("GET", "/errors?clear".into(), None, false),
        ("GET", format!("/dalle/simple/{A}?remove"), None, false),
        ("DELETE", format!("/v1/images/{id}"), None, true),
    ];
    let mut refused = 0;
    for (verb, url, body, v1) in &routes {
        let missing = send(&server, verb, url, None, body.as_ref()).await;
        let wrong = send(&server, verb, url, Some(WRONG), body.as_ref()).await;
        let (status, www, envelope) = refusal(&missing);
        assert_eq!(status, 401, "{verb} {url}: {}", missing.body);
        assert_eq!(www.as_deref(), Some("Bearer"), "{verb} {url}");
        let code = if *v1 { "unauthorized" } else { "UNAUTHORIZED" };
        assert_eq!(envelope["error"]["code"], code, "{verb} {url}");
        assert_eq!(
            refusal(&wrong),
            (status, www, envelope),
            "{verb} {url}: tell-tale"
        );
        refused += 2;
    }
    assert_eq!(auth_failures(&server).await, refused);

    // Nothing happened: B was not started, A and the record are still there.
    let b = send(&server, "GET", &format!("/dalle/simple/{B}"), None, None).await;
    assert_eq!(b.json()["data"], json!({}), "{}", b.body);
    wait_png(&server, A).await;
    let got = send(&server, "GET", &format!("/v1/images/{id}"), None, None).await;
    assert_eq!(got.status, 200);

    for (verb, url, body, _) in &routes {
        let a = send(&server, verb, url, Some(GOOD), body.as_ref()).await;
        assert_eq!(a.status, 200, "{verb} {url} with a good key: {}", a.body);
    }
    wait_png(&server, B).await;
    assert_eq!(
        auth_failures(&server).await,
        refused,
        "good keys are not failures"
    );
}

#[tokio::test]
async fn reads_hits_and_joining_a_run_need_no_key() {
    let mock = mock_openai(Duration::from_millis(1500)).await;
    let tmp = tempfile::tempdir().unwrap();
    let live = Options {
        env: vec![
            ("OPENAI_API_KEY".into(), "sk-test".into()),
            ("OPENAI_BASE_URL".into(), mock.uri()),
            ("TB_DALLE_NO_ENHANCE".into(), "1".into()),
        ],
        ..Options::default()
    };
    let (opts, _file) = keyed(tmp.path(), live);
    let server = Server::start_with(opts);
    let url = format!("/dalle/simple/{A}?generate=1");

    let started = send(&server, "GET", &url, Some(GOOD), None).await;
    assert_eq!(started.status, 200, "{}", started.body);
    // The run is in flight (the image answer takes 1.5 s): an anonymous caller joins it.
    let joined = send(&server, "GET", &url, None, None).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(joined.json()["data"]["done"], false, "{}", joined.body);
    wait_png(&server, A).await;
    // A cache hit, anonymous.
    let hit = send(&server, "GET", &url, None, None).await;
    assert_eq!(hit.status, 200, "{}", hit.body);
    assert_eq!(hit.json()["data"]["cacheHit"], true, "{}", hit.body);
    assert_eq!(image_requests(&mock).await, 1);

    // A /v1 hit, anonymous, after the record was made with the key.
    let record = json!({"input": "Wimp", "series": "simple", "image": true});
    let made = send(
        &server,
        "POST",
        "/v1/images/generate",
        Some(GOOD),
        Some(&record),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let again = send(&server, "POST", "/v1/images/generate", None, Some(&record)).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["data"]["metadata"]["status"]["cacheHit"], true);
    assert_eq!(image_requests(&mock).await, 2);

    let seed = made.json()["data"]["seed"].as_str().unwrap().to_string();
    let file = std::fs::read_dir(server.data_dir.join("output/simple/annotated"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    for url in [
        format!("/dalle/simple/{A}"),
        format!("/files/simple/annotated/{}", file.to_string_lossy()),
        "/preview".into(),
        "/preview.js".into(),
        "/series".into(),
        "/health".into(),
        "/metrics".into(),
        "/errors".into(),
        "/v1/images".into(),
        format!("/v1/images/{seed}"),
        "/v1/series".into(),
        format!("/v1/progress/simple/{seed}"),
    ] {
        let a = send(&server, "GET", &url, None, None).await;
        assert_eq!(a.status, 200, "{url}: {}", a.body);
    }
    assert_eq!(auth_failures(&server).await, 0);
}

/// Sends `/errors?clear` with `token` until its status is `want`, for at most 10 s: the
/// server looks at the keys file at most once a second.
async fn until_status(server: &Process, token: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = send(server, "GET", "/errors?clear", Some(token), None).await;
        if a.status == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {} for {token}", a.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_keys_file_reloads_while_running_and_a_bad_edit_keeps_the_old_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (opts, file) = keyed(tmp.path(), Options::default());
    let server = Process::start_with(opts);
    let new = "dsk_added-later";
    assert_eq!(
        send(&server, "GET", "/errors?clear", Some(new), None)
            .await
            .status,
        401
    );

    write_keys(&file, &[("ci", GOOD), ("later", new)], "");
    until_status(&server, new, 200).await;
    assert!(server.log_text().contains("API keys file reloaded"));

    // A bad edit: logged with its line, and the keys in force stay.
    let third = "dsk_third";
    write_keys(
        &file,
        &[("ci", GOOD), ("third", third)],
        "oops no-hash-here\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("not reloaded") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        send(&server, "GET", "/errors?clear", Some(GOOD), None).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log_text();
    assert!(log.contains("line 5"), "{log}");
    for (token, status) in [(GOOD, 200), (new, 200), (third, 401)] {
        let a = send(&server, "GET", "/errors?clear", Some(token), None).await;
        assert_eq!(a.status, status, "{token}");
    }

    // Fixed again: the new set replaces the old one whole.
    write_keys(&file, &[("third", third)], "");
    until_status(&server, third, 200).await;
    assert_eq!(
        send(&server, "GET", "/errors?clear", Some(GOOD), None)
            .await
            .status,
        401
    );
}

#[test]
fn a_bad_line_at_start_is_exit_2_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("keys");
    write_keys(&file, &[("ci", GOOD)], "bob dsk_a-token-in-the-clear\n");
    let out = common::command(tmp.path(), tmp.path())
        .args(["--bind", "127.0.0.1", "--port", "0", "--api-keys-file"])
        .arg(&file)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("sha256:"), "says what was expected: {err}");
}

#[tokio::test]
async fn keys_new_prints_a_token_and_the_line_that_authorises_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::command(tmp.path(), tmp.path())
        .args(["keys", "new", "ci-bot"])
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (token, line) = (lines[0], lines[1]);
    assert!(
        token.starts_with("dsk_") && token.len() >= 4 + 43,
        "{token}"
    );
    assert!(
        line.starts_with("ci-bot sha256:") && !line.contains(token),
        "{line}"
    );

    let file = tmp.path().join("keys");
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let server = Server::start_with(Options {
        args: vec!["--api-keys-file".into(), file.display().to_string()],
        ..Options::default()
    });
    let ok = send(&server, "GET", "/errors?clear", Some(token), None).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let no = send(&server, "GET", "/errors?clear", Some(WRONG), None).await;
    assert_eq!(no.status, 401);

    let bad = common::command(tmp.path(), tmp.path())
        .args(["keys", "new", "no spaces"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn cors_answers_preflights_for_listed_origins_only() {
    let server = Server::start_with(Options {
        args: vec!["--cors-origin".into(), "https://app.example".into()],
        ..Options::default()
    });
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, server.url("/v1/images/generate"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );

    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let get = client()
        .get(server.url("/series"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        get.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        get.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-request-id")
    );
}

#[tokio::test]
async fn preview_sends_a_csp_allowing_only_its_own_scripts_and_styles() {
    let server = Server::start();
    let page = send(&server, "GET", "/preview", None, None).await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    // Nothing inline that the policy would block.
    for inline in ["<script>", "<style>", " style=\"", " onclick=", " oninput="] {
        assert!(!page.body.contains(inline), "{inline} in the page");
    }
    for (url, kind) in [
        ("/preview.js", "text/javascript"),
        ("/preview.css", "text/css"),
    ] {
        let a = send(&server, "GET", url, None, None).await;
        assert_eq!(a.status, 200, "{url}");
        assert!(
            a.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(kind)
        );
        assert!(page.body.contains(url), "the page loads {url}");
    }
}
