//! API keys: who may spend money or change data.
//!
//! The keys file (`--api-keys-file`) holds one key a line:
//!
//! ```text
//! # name   hash of the token                                                        per-key fields
//! ci       sha256:8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4
//! alice    sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae rate=30/min daily_usd=5
//! ```
//!
//! - a name (`A-Z a-z 0-9 . _ -`, at most 64), unique in the file;
//! - `sha256:` and the 64 hex digits of the SHA-256 of the token: the token itself is never
//!   stored, so a leaked file spends nothing;
//! - optional `key=value` fields ([`KeyLimits`]): `rate=<n>/<sec|min|hour|day>` (or `none`)
//!   replaces `--rate-limit` for the key; `daily_usd=<dollars>` and `daily_images=<n>` cap
//!   the key's own spend per UTC day, beside the server-wide caps;
//! - `#` starts a comment (a whole line, or the rest of one after a blank); blank lines are
//!   skipped.
//!
//! `dalleserver keys new <name>` prints a fresh token and its line ([`new_token`],
//! [`key_line`]). A client presents the token as `Authorization: Bearer <token>`; its SHA-256
//! is compared with every stored hash in constant time ([`ApiKeys::verify`]).
//!
//! The file is re-read when its modification time or length changes, checked at most once a
//! second when a request asks ([`ApiKeys::authenticate`]) or on demand ([`ApiKeys::recheck`]).
//! A bad line is an error at start-up (naming the line); on reload it is logged and the keys
//! already loaded stay in force, so a typo never locks every client out.
//!
//! This module knows nothing of HTTP: the router's glue (`http::auth`) reads the header and
//! builds the request's [`Caller`], which the run core admits a new run with.

mod caller;

pub use caller::Caller;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::budget::{ANONYMOUS, KeyCaps, Micros};
use crate::limits::Limit;

/// The prefix of every token `keys new` prints, so a leaked one is recognisable in a log or
/// a repository scan.
pub const TOKEN_PREFIX: &str = "dsk_";
/// Random bytes in a token (256 bits).
pub const TOKEN_BYTES: usize = 32;
/// How often a request may make the server look at the keys file again.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
const MAX_NAME: usize = 64;

/// Per-key limits from the keys file, enforced by the run core when the key starts a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// `rate=<n>/<unit>` or `rate=none`: replaces `--rate-limit` for this key.
    pub rate: Option<Limit>,
    /// `daily_usd=<dollars>`, in micro-dollars: the key's own cap per UTC day.
    pub daily_usd: Option<Micros>,
    /// `daily_images=<n>`: the key's own image cap per UTC day.
    pub daily_images: Option<u64>,
}

impl KeyLimits {
    /// The key's own spending caps.
    pub fn caps(&self) -> KeyCaps {
        KeyCaps {
            daily_usd: self.daily_usd,
            daily_images: self.daily_images,
        }
    }
}

/// One key of the file: its name, the hash of its token, its limits.
#[derive(Clone, PartialEq)]
pub struct KeyRecord {
    pub name: String,
    hash: [u8; 32],
    pub limits: KeyLimits,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why a keys file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Parses the text of a keys file; the error is `(line number, reason)`, counting from 1.
pub fn parse(text: &str) -> Result<Vec<KeyRecord>, (usize, String)> {
    let mut keys: Vec<KeyRecord> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fields: Vec<&str> = raw
            .split_whitespace()
            .take_while(|f| !f.starts_with('#'))
            .collect();
        let Some((&name, rest)) = fields.split_first() else {
            continue;
        };
        let record = parse_line(name, rest).map_err(|reason| (line, reason))?;
        if keys.iter().any(|k| k.name == record.name) {
            return Err((line, format!("the name {name:?} is used twice")));
        }
        if keys.iter().any(|k| k.hash == record.hash) {
            return Err((line, "the same token hash is listed twice".into()));
        }
        keys.push(record);
    }
    Ok(keys)
}

fn parse_line(name: &str, rest: &[&str]) -> Result<KeyRecord, String> {
    if !valid_name(name) {
        return Err(format!(
            "bad key name {name:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -"
        ));
    }
    if name == ANONYMOUS {
        return Err(format!(
            "the key name {ANONYMOUS:?} is taken: usage reports callers without a key under it"
        ));
    }
    let Some((hash, fields)) = rest.split_first() else {
        return Err(format!(
            "key {name:?} has no hash: expected `{name} sha256:<64 hex digits>`"
        ));
    };
    let hash = hash
        .strip_prefix("sha256:")
        .and_then(|hex_digits| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(hex_digits, &mut out)
                .ok()
                .map(|()| out)
        })
        .ok_or_else(|| {
            format!("key {name:?}: expected sha256:<64 hex digits> (the hash, never the token)")
        })?;
    let mut limits = KeyLimits::default();
    for field in fields {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, found {field:?}"))?;
        match key {
            "rate" => limits.rate = Some(value.parse::<Limit>().map_err(|e| e.to_string())?),
            "daily_usd" => {
                limits.daily_usd = Some(
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0)
                        .map(crate::budget::micros)
                        .ok_or_else(|| format!("bad daily_usd {value:?}: expected dollars"))?,
                )
            }
            "daily_images" => {
                limits.daily_images = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad daily_images {value:?}: expected a count"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown field {other:?} (known: rate, daily_usd, daily_images)"
                ));
            }
        }
    }
    Ok(KeyRecord {
        name: name.to_string(),
        hash,
        limits,
    })
}

/// A key name `keys new` accepts and the file may hold.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A fresh token: [`TOKEN_PREFIX`] and [`TOKEN_BYTES`] bytes from the operating system's
/// random source, base64url without padding.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The keys-file line that authorises `token` under `name`.
pub fn key_line(name: &str, token: &str) -> String {
    format!(
        "{name} sha256:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme is
/// case-insensitive, as HTTP says), or `None` for any other header.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

#[derive(Debug)]
struct Loaded {
    keys: Arc<[KeyRecord]>,
    stamp: Stamp,
    checked: Instant,
}

/// The keys of a keys file, reloaded when the file changes.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn lock(m: &Mutex<Loaded>) -> std::sync::MutexGuard<'_, Loaded> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(path: &Path) -> Result<(Vec<KeyRecord>, Stamp), KeysError> {
    let read_error = |source| KeysError::Read {
        path: path.to_path_buf(),
        source,
    };
    // The stamp is taken first: a write racing the read makes the next check see a change.
    let stamp = stamp(path).map_err(read_error)?;
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let keys = parse(&text).map_err(|(line, reason)| KeysError::Line {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    Ok((keys, stamp))
}

impl ApiKeys {
    /// Reads the file; any bad line is an error naming it. An empty file is allowed (then
    /// nothing is authorised until a key is added).
    pub fn load(path: &Path) -> Result<ApiKeys, KeysError> {
        let (keys, stamp) = read(path)?;
        Ok(ApiKeys {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                keys: keys.into(),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys in force.
    pub fn keys(&self) -> Arc<[KeyRecord]> {
        lock(&self.loaded).keys.clone()
    }

    /// Looks at the file now and reloads it if it changed. `Ok(true)` when a new set was
    /// loaded; an unreadable or bad file is an error, logged, and the old set stays.
    pub fn recheck(&self) -> Result<bool, KeysError> {
        let mut loaded = lock(&self.loaded);
        loaded.checked = Instant::now();
        let result = match stamp(&self.path) {
            Ok(now) if now == loaded.stamp => Ok(false),
            Ok(_) => read(&self.path).map(|(keys, stamp)| {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "API keys file reloaded");
                loaded.keys = keys.into();
                loaded.stamp = stamp;
                true
            }),
            Err(source) => Err(KeysError::Read {
                path: self.path.clone(),
                source,
            }),
        };
        if let Err(err) = &result {
            // Remember the bad version so the error is logged once per change, not per second.
            if let Ok(now) = stamp(&self.path) {
                loaded.stamp = now;
            }
            tracing::error!(%err, "API keys file not reloaded; the keys already loaded stay in force");
        }
        result
    }

    /// The key whose token this is (its name and limits as the file says now), or `None`.
    /// Every stored hash is compared, in constant time, whatever matched first.
    pub fn verify(&self, token: &str) -> Option<KeyRecord> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let keys = self.keys();
        let mut found = None;
        for key in keys.iter() {
            if bool::from(key.hash.ct_eq(&digest)) && found.is_none() {
                found = Some(key);
            }
        }
        found.cloned()
    }

    /// The key named by an `Authorization` header value, after looking at the file again if
    /// the last look was over [`RECHECK_INTERVAL`] ago. A missing header, another scheme and
    /// an unknown token are all `None`: callers cannot tell them apart, nor can clients.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<KeyRecord> {
        let due = lock(&self.loaded).checked.elapsed() >= RECHECK_INTERVAL;
        if due {
            let _ = self.recheck();
        }
        self.verify(bearer(authorization?)?)
    }
}

/// The start-up warning for a server that spends money for anyone who can reach it: live
/// mode, no keys file, and an address other than loopback.
pub fn exposure_warning(
    live: bool,
    keys_configured: bool,
    bind: std::net::IpAddr,
) -> Option<String> {
    (live && !keys_configured && !bind.is_loopback()).then(|| {
        format!(
            "NO API KEYS on {bind} in live mode: anyone who can reach this port can start paid \
             OpenAI runs (?generate=1, POST /v1/images/generate, regenerate), remove images \
             (?remove, DELETE /v1/images), export, overwrite or hide series and clear /errors. \
             Set --api-keys-file (see `dalleserver keys new`) or bind to 127.0.0.1."
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_comments_blanks_and_fields() {
        let token = "dsk_secret";
        let text = format!(
            "# keys\n\n{}\n  {} rate=30/min daily_usd=5.5 daily_images=100 # alice\n{} rate=none\n",
            key_line("ci", token),
            key_line("alice", "other"),
            key_line("free", "third"),
        );
        let keys = parse(&text).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].limits, KeyLimits::default());
        assert_eq!(
            keys[1].limits,
            KeyLimits {
                rate: Some("30/min".parse().unwrap()),
                daily_usd: Some(5_500_000),
                daily_images: Some(100),
            }
        );
        assert_eq!(keys[1].limits.caps().daily_images, Some(100));
        assert_eq!(keys[2].limits.rate, Some(Limit::Unlimited));
        assert!(!format!("{:?}", keys[0]).contains(&hex::encode(keys[0].hash)));
    }

    #[test]
    fn bad_lines_name_their_number() {
        let good = key_line("ci", "t");
        for (text, line) in [
            (format!("{good}\nbob dsk_plaintext\n"), 2),
            (format!("# c\n\n{good}\nbob\n"), 4),
            ("bob sha256:abcd\n".to_string(), 1),
            (format!("{good} rate=fast\n"), 1),
            (format!("{good} rate=0/min\n"), 1),
            (format!("{}\n", key_line("anonymous", "t2")), 1),
            (format!("{good} colour=red\n"), 1),
            (format!("{good} daily_usd=-1\n"), 1),
            (format!("{good}\n{good}\n"), 2),
            (format!("b@d {}\n", &good[3..]), 1),
        ] {
            assert_eq!(parse(&text).unwrap_err().0, line, "{text}");
        }
        let twice = format!("{good}\n{}\n", good.replacen("ci", "other", 1));
        assert!(parse(&twice).unwrap_err().1.contains("twice"));
    }

    #[test]
    fn new_tokens_are_random_and_their_line_authorises_them() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(
            a.len(),
            TOKEN_PREFIX.len() + 43,
            "32 bytes, base64url unpadded"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, key_line("me", &a)).unwrap();
        let keys = ApiKeys::load(&path).unwrap();
        assert_eq!(keys.verify(&a).map(|k| k.name).as_deref(), Some("me"));
        assert_eq!(keys.verify(&b), None);
        let header = format!("bearer {a}");
        let me = keys.authenticate(Some(&header)).map(|k| k.name);
        assert_eq!(me.as_deref(), Some("me"));
        assert_eq!(keys.authenticate(Some(&format!("Basic {a}"))), None);
        assert_eq!(keys.authenticate(None), None);
    }

    fn name(keys: &ApiKeys, token: &str) -> Option<String> {
        keys.verify(token).map(|k| k.name)
    }

    #[test]
    fn recheck_reloads_a_change_and_keeps_the_old_set_on_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, key_line("one", "t1")).unwrap();
        let keys = ApiKeys::load(&path).unwrap();
        assert!(!keys.recheck().unwrap(), "unchanged");
        std::fs::write(&path, format!("{}\n# more\n", key_line("two", "t2"))).unwrap();
        assert!(keys.recheck().unwrap());
        assert_eq!(name(&keys, "t2").as_deref(), Some("two"));
        assert_eq!(keys.verify("t1"), None);
        std::fs::write(
            &path,
            format!("{}\nbroken line here\n", key_line("three", "t3")),
        )
        .unwrap();
        let err = keys.recheck().unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(name(&keys, "t2").as_deref(), Some("two"), "old set kept");
        assert_eq!(keys.verify("t3"), None);
        std::fs::remove_file(&path).unwrap();
        assert!(keys.recheck().is_err());
        assert_eq!(name(&keys, "t2").as_deref(), Some("two"));
    }

    #[test]
    fn the_warning_is_for_live_unkeyed_public_servers_only() {
        let public = std::net::IpAddr::from([0, 0, 0, 0]);
        let local = std::net::IpAddr::from([127, 0, 0, 1]);
        assert!(exposure_warning(true, false, public).is_some());
        assert!(exposure_warning(true, false, local).is_none());
        assert!(exposure_warning(true, true, public).is_none());
        assert!(exposure_warning(false, false, public).is_none());
    }
}
