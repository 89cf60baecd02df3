//! [`Caller`]: who asks for a run, as the run core needs to know it — whether it may start
//! one, whose rate-limit bucket a start is taken from, and whose budget pays for it.

use std::net::IpAddr;
use std::sync::Arc;

use super::{KeyLimits, KeyRecord};
use crate::budget::Payer;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A valid API key: its name and its limits as the keys file says now (so a reload
    /// changes them for the next request).
    Key { name: Arc<str>, limits: KeyLimits },
    /// No valid key. `authorized` when no keys file is configured (then anyone may start
    /// runs, as upstream); `address` is the client address its rate-limit bucket is kept
    /// for (`None` when unknown: all such callers share one bucket).
    Anonymous {
        address: Option<IpAddr>,
        authorized: bool,
    },
    /// The server itself, resuming a run the previous process had admitted (and counted
    /// against the caller's limits) and left queued; `key` is the API key it was started
    /// with, which it is still charged to.
    Resumed { key: Option<Arc<str>> },
}

impl Caller {
    /// A caller that only reads (a poll, an image, a preview): never asked for a key, a
    /// bucket or a budget, so nothing is looked up for it.
    pub const READER: Caller = Caller::Anonymous {
        address: None,
        authorized: false,
    };

    /// The caller holding `key`.
    pub fn key(key: &KeyRecord) -> Caller {
        Caller::Key {
            name: key.name.as_str().into(),
            limits: key.limits,
        }
    }

    /// Whether the caller may start runs and change data: it has a valid key, or no keys
    /// are configured.
    pub fn authorized(&self) -> bool {
        match self {
            Caller::Key { .. } | Caller::Resumed { .. } => true,
            Caller::Anonymous { authorized, .. } => *authorized,
        }
    }

    /// The API key's name, if the caller has one.
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Caller::Key { name, .. } => Some(name),
            Caller::Resumed { key } => key.as_deref(),
            Caller::Anonymous { .. } => None,
        }
    }

    /// Who pays for the caller's runs, with the key's own caps.
    pub fn payer(&self) -> Payer<'_> {
        match self {
            Caller::Key { name, limits } => Payer {
                key: Some(name),
                caps: limits.caps(),
            },
            // Its own caps were checked when the previous process admitted it.
            Caller::Resumed { key } => Payer {
                key: key.as_deref(),
                ..Payer::ANONYMOUS
            },
            Caller::Anonymous { .. } => Payer::ANONYMOUS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_pays_with_its_caps_and_anonymous_callers_with_none() {
        let text = format!("{} daily_images=3\n", super::super::key_line("ci", "t"));
        let record = super::super::parse(&text).unwrap().remove(0);
        let ci = Caller::key(&record);
        assert!(ci.authorized());
        assert_eq!(ci.key_name(), Some("ci"));
        assert_eq!(ci.payer().key, Some("ci"));
        assert_eq!(ci.payer().caps.daily_images, Some(3));
        assert!(!Caller::READER.authorized());
        assert_eq!(Caller::READER.payer(), Payer::ANONYMOUS);
        let resumed = Caller::Resumed {
            key: Some("ci".into()),
        };
        assert!(resumed.authorized());
        assert_eq!(resumed.payer().key, Some("ci"));
        assert_eq!(resumed.payer().caps, Default::default());
    }
}
