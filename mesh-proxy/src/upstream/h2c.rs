//! HTTP/2 with prior knowledge (h2c) to endpoints, on the `h2` crate directly: one multiplexed
//! connection per endpoint, its `SendRequest` shared by every request to it.
//!
//! hyper's HTTP/2 client (under hyper-util's pooled client, which this replaces) sends a
//! request's HEADERS and then, from a task it spawns per request, its DATA: a new stream gets no
//! send capacity until the connection task has opened it, so the body always waited for a second
//! turn of that task and went out in a write of its own. Measured on gRPC unary calls through
//! the proxy: two `sendto()` to the backend per call, and per call a task to wait for the
//! response, another to copy the body, a channel hop to the connection task and a pool
//! checkout. Here the body frames the client has already sent (all of a unary call) are queued
//! behind the HEADERS before the connection task runs, so both leave in one write, and only a
//! body still arriving gets a task to copy it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

use super::UpstreamError;
use super::dial::{CONNECT_TIMEOUT, Dial};
use crate::metrics::UpstreamFailure;
use crate::proxy::ProxyBody;

/// The windows and buffers hyper's client used (its defaults), so the flow of a large body or
/// of many concurrent streams is what it was before this client: a 2 MiB stream window and a
/// 5 MiB connection window let a backend send ahead without waiting for WINDOW_UPDATEs on a
/// fast link, and cost memory only while a client reads slower than the backend sends.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// A stream queues at most this much of a request body ahead of the backend's window.
const MAX_SEND_BUFFER: usize = 1024 * 1024;
/// Headers of a response, at most (hyper's client default).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Body bytes the client had already sent that go out with the request's HEADERS without
/// waiting for the backend's window: what was received is in memory anyway (bounded by this
/// proxy's own receive window); beyond this the copy waits for the window like any other.
const INLINE_BODY_LIMIT: usize = 64 * 1024;
/// How often idle and closed connections are dropped from the pool.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The pooled connection to one endpoint.
struct Conn {
    tx: h2::client::SendRequest<Bytes>,
    /// The endpoint as `:authority`, made once per connection rather than per request.
    authority: Authority,
    /// Set by the connection's task when the connection ended.
    closed: Arc<AtomicBool>,
    /// When a request last took it (for the idle timeout).
    used: Instant,
}

#[derive(Default)]
struct Inner {
    endpoints: HashMap<SocketAddr, Conn>,
    sweeping: bool,
}

/// The h2c connections of one [`super::Upstream`].
pub struct H2cPool {
    dial: Arc<dyn Dial>,
    inner: Arc<Mutex<Inner>>,
    idle_timeout: Duration,
}

impl H2cPool {
    pub fn new(dial: Arc<dyn Dial>, idle_timeout: Duration) -> Self {
        H2cPool { dial, inner: Arc::default(), idle_timeout }
    }

    /// Sends `req` (its URI the path and query, or absolute) to `endpoint` over its pooled
    /// connection, dialling one when there is none. A pooled connection found closed before the
    /// request was written is replaced and the request sent on the new one.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<H2Body>, UpstreamError> {
        let (mut parts, body) = req.into_parts();
        strip_connection_headers(&mut parts.headers);
        // As hyper's client did: a body of known size says so.
        if let Some(len) = body.size_hint().exact()
            && (len != 0
                || !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT))
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let eos = body.is_end_stream();
        let mut fresh = false;
        let (tx, authority) = loop {
            let (tx, authority) = match self.pooled(endpoint) {
                Some(pooled) => pooled,
                None => {
                    fresh = true;
                    self.connect(endpoint).await?
                }
            };
            // Waits while the backend's limit of concurrent streams is reached.
            match tx.ready().await {
                Ok(tx) => break (tx, authority),
                Err(error) if !fresh => {
                    tracing::trace!(%endpoint, %error, "pooled h2c connection closed; dialling");
                    self.forget(endpoint);
                }
                Err(error) => return Err(reset(error)),
            }
        };
        let mut tx = tx;
        let mut uri = Uri::from_parts({
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(authority);
            uri.path_and_query = parts.uri.path_and_query().cloned();
            uri
        })
        .map_err(|error| UpstreamError {
            kind: UpstreamFailure::Connect,
            message: format!("no URI for {endpoint}: {error}"),
        })?;
        std::mem::swap(&mut parts.uri, &mut uri);
        let (response, stream) = tx.send_request(Request::from_parts(parts, ()), eos).map_err(reset)?;
        if !eos {
            forward(body, stream);
        }
        let response = response.await.map_err(reset)?;
        Ok(response.map(H2Body::new))
    }

    /// The endpoint's open connection, marked used.
    fn pooled(&self, endpoint: SocketAddr) -> Option<(h2::client::SendRequest<Bytes>, Authority)> {
        let mut inner = self.inner.lock().ok()?;
        let conn = inner.endpoints.get_mut(&endpoint)?;
        if conn.closed.load(Ordering::Relaxed) {
            inner.endpoints.remove(&endpoint);
            return None;
        }
        conn.used = Instant::now();
        Some((conn.tx.clone(), conn.authority.clone()))
    }

    fn forget(&self, endpoint: SocketAddr) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.endpoints.remove(&endpoint);
        }
    }

    /// Dials `endpoint`, runs the connection in a task of its own and pools it.
    async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> Result<(h2::client::SendRequest<Bytes>, Authority), UpstreamError> {
        let authority: Authority = endpoint
            .to_string()
            .parse()
            .map_err(|error| connect(format!("no authority for {endpoint}: {error}")))?;
        let io = match tokio::time::timeout(CONNECT_TIMEOUT, self.dial.dial(endpoint)).await {
            Ok(Ok(io)) => io,
            Ok(Err(error)) => return Err(connect(format!("connect to {endpoint}: {error}"))),
            Err(_) => return Err(connect(format!("connect to {endpoint} timed out"))),
        };
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(io);
        let (tx, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| connect(format!("h2c handshake with {endpoint} timed out")))?
            .map_err(|error| connect(format!("h2c handshake with {endpoint}: {error}")))?;
        let closed = Arc::new(AtomicBool::new(false));
        let closing = closed.clone();
        // The connection ends by itself once the pool dropped its sender (idle) and its last
        // stream is over.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, "h2c backend connection ended with an error");
            }
            closing.store(true, Ordering::Relaxed);
        });
        let Ok(mut inner) = self.inner.lock() else { return Ok((tx, authority)) };
        // Requests that dialled at the same time: the first connection stays pooled, the others
        // serve the request that made them and close.
        let pooled = inner.endpoints.get(&endpoint).is_some_and(|c| !c.closed.load(Ordering::Relaxed));
        if !pooled {
            let conn = Conn { tx: tx.clone(), authority: authority.clone(), closed, used: Instant::now() };
            inner.endpoints.insert(endpoint, conn);
            if !inner.sweeping {
                inner.sweeping = true;
                tokio::spawn(sweep(Arc::downgrade(&self.inner), self.idle_timeout));
            }
        }
        Ok((tx, authority))
    }

    /// Open connections pooled (for tests).
    #[cfg(test)]
    fn pooled_count(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.endpoints.len())
    }
}

/// Drops closed connections and those unused for `idle_timeout` (their streams in progress run
/// to their end), until the pool is empty or gone.
async fn sweep(inner: Weak<Mutex<Inner>>, idle_timeout: Duration) {
    loop {
        tokio::time::sleep(SWEEP_EVERY.min(idle_timeout)).await;
        let Some(inner) = inner.upgrade() else { return };
        let Ok(mut inner) = inner.lock() else { return };
        let now = Instant::now();
        inner
            .endpoints
            .retain(|_, c| !c.closed.load(Ordering::Relaxed) && now.duration_since(c.used) < idle_timeout);
        if inner.endpoints.is_empty() {
            inner.sweeping = false;
            return;
        }
    }
}

/// Headers HTTP/2 forbids (RFC 9113 8.2.2); the `h2` crate refuses a request carrying one.
fn strip_connection_headers(headers: &mut HeaderMap) {
    const CONNECTION_SPECIFIC: [HeaderName; 4] = [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
    ];
    for name in CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

/// Copies the request body to the backend. The frames already received go out now, queued
/// behind the HEADERS (a new stream has no send capacity until the connection task opens it,
/// and `h2` keeps what is sent beyond the window until it has); the rest is copied by a task
/// that waits for the backend's window before taking more from the client.
fn forward(mut body: ProxyBody, mut stream: h2::SendStream<Bytes>) {
    let mut inline = 0;
    while inline < INLINE_BODY_LIMIT {
        let Some(frame) = body.frame().now_or_never() else { break };
        match send_frame(frame, &body, &mut stream) {
            Sent::More(bytes) => inline += bytes,
            Sent::Done => return,
        }
    }
    tokio::spawn(pipe(body, stream));
}

/// What [`send_frame`] did.
enum Sent {
    /// This many data bytes queued; the body goes on.
    More(usize),
    /// The body is over (or failed, or the stream did): nothing more to copy.
    Done,
}

fn send_frame(
    frame: Option<Result<Frame<Bytes>, hyper::Error>>,
    body: &ProxyBody,
    stream: &mut h2::SendStream<Bytes>,
) -> Sent {
    match frame {
        // The body ended without saying so on its last frame.
        None => {
            let _ = stream.send_data(Bytes::new(), true);
            Sent::Done
        }
        Some(Err(error)) => {
            tracing::debug!(%error, "request body failed; resetting the backend stream");
            stream.send_reset(h2::Reason::INTERNAL_ERROR);
            Sent::Done
        }
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => {
                let eos = body.is_end_stream();
                let len = data.len();
                if stream.send_data(data, eos).is_err() || eos { Sent::Done } else { Sent::More(len) }
            }
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    let _ = stream.send_trailers(trailers);
                    Sent::Done
                }
                // A frame kind HTTP/2 does not carry.
                Err(_) => Sent::More(0),
            },
        },
    }
}

/// Copies the rest of a request body, one chunk ahead of the backend's window at most, until it
/// ends or the backend resets the stream.
async fn pipe(mut body: ProxyBody, mut stream: h2::SendStream<Bytes>) {
    loop {
        // Wait until what was queued before has left: a client faster than the backend is
        // held back by its own window instead of filling this proxy's memory.
        stream.reserve_capacity(1);
        while stream.capacity() == 0 {
            match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                // The stream is over (reset by the backend, or the connection gone).
                Some(Err(_)) | None => return,
            }
        }
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        if let Sent::Done = send_frame(frame, &body, &mut stream) {
            return;
        }
    }
}

/// A backend's response body on an h2c stream; the window is given back as the client reads.
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
}

impl H2Body {
    fn new(recv: h2::RecvStream) -> Self {
        let done = recv.is_end_stream();
        H2Body { recv, data_done: done, done }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The connection and stream windows reopen by what the client took.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => self.data_done = true,
            }
        }
        let trailers = ready!(self.recv.poll_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() { SizeHint::with_exact(0) } else { SizeHint::default() }
    }
}

fn connect(message: String) -> UpstreamError {
    UpstreamError { kind: UpstreamFailure::Connect, message }
}

fn reset(error: h2::Error) -> UpstreamError {
    UpstreamError { kind: UpstreamFailure::Reset, message: format!("h2c: {error}") }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::dial::Direct;

    /// An h2c backend that answers every request with its body echoed back, a header saying
    /// the request's trailers (`-` for none) and `:authority`, and a `grpc-status` trailer.
    /// Counts the connections it accepted.
    async fn echo_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else { return };
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        tokio::spawn(async move {
                            let authority =
                                request.uri().authority().map_or("-".to_string(), |a| a.to_string());
                            let mut recv = request.into_body();
                            let mut echoed = Vec::new();
                            while let Some(Ok(data)) = recv.data().await {
                                let _ = recv.flow_control().release_capacity(data.len());
                                echoed.extend_from_slice(&data);
                            }
                            let trailer = match recv.trailers().await {
                                Ok(Some(t)) => t
                                    .get("x-trailer")
                                    .map_or("-".into(), |v| v.to_str().unwrap_or("?").to_string()),
                                _ => "-".into(),
                            };
                            let response = Response::builder()
                                .header("x-request-trailer", trailer)
                                .header("x-authority", authority)
                                .body(())
                                .expect("response");
                            let Ok(mut send) = respond.send_response(response, false) else { return };
                            // Sent in pieces the window allows, as a real server would.
                            let mut rest = Bytes::from(echoed);
                            while !rest.is_empty() {
                                send.reserve_capacity(rest.len());
                                let Some(Ok(n)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await
                                else {
                                    return;
                                };
                                let chunk = rest.split_to(n.min(rest.len()));
                                if send.send_data(chunk, false).is_err() {
                                    return;
                                }
                            }
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            let _ = send.send_trailers(trailers);
                        });
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request(body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/echo.Echo/Say".parse().expect("uri");
        req.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        req.headers_mut().insert(header::TE, HeaderValue::from_static("trailers"));
        req
    }

    fn full(bytes: &'static [u8]) -> ProxyBody {
        Full::new(Bytes::from_static(bytes)).map_err(|n| match n {}).boxed()
    }

    #[tokio::test]
    async fn a_body_and_its_trailers_go_through_and_the_connection_is_shared() {
        let (addr, accepted) = echo_backend().await;
        let pool = H2cPool::new(Arc::new(Direct), Duration::from_secs(90));
        for i in 0..3 {
            let text: &'static [u8] = if i % 2 == 0 { b"ping" } else { b"pong" };
            let response = pool.send(addr, request(full(text))).await.expect("answer");
            assert_eq!(response.headers()["x-request-trailer"], "-");
            assert_eq!(response.headers()["x-authority"], addr.to_string().as_str());
            let collected = response.into_body().collect().await.expect("body");
            assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
            assert_eq!(collected.to_bytes(), Bytes::from_static(text));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
        assert_eq!(pool.pooled_count(), 1);

        // A streamed body that ends with trailers, arriving while the request is in flight.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        let answer = tokio::spawn({
            let pool = Arc::new(pool);
            async move { pool.send(addr, request(body)).await }
        });
        tx.send(Ok(Frame::data(Bytes::from_static(b"one ")))).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"two")))).await.expect("send");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_static("end"));
        tx.send(Ok(Frame::trailers(trailers))).await.expect("send");
        drop(tx);
        let response = answer.await.expect("task").expect("answer");
        assert_eq!(response.headers()["x-request-trailer"], "end");
        assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "one two");
    }

    #[tokio::test]
    async fn bodies_larger_than_every_window_flow_both_ways() {
        let (addr, _) = echo_backend().await;
        let pool = H2cPool::new(Arc::new(Direct), Duration::from_secs(90));
        // Beyond the backend's 64 KiB default windows and this client's 5 MiB connection window.
        let big: Vec<u8> = (0..6 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Frame<Bytes>, hyper::Error>> =
            big.chunks(16 * 1024).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        let body = StreamBody::new(futures::stream::iter(chunks)).boxed();
        let response = tokio::time::timeout(Duration::from_secs(20), pool.send(addr, request(body)))
            .await
            .expect("in time")
            .expect("answer");
        let echoed = tokio::time::timeout(Duration::from_secs(20), response.into_body().collect())
            .await
            .expect("in time")
            .expect("body")
            .to_bytes();
        assert!(echoed == big, "6 MiB echoed intact ({} bytes back)", echoed.len());
    }

    #[tokio::test]
    async fn a_closed_pooled_connection_is_replaced_and_nothing_listening_is_a_connect_failure() {
        let (addr, accepted) = echo_backend().await;
        let pool = H2cPool::new(Arc::new(Direct), Duration::from_secs(90));
        pool.send(addr, request(full(b"a"))).await.expect("answer");
        // The pooled connection is taken for closed, as its task says when it ends.
        if let Ok(inner) = pool.inner.lock() {
            inner.endpoints.values().for_each(|c| c.closed.store(true, Ordering::Relaxed));
        }
        pool.send(addr, request(full(b"b"))).await.expect("answer on a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        let gone = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        match pool.send(gone, request(full(b"c"))).await {
            Err(error) => assert_eq!(error.kind, UpstreamFailure::Connect),
            Ok(response) => panic!("an answer from nothing: {}", response.status()),
        }
    }
}
