//! The documentation stays true: the book's polling loop runs as written against a real
//! server, every relative link in the book and README resolves, every page is in SUMMARY.md,
//! and every setting the code reads is documented.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

fn book_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("book/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// The first ```sh block after `heading`.
fn shell_block_after(markdown: &str, heading: &str) -> String {
    let start = markdown
        .find(heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let rest = &markdown[start..];
    let open = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let close = rest[open..].find("```").unwrap();
    rest[open..open + close].to_string()
}

/// GitHub/mdBook heading anchors: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn check_links(file: &Path, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("](") {
        let tail = &rest[i + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        let target = &tail[..end];
        rest = &tail[end..];
        if target.starts_with("http://")
            || target.starts_with("https://")
            || target.starts_with("mailto:")
            || target.contains(' ')
        {
            continue;
        }
        let (path, frag) = target.split_once('#').unwrap_or((target, ""));
        let resolved = if path.is_empty() {
            file.to_path_buf()
        } else {
            file.parent().unwrap().join(path)
        };
        if !resolved.exists() {
            problems.push(format!("{}: broken link {target}", file.display()));
            continue;
        }
        if !frag.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
            let body = std::fs::read_to_string(&resolved).unwrap();
            let found = body
                .lines()
                .filter_map(|l| l.strip_prefix('#'))
                .any(|h| anchor(h.trim_start_matches('#')) == frag);
            if !found {
                problems.push(format!(
                    "{}: no heading for #{frag} in {path}",
                    file.display()
                ));
            }
        }
    }
}

#[test]
fn every_link_resolves_and_every_page_is_in_the_summary() {
    let mut problems = Vec::new();
    for page in book_pages() {
        check_links(&page, &mut problems);
    }
    check_links(&root().join("README.md"), &mut problems);
    let summary = read("book/src/SUMMARY.md");
    for page in book_pages() {
        let name = page.file_name().unwrap().to_string_lossy().to_string();
        if name != "SUMMARY.md" && !summary.contains(&format!("({name})")) {
            problems.push(format!("{name} is not in SUMMARY.md"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_setting_the_code_reads_is_documented() {
    let config = read("src/config.rs");
    let mut names: Vec<String> = Vec::new();
    for prefix in ["\"TB_DALLE_", "\"OPENAI_", "\"RUST_LOG"] {
        let mut rest = config.as_str();
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i + 1..];
            let end = tail.find('"').unwrap();
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");
    let docs = [
        ("README.md", read("README.md")),
        (
            "book/src/configuration.md",
            read("book/src/configuration.md"),
        ),
        (".env.example", read(".env.example")),
    ];
    let mut missing = Vec::new();
    for name in &names {
        for (file, text) in &docs {
            if !text.contains(name.as_str()) {
                missing.push(format!("{name} is not in {file}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_endpoint_lists_in_the_docs_are_the_real_one() {
    let server = Server::start();
    let real = reqwest::blocking::get(server.url("/"))
        .unwrap()
        .text()
        .unwrap();
    for page in ["book/src/usage.md", "book/src/getting-started.md"] {
        let text = read(page);
        let start = text
            .find("Endpoints:\n")
            .unwrap_or_else(|| panic!("{page} shows no endpoint list"));
        let end = start + text[start..].find("```").unwrap();
        assert_eq!(
            &text[start..end],
            real,
            "{page} shows a stale endpoint list"
        );
    }
}

mod needs_curl_jq {
    use super::*;

    #[test]
    #[ignore = "needs curl and jq (apt-get install curl jq); `make test` runs it when installed"]
    fn the_polling_loop_in_the_book_works_as_written() {
        common::require_tools(&["bash", "curl", "jq"], "apt-get install curl jq");
        let server = Server::start();
        let script = shell_block_after(&read("book/src/progress.md"), "## A polling loop")
            .replace("localhost:8080", &server.addr);
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the polling loop did not finish");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let address = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
        assert!(
            stdout.contains(&format!("saved {address}.png")),
            "stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(dir.path().join(format!("{address}.png"))).unwrap();
        image::load_from_memory(&png).expect("the loop saved a real PNG");
    }
}

mod needs_mdbook {
    use super::*;

    /// `mdbook build` succeeds (a page in SUMMARY.md that does not exist is an error: see
    /// book/book.toml), into a temporary directory so the tree stays clean.
    #[test]
    #[ignore = "needs mdbook (cargo install mdbook --locked --version 0.4.52 --no-default-features); `make test` runs it when installed"]
    fn the_book_builds() {
        common::require_tools(
            &["mdbook"],
            "cargo install mdbook --locked --version 0.4.52 --no-default-features",
        );
        let dest = tempfile::tempdir().unwrap();
        let out = Command::new("mdbook")
            .arg("build")
            .arg(root().join("book"))
            .arg("--dest-dir")
            .arg(dest.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mdbook build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(dest.path().join("index.html").is_file());
    }
}
