//! A run's DalleDress shared between snapshots, with its JSON rendered once per change.
//!
//! Clients poll a run many times a second, and the dress (prompts, attributes, selected
//! records: about 11 KB of the 12 KB snapshot) changes only a few times per run. Cloning and
//! serialising it on every poll was most of a poll's cost; now a poll clones two `Arc`s and
//! copies the rendered text.

use std::ops::Deref;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::attributes::dress::DalleDress;

/// An immutable dress and its compact JSON (the exact bytes `serde_json` would write for it).
#[derive(Debug, Clone)]
pub struct SharedDress {
    dress: Arc<DalleDress>,
    /// `None` only if rendering failed; the dress is then serialised on each use.
    json: Option<Arc<RawValue>>,
}

impl SharedDress {
    /// Shares `dress`, rendering its JSON now.
    pub fn new(dress: DalleDress) -> SharedDress {
        let json = serde_json::value::to_raw_value(&dress).ok().map(Arc::from);
        SharedDress {
            dress: Arc::new(dress),
            json,
        }
    }

    /// The dress itself (cloned only when other snapshots still share it).
    pub fn into_inner(self) -> DalleDress {
        Arc::unwrap_or_clone(self.dress)
    }

    /// A copy of the dress changed by `f` (snapshots already taken keep the old one).
    pub(super) fn edited(&self, f: impl FnOnce(&mut DalleDress)) -> SharedDress {
        let mut dress = DalleDress::clone(&self.dress);
        f(&mut dress);
        SharedDress::new(dress)
    }
}

impl Deref for SharedDress {
    type Target = DalleDress;

    fn deref(&self) -> &DalleDress {
        &self.dress
    }
}

impl PartialEq for SharedDress {
    fn eq(&self, other: &Self) -> bool {
        self.dress == other.dress
    }
}

impl Serialize for SharedDress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.json {
            Some(json) => json.serialize(serializer),
            None => self.dress.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_exactly_like_the_dress() {
        let dress = DalleDress {
            original: "0xabc".into(),
            prompt: "a \"quoted\" prompt\nwith a newline and ünïcode".into(),
            ..DalleDress::default()
        };
        let shared = SharedDress::new(dress.clone());
        assert_eq!(
            serde_json::to_string(&shared).unwrap(),
            serde_json::to_string(&dress).unwrap()
        );
        assert_eq!(
            serde_json::to_value(&shared).unwrap(),
            serde_json::to_value(&dress).unwrap()
        );
        let edited = shared.edited(|d| d.image_url = "https://x/y.png".into());
        assert_eq!(shared.image_url, "");
        assert_eq!(edited.image_url, "https://x/y.png");
        assert!(
            serde_json::to_string(&edited)
                .unwrap()
                .contains("https://x/y.png")
        );
        assert_eq!(edited.into_inner().original, "0xabc");
    }
}
