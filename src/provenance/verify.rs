//! `dalleserver verify`: checks that an annotated PNG is what its embedded record says — the
//! raw image has the recorded CID, and captioning that raw image again with the recorded
//! parameters gives exactly the same pixels. Annotation is deterministic (same raw image,
//! caption and font → same pixels), which is what makes this a proof rather than a guess.

use image::RgbaImage;

use super::{Making, ProvenanceError};
use crate::annotate::{self, AnnotateError};
use crate::cid::Cid;

/// The first thing that did not match.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error("cannot read the embedded record: {0}")]
    Record(#[from] ProvenanceError),
    #[error("the raw image's CID is {actual}, the record says {recorded}")]
    RawCid { recorded: Cid, actual: Cid },
    #[error("the record has no annotation parameters (the run wrote no annotated image)")]
    NoAnnotation,
    #[error("the caption {caption:?} is not the recorded terse prompt {terse:?}")]
    Caption { caption: String, terse: String },
    #[error("prompt {kind}: its text does not have the recorded CID {recorded}")]
    PromptCid { kind: String, recorded: Cid },
    #[error("cannot redraw the annotation: {0}")]
    Annotate(#[from] AnnotateError),
    #[error("redrawing chose other parameters: {0}")]
    Parameters(String),
    #[error("the image is {actual:?} pixels, the redrawn annotation {expected:?}")]
    Size {
        expected: (u32, u32),
        actual: (u32, u32),
    },
    #[error("pixel ({x}, {y}) is {actual:?}, the redrawn annotation has {expected:?}")]
    Pixel {
        x: u32,
        y: u32,
        expected: [u8; 4],
        actual: [u8; 4],
    },
}

/// What matched, one line each, in the order checked.
pub type Matched = Vec<String>;

/// The record embedded in `annotated`, for finding its raw image (`raw_cid`).
pub fn embedded(annotated: &[u8]) -> Result<Making, Mismatch> {
    Ok(Making::from_png(annotated)?)
}

/// Checks `annotated` against its embedded record and the raw image `raw`.
pub fn verify(annotated: &[u8], raw: &[u8]) -> Result<Matched, Mismatch> {
    let making = embedded(annotated)?;
    let mut matched = vec![format!(
        "record: schema {}, {} {} by {} {} ({})",
        making.schema,
        making.series,
        making.subject,
        making.server.name,
        making.server.version,
        making.server.commit
    )];
    let actual = Cid::of(raw);
    if actual != making.raw_cid {
        return Err(Mismatch::RawCid {
            recorded: making.raw_cid,
            actual,
        });
    }
    matched.push(format!("raw image: {actual}"));
    for prompt in &making.prompts {
        if Cid::of(prompt.text.as_bytes()) != prompt.cid {
            return Err(Mismatch::PromptCid {
                kind: prompt.kind.clone(),
                recorded: prompt.cid,
            });
        }
    }
    matched.push(format!(
        "prompts: {} texts with their CIDs",
        making.prompts.len()
    ));
    let params = making.annotation.as_ref().ok_or(Mismatch::NoAnnotation)?;
    if let Some(terse) = making.prompts.iter().find(|p| p.kind == "terse")
        && terse.text != params.caption
    {
        return Err(Mismatch::Caption {
            caption: params.caption.clone(),
            terse: terse.text.clone(),
        });
    }
    let decoded = image::load_from_memory(raw)
        .map_err(AnnotateError::Decode)?
        .into_rgba8();
    let (redrawn, chosen) = annotate::annotate_traced(&decoded, &params.caption)?;
    if &chosen != params {
        return Err(Mismatch::Parameters(first_difference(params, &chosen)));
    }
    matched.push(format!(
        "annotation parameters: {}, {} px font, {} lines, bar {}",
        params.font, params.font_px, params.lines, params.bar_colour
    ));
    let shown = image::load_from_memory(annotated)
        .map_err(AnnotateError::Decode)?
        .into_rgba8();
    same_pixels(&redrawn, &shown)?;
    matched.push(format!(
        "pixels: all {}x{} identical to the redrawn annotation",
        shown.width(),
        shown.height()
    ));
    Ok(matched)
}

fn same_pixels(expected: &RgbaImage, actual: &RgbaImage) -> Result<(), Mismatch> {
    if expected.dimensions() != actual.dimensions() {
        return Err(Mismatch::Size {
            expected: expected.dimensions(),
            actual: actual.dimensions(),
        });
    }
    let differs = expected
        .enumerate_pixels()
        .zip(actual.pixels())
        .find(|((_, _, e), a)| e != a);
    match differs {
        Some(((x, y, e), a)) => Err(Mismatch::Pixel {
            x,
            y,
            expected: e.0,
            actual: a.0,
        }),
        None => Ok(()),
    }
}

/// The first parameter that differs, as `name: recorded → redrawn`.
fn first_difference(recorded: &annotate::Params, redrawn: &annotate::Params) -> String {
    let (a, b) = (
        serde_json::to_value(recorded).unwrap_or_default(),
        serde_json::to_value(redrawn).unwrap_or_default(),
    );
    a.as_object()
        .into_iter()
        .flatten()
        .find(|(k, v)| b.get(k.as_str()) != Some(v))
        .map_or_else(
            || "unknown".to_string(),
            |(k, v)| format!("{k}: {v} → {}", b[k.as_str()]),
        )
}

pub mod cli;

#[cfg(test)]
mod tests;
