//! Everything that talks to OpenAI: the [`OpenAiClient`] (prompt enhancement, image generation,
//! image download), the retry policy it follows, and the circuit breakers (one per operation:
//! chat and image), which `/health` and `/metrics` report on.
//!
//! Every API attempt passes its operation's breaker; only failures a second attempt can fix are
//! retried, and an image request that may already have been received (and billed) never is.
//!
//! This file holds the pure part: the model table and orientation rule, our own prompt
//! wording, and [`OpenAiError`], the module's one error type, whose text is what users see in a
//! run's `error` field. [`client`] does the I/O; [`retry`] decides when to try again.

pub mod breaker;
pub mod client;
pub mod retry;

use std::time::Duration;

pub use client::{Enhanced, ImageAnswer, ImageReceipt, OpenAiClient};
pub use retry::RetryPolicy;

/// Our instruction appended to the author persona (upstream's intent, in our own words).
const ENHANCE_INSTRUCTION: &str = "Rewrite the art prompt you are given through this literary \
perspective so that the scene becomes more vivid and evocative. Keep every attribute it names; \
leave none out and change none. Deepen its emotional weight and the story it suggests. Reply with \
the rewritten prompt only.";

/// Extra direction for `gpt-image-1`, which otherwise tends towards tame, stock-like pictures.
const IMAGE_DIRECTIVE: &str = "Visual direction:
- Push the colour: saturated and luminous, with strong light and deep shadow.
- Let the scene feel a little uncanny, like a vivid dream rather than polished stock imagery.
- Give the central figure a striking, slightly exaggerated presence.
- Stay within any palette named above, but play it at full intensity.";

/// Picture orientation, read from the enhanced prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orientation {
    Landscape,
    Portrait,
    Square,
}

impl Orientation {
    /// Landscape if the text mentions "landscape" or "horizontal", else portrait if it mentions
    /// "portrait" or "vertical", else square; case-insensitive. Upstream tested "landscape" twice
    /// and "vertical" case-sensitively; this is what it meant.
    pub fn detect(text: &str) -> Orientation {
        let text = text.to_lowercase();
        if text.contains("landscape") || text.contains("horizontal") {
            Orientation::Landscape
        } else if text.contains("portrait") || text.contains("vertical") {
            Orientation::Portrait
        } else {
            Orientation::Square
        }
    }
}

/// The optional fields of an image request; `None` fields are not sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageParams {
    pub size: Option<&'static str>,
    pub quality: Option<&'static str>,
    pub style: Option<&'static str>,
}

/// Size and quality for `model` (upstream's model table), with orientation taken from
/// `orientation_text`.
/// An unknown model gets no size, so the server picks its own default.
pub fn image_params(model: &str, orientation_text: &str) -> ImageParams {
    let orientation = Orientation::detect(orientation_text);
    let sized = |landscape, portrait| {
        Some(match orientation {
            Orientation::Landscape => landscape,
            Orientation::Portrait => portrait,
            Orientation::Square => "1024x1024",
        })
    };
    let (size, quality) = match model {
        "gpt-image-2" | "gpt-image-1" | "gpt-image-1.5" => {
            (sized("1536x1024", "1024x1536"), Some("high"))
        }
        "gpt-image-1-mini" => (Some("1024x1024"), Some("low")),
        "dall-e-3" => (sized("1792x1024", "1024x1792"), Some("hd")),
        "dall-e-2" => (Some("1024x1024"), None),
        _ => (None, None),
    };
    ImageParams {
        size,
        quality,
        style: None,
    }
}

/// The prompt actually sent: unchanged, except `gpt-image-1` gets our visual directive appended.
fn image_prompt(model: &str, prompt: &str) -> String {
    if model == "gpt-image-1" {
        format!("{}\n\n{IMAGE_DIRECTIVE}", prompt.trim())
    } else {
        prompt.to_string()
    }
}

/// The enhancement system prompt: the author persona, a blank line, then our instruction.
pub fn enhancement_system_prompt(author: &str) -> String {
    format!("{author}\n\n{ENHANCE_INSTRUCTION}")
}

/// Everything that can go wrong talking to OpenAI. No variant ever contains the API key.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// No `OPENAI_API_KEY` is configured.
    #[error("no OpenAI API key is configured (set OPENAI_API_KEY)")]
    NoKey,
    /// The operation's circuit breaker refused the call; the text names the operation and the
    /// failure that opened it.
    #[error("{0}")]
    BreakerOpen(#[from] breaker::Rejected),
    /// No answer in time; `sent` tells whether the request may have reached the server.
    #[error("{}", timeout_text(.sent, .after))]
    Timeout { sent: bool, after: Duration },
    /// The connection failed; `sent` tells whether the request may have reached the server.
    #[error("{}", connect_text(.sent, .message))]
    Connect { sent: bool, message: String },
    /// OpenAI (or the image host) answered with a non-success status.
    #[error("OpenAI API error (status {status}): {message}")]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A success answer we cannot use.
    #[error("{0}")]
    Decode(String),
    /// The HTTP client or a request could not be built.
    #[error("{0}")]
    Setup(String),
}

fn timeout_text(sent: &bool, after: &Duration) -> String {
    if *sent {
        format!("OpenAI did not answer within {after:?}")
    } else {
        format!("could not connect to OpenAI within {after:?}")
    }
}

fn connect_text(sent: &bool, message: &str) -> String {
    if *sent {
        format!("connection to OpenAI lost after the request was sent: {message}")
    } else {
        format!("cannot reach OpenAI: {message}")
    }
}

impl OpenAiError {
    /// True for timeouts, whether or not the request was sent.
    pub fn is_timeout(&self) -> bool {
        matches!(self, OpenAiError::Timeout { .. })
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            OpenAiError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether another attempt could succeed. `repeatable` says whether a call that may already
    /// have reached the server can be made again (not so for image generation: it may be billed).
    pub fn is_retryable(&self, repeatable: bool) -> bool {
        match self {
            // 408 (the server gave up reading or waiting) and 504 (a gateway gave up waiting for
            // OpenAI) leave the outcome unknown, exactly like a timeout after sending: the image
            // may have been made and billed. So they are retried only when repeating is harmless.
            OpenAiError::Api {
                status: 408 | 504, ..
            } => repeatable,
            // 429 and 500/502/503 are answers that the request was not carried out; an exhausted
            // quota is a 429 that waiting a few seconds will not fix.
            OpenAiError::Api { status, code, .. } => {
                matches!(status, 429 | 500 | 502 | 503)
                    && code.as_deref() != Some("insufficient_quota")
            }
            OpenAiError::Timeout { sent, .. } | OpenAiError::Connect { sent, .. } => {
                !sent || repeatable
            }
            OpenAiError::NoKey
            | OpenAiError::BreakerOpen(_)
            | OpenAiError::Decode(_)
            | OpenAiError::Setup(_) => false,
        }
    }

    /// The wait the server asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OpenAiError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the failure says the service is unhealthy, which is what the breaker counts.
    /// A 400 content refusal or a 401 does not: the service answered, and must not be cut off
    /// for everyone because of one prompt.
    pub fn is_service_failure(&self) -> bool {
        match self {
            OpenAiError::Api { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            OpenAiError::Timeout { .. } | OpenAiError::Connect { .. } => true,
            OpenAiError::NoKey
            | OpenAiError::BreakerOpen(_)
            | OpenAiError::Decode(_)
            | OpenAiError::Setup(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<&str>) -> OpenAiError {
        OpenAiError::Api {
            status,
            code: code.map(str::to_string),
            message: "Your request was rejected".into(),
            retry_after: None,
        }
    }

    #[test]
    fn orientation_is_case_insensitive_and_landscape_wins() {
        assert_eq!(
            Orientation::detect("A wide LANDSCAPE"),
            Orientation::Landscape
        );
        assert_eq!(
            Orientation::detect("seen horizontally"),
            Orientation::Landscape
        );
        assert_eq!(
            Orientation::detect("A Portrait of her"),
            Orientation::Portrait
        );
        // Upstream missed this one: it looked for "Vertical" case-sensitively.
        assert_eq!(
            Orientation::detect("Vertically framed"),
            Orientation::Portrait
        );
        assert_eq!(
            Orientation::detect("portrait in a vertical landscape"),
            Orientation::Landscape
        );
        assert_eq!(Orientation::detect("a quiet room"), Orientation::Square);
    }

    #[test]
    fn image_params_follow_the_model_table() {
        let p = |model, text| {
            let params = image_params(model, text);
            (params.size, params.quality, params.style)
        };
        let high = Some("high");
        for model in ["gpt-image-2", "gpt-image-1", "gpt-image-1.5"] {
            assert_eq!(p(model, "landscape"), (Some("1536x1024"), high, None));
            assert_eq!(p(model, "portrait"), (Some("1024x1536"), high, None));
            assert_eq!(p(model, "a cat"), (Some("1024x1024"), high, None));
        }
        let mini = (Some("1024x1024"), Some("low"), None);
        assert_eq!(p("gpt-image-1-mini", "landscape"), mini);
        assert_eq!(
            p("dall-e-3", "horizontal"),
            (Some("1792x1024"), Some("hd"), None)
        );
        assert_eq!(
            p("dall-e-3", "vertical"),
            (Some("1024x1792"), Some("hd"), None)
        );
        assert_eq!(
            p("dall-e-3", "a cat"),
            (Some("1024x1024"), Some("hd"), None)
        );
        assert_eq!(p("dall-e-2", "landscape"), (Some("1024x1024"), None, None));
        assert_eq!(image_params("flux-9", "landscape"), ImageParams::default());
    }

    #[test]
    fn only_gpt_image_1_gets_the_directive() {
        let sent = image_prompt("gpt-image-1", "  a fox \n");
        assert!(sent.starts_with("a fox\n\n"));
        assert!(sent.ends_with(IMAGE_DIRECTIVE));
        assert_eq!(image_prompt("gpt-image-2", " a fox "), " a fox ");
        assert_eq!(image_prompt("gpt-image-1.5", "a fox"), "a fox");
    }

    #[test]
    fn system_prompt_is_author_then_instruction() {
        let system = enhancement_system_prompt("You are Borges.");
        assert!(system.starts_with("You are Borges.\n\n"));
        assert!(system.ends_with(ENHANCE_INSTRUCTION));
    }

    #[test]
    fn api_errors_read_like_upstream() {
        assert_eq!(
            api(400, None).to_string(),
            "OpenAI API error (status 400): Your request was rejected"
        );
        let refused = OpenAiError::from(breaker::Rejected::Open {
            operation: breaker::Operation::Image,
            failures: 5,
            last: Some("cannot reach OpenAI: connection refused".into()),
        });
        assert_eq!(
            refused.to_string(),
            "image circuit breaker is OPEN after 5 consecutive failures \
             (last: cannot reach OpenAI: connection refused); try again later"
        );
        assert!(!refused.is_retryable(true));
        let sent = OpenAiError::Timeout {
            sent: true,
            after: Duration::from_secs(300),
        };
        assert_eq!(sent.to_string(), "OpenAI did not answer within 300s");
        assert!(sent.is_timeout());
        assert!(!api(504, None).is_timeout());
    }

    #[test]
    fn only_transient_statuses_are_retryable() {
        for status in [429, 500, 502, 503] {
            assert!(api(status, None).is_retryable(false), "{status}");
        }
        // Unknown outcomes: retried only when repeating cannot bill twice.
        for status in [408, 504] {
            assert!(!api(status, None).is_retryable(false), "{status}");
            assert!(api(status, None).is_retryable(true), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 422, 501] {
            assert!(!api(status, None).is_retryable(true), "{status}");
        }
        assert!(!api(429, Some("insufficient_quota")).is_retryable(true));
    }

    #[test]
    fn unknown_outcomes_are_retried_only_when_repeatable() {
        let before = OpenAiError::Connect {
            sent: false,
            message: "refused".into(),
        };
        let after = OpenAiError::Connect {
            sent: true,
            message: "reset".into(),
        };
        assert!(before.is_retryable(false));
        assert!(!after.is_retryable(false));
        assert!(after.is_retryable(true));
        assert!(before.to_string().starts_with("cannot reach OpenAI: "));
    }

    #[test]
    fn the_breaker_counts_outages_not_refusals() {
        for status in [408, 429, 500, 501, 503] {
            assert!(api(status, None).is_service_failure(), "{status}");
        }
        for status in [400, 401, 403, 404] {
            assert!(!api(status, None).is_service_failure(), "{status}");
        }
        assert!(!OpenAiError::Decode("no images returned".into()).is_service_failure());
    }
}
