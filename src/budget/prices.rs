//! What one image costs: a built-in table of OpenAI's per-image prices by model, size and
//! quality, which a JSON file (`--prices`) can override entry by entry.
//!
//! The book's budgets page gives the table's source and date. Only the per-image output price
//! is counted: the prompt's text tokens (a few hundred, fractions of a cent) are not.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::openai::image_params;

/// A price in millionths of a US dollar: integer sums, so a cap of exactly N images admits
/// exactly N.
pub type Micros = u64;

/// Micro-dollars per dollar.
pub const MICROS_PER_USD: f64 = 1_000_000.0;

/// Dollars as micro-dollars (negative and non-finite amounts are 0).
pub fn micros(usd: f64) -> Micros {
    if usd.is_finite() && usd > 0.0 {
        (usd * MICROS_PER_USD).round() as Micros
    } else {
        0
    }
}

/// Micro-dollars as dollars.
pub fn usd(micros: Micros) -> f64 {
    micros as f64 / MICROS_PER_USD
}

/// When the built-in table was copied from OpenAI's pricing page.
pub const TABLE_DATE: &str = "2026-12-07";

/// `(model, size, quality, USD)`. `quality` is `""` where the model has none (dall-e-2).
/// `gpt-image-2` (the default model) is priced as `gpt-image-1`, the highest-priced GPT Image
/// model, until an operator's `--prices` file says otherwise.
const BUILT_IN: &[(&str, &str, &str, f64)] = &[
    ("dall-e-2", "256x256", "", 0.016),
    ("dall-e-2", "512x512", "", 0.018),
    ("dall-e-2", "1024x1024", "", 0.020),
    ("dall-e-3", "1024x1024", "standard", 0.040),
    ("dall-e-3", "1024x1792", "standard", 0.080),
    ("dall-e-3", "1792x1024", "standard", 0.080),
    ("dall-e-3", "1024x1024", "hd", 0.080),
    ("dall-e-3", "1024x1792", "hd", 0.120),
    ("dall-e-3", "1792x1024", "hd", 0.120),
    ("gpt-image-1", "1024x1024", "low", 0.011),
    ("gpt-image-1", "1024x1536", "low", 0.016),
    ("gpt-image-1", "1536x1024", "low", 0.016),
    ("gpt-image-1", "1024x1024", "medium", 0.042),
    ("gpt-image-1", "1024x1536", "medium", 0.063),
    ("gpt-image-1", "1536x1024", "medium", 0.063),
    ("gpt-image-1", "1024x1024", "high", 0.167),
    ("gpt-image-1", "1024x1536", "high", 0.250),
    ("gpt-image-1", "1536x1024", "high", 0.250),
    ("gpt-image-1-mini", "1024x1024", "low", 0.005),
    ("gpt-image-1-mini", "1024x1536", "low", 0.006),
    ("gpt-image-1-mini", "1536x1024", "low", 0.006),
    ("gpt-image-1-mini", "1024x1024", "medium", 0.011),
    ("gpt-image-1-mini", "1024x1536", "medium", 0.015),
    ("gpt-image-1-mini", "1536x1024", "medium", 0.015),
    ("gpt-image-1-mini", "1024x1024", "high", 0.036),
    ("gpt-image-1-mini", "1024x1536", "high", 0.052),
    ("gpt-image-1-mini", "1536x1024", "high", 0.052),
    ("gpt-image-1.5", "1024x1024", "low", 0.009),
    ("gpt-image-1.5", "1024x1536", "low", 0.013),
    ("gpt-image-1.5", "1536x1024", "low", 0.013),
    ("gpt-image-1.5", "1024x1024", "medium", 0.034),
    ("gpt-image-1.5", "1024x1536", "medium", 0.050),
    ("gpt-image-1.5", "1536x1024", "medium", 0.050),
    ("gpt-image-1.5", "1024x1024", "high", 0.133),
    ("gpt-image-1.5", "1024x1536", "high", 0.200),
    ("gpt-image-1.5", "1536x1024", "high", 0.200),
    ("gpt-image-2", "1024x1024", "low", 0.011),
    ("gpt-image-2", "1024x1536", "low", 0.016),
    ("gpt-image-2", "1536x1024", "low", 0.016),
    ("gpt-image-2", "1024x1024", "medium", 0.042),
    ("gpt-image-2", "1024x1536", "medium", 0.063),
    ("gpt-image-2", "1536x1024", "medium", 0.063),
    ("gpt-image-2", "1024x1024", "high", 0.167),
    ("gpt-image-2", "1024x1536", "high", 0.250),
    ("gpt-image-2", "1536x1024", "high", 0.250),
];

type Entry = (String, String, String);

/// The price table in use.
#[derive(Debug, Clone)]
pub struct Prices {
    table: BTreeMap<Entry, Micros>,
}

/// A `--prices` file that cannot be used; the text names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the prices file {path}: {reason}")]
pub struct PricesError {
    pub path: String,
    pub reason: String,
}

/// One row of a `--prices` file.
#[derive(Debug, Deserialize)]
struct Row {
    model: String,
    size: String,
    #[serde(default)]
    quality: Option<String>,
    usd: f64,
}

#[derive(Debug, Deserialize)]
struct File {
    prices: Vec<Row>,
}

impl Default for Prices {
    fn default() -> Self {
        Prices::built_in()
    }
}

impl Prices {
    /// OpenAI's published prices (see [`TABLE_DATE`]).
    pub fn built_in() -> Prices {
        let table = BUILT_IN
            .iter()
            .map(|(m, s, q, usd)| ((m.to_string(), s.to_string(), q.to_string()), micros(*usd)))
            .collect();
        Prices { table }
    }

    /// The built-in table with every row of the JSON file at `path` replacing (or adding) its
    /// entry: `{"prices": [{"model": "…", "size": "1024x1024", "quality": "high", "usd": 0.17}]}`.
    pub fn with_file(path: &Path) -> Result<Prices, PricesError> {
        let fail = |reason: String| PricesError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let file: File = serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))?;
        let mut prices = Prices::built_in();
        for (n, row) in file.prices.into_iter().enumerate() {
            if !row.usd.is_finite() || row.usd < 0.0 {
                return Err(fail(format!(
                    "entry {}: usd must be a non-negative number",
                    n + 1
                )));
            }
            prices.table.insert(
                (row.model, row.size, row.quality.unwrap_or_default()),
                micros(row.usd),
            );
        }
        Ok(prices)
    }

    fn lookup(&self, model: &str, size: &str, quality: &str) -> Option<Micros> {
        self.table
            .get(&(model.to_string(), size.to_string(), quality.to_string()))
            .copied()
    }

    /// The highest price listed for `model`, or for any model when it has none: what an
    /// image is counted at when its exact size and quality are not in the table (an unknown
    /// model lets the server choose), so a cap is never undercounted.
    fn ceiling(&self, model: &str) -> Micros {
        let of_model = self
            .table
            .iter()
            .filter(|((m, _, _), _)| m == model)
            .map(|(_, p)| *p)
            .max();
        of_model.unwrap_or_else(|| self.table.values().copied().max().unwrap_or(0))
    }

    /// The price of the image request `model` sends for a prompt whose orientation text is
    /// `orientation_text` (the size and quality [`image_params`] picks).
    pub fn image(&self, model: &str, orientation_text: &str) -> Micros {
        let params = image_params(model, orientation_text);
        match params.size {
            Some(size) => self
                .lookup(model, size, params.quality.unwrap_or(""))
                .unwrap_or_else(|| self.ceiling(model)),
            None => self.ceiling(model),
        }
    }

    /// What a run is reserved at before its prompt is known: the dearest of the sizes its
    /// model may be asked for (the orientation comes from the enhanced prompt, later).
    pub fn estimate(&self, model: &str) -> Micros {
        ["landscape", "portrait", "square"]
            .iter()
            .map(|text| self.image(model, text))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_priced_by_model_size_and_quality() {
        let p = Prices::built_in();
        assert_eq!(p.image("dall-e-3", "a landscape"), 120_000);
        assert_eq!(p.image("dall-e-3", "a cat"), 80_000);
        assert_eq!(p.image("dall-e-2", "a cat"), 20_000);
        assert_eq!(p.image("gpt-image-1", "a cat"), 167_000);
        assert_eq!(p.image("gpt-image-1-mini", "portrait"), 5_000);
        assert_eq!(p.estimate("gpt-image-1"), 250_000);
        assert_eq!(p.estimate("dall-e-2"), 20_000);
        // An unknown model is counted at the dearest price of the table.
        assert_eq!(p.estimate("flux-9"), 250_000);
    }

    #[test]
    fn a_prices_file_overrides_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.json");
        std::fs::write(
            &path,
            r#"{"prices":[{"model":"dall-e-2","size":"1024x1024","usd":0.5},
                {"model":"flux-9","size":"any","quality":"x","usd":0.001}]}"#,
        )
        .unwrap();
        let p = Prices::with_file(&path).unwrap();
        assert_eq!(p.image("dall-e-2", "a cat"), 500_000);
        assert_eq!(p.estimate("flux-9"), 1_000);
        assert_eq!(p.image("dall-e-3", "a cat"), 80_000);
        std::fs::write(&path, r#"{"prices":[{"model":"m","size":"s","usd":-1}]}"#).unwrap();
        let err = Prices::with_file(&path).unwrap_err().to_string();
        assert!(err.contains("entry 1"), "{err}");
        assert!(Prices::with_file(&dir.path().join("missing")).is_err());
    }
}
