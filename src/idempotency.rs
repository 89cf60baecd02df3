//! Idempotency keys for the `/v1` routes that spend money or write files (generate,
//! regenerate, export): a client that sends `Idempotency-Key` and retries after a lost answer
//! gets the first answer again instead of a second (paid) run.
//!
//! What is kept, per key, for [`DEFAULT_TTL`] from the first request:
//! - the **slot**: the SHA-256 of the caller's [`Scope`] (one API key, or every anonymous
//!   caller of a server without keys) and the key, so two API keys never share a slot;
//! - the **fingerprint**: the SHA-256 of the request as the server understood it (the route,
//!   its target, and the parsed body with object keys sorted — see [`Fingerprint::of`]), so a
//!   reformatted body is the same request and a different one is refused
//!   (`idempotency_key_reused`);
//! - the **state**: in flight (a retry waits for the same run and gets its answer), done
//!   (a retry gets the stored [`Answer`]), or interrupted (the process that took the key
//!   stopped before it answered; see below).
//!
//! Not every answer is kept: one that says nothing was done and asks to come back later
//! (401, 402, 429, 503 — a missing key, a spending cap, a rate limit, a full queue, a drain)
//! gives the key back ([`is_kept`]), so the retry it invites is a new attempt. Everything
//! else, failures of a run that may have been billed included, is answered again as it was.
//!
//! A slot left in flight by a process that died (`kill -9`, a drain that timed out) is
//! **interrupted** at the next start: its run may have sent its image request, and `/v1` runs
//! are not resumed (see [`crate::run::journal`]), so its outcome is unknown. A retry is
//! answered `409 idempotency_key_interrupted` rather than run again: paying twice is the one
//! thing the key exists to prevent. The client looks at what exists (`GET /v1/images/{id}`)
//! and sends a new key if it still wants the work.
//!
//! Bounds: at most `max_keys` slots (in memory an index entry each, on disk one file each,
//! the size of its answer: about 11 KB for a generate answer); when every slot is taken by a key younger than the TTL, a new key is refused
//! `503 idempotency_store_full` with `Retry-After` until the oldest expires, instead of
//! dropping a promise already made. An expired slot is forgotten: a retry after the TTL is a
//! new request.
//!
//! The store sits behind the narrow [`IdempotencyStore`] trait, like [`crate::budget::Budget`],
//! so a shared store (Redis) can hold it for several replicas; [`LocalStore`] keeps it in
//! memory and in files under `<data>/idempotency/`.

mod local;

pub use local::LocalStore;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a key is remembered, from its first request.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How many keys are remembered at most.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// The directory under the data directory that holds the slots.
pub const DIR: &str = "idempotency";

/// Why an `Idempotency-Key` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Idempotency-Key is empty")]
    Empty,
    #[error("Idempotency-Key is {0} bytes long; the limit is {MAX_KEY_LEN}")]
    TooLong(usize),
    #[error("Idempotency-Key may hold only visible ASCII characters (! to ~)")]
    NotVisibleAscii,
}

/// A client's `Idempotency-Key`: 1 to [`MAX_KEY_LEN`] visible ASCII characters (`!`..=`~`).
/// Quotes are kept as sent, so `"abc"` and `abc` are two keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value.
    pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, KeyError> {
        if raw.is_empty() {
            return Err(KeyError::Empty);
        }
        if raw.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(raw.len()));
        }
        if !raw.iter().all(|b| b.is_ascii_graphic()) {
            return Err(KeyError::NotVisibleAscii);
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Only the length: a key is the client's and never needs to reach a log.
impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({} bytes)", self.0.len())
    }
}

/// Whose keys a slot belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every caller of a server without an API keys file.
    Anonymous,
    /// The callers presenting one API key, by its name in the keys file.
    Key(String),
}

impl Scope {
    /// As stored. `:` cannot appear in a key name, so no name reads as `anonymous`.
    pub fn as_string(&self) -> String {
        match self {
            Scope::Anonymous => "anonymous".to_string(),
            Scope::Key(name) => format!("key:{name}"),
        }
    }
}

/// Where one key of one scope lives: a hash, so file names and a shared store's keys are
/// fixed-length and carry neither the key nor the scope.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot([u8; 32]);

impl Slot {
    pub fn new(scope: &Scope, key: &IdempotencyKey) -> Slot {
        let mut h = Sha256::new();
        h.update(scope.as_string().as_bytes());
        h.update([0]);
        h.update(key.as_str().as_bytes());
        Slot(h.finalize().into())
    }

    /// 64 lower-case hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The slot named by `hex` (a file name), if it is one.
    pub fn from_hex(hex_digits: &str) -> Option<Slot> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut out).ok()?;
        Some(Slot(out))
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slot({})", &self.hex()[..12])
    }
}

/// The SHA-256 of a request as the server understood it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `route` (e.g. `generate`), its `target` (an image id, or none) and
    /// `body`, the parsed request: JSON with every object's keys sorted and no whitespace, so
    /// field order, spacing and fields the server ignores do not make a different request.
    pub fn of(route: &str, target: Option<&str>, body: &serde_json::Value) -> Fingerprint {
        let mut canonical = Vec::with_capacity(256);
        write_canonical(
            &serde_json::json!({"route": route, "target": target, "body": body}),
            &mut canonical,
        );
        Fingerprint(Sha256::digest(&canonical).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(hex_digits: &str) -> Option<Fingerprint> {
        Slot::from_hex(hex_digits).map(|s| Fingerprint(s.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.hex()[..12])
    }
}

/// Compact JSON with object keys in byte order, whatever order the map keeps them in.
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(key.clone()), out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            // Scalars serialise the same whatever the map order; this cannot fail.
            if let Ok(text) = serde_json::to_vec(scalar) {
                out.extend_from_slice(&text);
            }
        }
    }
}

/// A kept answer, replayed with the retry's own request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Answer {
    /// A success: the envelope's `data`.
    Data {
        status: u16,
        data: serde_json::Value,
    },
    /// A failure: the error envelope's fields (never an internal cause).
    Error {
        status: u16,
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<String>,
    },
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Data { status, .. } | Answer::Error { status, .. } => *status,
        }
    }
}

/// Whether an answer with `status` is kept for retries: everything but the refusals that
/// did nothing and invite a retry (401 no key, 402 spending cap, 429 rate limit, 503 full
/// queue, drain, open breaker or unready server).
pub fn is_kept(status: u16) -> bool {
    !matches!(status, 401 | 402 | 429 | 503)
}

/// What [`IdempotencyStore::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// The key is new (or expired): the caller owns it and must [`IdempotencyStore::finish`] it.
    Claimed,
    /// The same request already answered.
    Done(Answer),
    /// The same request is in flight: this receiver sees how it ends. Closed if its owner
    /// vanished without finishing.
    InFlight(tokio::sync::watch::Receiver<Wait>),
    /// The key was used for a different request.
    Reused,
    /// The request that took the key was cut off by a restart before it answered.
    Interrupted,
    /// Every slot is taken; the oldest expires after this long.
    Full { retry_after: Duration },
}

/// How an in-flight request is seen by the retries waiting for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// Still working.
    Running,
    /// Answered, and the answer is kept: the retries answer the same.
    Answered(Answer),
    /// Ended without keeping its answer (a refusal that did nothing): begin again.
    Released,
}

/// Why the store cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write the idempotency record {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the idempotency record {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The idempotency state: who holds which key, and what they answered. Methods do blocking
/// I/O (async callers use `spawn_blocking`); both are durable when they return.
pub trait IdempotencyStore: Send + Sync + fmt::Debug {
    /// Claims `slot` for a request with `fingerprint`, or says what already holds it.
    fn begin(&self, slot: Slot, fingerprint: Fingerprint) -> Result<Begin, StoreError>;
    /// Ends the claim on `slot`: keeps `answer` for retries, or (`None`) gives the key back.
    /// Waiting retries are woken either way.
    fn finish(&self, slot: Slot, answer: Option<Answer>) -> Result<(), StoreError>;
    /// Slots held now (in flight, done or interrupted, not yet expired).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_1_to_255_bytes() {
        assert_eq!(IdempotencyKey::parse(b""), Err(KeyError::Empty));
        assert!(IdempotencyKey::parse(&[b'a'; 255]).is_ok());
        assert_eq!(
            IdempotencyKey::parse(&[b'a'; 256]),
            Err(KeyError::TooLong(256))
        );
        for bad in [&b"a b"[..], b"tab\t", b"caf\xc3\xa9", b"nul\0", b"del\x7f"] {
            assert_eq!(
                IdempotencyKey::parse(bad),
                Err(KeyError::NotVisibleAscii),
                "{bad:?}"
            );
        }
        let key = IdempotencyKey::parse(b"\"order-42\"!~").unwrap();
        assert_eq!(key.as_str(), "\"order-42\"!~");
        assert_eq!(format!("{key:?}"), "IdempotencyKey(12 bytes)");
    }

    #[test]
    fn slots_separate_scopes_and_hide_the_key() {
        let key = IdempotencyKey::parse(b"k-1").unwrap();
        let alice = Slot::new(&Scope::Key("alice".into()), &key);
        let bob = Slot::new(&Scope::Key("bob".into()), &key);
        let anon = Slot::new(&Scope::Anonymous, &key);
        assert_ne!(alice, bob);
        assert_ne!(alice, anon);
        assert_eq!(alice, Slot::new(&Scope::Key("alice".into()), &key));
        assert_eq!(Slot::from_hex(&alice.hex()), Some(alice));
        assert!(!alice.hex().contains("k-1"));
        // A key named `anonymous` is not the anonymous scope.
        assert_ne!(Slot::new(&Scope::Key("anonymous".into()), &key), anon);
    }

    #[test]
    fn fingerprints_ignore_key_order_and_spacing_but_not_values() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"a":1,"b":{"y":[1,2],"x":"s"}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str("{ \"b\" : { \"x\":\"s\", \"y\":[1, 2] }, \"a\":1 }").unwrap();
        let c: serde_json::Value =
            serde_json::from_str(r#"{"a":2,"b":{"y":[1,2],"x":"s"}}"#).unwrap();
        assert_eq!(
            Fingerprint::of("generate", None, &a),
            Fingerprint::of("generate", None, &b)
        );
        assert_ne!(
            Fingerprint::of("generate", None, &a),
            Fingerprint::of("generate", None, &c)
        );
        assert_ne!(
            Fingerprint::of("generate", None, &a),
            Fingerprint::of("export", None, &a),
            "the route is part of the request"
        );
        assert_ne!(
            Fingerprint::of("export", Some("x"), &a),
            Fingerprint::of("export", Some("y"), &a)
        );
        let mut canonical = Vec::new();
        write_canonical(&b, &mut canonical);
        assert_eq!(canonical, br#"{"a":1,"b":{"x":"s","y":[1,2]}}"#);
    }

    #[test]
    fn refusals_that_did_nothing_are_not_kept() {
        for status in [401, 402, 429, 503] {
            assert!(!is_kept(status), "{status}");
        }
        for status in [200, 400, 404, 409, 422, 500, 502, 507] {
            assert!(is_kept(status), "{status}");
        }
    }
}
