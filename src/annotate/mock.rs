//! The mock-mode picture: with no OpenAI key (or `TB_DALLE_SKIP_IMAGE=1`) the pipeline still
//! needs a real image to annotate and serve, so we paint a deterministic 1024×1024
//! Bauhaus-style tile poster from the address and the dress's three colours.
//!
//! Upstream writes a 0-byte PNG here; a picture makes the gallery usable in demos and
//! exercises the real annotation path.

use image::{Rgba, RgbaImage};

use super::{AnnotateError, encode_png};

/// Side of the mock picture, the size DALL·E returns by default.
const SIZE: u32 = 1024;
/// Width of the frame around the tile grid.
const FRAME: u32 = 32;
/// Side of the tile grid inside the frame.
const INNER: u32 = SIZE - 2 * FRAME;

/// A deterministic 1024×1024 PNG for `key` (an address) in the colours of `palette`.
pub fn mock_png(key: &str, palette: [[u8; 3]; 3]) -> Result<Vec<u8>, AnnotateError> {
    encode_png(&mock_image(key, palette))
}

/// The picture itself; same inputs → same pixels, different keys → a different layout.
pub fn mock_image(key: &str, palette: [[u8; 3]; 3]) -> RgbaImage {
    let mut rng = Rng::from_key(key);
    let [c1, c2, c3] = palette.map(to_f32);
    let mean = [0, 1, 2].map(|i| (c1[i] + c2[i] + c3[i]) / 3.0);
    let darkest = [c1, c2, c3]
        .into_iter()
        .fold(c1, |a, b| if luma(b) < luma(a) { b } else { a });
    // Two neutrals tinted by the palette make any three colours look like a designed set.
    let colours = [
        c1,
        c2,
        c3,
        mix(mean, [250.0, 245.0, 235.0], 0.85),
        mix(darkest, [0.0; 3], 0.65),
    ];

    // Grid of 4, 5 or 6 tiles per side (960 divides by each), plus one 2×2 feature tile.
    let grid = [4, 5, 6][rng.below(3)];
    let tile = INNER / grid;
    let big = (
        rng.below(grid as usize - 1) as u32,
        rng.below(grid as usize - 1) as u32,
    );
    let tiles: Vec<Tile> = (0..grid * grid)
        .map(|_| Tile::random(&mut rng, &colours, false))
        .collect();
    let feature = Tile::random(&mut rng, &colours, true);
    let frame_from = mix(colours[rng.below(3)], [255.0; 3], 0.75);
    let frame_to = mix(colours[rng.below(3)], [255.0; 3], 0.55);

    RgbaImage::from_fn(SIZE, SIZE, |x, y| {
        let inside = (FRAME..FRAME + INNER).contains(&x) && (FRAME..FRAME + INNER).contains(&y);
        if !inside {
            let t = (x + y) as f32 / (2 * SIZE) as f32;
            return rgba(mix(frame_from, frame_to, t));
        }
        let (gx, gy) = ((x - FRAME) / tile, (y - FRAME) / tile);
        let (gx, gy) = (gx.min(grid - 1), gy.min(grid - 1));
        let in_big = (big.0..=big.0 + 1).contains(&gx) && (big.1..=big.1 + 1).contains(&gy);
        let (t, ox, oy, side) = if in_big {
            (&feature, big.0 * tile, big.1 * tile, 2 * tile)
        } else {
            let t = tiles.get((gy * grid + gx) as usize).unwrap_or(&feature);
            (t, gx * tile, gy * tile, tile)
        };
        let u = (x - FRAME - ox) as f32 + 0.5;
        let v = (y - FRAME - oy) as f32 + 0.5;
        rgba(t.shade(u, v, side as f32))
    })
}

/// One square of the poster: a background, a foreground shape and its rotation.
#[derive(Debug)]
struct Tile {
    bg: [f32; 3],
    fg: [f32; 3],
    motif: usize,
    turn: usize,
}

impl Tile {
    fn random(rng: &mut Rng, colours: &[[f32; 3]; 5], feature: bool) -> Self {
        let bg_i = rng.below(colours.len());
        let mut fg_i = (bg_i + 1 + rng.below(colours.len() - 1)) % colours.len();
        // Never draw a shape that disappears into its background: take the most distant colour.
        if distance(colours[bg_i], colours[fg_i]) < 80.0 {
            fg_i = (0..colours.len())
                .max_by(|&a, &b| {
                    distance(colours[bg_i], colours[a])
                        .total_cmp(&distance(colours[bg_i], colours[b]))
                })
                .unwrap_or(fg_i);
        }
        // The big tile gets one of the bold round motifs.
        let motif = if feature {
            [0, 2, 3, 6][rng.below(4)]
        } else {
            rng.below(MOTIFS)
        };
        Self {
            bg: colours[bg_i],
            fg: colours[fg_i],
            motif,
            turn: rng.below(4),
        }
    }

    /// Colour at tile-local pixel centre (u, v) of a tile of side `s`.
    fn shade(&self, u: f32, v: f32, s: f32) -> [f32; 3] {
        let (u, v) = match self.turn {
            1 => (s - v, u),
            2 => (s - u, s - v),
            3 => (v, s - u),
            _ => (u, v),
        };
        let d = motif_distance(self.motif, u, v, s);
        // Signed distance → one pixel of antialiasing.
        let coverage = (0.5 - d).clamp(0.0, 1.0);
        // A faint light-to-dark fall-off across each tile gives the flat colours some depth.
        let light = 1.04 - 0.1 * (u + v) / (2.0 * s);
        mix(self.bg, self.fg, coverage).map(|c| c * light)
    }
}

/// Number of motifs `motif_distance` knows.
const MOTIFS: usize = 8;

/// Signed distance (pixels, negative inside) from (u, v) to motif `m` in a tile of side `s`.
fn motif_distance(m: usize, u: f32, v: f32, s: f32) -> f32 {
    // sqrt, not hypot: IEEE-exact everywhere (libm hypot differs between platforms) and faster.
    let circle = |cx: f32, cy: f32, r: f32| ((u - cx).powi(2) + (v - cy).powi(2)).sqrt() - r;
    match m {
        0 => circle(0.0, 0.0, s),                // quarter disc from a corner
        1 => circle(s / 2.0, 0.0, s / 2.0),      // half disc on an edge
        2 => circle(s / 2.0, s / 2.0, 0.36 * s), // disc
        3 => (circle(s / 2.0, s / 2.0, 0.3 * s)).abs() - 0.1 * s, // ring
        4 => (u + v - s) / std::f32::consts::SQRT_2, // diagonal half
        5 => {
            // Three stripes.
            let period = s / 3.0;
            ((v % period) - period / 2.0).abs() - period / 4.0
        }
        6 => circle(0.0, 0.0, s).max(circle(s, s, s)), // leaf: two quarter discs intersected
        _ => {
            // Four dots.
            let cx = if u < s / 2.0 { s / 4.0 } else { 0.75 * s };
            let cy = if v < s / 2.0 { s / 4.0 } else { 0.75 * s };
            circle(cx, cy, 0.16 * s)
        }
    }
}

/// SplitMix64 seeded with FNV-1a of the lower-cased key: a tiny, dependency-free stream that
/// is identical on every platform, so the same address always paints the same picture.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn from_key(key: &str) -> Self {
        let hash = key
            .bytes()
            .map(|b| b.to_ascii_lowercase())
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        Self(hash)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough integer in `0..n` (`n` > 0; tiny n, so modulo bias is irrelevant).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn to_f32(c: [u8; 3]) -> [f32; 3] {
    c.map(f32::from)
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [0, 1, 2].map(|i| a[i] + (b[i] - a[i]) * t)
}

fn luma(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    [0, 1, 2]
        .map(|i| (a[i] - b[i]).powi(2))
        .iter()
        .sum::<f32>()
        .sqrt()
}

fn rgba(c: [f32; 3]) -> Rgba<u8> {
    // `+ 0.5` then a saturating `as` rounds (values are ≥ 0) without a libm `roundf` call,
    // which x86-64 without SSE4.1 cannot inline — it was a third of the run time.
    let [r, g, b] = c.map(|v| (v + 0.5) as u8);
    Rgba([r, g, b, u8::MAX])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PALETTE: [[u8; 3]; 3] = [[0x2e, 0x8b, 0x57], [0xff, 0xd7, 0x00], [0x6a, 0x5a, 0xcd]];

    #[test]
    fn mock_png_is_deterministic_and_1024_square() {
        let key = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
        let a = mock_png(key, PALETTE).unwrap();
        let b = mock_png(key, PALETTE).unwrap();
        assert_eq!(a, b);
        let decoded = image::load_from_memory(&a).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (SIZE, SIZE));
    }

    #[test]
    fn different_addresses_give_visibly_different_pictures() {
        let a = mock_image("0xf503017d7baf7fbc0fff7492b751025c6a78179b", PALETTE);
        let b = mock_image("0x0000000000000000000000000000000000000001", PALETTE);
        let differing = a.pixels().zip(b.pixels()).filter(|(p, q)| p != q).count();
        // "Visibly": a large share of the picture changes, not a few pixels.
        assert!(differing > (SIZE * SIZE / 4) as usize, "{differing}");
    }

    #[test]
    fn the_palette_shows_up_in_the_picture() {
        let img = mock_image("0xabc", [[255, 0, 0], [0, 0, 255], [0, 255, 0]]);
        let reddish = img
            .pixels()
            .filter(|p| p.0[0] > 200 && p.0[1] < 60 && p.0[2] < 60)
            .count();
        assert!(reddish > 0);
    }
}
