//! One HBONE stream as a byte stream: an HTTP/2 CONNECT stream's send and receive halves (the
//! `h2` crate's, used directly) behind `AsyncRead`/`AsyncWrite`, so the copy loop
//! ([`crate::proxy::copy`]) moves bytes between it and a TCP socket in the task that owns both.
//!
//! hyper's CONNECT upgrade put a task and a channel between the copy and the stream (each write
//! crossed the channel to a task that waited for HTTP/2 capacity); here the copy writes into
//! the stream itself, and the connection's driver task is the only other one a byte meets.
//! The way ztunnel does it (its `src/proxy/h2.rs`).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::copy::{INITIAL_BUFFER, JUMBO_AFTER, JUMBO_BUFFER};

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

/// Copies between a plain byte stream (the pod's or the client's socket) and an HBONE stream
/// until both directions end; returns (bytes `io` → tunnel, bytes tunnel → `io`). Same
/// semantics as [`crate::proxy::copy::bidirectional`] (each direction half-closes its writer
/// when its reader ends; the first error ends both), without its buffer in the middle:
///
/// - towards the tunnel, the socket is read straight into a [`BytesMut`] whose filled part is
///   frozen and handed to h2 as the DATA frame's payload (the generic copy read into its buffer,
///   then [`H2Stream`]'s `poll_write` copied that into a new `Bytes` for h2);
/// - from the tunnel, each received frame's `Bytes` is written to the socket as it is, several
///   frames in one `writev` when more than one is waiting (the generic copy copied each frame
///   into its buffer first).
///
/// At full tunnel speed these were two of the five user-space copies a byte met in each proxy.
pub async fn splice<S>(io: &mut S, tunnel: &mut H2Stream) -> io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Up::new();
    let mut down = Down::default();
    poll_fn(|cx| {
        let up = up.poll(cx, Pin::new(&mut *io), &mut tunnel.send)?;
        let down = down.poll(cx, &mut *tunnel, Pin::new(&mut *io))?;
        let up = ready!(up);
        let down = ready!(down);
        Poll::Ready(Ok((up, down)))
    })
    .await
}

/// The plain side → the tunnel.
struct Up {
    /// Read and not yet handed to h2 (the part a pending send did not take is in `sending`).
    buf: BytesMut,
    /// Bytes frozen out of `buf`, waiting for flow-control capacity.
    sending: Bytes,
    /// How much a read asks for: [`INITIAL_BUFFER`], then [`JUMBO_BUFFER`] for a bulk direction.
    size: usize,
    amt: u64,
    read_done: bool,
    done: bool,
}

impl Up {
    fn new() -> Self {
        Up {
            buf: BytesMut::new(),
            sending: Bytes::new(),
            size: INITIAL_BUFFER,
            amt: 0,
            read_done: false,
            done: false,
        }
    }

    fn poll<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        send: &mut SendStream<Bytes>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(self.amt));
            }
            if self.sending.is_empty() && !self.buf.is_empty() {
                self.sending = self.buf.split().freeze();
            }
            if !self.sending.is_empty() {
                match poll_send(cx, send, &mut self.sending) {
                    Poll::Ready(Ok(n)) => {
                        self.amt += n as u64;
                        continue;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        // While the peer's window is shut, read ahead (as the generic copy
                        // does): the next frame is then larger.
                        if !self.read_done && self.buf.len() < self.size {
                            ready!(self.poll_read(cx, reader.as_mut()))?;
                            continue;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.read_done {
                // END_STREAM after the bytes queued: the peer reads EOF, and may still answer.
                if send.send_data(Bytes::new(), true).is_err() {
                    match ready!(send.poll_reset(cx)) {
                        // The peer already ended the stream cleanly: nothing was lost.
                        Ok(Reason::NO_ERROR) => {}
                        Ok(reason) => return Poll::Ready(Err(reset_error(reason))),
                        Err(error) => return Poll::Ready(Err(into_io(error))),
                    }
                }
                self.done = true;
                // Memory held for the rest of the other direction's life, freed now.
                self.buf = BytesMut::new();
                continue;
            }
            ready!(self.poll_read(cx, reader.as_mut()))?;
        }
    }

    /// One read into `buf`'s spare room; sets `read_done` at EOF.
    fn poll_read<R>(&mut self, cx: &mut Context<'_>, reader: Pin<&mut R>) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
    {
        // Reading only ever appends, so `buf` is never more than one read past `size`; when
        // the frames sent from it are gone (h2 wrote them), `reserve` takes the same
        // allocation back instead of making a new one.
        let want = self.size - self.buf.len().min(self.size);
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        self.buf.reserve(want);
        let n = ready!(poll_read_bytes(cx, reader, &mut self.buf, want))?;
        if n == 0 {
            self.read_done = true;
        } else if n == want && self.size < JUMBO_BUFFER && self.amt >= JUMBO_AFTER {
            self.size = JUMBO_BUFFER;
        }
        Poll::Ready(Ok(()))
    }
}

/// Hands as much of `data` to h2 as flow control allows now; returns how much.
fn poll_send(
    cx: &mut Context<'_>,
    send: &mut SendStream<Bytes>,
    data: &mut Bytes,
) -> Poll<io::Result<usize>> {
    // Capacity is what the peer's windows (this stream's and the connection's) and h2's send
    // buffer allow now; asked for on every send, it never exceeds the bytes at hand.
    send.reserve_capacity(data.len());
    loop {
        match ready!(send.poll_capacity(cx)) {
            // Capacity said "changed" but none is left: poll again, which registers the waker.
            Some(Ok(0)) => continue,
            Some(Ok(capacity)) => {
                let n = capacity.min(data.len());
                // The frame's payload is the bytes as read, shared, not copied.
                return match send.send_data(data.split_to(n), false) {
                    Ok(()) => Poll::Ready(Ok(n)),
                    Err(_) => send_error(cx, send).map(Err),
                };
            }
            Some(Err(_)) | None => return send_error(cx, send).map(Err),
        }
    }
}

/// The error a send ends with once the stream cannot send: why the peer reset it.
fn send_error(cx: &mut Context<'_>, send: &mut SendStream<Bytes>) -> Poll<io::Error> {
    ready!(send.poll_reset(cx)).map_or_else(into_io, reset_error).into()
}

/// Reads at most `max` bytes into `buf`'s spare capacity, which must hold them.
fn poll_read_bytes<R>(
    cx: &mut Context<'_>,
    reader: Pin<&mut R>,
    buf: &mut BytesMut,
    max: usize,
) -> Poll<io::Result<usize>>
where
    R: AsyncRead + ?Sized,
{
    let spare = &mut buf.spare_capacity_mut()[..max];
    let start = spare.as_ptr();
    let mut read = ReadBuf::uninit(spare);
    ready!(reader.poll_read(cx, &mut read))?;
    let filled = read.filled();
    // A reader may only fill the buffer it was given, never swap in another.
    if filled.as_ptr() != start.cast() {
        return Poll::Ready(Err(io::Error::other("the reader replaced its read buffer")));
    }
    let n = filled.len();
    // SAFETY: the reader initialised the first `n` bytes of `buf`'s spare capacity (checked
    // above to be the memory it filled), so they may become part of `buf`.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

/// Frames written to the plain side in one `writev` at most.
const MAX_FRAMES_PER_WRITE: usize = 16;
/// Received bytes taken from h2 (their window given back) but not yet written: no more than
/// the generic copy's largest buffer, so a stalled writer holds about what it held before and
/// its stream's window still closes.
const MAX_HELD: usize = JUMBO_BUFFER;

/// The tunnel → the plain side.
#[derive(Default)]
struct Down {
    /// Frames received and not yet (fully) written, oldest first.
    frames: Vec<Bytes>,
    amt: u64,
    read_done: bool,
    need_flush: bool,
    state: DownState,
}

#[derive(Default, PartialEq)]
enum DownState {
    #[default]
    Running,
    ShuttingDown,
    Done,
}

impl Down {
    fn poll<W>(
        &mut self,
        cx: &mut Context<'_>,
        tunnel: &mut H2Stream,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self.state {
                DownState::Done => return Poll::Ready(Ok(self.amt)),
                DownState::ShuttingDown => {
                    ready!(writer.as_mut().poll_shutdown(cx))?;
                    self.state = DownState::Done;
                    continue;
                }
                DownState::Running => {}
            }
            // Take every frame h2 already holds (up to a writev's worth), so they go out in one
            // syscall; a bytes left over from `H2Stream`'s reads come first.
            if !tunnel.unread.is_empty() {
                self.frames.push(std::mem::take(&mut tunnel.unread));
            }
            let mut held: usize = self.frames.iter().map(Bytes::len).sum();
            while !self.read_done && self.frames.len() < MAX_FRAMES_PER_WRITE && held < MAX_HELD {
                match tunnel.recv.poll_data(cx) {
                    Poll::Pending => break,
                    // END_STREAM: the peer half-closed.
                    Poll::Ready(None) => self.read_done = true,
                    Poll::Ready(Some(Ok(data))) => {
                        // The window opens again as soon as a frame is taken from h2's buffer:
                        // at most a writev's worth of frames waits here, and a writer that
                        // stalls stops taking frames, so its stream's window (and only its
                        // stream's) closes.
                        let _ = tunnel.recv.flow_control().release_capacity(data.len());
                        if !data.is_empty() {
                            held += data.len();
                            self.frames.push(data);
                        }
                    }
                    // A peer that cancels or closes without error ends the stream like a FIN.
                    Poll::Ready(Some(Err(error)))
                        if matches!(error.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) =>
                    {
                        self.read_done = true
                    }
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(into_io(error))),
                }
            }
            if self.frames.is_empty() {
                if self.read_done {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.state = DownState::ShuttingDown;
                    continue;
                }
                // Nothing to write: flush what was written (a writer that buffers may hold
                // what the peer is waiting for), then wait for the next frame.
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
            let written = if self.frames.len() == 1 {
                ready!(writer.as_mut().poll_write(cx, &self.frames[0]))?
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
                for (slice, frame) in slices.iter_mut().zip(&self.frames) {
                    *slice = IoSlice::new(frame);
                }
                let n = self.frames.len().min(MAX_FRAMES_PER_WRITE);
                ready!(writer.as_mut().poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.amt += written as u64;
            self.need_flush = true;
            let mut left = written;
            while left > 0 {
                let Some(first) = self.frames.first_mut() else { break };
                let n = left.min(first.len());
                first.advance(n);
                left -= n;
                if first.is_empty() {
                    self.frames.remove(0);
                }
            }
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
