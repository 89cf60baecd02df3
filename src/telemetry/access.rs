//! The access log's writer: one line per request, in the same shape as the `tracing` lines
//! (`<time>  INFO request request_id=… method=… path=… status=… elapsed=… endpoint="…"
//! peer=…`), appended to a buffer that goes to stderr in one `write(2)` every
//! [`FLUSH_EVERY`], or as soon as it holds [`FLUSH_AT`] bytes.
//!
//! Why not a `tracing` event: formatting one through the subscriber (field visitors, its
//! clock, a `write(2)` per line) cost ~6.6 µs of a ~21 µs small cache hit in the load
//! tests (see the book's benchmarks page). nginx's `access_log … buffer=` makes the same
//! trade. The price is that a line can reach stderr up to [`FLUSH_EVERY`] after the
//! request, so it may follow a later non-access line, and a crash loses at most that much;
//! [`flush`] runs at shutdown. Errors and slow requests still go through `tracing`, at once.

use std::io::Write as _;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A buffer this full is written at once, by the request that filled it.
pub const FLUSH_AT: usize = 32 * 1024;

/// The level printed on a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// ` INFO`, as `tracing` right-aligns it.
    Info,
    /// `DEBUG`.
    Debug,
}

struct Buffer {
    bytes: Vec<u8>,
    /// The Unix second `prefix` spells, so the date is formatted once a second.
    second: u64,
    prefix: String,
}

struct Sink {
    buffer: Mutex<Buffer>,
    /// Held while a full buffer is written, taken before the buffer's lock is let go, so
    /// buffers reach stderr in the order they were filled.
    out: Mutex<()>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        // The flusher only ever waits and writes; if the thread cannot start, a full buffer
        // and `flush` at shutdown still write every line.
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    flush();
                }
            });
        Sink {
            buffer: Mutex::new(Buffer {
                bytes: Vec::with_capacity(FLUSH_AT + 1024),
                second: u64::MAX,
                prefix: String::new(),
            }),
            out: Mutex::new(()),
        }
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Appends one line: the time, `level`, `message`, then whatever `fields` writes (which
/// starts with a space per field, written with `std::io::Write`). Never blocks on stderr except when it fills the buffer.
pub fn line(level: Level, message: &str, fields: impl FnOnce(&mut Vec<u8>)) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let sink = sink();
    let mut guard = lock(&sink.buffer);
    let buffer = &mut *guard;
    if buffer.second != now.as_secs() {
        buffer.second = now.as_secs();
        buffer.prefix = date_time(now.as_secs());
    }
    let bytes = &mut buffer.bytes;
    bytes.extend_from_slice(buffer.prefix.as_bytes());
    let _ = write!(bytes, ".{:06}Z ", now.subsec_micros());
    bytes.extend_from_slice(match level {
        Level::Info => b" INFO ",
        Level::Debug => b"DEBUG ",
    });
    bytes.extend_from_slice(message.as_bytes());
    fields(bytes);
    bytes.push(b'\n');
    if buffer.bytes.len() >= FLUSH_AT {
        let full = std::mem::replace(&mut buffer.bytes, Vec::with_capacity(FLUSH_AT + 1024));
        let _out = lock(&sink.out);
        drop(guard);
        write_out(&full);
    }
}

/// Writes every buffered line to stderr now.
pub fn flush() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let mut buffer = lock(&sink.buffer);
    if buffer.bytes.is_empty() {
        return;
    }
    let full = std::mem::replace(&mut buffer.bytes, Vec::with_capacity(FLUSH_AT + 1024));
    let _out = lock(&sink.out);
    drop(buffer);
    write_out(&full);
}

fn write_out(bytes: &[u8]) {
    // Holding stderr's lock keeps `tracing`'s lines from landing inside a partial write.
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC, as `tracing`'s default timer prints it.
fn date_time(unix_seconds: u64) -> String {
    let t = i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_the_tracing_timer() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00");
        assert_eq!(date_time(1_796_683_161), "2026-12-07T22:39:21");
    }

    #[test]
    fn lines_have_the_tracing_shape_and_are_kept_until_flushed() {
        line(Level::Info, "request", |s| {
            s.extend_from_slice(b" request_id=unit-1 status=200")
        });
        line(Level::Debug, "request", |s| {
            s.extend_from_slice(b" request_id=unit-2")
        });
        let text = {
            let sink = SINK.get().expect("initialised by line");
            String::from_utf8(lock(&sink.buffer).bytes.clone()).unwrap()
        };
        let first = text
            .lines()
            .find(|l| l.contains("unit-1"))
            .expect("the first line is buffered");
        // 2026-12-07T22:39:21.000000Z  INFO request request_id=unit-1 status=200
        assert_eq!(
            first.len(),
            27 + " INFO request request_id=unit-1 status=200".len() + 1
        );
        assert_eq!(&first[4..5], "-");
        assert_eq!(&first[19..20], ".");
        assert!(first[26..].starts_with("Z  INFO request request_id=unit-1"));
        let second = text.lines().find(|l| l.contains("unit-2")).unwrap();
        assert!(second[26..].starts_with("Z DEBUG request request_id=unit-2"));
        flush();
        let sink = SINK.get().unwrap();
        assert!(!String::from_utf8_lossy(&lock(&sink.buffer).bytes).contains("unit-1"));
    }
}
