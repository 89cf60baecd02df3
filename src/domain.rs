//! The identifiers a request names, parsed once at the edge (the HTTP handlers) into types
//! that carry the proof: below a handler an [`Address`] is always `0x` + 40 lower-case hex
//! digits, a [`SeriesName`] is always a normalised, usable name, and a run's [`Subject`] says
//! whether it is an address (`/dalle`) or a seed (`/v1`) instead of one string holding either.

use std::fmt;
use std::sync::Arc;

/// An Ethereum address as `/dalle` uses it: `0x` + 40 hex digits, lower-cased. (No checksum
/// check: mixed-case input is accepted and lower-cased, as the Go server did.)
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(Arc<str>);

/// Why a string is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Address '{0}' is not a valid Ethereum address: expected 0x followed by 40 hex digits \
     (ENS names are not supported)"
)]
pub struct AddressError(pub String);

impl Address {
    /// Lower-cases `raw` and checks its shape.
    pub fn parse(raw: &str) -> Result<Address, AddressError> {
        let lowered = raw.to_ascii_lowercase();
        if is_address(&lowered) {
            Ok(Address(lowered.into()))
        } else {
            Err(AddressError(raw.to_lowercase()))
        }
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `0x` + 40 lower-case hex digits.
pub fn is_address(s: &str) -> bool {
    s.len() == 42
        && s.starts_with("0x")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A series name after normalisation ([`crate::attributes::series::normalize_name`]): the
/// name of a directory under `<data>/output/` and of a series file. It never contains a path
/// separator, never is `.` or `..`, and never is empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesName(Arc<str>);

/// The longest series name, in characters. A name is also at most [`MAX_SERIES_NAME_BYTES`]
/// bytes, so `<name>.deleted` and `<name>.json` stay within the 255-byte file-name limit of
/// common file systems whatever the script.
pub const MAX_SERIES_NAME: usize = 100;
/// The longest series name, in UTF-8 bytes.
pub const MAX_SERIES_NAME_BYTES: usize = 200;
/// Suffixes the server gives directories of its own beside the series' ones under
/// `<data>/output/`: a hidden series' images are parked in `<name>.deleted`.
pub const RESERVED_SERIES_SUFFIXES: [&str; 1] = [".deleted"];

/// Why a client's series name is refused (a 400 on every route that takes one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesNameError {
    #[error(
        "series name is longer than {MAX_SERIES_NAME} characters ({MAX_SERIES_NAME_BYTES} bytes)"
    )]
    TooLong,
    #[error("series name contains a control character")]
    ControlCharacter,
    #[error("series name ends in {0}, which the server reserves")]
    ReservedSuffix(&'static str),
    #[error("series name starts with a dot, which names a hidden file")]
    LeadingDot,
}

impl SeriesName {
    /// Normalises `raw` (trim, lower-case, separators to `-`; nothing usable is `unknown`).
    /// For names the server itself holds; a client's name goes through [`SeriesName::parse`].
    pub fn normalize(raw: &str) -> SeriesName {
        SeriesName(crate::attributes::series::normalize_name(raw).into())
    }

    /// A client's series name, normalised as [`SeriesName::normalize`] does, and refused
    /// when it could not name a series' files: too long for a file name, with control
    /// characters, ending in a suffix the server reserves, or starting with a dot.
    pub fn parse(raw: &str) -> Result<SeriesName, SeriesNameError> {
        // Before normalising, which turns some control characters (tab, newline) into `-`.
        if raw.chars().any(char::is_control) {
            return Err(SeriesNameError::ControlCharacter);
        }
        let name = SeriesName::normalize(raw);
        let text = name.as_str();
        if text.chars().count() > MAX_SERIES_NAME || text.len() > MAX_SERIES_NAME_BYTES {
            return Err(SeriesNameError::TooLong);
        }
        if let Some(suffix) = RESERVED_SERIES_SUFFIXES
            .into_iter()
            .find(|s| text.ends_with(s))
        {
            return Err(SeriesNameError::ReservedSuffix(suffix));
        }
        if text.starts_with('.') {
            return Err(SeriesNameError::LeadingDot);
        }
        Ok(name)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The seed a `/v1` record is made from (an explicit seed, or the hash of the input).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Seed(Arc<str>);

impl Seed {
    /// A seed already checked by the caller (trimmed, long enough to select attributes).
    pub fn new(checked: impl Into<Arc<str>>) -> Seed {
        Seed(checked.into())
    }

    /// The seed as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a `/v1` request's seed cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// Neither an input nor an explicit seed.
    #[error("input is required")]
    Missing,
    /// It names the run's files (`<seed>.json`, `<seed>.png`), and file systems allow 255
    /// bytes per name; a longer one would fail at the first write, after the paid image.
    #[error("seed is longer than {max} bytes", max = Seed::MAX_LEN)]
    TooLong,
    /// Too short to select attributes.
    #[error("{0}")]
    Unusable(String),
}

impl Seed {
    /// The longest seed accepted, in bytes.
    pub const MAX_LEN: usize = 200;

    /// The seed of a `/v1` request: an explicit non-blank seed trimmed and used as given,
    /// else the lower-case hex SHA-256 of the trimmed input. Either way it must be long enough
    /// to select attributes (checked here, so a run never fails on it after work was done).
    pub fn for_request(input: &str, explicit: Option<&str>) -> Result<Seed, SeedError> {
        let seed = match explicit.map(str::trim).filter(|s| !s.is_empty()) {
            Some(seed) if seed.len() > Seed::MAX_LEN => return Err(SeedError::TooLong),
            Some(seed) => seed.to_string(),
            None if input.trim().is_empty() => return Err(SeedError::Missing),
            None => crate::attributes::selection::seed_from_input(input),
        };
        crate::attributes::selection::extended_seed(&seed)
            .map_err(|e| SeedError::Unusable(e.to_string()))?;
        Ok(Seed(seed.into()))
    }
}

/// What `/v1/images/{id}` names: a record's `imageId` (`sha256:…`) or its seed; trimmed and
/// never blank.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef(Arc<str>);

/// Why a string is not an [`ImageRef`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image id is required")]
pub struct ImageRefError;

impl ImageRef {
    /// Trims `raw`; a blank id is an error.
    pub fn parse(raw: &str) -> Result<ImageRef, ImageRefError> {
        let id = raw.trim();
        if id.is_empty() {
            return Err(ImageRefError);
        }
        Ok(ImageRef(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a run is made for: an address (`/dalle`) or a seed (`/v1`). Both name the run's files,
/// `<data>/output/<series>/<kind>/<subject>.<ext>`, so two subjects are the same key when their
/// text is the same: a `/v1` seed that is an address shares the `/dalle` run and its files,
/// and the two can never run side by side.
#[derive(Debug, Clone)]
pub enum Subject {
    Address(Address),
    Seed(Seed),
}

impl Subject {
    /// The subject as text (what the dress is computed from and what files are named after).
    pub fn as_str(&self) -> &str {
        match self {
            Subject::Address(a) => a.as_str(),
            Subject::Seed(s) => s.as_str(),
        }
    }
}

impl PartialEq for Subject {
    fn eq(&self, other: &Subject) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Subject {}

impl std::hash::Hash for Subject {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Subject {
    fn partial_cmp(&self, other: &Subject) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Subject {
    fn cmp(&self, other: &Subject) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl From<Address> for Subject {
    fn from(a: Address) -> Subject {
        Subject::Address(a)
    }
}

impl From<Seed> for Subject {
    fn from(s: Seed) -> Subject {
        Subject::Seed(s)
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(Address, SeriesName, Seed, Subject, ImageRef);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_lower_cased_and_checked() {
        let a = "0xF503017D7baf7fbc0fff7492b751025c6a78179b";
        assert_eq!(
            Address::parse(a).unwrap().as_str(),
            "0xf503017d7baf7fbc0fff7492b751025c6a78179b"
        );
        for bad in [
            "",
            "0x",
            "f503017d7baf7fbc0fff7492b751025c6a78179b",
            "0xzz03017d7baf7fbc0fff7492b751025c6a78179b",
            "0xf503017d7baf7fbc0fff7492b751025c6a78179b0",
        ] {
            let err = Address::parse(bad).unwrap_err();
            assert!(err.to_string().contains("40 hex digits"), "{err}");
        }
    }

    #[test]
    fn series_names_are_normalised_and_never_paths() {
        assert_eq!(SeriesName::normalize(" My Cats ").as_str(), "my-cats");
        assert_eq!(
            SeriesName::normalize("../etc").as_str(),
            "-etc".trim_matches('-')
        );
        assert_eq!(SeriesName::normalize("...").as_str(), "unknown");
        assert_eq!(SeriesName::normalize("").as_str(), "unknown");
    }

    #[test]
    fn request_seeds_are_explicit_or_hashed_and_always_usable() {
        let long = "a".repeat(33);
        assert_eq!(
            Seed::for_request("ignored", Some(&format!(" {long} ")))
                .unwrap()
                .as_str(),
            long
        );
        assert_eq!(
            Seed::for_request(" Wimp ", Some(" ")).unwrap().as_str(),
            crate::attributes::selection::seed_from_input("Wimp")
        );
        assert_eq!(
            Seed::for_request("hello world", None).unwrap().as_str(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(Seed::for_request(" ", None), Err(SeedError::Missing));
        assert_eq!(
            SeedError::Missing.to_string(),
            "input is required",
            "the message /v1 answers"
        );
        assert!(matches!(
            Seed::for_request("", Some("short")),
            Err(SeedError::Unusable(_))
        ));
        let max = "b".repeat(Seed::MAX_LEN);
        assert!(Seed::for_request("", Some(&max)).is_ok());
        assert_eq!(
            Seed::for_request("", Some(&format!("{max}b"))),
            Err(SeedError::TooLong)
        );
    }

    #[test]
    fn image_refs_are_trimmed_and_never_blank() {
        assert_eq!(
            ImageRef::parse(" sha256:ab ").unwrap().as_str(),
            "sha256:ab"
        );
        assert_eq!(ImageRef::parse(" \t"), Err(ImageRefError));
    }

    #[test]
    fn client_series_names_are_refused_when_they_cannot_name_files() {
        assert_eq!(SeriesName::parse(" My Cats ").unwrap().as_str(), "my-cats");
        assert_eq!(SeriesName::parse("simple").unwrap().as_str(), "simple");
        assert_eq!(SeriesName::parse("v1.2").unwrap().as_str(), "v1.2");
        let hundred = "a".repeat(MAX_SERIES_NAME);
        assert_eq!(SeriesName::parse(&hundred).unwrap().as_str(), hundred);
        let refused = |raw: &str| SeriesName::parse(raw).unwrap_err();
        assert_eq!(refused(&"a".repeat(101)), SeriesNameError::TooLong);
        // 100 characters, 300 bytes: too long for `<name>.deleted` as a file name.
        assert_eq!(refused(&"\u{20ac}".repeat(100)), SeriesNameError::TooLong);
        for raw in ["a\u{1}b", "cats\n", "\tcats", "a\u{7f}", "a\u{9b}b"] {
            assert_eq!(refused(raw), SeriesNameError::ControlCharacter, "{raw:?}");
        }
        assert_eq!(
            refused("cats.deleted"),
            SeriesNameError::ReservedSuffix(".deleted")
        );
        assert_eq!(
            refused("Cats.DELETED"),
            SeriesNameError::ReservedSuffix(".deleted")
        );
        assert_eq!(refused(".hidden"), SeriesNameError::LeadingDot);
        // What normalising already made safe stays accepted.
        assert_eq!(SeriesName::parse("...").unwrap().as_str(), "unknown");
        assert_eq!(SeriesName::parse("a/b").unwrap().as_str(), "a-b");
    }

    #[test]
    fn subjects_name_their_files() {
        let seed = Subject::from(Seed::new("abc"));
        assert_eq!(seed.as_str(), "abc");
        assert_eq!(seed.to_string(), "abc");
        // The same files, the same key.
        let a = "0xf503017d7baf7fbc0fff7492b751025c6a78179b";
        let address = Subject::from(Address::parse(a).unwrap());
        assert_eq!(address, Subject::from(Seed::new(a)));
    }
}
