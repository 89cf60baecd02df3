//! End-to-end tests of what the artifact store refuses: a link planted in the data dir that
//! leads out of it is served by neither `/dalle` nor `/files`, and a folder at an artifact's
//! path fails a run before it spends anything, until `?remove` clears it. Image requests are
//! counted at a mock OpenAI (wiremock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Options, Server, image_requests};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer};

const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
const B: &str = "0x2222222222222222222222222222222222222222";
const SECRET: &[u8] = b"root:x:0:0:root:/root:/bin/bash\n";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get_json(url: &str) -> Value {
    let resp = client().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

/// Polls `/dalle/simple/<address>` until the PNG is served or the run is done; the last body.
async fn settle(server: &Server, address: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = server.url(&format!("/dalle/simple/{address}"));
    loop {
        let resp = client().get(&url).send().await.unwrap();
        if resp.headers()["content-type"] == "image/png" {
            return json!({"png": true});
        }
        let body: Value = resp.json().await.unwrap();
        // A poll that lands while a finished run is being retired answers its final
        // snapshot; the image follows on the next one, so only a failure ends the wait here.
        if body["data"]["done"] == true && body["data"]["currentPhase"] != "completed" {
            return body;
        }
        assert!(Instant::now() < deadline, "not done: {body:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A live server (no enhancement) pointed at `mock`, whose image requests succeed.
async fn live_server(mock: &MockServer) -> Server {
    Mock::given(method("POST"))
        .and(path("/images/generations"))
        .respond_with(common::b64_answer(&common::png(64, 48, [9, 9, 9])))
        .mount(mock)
        .await;
    Server::start_with(Options {
        env: vec![
            ("OPENAI_API_KEY".into(), "sk-test-key".into()),
            ("OPENAI_BASE_URL".into(), mock.uri()),
            ("TB_DALLE_RETRY_BASE".into(), "20ms".into()),
            ("TB_DALLE_NO_ENHANCE".into(), "1".into()),
        ],
        ..Options::default()
    })
}

#[tokio::test]
async fn a_link_out_of_the_data_dir_is_served_by_neither_route() {
    let server = Server::start();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("passwd");
    std::fs::write(&secret, SECRET).unwrap();
    let annotated = server.data_dir.join("output/simple/annotated");
    std::fs::create_dir_all(&annotated).unwrap();
    let link = annotated.join(format!("{A}.png"));
    std::os::unix::fs::symlink(&secret, &link).unwrap();

    // /dalle: as if there were no image (no run, so `{}`), never the link's target.
    let resp = client()
        .get(server.url(&format!("/dalle/simple/{A}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.headers()["content-type"], "image/png");
    let body = resp.bytes().await.unwrap();
    assert!(!body.windows(4).any(|w| w == b"root"), "{body:?}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["data"], json!({}));

    // /files: 404, the same rule.
    let resp = client()
        .get(server.url(&format!("/files/simple/annotated/{A}.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("root:x"), "{body}");

    // The gallery does not list it either.
    let page = client()
        .get(server.url("/preview"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("No annotated images found yet"), "{page}");

    // Generating replaces the link with the image; what it pointed at is untouched.
    get_json(&server.url(&format!("/dalle/simple/{A}?generate=1"))).await;
    assert_eq!(settle(&server, A).await, json!({"png": true}));
    assert!(
        !std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&secret).unwrap(), SECRET);
    let resp = client()
        .get(server.url(&format!("/files/simple/annotated/{A}.png")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
}

#[tokio::test]
async fn a_folder_at_the_image_path_fails_before_the_image_request_until_removed() {
    let mock = MockServer::start().await;
    let server = live_server(&mock).await;
    let taken = server
        .data_dir
        .join(format!("output/simple/annotated/{B}.png"));
    std::fs::create_dir_all(taken.join("inside")).unwrap();
    std::fs::write(taken.join("inside/file"), b"x").unwrap();

    get_json(&server.url(&format!("/dalle/simple/{B}?generate=1"))).await;
    let failed = settle(&server, B).await;
    let data = &failed["data"];
    assert_eq!(data["currentPhase"], "failed", "{failed:#}");
    assert_eq!(data["errorCode"], "storage_blocked", "{failed:#}");
    assert_eq!(
        data["error"],
        "cannot write the annotated artifact: a directory is in its place (removing the image clears it)"
    );
    assert_eq!(image_requests(&mock).await, 0, "nothing was spent");

    // `?remove` clears the folder (and the failure), then the address generates again.
    assert_eq!(
        get_json(&server.url(&format!("/dalle/simple/{B}?remove"))).await["data"],
        json!({})
    );
    assert!(!taken.exists(), "the folder is gone");
    get_json(&server.url(&format!("/dalle/simple/{B}?generate=1"))).await;
    assert_eq!(settle(&server, B).await, json!({"png": true}));
    assert!(taken.is_file());
    assert_eq!(image_requests(&mock).await, 1);
}
