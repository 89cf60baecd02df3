//! Writing response bodies that are cached files with `sendfile(2)` (Linux).
//!
//! hyper hands the connection its buffers in order: the response head, then the body. When a
//! buffer is a slice of a large file held by the [`FileCache`], writing it would copy the bytes
//! from our memory into the socket; `sendfile` lets the kernel send the file's page-cache pages
//! instead (what nginx does). The buffers before it (the head) are sent first with `MSG_MORE`,
//! so the kernel holds them for the file's first segment instead of sending a small packet of
//! their own (nginx's `tcp_nopush`); hyper then calls again with the rest. Anything else is
//! written as usual.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::storage::FileCache;

/// `poll_write_vectored` on `stream`, sending slices of cached files with `sendfile`.
pub(super) fn poll_write_vectored(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    files: Option<&FileCache>,
) -> Poll<io::Result<usize>> {
    #[cfg(target_os = "linux")]
    if let Some(files) = files {
        for (i, buf) in bufs.iter().enumerate() {
            let Some((file, offset)) = files.sendfile_source(buf) else {
                continue;
            };
            let before = bufs.get(..i).unwrap_or_default();
            if before.iter().any(|b| !b.is_empty()) {
                return poll_send_more(stream, cx, before);
            }
            return poll_sendfile(stream, cx, &file, offset, buf.len());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = files;
    Pin::new(stream).poll_write_vectored(cx, bufs)
}

/// One `sendmsg` of `bufs` with `MSG_MORE`, once the socket is writable.
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
