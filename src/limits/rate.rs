//! The one syntax of a rate limit, shared by `--rate-limit`, `--anon-rate-limit` and the keys
//! file's `rate=`: `<n>/<sec|min|hour|day>`, or `none`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// The period of a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    Sec,
    Min,
    Hour,
    Day,
}

impl Per {
    /// The period's length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Per::Sec => 1,
            Per::Min => 60,
            Per::Hour => 3600,
            Per::Day => 86_400,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Per::Sec => "sec",
            Per::Min => "min",
            Per::Hour => "hour",
            Per::Day => "day",
        }
    }
}

/// `n` run starts per period, as a token bucket: `n` may start at once, and the bucket
/// refills evenly, one start every `period / n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Per,
}

impl Rate {
    /// The time one start takes to come back (`period / count`, at least a nanosecond).
    pub fn interval(self) -> Duration {
        (self.per.duration() / self.count.get()).max(Duration::from_nanos(1))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.as_str())
    }
}

/// A configured limit: a [`Rate`], or `none` (no limit, said explicitly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Unlimited,
    Every(Rate),
}

impl Limit {
    /// The rate, or `None` for no limit.
    pub fn rate(self) -> Option<Rate> {
        match self {
            Limit::Unlimited => None,
            Limit::Every(rate) => Some(rate),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Unlimited => f.write_str("none"),
            Limit::Every(rate) => rate.fmt(f),
        }
    }
}

/// Why a rate does not parse; the message says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rate {0:?}: expected <n>/<sec|min|hour|day> with n at least 1, or none")]
pub struct BadRate(pub String);

impl FromStr for Limit {
    type Err = BadRate;

    fn from_str(text: &str) -> Result<Limit, BadRate> {
        let bad = || BadRate(text.to_string());
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("none") {
            return Ok(Limit::Unlimited);
        }
        let (count, unit) = trimmed.split_once('/').ok_or_else(bad)?;
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| bad())?;
        let per = match unit.trim() {
            "sec" => Per::Sec,
            "min" => Per::Min,
            "hour" => Per::Hour,
            "day" => Per::Day,
            _ => return Err(bad()),
        };
        Ok(Limit::Every(Rate { count, per }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_print_and_refuse_garbage() {
        let ten = "10/min".parse::<Limit>().unwrap();
        assert_eq!(ten.to_string(), "10/min");
        let rate = ten.rate().unwrap();
        assert_eq!(rate.interval(), Duration::from_secs(6));
        assert_eq!("none".parse::<Limit>(), Ok(Limit::Unlimited));
        assert_eq!("NONE".parse::<Limit>().unwrap().to_string(), "none");
        assert_eq!(
            " 3 / day ".parse::<Limit>().unwrap().to_string(),
            "3/day",
            "blanks around the parts are allowed"
        );
        assert_eq!(
            "1/sec".parse::<Limit>().unwrap().rate().unwrap().interval(),
            Duration::from_secs(1)
        );
        for bad in [
            "",
            "fast",
            "0/min",
            "-1/min",
            "10",
            "10/minute",
            "10/m",
            "1.5/sec",
            "/min",
            "10/",
        ] {
            let err = bad.parse::<Limit>().unwrap_err();
            assert!(err.to_string().contains("<n>/<sec|min|hour|day>"), "{bad}");
        }
    }
}
