//! The deploy files stay true to the server: the Grafana dashboard only queries series that
//! `/metrics` exports, the Kubernetes probes hit real health endpoints, and Prometheus's
//! scrape config is valid (that last check needs promtool: see `needs_promtool`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::Server;

fn manifest(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// Every `dalleserver_*` identifier in `text`.
fn series_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("dalleserver_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The series a scrape can return: each family, plus `_bucket`/`_count`/`_sum` of histograms.
fn exported(metrics: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            out.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_count", "_sum"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    out
}

#[test]
fn dashboard_queries_only_exported_series() {
    let server = Server::start();
    // Labelled series exist once something fed them: an error, a generation, a request.
    let c = reqwest::blocking::Client::new();
    c.get(server.url("/nope")).send().unwrap();
    let a = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
    c.get(server.url(&format!("/dalle/simple/{a}?generate=1")))
        .send()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while c
        .get(server.url(&format!("/dalle/simple/{a}")))
        .send()
        .unwrap()
        .headers()["content-type"]
        != "image/png"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "generation did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let exported = exported(&metrics);
    let dashboard: serde_json::Value =
        serde_json::from_str(&manifest("deploy/grafana/dalleserver.json")).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(series_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(
        queried.len() >= 10,
        "the dashboard should cover the server: {queried:?}"
    );
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries series the server does not export: {unknown:?}"
    );
    // Every family the server exports is on the dashboard, so nothing is silently unwatched.
    let families: BTreeSet<String> = exported
        .iter()
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_sum") && !n.ends_with("_count"))
        .cloned()
        .collect();
    let watched: BTreeSet<String> = queried
        .iter()
        .map(|n| {
            n.trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_string()
        })
        .collect();
    let unwatched: Vec<_> = families.difference(&watched).collect();
    assert!(
        unwatched.is_empty(),
        "exported but not on the dashboard: {unwatched:?}"
    );
}

#[test]
fn kubernetes_probes_and_prometheus_config_point_at_real_endpoints() {
    let k8s = manifest("deploy/kubernetes/dalleserver.yaml");
    assert!(k8s.contains("path: /livez") && k8s.contains("path: /readyz"));
    let server = Server::start();
    for path in ["/livez", "/readyz"] {
        assert_eq!(
            reqwest::blocking::get(server.url(path)).unwrap().status(),
            200,
            "{path}"
        );
    }
    let prometheus = manifest("deploy/prometheus/prometheus.yml");
    assert!(prometheus.contains("metrics_path: /metrics"));
    let unit = manifest("deploy/systemd/dalleserver.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/dalleserver") && unit.contains("TB_DALLE_DATA_DIR")
    );
}

mod needs_promtool {
    /// `promtool check config` (Debian's `prometheus` package) accepts the scrape config.
    #[test]
    #[ignore = "needs promtool (apt-get install prometheus); `make test` runs it when installed"]
    fn the_prometheus_config_passes_promtool_check() {
        super::common::require_tools(&["promtool"], "apt-get install prometheus");
        let out = std::process::Command::new("promtool")
            .args([
                "check",
                "config",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/deploy/prometheus/prometheus.yml"
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
