//! `GET /dalle/<series>/<address>[?generate=1|?remove]`: parsing and validation as the Go
//! server (clients rely on its error codes), then the generator's decision
//! ([`crate::run::Generator::handle`]) mapped to a response.
//!
//! Two deliberate differences: a `generate` value other than `1` is a 400 naming the accepted
//! value (the Go server silently ignored `?generate=true` and started nothing), and a series
//! name that could not name files ([`SeriesName::parse`]) is an `INVALID_SERIES` 400.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::extract::Path;
use super::{ApiError, Envelope, ErrorCode, RequestId};
use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::{Address, SeriesName};
use crate::progress::RunKey;
use crate::run::{Flags, Outcome};

/// `data: {}`.
#[derive(Debug, Serialize)]
struct Nothing {}

/// `GET /dalle/{*rest}`. The request is taken whole (its URI and headers are borrowed, not
/// cloned by extractors): this is the most frequent route of all.
pub async fn dalle(
    State(state): State<AppState>,
    rid: RequestId,
    rest: Option<Path<String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let rest_path = rest.as_ref().map_or("", |Path(rest)| rest.as_str());
    if let Some(base) = rest_path.strip_suffix("/provenance") {
        let path = request.uri().path();
        return super::provenance::dalle(&state, path, base, request.headers()).await;
    }
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let (key, flags) = parse_request(
        request.uri().path(),
        rest.as_ref().map_or("", |Path(rest)| rest.as_str()),
        request.uri().query(),
        |s| generator.attributes.series.contains(s),
    )?;
    super::series::refuse_new_run_if_hidden(generator, &key, flags)?;
    let headers = request.headers();
    // Only a request that could start a run or remove one looks at who is asking (a hash and
    // a lock): polls and image reads, the most frequent requests, start nothing.
    let caller = if flags.generate || flags.remove {
        let peer = super::auth::peer(request.extensions());
        super::auth::caller(&state, headers, peer)
    } else {
        Caller::READER
    };
    let outcome = Arc::clone(generator)
        .handle(key, flags, &caller, rid.as_str())
        .await;
    Ok(match outcome {
        Outcome::Snapshot(snapshot) => Envelope::ok(snapshot, &rid).into_response(),
        Outcome::Progress(json) => Envelope::ok_json(json, &rid),
        Outcome::Empty => Envelope::ok(Nothing {}, &rid).into_response(),
        Outcome::Removed(name) => (
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("image removed {name}\n"),
        )
            .into_response(),
        Outcome::Image(file) => super::file::respond(&file, headers, "image/png"),
        Outcome::QueueFull(full) => return Err(ApiError::QueueFull(full)),
        Outcome::BudgetExhausted(exhausted) => return Err(ApiError::BudgetExhausted(exhausted)),
        Outcome::RateLimited(limited) => return Err(ApiError::RateLimited(limited)),
        Outcome::Unauthorized => return Err(super::auth::refuse(&state, false)),
        Outcome::ShuttingDown => {
            let mut response = ApiError::Unavailable {
                message: "Server is shutting down".into(),
                details: Some(
                    "no new generation starts while the server drains; retry after Retry-After"
                        .into(),
                ),
            }
            .into_response();
            super::error::add_drain_retry_after(&mut response);
            response
        }
    })
}

/// The run key and flags of `/dalle/<rest>?<query>` (`full_path` is only quoted in errors),
/// exactly as the handler parses them; public so the fuzz targets can reach it.
pub fn parse_request(
    full_path: &str,
    rest: &str,
    query: Option<&str>,
    series_exists: impl Fn(&str) -> bool,
) -> Result<(RunKey, Flags), ApiError> {
    let key = parse_path(full_path, rest, series_exists)?;
    Ok((key, parse_flags(query)?))
}

/// Split at the first `/`, lower-case both parts, validate series then address (in this order,
/// so the error code for a bad path is the Go server's).
fn parse_path(
    full: &str,
    rest: &str,
    series_exists: impl Fn(&str) -> bool,
) -> Result<RunKey, ApiError> {
    let Some((series, address)) = rest.split_once('/') else {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "Invalid request path",
            Some(format!(
                "Path '{full}' does not match expected format /dalle/{{series}}/{{address}}"
            )),
        ));
    };
    let series = series.to_lowercase();
    if series.is_empty() {
        return Err(missing("series"));
    }
    let name = SeriesName::parse(&series).map_err(|e| {
        ApiError::bad_request(
            ErrorCode::InvalidSeries,
            "Invalid series name",
            Some(e.to_string()),
        )
    })?;
    if !series_exists(&series) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidSeries,
            "Invalid series name",
            Some(format!("Series '{series}' not found in available series")),
        ));
    }
    if address.is_empty() {
        return Err(missing("address"));
    }
    let address = Address::parse(address).map_err(|e| {
        ApiError::bad_request(
            ErrorCode::InvalidAddress,
            "Invalid address format",
            Some(e.to_string()),
        )
    })?;
    Ok(RunKey::new(name, address))
}

fn missing(name: &str) -> ApiError {
    ApiError::bad_request(
        ErrorCode::MissingParameter,
        "Missing required parameter",
        Some(format!("Parameter '{name}' is required")),
    )
}

pub use crate::domain::is_address;

/// `generate` is set by `generate=1`, and every `generate` must say `1`: anything else
/// (`true`, `yes`, a bare `generate`) is a typo that would otherwise start nothing and
/// answer as if all were well. `remove` is set by its presence with any value, as the Go
/// server documented it.
fn parse_flags(query: Option<&str>) -> Result<Flags, ApiError> {
    let mut flags = Flags {
        generate: false,
        remove: false,
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "generate" if value == "1" => flags.generate = true,
            "generate" => {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidRequest,
                    "Invalid generate value",
                    Some(format!(
                        "generate={value:?} is not accepted: use generate=1 to start a run"
                    )),
                ));
            }
            "remove" => flags.remove = true,
            _ => {}
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";

    fn parse(rest: &str) -> Result<RunKey, String> {
        parse_path(&format!("/dalle/{rest}"), rest, |s| s == "simple").map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn paths_parse_and_fail_like_upstream() {
        assert_eq!(
            parse(&format!("Simple/{}", A.to_uppercase().replace("0X", "0x")))
                .unwrap()
                .subject
                .as_str(),
            A
        );
        assert!(parse("simple").unwrap_err().contains("InvalidRequest"));
        assert!(parse("").unwrap_err().contains("InvalidRequest"));
        assert!(
            parse(&format!("/{A}"))
                .unwrap_err()
                .contains("MissingParameter")
        );
        assert!(parse("simple/").unwrap_err().contains("MissingParameter"));
        assert!(
            parse(&format!("nope/{A}"))
                .unwrap_err()
                .contains("InvalidSeries")
        );
        assert!(
            parse(&format!("simple/{A}/"))
                .unwrap_err()
                .contains("InvalidAddress")
        );
        assert!(
            parse("simple/f503017d7baf7fbc0fff7492b751025c6a78179b")
                .unwrap_err()
                .contains("InvalidAddress")
        );
        assert!(
            parse("simple/0xzz03017d7baf7fbc0fff7492b751025c6a78179b")
                .unwrap_err()
                .contains("InvalidAddress")
        );
    }

    #[test]
    fn flags_take_generate_1_only_and_remove_with_any_value() {
        let f = |q: &str| {
            let flags = parse_flags(Some(q)).unwrap();
            (flags.generate, flags.remove)
        };
        assert_eq!(f(""), (false, false));
        assert_eq!(f("generate=1"), (true, false));
        assert_eq!(f("generate=1&generate=1"), (true, false));
        assert_eq!(f("remove"), (false, true));
        assert_eq!(f("remove=0"), (false, true));
        assert_eq!(f("%zz=1&generate=1"), (true, false));
        assert_eq!(f("other=yes"), (false, false));
        for typo in [
            "generate",
            "generate=",
            "generate=true",
            "generate=yes",
            "generate=0",
            "generate=%201",
            "generate=1&generate=0",
            "generate=0&generate=1",
        ] {
            let err = format!("{:?}", parse_flags(Some(typo)).unwrap_err());
            assert!(err.contains("InvalidRequest"), "{typo}: {err}");
            assert!(err.contains("generate=1"), "{typo}: {err}");
        }
    }

    #[test]
    fn series_names_that_cannot_name_files_are_invalid_series() {
        let long = format!("{}/{A}", "a".repeat(101));
        for rest in [
            long.as_str(),
            &format!("cats.deleted/{A}"),
            &format!("a\u{1}b/{A}"),
        ] {
            let err = parse_path("/dalle/x", rest, |_| true).unwrap_err();
            assert!(
                format!("{err:?}").contains("InvalidSeries"),
                "{rest}: {err:?}"
            );
        }
    }
}
