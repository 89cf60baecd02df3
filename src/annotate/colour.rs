//! Colour rules of the caption bar: the dominant-colour average that fills it, the darker
//! separator, and the black-or-white text choice by CIE L* lightness.

use image::RgbaImage;

/// How many of the most frequent colours are averaged into the bar colour (upstream: 3).
const DOMINANT_COLOURS: usize = 3;

/// The bar colour: the average of the three most frequent exact colours of `image`.
///
/// Every pixel is first composited over white, so (unlike upstream, which fails on any fully
/// transparent pixel) transparency is simply counted as the colour it shows on a white page.
/// Upstream breaks ties between equally frequent colours arbitrarily; here ties go to the
/// smaller packed `0xRRGGBB` value so the same image always gets the same bar.
pub fn bar_colour(image: &RgbaImage) -> [u8; 3] {
    // Sorting packed colours and counting runs is much faster than hashing a million pixels.
    let packed = radix_sort_24(image.pixels().map(|p| pack(over_white(p.0))).collect());

    // One pass keeping the best three (a photo has ~a million distinct colours, so sorting
    // the runs would cost more than everything else). Order: count descending, then colour
    // ascending — the deterministic tie-break. Runs arrive in ascending colour order, so a
    // later run only displaces an earlier one with a strictly higher count.
    let mut top: Vec<(usize, u32)> = Vec::with_capacity(DOMINANT_COLOURS + 1);
    for chunk in packed.chunk_by(|a, b| a == b) {
        let Some(&colour) = chunk.first() else {
            continue;
        };
        let count = chunk.len();
        if top.len() == DOMINANT_COLOURS && top.last().is_some_and(|&(c, _)| c >= count) {
            continue;
        }
        let at = top
            .iter()
            .position(|&(c, _)| c < count)
            .unwrap_or(top.len());
        top.insert(at, (count, colour));
        top.truncate(DOMINANT_COLOURS);
    }

    let top: Vec<[u8; 3]> = top.iter().map(|&(_, c)| unpack(c)).collect();
    average(&top)
}

/// The rounded per-channel mean of `colours` (white for none, which only an empty image gives).
fn average(colours: &[[u8; 3]]) -> [u8; 3] {
    let Ok(count) = u32::try_from(colours.len()) else {
        return [255; 3];
    };
    if count == 0 {
        return [255; 3];
    }
    let mut out = [0u8; 3];
    for (channel, slot) in out.iter_mut().enumerate() {
        let sum: u32 = colours.iter().map(|c| u32::from(c[channel])).sum();
        // Round half up, in integers so the result never depends on float formatting.
        *slot = u8::try_from((sum + count / 2) / count).unwrap_or(u8::MAX);
    }
    out
}

/// The separator colour: each channel darkened by 10 %, computed like upstream (16-bit channel
/// × 0.9, then back to 8 bits by a shift) so the line matches byte for byte.
pub fn darken(colour: [u8; 3]) -> [u8; 3] {
    colour.map(|c| {
        let wide = u32::from(c) * 257 * 9 / 10;
        u8::try_from(wide >> 8).unwrap_or(u8::MAX)
    })
}

/// CIE L* (0–100, D65) of an sRGB colour.
pub fn lightness(colour: [u8; 3]) -> f64 {
    let [r, g, b] = colour.map(|c| srgb_to_linear(f64::from(c) / 255.0));
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let delta: f64 = 6.0 / 29.0;
    let f = if y > delta.powi(3) {
        y.cbrt()
    } else {
        y / (3.0 * delta * delta) + 4.0 / 29.0
    };
    116.0 * f - 16.0
}

/// The sRGB transfer function, inverted (IEC 61966-2-1).
fn srgb_to_linear(v: f64) -> f64 {
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

/// Black text on a light bar, white text on a dark one (L* below 50, as upstream).
pub fn text_colour(bar: [u8; 3]) -> [u8; 3] {
    if lightness(bar) < 50.0 {
        [255; 3]
    } else {
        [0; 3]
    }
}

/// Parses `#rrggbb` (case-insensitive) into RGB; anything else is `None`.
pub fn parse_hex_color(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let channel = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    Some([channel(0)?, channel(2)?, channel(4)?])
}

/// Composites one RGBA pixel over opaque white.
pub fn over_white(p: [u8; 4]) -> [u8; 3] {
    if p[3] == u8::MAX {
        return [p[0], p[1], p[2]]; // the common case, kept free of arithmetic
    }
    let alpha = u32::from(p[3]);
    let mix = |c: u8| {
        let v = (u32::from(c) * alpha + 255 * (255 - alpha) + 127) / 255;
        u8::try_from(v).unwrap_or(u8::MAX)
    };
    [mix(p[0]), mix(p[1]), mix(p[2])]
}

/// Sorts 24-bit keys with three 8-bit LSD radix passes: linear time, several times faster than
/// a comparison sort on a 1024×1024 image. One read of the keys counts all three digits; the
/// bucket offsets are indexed by a `u8`, so the scatter loops carry no bounds checks on them.
fn radix_sort_24(mut keys: Vec<u32>) -> Vec<u32> {
    let mut counts = [[0usize; 256]; 3];
    for &k in &keys {
        let [_, high, mid, low] = k.to_be_bytes();
        counts[0][usize::from(low)] += 1;
        counts[1][usize::from(mid)] += 1;
        counts[2][usize::from(high)] += 1;
    }
    let mut scratch = vec![0u32; keys.len()];
    for (pass, count) in counts.iter().enumerate() {
        // A digit every key shares (common in pictures with few hues) needs no pass.
        if count.contains(&keys.len()) {
            continue;
        }
        let mut offsets = [0usize; 256];
        let mut total = 0;
        for (offset, &n) in offsets.iter_mut().zip(count) {
            *offset = total;
            total += n;
        }
        let shift = 8 * pass;
        for &k in &keys {
            let digit = usize::from((k >> shift) as u8);
            let offset = &mut offsets[digit];
            if let Some(slot) = scratch.get_mut(*offset) {
                *slot = k;
            }
            *offset += 1;
        }
        std::mem::swap(&mut keys, &mut scratch);
    }
    keys
}

fn pack(c: [u8; 3]) -> u32 {
    (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2])
}

fn unpack(v: u32) -> [u8; 3] {
    let [_, r, g, b] = v.to_be_bytes();
    [r, g, b]
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    /// An image with `counts[i]` pixels of `colours[i]`, in one row.
    fn strip(parts: &[([u8; 3], u32)]) -> RgbaImage {
        let width: u32 = parts.iter().map(|p| p.1).sum();
        let mut img = RgbaImage::new(width, 1);
        let mut x = 0;
        for &(c, n) in parts {
            for _ in 0..n {
                img.put_pixel(x, 0, Rgba([c[0], c[1], c[2], 255]));
                x += 1;
            }
        }
        img
    }

    #[test]
    fn bar_colour_averages_the_three_most_frequent() {
        let img = strip(&[
            ([255, 0, 0], 10),
            ([0, 255, 0], 9),
            ([0, 0, 255], 8),
            ([255, 255, 255], 7),
        ]);
        assert_eq!(bar_colour(&img), [85, 85, 85]);
    }

    #[test]
    fn bar_colour_breaks_ties_by_smallest_colour_whatever_the_pixel_order() {
        // Four colours, all equally frequent: the three smallest values win.
        let a = ([200, 0, 0], 5);
        let b = ([0, 200, 0], 5);
        let c = ([0, 0, 200], 5);
        let d = ([0, 0, 100], 5);
        let one = bar_colour(&strip(&[a, b, c, d]));
        let two = bar_colour(&strip(&[c, a, d, b]));
        assert_eq!(one, two);
        // Winners: 0x000064, 0x0000c8, 0x00c800.
        assert_eq!(one, [0, 67, 100]);
    }

    #[test]
    fn bar_colour_of_fewer_than_three_colours_and_of_transparency() {
        assert_eq!(bar_colour(&strip(&[([10, 20, 30], 4)])), [10, 20, 30]);
        let clear = RgbaImage::from_pixel(4, 4, Rgba([0, 0, 0, 0]));
        assert_eq!(bar_colour(&clear), [255, 255, 255]);
    }

    #[test]
    fn radix_sort_sorts() {
        let keys = vec![0xff_00_01, 3, 0x01_00_00, 0x00_ff_00, 3, 0, 0xff_ff_ff];
        let mut expected = keys.clone();
        expected.sort_unstable();
        assert_eq!(radix_sort_24(keys), expected);
        // Shared digits (skipped passes), one key, none, and a pseudo-random million.
        let shared: Vec<u32> = (0..300).rev().map(|i| 0x12_00_00 | (i * 7 % 256)).collect();
        let mut expected = shared.clone();
        expected.sort_unstable();
        assert_eq!(radix_sort_24(shared), expected);
        assert_eq!(radix_sort_24(vec![5]), [5]);
        assert!(radix_sort_24(Vec::new()).is_empty());
        let many: Vec<u32> = (0u32..1 << 20)
            .map(|i| i.wrapping_mul(2_654_435_761) >> 8)
            .collect();
        let mut expected = many.clone();
        expected.sort_unstable();
        assert_eq!(radix_sort_24(many), expected);
    }

    #[test]
    fn darken_matches_upstream_arithmetic() {
        assert_eq!(darken([255, 100, 0]), [230, 90, 0]);
    }

    #[test]
    fn text_is_black_on_light_and_white_on_dark() {
        assert_eq!(text_colour([240, 230, 200]), [0, 0, 0]);
        assert_eq!(text_colour([255, 255, 0]), [0, 0, 0]);
        assert_eq!(text_colour([20, 30, 60]), [255, 255, 255]);
        assert_eq!(text_colour([0, 0, 255]), [255, 255, 255]);
        // Mid grey #777777 has L* ≈ 50.0; #767676 is just below it.
        assert_eq!(text_colour([0x76; 3]), [255, 255, 255]);
        assert!((lightness([255; 3]) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn parse_hex_color_accepts_only_hash_rrggbb() {
        assert_eq!(parse_hex_color("#1a2B3c"), Some([0x1a, 0x2b, 0x3c]));
        assert_eq!(parse_hex_color("1a2b3c"), None);
        assert_eq!(parse_hex_color("#1a2b3"), None);
        assert_eq!(parse_hex_color("#1a2b3g"), None);
        assert_eq!(parse_hex_color("#ééé"), None);
    }
}
