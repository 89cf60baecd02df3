//! The six prompts of a dress, rendered from askama templates in `templates/prompts/`
//! with our own wording: base (the image prompt), data (a readable dump — upstream's was
//! always empty), title, terse (the caption under the image), author (the persona for the
//! chat enhancement) and technical (the specification sent with the image request).

use askama::Template;

use crate::attributes::dress::{DalleDress, article};

/// Rendering failed (a template bug; tests render every template).
#[derive(Debug, thiserror::Error)]
#[error("rendering the {name} prompt: {source}")]
pub struct PromptError {
    name: &'static str,
    #[source]
    source: askama::Error,
}

#[derive(Template)]
#[template(path = "prompts/base.txt", escape = "none")]
struct Base<'a> {
    d: &'a DalleDress,
    a_adverb: &'static str,
}

#[derive(Template)]
#[template(path = "prompts/data.txt", escape = "none")]
struct Data<'a> {
    d: &'a DalleDress,
    lineage: String,
}

#[derive(Template)]
#[template(path = "prompts/title.txt", escape = "none")]
struct Title {
    title: String,
}

#[derive(Template)]
#[template(path = "prompts/terse.txt", escape = "none")]
struct Terse<'a> {
    d: &'a DalleDress,
}

#[derive(Template)]
#[template(path = "prompts/author.txt", escape = "none")]
struct Author<'a> {
    d: &'a DalleDress,
}

#[derive(Template)]
#[template(path = "prompts/technical.txt", escape = "none")]
struct Technical<'a> {
    d: &'a DalleDress,
}

/// Every prompt of one dress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompts {
    pub base: String,
    pub data: String,
    pub title: String,
    pub terse: String,
    /// Empty when the dress has no literary style (then enhancement is skipped).
    pub author: String,
    pub technical: String,
}

fn run(name: &'static str, template: &impl Template) -> Result<String, PromptError> {
    template
        .render()
        .map_err(|source| PromptError { name, source })
}

/// Renders all six prompts.
pub fn render(d: &DalleDress) -> Result<Prompts, PromptError> {
    let title = [
        d.emotion(false),
        d.adverb(false),
        d.adjective(false),
        d.occupation(false),
        d.noun(false),
    ]
    .into_iter()
    .filter(|w| !w.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    Ok(Prompts {
        base: run(
            "base",
            &Base {
                d,
                a_adverb: article(&d.adverb(false)),
            },
        )?,
        data: run(
            "data",
            &Data {
                d,
                lineage: d.noun_lineage().join(" / "),
            },
        )?,
        title: run("title", &Title { title })?,
        terse: run("terse", &Terse { d })?,
        author: run("author", &Author { d })?,
        technical: run("technical", &Technical { d })?,
    })
}

impl Prompts {
    /// Copies the prompts the dress itself carries (base, data, title, terse).
    pub fn apply_to(&self, d: &mut DalleDress) {
        d.prompt = self.base.clone();
        d.data_prompt = self.data.clone();
        d.title_prompt = self.title.clone();
        d.terse_prompt = self.terse.clone();
    }
}

#[cfg(test)]
mod tests {
    use crate::attributes::Attributes;

    fn attributes() -> Attributes {
        Attributes::load(None, std::path::PathBuf::from("/nonexistent")).unwrap()
    }

    /// All six prompts for two fixed addresses, one plain and one with a literary style and
    /// a colour limit; any wording or selection change shows up as a snapshot diff.
    #[test]
    fn snapshots_of_every_prompt() {
        let attributes = attributes();
        for (series, address) in [
            ("simple", "0xf503017d7baf7fbc0fff7492b751025c6a78179b"),
            (
                "film-noir-detectives",
                "0x054993ab0f2b1acc0fdc65405ee203b4271bebe6",
            ),
        ] {
            let (dress, p) = attributes.dress(address, series, None).unwrap();
            let all = format!(
                "== base\n{}\n== data\n{}\n== title\n{}\n== terse\n{}\n== author\n{}\n== technical\n{}\n",
                p.base, p.data, p.title, p.terse, p.author, p.technical
            );
            insta::assert_snapshot!(format!("{series}-{address}"), all);
            assert_eq!(dress.terse_prompt, p.terse);
            assert_eq!(dress.title_prompt, p.title);
            assert!(
                !p.data.is_empty(),
                "the data prompt works (upstream's was always empty)"
            );
        }
    }

    /// The caption drawn under the image glosses the adverb and the adjective; a separator
    /// keeps each gloss apart from the next word ("…insatiable appetite academic…" ran on).
    #[test]
    fn the_caption_keeps_glossed_words_apart() {
        let attributes = attributes();
        let (dress, p) = attributes
            .dress("0xf503017d7baf7fbc0fff7492b751025c6a78179b", "simple", None)
            .unwrap();
        let expected = format!(
            "{}; {}; {},",
            dress.adverb(true),
            dress.adjective(true),
            dress.noun(false)
        );
        assert!(p.terse.starts_with(&expected), "{}", p.terse);
        assert!(
            p.terse
                .starts_with("voraciously, meaning with an insatiable appetite; academic, "),
            "{}",
            p.terse
        );
    }

    #[test]
    fn author_is_empty_without_a_literary_style() {
        let attributes = attributes();
        let (dress, p) = attributes
            .dress("0xf503017d7baf7fbc0fff7492b751025c6a78179b", "simple", None)
            .unwrap();
        assert_eq!(p.author.is_empty(), !dress.has_lit_style());
    }
}
