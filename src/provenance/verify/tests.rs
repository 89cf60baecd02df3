use super::*;
use crate::provenance::{Build, Enhancement, ImageRequest, Prompt};

const CAPTION: &str = "a small fox on a snowy hill";

fn raw() -> Vec<u8> {
    let image = RgbaImage::from_fn(160, 120, |x, y| {
        image::Rgba([(x * 3) as u8, (y * 2) as u8, 120, 255])
    });
    annotate::encode_png(&image).unwrap()
}

fn making(raw: &[u8], caption: &str) -> Making {
    Making {
        schema: super::super::SCHEMA_VERSION,
        series: "simple".into(),
        series_cid: Cid::of(b"s"),
        databases_cid: Cid::of(b"d"),
        subject: "seed".into(),
        dress_cid: None,
        dress: serde_json::json!({}),
        prompts: vec![Prompt::new("terse", caption)],
        enhancement: Enhancement {
            ran: false,
            model: None,
            request_id: None,
            skipped: Some("test".into()),
        },
        image: ImageRequest {
            source: "mock".into(),
            model: None,
            size: None,
            quality: None,
            download: "mock".into(),
            revised_prompt: None,
            response_id: None,
            created: None,
        },
        raw_cid: Cid::of(raw),
        annotation: None,
        server: Build::current(),
    }
}

/// An annotated PNG of `raw` with `caption`, carrying `making` (its annotation filled in).
fn annotated(raw: &[u8], caption: &str, mut making: Making) -> (Vec<u8>, Making) {
    let (png, params) = annotate::annotate_png_with(raw, caption, |params| {
        making.annotation = Some(params.clone());
        making.png_text().unwrap()
    })
    .unwrap();
    making.annotation = Some(params);
    (png, making)
}

#[test]
fn a_good_file_verifies() {
    let raw = raw();
    let (png, _) = annotated(&raw, CAPTION, making(&raw, CAPTION));
    let matched = verify(&png, &raw).unwrap();
    assert_eq!(matched.len(), 5, "{matched:?}");
    assert!(matched[4].starts_with("pixels: all 160x"), "{matched:?}");
}

#[test]
fn one_changed_pixel_is_found() {
    let raw = raw();
    let (png, making) = annotated(&raw, CAPTION, making(&raw, CAPTION));
    let mut pixels = image::load_from_memory(&png).unwrap().into_rgba8();
    let p = pixels.get_pixel_mut(17, 23);
    p.0[0] ^= 1;
    let tampered =
        annotate::encode_png_with_text(&pixels, Some(&making.png_text().unwrap())).unwrap();
    match verify(&tampered, &raw) {
        Err(Mismatch::Pixel { x: 17, y: 23, .. }) => {}
        other => panic!("expected pixel (17, 23) to differ, got {other:?}"),
    }
}

#[test]
fn a_changed_caption_is_found() {
    let raw = raw();
    let (_, making) = annotated(&raw, CAPTION, making(&raw, CAPTION));
    // The picture redrawn with another caption, the original record kept.
    let (other, _) = annotated(&raw, "a large wolf in the rain", making.clone());
    let pixels = image::load_from_memory(&other).unwrap().into_rgba8();
    let forged =
        annotate::encode_png_with_text(&pixels, Some(&making.png_text().unwrap())).unwrap();
    let err = verify(&forged, &raw).unwrap_err();
    assert!(
        matches!(err, Mismatch::Pixel { .. } | Mismatch::Size { .. }),
        "{err}"
    );
    // And a record whose caption was edited no longer matches its own terse prompt.
    let mut edited = making;
    if let Some(params) = edited.annotation.as_mut() {
        params.caption = "a large wolf in the rain".into();
    }
    let relabelled =
        annotate::encode_png_with_text(&pixels, Some(&edited.png_text().unwrap())).unwrap();
    assert!(matches!(
        verify(&relabelled, &raw),
        Err(Mismatch::Caption { .. })
    ));
}

#[test]
fn another_raw_image_is_refused_by_its_cid() {
    let raw = raw();
    let (png, _) = annotated(&raw, CAPTION, making(&raw, CAPTION));
    let other = annotate::encode_png(&RgbaImage::from_pixel(
        160,
        120,
        image::Rgba([0, 0, 0, 255]),
    ))
    .unwrap();
    assert!(matches!(verify(&png, &other), Err(Mismatch::RawCid { .. })));
    assert!(matches!(
        verify(&raw, &raw),
        Err(Mismatch::Record(ProvenanceError::Missing))
    ));
}
