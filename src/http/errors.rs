//! `GET /errors`: a plain-text error report, `?format=json` for the raw snapshot and
//! `?clear` (with or without a value — the Go server needed one) to reset it; clearing
//! changes data, so with API keys configured it needs one.

use std::collections::HashMap;
use std::fmt::Write;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::metrics::MetricsSnapshot;

const TEXT: &str = "text/plain; charset=utf-8";

/// `GET /errors`.
pub async fn errors(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, super::ApiError> {
    if q.contains_key("clear") {
        super::auth::require(&state, &headers, false)?;
        state.metrics.clear_errors();
        return Ok(([(CONTENT_TYPE, TEXT)], "Error metrics cleared.\n").into_response());
    }
    let snapshot = state.metrics.snapshot(&state.breaker.snapshot());
    if q.get("format").map(String::as_str) == Some("json") {
        // Raw, not enveloped, as the Go server answered: clients may rely on that shape.
        return Ok(Json(snapshot).into_response());
    }
    Ok(([(CONTENT_TYPE, TEXT)], report(&snapshot)).into_response())
}

fn report(s: &MetricsSnapshot) -> String {
    if s.total_errors == 0 {
        return "No errors recorded yet.\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(out, "=== DALLE Server Error Report ===");
    let _ = writeln!(out, "Total Errors: {}", s.total_errors);
    let _ = writeln!(out, "Last Updated: {}\n", s.last_updated);
    if !s.errors_by_code.is_empty() {
        let _ = writeln!(out, "Errors by Code:");
        for (code, n) in &s.errors_by_code {
            let _ = writeln!(out, "  {code}: {n}");
        }
        out.push('\n');
    }
    if !s.errors_by_endpoint.is_empty() {
        let _ = writeln!(out, "Errors by Endpoint:");
        for (endpoint, n) in &s.errors_by_endpoint {
            let _ = writeln!(out, "  {endpoint}: {n}");
        }
        out.push('\n');
    }
    if s.openai_errors > 0 {
        let _ = writeln!(
            out,
            "OpenAI API Errors: {} (out of {} requests)",
            s.openai_errors, s.openai_requests
        );
    }
    if s.file_operation_errors > 0 {
        let _ = writeln!(
            out,
            "File Operation Errors: {} (out of {} operations)",
            s.file_operation_errors, s.file_operations
        );
    }
    if !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str("Use ?clear to reset error metrics\nUse ?format=json for JSON output\n");
    out
}
