//! The `verify` subcommand's outer part: read the files (or fetch the raw image from a
//! server's `/cache/{cid}`), run [`super::verify`], print what matched, and pick the exit
//! status: 0 when everything matches, 1 with the first difference (or anything that kept the
//! check from being made).

use std::path::Path;
use std::time::Duration;

use super::{Mismatch, embedded, verify};

/// Largest raw image fetched from a server.
const MAX_RAW_BYTES: usize = 64 << 20;

/// Runs the check and prints its outcome; returns the exit status.
pub async fn run(annotated: &Path, raw: Option<&Path>, server: Option<&str>) -> u8 {
    match check(annotated, raw, server).await {
        Ok(matched) => {
            for line in matched {
                println!("ok  {line}");
            }
            println!("verified: {}", annotated.display());
            0
        }
        Err(text) => {
            eprintln!("MISMATCH {text}");
            1
        }
    }
}

async fn check(
    annotated: &Path,
    raw: Option<&Path>,
    server: Option<&str>,
) -> Result<Vec<String>, String> {
    let png = read(annotated)?;
    let raw = match (raw, server) {
        (Some(path), _) => read(path)?,
        (None, Some(server)) => {
            let cid = embedded(&png).map_err(|e| e.to_string())?.raw_cid;
            fetch(&format!("{}/cache/{cid}", server.trim_end_matches('/'))).await?
        }
        (None, None) => {
            return Err("give the raw image with --raw <file> or --server <url>".into());
        }
    };
    let png_work = png.clone();
    tokio::task::spawn_blocking(move || verify(&png_work, &raw))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e: Mismatch| e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RAW_BYTES as u64)
    {
        return Err(format!("{url} is larger than {MAX_RAW_BYTES} bytes"));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    if bytes.len() > MAX_RAW_BYTES {
        return Err(format!("{url} is larger than {MAX_RAW_BYTES} bytes"));
    }
    Ok(bytes.to_vec())
}
