//! The edges of the HTTP surface an attacker or a new user reaches first: request bodies that
//! are too large or too slow, requests that cannot be read, error bodies that could leak the
//! server's paths, series names that cannot name files, flag typos, the favicon and the set-up
//! docs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Options, Process, Server};
use reqwest::blocking::Client;
use serde_json::Value;

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends `request` as written and reads the response until the server closes.
fn raw(addr: &str, request: &[u8]) -> common::RawResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    common::RawResponse {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// The error code of an envelope, after checking it is one (JSON, `success:false`, the
/// request id of the header).
fn envelope_code(response: &common::RawResponse) -> String {
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("application/json"),
        "{}\n\n{}",
        response.head,
        response.body
    );
    let body: Value = serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.body));
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(
        body["request_id"].as_str(),
        response.header("x-request-id").as_deref(),
        "{body}"
    );
    body["error"]["code"].as_str().unwrap().to_string()
}

fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n").into_bytes();
    request.extend_from_slice(body);
    request
}

#[test]
fn bodies_over_the_limit_get_a_413_envelope_and_the_limit_is_configurable() {
    let server = Server::start();
    // Exactly 64 KiB is read (the series does not exist: a 404 after the body was decoded).
    let mut body = br#"{"hidden":true}"#.to_vec();
    body.resize(64 * 1024, b' ');
    let at_limit = raw(
        &server.addr,
        &post(
            "/v1/series/nope/hidden",
            "Content-Length: 65536\r\nConnection: close\r\n",
            &body,
        ),
    );
    assert_eq!(at_limit.status, 404, "{}", at_limit.body);
    assert_eq!(envelope_code(&at_limit), "series_not_found");

    // One byte more, declared: refused before it is read, and the connection is closed.
    body.push(b' ');
    let declared = raw(
        &server.addr,
        &post("/v1/images/generate", "Content-Length: 65537\r\n", &body),
    );
    assert_eq!(declared.status, 413, "{}", declared.head);
    assert_eq!(envelope_code(&declared), "invalid_input");
    assert_eq!(declared.header("connection").as_deref(), Some("close"));

    // Undeclared (chunked): refused once the count passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..17 {
        chunked.extend_from_slice(format!("1000\r\n{}\r\n", " ".repeat(4096)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let streamed = raw(
        &server.addr,
        &post(
            "/v1/images/preview",
            "Transfer-Encoding: chunked\r\n",
            &chunked,
        ),
    );
    assert_eq!(streamed.status, 413, "{}", streamed.head);
    assert_eq!(envelope_code(&streamed), "invalid_input");

    let small = Server::start_with(Options {
        args: vec!["--max-body".into(), "1KiB".into()],
        ..Options::default()
    });
    let mut body = br#"{"suffix":"mine"}"#.to_vec();
    body.resize(2048, b' ');
    let response = client()
        .put(small.url("/v1/series/mine"))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 413);
    let small = Server::start_with(Options {
        env: vec![("TB_DALLE_MAX_BODY".into(), "100".into())],
        ..Options::default()
    });
    let response = client()
        .post(small.url("/v1/images/preview"))
        .body(vec![b' '; 101])
        .send()
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[test]
fn unreadable_requests_answer_the_envelope_of_their_family() {
    let server = Server::start();
    for (path, body) in [
        ("/v1/images/generate", &b"zz\r\nabc\r\n"[..]),
        ("/v1/images/preview", &b"3\r\nabcdef\r\n"[..]),
    ] {
        let response = raw(
            &server.addr,
            &post(
                path,
                "Transfer-Encoding: chunked\r\nConnection: close\r\n",
                body,
            ),
        );
        assert_eq!(response.status, 400, "{path}: {}", response.head);
        assert_eq!(envelope_code(&response), "invalid_input", "{path}");
    }
    for (path, code) in [
        ("/dalle/%ff%fe/x", "INVALID_REQUEST"),
        ("/files/%ff.png", "INVALID_REQUEST"),
        ("/v1/series/%ff", "invalid_input"),
        ("/v1/images/%c3%28", "invalid_input"),
        ("/v1/progress/simple/%ff", "invalid_input"),
    ] {
        let response = common::raw_request(&server.addr, "GET", path);
        assert_eq!(response.status, 400, "{path}: {}", response.body);
        assert_eq!(envelope_code(&response), code, "{path}");
    }
}

/// Every error body of a server with a broken `--databases` dir and of a working one whose
/// runs fail on the disk: none names a path of the machine.
#[test]
fn no_error_body_carries_an_absolute_path() {
    let tmp = tempfile::tempdir().unwrap();
    let databases = tmp.path().join("databases");
    std::fs::create_dir_all(&databases).unwrap();
    let broken = Server::start_with(Options {
        args: vec!["--databases".into(), databases.display().to_string()],
        ..Options::default()
    });
    let c = client();
    let secret = tmp.path().display().to_string();
    let mut bodies = Vec::new();
    for path in [
        "/series".to_string(),
        format!("/dalle/simple/{A}"),
        format!("/dalle/simple/{A}?generate=1"),
        "/v1/series".into(),
        "/v1/images".into(),
        "/health".into(),
        "/readyz".into(),
    ] {
        let response = c.get(broken.url(&path)).send().unwrap();
        assert_eq!(response.status(), 503, "{path}");
        bodies.push((path, response.text().unwrap()));
    }

    let server = Server::start();
    let data = server.data_dir.display().to_string();
    // A folder where the run must write its annotated PNG: the run fails after the image.
    std::fs::create_dir_all(
        server
            .data_dir
            .join(format!("output/simple/annotated/{A}.png")),
    )
    .unwrap();
    let response = c
        .get(server.url(&format!("/dalle/simple/{A}?generate=1")))
        .send()
        .unwrap();
    bodies.push(("generate".into(), response.text().unwrap()));
    let mut failed = String::new();
    for _ in 0..200 {
        let body = c
            .get(server.url(&format!("/v1/progress/simple/{A}")))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let poll = c
            .get(server.url(&format!("/dalle/simple/{A}")))
            .send()
            .unwrap()
            .text()
            .unwrap();
        bodies.push(("poll".into(), poll.clone()));
        if body.contains("\"error\"") || poll.contains("\"error\"") {
            failed = format!("{body}\n{poll}");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!failed.is_empty(), "the run never failed");
    bodies.push(("failed run".into(), failed));
    let long = "a".repeat(300);
    for (method, path, body) in [
        ("PUT", format!("/v1/series/{long}"), "{}".to_string()),
        (
            "PUT",
            "/v1/series/mine".into(),
            format!(r#"{{"suffix":"{long}"}}"#),
        ),
        (
            "POST",
            "/v1/images/nope/export".into(),
            r#"{"dir":"/etc"}"#.into(),
        ),
        ("GET", "/v1/images/nope".into(), String::new()),
        (
            "GET",
            "/files/simple/annotated/nope.png".into(),
            String::new(),
        ),
        ("GET", "/nowhere".into(), String::new()),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = c
            .request(method, server.url(&path))
            .body(body)
            .send()
            .unwrap();
        assert!(response.status().as_u16() >= 400, "{path}");
        bodies.push((path, response.text().unwrap()));
    }
    for (what, body) in &bodies {
        assert!(
            !body.contains(&secret) && !body.contains(&data),
            "{what} leaks a path: {body}"
        );
    }
}

#[test]
fn series_names_that_cannot_name_files_are_400_on_every_route() {
    let server = Server::start();
    let c = client();
    let long = "a".repeat(101);
    for name in [long.as_str(), "cats.deleted", "a%01b", "tab%09bed"] {
        let legacy = c
            .get(server.url(&format!("/dalle/{name}/{A}?generate=1")))
            .send()
            .unwrap();
        assert_eq!(legacy.status(), 400, "{name}");
        let body: Value = legacy.json().unwrap();
        assert_eq!(body["error"]["code"], "INVALID_SERIES", "{name}");
        for (method, path, body) in [
            ("GET", format!("/v1/series/{name}"), String::new()),
            ("PUT", format!("/v1/series/{name}"), "{}".to_string()),
            (
                "PUT",
                "/v1/series/fine".to_string(),
                format!(r#"{{"suffix":"{}"}}"#, name.replace("%01", "\\u0001")),
            ),
            (
                "POST",
                format!("/v1/series/{name}/hidden"),
                r#"{"hidden":true}"#.to_string(),
            ),
            (
                "GET",
                format!("/v1/progress/{name}/seed-1234"),
                String::new(),
            ),
            ("GET", format!("/v1/images?series={name}"), String::new()),
            (
                "POST",
                "/v1/images/generate".to_string(),
                format!(r#"{{"series":"{name}","input":"hello"}}"#),
            ),
            (
                "POST",
                "/v1/images/preview".to_string(),
                format!(r#"{{"series":"{name}","input":"hello"}}"#),
            ),
        ] {
            // Skip bodies where the URL escape would be sent literally.
            if !body.is_empty() && body.contains('%') {
                continue;
            }
            let verb = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let response = c
                .request(verb, server.url(&path))
                .body(body)
                .send()
                .unwrap();
            let status = response.status();
            let body: Value = response.json().unwrap();
            assert_eq!(status, 400, "{method} {path}: {body}");
            assert_eq!(body["error"]["code"], "invalid_input", "{method} {path}");
        }
    }
    // Nothing was written for any of them.
    let user_series = std::fs::read_dir(server.data_dir.join("user-series"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(user_series, 0);
    // A good name still saves.
    let saved = c
        .put(server.url("/v1/series/my-cats"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(saved.status(), 200);
}

#[test]
fn generate_typos_are_400_and_start_nothing() {
    let server = Server::start();
    let c = client();
    for query in [
        "generate=true",
        "generate",
        "generate=yes",
        "generate=",
        "generate=0",
    ] {
        let response = c
            .get(server.url(&format!("/dalle/simple/{A}?{query}")))
            .send()
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{query}");
        let details = body["error"]["details"].as_str().unwrap();
        assert!(details.contains("generate=1"), "{query}: {details}");
    }
    // Nothing started: the plain GET still answers the empty object, and there is no file.
    let body: Value = c
        .get(server.url(&format!("/dalle/simple/{A}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["data"], serde_json::json!({}), "{body}");
    // `remove` keeps taking any value, as documented.
    let removed = c
        .get(server.url(&format!("/dalle/simple/{A}?remove=yes")))
        .send()
        .unwrap();
    assert_eq!(removed.status(), 200);
    // The `/v1` flags take `1` the same way.
    for query in ["includeHidden=true", "onlyHidden=yes", "includeHidden"] {
        let response = c
            .get(server.url(&format!("/v1/series?{query}")))
            .send()
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "invalid_input", "{query}");
    }
    let listed = c
        .get(server.url("/v1/series?includeHidden=1"))
        .send()
        .unwrap();
    assert_eq!(listed.status(), 200);
}

#[test]
fn the_favicon_is_served_and_is_not_an_error() {
    let server = Server::start();
    let c = client();
    let response = c.get(server.url("/favicon.ico")).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/x-icon");
    let icon = response.bytes().unwrap();
    assert_eq!(&icon[..4], &[0, 0, 1, 0], "an ICO file");
    assert!(icon.len() < 4096, "small: {} bytes", icon.len());
    let errors = c.get(server.url("/errors")).send().unwrap().text().unwrap();
    assert_eq!(errors, "No errors recorded yet.\n");
}

#[test]
fn the_set_up_docs_say_where_the_server_listens_and_how_to_get_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release"))
        .expect("README has a set-up line");
    // The default bind is every interface.
    let config = dalleserver::config::Config::from_sources(
        <dalleserver::config::Flags as clap::Parser>::try_parse_from(["dalleserver"]).unwrap(),
        &[("HOME", "/h")],
    )
    .unwrap();
    let listens = format!("{}:{}", config.bind, config.port);
    assert!(line.contains(&listens), "{line:?} should say {listens}");
    let started = std::fs::read_to_string(root.join("book/src/getting-started.md")).unwrap();
    for placeholder in ["<this repository>", "git clone <", "example.com"] {
        assert!(
            !started.contains(placeholder),
            "getting-started has the placeholder {placeholder:?}"
        );
    }
    assert!(
        !started.contains("serves http://127.0.0.1:8080"),
        "getting-started says it serves only loopback"
    );
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// 200 connections drip their bodies one byte per segment into the generate route (half
/// with a declared length, half chunked). Each is answered 408 and closed within the
/// issue's 15 s, and the server's resident memory rises by less than 50 MB meanwhile.
#[test]
fn slow_bodies_cost_little_memory_and_are_closed_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CONNECTIONS: usize = 200;
    let server = Process::start();
    let pid = server.child.id();
    // Warm the route up so one-time allocations are in the baseline.
    let warm = client()
        .post(server.url("/v1/images/preview"))
        .body("{}")
        .send()
        .unwrap();
    assert!(warm.status().is_client_error() || warm.status().is_success());
    let before = rss(pid);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = server.addr.clone();
    let (answers, peak) = runtime.block_on(async move {
        let mut streams = Vec::new();
        for i in 0..CONNECTIONS {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let framing = if i % 2 == 0 {
                "Content-Length: 60000"
            } else {
                "Transfer-Encoding: chunked"
            };
            let head = format!(
                "POST /v1/images/generate HTTP/1.1\r\nHost: test\r\n\
                 Content-Type: application/json\r\n{framing}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            streams.push((i % 2 == 1, stream));
        }
        // The issue's bound, counted from the last connection's headers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut tasks = Vec::new();
        for (chunked, mut stream) in streams {
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let mut writing = true;
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return Some(got),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        },
                        _ = tick.tick(), if writing => {
                            let drip: &[u8] = if chunked { b"1\r\n \r\n" } else { b" " };
                            // One segment per drip; a refused write means the server is done.
                            writing = stream.write_all(drip).await.is_ok();
                        }
                        () = tokio::time::sleep_until(deadline) => return None,
                    }
                }
            }));
        }
        let mut peak = 0;
        let sampler = async {
            loop {
                peak = peak.max(rss(pid));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let answers = tokio::select! {
            answers = async {
                let mut answers = Vec::new();
                for task in tasks {
                    answers.push(task.await.unwrap());
                }
                answers
            } => answers,
            _ = sampler => unreachable!(),
        };
        (answers, peak)
    });
    let peak = peak.max(rss(pid));
    let grown = peak.saturating_sub(before);
    eprintln!(
        "RSS {} MB before, {} MB at peak (+{} KB)",
        before / (1024 * 1024),
        peak / (1024 * 1024),
        grown / 1024
    );
    let open = answers.iter().filter(|a| a.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} of {CONNECTIONS} connections still open after 15 s"
    );
    for answer in answers.into_iter().flatten() {
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains(r#""code":"invalid_input""#), "{text}");
    }
    assert!(
        grown < 50 * 1024 * 1024,
        "RSS grew by {} MB (from {} MB to {} MB)",
        grown / (1024 * 1024),
        before / (1024 * 1024),
        peak / (1024 * 1024)
    );
}
