//! Serving a file with HTTP caching semantics: strong `ETag` (SHA-256 of the bytes),
//! `Last-Modified`, `Cache-Control: no-cache`, conditional requests (304), single byte ranges
//! (206/416) and HEAD. Shared by the PNG route and `/files/`.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;

use crate::storage::CachedFile;

/// Room for the headers of a file response and those added after it (request id, …): the
/// map is allocated once.
const HEADER_CAPACITY: usize = 10;

/// Builds the response for `file` given the request headers.
pub fn respond(file: &CachedFile, request: &HeaderMap, content_type: &'static str) -> Response {
    let values = &file.header_values;
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.reserve(HEADER_CAPACITY);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(ETAG, values.etag.clone());
    headers.insert(LAST_MODIFIED, values.last_modified.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if not_modified(file, request) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    let len = file.bytes.len() as u64;
    let range = request
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_holds(file, request));
    match range.map(|r| parse_range(r, len)) {
        Some(RangeOutcome::Satisfiable(start, end)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            headers.insert(
                CONTENT_RANGE,
                digits_value(format!("bytes {start}-{end}/{len}")),
            );
            headers.insert(CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            let (start, end) = (start as usize, end as usize + 1);
            *response.body_mut() = Body::from(file.bytes.slice(start..end));
            if let Some(zero_copy) = file.zero_copy(start, end) {
                response.extensions_mut().insert(zero_copy);
            }
        }
        Some(RangeOutcome::Unsatisfiable) => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let value = digits_value(format!("bytes */{len}"));
            response.headers_mut().insert(CONTENT_RANGE, value);
        }
        Some(RangeOutcome::Ignore) | None => {
            let headers = response.headers_mut();
            headers.insert(CONTENT_LENGTH, values.content_length.clone());
            *response.body_mut() = Body::from(file.bytes.clone());
            // The connection may send these bytes from the open file instead (`sendfile`).
            if let Some(zero_copy) = file.zero_copy(0, file.bytes.len()) {
                response.extensions_mut().insert(zero_copy);
            }
        }
    }
    response
}

/// A header value made of ASCII digits, spaces and `-*/`: always valid.
fn digits_value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `If-None-Match` wins over `If-Modified-Since` (RFC 9110 §13.2.2).
fn not_modified(file: &CachedFile, request: &HeaderMap) -> bool {
    if let Some(inm) = request.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return inm
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == file.etag());
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
        return value == file.etag();
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
