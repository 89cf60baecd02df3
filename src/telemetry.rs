//! Logging set-up and the few time formats the API uses.

use std::time::SystemTime;

pub mod access;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Installs the global `tracing` subscriber: human-readable lines on stderr, filtered by
/// `filter` (an `EnvFilter` directive such as `info` or `dalleserver=debug`).
pub fn init(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests) is harmless; keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// RFC 3339 with nanoseconds, in UTC (the Go server used local time; see the book's
/// "Differences" page).
pub fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Whole seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_730_000_000, 5);
        assert_eq!(rfc3339(t), "2024-10-27T03:33:20.000000005Z");
        assert_eq!(unix_seconds(t), 1_730_000_000);
    }
}
