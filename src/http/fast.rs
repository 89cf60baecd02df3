//! The fast lane for the two most frequent requests of all: a plain `GET /dalle/<series>/<address>`
//! that polls a run in flight, or that fetches an image already in the file cache.
//!
//! The answer is the one the router would give — the same parsing ([`dalle::parse_request`]),
//! the same decision ([`Generator::plain_get`](crate::generation::Generator::plain_get)), the
//! same responses ([`Envelope::ok_json`], [`file::respond`]: ETag, 304, ranges), the same
//! request id, metrics and log line ([`observe::record`]) — without routing, the middleware
//! stack, a boxed future per layer or a tracing span that nothing would log into. For a 2 MB
//! PNG that removed most of the user-space CPU of a hit (see the book's benchmarks page).
//! Anything else (a query, another method, a percent-encoded path, an invalid request, any
//! other case of the decision table) returns `None` and goes through the router unchanged.

use std::net::SocketAddr;
use std::time::Instant;

use axum::http::{Method, Request};
use axum::response::Response;

use super::request_id::RequestId;
use super::{Envelope, dalle, file, observe};
use crate::app::AppState;
use crate::generation::PlainGet;

/// The response to `req` if it is a plain GET of a run in flight or a cached image, else `None`.
pub fn plain_get<B>(
    state: &AppState,
    req: &Request<B>,
    peer: Option<SocketAddr>,
) -> Option<Response> {
    let start = Instant::now();
    if req.method() != Method::GET || req.uri().query().is_some() {
        return None;
    }
    let path = req.uri().path();
    // The router decodes `%XX` in the path; this lane only takes paths that need no decoding.
    let rest = path.strip_prefix("/dalle/").filter(|r| !r.contains('%'))?;
    if observe::unsafe_path(path).is_some() {
        return None;
    }
    let generator = state.generator().ok()?;
    let (key, _) = dalle::parse_request(path, rest, None, |s| {
        generator.attributes.series.contains(s)
    })
    .ok()?;
    let answer = generator.plain_get(&key, &state.file_cache)?;

    let id = RequestId::of_request(req.headers());
    let mut response = match answer {
        PlainGet::Progress(json) => Envelope::ok_json(&json, &id),
        PlainGet::Image(image) => file::respond(&image, req.headers(), "image/png"),
    };
    id.stamp(&mut response);
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    // The span the middleware would have opened, only when a line will be written into it.
    let _span = observe::logs(status, elapsed)
        .then(|| tracing::info_span!("request", request_id = %id).entered());
    observe::record(state, req.method(), path, status, elapsed, peer);
    Some(response)
}
