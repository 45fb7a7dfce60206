//! One HBONE stream as a byte stream: an HTTP/2 CONNECT stream's send and receive halves (the
//! `h2` crate's, used directly) behind `AsyncRead`/`AsyncWrite`, so the copy loop
//! ([`crate::proxy::copy`]) moves bytes between it and a TCP socket in the task that owns both.
//!
//! hyper's CONNECT upgrade put a task and a channel between the copy and the stream (each write
//! crossed the channel to a task that waited for HTTP/2 capacity); here the copy writes into
//! the stream itself, and the connection's driver task is the only other one a byte meets.
//! The way ztunnel does it (its `src/proxy/h2.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// A received DATA frame's bytes not read yet: a frame can be larger than the reader's
    /// buffer (up to [`super::MAX_FRAME_SIZE`]).
    unread: Bytes,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self { send, recv, unread: Bytes::new() }
    }

    /// The error a write ends with once the stream cannot send: why the peer reset it.
    fn poll_write_error(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.send.poll_reset(cx)).map_or_else(into_io, reset_error).into()
    }
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream").field("stream", &self.send.stream_id()).finish_non_exhaustive()
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                // END_STREAM: the peer half-closed.
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // The window opens again as soon as a frame is taken from h2's buffer,
                    // not when the reader has drained it: at most one frame waits here, and
                    // a reader that stops reading stops taking frames, so its stream's window
                    // (and only its stream's) closes.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.unread = data;
                }
                // A peer that cancels or closes without error ends the stream like a FIN.
                Some(Err(error)) if matches!(error.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(error)) => return Poll::Ready(Err(into_io(error))),
            }
        }
        let n = buf.remaining().min(this.unread.len());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        // Capacity is what the peer's windows (this stream's and the connection's) and h2's
        // send buffer allow now; a write takes what there is, up to all of `buf`, and waits only
        // when there is none. Asked for on every write, it never exceeds the bytes at hand.
        this.send.reserve_capacity(buf.len());
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                // Capacity said "changed" but none is left: poll again, which registers the waker.
                Some(Ok(0)) => continue,
                Some(Ok(capacity)) => {
                    let n = capacity.min(buf.len());
                    return match this.send.send_data(Bytes::copy_from_slice(&buf[..n]), false) {
                        Ok(()) => Poll::Ready(Ok(n)),
                        Err(_) => this.poll_write_error(cx).map(Err),
                    };
                }
                // The stream can no longer send (reset, or the connection is gone).
                Some(Err(_)) | None => return this.poll_write_error(cx).map(Err),
            }
        }
    }

    /// Nothing to do: the connection's task writes (and flushes) what the streams queued as
    /// soon as it runs, several streams' frames in one TLS write.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// END_STREAM after the bytes queued: the peer reads EOF, and may still answer.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => match ready!(this.send.poll_reset(cx)) {
                // The peer already ended the stream cleanly: nothing was lost.
                Ok(Reason::NO_ERROR) => Poll::Ready(Ok(())),
                Ok(reason) => Poll::Ready(Err(reset_error(reason))),
                Err(error) => Poll::Ready(Err(into_io(error))),
            },
        }
    }
}

fn reset_error(reason: Reason) -> io::Error {
    match reason {
        Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED => io::ErrorKind::BrokenPipe.into(),
        reason => io::Error::other(h2::Error::from(reason)),
    }
}

fn into_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error.into_io().unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(error)
    }
}
