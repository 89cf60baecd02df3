//! Caption annotation and the mock picture: the CPU work of one `/dalle` run after the image
//! arrives. Run with `cargo bench --bench annotate`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dalleserver::annotate::{annotate, annotate_png, encode_png, mock_png};

const ADDRESS: &str = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
const PALETTE: [[u8; 3]; 3] = [[0x46, 0x82, 0xb4], [0xf4, 0xa4, 0x60], [0x8b, 0x00, 0x00]];

/// A ~300-byte terse caption, the length the prompt templates produce.
const CAPTION: &str = "A weary lighthouse keeper, drawn in a faded risograph style, gazes across \
    a storm-dark harbour while gulls wheel above the broken pier; amber lamplight spills over wet \
    cobblestones, and the quiet scene hums with a stubborn, tender hope that the fishing boats \
    will come home before the turning tide.";

/// A 1024×1024 photo-like input: smooth gradients plus per-pixel variation, so the colour
/// count and the PNG encoder see something closer to a DALL·E image than flat tiles.
fn photo_like() -> image::RgbaImage {
    image::RgbaImage::from_fn(1024, 1024, |x, y| {
        let n = x
            .wrapping_mul(2_654_435_761)
            .wrapping_add(y.wrapping_mul(40_503))
            >> 28;
        image::Rgba([
            (x / 4) as u8 ^ n as u8,
            (y / 4) as u8,
            ((x + y) / 8) as u8 ^ (n as u8) << 1,
            255,
        ])
    })
}

fn bench(c: &mut Criterion) {
    let photo = photo_like();
    let Ok(photo_png) = encode_png(&photo) else {
        return;
    };
    c.bench_function("annotate 1024x1024 (pixels only)", |b| {
        b.iter(|| annotate(black_box(&photo), black_box(CAPTION)))
    });
    c.bench_function("annotate_png 1024x1024 (decode + annotate + encode)", |b| {
        b.iter(|| annotate_png(black_box(&photo_png), black_box(CAPTION)))
    });
    c.bench_function("mock_png 1024x1024", |b| {
        b.iter(|| mock_png(black_box(ADDRESS), black_box(PALETTE)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
