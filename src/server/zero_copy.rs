//! Sending a cached file's body with `sendfile(2)` (Linux), per connection.
//!
//! The file handler attaches a [`ZeroCopy`] to a response whose body is a cached file's bytes
//! (see `crate::storage`). The connection keeps it in its own [`Slot`] while hyper writes the
//! response; hyper hands the connection its buffers in order, the head and then the body.
//! When a buffer lies inside the attached bytes, it is sent from the open file instead of
//! copied out of our memory, which for a 40 KB image was ~3 µs of the ~20 µs a hit cost (see
//! the book's benchmarks page). The slot holds the bytes, so their memory cannot be reused by
//! another buffer while attached: an address inside them can only be them. Anything else, and
//! every write when the slot is empty, is written as usual.
//!
//! The head goes out with `MSG_MORE`, so the kernel holds it for the body that follows. A
//! body too large for one `sendfile` is also corked (`TCP_CORK`, like nginx's `tcp_nopush`)
//! from the head until its last byte is handed over, so the kernel sends it in full-sized
//! segments instead of the tails of partial writes as small packets of their own; a small
//! body, sent whole by one call, skips the two extra system calls.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use crate::storage::ZeroCopy;

/// Bodies at least this large are corked while they are sent (see the module docs).
const CORK_MIN_BYTES: usize = 256 * 1024;

/// One connection's attached body. The flag makes the check of an empty slot one load.
#[derive(Debug, Default)]
pub(super) struct Slot {
    armed: AtomicBool,
    body: Mutex<Option<ZeroCopy>>,
}

impl Slot {
    /// Attaches the next response's body (replacing one not sent from the file, if any).
    pub(super) fn attach(&self, body: ZeroCopy) {
        *self.body.lock().unwrap_or_else(PoisonError::into_inner) = Some(body);
        self.armed.store(true, Ordering::Release);
    }

    /// Whether a body is attached (one atomic load).
    pub(super) fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    fn detach(&self, body: &mut Option<ZeroCopy>) {
        *body = None;
        self.armed.store(false, Ordering::Release);
    }
}

/// Where `buf` lies in `bytes`, if it lies entirely inside them.
fn offset_in(bytes: &[u8], buf: &[u8]) -> Option<usize> {
    let (start, len) = (bytes.as_ptr() as usize, bytes.len());
    let at = (buf.as_ptr() as usize).checked_sub(start)?;
    (!buf.is_empty() && at + buf.len() <= len).then_some(at)
}

/// `poll_write_vectored` on `stream` while `slot` is armed: the head before the attached
/// body goes out with `MSG_MORE` on a corked socket, the body with `sendfile`. `None` when
/// none of `bufs` is the attached body: the caller writes them as usual.
#[cfg(target_os = "linux")]
pub(super) fn poll_write_vectored(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    slot: &Slot,
) -> Option<Poll<io::Result<usize>>> {
    let mut guard = slot.body.lock().unwrap_or_else(PoisonError::into_inner);
    let body = guard.as_ref()?;
    let (i, at) = bufs
        .iter()
        .enumerate()
        .find_map(|(i, buf)| offset_in(&body.bytes, buf).map(|at| (i, at)))?;
    let cork = body.bytes.len() >= CORK_MIN_BYTES;
    let before = bufs.get(..i).unwrap_or_default();
    if before.iter().any(|b| !b.is_empty()) {
        if cork {
            // Corking can only fail on a socket that is gone; the send then reports it.
            let _ = rustix::net::sockopt::set_tcp_cork(stream, true);
        }
        return Some(poll_send_more(stream, cx, before));
    }
    let len = bufs[i].len();
    let sent = poll_sendfile(stream, cx, &body.source.file, body.offset + at as u64, len);
    // Done with the body when its last byte is out (let the tail go now), or when the
    // connection failed (the error goes to hyper, nothing more is sent from the file).
    let finished = match &sent {
        Poll::Ready(Ok(n)) => at + n >= body.bytes.len(),
        Poll::Ready(Err(_)) => true,
        Poll::Pending => false,
    };
    if finished {
        if cork {
            let _ = rustix::net::sockopt::set_tcp_cork(stream, false);
        }
        slot.detach(&mut guard);
    }
    Some(sent)
}

/// Not Linux: every write is a plain write.
#[cfg(not(target_os = "linux"))]
pub(super) fn poll_write_vectored(
    _stream: &TcpStream,
    _cx: &mut Context<'_>,
    _bufs: &[IoSlice<'_>],
    _slot: &Slot,
) -> Option<Poll<io::Result<usize>>> {
    None
}

/// One `sendmsg` of `bufs` with `MSG_MORE` (the file follows), once the socket is writable.
#[cfg(target_os = "linux")]
fn poll_send_more(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    use rustix::net::{SendAncillaryBuffer, SendFlags, sendmsg};
    poll_writable(stream, cx, || {
        let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
        sendmsg(stream, bufs, &mut SendAncillaryBuffer::default(), flags)
    })
}

/// One `sendfile` of up to `len` bytes of `file` from `offset`, once the socket is writable.
#[cfg(target_os = "linux")]
fn poll_sendfile(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> Poll<io::Result<usize>> {
    poll_writable(stream, cx, || {
        let mut at = offset;
        rustix::fs::sendfile(stream, file, Some(&mut at), len)
    })
}

/// Runs the non-blocking `send` once the socket is writable, as tokio's own writes do.
#[cfg(target_os = "linux")]
fn poll_writable(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    mut send: impl FnMut() -> rustix::io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(stream.poll_write_ready(cx))?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            send().map_err(io::Error::from)
        });
        match sent {
            // Readiness was stale; `try_io` cleared it, so the next poll waits for real.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::storage::FileCache;
    use std::io::Read;

    #[test]
    fn only_buffers_inside_the_attached_bytes_match() {
        let bytes = [7u8; 100];
        assert_eq!(offset_in(&bytes, &bytes[10..20]), Some(10));
        assert_eq!(offset_in(&bytes, &bytes[..]), Some(0));
        assert_eq!(offset_in(&bytes, &bytes[100..]), None, "empty");
        let other = [7u8; 100];
        assert_eq!(offset_in(&bytes, &other[..10]), None);
    }

    /// The head corks the socket and the body's last byte uncorks it (else the kernel would
    /// hold the response's tail for up to 200 ms); the client gets exactly head + body, from
    /// the file; afterwards the slot is empty and writes are plain again.
    #[tokio::test]
    async fn an_attached_body_is_sent_from_the_file_corked_then_uncorked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let cache = FileCache::new(64 * 1024 * 1024);
        let file = cache.read(&path).unwrap();
        let zero_copy = file
            .zero_copy(0, file.bytes.len())
            .expect("large: kept open");
        let body = file.bytes.clone();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 3000000\r\n\r\n".to_vec();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            let mut received = Vec::new();
            client.read_to_end(&mut received).unwrap();
            received
        });
        let (stream, _) = listener.accept().await.unwrap();
        let corked = |s: &TcpStream| rustix::net::sockopt::tcp_cork(s).unwrap();
        let slot = Slot::default();
        slot.attach(zero_copy);

        let bufs = [IoSlice::new(&head), IoSlice::new(&body)];
        let n = std::future::poll_fn(|cx| {
            poll_write_vectored(&stream, cx, &bufs, &slot).expect("the body is attached")
        })
        .await
        .unwrap();
        assert_eq!(n, head.len(), "the head goes out on its own call");
        assert!(corked(&stream), "corked until the body is out");
        let mut sent = 0;
        while sent < body.len() {
            let rest = [IoSlice::new(&body[sent..])];
            sent += std::future::poll_fn(|cx| {
                poll_write_vectored(&stream, cx, &rest, &slot).expect("still attached")
            })
            .await
            .unwrap();
            assert_eq!(corked(&stream), sent < body.len(), "after {sent} bytes");
        }
        assert!(!slot.is_armed(), "detached after the last byte");
        let tail = b"x".to_vec();
        let plain = [IoSlice::new(&tail)];
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(
                poll_write_vectored(&stream, cx, &plain, &slot).map(|_| ())
            ))
            .await
            .is_none()
        );
        drop(stream);
        let received = reader.join().unwrap();
        assert_eq!(received.len(), head.len() + data.len());
        assert_eq!(&received[..head.len()], &head[..]);
        assert!(
            received[head.len()..] == data[..],
            "the file's bytes, in order"
        );
    }
}
