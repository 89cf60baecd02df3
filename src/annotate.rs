//! Image annotation: the terse caption drawn in a bar under the generated picture, laid out
//! with the Go library's size formula, PNG in and out, and the mock-mode picture source.
//!
//! Pure CPU code — no I/O, no async; the pipeline calls it on the blocking pool. Everything is
//! deterministic: the same input always gives the same bytes.
//!
//! Deliberate differences from upstream: the dominant-colour tie-break is fixed, transparent
//! pixels are composited over white instead of failing, the font is embedded, the bar grows
//! when word wrapping needs more lines than the size formula, the text block is centred inside
//! the bar instead of overlapping the separator, and the font size is capped (see
//! [`MAX_FONT_FRACTION`]) so a very short caption cannot blow the bar up to many times the image.

mod colour;
mod font;
mod mock;
mod png_text;

use ab_glyph::FontRef;
use image::{ImageError, Rgba, RgbaImage};
use imageproc::drawing::draw_filled_rect_mut;
use imageproc::rect::Rect;

pub use colour::{bar_colour, parse_hex_color, text_colour};
pub use mock::mock_png;
pub use png_text::{PngText, encode_png_with_text, read_text};

/// The font em is at most this fraction of the smaller image side. Upstream has no cap; with
/// its formula it only matters for captions shorter than ~34 bytes on a square image.
pub const MAX_FONT_FRACTION: f64 = 1.0 / 8.0;

/// Height of the separator line between the picture and the bar, in pixels.
const SEPARATOR_PX: u32 = 2;

/// What went wrong while annotating or producing an image.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("cannot decode the image: {0}")]
    Decode(#[source] ImageError),
    #[error("cannot encode the PNG: {0}")]
    Encode(#[source] png::EncodingError),
    #[error("cannot read the PNG's text chunks: {0}")]
    Text(#[source] png::DecodingError),
    #[error("the image has no pixels")]
    EmptyImage,
    #[error("the annotated image would be too large ({width}x{height})")]
    TooLarge { width: u32, height: u64 },
    #[error("the embedded font cannot be parsed")]
    Font,
}

/// The size of the caption bar for one image and caption, from the Go library's formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BarGeometry {
    /// Font em size in pixels: 30·W / (7·n), n = caption bytes (at least 1), capped.
    pub font_px: f64,
    /// Wrapping width: 0.95·W.
    pub text_width: f64,
    /// 0.025·H, on each side of the text block.
    pub margin: f64,
    /// Upstream's estimate, ceil(n / (text_width / font_px)).
    pub formula_lines: u32,
    /// Lines the bar is sized for: the estimate, or more if word wrapping needs more.
    pub lines: u32,
    /// trunc(lines · font_px · 1.5 + 2 · margin).
    pub bar_height: u32,
    /// Input width (the output keeps it).
    pub width: u32,
    /// Input height plus the bar.
    pub output_height: u64,
}

impl BarGeometry {
    /// The geometry for a `width`×`height` image, a caption of `caption_bytes` bytes and a
    /// caption that actually wraps into `wrapped_lines` lines.
    pub fn new(width: u32, height: u32, caption_bytes: usize, wrapped_lines: usize) -> Self {
        let (w, h) = (f64::from(width), f64::from(height));
        let n = caption_bytes.max(1) as f64;
        let font_px = (30.0 * w / (7.0 * n)).min(w.min(h) * MAX_FONT_FRACTION);
        let text_width = 0.95 * w;
        let margin = 0.025 * h;
        let formula_lines = sat_u32((n / (text_width / font_px)).ceil());
        let lines = formula_lines.max(u32::try_from(wrapped_lines).unwrap_or(u32::MAX));
        let bar_height = sat_u32((f64::from(lines) * font_px * 1.5 + 2.0 * margin).trunc());
        Self {
            font_px,
            text_width,
            margin,
            formula_lines,
            lines,
            bar_height,
            width,
            output_height: u64::from(height) + u64::from(bar_height),
        }
    }

    /// Distance between consecutive baselines: 1.5 em.
    pub fn line_height(&self) -> f64 {
        self.font_px * 1.5
    }
}

/// The bar geometry for `caption` under a `width`×`height` image, wrapping with the real font.
pub fn bar_geometry(width: u32, height: u32, caption: &str) -> Result<BarGeometry, AnnotateError> {
    Ok(layout(&font::load()?, width, height, caption).0)
}

/// Geometry plus the wrapped lines, computed once for both sizing and drawing.
fn layout(
    face: &FontRef<'_>,
    width: u32,
    height: u32,
    caption: &str,
) -> (BarGeometry, Vec<String>) {
    // The font size does not depend on the line count, so wrapping at the first estimate's
    // size is final; only the bar height can change.
    let first = BarGeometry::new(width, height, caption.len(), 0);
    let scale = font::scale_for_em(face, first.font_px as f32);
    let lines = font::wrap(face, scale, caption, first.text_width as f32);
    let geometry = BarGeometry::new(width, height, caption.len(), lines.len());
    (geometry, lines)
}

/// What one annotation chose: enough to redraw it from the raw image, and what the provenance
/// record says about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// The embedded font's name.
    pub font: String,
    /// The CID of the embedded font file.
    pub font_cid: crate::cid::Cid,
    pub caption: String,
    /// The raw image's size; the annotated image is as wide and `output_height` high.
    pub input_width: u32,
    pub input_height: u32,
    pub output_height: u64,
    pub font_px: f64,
    pub text_width: f64,
    pub margin: f64,
    /// Lines the bar is sized for, and how many the caption wrapped into.
    pub lines: u32,
    pub wrapped_lines: usize,
    pub bar_height: u32,
    /// `#rrggbb`: the bar (the picture's dominant colour), the separator and the text.
    pub bar_colour: String,
    pub separator_colour: String,
    pub text_colour: String,
}

/// Returns `image` with `caption` in a bar under it; the top H rows are the input unchanged.
pub fn annotate(image: &RgbaImage, caption: &str) -> Result<RgbaImage, AnnotateError> {
    annotate_traced(image, caption).map(|(out, _)| out)
}

/// [`annotate`], also returning what it chose.
pub fn annotate_traced(
    image: &RgbaImage,
    caption: &str,
) -> Result<(RgbaImage, Params), AnnotateError> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(AnnotateError::EmptyImage);
    }
    let face = font::load()?;
    let (geometry, lines) = layout(&face, width, height, caption);
    let too_large = || AnnotateError::TooLarge {
        width,
        height: geometry.output_height,
    };
    let out_height = u32::try_from(geometry.output_height).map_err(|_| too_large())?;
    // Refuse sizes whose RGBA buffer would not fit in memory addressing.
    u64::from(width)
        .checked_mul(geometry.output_height)
        .and_then(|p| p.checked_mul(4))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(too_large)?;

    let bar = bar_colour(image);
    let mut out = RgbaImage::from_pixel(width, out_height, opaque(bar));
    // Same width, so the input is exactly the first W·H·4 bytes of the output.
    let input = image.as_raw();
    out.get_mut(..input.len())
        .ok_or_else(too_large)?
        .copy_from_slice(input);

    let separator_end = height + SEPARATOR_PX.min(geometry.bar_height);
    let dark = opaque(colour::darken(bar));
    if separator_end > height {
        let line = Rect::at(0, sat_i32(height)).of_size(width, separator_end - height);
        draw_filled_rect_mut(&mut out, line, dark);
    }

    draw_caption(&mut out, &face, &geometry, &lines, separator_end, bar);
    let params = Params {
        font: font::NAME.to_string(),
        font_cid: font::cid(),
        caption: caption.to_string(),
        input_width: width,
        input_height: height,
        output_height: geometry.output_height,
        font_px: geometry.font_px,
        text_width: geometry.text_width,
        margin: geometry.margin,
        lines: geometry.lines,
        wrapped_lines: lines.len(),
        bar_height: geometry.bar_height,
        bar_colour: hex_colour(bar),
        separator_colour: hex_colour(colour::darken(bar)),
        text_colour: hex_colour(text_colour(bar)),
    };
    Ok((out, params))
}

fn hex_colour([r, g, b]: [u8; 3]) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// Draws the wrapped lines, left-aligned at 0.025·W, as a block centred vertically between
/// the separator and the bottom of the bar, clipped to that area so it can never leak out.
fn draw_caption(
    out: &mut RgbaImage,
    face: &FontRef<'_>,
    geometry: &BarGeometry,
    lines: &[String],
    text_top: u32,
    bar: [u8; 3],
) {
    let scale = font::scale_for_em(face, geometry.font_px as f32);
    let (ascent, descent) = font::metrics(face, scale);
    let line_height = geometry.line_height() as f32;
    let clip = font::Clip {
        x0: 0,
        y0: text_top,
        x1: out.width(),
        y1: out.height(),
    };
    let available = (out.height() - text_top) as f32;
    let block = (lines.len().saturating_sub(1)) as f32 * line_height + (ascent - descent);
    let top = text_top as f32 + ((available - block) / 2.0).max(0.0);
    let left = 0.025 * out.width() as f32;
    let ink = text_colour(bar);
    for (i, line) in lines.iter().enumerate() {
        // Whole-pixel baselines keep horizontal strokes crisp.
        let baseline = (top + ascent + i as f32 * line_height).round();
        font::draw_line(out, face, scale, ink, left, baseline, line, clip);
    }
}

/// Decodes a PNG, JPEG or WebP (sniffed from the bytes), annotates it, and encodes a PNG.
pub fn annotate_png(input: &[u8], caption: &str) -> Result<Vec<u8>, AnnotateError> {
    let decoded = image::load_from_memory(input).map_err(AnnotateError::Decode)?;
    // `into_`: an RGB decode is converted and dropped, not kept beside its RGBA copy.
    let annotated = annotate(&decoded.into_rgba8(), caption)?;
    encode_png(&annotated)
}

/// [`annotate_png`], with text chunks made from what the annotation chose (the provenance
/// record needs the colours and geometry, which are only known once the image is decoded).
pub fn annotate_png_with(
    input: &[u8],
    caption: &str,
    text: impl FnOnce(&Params) -> PngText,
) -> Result<(Vec<u8>, Params), AnnotateError> {
    let decoded = image::load_from_memory(input).map_err(AnnotateError::Decode)?;
    let (annotated, params) = annotate_traced(&decoded.into_rgba8(), caption)?;
    let png = encode_png_with_text(&annotated, Some(&text(&params)))?;
    Ok((png, params))
}

/// Encodes with fixed settings (so bytes never depend on library defaults) and no text
/// chunks; see [`encode_png_with_text`].
pub fn encode_png(image: &RgbaImage) -> Result<Vec<u8>, AnnotateError> {
    encode_png_with_text(image, None)
}

fn opaque(c: [u8; 3]) -> Rgba<u8> {
    Rgba([c[0], c[1], c[2], u8::MAX])
}

/// Float → u32, saturating (NaN → 0), for sizes computed in floating point.
/// `u32` → `i32` for imageproc's signed coordinates (images are far below `i32::MAX` high).
fn sat_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn sat_u32(v: f64) -> u32 {
    // `as` saturates for floats, which is exactly the behaviour wanted here.
    v as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage};
    use std::io::Cursor;

    /// A realistic terse caption, exactly 323 bytes (upstream worked example A).
    fn caption_323() -> String {
        let base = "A weary lighthouse keeper, painted in the style of a faded risograph print, \
                    gazes across a storm-dark harbour while gulls wheel above the broken pier; \
                    amber lamplight spills over wet cobblestones, and the whole scene hums with \
                    a quiet, stubborn hope that the ships will come home before the tide turns \
                    again tonight, whatever the sea decides.";
        let mut s: String = base.chars().take(323).collect();
        while s.len() < 323 {
            s.push('.');
        }
        s
    }

    fn checker(w: u32, h: u32) -> RgbaImage {
        RgbaImage::from_fn(w, h, |x, y| {
            if (x / 8 + y / 8) % 2 == 0 {
                Rgba([200, 60, 40, 255])
            } else {
                Rgba([30, 90, 160, 255])
            }
        })
    }

    #[test]
    fn worked_example_a_geometry() {
        let caption = caption_323();
        assert_eq!(caption.len(), 323);
        // The size formula alone, checked against the Go library's numbers for this caption.
        let g = BarGeometry::new(1024, 1024, 323, 0);
        assert!((g.font_px - 13.59).abs() < 0.01, "{}", g.font_px);
        assert!((g.text_width - 972.8).abs() < 1e-9);
        assert!((g.margin - 25.6).abs() < 1e-9);
        assert_eq!(g.formula_lines, 5);
        assert_eq!(g.bar_height, 153);
        assert_eq!((g.width, g.output_height), (1024, 1177));
        // With the real font the caption wraps into at most 5 lines, so the size holds.
        let real = bar_geometry(1024, 1024, &caption).unwrap();
        assert_eq!(real.lines, 5);
        assert_eq!(real.output_height, 1177);
        let out = annotate(&checker(1024, 1024), &caption).unwrap();
        assert_eq!(out.dimensions(), (1024, 1177));
    }

    #[test]
    fn the_bar_grows_when_wrapping_needs_more_lines() {
        let g = BarGeometry::new(1024, 1024, 323, 7);
        assert_eq!(g.lines, 7);
        assert_eq!(g.bar_height, (7.0 * g.font_px * 1.5 + 51.2) as u32);
    }

    #[test]
    fn short_captions_have_a_capped_font() {
        let g = BarGeometry::new(1024, 1024, 0, 0);
        assert!((g.font_px - 128.0).abs() < 1e-9);
        assert!(g.output_height < 2 * 1024);
    }

    #[test]
    fn top_rows_are_the_input_and_the_separator_is_darker() {
        let input = checker(300, 200);
        let out = annotate(&input, "a small caption for a small picture").unwrap();
        assert_eq!(
            &out.as_raw()[..input.as_raw().len()],
            input.as_raw().as_slice()
        );
        let bar = bar_colour(&input);
        assert_eq!(out.get_pixel(0, 200).0, opaque(colour::darken(bar)).0);
        assert_eq!(out.get_pixel(299, 201).0, opaque(colour::darken(bar)).0);
        assert_eq!(out.get_pixel(0, out.height() - 1).0, opaque(bar).0);
    }

    #[test]
    fn annotate_png_is_deterministic() {
        let mut png = Vec::new();
        checker(256, 256)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let a = annotate_png(&png, &caption_323()).unwrap();
        let b = annotate_png(&png, &caption_323()).unwrap();
        assert_eq!(a, b);
        let back = image::load_from_memory(&a).unwrap();
        assert_eq!(back.width(), 256);
    }

    #[test]
    fn transparent_images_are_annotated() {
        let clear = RgbaImage::from_pixel(64, 64, Rgba([0, 0, 0, 0]));
        let out = annotate(&clear, "ghost caption").unwrap();
        // Transparency counts as white: a white bar with black text, input alpha kept on top.
        assert_eq!(out.get_pixel(0, out.height() - 1).0, [255, 255, 255, 255]);
        assert_eq!(out.get_pixel(5, 5).0, [0, 0, 0, 0]);
        let png = encode_png(&out).unwrap();
        assert!(image::load_from_memory(&png).unwrap().color().has_alpha());
    }

    #[test]
    fn jpeg_input_is_accepted() {
        let rgb = RgbImage::from_fn(128, 96, |x, y| image::Rgb([x as u8, y as u8, 128]));
        let mut jpeg = Vec::new();
        rgb.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        let out = annotate_png(&jpeg, "a jpeg from a url").unwrap();
        let back = image::load_from_memory(&out).unwrap();
        assert_eq!(back.width(), 128);
        assert!(back.height() > 96);
    }

    #[test]
    fn garbage_and_empty_images_are_errors() {
        assert!(matches!(
            annotate_png(b"not an image", "x"),
            Err(AnnotateError::Decode(_))
        ));
        assert!(matches!(
            annotate(&RgbaImage::new(0, 10), "x"),
            Err(AnnotateError::EmptyImage)
        ));
    }

    #[test]
    fn text_colour_follows_the_bar() {
        let ink = |out: &RgbaImage, h: u32| {
            out.enumerate_pixels()
                .filter(|(_, y, _)| *y >= h + SEPARATOR_PX)
                .map(|(_, _, p)| p.0)
                .collect::<std::collections::BTreeSet<_>>()
        };
        let light = RgbaImage::from_pixel(200, 100, Rgba([240, 235, 220, 255]));
        let dark = RgbaImage::from_pixel(200, 100, Rgba([20, 25, 40, 255]));
        let caption = "Words in the bar, black or white";
        assert!(ink(&annotate(&light, caption).unwrap(), 100).contains(&[0, 0, 0, 255]));
        assert!(ink(&annotate(&dark, caption).unwrap(), 100).contains(&[255, 255, 255, 255]));
    }

    #[test]
    fn long_captions_stay_inside_the_bar() {
        let words = "supercalifragilistic expialidocious ".repeat(40);
        for (w, h, caption) in [
            (1024, 1024, caption_323()),
            (1024, 1024, words.clone()),
            (640, 960, words.clone()),
            (960, 400, "x".repeat(900)),
            (300, 300, "Mmmmm Wwwww".repeat(3)),
        ] {
            let input = checker(w, h);
            let g = bar_geometry(w, h, &caption).unwrap();
            let out = annotate(&input, &caption).unwrap();
            let bar = opaque(bar_colour(&input)).0;
            let clean_rows = g.margin as u32 - 2;
            let height = out.height();
            // The last rows of the bar and the rows just under the separator carry no ink.
            let rows = (height - clean_rows..height).chain(h + 2..h + 2 + clean_rows);
            for y in rows {
                for x in 0..w {
                    assert_eq!(out.get_pixel(x, y).0, bar, "{w}x{h} ink at ({x}, {y})");
                }
            }
            // Nor does the right-hand margin.
            for y in h + 2..height {
                for x in w - (0.025 * f64::from(w)) as u32 + 1..w {
                    assert_eq!(out.get_pixel(x, y).0, bar, "{w}x{h} ink at ({x}, {y})");
                }
            }
        }
    }
}
