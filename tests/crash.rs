//! Kill -9 in the middle of generations, restart, and check that nothing partial or corrupt is
//! ever on disk or served, and that every key can still be generated.
//!
//! Binary ([`Process`]): `kill -9` must hit a real process, so nothing gets to clean up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Process};
use serde_json::Value;

fn addresses(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("0x{:040x}", 0xabcdef_u64 * (i as u64 + 1)))
        .collect()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Every visible artifact is complete: PNGs decode, JSON parses.
fn assert_artifacts_whole(output: &Path) {
    for path in files_under(output) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.starts_with(".tmp-"),
            "temporary file left after restart: {}",
            path.display()
        );
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => {
                image::open(&path)
                    .unwrap_or_else(|e| panic!("corrupt PNG {}: {e}", path.display()));
            }
            Some("json") => {
                serde_json::from_slice::<Value>(&std::fs::read(&path).unwrap())
                    .unwrap_or_else(|e| panic!("corrupt JSON {}: {e}", path.display()));
            }
            _ => {}
        }
    }
}

fn kill9(server: &mut Process) {
    Command::new("kill")
        .args(["-KILL", &server.child.id().to_string()])
        .status()
        .unwrap();
    common::wait_exit(&mut server.child, Duration::from_secs(10)).expect("process did not die");
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[test]
fn sigkill_mid_run_never_leaves_partial_files_and_every_key_completes_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let opts = || Options {
        args: vec![
            "--data-dir".into(),
            data.display().to_string(),
            "--max-concurrent".into(),
            "3".into(),
        ],
        ..Options::default()
    };
    let keys = addresses(12);
    let c = client();
    for delay_ms in [150u64, 450, 900] {
        let mut server = Process::start_with(opts());
        for a in &keys {
            c.get(server.url(&format!("/dalle/simple/{a}?generate=1")))
                .send()
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill9(&mut server);
        drop(server);

        // After a restart: nothing partial, and whatever is served is whole.
        let server = Process::start_with(opts());
        assert_artifacts_whole(&data.join("output"));
        for a in &keys {
            let resp = c
                .get(server.url(&format!("/dalle/simple/{a}")))
                .send()
                .unwrap();
            assert_eq!(resp.status(), 200);
            if resp.headers()["content-type"] == "image/png" {
                image::load_from_memory(&resp.bytes().unwrap()).expect("served PNG must decode");
            }
        }
    }

    // Every key completes when asked again.
    let server = Process::start_with(opts());
    for a in &keys {
        c.get(server.url(&format!("/dalle/simple/{a}?generate=1")))
            .send()
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for a in &keys {
        loop {
            let resp = c
                .get(server.url(&format!("/dalle/simple/{a}")))
                .send()
                .unwrap();
            if resp.headers()["content-type"] == "image/png" {
                image::load_from_memory(&resp.bytes().unwrap()).unwrap();
                break;
            }
            let body: Value = resp.json().unwrap();
            assert!(
                body["data"]["error"].as_str().unwrap_or("").is_empty(),
                "{a} failed: {body:#}"
            );
            if body["data"]["done"] == true || body["data"] == serde_json::json!({}) {
                c.get(server.url(&format!("/dalle/simple/{a}?generate=1")))
                    .send()
                    .unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{a} did not complete after the restart"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_artifacts_whole(&data.join("output"));
}
