//! The DalleDress: the selected attributes of one address or seed, with the Go library's JSON
//! shape and the accessors that the prompt templates read.

use serde::Serialize;

/// One selected attribute (`backStyle` has zero numbers).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attribute {
    pub database: String,
    pub name: String,
    /// The six hex characters of the seed window.
    pub bytes: String,
    pub number: u64,
    pub factor: f64,
    pub count: usize,
    pub selector: usize,
    /// The selected record (comma-joined fields).
    pub value: String,
}

/// Everything derived from one input; key set and order as upstream.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DalleDress {
    pub original: String,
    pub original_name: String,
    pub file_name: String,
    pub file_size: i64,
    pub modified_at: i64,
    /// The extended seed (64 characters for an address, 128 for an engine seed).
    pub seed: String,
    pub prompt: String,
    pub data_prompt: String,
    pub title_prompt: String,
    pub terse_prompt: String,
    pub enhanced_prompt: String,
    #[serde(rename = "attributes")]
    pub attribs: Vec<Attribute>,
    pub seed_chunks: Vec<String>,
    pub selected_tokens: Vec<String>,
    pub selected_records: Vec<String>,
    #[serde(rename = "imageUrl")]
    pub image_url: String,
    pub generated_path: String,
    pub annotated_path: String,
    pub download_mode: String,
    pub ipfs_hash: String,
    pub cache_hit: bool,
    pub completed: bool,
    pub series: String,
    pub color_limit: String,
}

/// The five ways two art styles are fused, by mixing level 1–5 (our wording).
fn fusion(level: u64, a: &str, b: &str) -> String {
    match level {
        1 => format!("in the style of {a}, with only a faint echo of {b}"),
        2 => format!("in the style of {a}, lightly touched by {b}"),
        3 => format!("in the style of {a}, as painted by an artist trained in {b}"),
        4 => format!("as a bold fusion of {a} and {b}, with {a} taking the lead"),
        _ => format!("blending {a} and {b} as equal partners"),
    }
}

/// "a" or "an" for the word that follows.
pub fn article(next: &str) -> &'static str {
    match next
        .trim_start()
        .chars()
        .next()
        .map(|c| c.to_ascii_lowercase())
    {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

impl DalleDress {
    /// The selected record for an attribute name; "" when it was not selected.
    pub fn value(&self, name: &str) -> &str {
        self.attribs
            .iter()
            .find(|a| a.name == name)
            .map_or("", |a| a.value.as_str())
    }

    fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attribs.iter().find(|a| a.name == name)
    }

    fn parts(&self, name: &str) -> Vec<&str> {
        self.value(name).split(',').collect()
    }

    fn field(&self, name: &str, i: usize) -> &str {
        self.value(name).split(',').nth(i).unwrap_or("")
    }

    fn meaning(&self, name: &str, long: bool) -> String {
        let p = self.parts(name);
        if long && p.len() >= 2 {
            format!("{}, meaning {}", p[0], p[1])
        } else {
            p[0].to_string()
        }
    }

    /// The adverb; long adds its meaning.
    pub fn adverb(&self, long: bool) -> String {
        self.meaning("adverb", long)
    }

    /// The adjective; long adds its meaning.
    pub fn adjective(&self, long: bool) -> String {
        self.meaning("adjective", long)
    }

    /// The action; long adds its meaning.
    pub fn action(&self, long: bool) -> String {
        self.meaning("action", long)
    }

    /// The noun's common name (the long form equals the short one, as upstream).
    pub fn noun(&self, _long: bool) -> String {
        self.field("noun", 0).to_string()
    }

    /// The noun's family, order, class and phylum common names, where known.
    pub fn noun_lineage(&self) -> Vec<&str> {
        self.parts("noun")
            .into_iter()
            .skip(1)
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// The emotion; long adds its description.
    pub fn emotion(&self, long: bool) -> String {
        let p = self.parts("emotion");
        if long && p.len() >= 5 {
            format!("{}, {}", p[0], p[4])
        } else {
            p[0].to_string()
        }
    }

    /// The emotion's group (e.g. `longing`).
    pub fn emotion_group(&self) -> &str {
        self.field("emotion", 1)
    }

    /// The emotion's polarity (`positive`, `negative`, `neutral`).
    pub fn emotion_polarity(&self) -> &str {
        self.field("emotion", 2)
    }

    /// The occupation; `none` → "". Long is " who works as a … who …" with its leading space.
    pub fn occupation(&self, long: bool) -> String {
        let p = self.parts("occupation");
        if p[0] == "none" || p[0].is_empty() {
            return String::new();
        }
        if long && p.len() >= 2 {
            format!(" who works as {} {} who {}", article(p[0]), p[0], p[1])
        } else {
            p[0].to_string()
        }
    }

    /// Art style 1 or 2; long adds its description.
    pub fn art_style(&self, long: bool, n: u8) -> String {
        let name = if n == 1 { "artStyle1" } else { "artStyle2" };
        let p = self.parts(name);
        if long && p.len() >= 4 {
            format!("{}, which {}", p[0], p[3])
        } else {
            p[0].to_string()
        }
    }

    /// The literary style; `none` → "".
    pub fn lit_style(&self, long: bool) -> String {
        let p = self.parts("litStyle");
        if !self.has_lit_style() {
            return String::new();
        }
        if long && p.len() >= 2 {
            format!("{}, which {}", p[0], p[1])
        } else {
            p[0].to_string()
        }
    }

    /// True when a literary style was selected.
    pub fn has_lit_style(&self) -> bool {
        let v = self.value("litStyle");
        !v.is_empty() && v != "none"
    }

    /// The literary style's description.
    pub fn lit_style_descr(&self) -> &str {
        self.field("litStyle", 1)
    }

    /// Colour 1–3: short is the hex (or the name when there is none), long `#hex (name)`.
    pub fn color(&self, long: bool, n: u8) -> String {
        let name = match n {
            1 => "color1",
            2 => "color2",
            _ => "color3",
        };
        let p = self.parts(name);
        let short = if p.len() >= 2 { p[1] } else { p[0] };
        if long && p.len() >= 2 {
            format!("{} ({})", p[1], p[0])
        } else {
            short.to_string()
        }
    }

    /// How the palette should be used, given the colours and the series' colour limit.
    pub fn color_directive(&self) -> String {
        let (c1, c2) = (self.color(false, 1), self.color(false, 2));
        if c1 == "none" || c2 == "none" {
            "Choose whatever palette best serves the style.".to_string()
        } else if self.color_limit.trim().is_empty() {
            format!(
                "Let {} and {} dominate the palette, while using the full range of colour.",
                self.color(true, 1),
                self.color(true, 2)
            )
        } else {
            format!(
                "Restrict the image to {} colours derived from {} and {}, and no others.",
                self.color_limit.trim(),
                self.color(true, 1),
                self.color(true, 2)
            )
        }
    }

    /// The viewpoint; long is a sentence orienting the scene and the subject's gaze.
    pub fn viewpoint(&self, long: bool) -> String {
        if !long {
            return self.field("viewpoint", 0).to_string();
        }
        format!(
            "Frame the scene from {}, with the {} facing {}.",
            self.value("viewpoint").replace(',', " and "),
            self.noun(false),
            self.gaze(false)
        )
    }

    /// The composition; long is a sentence asking the subject to follow it.
    pub fn composition(&self, long: bool) -> String {
        if !long {
            return self.field("composition", 0).to_string();
        }
        format!(
            "Build the picture on {}, and let the {} follow that structure.",
            self.value("composition").replace(',', " and "),
            self.noun(false)
        )
    }

    /// Where the subject looks.
    pub fn gaze(&self, long: bool) -> String {
        if long {
            self.value("gaze").replace(',', ", ")
        } else {
            self.field("gaze", 0).to_string()
        }
    }

    /// The background instruction with its colour and art-style placeholders filled in.
    pub fn back_style(&self) -> String {
        self.value("backStyle")
            .replace("[{Color3}]", &self.color(false, 3))
            .replace("[{ArtStyle2}]", &self.art_style(true, 2))
    }

    /// The place (`place, region, country`); "" for addresses, which select only 15 attributes.
    pub fn place(&self, long: bool) -> String {
        let p = self.parts("place");
        if long && p.len() >= 3 {
            p[..3].join(", ")
        } else {
            p[0].to_string()
        }
    }

    /// The narrative trope with its description.
    pub fn trope(&self, long: bool) -> String {
        let p = self.parts("trope");
        if long && p.len() >= 3 {
            format!("{}, {}", p[0], p[2])
        } else {
            p[0].to_string()
        }
    }

    /// How strongly art style 2 mixes into art style 1: 1–5.
    pub fn mixing_level(&self) -> u64 {
        self.attribute("artStyle2").map_or(1, |a| a.number % 5 + 1)
    }

    /// The style sentence fragment: one style, or a fusion of both by mixing level.
    pub fn style_directive(&self) -> String {
        let a = self.art_style(true, 1);
        if self.art_style(false, 1) == self.art_style(false, 2) {
            return format!("in the style of {a}");
        }
        fusion(self.mixing_level(), &a, &self.art_style(true, 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(name: &str, number: u64, value: &str) -> Attribute {
        Attribute {
            database: String::new(),
            name: name.into(),
            bytes: String::new(),
            number,
            factor: 0.0,
            count: 1,
            selector: 0,
            value: value.into(),
        }
    }

    fn dress() -> DalleDress {
        DalleDress {
            attribs: vec![
                attr("adverb", 0, "gently,in a soft way"),
                attr("noun", 0, "otter,weasels,carnivorans,mammals,chordates"),
                attr(
                    "emotion",
                    0,
                    "saudade,longing,negative,portuguese,a bittersweet yearning",
                ),
                attr("occupation", 0, "archivist,keeps old records safe"),
                attr("artStyle1", 0, "art nouveau,modern,,uses flowing lines"),
                attr(
                    "artStyle2",
                    6,
                    "ukiyo-e,east asian,,prints the floating world",
                ),
                attr("litStyle", 0, "none"),
                attr("color1", 0, "tomato,#ff6347"),
                attr("color2", 0, "teal,#008080"),
                attr("color3", 0, "ivory,#fffff0"),
                attr("viewpoint", 0, "low angle,basic,looking up"),
                attr("gaze", 0, "to the left"),
                attr("backStyle", 0, "Paint [{Color3}] behind in [{ArtStyle2}]."),
            ],
            ..DalleDress::default()
        }
    }

    #[test]
    fn long_and_short_forms() {
        let d = dress();
        assert_eq!(d.adverb(true), "gently, meaning in a soft way");
        assert_eq!(d.adverb(false), "gently");
        assert_eq!(d.noun(true), "otter");
        assert_eq!(
            d.noun_lineage(),
            ["weasels", "carnivorans", "mammals", "chordates"]
        );
        assert_eq!(d.emotion(true), "saudade, a bittersweet yearning");
        assert_eq!(
            (d.emotion_group(), d.emotion_polarity()),
            ("longing", "negative")
        );
        assert_eq!(
            d.occupation(true),
            " who works as an archivist who keeps old records safe"
        );
        assert_eq!(
            d.art_style(true, 1),
            "art nouveau, which uses flowing lines"
        );
        assert_eq!(d.color(false, 1), "#ff6347");
        assert_eq!(d.color(true, 2), "#008080 (teal)");
        assert_eq!(
            d.viewpoint(true),
            "Frame the scene from low angle and basic and looking up, with the otter facing to the left."
        );
        assert_eq!(
            d.back_style(),
            "Paint #fffff0 behind in ukiyo-e, which prints the floating world."
        );
    }

    #[test]
    fn none_and_missing_values_are_tolerated() {
        let d = dress();
        assert!(!d.has_lit_style());
        assert_eq!(d.lit_style(true), "");
        assert_eq!(d.place(true), "", "addresses select no place");
        assert_eq!(d.trope(true), "");
        let empty = DalleDress::default();
        assert_eq!(empty.occupation(true), "");
        assert_eq!(
            empty.color_directive(),
            "Let  and  dominate the palette, while using the full range of colour."
        );
    }

    #[test]
    fn mixing_level_picks_the_fusion_phrase() {
        let d = dress();
        assert_eq!(d.mixing_level(), 6 % 5 + 1);
        assert!(d.style_directive().starts_with(
            "in the style of art nouveau, which uses flowing lines, lightly touched by ukiyo-e"
        ));
    }

    #[test]
    fn colour_limit_changes_the_directive() {
        let mut d = dress();
        assert!(
            d.color_directive()
                .starts_with("Let #ff6347 (tomato) and #008080 (teal) dominate")
        );
        d.color_limit = "three".into();
        assert!(
            d.color_directive()
                .starts_with("Restrict the image to three colours")
        );
    }

    #[test]
    fn json_key_set_matches_upstream() {
        let v = serde_json::to_value(DalleDress::default()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let mut expected = vec![
            "annotatedPath",
            "attributes",
            "cacheHit",
            "colorLimit",
            "completed",
            "dataPrompt",
            "downloadMode",
            "enhancedPrompt",
            "fileName",
            "fileSize",
            "generatedPath",
            "imageUrl",
            "ipfsHash",
            "modifiedAt",
            "original",
            "originalName",
            "prompt",
            "selectedRecords",
            "selectedTokens",
            "series",
            "seed",
            "seedChunks",
            "tersePrompt",
            "titlePrompt",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
