//! Content identifiers: CIDv1 with the raw codec (0x55) over a SHA-256 multihash, written in
//! multibase base32 lower case (`bafkrei…`), the form IPFS prints for
//! `ipfs block put --cid-codec raw` and for single-block raw leaves.
//!
//! The byte layout is fixed and tiny — version 0x01, codec 0x55, multihash code 0x12
//! (sha2-256), digest length 0x20, then the 32 digest bytes — so it is written here rather than
//! pulled in with the `cid`/`multihash` crates and their dependency trees. The tests check it
//! against CIDs computed by an independent implementation.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// version 1, raw codec, sha2-256, 32-byte digest.
const PREFIX: [u8; 4] = [0x01, 0x55, 0x12, 0x20];
/// RFC 4648 base32, lower case.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// `b` + base32 of the 36 bytes (288 bits → 58 characters, no padding).
const TEXT_LEN: usize = 1 + 58;

/// A raw-codec SHA-256 CIDv1: the digest is all it carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cid([u8; 32]);

/// Why a text is not a CID this server issues.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidError {
    #[error("a CID here is 59 characters (bafkrei…), got {0}")]
    Length(usize),
    #[error("a CID here starts with the base32 multibase prefix 'b'")]
    Multibase,
    #[error("the CID has a character outside lower-case base32")]
    Alphabet,
    #[error("only CIDv1 with the raw codec over sha2-256 is used here")]
    Kind,
}

impl Cid {
    /// The CID of `bytes`.
    pub fn of(bytes: &[u8]) -> Cid {
        Cid::from_digest(Sha256::digest(bytes).into())
    }

    /// The CID whose SHA-256 digest is `digest` (for callers that hashed already).
    pub fn from_digest(digest: [u8; 32]) -> Cid {
        Cid(digest)
    }

    /// The SHA-256 digest of the content.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The binary CID: prefix and digest.
    pub fn to_bytes(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[..4].copy_from_slice(&PREFIX);
        out[4..].copy_from_slice(&self.0);
        out
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(TEXT_LEN);
        text.push('b');
        let (mut buffer, mut bits) = (0u32, 0u32);
        for byte in self.to_bytes() {
            buffer = (buffer << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                text.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
            }
        }
        if bits > 0 {
            text.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cid({self})")
    }
}

impl FromStr for Cid {
    type Err = CidError;

    fn from_str(text: &str) -> Result<Cid, CidError> {
        if text.len() != TEXT_LEN {
            return Err(CidError::Length(text.len()));
        }
        let body = text.strip_prefix('b').ok_or(CidError::Multibase)?;
        let mut bytes = Vec::with_capacity(37);
        let (mut buffer, mut bits) = (0u32, 0u32);
        for c in body.bytes() {
            let value = ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or(CidError::Alphabet)?;
            buffer = (buffer << 5) | value as u32;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes.push((buffer >> bits) as u8);
                buffer &= (1 << bits) - 1;
            }
        }
        // 58 characters carry 290 bits: the last 2 are padding and must be zero, so every
        // CID has exactly one spelling.
        if buffer != 0 {
            return Err(CidError::Alphabet);
        }
        match bytes.split_at_checked(4) {
            Some((prefix, digest)) if prefix == PREFIX => digest
                .try_into()
                .map(Cid)
                .map_err(|_| CidError::Length(text.len())),
            _ => Err(CidError::Kind),
        }
    }
}

impl serde::Serialize for Cid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cid {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cid, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently with Python's standard library:
    /// `'b' + base64.b32encode(bytes([1, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest())
    /// .decode().lower().rstrip('=')`. The empty string's and "hello world"'s are also the
    /// CIDs `ipfs block put --cid-codec raw` prints for them.
    const KNOWN: [(&[u8], &str); 3] = [
        (
            b"",
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        ),
        (
            b"hello world",
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
        ),
        (
            b"dalleserver",
            "bafkreiborvkn4tphlynynvpneueibgfbpoigntckiiqgoiemmxp2lxc3aa",
        ),
    ];

    #[test]
    fn known_cids_match_an_independent_implementation() {
        for (data, cid) in KNOWN {
            assert_eq!(Cid::of(data).to_string(), cid);
            assert_eq!(cid.parse::<Cid>().unwrap(), Cid::of(data));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(
            Cid::of(&all).to_string(),
            "bafkreicav7zotuwysixepl6umshgsz2jofmhqx55dwuhbzyrajtl7fciqa"
        );
    }

    #[test]
    fn malformed_cids_are_refused_with_a_reason() {
        let good = KNOWN[1].1;
        assert_eq!("".parse::<Cid>(), Err(CidError::Length(0)));
        assert_eq!(
            format!("z{}", &good[1..]).parse::<Cid>(),
            Err(CidError::Multibase)
        );
        assert_eq!(good.to_uppercase().parse::<Cid>(), Err(CidError::Multibase));
        assert_eq!(
            format!("b{}", good[1..].to_uppercase()).parse::<Cid>(),
            Err(CidError::Alphabet)
        );
        // A dag-pb CIDv1 (`bafybei…`) is a real CID, but not one this server issues.
        let dag_pb = good.replacen("bafkrei", "bafybei", 1);
        assert_eq!(dag_pb.parse::<Cid>(), Err(CidError::Kind));
        // Non-zero padding bits: a second spelling of the same bytes is not accepted.
        let mut last = good.to_string();
        last.pop();
        last.push('f');
        assert_eq!(last.parse::<Cid>(), Err(CidError::Alphabet));
    }

    proptest::proptest! {
        #[test]
        fn display_and_parse_round_trip(data: Vec<u8>) {
            let cid = Cid::of(&data);
            let text = cid.to_string();
            proptest::prop_assert_eq!(text.len(), TEXT_LEN);
            proptest::prop_assert!(text.starts_with("bafkrei"));
            proptest::prop_assert_eq!(text.parse::<Cid>(), Ok(cid));
        }
    }
}
