//! `GET /dalle/<series>/<address>?<query>`: the handler's parsing (`parse_request`,
//! `is_address`) and the path guard every request passes first (`unsafe_path`).
//!
//! Input: the request target after `/dalle/`, as text: `<rest>[?<query>]` (the seeds in
//! `corpus/dalle_request` are real request targets).

#![no_main]

use dalleserver::http::ErrorCode;
use dalleserver::http::dalle::{is_address, parse_request};
use dalleserver::http::error::ApiError;
use dalleserver::http::observe::unsafe_path;
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;

/// The built-in series names (what `series_exists` answers for on a fresh server).
const SERIES: [&str; 7] = [
    "artisans-workshop",
    "deep-sea-night-shift",
    "empty",
    "film-noir-detectives",
    "garden-of-delight",
    "simple",
    "skyward-dreamers",
];

fn exists(s: &str) -> bool {
    SERIES.contains(&s)
}

/// `0x` + 40 lower-case hex digits, written independently of the server's check.
fn is_lower_hex_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 42
        && &b[..2] == b"0x"
        && b[2..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn code(e: &ApiError) -> ErrorCode {
    match e {
        ApiError::BadRequest { code, .. } => *code,
        other => panic!("parse_request answered a non-400 error: {other:?}"),
    }
}

fn check_request(rest: &str, query: Option<&str>) {
    let full = format!("/dalle/{rest}");
    let result = parse_request(&full, rest, query, exists);
    // Deterministic: the same input always gives the same answer.
    let again = parse_request(&full, rest, query, exists);
    assert_eq!(
        format!("{result:?}"),
        format!("{again:?}"),
        "not deterministic"
    );

    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    // Any `generate` that is not exactly `1` is a typo, refused once the path is valid.
    let bad_generate = pairs.iter().any(|(k, v)| k == "generate" && v != "1");
    match &result {
        Ok((key, _)) => {
            assert!(
                is_lower_hex_address(key.subject.as_str()),
                "accepted address {:?}",
                key.subject
            );
            assert!(
                exists(key.series.as_str()),
                "accepted unknown series {:?}",
                key.series
            );
            assert_eq!(key.series.as_str(), key.series.as_str().to_lowercase());
            assert_eq!(
                format!("{}/{}", key.series, key.subject),
                rest.to_lowercase(),
                "the key is not the lower-cased path"
            );
        }
        Err(e) => {
            let c = code(e);
            match rest.split_once('/') {
                None => assert_eq!(c, ErrorCode::InvalidRequest),
                Some((series, address)) => {
                    // Completeness: a known series and a well-formed address (any case) pass,
                    // unless the query has a `generate` typo.
                    let (s, a) = (series.to_lowercase(), address.to_lowercase());
                    let valid_path = exists(&s) && is_lower_hex_address(&a);
                    if c == ErrorCode::InvalidRequest {
                        assert!(valid_path && bad_generate, "{rest:?} has a slash: {e:?}");
                    }
                    assert!(
                        !valid_path || bad_generate,
                        "rejected a valid request {rest:?}: {e:?}"
                    );
                    if c == ErrorCode::InvalidAddress {
                        assert!(exists(&s) && !a.is_empty());
                    }
                    if c == ErrorCode::InvalidSeries {
                        assert!(!s.is_empty() && !exists(&s));
                    }
                }
            }
        }
    }

    // Flags: `generate` when every `generate` value is exactly `1`, `remove` on presence.
    let flags = result.map(|(_, f)| f).ok();
    if let Some(flags) = flags {
        assert!(!bad_generate, "accepted a generate typo in {query:?}");
        assert_eq!(flags.generate, pairs.iter().any(|(k, _)| k == "generate"));
        assert_eq!(flags.remove, pairs.iter().any(|(k, _)| k == "remove"));
        if query.is_none_or(str::is_empty) {
            assert!(!flags.generate && !flags.remove);
        }
    }
}

fn check_address(s: &str) {
    assert_eq!(is_address(s), is_lower_hex_address(s), "is_address({s:?})");
}

/// When the guard lets a path through, no segment decodes (as axum's `Path` decodes it) to a
/// dot segment, a slash or a backslash, and only the last segment may be empty.
fn check_guard(path: &str) {
    let Some(reason) = unsafe_path(path) else {
        let rest = path.strip_prefix('/').unwrap_or(path);
        if rest.is_empty() {
            return;
        }
        let segments: Vec<&str> = rest.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            assert!(
                !seg.is_empty() || i == segments.len() - 1,
                "empty segment passed in {path:?}"
            );
            let decoded = percent_decode_str(seg).decode_utf8_lossy();
            assert!(
                decoded != "." && decoded != "..",
                "dot segment {seg:?} passed in {path:?}"
            );
            assert!(
                !decoded.contains('/') && !decoded.contains('\\'),
                "slash in segment {seg:?} passed in {path:?}"
            );
        }
        return;
    };
    assert!(!reason.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (rest, query) = match text.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (text.as_ref(), None),
    };
    check_request(rest, query);
    check_address(rest);
    if let Some((_, address)) = rest.split_once('/') {
        check_address(address);
    }
    check_guard(&format!("/dalle/{rest}"));
    check_guard(rest);
});
