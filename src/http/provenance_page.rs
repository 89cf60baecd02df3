//! `GET /preview/provenance/<series>/<subject>`: a run's record as a page of the gallery — the
//! picture, every CID (each a link to `/cache/{cid}`), models, cost, phases with their
//! durations, and the prompts. Served with the gallery's content security policy.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_SECURITY_POLICY;
use axum::response::{Html, IntoResponse, Response};

use super::ApiError;
use super::extract::Path;
use crate::app::AppState;
use crate::cid::Cid;
use crate::provenance::Record;

#[derive(Template)]
#[template(path = "provenance.html")]
struct Page {
    series: String,
    subject: String,
    image_src: String,
    record_href: String,
    record_cid: Cid,
    schema: u32,
    cids: Vec<Named>,
    enhancement: String,
    image: String,
    revised_prompt: Option<String>,
    cost: String,
    server: String,
    started_at: String,
    finished_at: String,
    phases: Vec<Phase>,
    prompts: Vec<crate::provenance::Prompt>,
}

struct Named {
    what: &'static str,
    cid: Cid,
}

struct Phase {
    phase: String,
    duration: String,
}

/// `GET /preview/provenance/{*rest}` with `rest` = `<series>/<subject>`.
pub async fn page(
    State(state): State<AppState>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let generator = state.generator().map_err(ApiError::databases_unavailable)?;
    let not_found = || ApiError::NotFound {
        details: format!("No provenance record for {rest}"),
    };
    let (series, subject) = rest.split_once('/').ok_or_else(not_found)?;
    let (kind, ext) = crate::provenance::RECORD_FILE;
    let name = format!("{series}/{kind}/{subject}.{ext}");
    let store = generator.store.clone();
    let file = tokio::task::spawn_blocking(move || store.read_named(&name).ok().flatten())
        .await
        .ok()
        .flatten()
        .ok_or_else(not_found)?;
    let record = Record::from_bytes(&file.bytes).map_err(|_| not_found())?;
    let page = build(series, subject, file.cid, record);
    let html = page
        .render()
        .map_err(|e| ApiError::Template(e.to_string()))?;
    let mut response = Html(html).into_response();
    response.headers_mut().insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::preview::PREVIEW_CSP),
    );
    Ok(response)
}

fn build(series: &str, subject: &str, record_cid: Cid, record: Record) -> Page {
    let making = record.making;
    let mut cids = Vec::new();
    cids.extend(record.annotated_cid.map(|cid| Named {
        what: "Annotated image",
        cid,
    }));
    cids.push(Named {
        what: "Raw image",
        cid: making.raw_cid,
    });
    cids.extend(making.dress_cid.map(|cid| Named {
        what: "DalleDress",
        cid,
    }));
    cids.push(Named {
        what: "Series definition",
        cid: making.series_cid,
    });
    cids.push(Named {
        what: "Databases manifest",
        cid: making.databases_cid,
    });
    if let Some(annotation) = &making.annotation {
        cids.push(Named {
            what: "Caption font",
            cid: annotation.font_cid,
        });
    }
    let e = &making.enhancement;
    let enhancement = match (&e.model, &e.skipped) {
        (Some(model), _) => format!(
            "{model} (completion {})",
            e.request_id.as_deref().unwrap_or("without an id")
        ),
        (None, Some(why)) => format!("skipped: {why}"),
        (None, None) => "none".into(),
    };
    let i = &making.image;
    let image = format!(
        "{} {}, size {}, quality {}, delivered as {}",
        i.source,
        i.model.as_deref().unwrap_or(""),
        i.size.as_deref().unwrap_or("default"),
        i.quality.as_deref().unwrap_or("default"),
        i.download
    );
    let cost = match &record.cost.model {
        Some(model) => format!(
            "${:.4} ({model}, at the server's price table)",
            crate::budget::usd(record.cost.usd_micros)
        ),
        None => "$0 (no paid request)".into(),
    };
    let phases = record
        .phases
        .iter()
        .map(|p| Phase {
            phase: p.phase.clone(),
            duration: if p.skipped {
                "skipped".into()
            } else {
                format!("{:.0} ms", p.duration_ms)
            },
        })
        .collect();
    let stem_path = format!("{series}/annotated/{subject}.png");
    Page {
        series: series.to_string(),
        subject: subject.to_string(),
        image_src: format!("/files/{stem_path}"),
        record_href: format!("/dalle/{series}/{subject}/provenance"),
        record_cid,
        schema: making.schema,
        cids,
        enhancement,
        image,
        revised_prompt: i.revised_prompt.clone(),
        cost,
        server: format!(
            "{} {} ({})",
            making.server.name, making.server.version, making.server.commit
        ),
        started_at: record.started_at,
        finished_at: record.finished_at,
        phases,
        prompts: making.prompts,
    }
}
