//! `/preview` in a real browser: Debian's headless Chromium driven through chromedriver's
//! WebDriver API. Checks that images load, the filter hides and shows groups, the column slider
//! changes the grid and is remembered, and a run in flight shows a live progress bar that turns
//! into the image. Saves a screenshot to `target/browser/preview.png` (a CI artifact).
//! Needs chromium and chromedriver, so it is `#[ignore]`d (listed with the reason) and
//! `make test` runs it where they are installed; CI always runs it, and fails without them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Options, Server};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        common::require_tools(
            &[CHROMIUM, CHROMEDRIVER],
            "apt-get install chromium chromium-driver",
        );
        let port = common::free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1400,2200",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {resp}"))
            .to_string();
        Driver {
            child,
            base,
            session,
            http,
        }
    }

    async fn goto(&self, url: &str) {
        let resp = self
            .http
            .post(format!("{}/session/{}/url", self.base, self.session))
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "navigate failed: {}",
            resp.text().await.unwrap()
        );
    }

    async fn js(&self, script: &str) -> Value {
        let resp: Value = self
            .http
            .post(format!(
                "{}/session/{}/execute/sync",
                self.base, self.session
            ))
            .json(&json!({"script": script, "args": []}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["value"].clone()
    }

    /// Re-evaluates `script` until it returns `true`.
    async fn wait_for(&self, script: &str, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.js(script).await != json!(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let resp: Value = self
            .http
            .get(format!("{}/session/{}/screenshot", self.base, self.session))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(resp["value"].as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, png).unwrap();
        eprintln!("screenshot saved to {}", file.display());
        file
    }
}

async fn generate(base: String, series: &'static str, address: &'static str) {
    let c = reqwest::Client::new();
    c.get(format!("{base}/dalle/{series}/{address}?generate=1"))
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = c
            .get(format!("{base}/dalle/{series}/{address}"))
            .send()
            .await
            .unwrap();
        if resp.headers()["content-type"] == "image/png" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series}/{address} not generated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ALL_IMAGES_LOADED: &str = "return Array.from(document.images).length > 0 && Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);";
const VISIBLE_GROUPS: &str = "return Array.from(document.querySelectorAll('.series-group')).filter(g => getComputedStyle(g).display !== 'none').map(g => g.dataset.series);";
const GRID_COLUMNS: &str = "return getComputedStyle(document.querySelector('.grid')).gridTemplateColumns.split(' ').length;";

/// Runs futures concurrently and waits for all (no extra dependency for `join_all`).
async fn futures_join<F: std::future::Future<Output = ()> + Send + 'static>(futures: Vec<F>) {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for h in handles {
        h.await.unwrap();
    }
}

mod needs_chromium_chromedriver {
    use super::*;

    #[tokio::test]
    #[ignore = "needs chromium + chromedriver (apt-get install chromium chromium-driver); `make test` runs it when installed"]
    async fn the_gallery_works_in_a_real_browser() {
        let driver = Driver::start().await;
        let mock = MockServer::start().await;
        let png = common::png(256, 256, [0, 0, 160]);
        Mock::given(method("POST"))
            .and(path("/images/generations"))
            .respond_with(common::b64_answer(&png).set_delay(Duration::from_secs(3)))
            .mount(&mock)
            .await;
        let server = Server::start_with(Options {
            env: vec![
                ("OPENAI_API_KEY".into(), "sk-browser-test".into()),
                ("OPENAI_BASE_URL".into(), mock.uri()),
                ("TB_DALLE_NO_ENHANCE".into(), "1".into()),
            ],
            ..Options::default()
        });
        // Three finished images in two series (mock answers take 3 s, so run them together).
        let done = [
            ("simple", "0xf503017d7baf7fbc0fff7492b751025c6a78179b"),
            ("simple", "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6"),
            (
                "garden-of-delight",
                "0xf503017d7baf7fbc0fff7492b751025c6a78179b",
            ),
        ];
        let jobs: Vec<_> = done
            .iter()
            .map(|(s, a)| generate(server.base.clone(), s, a))
            .collect();
        futures_join(jobs).await;

        driver.goto(&server.url("/preview")).await;
        driver
            .wait_for(
                ALL_IMAGES_LOADED,
                "every image to load",
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(driver.js("return document.images.length;").await, json!(3));
        assert_eq!(
            driver.js(VISIBLE_GROUPS).await,
            json!(["garden-of-delight", "simple"])
        );
        let caption = driver
            .js("return document.querySelector('figcaption .addr').textContent;")
            .await;
        assert_eq!(
            caption,
            json!("0xf503017D7baF7FBC0fff7492b751025c6A78179b"),
            "EIP-55 case"
        );

        // The filter hides and shows groups.
        let set_filter = |v: &str| {
            format!(
                "const f = document.getElementById('filter'); f.value = '{v}'; f.dispatchEvent(new Event('input'));"
            )
        };
        driver.js(&set_filter("GARDEN")).await;
        assert_eq!(
            driver.js(VISIBLE_GROUPS).await,
            json!(["garden-of-delight"])
        );
        driver.js(&set_filter("zzz")).await;
        assert_eq!(driver.js(VISIBLE_GROUPS).await, json!([]));
        driver.js(&set_filter("")).await;
        assert_eq!(
            driver.js(VISIBLE_GROUPS).await,
            json!(["garden-of-delight", "simple"])
        );

        // The slider changes the grid, and the choice survives a reload.
        assert_eq!(driver.js(GRID_COLUMNS).await, json!(4));
        driver.js("const s = document.getElementById('gridColumns'); s.value = '6'; s.dispatchEvent(new Event('input'));").await;
        assert_eq!(driver.js(GRID_COLUMNS).await, json!(6));
        assert_eq!(
            driver
                .js("return document.getElementById('gridValue').textContent;")
                .await,
            json!("6")
        );
        // Even in narrow columns an address stays on one line (never broken mid-string).
        assert_eq!(
            driver.js("return Array.from(document.querySelectorAll('.addr')).filter(e => e.getBoundingClientRect().height > 1.5 * parseFloat(getComputedStyle(e).lineHeight)).length;").await,
            json!(0)
        );
        driver.goto(&server.url("/preview")).await;
        driver
            .wait_for(
                ALL_IMAGES_LOADED,
                "images after reload",
                Duration::from_secs(20),
            )
            .await;
        assert_eq!(driver.js(GRID_COLUMNS).await, json!(6));
        assert_eq!(
            driver
                .js("return document.getElementById('gridColumns').value;")
                .await,
            json!("6")
        );
        driver.js("const s = document.getElementById('gridColumns'); s.value = '3'; s.dispatchEvent(new Event('input'));").await;

        // A run in flight shows a live bar, which becomes the image when the run completes.
        let c = reqwest::Client::new();
        let fresh = "0x00000000219ab540356cbb839cbe05303d7705fa";
        c.get(server.url(&format!("/dalle/simple/{fresh}?generate=1")))
            .send()
            .await
            .unwrap();
        driver.goto(&server.url("/preview")).await;
        assert_eq!(
            driver
                .js("return document.querySelectorAll('.run').length;")
                .await,
            json!(1)
        );
        driver
            .wait_for("return /image_wait|annotate|%/.test(document.querySelector('.run .meta')?.textContent || '');", "the progress text", Duration::from_secs(10))
            .await;
        driver.screenshot("preview-in-flight.png").await;
        driver
            .wait_for("return document.querySelectorAll('.run').length === 0 && document.images.length === 4;", "the finished image", Duration::from_secs(30))
            .await;
        driver
            .wait_for(
                ALL_IMAGES_LOADED,
                "all four images",
                Duration::from_secs(20),
            )
            .await;
        let shot = driver.screenshot("preview.png").await;
        assert!(std::fs::metadata(shot).unwrap().len() > 10_000);
    }
}
