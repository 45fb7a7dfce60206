//! Spots HTTP/1 request heads carrying both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 §6.3 for such a message (chunked wins, the connection closes after
//! it), and hides the `Content-Length` from the service, so the service alone cannot refuse
//! it. Weft refuses it outright (a smuggling attempt deserves a 400, not a best guess), so the
//! bytes are watched on their way into hyper: the scanner follows request heads and bodies and
//! records, per request in order, whether its framing was ambiguous. The service takes one
//! verdict per request.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::MAX_HEADER_BYTES;

/// Longest chunk-size or trailer line followed; beyond it the scanner gives up (and hyper
/// refuses the message itself).
const MAX_LINE: usize = 4096;

/// Per-request verdicts shared between the connection's reader and its service.
#[derive(Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<bool>>>);

impl Verdicts {
    /// Whether the next request the service sees had ambiguous framing.
    pub fn next_is_ambiguous(&self) -> bool {
        self.0.lock().ok().and_then(|mut q| q.pop_front()).unwrap_or(false)
    }

    fn push(&self, ambiguous: bool) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(ambiguous);
        }
    }
}

#[derive(Debug, PartialEq)]
enum State {
    Head(Vec<u8>),
    Fixed(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    /// Not HTTP/1 any more (h2c, an upgrade, a message hyper refuses): stop following.
    Off,
}

pub struct Scanner {
    state: State,
    verdicts: Verdicts,
    /// The last request head's buffer, emptied, for the next head: a keep-alive connection
    /// allocates one head buffer, not one per request.
    spare: Vec<u8>,
}

impl Scanner {
    pub fn new(verdicts: Verdicts) -> Self {
        Scanner { state: State::Head(Vec::new()), verdicts, spare: Vec::new() }
    }

    /// An empty head buffer, the spare one when there is one.
    fn next_head(&mut self) -> State {
        State::Head(std::mem::take(&mut self.spare))
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            let (next, used) = self.step(state, bytes);
            self.state = next;
            bytes = &bytes[used..];
            if self.state == State::Off {
                return;
            }
        }
    }

    /// Consumes some of `bytes` in `state`; returns the next state and how much was used.
    fn step(&mut self, state: State, bytes: &[u8]) -> (State, usize) {
        match state {
            State::Off => (State::Off, bytes.len()),
            State::Head(mut buf) => {
                // Nearly every head arrives whole in one read: it is looked at where it lies,
                // not copied first.
                if buf.is_empty() {
                    let start = bytes.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(bytes.len());
                    if let Some(end) = head_end(&bytes[start..]) {
                        let next = self.head_done(&bytes[start..start + end]);
                        let next = match next {
                            State::Head(_) => State::Head(buf),
                            next => {
                                self.spare = buf;
                                next
                            }
                        };
                        return (next, start + end);
                    }
                }
                let (line_done, used) = take_until_blank_line(&mut buf, bytes);
                if !line_done {
                    return if buf.len() > MAX_HEADER_BYTES {
                        (State::Off, used)
                    } else {
                        (State::Head(buf), used)
                    };
                }
                let next = self.head_done(&buf);
                buf.clear();
                match next {
                    // Another head follows at once: it takes this buffer.
                    State::Head(_) => (State::Head(buf), used),
                    next => {
                        self.spare = buf;
                        (next, used)
                    }
                }
            }
            State::Fixed(remaining) => {
                let used = usize::try_from(remaining).unwrap_or(usize::MAX).min(bytes.len());
                let left = remaining - used as u64;
                (if left == 0 { self.next_head() } else { State::Fixed(left) }, used)
            }
            State::ChunkSize(mut line) => match take_line(&mut line, bytes) {
                (false, used) if line.len() > MAX_LINE => (State::Off, used),
                (false, used) => (State::ChunkSize(line), used),
                (true, used) => {
                    let text = String::from_utf8_lossy(&line);
                    let size = text.split(';').next().map(str::trim).unwrap_or("");
                    match u64::from_str_radix(size, 16) {
                        Ok(0) => (State::Trailers(Vec::new()), used),
                        Ok(n) => (State::ChunkData(n), used),
                        Err(_) => (State::Off, used),
                    }
                }
            },
            State::ChunkData(remaining) => {
                let used = usize::try_from(remaining).unwrap_or(usize::MAX).min(bytes.len());
                let left = remaining - used as u64;
                (if left == 0 { State::ChunkEnd(0) } else { State::ChunkData(left) }, used)
            }
            State::ChunkEnd(seen) => {
                // The CRLF after a chunk's data.
                if bytes[0] == b'\n' || seen == 1 {
                    (State::ChunkSize(Vec::new()), 1)
                } else {
                    (State::ChunkEnd(1), 1)
                }
            }
            State::Trailers(mut line) => match take_line(&mut line, bytes) {
                (false, used) if line.len() > MAX_LINE => (State::Off, used),
                (false, used) => (State::Trailers(line), used),
                (true, used) if line.iter().all(|b| *b == b'\r' || *b == b'\n') => (self.next_head(), used),
                (true, used) => (State::Trailers(Vec::new()), used),
            },
        }
    }

    /// Reads the framing of a whole request head, as bytes: lines end with `\n` (a `\r` before
    /// it is dropped), as httparse reads them, so a head with bare line feeds is followed too.
    fn head_done(&mut self, head: &[u8]) -> State {
        let mut lines = head.split(|b| *b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let request_line = lines.by_ref().find(|l| !l.is_empty()).unwrap_or(b"");
        if request_line.starts_with(b"PRI * HTTP/2.0") {
            return State::Off;
        }
        let mut content_length: Option<&[u8]> = None;
        let mut transfer_encoding: Option<&[u8]> = None;
        let mut upgrade = false;
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
            let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                content_length = Some(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                transfer_encoding = Some(value);
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        let ambiguous = content_length.is_some() && transfer_encoding.is_some();
        self.verdicts.push(ambiguous);
        if ambiguous || upgrade || request_line.starts_with(b"CONNECT ") {
            // The connection ends after this request or stops being HTTP/1.
            return State::Off;
        }
        match (transfer_encoding, content_length) {
            (Some(te), _)
                if te
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")) =>
            {
                State::ChunkSize(Vec::new())
            }
            (Some(_), _) => State::Off,
            (None, Some(cl)) => match std::str::from_utf8(cl).ok().and_then(|cl| cl.parse::<u64>().ok()) {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Fixed(n),
                None => State::Off,
            },
            (None, None) => State::Head(Vec::new()),
        }
    }
}

/// How far into `bytes`, which start with a request head's first line, the head ends (just
/// past the blank line), when it ends there.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(line_end) = bytes[at..].iter().position(|b| *b == b'\n') {
        // The first line is the request line (blank lines before it were skipped).
        let blank = at > 0 && matches!(&bytes[at..at + line_end], b"" | b"\r");
        at += line_end + 1;
        if blank {
            return Some(at);
        }
    }
    None
}

/// Appends to `buf` up to and including the end of a request head; says whether it ended and
/// how much of `bytes` it took. Line by line: a head ends with a line feed, so the end is only
/// looked for after one.
fn take_until_blank_line(buf: &mut Vec<u8>, bytes: &[u8]) -> (bool, usize) {
    let mut at = 0;
    if buf.is_empty() {
        // Blank lines before a request line are ignored, as RFC 9112 §2.2 allows.
        at = bytes.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(bytes.len());
    }
    while let Some(line_end) = bytes[at..].iter().position(|b| *b == b'\n') {
        let end = at + line_end + 1;
        buf.extend_from_slice(&bytes[at..end]);
        at = end;
        // A blank line, `\r\n` or a bare `\n`, ends the head.
        if buf.ends_with(b"\n\r\n") || buf.ends_with(b"\n\n") {
            return (true, at);
        }
    }
    buf.extend_from_slice(&bytes[at..]);
    (false, bytes.len())
}

/// Appends to `line` up to and including a `\n`; says whether the line ended.
fn take_line(line: &mut Vec<u8>, bytes: &[u8]) -> (bool, usize) {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..=i]);
            (true, i + 1)
        }
        None => {
            line.extend_from_slice(bytes);
            (false, bytes.len())
        }
    }
}

/// A client connection whose incoming bytes pass through a [`Scanner`].
pub struct Scanned<T> {
    inner: T,
    scanner: Scanner,
}

impl<T> Scanned<T> {
    pub fn new(inner: T, verdicts: Verdicts) -> Self {
        Scanned { inner, scanner: Scanner::new(verdicts) }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Scanned<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.scanner.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Scanned<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdicts_of(input: &[u8], split: usize) -> Vec<bool> {
        let verdicts = Verdicts::default();
        let mut scanner = Scanner::new(verdicts.clone());
        let split = split.min(input.len());
        scanner.feed(&input[..split]);
        scanner.feed(&input[split..]);
        let q = verdicts.0.lock().expect("lock");
        q.iter().copied().collect()
    }

    const PIPELINE: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /smuggled HTTP/1.1\r\n\r\n";

    #[test]
    fn follows_pipelined_bodies_and_flags_the_ambiguous_request() {
        for split in 0..PIPELINE.len() {
            assert_eq!(verdicts_of(PIPELINE, split), vec![false, false, false, true], "split at {split}");
        }
    }

    #[test]
    fn bare_line_feeds_end_lines_as_they_do_for_hyper() {
        // httparse ends header lines at a bare `\n` too: both fields are seen, however the
        // bytes arrive.
        let input = b"POST /a HTTP/1.1\nHost: h\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
        for split in 0..input.len() {
            assert_eq!(verdicts_of(input, split), vec![true], "split at {split}");
        }
        let mixed = b"GET /a HTTP/1.1\nHost: h\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        for split in 0..mixed.len() {
            assert_eq!(verdicts_of(mixed, split), vec![false, false], "split at {split}");
        }
    }

    #[test]
    fn h2c_prior_knowledge_turns_it_off() {
        assert!(verdicts_of(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 3).is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), split in 0usize..2048) {
            let _ = verdicts_of(&bytes, split);
        }
    }
}
