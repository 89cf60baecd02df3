//! `GET /preview`: the HTML gallery — series groups newest first, a client-side
//! filter, a column slider kept in `localStorage`, lazy images from `/files/`, live progress
//! bars for runs in flight (running first, then the queue in its order), the failed runs still
//! retained with their error and how to retry, and server-side `?series=`, `?page=`,
//! `?per_page=` so that large galleries stay fast. Images come from the artifact store and runs
//! from the run registry, through their traits. The page is rendered to a string first, so a template failure is a
//! clean 500 `TEMPLATE_ERROR` instead of half a page.
//!
//! The page's script and styles are served as files (`/preview.js`, `/preview.css`), so the
//! page can send a [`CONTENT_SECURITY_POLICY`] that allows only this server's own scripts,
//! styles, images and fetches: an address or series name that ever slipped past escaping
//! still could not run a script.

use std::collections::HashMap;
use std::time::SystemTime;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{Html, IntoResponse, Response};
use time::OffsetDateTime;

use super::ApiError;
use crate::app::AppState;
use crate::gallery::{self, DEFAULT_PER_PAGE, checksum_address};

#[derive(Template)]
#[template(path = "preview.html")]
struct PreviewPage {
    groups: Vec<Group>,
    series: Vec<SeriesLink>,
    running: Vec<Running>,
    failed: Vec<Failed>,
    selected: Option<String>,
    total: usize,
    total_all: usize,
    page: usize,
    pages: usize,
    prev_href: Option<String>,
    next_href: Option<String>,
    generated_at: String,
}

struct Group {
    series: String,
    total: usize,
    figures: Vec<Figure>,
}

struct Figure {
    src: String,
    /// The figure's provenance page.
    provenance: String,
    address: String,
    time: String,
}

struct SeriesLink {
    name: String,
    count: usize,
    href: String,
    active: bool,
}

struct Running {
    series: String,
    address: String,
    poll_url: String,
    percent: u32,
    /// What the card says until the first poll: the phase and percent, or the queue place.
    meta: String,
}

/// A failed run still retained: its error, and how to try again.
struct Failed {
    series: String,
    address: String,
    error: String,
    code: String,
    /// The `/dalle` URL of the key: `?remove` forgets the failure, then `?generate=1` retries
    /// (a failed run is never retried by `?generate=1` alone). `None` for a `/v1` seed, which
    /// is retried through `/v1`.
    dalle_url: Option<String>,
}

/// The policy `/preview` is sent with: its own scripts, styles, images (`/files/…`) and
/// polls only; nothing inline, no plugins, no framing, no form posts elsewhere.
pub const PREVIEW_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const SCRIPT: &str = include_str!("../../templates/preview.js");
const STYLE: &str = include_str!("../../templates/preview.css");

/// `GET /preview.js`: the gallery's script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /preview.css`: the gallery's styles.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// A file of the binary: it changes only with the binary, so an hour of caching is safe.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// `GET /preview`.
pub async fn preview(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let selected = q
        .get("series")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let number = |key: &str, default: usize| {
        q.get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default)
    };
    let (page_no, per_page) = (number("page", 1), number("per_page", DEFAULT_PER_PAGE));
    let store = state.store.clone();
    let entries = tokio::task::spawn_blocking(move || gallery::scan(&*store))
        .await
        .map_err(|e| ApiError::Internal(format!("gallery scan failed: {e}")))?;
    let page = gallery::paginate(entries, selected.as_deref(), page_no, per_page);
    let html = render(&state, page, selected).map_err(|e| ApiError::Template(e.to_string()))?;
    let mut response = Html(html).into_response();
    response.headers_mut().insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PREVIEW_CSP),
    );
    Ok(response)
}

fn render(
    state: &AppState,
    page: gallery::Page,
    selected: Option<String>,
) -> askama::Result<String> {
    let href = |series: Option<&str>, page_no: usize| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = series {
            query.append_pair("series", s);
        }
        if page_no > 1 {
            query.append_pair("page", &page_no.to_string());
        }
        if page.per_page != DEFAULT_PER_PAGE {
            query.append_pair("per_page", &page.per_page.to_string());
        }
        let query = query.finish();
        if query.is_empty() {
            "/preview".to_string()
        } else {
            format!("/preview?{query}")
        }
    };
    let mut groups: Vec<Group> = Vec::new();
    for entry in page.entries {
        let figure = Figure {
            src: format!("/files/{}", encode_path(&entry.rel_path)),
            provenance: format!(
                "/preview/provenance/{}",
                encode_path(&format!("{}/{}", entry.series, entry.stem))
            ),
            address: checksum_address(&entry.stem),
            time: clock(entry.modified),
        };
        match groups.last_mut() {
            Some(g) if g.series == entry.series => g.figures.push(figure),
            _ => groups.push(Group {
                total: page
                    .series
                    .iter()
                    .find(|s| s.series == entry.series)
                    .map_or(0, |s| s.count),
                series: entry.series,
                figures: vec![figure],
            }),
        }
    }
    let mut in_flight = state.runs.in_flight();
    // Running cards first (in the registry's order: series, then address), then the queue in
    // its order, so the card at the top is the next to run.
    in_flight.sort_by_key(|s| s.queue_position.map_or((0, 0), |p| (1, p)));
    let running = in_flight
        .into_iter()
        .map(|s| Running {
            poll_url: dalle_url(&s.series, &s.address),
            address: checksum_address(&s.address),
            percent: s.percent.clamp(0.0, 100.0) as u32,
            meta: match s.queue_position {
                Some(position) => format!("queued · #{position}"),
                None => format!(
                    "{} · {}%",
                    s.current_phase.as_str(),
                    s.percent.clamp(0.0, 100.0) as u32
                ),
            },
            series: s.series,
        })
        .collect();
    let failed = state
        .runs
        .failed()
        .into_iter()
        .map(|s| Failed {
            dalle_url: crate::domain::Address::parse(&s.address)
                .is_ok()
                .then(|| dalle_url(&s.series, &s.address)),
            address: checksum_address(&s.address),
            error: s.error,
            code: s.error_code.to_string(),
            series: s.series,
        })
        .collect();
    let view = PreviewPage {
        series: page
            .series
            .iter()
            .map(|s| SeriesLink {
                href: href(Some(&s.series), 1),
                active: selected.as_deref() == Some(s.series.as_str()),
                name: s.series.clone(),
                count: s.count,
            })
            .collect(),
        total_all: page.series.iter().map(|s| s.count).sum(),
        prev_href: (page.page > 1).then(|| href(selected.as_deref(), page.page - 1)),
        next_href: (page.page < page.pages).then(|| href(selected.as_deref(), page.page + 1)),
        groups,
        running,
        failed,
        selected,
        total: page.total,
        page: page.page,
        pages: page.pages,
        generated_at: format!("{} UTC", clock(SystemTime::now())),
    };
    view.render()
}

/// `/dalle/<series>/<address>`, each segment encoded.
fn dalle_url(series: &str, address: &str) -> String {
    format!("/dalle/{}/{}", encode_path(series), encode_path(address))
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
fn clock(t: SystemTime) -> String {
    let d = OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// Percent-encodes each `/`-separated segment (file and series names may hold spaces).
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_per_segment() {
        assert_eq!(
            encode_path("my series/annotated/0xab.png"),
            "my%20series/annotated/0xab.png"
        );
        assert_eq!(encode_path("a\"b/<c>"), "a%22b/%3Cc%3E");
    }

    #[test]
    fn clock_is_utc() {
        assert_eq!(
            clock(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 3_661)),
            "1970-01-02 01:01:01"
        );
    }
}
