//! Serving a file with HTTP caching semantics: strong `ETag` (SHA-256 of the bytes),
//! `Last-Modified`, `Cache-Control: no-cache`, conditional requests (304), single byte ranges
//! (206/416) and HEAD. Shared by the PNG route and `/files/`.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use crate::storage::CachedFile;

/// Builds the response for `file` given the request headers.
pub fn respond(file: &CachedFile, request: &HeaderMap, content_type: &'static str) -> Response {
    let last_modified = httpdate::fmt_http_date(file.modified);
    let mut builder = Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(ETAG, &*file.etag)
        .header(LAST_MODIFIED, &last_modified)
        .header(CACHE_CONTROL, "no-cache")
        .header(ACCEPT_RANGES, "bytes");

    if not_modified(file, request) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    let len = file.bytes.len() as u64;
    let range = request
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_holds(file, request));
    match range.map(|r| parse_range(r, len)) {
        Some(RangeOutcome::Satisfiable(start, end)) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                .header(CONTENT_LENGTH, end - start + 1);
            let body = file.bytes.slice(start as usize..=end as usize);
            builder.body(Body::from(body)).unwrap_or_default()
        }
        Some(RangeOutcome::Unsatisfiable) => builder
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(CONTENT_RANGE, format!("bytes */{len}"))
            .body(Body::empty())
            .unwrap_or_default(),
        Some(RangeOutcome::Ignore) | None => builder
            .status(StatusCode::OK)
            .header(CONTENT_LENGTH, len)
            .body(Body::from(file.bytes.clone()))
            .unwrap_or_default(),
    }
}

/// `If-None-Match` wins over `If-Modified-Since` (RFC 9110 §13.2.2).
fn not_modified(file: &CachedFile, request: &HeaderMap) -> bool {
    if let Some(inm) = request.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == &*file.etag);
    }
    match request
        .get(IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        Some(since) => truncate_to_seconds(file.modified) <= since,
        None => false,
    }
}

/// A range applies only if `If-Range` (when sent) still names this representation.
fn if_range_holds(file: &CachedFile, request: &HeaderMap) -> bool {
    let Some(value) = request.get(IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if value.starts_with('"') {
        return value == &*file.etag;
    }
    httpdate::parse_http_date(value).is_ok_and(|date| truncate_to_seconds(file.modified) <= date)
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[derive(Debug, PartialEq, Eq)]
enum RangeOutcome {
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Malformed or multi-range: serve the whole file (allowed by RFC 9110).
    Ignore,
}

fn parse_range(header: &str, len: u64) -> RangeOutcome {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeOutcome::Ignore;
    };
    if spec.contains(',') {
        return RangeOutcome::Ignore;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeOutcome::Ignore;
    };
    let (start, end) = (start.trim(), end.trim());
    let parsed = match (start.is_empty(), end.is_empty()) {
        (true, true) => return RangeOutcome::Ignore,
        (true, false) => end
            .parse::<u64>()
            .map(|n| (len.saturating_sub(n), len.saturating_sub(1), n == 0)),
        (false, true) => start
            .parse::<u64>()
            .map(|s| (s, len.saturating_sub(1), false)),
        (false, false) => match (start.parse::<u64>(), end.parse::<u64>()) {
            (Ok(s), Ok(e)) if e >= s => Ok((s, e.min(len.saturating_sub(1)), false)),
            (Ok(_), Ok(_)) => return RangeOutcome::Ignore,
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
    };
    match parsed {
        Err(_) => RangeOutcome::Ignore,
        Ok((_, _, true)) => RangeOutcome::Unsatisfiable,
        Ok((s, _, _)) if s >= len => RangeOutcome::Unsatisfiable,
        Ok((s, e, _)) => RangeOutcome::Satisfiable(s, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeOutcome::Satisfiable(0, 9)
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeOutcome::Satisfiable(90, 99)
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeOutcome::Satisfiable(90, 99)
        );
        assert_eq!(
            parse_range("bytes=50-500", 100),
            RangeOutcome::Satisfiable(50, 99)
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeOutcome::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeOutcome::Ignore);
        assert_eq!(parse_range("items=0-1", 100), RangeOutcome::Ignore);
        assert_eq!(parse_range("bytes=9-1", 100), RangeOutcome::Ignore);
    }
}
