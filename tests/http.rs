//! End-to-end tests of the foundation over real sockets with temp data dirs: the in-process
//! [`Server`] by default; the spawned binary ([`Process`]) where a test checks the process
//! itself — its logs, exit codes, signals or `.env` (each such test says which).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Options, Process, Server, raw_request};
use reqwest::blocking::Client;
use serde_json::Value;

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn json(resp: reqwest::blocking::Response) -> Value {
    resp.json().unwrap()
}

fn is_hex8(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[test]
fn root_lists_every_endpoint_as_plain_text() {
    let server = Server::start();
    let resp = client().get(server.url("/")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let body = resp.text().unwrap();
    assert!(body.starts_with("Endpoints:\n"));
    for route in ["/health", "/livez", "/readyz", "/metrics", "/errors"] {
        assert!(
            body.contains(route),
            "endpoint list misses {route}:\n{body}"
        );
    }
}

#[test]
fn one_request_id_in_header_body_and_logs() {
    // Binary: the id must also appear in the log lines on stderr.
    let server = Process::start();
    let c = client();

    // Every request gets its access-log line, with the id in its span.
    let resp = c.get(server.url("/no/such/thing")).send().unwrap();
    let header = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_hex8(&header), "minted id {header:?} is not 8 hex digits");
    assert_eq!(json(resp)["request_id"], header.as_str());
    assert!(
        server.wait_for_log(&format!("request_id={header}"), Duration::from_secs(5)),
        "id missing from logs"
    );

    // A valid incoming id is kept, everywhere.
    let resp = c
        .get(server.url("/no/such/page"))
        .header("X-Request-ID", "client-id_1.2")
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id_1.2");
    let body = json(resp);
    assert_eq!(body["request_id"], "client-id_1.2");
    assert_eq!(body["error"]["request_id"], "client-id_1.2");
    assert!(server.wait_for_log("request_id=client-id_1.2", Duration::from_secs(5)));

    // An invalid one is replaced.
    let resp = c
        .get(server.url("/health?check=liveness"))
        .header("X-Request-ID", "bad id with spaces")
        .send()
        .unwrap();
    let header = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_hex8(&header));
    assert_eq!(json(resp)["request_id"], header.as_str());
}

#[test]
fn the_access_log_has_one_line_per_request_and_can_be_turned_off() {
    // Binary: the access log is the process's stderr.
    let server = Process::start();
    let c = client();
    let resp = c
        .get(server.url("/health?check=liveness"))
        .header("X-Request-ID", "access-1")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // At the default level a successful request gets its line, with id, method, path,
    // status and duration.
    assert!(
        server.wait_for_log("request_id=access-1", Duration::from_secs(5)),
        "no access-log line"
    );
    let line = server
        .logs
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("request_id=access-1") && l.contains(" request"))
        .cloned()
        .expect("the request line");
    for field in [
        "INFO",
        "method=GET",
        "path=/health",
        "status=200",
        "elapsed=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }

    let mut quiet = Process::start_with(Options {
        args: vec!["--access-log".into(), "off".into()],
        ..Options::default()
    });
    for id in ["quiet-1", "quiet-2"] {
        let resp = c
            .get(quiet.url("/livez"))
            .header("X-Request-ID", id)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Stop it and wait for its last line, so every line it wrote has been read.
    assert!(quiet.terminate(Duration::from_secs(15)).is_some());
    assert!(quiet.wait_for_log("stopped", Duration::from_secs(5)));
    let logs = quiet.log_text();
    assert!(
        !logs.contains("request_id=quiet-"),
        "access log off still logged:\n{logs}"
    );
}

#[test]
fn a_bad_access_log_value_exits_2_naming_it() {
    let (code, err) = run_to_exit(&["--access-log", "loud"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--access-log") && err.contains("loud"),
        "{err}"
    );
}

#[test]
fn v1_paths_answer_404_and_405_in_the_v1_family() {
    let server = Server::start();
    let c = client();
    let resp = c.get(server.url("/v1/no-such-thing")).send().unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(json(resp)["error"]["code"], "not_found");
    let resp = c.delete(server.url("/v1/images/generate")).send().unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(json(resp)["error"]["code"], "invalid_input");
    let resp = c.delete(server.url("/series")).send().unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(json(resp)["error"]["code"], "INVALID_REQUEST");
    let resp = c.get(server.url("/no/such/thing")).send().unwrap();
    assert_eq!(json(resp)["error"]["code"], "NOT_FOUND");
}

#[test]
fn unknown_paths_are_404_envelopes_listing_endpoints() {
    let server = Server::start();
    let resp = client().get(server.url("/health/")).send().unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = json(resp);
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    assert!(
        body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("/health")
    );
    assert!(body["error"]["timestamp"].as_i64().unwrap() > 1_700_000_000);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let server = Server::start();
    let c = client();
    for path in ["/health", "/metrics", "/errors", "/"] {
        let resp = c.post(server.url(path)).send().unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        let allow = resp.headers()["allow"].to_str().unwrap().to_string();
        assert!(allow.contains("GET"), "{path}: Allow = {allow}");
        assert!(resp.headers().contains_key("x-request-id"));
        let body = json(resp);
        assert_eq!(body["error"]["code"], "INVALID_REQUEST");
        assert_eq!(body["error"]["message"], "Method not allowed");
    }
    // HEAD works wherever GET does.
    let resp = c.head(server.url("/health?check=liveness")).send().unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn traversal_and_double_slash_paths_are_rejected_before_routing() {
    let server = Server::start();
    for path in [
        "/files/../../etc/passwd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/..%2f..%2fetc/passwd",
        "/dalle//0xf503017d7baf7fbc0fff7492b751025c6a78179b",
        "/series/./x",
        "/files/a%5c..%5cb",
    ] {
        let resp = raw_request(&server.addr, "GET", path);
        assert_eq!(resp.status, 400, "{path}: {}", resp.body);
        let body: Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{path}");
        assert_eq!(
            resp.header("x-request-id").as_deref(),
            body["request_id"].as_str(),
            "{path}"
        );
    }
}

#[test]
fn full_health_report_has_four_components_and_real_units() {
    let server = Server::start();
    let resp = client().get(server.url("/health")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let body = json(resp);
    let data = &body["data"];
    assert_eq!(data["status"], "healthy", "{body:#}");
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    let uptime = data["uptime_seconds"].as_u64().unwrap();
    assert!(uptime < 60, "uptime is in seconds, got {uptime}");
    let components = data["components"].as_object().unwrap();
    let names: Vec<_> = components.keys().cloned().collect();
    assert_eq!(
        names,
        [
            "budget",
            "databases",
            "disk_space",
            "filesystem",
            "memory",
            "openai"
        ]
    );
    for (name, c) in components {
        assert_eq!(c["name"], name.as_str());
        let ms = c["duration_ms"].as_f64().unwrap();
        assert!(
            (0.0..5_000.0).contains(&ms),
            "{name} duration_ms = {ms} is not milliseconds"
        );
        assert!(c["last_checked"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(components["openai"]["details"]["state"], "CLOSED");
    assert_eq!(components["openai"]["details"]["mode"], "mock");
    for operation in ["chat", "image"] {
        let breaker = &components["openai"]["details"]["operations"][operation];
        assert_eq!(breaker["state"], "CLOSED", "{operation}");
    }
    assert!(
        components["disk_space"]["details"]["total_gb"]
            .as_u64()
            .is_some()
    );
    assert!(data["system"]["goroutines"].as_u64().unwrap() > 0);
    assert!(data["system"]["gomaxprocs"].as_u64().unwrap() > 0);
    assert!(data["system"]["memory"]["alloc_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn liveness_and_readiness_modes_and_aliases() {
    let server = Server::start();
    let c = client();
    for path in ["/health?check=liveness", "/livez"] {
        let resp = c.get(server.url(path)).send().unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        let body = json(resp);
        assert_eq!(body["data"]["status"], "alive");
        assert!(body["data"]["uptime"].as_f64().unwrap() >= 0.0);
    }
    for path in ["/health?check=readiness", "/readyz"] {
        let resp = c.get(server.url(path)).send().unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(json(resp)["data"]["status"], "ready");
    }
}

#[test]
fn readiness_fails_when_the_data_dir_becomes_unusable_but_liveness_does_not() {
    let server = Server::start();
    let c = client();
    assert_eq!(c.get(server.url("/readyz")).send().unwrap().status(), 200);

    // Root ignores permission bits, so make the data dir stop being a directory at all.
    std::fs::remove_dir_all(&server.data_dir).unwrap();
    std::fs::write(&server.data_dir, b"not a directory").unwrap();

    for path in ["/readyz", "/health?check=readiness"] {
        let resp = c.get(server.url(path)).send().unwrap();
        assert_eq!(resp.status(), 503, "{path}");
        let header = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let body = json(resp);
        assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
        assert_eq!(body["error"]["message"], "Service not ready");
        assert!(
            body["error"]["details"]
                .as_str()
                .unwrap()
                .contains("filesystem")
        );
        assert_eq!(body["request_id"], header.as_str());
    }
    let resp = c.get(server.url("/health")).send().unwrap();
    assert_eq!(resp.status(), 503);
    let body = json(resp);
    assert_eq!(body["data"]["status"], "unhealthy");
    assert_eq!(
        body["data"]["components"]["filesystem"]["status"],
        "unhealthy"
    );
    assert_eq!(c.get(server.url("/livez")).send().unwrap().status(), 200);
}

#[test]
fn metrics_text_counts_real_requests_and_errors() {
    let server = Server::start();
    let c = client();
    c.get(server.url("/nope")).send().unwrap();
    c.get(server.url("/health?check=liveness")).send().unwrap();
    let resp = c.get(server.url("/metrics")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4");
    let text = resp.text().unwrap();
    for series in [
        "dalleserver_errors_total 1",
        "dalleserver_retries_total",
        "dalleserver_openai_requests_total 0",
        "dalleserver_openai_errors_total 0",
        "dalleserver_openai_timeouts_total 0",
        "dalleserver_file_operations_total 0",
        "dalleserver_file_operation_errors_total 0",
        "dalleserver_circuit_breaker_state{operation=\"chat\",state=\"CLOSED\"} 1",
        "dalleserver_circuit_breaker_state{operation=\"chat\",state=\"OPEN\"} 0",
        "dalleserver_circuit_breaker_state{operation=\"image\",state=\"CLOSED\"} 1",
        "dalleserver_circuit_breaker_state{operation=\"image\",state=\"OPEN\"} 0",
        "dalleserver_error_code_total{code=\"NOT_FOUND\"} 1",
        "dalleserver_error_endpoint_total{endpoint=\"other\"} 1",
        "dalleserver_up 1",
        "# TYPE dalleserver_http_request_duration_seconds histogram",
        "dalleserver_http_request_duration_seconds_count{endpoint=\"health\",method=\"GET\",status=\"2xx\"} 1",
        "dalleserver_generations_in_flight 0",
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
    assert!(!text.contains("0x"), "labels must never carry addresses");
}

#[test]
fn metrics_json_and_error_report() {
    let server = Server::start();
    let c = client();
    assert_eq!(
        c.get(server.url("/errors")).send().unwrap().text().unwrap(),
        "No errors recorded yet.\n"
    );
    c.get(server.url("/missing")).send().unwrap();
    c.post(server.url("/health")).send().unwrap();

    let body = json(c.get(server.url("/metrics?format=json")).send().unwrap());
    assert_eq!(body["success"], true);
    let data = &body["data"];
    assert_eq!(data["total_errors"], 2);
    assert_eq!(data["errors_by_code"]["NOT_FOUND"], 1);
    assert_eq!(data["errors_by_code"]["CLIENT_ERROR"], 1);
    assert_eq!(data["circuit_breaker_state"], "CLOSED");
    assert_eq!(
        data["circuit_breakers_by_operation"]["image"]["state"],
        "CLOSED"
    );
    assert!(data["response_times"]["count"].as_u64().unwrap() >= 3);

    let report = c.get(server.url("/errors")).send().unwrap().text().unwrap();
    assert!(
        report.starts_with("=== DALLE Server Error Report ===\nTotal Errors: 2\n"),
        "{report}"
    );
    assert!(report.contains("  NOT_FOUND: 1"));
    assert!(
        report.contains("Errors by Endpoint:\n  health: 1\n  other: 1"),
        "{report}"
    );

    let raw = json(c.get(server.url("/errors?format=json")).send().unwrap());
    assert_eq!(raw["total_errors"], 2, "raw snapshot, not an envelope");

    // A bare ?clear clears (the Go server needed a value).
    assert_eq!(
        c.get(server.url("/errors?clear"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "Error metrics cleared.\n"
    );
    assert_eq!(
        c.get(server.url("/errors")).send().unwrap().text().unwrap(),
        "No errors recorded yet.\n"
    );
}

#[test]
fn tb_dalle_port_beats_the_port_flag() {
    let port = common::free_port();
    let server = Server::start_with(Options {
        env: vec![("TB_DALLE_PORT".into(), port.to_string())],
        ..Options::default()
    });
    assert_eq!(server.addr, format!("127.0.0.1:{port}"));
    assert_eq!(
        client().get(server.url("/livez")).send().unwrap().status(),
        200
    );
}

#[test]
fn dotenv_fills_gaps_but_never_overrides_the_environment() {
    // Binary: `.env` is read from the process's working directory, under its environment.
    let tmp = tempfile::tempdir().unwrap();
    let from_dotenv = tmp.path().join("from-dotenv");
    let from_env = tmp.path().join("from-env");
    let server = Process::start_with(Options {
        dotenv: Some(format!(
            "TB_DALLE_DATA_DIR={}\nTB_DALLE_LOCK_TTL=90s\n",
            from_dotenv.display()
        )),
        ..Options::default()
    });
    assert!(
        from_dotenv.is_dir(),
        ".env data dir was not used; logs:\n{}",
        server.log_text()
    );
    assert!(server.log_text().contains("lock_ttl=90s"));
    drop(server);

    let server = Process::start_with(Options {
        dotenv: Some(format!(
            "TB_DALLE_DATA_DIR={}\n",
            from_dotenv.join("other").display()
        )),
        env: vec![("TB_DALLE_DATA_DIR".into(), from_env.display().to_string())],
        ..Options::default()
    });
    assert!(from_env.is_dir());
    assert!(!from_dotenv.join("other").exists());
    drop(server);
}

#[test]
fn unparsable_lock_ttl_warns_and_uses_five_minutes() {
    // Binary: the warning is a log line.
    let server = Process::start_with(Options {
        args: vec!["--lock-ttl".into(), "forever".into()],
        ..Options::default()
    });
    let logs = server.log_text();
    assert!(
        logs.contains("invalid lock TTL \"forever\"; using 5m"),
        "{logs}"
    );
    assert!(logs.contains("lock_ttl=300s"), "{logs}");
}

/// Runs the binary to its exit (bad configurations exit before serving): status and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = common::command(tmp.path(), tmp.path());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_values_exit_2_naming_the_culprit() {
    let (code, err) = run_to_exit(&["--no-such-flag"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--no-such-flag"), "{err}");

    let (code, err) = run_to_exit(&["--port", "eighty"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--port") && err.contains("eighty"), "{err}");

    let (code, err) = run_to_exit(&[], &[("TB_DALLE_PORT", "99999")]);
    assert_eq!(code, 2);
    assert!(err.contains("TB_DALLE_PORT"), "{err}");

    let (code, err) = run_to_exit(&["--bind", "not-an-ip"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--bind"), "{err}");

    let (code, _) = run_to_exit(&["--help"], &[]);
    assert_eq!(code, 0);
}

#[test]
fn unusable_data_dir_and_busy_port_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad_dir = file.join("data");
    let (code, err) = run_to_exit(
        &["--port", "0", "--data-dir", bad_dir.to_str().unwrap()],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("data directory") && err.contains("a-file"),
        "{err}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let data = tmp.path().join("data");
    let (code, err) = run_to_exit(
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot listen"), "{err}");
}

#[test]
fn sigterm_shuts_down_gracefully() {
    // Binary: a signal and an exit status.
    let mut server = Process::start();
    // An idle keep-alive connection must not hold the shutdown up.
    let c = client();
    assert_eq!(c.get(server.url("/livez")).send().unwrap().status(), 200);
    let status = server
        .terminate(Duration::from_secs(15))
        .expect("server did not exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(server.log_text().contains("stopped"));
}

#[test]
fn startup_report_names_mode_data_dir_and_url() {
    // Binary: the report is log lines.
    let server = Process::start();
    let logs = server.log_text();
    assert!(logs.contains("dalleserver starting"), "{logs}");
    assert!(logs.contains("mode=\"mock\""), "{logs}");
    assert!(logs.contains("OPENAI_API_KEY is not set"), "{logs}");
    assert!(
        logs.contains(&server.data_dir.display().to_string()),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("open http://{}/", server.addr)),
        "{logs}"
    );
}

#[test]
fn the_api_key_never_appears_in_logs() {
    // Binary: checks the log lines.
    let server = Process::start_with(Options {
        env: vec![("OPENAI_API_KEY".into(), "sk-test-very-secret".into())],
        ..Options::default()
    });
    client().get(server.url("/health")).send().unwrap();
    let logs = server.log_text();
    assert!(logs.contains("mode=\"live\""), "{logs}");
    assert!(!logs.contains("sk-test-very-secret"));
}

#[test]
fn series_lists_builtins_and_picks_up_user_series_without_restart() {
    let server = Server::start();
    let c = client();
    let body = json(c.get(server.url("/series")).send().unwrap());
    let series: Vec<String> = serde_json::from_value(body["data"]["series"].clone()).unwrap();
    assert_eq!(body["data"]["count"], series.len());
    for builtin in ["empty", "simple", "film-noir-detectives"] {
        assert!(
            series.contains(&builtin.to_string()),
            "{builtin} missing from {series:?}"
        );
    }
    assert!(series.windows(2).all(|w| w[0] < w[1]), "sorted: {series:?}");

    let user_dir = server.data_dir.join("user-series");
    std::fs::write(
        user_dir.join("my-cats.json"),
        r#"{"suffix":"my-cats","nouns":["cats"]}"#,
    )
    .unwrap();
    std::fs::write(user_dir.join("broken.json"), "{oops").unwrap();
    let body = json(c.get(server.url("/series")).send().unwrap());
    let series: Vec<String> = serde_json::from_value(body["data"]["series"].clone()).unwrap();
    assert!(series.contains(&"my-cats".to_string()), "{series:?}");
    assert!(!series.contains(&"broken".to_string()), "{series:?}");
    assert_eq!(body["data"]["count"], series.len());
}

#[test]
fn databases_dir_in_our_own_format_is_used_and_reported() {
    // Binary: the report is log lines.
    let tmp = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/attributes/data");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let server = Process::start_with(Options {
        args: vec!["--databases".into(), tmp.path().display().to_string()],
        ..Options::default()
    });
    let logs = server.log_text();
    assert!(
        logs.contains(&format!("source={}", tmp.path().display())),
        "{logs}"
    );
    assert!(logs.contains("database=\"adverbs\""), "{logs}");
    let body = json(client().get(server.url("/health")).send().unwrap());
    assert_eq!(body["data"]["components"]["databases"]["status"], "healthy");
    assert_eq!(
        body["data"]["components"]["databases"]["details"]["source"],
        tmp.path().display().to_string()
    );
}

#[test]
fn unloadable_databases_make_the_server_unready_not_dead() {
    // Binary: the load error is a log line.
    let tmp = tempfile::tempdir().unwrap();
    let server = Process::start_with(Options {
        args: vec![
            "--databases".into(),
            tmp.path().join("missing").display().to_string(),
        ],
        ..Options::default()
    });
    let c = client();
    assert!(
        server
            .log_text()
            .contains("attribute databases failed to load")
    );
    let resp = c.get(server.url("/readyz")).send().unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        json(resp)["error"]["details"]
            .as_str()
            .unwrap()
            .contains("databases")
    );
    assert_eq!(c.get(server.url("/livez")).send().unwrap().status(), 200);
    let resp = c.get(server.url("/series")).send().unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(json(resp)["error"]["code"], "SERVICE_UNAVAILABLE");
}

#[test]
fn files_serves_only_plain_files_inside_the_output_dir() {
    let server = Server::start();
    let out = server.data_dir.join("output/simple/annotated");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("0xabc.png"), b"\x89PNG\r\n\x1a\nfake").unwrap();
    std::fs::write(out.join(".hidden.png"), b"secret").unwrap();
    std::fs::write(server.data_dir.join("outside.txt"), b"secret").unwrap();
    std::os::unix::fs::symlink(server.data_dir.join("outside.txt"), out.join("link.txt")).unwrap();
    let c = client();

    let resp = c
        .get(server.url("/files/simple/annotated/0xabc.png"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert!(resp.headers()["etag"].to_str().unwrap().starts_with('"'));
    assert!(
        resp.headers().contains_key("x-request-id"),
        "/files goes through the middleware"
    );
    assert_eq!(resp.bytes().unwrap().as_ref(), b"\x89PNG\r\n\x1a\nfake");

    for path in [
        "/files/simple/annotated/",
        "/files/simple",
        "/files/simple/annotated/.hidden.png",
        "/files/simple/annotated/link.txt",
        "/files/nope.png",
    ] {
        let resp = c.get(server.url(path)).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(json(resp)["error"]["code"], "NOT_FOUND", "{path}");
    }
    // Encoded traversal is refused before any file access; double-encoded is just a name.
    for (path, status) in [
        ("/files/%2e%2e/outside.txt", 400),
        ("/files/simple/..%2F..%2Foutside.txt", 400),
        ("/files/%252e%252e/outside.txt", 404),
        (
            "/files/simple/%252e%252e%252f%252e%252e%252foutside.txt",
            404,
        ),
    ] {
        let resp = raw_request(&server.addr, "GET", path);
        assert_eq!(resp.status, status, "{path}: {}", resp.body);
        assert!(!resp.body.contains("secret"), "{path}");
    }
}

/// Large cached files go out with `sendfile` (src/server/zero_copy.rs): whole, by range, after
/// an atomic replace, and many times over one keep-alive connection, byte for byte.
#[test]
fn large_files_are_served_whole_and_by_range_from_the_cache() {
    let server = Server::start();
    let address = "0x00000000000000000000000000000000000000aa";
    let out = server.data_dir.join("output/simple/annotated");
    std::fs::create_dir_all(&out).unwrap();
    let png = |seed: u32| -> Vec<u8> {
        (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed as u8)
            .collect()
    };
    let first = png(1);
    std::fs::write(out.join(format!("{address}.png")), &first).unwrap();
    let c = client();
    let url = server.url(&format!("/dalle/simple/{address}"));
    for _ in 0..5 {
        let resp = c.get(&url).send().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], "3000000");
        assert!(resp.bytes().unwrap() == first, "whole body");
    }
    let resp = c
        .get(&url)
        .header("Range", "bytes=1000000-1999999")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert!(
        resp.bytes().unwrap() == first[1_000_000..2_000_000],
        "range"
    );
    let files = server.url(&format!("/files/simple/annotated/{address}.png"));
    assert!(c.get(&files).send().unwrap().bytes().unwrap() == first);

    // An atomic replace is seen at once, and the new bytes are what is sent.
    let second = png(2);
    let tmp = out.join("replacement.tmp");
    std::fs::write(&tmp, &second).unwrap();
    std::fs::rename(&tmp, out.join(format!("{address}.png"))).unwrap();
    for _ in 0..2 {
        assert!(
            c.get(&url).send().unwrap().bytes().unwrap() == second,
            "replaced"
        );
    }
}

#[test]
fn preview_lists_pages_and_escapes_what_it_shows() {
    let server = Server::start();
    let c = client();
    let resp = c.get(server.url("/preview")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let empty = resp.text().unwrap();
    assert!(
        empty.contains("No annotated images found yet"),
        "clean empty state"
    );
    assert!(empty.contains("Found 0 images."));

    let out = server.data_dir.join("output");
    for (series, n) in [("simple", 5usize), ("odd<b>&\"name", 1)] {
        let dir = out.join(series).join("annotated");
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..n {
            std::fs::write(dir.join(format!("0x{i:040x}.png")), b"png").unwrap();
        }
    }
    let page = c
        .get(server.url("/preview"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("Found 6 images."), "{page}");
    assert!(!page.contains("odd<b>"), "series names must be escaped");
    assert!(
        page.contains("odd&#60;b&#62;&#38;&#34;name")
            || page.contains("odd&lt;b&gt;&amp;&quot;name"),
        "{page}"
    );
    assert!(
        page.contains("src=\"/files/odd%3Cb%3E%26%22name/annotated/"),
        "URL-encoded image path"
    );
    assert!(page.contains("loading=\"lazy\""));

    // Server-side paging and series selection.
    let page = c
        .get(server.url("/preview?series=simple&per_page=2&page=3"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("Page 3 of 3"), "{page}");
    assert!(page.contains("Found 5 images."));
    assert_eq!(page.matches("<figure>").count(), 1);
    let page = c
        .get(server.url("/preview?page=abc&per_page=-1"))
        .send()
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "bad paging values fall back to defaults"
    );
}

mod needs_promtool {
    use super::*;

    /// `promtool check metrics` (Debian's `prometheus` package) accepts the exposition, with
    /// labelled series fed by a request and an error.
    #[test]
    #[ignore = "needs promtool (apt-get install prometheus); `make test` runs it when installed"]
    fn the_metrics_exposition_passes_promtool_check() {
        use std::io::Write;
        common::require_tools(&["promtool"], "apt-get install prometheus");
        let server = Server::start();
        let c = client();
        c.get(server.url("/nope")).send().unwrap();
        c.get(server.url("/health?check=liveness")).send().unwrap();
        let text = c
            .get(server.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool rejected /metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
