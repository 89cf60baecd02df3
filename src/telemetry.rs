//! Logging set-up and the few time formats the API uses.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global `tracing` subscriber: human-readable lines on stderr, filtered by
/// `filter` (an `EnvFilter` directive such as `info` or `dalleserver=debug`). Lines are written
/// in batches (see [`Batched`]); keep the returned guard until the end of `main`, which writes
/// what is left.
pub fn init(filter: &str) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let batched = Batched::default();
    batched.spawn_flusher(FLUSH_EVERY);
    // A second init (tests) is harmless; keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(batched.clone())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    LogGuard(batched)
}

/// Writes the buffered log lines when dropped (the end of `main`).
#[derive(Debug)]
pub struct LogGuard(Batched);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.flush_now();
    }
}

/// How long an `info` or `debug` line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full is written at once.
const FLUSH_BYTES: usize = 64 * 1024;

/// The log writer: lines at `info` and `debug` (the access log, one per request) collect in a
/// buffer that a background thread writes to stderr every 100 ms, so a request costs no
/// `write(2)` of its own; warnings and errors are written at once, with everything before them.
/// After `kill -9` the last 100 ms of `info` lines can be lost; nothing else is.
#[derive(Debug, Clone, Default)]
pub struct Batched {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Batched {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes whatever is buffered to stderr.
    pub fn flush_now(&self) {
        let pending = std::mem::take(&mut *self.lock());
        if !pending.is_empty() {
            let _ = io::stderr().lock().write_all(&pending);
        }
    }

    fn spawn_flusher(&self, every: Duration) {
        let batched = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    batched.flush_now();
                }
            });
        if spawned.is_err() {
            // No thread: every line is written at once instead (see `BatchLine::drop`).
            eprintln!("dalleserver: cannot start the log flusher; logging unbuffered");
        }
    }
}

/// One log line on its way into the buffer.
#[derive(Debug)]
pub struct BatchLine<'a> {
    batched: &'a Batched,
    urgent: bool,
}

impl Write for BatchLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buffer = self.batched.lock();
        buffer.extend_from_slice(bytes);
        if buffer.len() >= FLUSH_BYTES {
            self.urgent = true;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BatchLine<'_> {
    fn drop(&mut self) {
        if self.urgent {
            self.batched.flush_now();
        }
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = BatchLine<'a>;

    fn make_writer(&'a self) -> BatchLine<'a> {
        BatchLine {
            batched: self,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> BatchLine<'a> {
        BatchLine {
            batched: self,
            urgent: *meta.level() <= Level::WARN,
        }
    }
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
    fn info_lines_wait_for_the_flusher_and_warnings_go_at_once() {
        let batched = Batched::default();
        let info = tracing::Metadata::new(
            "info",
            "t",
            Level::INFO,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        let mut line = batched.make_writer_for(&info);
        line.write_all(b"request\n").unwrap();
        drop(line);
        assert_eq!(&*batched.lock(), b"request\n", "kept for the flusher");
        let warn = tracing::Metadata::new(
            "warn",
            "t",
            Level::WARN,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        let mut line = batched.make_writer_for(&warn);
        line.write_all(b"slow\n").unwrap();
        drop(line);
        assert!(
            batched.lock().is_empty(),
            "a warning writes everything at once"
        );
    }

    struct Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unimplemented!()
        }
    }
    static CALLSITE: Callsite = Callsite;

    #[test]
    fn formats_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_730_000_000, 5);
        assert_eq!(rfc3339(t), "2024-10-27T03:33:20.000000005Z");
        assert_eq!(unix_seconds(t), 1_730_000_000);
    }
}
