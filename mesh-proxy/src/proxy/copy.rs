//! Bytes copied both ways between two streams (HBONE tunnels, passthrough, L4 routes, upgraded
//! HTTP connections), with a buffer per direction that grows once the direction turns out to be
//! a bulk transfer, the way Istio's ztunnel copies (its `src/copy.rs`).
//!
//! Every read of a direction becomes one write on the other side: one syscall on a socket, one
//! HTTP/2 DATA frame in a tunnel (and the TLS records that carry it). A request/response
//! connection never fills a small buffer, so it keeps one; a bulk transfer fills it at every
//! read and moves to a large one, cutting its reads, writes, frames and task wake-ups 16-fold.
//!
//! Semantics are those of `tokio::io::copy_bidirectional`: each direction copies until its
//! reader ends, then shuts its writer down (a half-close); the copy ends when both directions
//! have, or at the first error.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A direction's buffer to begin with: 16 KiB (the maximum TLS record) less room for an HTTP/2
/// frame header, so that a full read is one DATA frame that TLS seals as one record, not a
/// full record plus one of 9 bytes. Two of these per connection is what connections cost before
/// (two 16 KiB buffers), so idle and request/response connections cost no more memory.
pub const INITIAL_BUFFER: usize = 16 * 1024 - 64;
/// A bulk direction's buffer: 16 maximum TLS records less the same room, so a full read is one
/// DATA frame of 16 full records (HBONE accepts frames this large, see
/// [`crate::hbone::MAX_FRAME_SIZE`]). 256 KiB is what a fast sender has queued on a socket
/// between two wake-ups of the copy; larger reads rarely fill, and only cost memory.
pub const JUMBO_BUFFER: usize = 16 * 16 * 1024 - 64;
/// A direction moves to [`JUMBO_BUFFER`] once it has carried this much and a read still filled
/// its buffer. 1 MiB is well past an ordinary request or response, so a keep-alive connection
/// of small messages keeps its small buffer for life (it never fills it anyway), while a bulk
/// transfer grows within its first milliseconds.
pub const JUMBO_AFTER: u64 = 1024 * 1024;

/// Copies `a` → `b` and `b` → `a` until both are done; returns (bytes a → b, bytes b → a).
pub async fn bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Transfer::Running(Direction::new());
    let mut b_to_a = Transfer::Running(Direction::new());
    poll_fn(|cx| {
        let a_to_b = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let b_to_a = b_to_a.poll(cx, &mut *b, &mut *a)?;
        let a_to_b = ready!(a_to_b);
        let b_to_a = ready!(b_to_a);
        Poll::Ready(Ok((a_to_b, b_to_a)))
    })
    .await
}

enum Transfer {
    Running(Direction),
    /// The reader ended; its count is kept while the writer shuts down.
    ShuttingDown(u64),
    Done(u64),
}

impl Transfer {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, reader: &mut R, writer: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let (mut reader, mut writer) = (Pin::new(reader), Pin::new(writer));
        loop {
            match self {
                Transfer::Running(direction) => {
                    let count = ready!(direction.poll_copy(cx, reader.as_mut(), writer.as_mut()))?;
                    // The buffer is freed here, not when the other direction ends too.
                    *self = Transfer::ShuttingDown(count);
                }
                Transfer::ShuttingDown(count) => {
                    let count = *count;
                    ready!(writer.as_mut().poll_shutdown(cx))?;
                    *self = Transfer::Done(count);
                }
                Transfer::Done(count) => return Poll::Ready(Ok(*count)),
            }
        }
    }
}

/// One direction's buffer: bytes `pos..cap` are read and not yet written.
struct Direction {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    /// Bytes written so far.
    amt: u64,
    read_done: bool,
    need_flush: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: vec![0; INITIAL_BUFFER],
            pos: 0,
            cap: 0,
            amt: 0,
            read_done: false,
            need_flush: false,
        }
    }

    /// Reads into the free end of the buffer; grows the buffer when a read filled it and the
    /// direction is past [`JUMBO_AFTER`].
    fn poll_fill_buf<R>(&mut self, cx: &mut Context<'_>, reader: Pin<&mut R>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
    {
        let mut buf = ReadBuf::new(&mut self.buf);
        buf.set_filled(self.cap);
        ready!(reader.poll_read(cx, &mut buf))?;
        let filled = buf.filled().len();
        if filled == self.cap {
            self.read_done = true;
        } else if filled == self.buf.len() && self.buf.len() < JUMBO_BUFFER && self.amt >= JUMBO_AFTER {
            // `resize` keeps the unwritten bytes where they are.
            self.buf.resize(JUMBO_BUFFER, 0);
        }
        self.cap = filled;
        Poll::Ready(Ok(()))
    }

    fn poll_write_buf<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut R>,
        writer: Pin<&mut W>,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        match writer.poll_write(cx, &self.buf[self.pos..self.cap]) {
            Poll::Pending => {
                // While the writer is busy, top the buffer up: the next write is then larger.
                if !self.read_done && self.cap < self.buf.len() {
                    ready!(self.poll_fill_buf(cx, reader))?;
                }
                Poll::Pending
            }
            written => written,
        }
    }

    /// tokio's `CopyBuffer::poll_copy`, with the growing buffer.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            // Room left in the buffer: read more first, for the largest write possible.
            if self.cap < self.buf.len() && !self.read_done {
                match self.poll_fill_buf(cx, reader.as_mut()) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        // Nothing to write either: flush what was written (a writer that
                        // buffers may hold what the reader's peer is waiting for), then wait.
                        if self.pos == self.cap {
                            if self.need_flush {
                                ready!(writer.as_mut().poll_flush(cx))?;
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let written = ready!(self.poll_write_buf(cx, reader.as_mut(), writer.as_mut()))?;
                if written == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write zero bytes into writer",
                    )));
                }
                self.pos += written;
                self.amt += written as u64;
                self.need_flush = true;
            }
            self.pos = 0;
            self.cap = 0;
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                return Poll::Ready(Ok(self.amt));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Both directions arrive whole, each half-close reaches the other side, and a bulk
    /// direction grows its buffer without losing or reordering a byte.
    #[tokio::test]
    async fn copies_both_ways_with_half_close_across_the_buffer_growth() {
        let (mut client, mut near) = tokio::io::duplex(64 * 1024);
        let (mut far, mut server) = tokio::io::duplex(64 * 1024);
        let copy = tokio::spawn(async move { bidirectional(&mut near, &mut far).await });
        // Well past JUMBO_AFTER, in a pattern that shows any lost or reordered chunk.
        let upload: Vec<u8> = (0..3 * JUMBO_AFTER as usize + 12345).map(|i| (i % 251) as u8).collect();
        let writer = {
            let upload = upload.clone();
            tokio::spawn(async move {
                client.write_all(&upload).await.expect("upload");
                client.shutdown().await.expect("half-close");
                let mut answer = Vec::new();
                client.read_to_end(&mut answer).await.expect("answer");
                answer
            })
        };
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.expect("server reads to the half-close");
        assert!(
            received == upload,
            "the upload arrived changed ({} of {} bytes)",
            received.len(),
            upload.len()
        );
        server.write_all(b"done").await.expect("answer");
        server.shutdown().await.expect("close");
        assert_eq!(writer.await.expect("client"), b"done");
        let (up, down) = copy.await.expect("copy task").expect("copy");
        assert_eq!((up, down), (upload.len() as u64, 4));
    }

    #[tokio::test]
    async fn a_small_exchange_keeps_the_small_buffer() {
        let mut direction = Direction::new();
        let (mut reader, mut writer) = tokio::io::duplex(1024);
        writer.write_all(b"hello").await.expect("write");
        drop(writer);
        let mut sink = Vec::new();
        let copied = poll_fn(|cx| direction.poll_copy(cx, Pin::new(&mut reader), Pin::new(&mut sink)))
            .await
            .expect("copy");
        assert_eq!((copied, sink.as_slice()), (5, &b"hello"[..]));
        assert_eq!(direction.buf.len(), INITIAL_BUFFER);
    }
}
