//! Writing PNGs with text chunks, and reading them back: the annotated image says how it was
//! made (a `tEXt` `parameters` summary in the style AUTOMATIC1111 writes, and an `iTXt`
//! `dalleserver:provenance` JSON document), so a file that leaves the server still carries it.
//!
//! Written with the `png` crate directly (the `image` encoder cannot add text chunks), with
//! the settings the `image` encoder used before: fdeflate's `Fast` compression and adaptive
//! filtering. Chunks come in a fixed order before the image data, so the bytes stay a pure
//! function of the pixels and the texts.

use std::io::Cursor;

use image::RgbaImage;

use super::AnnotateError;

/// The `tEXt` keyword A1111-compatible readers look for.
pub const PARAMETERS_KEYWORD: &str = "parameters";
/// The `iTXt` keyword of the embedded provenance document.
pub const PROVENANCE_KEYWORD: &str = "dalleserver:provenance";

/// The texts a PNG carries (either may be absent when read from a foreign file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PngText {
    /// The A1111-style summary. `tEXt` is Latin-1: characters outside it are written as `?`
    /// (the provenance document keeps the exact text).
    pub parameters: Option<String>,
    /// The provenance JSON, UTF-8.
    pub provenance: Option<String>,
}

/// Encodes `image` as PNG with `text` (when given) before the image data. Fully opaque images
/// are written as RGB, a quarter smaller before compression.
pub fn encode_png_with_text(
    image: &RgbaImage,
    text: Option<&PngText>,
) -> Result<Vec<u8>, AnnotateError> {
    let (width, height) = image.dimensions();
    let mut buffer = Vec::new();
    let mut encoder = png::Encoder::new(&mut buffer, width, height);
    encoder.set_depth(png::BitDepth::Eight);
    // `Fast` (fdeflate) on a 1024² photo: same size as `Balanced` within 0.5 %, ~25× faster
    // (12 ms against 330 ms), so the annotate phase stays short.
    encoder.set_compression(png::Compression::Fast);
    encoder.set_filter(png::Filter::Adaptive);
    if let Some(text) = text {
        if let Some(parameters) = &text.parameters {
            encoder
                .add_text_chunk(PARAMETERS_KEYWORD.into(), latin1(parameters))
                .map_err(AnnotateError::Encode)?;
        }
        if let Some(provenance) = &text.provenance {
            encoder
                .add_itxt_chunk(PROVENANCE_KEYWORD.into(), provenance.clone())
                .map_err(AnnotateError::Encode)?;
        }
    }
    let opaque = image.pixels().all(|p| p.0[3] == u8::MAX);
    encoder.set_color(if opaque {
        png::ColorType::Rgb
    } else {
        png::ColorType::Rgba
    });
    let mut writer = encoder.write_header().map_err(AnnotateError::Encode)?;
    let written = if opaque {
        // A plain loop: `flat_map(..).collect()` here was slower than the PNG compression.
        let mut rgb = Vec::with_capacity(image.as_raw().len() / 4 * 3);
        for p in image.as_raw().chunks_exact(4) {
            rgb.extend_from_slice(p.get(..3).unwrap_or_default());
        }
        writer.write_image_data(&rgb)
    } else {
        writer.write_image_data(image.as_raw())
    };
    written.map_err(AnnotateError::Encode)?;
    writer.finish().map_err(AnnotateError::Encode)?;
    Ok(buffer)
}

/// Reads the two texts from a PNG's header chunks (the image data is not decoded).
pub fn read_text(png_bytes: &[u8]) -> Result<PngText, AnnotateError> {
    let reader = png::Decoder::new(Cursor::new(png_bytes))
        .read_info()
        .map_err(AnnotateError::Text)?;
    let info = reader.info();
    let parameters = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEYWORD)
        .map(|c| c.text.clone());
    let provenance = info
        .utf8_text
        .iter()
        .find(|c| c.keyword == PROVENANCE_KEYWORD)
        .map(|c| c.get_text())
        .transpose()
        .map_err(AnnotateError::Text)?;
    Ok(PngText {
        parameters,
        provenance,
    })
}

/// `text` with every character outside Latin-1 (and NUL, which ends a keyword) as `?`.
fn latin1(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '\0' || u32::from(c) > 0xff {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    fn picture(alpha: u8) -> RgbaImage {
        RgbaImage::from_fn(40, 30, |x, y| Rgba([x as u8 * 6, y as u8 * 8, 90, alpha]))
    }

    #[test]
    fn texts_round_trip_through_the_png_decoder() {
        let text = PngText {
            parameters: Some("a fox in the snow — ünïcode ✓\nModel: mock".into()),
            provenance: Some(r#"{"schema":1,"caption":"naïve ✓ café"}"#.into()),
        };
        for alpha in [255, 128] {
            let png = encode_png_with_text(&picture(alpha), Some(&text)).unwrap();
            let back = read_text(&png).unwrap();
            // Latin-1 survives in tEXt; the check mark and the dash do not.
            assert_eq!(
                back.parameters.as_deref(),
                Some("a fox in the snow ? ünïcode ?\nModel: mock")
            );
            assert_eq!(back.provenance, text.provenance);
            let decoded = image::load_from_memory(&png).unwrap().into_rgba8();
            assert_eq!(decoded, picture(alpha));
        }
    }

    #[test]
    fn the_bytes_are_a_function_of_pixels_and_texts() {
        let text = PngText {
            parameters: Some("p".into()),
            provenance: Some("{}".into()),
        };
        let a = encode_png_with_text(&picture(255), Some(&text)).unwrap();
        assert_eq!(a, encode_png_with_text(&picture(255), Some(&text)).unwrap());
        let other = PngText {
            provenance: Some("{ }".into()),
            ..text
        };
        assert_ne!(
            a,
            encode_png_with_text(&picture(255), Some(&other)).unwrap()
        );
        assert_eq!(
            read_text(&encode_png(&picture(255)).unwrap()).unwrap(),
            PngText::default()
        );
    }

    #[test]
    fn a_file_that_is_not_a_png_is_an_error() {
        assert!(matches!(read_text(b"GIF89a"), Err(AnnotateError::Text(_))));
    }

    use super::super::encode_png;
}
