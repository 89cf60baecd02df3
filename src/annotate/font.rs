//! The embedded caption font (DejaVu Sans Mono, licence in `assets/fonts/`), word wrapping
//! by measured advance widths, and antialiased glyph drawing clipped to a rectangle.
//!
//! Upstream loads the font from the system and fails when it is missing; embedding it makes
//! the output identical on every host.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::{Rgba, RgbaImage};

use super::AnnotateError;

/// DejaVu Sans Mono 2.37, as shipped by Debian's `fonts-dejavu-core`.
pub const BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
/// The font's name, as the provenance record gives it.
pub const NAME: &str = "DejaVu Sans Mono 2.37";

/// The CID of [`BYTES`], hashed once.
pub fn cid() -> crate::cid::Cid {
    static CID: std::sync::OnceLock<crate::cid::Cid> = std::sync::OnceLock::new();
    *CID.get_or_init(|| crate::cid::Cid::of(BYTES))
}

/// The parsed embedded font (parsing is lazy in `ab_glyph`, so this is cheap per call).
pub fn load() -> Result<FontRef<'static>, AnnotateError> {
    FontRef::try_from_slice(BYTES).map_err(|_| AnnotateError::Font)
}

/// The `ab_glyph` scale whose em square is `em_px` pixels.
///
/// Upstream sizes the face in points at 72 dpi, i.e. the em is `font` pixels; `ab_glyph`'s
/// `PxScale` is the ascent-to-descent height instead, so convert.
pub fn scale_for_em(font: &FontRef<'_>, em_px: f32) -> PxScale {
    let units_per_em = font.units_per_em().unwrap_or(2048.0);
    PxScale::from(em_px * font.height_unscaled() / units_per_em)
}

/// Vertical metrics of a line at `scale`: (ascent, descent), descent negative.
pub fn metrics(font: &FontRef<'_>, scale: PxScale) -> (f32, f32) {
    let scaled = font.as_scaled(scale);
    (scaled.ascent(), scaled.descent())
}

/// Splits `text` into lines no wider than `max_width` pixels.
///
/// Words are separated by any whitespace (runs collapse to one space); a word wider than a
/// whole line is broken between characters so nothing is ever cut off at the right edge.
pub fn wrap(font: &FontRef<'_>, scale: PxScale, text: &str, max_width: f32) -> Vec<String> {
    let scaled = font.as_scaled(scale);
    let advance = |c: char| scaled.h_advance(scaled.glyph_id(c));
    let space = advance(' ');

    let mut lines = Vec::new();
    let mut line = String::new();
    let mut line_width = 0.0f32;
    for word in text.split_whitespace() {
        let word_width: f32 = word.chars().map(advance).sum();
        let needed = if line.is_empty() {
            word_width
        } else {
            line_width + space + word_width
        };
        if needed <= max_width {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
            line_width = needed;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
            line_width = 0.0;
        }
        if word_width <= max_width {
            line.push_str(word);
            line_width = word_width;
            continue;
        }
        // A word longer than a line: hard-break it, at least one character per line.
        for c in word.chars() {
            let w = advance(c);
            if !line.is_empty() && line_width + w > max_width {
                lines.push(std::mem::take(&mut line));
                line_width = 0.0;
            }
            line.push(c);
            line_width += w;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Pixel rectangle `[x0, x1) × [y0, y1)` that drawing may touch.
#[derive(Debug, Clone, Copy)]
pub struct Clip {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

/// Draws one line of text with its baseline starting at (`x`, `baseline`), blending glyph
/// coverage over what is already there and never touching pixels outside `clip`.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub fn draw_line(
    canvas: &mut RgbaImage,
    font: &FontRef<'_>,
    scale: PxScale,
    colour: [u8; 3],
    x: f32,
    baseline: f32,
    text: &str,
    clip: Clip,
) {
    let scaled = font.as_scaled(scale);
    let mut pen = x;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        let glyph = id.with_scale_and_position(scale, point(pen, baseline));
        pen += scaled.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue; // spaces and other blank glyphs have no outline
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            // px_bounds are whole pixels, so these sums are exact integers.
            let px = bounds.min.x + gx as f32;
            let py = bounds.min.y + gy as f32;
            if px < clip.x0 as f32 || py < clip.y0 as f32 {
                return;
            }
            let (px, py) = (px as u32, py as u32);
            if px >= clip.x1 || py >= clip.y1 {
                return;
            }
            blend(
                canvas.get_pixel_mut(px, py),
                colour,
                coverage.clamp(0.0, 1.0),
            );
        });
    }
}

/// `dst = dst·(1−a) + colour·a`, rounded; alpha stays as it is (the bar is opaque).
fn blend(dst: &mut Rgba<u8>, colour: [u8; 3], a: f32) {
    for (d, &s) in dst.0.iter_mut().zip(colour.iter()) {
        let v = f32::from(*d) * (1.0 - a) + f32::from(s) * a;
        *d = (v + 0.5) as u8; // v ≥ 0 and `as` saturates, so this rounds and clamps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_font_is_monospace_dejavu() {
        let font = load().unwrap();
        let scale = scale_for_em(&font, 20.0);
        let s = font.as_scaled(scale);
        let a = s.h_advance(s.glyph_id('i'));
        let b = s.h_advance(s.glyph_id('W'));
        assert_eq!(a, b);
        // DejaVu Sans Mono advances are 1233/2048 em.
        assert!((a - 20.0 * 1233.0 / 2048.0).abs() < 1e-3, "{a}");
    }

    #[test]
    fn wrap_respects_width_and_keeps_every_word() {
        let font = load().unwrap();
        let scale = scale_for_em(&font, 10.0);
        let text = "the quick brown fox jumps over the lazy dog again and again";
        let lines = wrap(&font, scale, text, 100.0); // 16 characters per line
        assert!(lines.len() > 1);
        for line in &lines {
            assert!(line.chars().count() <= 16, "{line:?}");
        }
        assert_eq!(lines.join(" "), text);
    }

    #[test]
    fn wrap_breaks_words_longer_than_a_line() {
        let font = load().unwrap();
        let scale = scale_for_em(&font, 10.0);
        let lines = wrap(&font, scale, "abcdefghijklmnopqrstuvwxyz", 60.0);
        assert_eq!(lines, ["abcdefghi", "jklmnopqr", "stuvwxyz"]);
        assert!(wrap(&font, scale, "   \n ", 60.0).is_empty());
    }
}
