//! A response body of a few shared buffers, written by hyper in one `writev` without copying
//! them into one: how a poll sends the parts of its snapshot that did not change since the
//! last poll.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// At most this many parts: hyper queues up to 16 buffers per `writev`, headers included.
pub const MAX_PARTS: usize = 8;

/// See the module docs. Its exact size hint gives the response its `Content-Length`.
#[derive(Debug, Default)]
pub struct Chunks {
    parts: [Bytes; MAX_PARTS],
    next: usize,
    end: usize,
}

impl Chunks {
    /// A body of `parts`, in order; empty parts are skipped, and parts beyond
    /// [`MAX_PARTS`] are joined into the last.
    pub fn new(parts: impl IntoIterator<Item = Bytes>) -> Chunks {
        let mut body = Chunks::default();
        let mut overflow: Vec<u8> = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            if body.end < MAX_PARTS {
                body.parts[body.end] = part;
                body.end += 1;
            } else {
                if overflow.is_empty() {
                    overflow.extend_from_slice(&body.parts[MAX_PARTS - 1]);
                }
                overflow.extend_from_slice(&part);
            }
        }
        if !overflow.is_empty() {
            body.parts[MAX_PARTS - 1] = Bytes::from(overflow);
        }
        body
    }

    fn remaining(&self) -> u64 {
        self.parts[self.next..self.end]
            .iter()
            .map(|p| p.len() as u64)
            .sum()
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.next == this.end {
            return Poll::Ready(None);
        }
        let part = std::mem::take(&mut this.parts[this.next]);
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.next == self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn parts_come_out_in_order_with_an_exact_length() {
        let parts = (0..12).map(|i| Bytes::from(format!("<{i}>")));
        let body = Chunks::new(parts.chain([Bytes::new()]));
        let expected: String = (0..12).map(|i| format!("<{i}>")).collect();
        assert_eq!(body.size_hint().exact(), Some(expected.len() as u64));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, expected.as_bytes());
        assert!(Chunks::new([]).is_end_stream());
    }
}
