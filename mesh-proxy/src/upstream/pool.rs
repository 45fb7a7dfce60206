//! HTTP/1.1 keep-alive connections to endpoints, pooled per endpoint address.
//!
//! Each connection is a `hyper::client::conn::http1` pair: its [`SendRequest`] stays in the
//! pool for the connection's whole life, busy or idle, and its `Connection` runs in a task of
//! its own. A request takes the first connection that is ready for one (hyper's
//! `SendRequest::is_ready`: the previous exchange, body included, is over), hands its request
//! to it under the pool's lock and waits for the answer outside it. Nothing is checked out or
//! given back, so unlike hyper-util's legacy pool there is no task spawned per request to wait
//! until a connection is idle again, no checkout future, and no absolute URI to build and parse.
//!
//! Only when no pooled connection is ready is a new one dialled: a backend connection carries
//! one request at a time, so a burst of N concurrent requests needs N of them, and closing the
//! ones beyond a small cap only to dial them again on the next burst (what a low idle cap did
//! under h2 load: one connect per request) is the expensive path.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::Uri;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::UpstreamError;
use super::dial::{CONNECT_TIMEOUT, Dial};
use crate::metrics::UpstreamFailure;
use crate::proxy::ProxyBody;

/// Connections kept per endpoint, busy and idle together. A connection carries one request at a
/// time, so this is the concurrency per endpoint (per proxy) served without dialling: well
/// above the bench's 320 concurrent h2 streams and a busy ingress' usual burst. A request that
/// finds the pool full and every connection busy still gets a connection of its own, closed
/// after its exchange. Each pooled connection holds a socket and hyper's buffers (8 KiB to read,
/// a little to write), so 1024 of them are about 10 MB at most, held only until
/// [`IDLE_TIMEOUT`] after their last use.
pub const MAX_PER_ENDPOINT: usize = 1024;
/// An idle connection is closed after this: long enough to reuse across bursts, short enough
/// not to hold sockets to endpoints that went away.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often idle and closed connections are swept out: expired ones live at most twice this
/// past [`IDLE_TIMEOUT`] (idleness is counted in sweeps), and a sweep is one lock and a scan, so
/// a few seconds is cheap.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// One pooled connection.
struct Conn {
    tx: SendRequest<ProxyBody>,
    /// [`Inner::sweeps`] when a request was last handed to it (for the idle timeout): a count
    /// the pool keeps anyway, where a clock read per request cost ~1 % of the proxy's samples.
    used: u64,
}

#[derive(Default)]
struct Inner {
    endpoints: HashMap<SocketAddr, VecDeque<Conn>>,
    /// Sweeps done so far: the pool's clock, in steps of [`Limits::sweep_every`].
    sweeps: u64,
    /// A sweeper task is running (it ends when the pool is empty or dropped).
    sweeping: bool,
}

/// How many connections a pool keeps and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_per_endpoint: usize,
    pub idle_timeout: Duration,
    pub sweep_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_per_endpoint: MAX_PER_ENDPOINT, idle_timeout: IDLE_TIMEOUT, sweep_every: SWEEP_EVERY }
    }
}

/// The HTTP/1.1 connections of one [`super::Upstream`].
pub struct Http1Pool {
    dial: Arc<dyn Dial>,
    inner: Arc<Mutex<Inner>>,
    builder: http1::Builder,
    limits: Limits,
}

/// A pooled connection's answer: the response, or the error (with the request when it was not
/// sent).
type Answer = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>>;

impl Http1Pool {
    pub fn new(dial: Arc<dyn Dial>, limits: Limits) -> Self {
        let mut builder = http1::Builder::new();
        // Request heads are small and most bodies too: one contiguous buffer and one send()
        // per write, as hyper-util's client did (its connection type did not report vectored
        // writes), rather than a writev() of a head and a body.
        builder.writev(false);
        Http1Pool { dial, inner: Arc::default(), builder, limits }
    }

    /// Sends `req` (origin-form URI) to `endpoint` over a pooled connection, or a new one when
    /// none is ready. A request a reused connection gave back unsent (the backend had closed it
    /// while idle) goes again on another connection: nothing was written, so this is safe for
    /// any method. On a new connection such a failure is the answer.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        prepare(endpoint, &mut req);
        loop {
            let pending = match self.try_pooled(endpoint, req) {
                Ok(pending) => pending,
                Err(unsent) => return self.send_fresh(endpoint, unsent).await,
            };
            match pending.await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        tracing::trace!(%endpoint, error = %error.error(), "pooled connection closed; sending again");
                        req = unsent;
                    }
                    None => return Err(reset(error.into_error())),
                },
            }
        }
    }

    /// Hands `req` to the first pooled connection to `endpoint` that is ready for one, dropping
    /// closed ones on the way, and moves it to the front.
    ///
    /// The order is most recently used first, and busy connections keep their place: a load of
    /// N concurrent requests keeps cycling through the same N or so warm connections near the
    /// front, and the rest (left from a bigger burst) stay idle at the back until they expire.
    /// Rotating busy ones to the back instead spread a 32-connection load over all 240
    /// connections an h2 burst had left, every one of them kept warm and never expiring, and
    /// cost ~20 % of the proxy's HTTP/1.1 requests per core.
    #[allow(clippy::result_large_err)]
    fn try_pooled(
        &self,
        endpoint: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<impl Future<Output = Answer> + use<>, Request<ProxyBody>> {
        let Ok(mut inner) = self.inner.lock() else { return Err(req) };
        let now = inner.sweeps;
        let Some(conns) = inner.endpoints.get_mut(&endpoint) else { return Err(req) };
        let mut i = 0;
        while let Some(conn) = conns.get(i) {
            if conn.tx.is_closed() {
                conns.remove(i);
                continue;
            }
            if !conn.tx.is_ready() {
                i += 1;
                continue;
            }
            let Some(mut conn) = conns.remove(i) else { break };
            conn.used = now;
            let pending = conn.tx.try_send_request(req);
            conns.push_front(conn);
            return Ok(pending);
        }
        Err(req)
    }

    /// Dials a new connection, sends `req` on it, and pools it when there is room.
    async fn send_fresh(
        &self,
        endpoint: SocketAddr,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let io = match tokio::time::timeout(CONNECT_TIMEOUT, self.dial.dial(endpoint)).await {
            Ok(Ok(io)) => io,
            Ok(Err(error)) => return Err(connect(format!("connect to {endpoint}: {error}"))),
            Err(_) => return Err(connect(format!("connect to {endpoint} timed out"))),
        };
        let (mut tx, conn) = self
            .builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|error| connect(format!("handshake with {endpoint}: {error}")))?;
        // Upgrades (WebSocket) hand the socket over once the backend says 101.
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, %error, "backend connection ended with an error");
            }
        });
        let pending = tx.try_send_request(req);
        self.put(endpoint, tx);
        pending.await.map_err(|error| reset(error.into_error()))
    }

    /// Keeps `tx` for later requests when the endpoint's pool has room (else it closes once its
    /// exchange is over, as hyper closes a connection whose sender is gone).
    fn put(&self, endpoint: SocketAddr, tx: SendRequest<ProxyBody>) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let now = inner.sweeps;
        let conns = inner.endpoints.entry(endpoint).or_default();
        if conns.len() >= self.limits.max_per_endpoint {
            conns.retain(|c| !c.tx.is_closed());
            if conns.len() >= self.limits.max_per_endpoint {
                return;
            }
        }
        conns.push_front(Conn { tx, used: now });
        if !inner.sweeping {
            inner.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(&self.inner), self.limits));
        }
    }

    /// Connections pooled for `endpoint` (busy or idle), for tests and the admin view.
    pub fn pooled(&self, endpoint: SocketAddr) -> usize {
        self.inner.lock().map_or(0, |inner| inner.endpoints.get(&endpoint).map_or(0, VecDeque::len))
    }
}

/// Drops closed connections and those idle for the idle timeout, every `sweep_every`, until
/// the pool is empty (the next new connection starts a sweeper again) or gone.
async fn sweep(inner: Weak<Mutex<Inner>>, limits: Limits) {
    loop {
        tokio::time::sleep(limits.sweep_every).await;
        let Some(inner) = inner.upgrade() else { return };
        let Ok(mut inner) = inner.lock() else { return };
        inner.sweeps += 1;
        let now = inner.sweeps;
        inner.endpoints.retain(|_, conns| {
            // Only a ready connection is idle; a busy one is in the middle of an exchange. One
            // last used `n` sweeps ago has been idle for more than `n - 1` sweep intervals.
            conns.retain(|c| {
                let sweeps = u32::try_from(now.saturating_sub(c.used).saturating_sub(1)).unwrap_or(u32::MAX);
                let idle_for = limits.sweep_every.saturating_mul(sweeps);
                let idle = c.tx.is_ready() && idle_for >= limits.idle_timeout;
                !c.tx.is_closed() && !idle
            });
            !conns.is_empty()
        });
        if inner.endpoints.is_empty() {
            inner.sweeping = false;
            return;
        }
    }
}

/// The request as it goes on the wire, as hyper-util's client made it: the path alone
/// (origin form; CONNECT's authority form names the endpoint), and a `Host` naming the
/// endpoint when the request has none (HTTP/1.1 requires one).
fn prepare(endpoint: SocketAddr, req: &mut Request<ProxyBody>) {
    if req.method() == Method::CONNECT {
        if let Ok(uri) = Uri::try_from(endpoint.to_string()) {
            *req.uri_mut() = uri;
        }
    } else if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    if !req.headers().contains_key(header::HOST) {
        // `ip:port`, the port left out when it is HTTP's default, as a URI authority says it.
        let host = if endpoint.port() == 80 {
            match endpoint {
                SocketAddr::V4(v4) => v4.ip().to_string(),
                SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
            }
        } else {
            endpoint.to_string()
        };
        if let Ok(value) = HeaderValue::try_from(host) {
            req.headers_mut().insert(header::HOST, value);
        }
    }
}

fn connect(message: String) -> UpstreamError {
    UpstreamError { kind: UpstreamFailure::Connect, message }
}

fn reset(error: hyper::Error) -> UpstreamError {
    let message = match std::error::Error::source(&error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    };
    UpstreamError { kind: UpstreamFailure::Reset, message }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::dial::Direct;

    /// What the test backend does with each request on a connection.
    #[derive(Clone, Copy)]
    enum Backend {
        /// Answers every request, keeping the connection.
        KeepAlive,
        /// Answers one request (claiming keep-alive), then closes the connection.
        AnswerThenClose,
        /// Reads the request and closes without answering.
        Reset,
        /// Answers once `gate` connections are open (so requests overlap), keeping them.
        Gate(usize),
    }

    /// A raw HTTP/1.1 backend on loopback; counts the connections it accepted and saw closed.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn server(behaviour: Backend) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(tokio::sync::watch::Sender::new(0usize));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                open.send_modify(|n| *n += 1);
                let (c, open) = (c.clone(), open.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request head (the tests send no bodies).
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    c.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end);
                        if let Backend::Reset = behaviour {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        if let Backend::Gate(n) = behaviour {
                            let mut open = open.subscribe();
                            let _ = tokio::time::timeout(Duration::from_secs(5), open.wait_for(|o| *o >= n))
                                .await;
                        }
                        // The request's Host and path come back as the body.
                        let host = head
                            .lines()
                            .find_map(|l| l.strip_prefix("host: ").or_else(|| l.strip_prefix("Host: ")))
                            .unwrap_or("-")
                            .to_string();
                        let path = head.split_whitespace().nth(1).unwrap_or("-").to_string();
                        let body = format!("{host} {path}");
                        let answer =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if let Backend::AnswerThenClose = behaviour {
                            c.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        Server { addr, accepted, closed }
    }

    fn get(path: &str) -> Request<ProxyBody> {
        let mut req = Request::new(Empty::<Bytes>::new().map_err(|n| match n {}).boxed());
        *req.uri_mut() = path.parse().expect("uri");
        req
    }

    async fn body(response: Response<Incoming>) -> String {
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).to_string()
    }

    fn pool(limits: Limits) -> Http1Pool {
        Http1Pool::new(Arc::new(Direct), limits)
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_reused() {
        let backend = server(Backend::KeepAlive).await;
        let pool = pool(Limits::default());
        for i in 0..5 {
            let response = pool.send(backend.addr, get(&format!("/r{i}"))).await.expect("answer");
            // No Host of its own: the endpoint's, as a URI authority would say it.
            assert_eq!(body(response).await, format!("{} /r{i}", backend.addr));
        }
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 1, "one connection for all");
        assert_eq!(pool.pooled(backend.addr), 1);
    }

    #[tokio::test]
    async fn an_absolute_uri_goes_out_in_origin_form_with_the_host_kept() {
        let backend = server(Backend::KeepAlive).await;
        let pool = pool(Limits::default());
        let mut req = get(&format!("http://{}/a?b=c", backend.addr));
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("shop.example"));
        let response = pool.send(backend.addr, req).await.expect("answer");
        assert_eq!(body(response).await, "shop.example /a?b=c");
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_after_answering_is_not_used_again() {
        let backend = server(Backend::AnswerThenClose).await;
        let pool = pool(Limits::default());
        for i in 0..4 {
            let response = pool.send(backend.addr, get(&format!("/r{i}"))).await.expect("answer");
            assert!(body(response).await.ends_with(&format!("/r{i}")));
            // Time for the close to reach the idle connection (on loopback, well under this):
            // a request racing it could be written just before the FIN arrives, and that is a
            // failure no client can tell from a backend dying mid-request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 4, "a new connection each time");
    }

    #[tokio::test]
    async fn a_backend_that_closes_mid_request_is_a_reset_not_a_retry() {
        let backend = server(Backend::Reset).await;
        let pool = pool(Limits::default());
        let error = pool.send(backend.addr, get("/")).await.expect_err("no answer");
        assert_eq!(error.kind, UpstreamFailure::Reset);
        // The request may have reached the backend: it is not sent again.
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_failure() {
        let addr = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        // The listener is dropped: the port refuses connections.
        let error = pool(Limits::default()).send(addr, get("/")).await.expect_err("refused");
        assert_eq!(error.kind, UpstreamFailure::Connect);
    }

    /// `n` requests sent together, all in flight before the first answer is awaited; their
    /// bodies in order.
    async fn all_at_once(pool: &Arc<Http1Pool>, addr: SocketAddr, n: usize) -> Vec<String> {
        let requests: Vec<_> = (0..n)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    body(pool.send(addr, get(&format!("/{i}"))).await.expect("answer")).await
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(n);
        for request in requests {
            answers.push(request.await.expect("task"));
        }
        answers
    }

    /// The backend's count of closed connections once it reaches `want`, or after 5 s.
    async fn closed_within_5s(backend: &Server, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend.closed.load(Ordering::SeqCst) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        backend.closed.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn the_pool_is_bounded_and_the_connections_beyond_it_close() {
        let backend = server(Backend::Gate(4)).await;
        let pool = Arc::new(pool(Limits { max_per_endpoint: 2, ..Limits::default() }));
        // Collected: all four are in flight before the first answer is awaited.
        for answer in all_at_once(&pool, backend.addr, 4).await {
            assert!(answer.starts_with(&backend.addr.to_string()));
        }
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 4, "four at once need four connections");
        assert_eq!(pool.pooled(backend.addr), 2, "two kept");
        // The two not kept close once their exchange is over.
        assert_eq!(closed_within_5s(&backend, 2).await, 2);
        // The kept ones serve what comes next.
        for i in 0..4 {
            pool.send(backend.addr, get(&format!("/again{i}"))).await.expect("answer");
        }
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 4, "no new connection");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let backend = server(Backend::KeepAlive).await;
        let limits = Limits {
            idle_timeout: Duration::from_millis(100),
            sweep_every: Duration::from_millis(20),
            ..Limits::default()
        };
        let pool = pool(limits);
        body(pool.send(backend.addr, get("/")).await.expect("answer")).await;
        assert_eq!(pool.pooled(backend.addr), 1);
        assert_eq!(closed_within_5s(&backend, 1).await, 1, "closed once idle");
        assert_eq!(pool.pooled(backend.addr), 0);
        // And a later request dials again.
        body(pool.send(backend.addr, get("/")).await.expect("answer")).await;
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn after_a_burst_a_light_load_stays_on_few_connections_and_the_rest_expire() {
        let backend = server(Backend::Gate(4)).await;
        // The idle timeout is 16 times the clients' pause, so that a test process stalled by a
        // loaded machine (tests run in parallel) does not let a warm connection expire; the
        // clients run for 2.5 idle timeouts, so the two cold ones do.
        let limits = Limits {
            idle_timeout: Duration::from_millis(400),
            sweep_every: Duration::from_millis(20),
            ..Limits::default()
        };
        let pool = Arc::new(pool(limits));
        all_at_once(&pool, backend.addr, 4).await;
        assert_eq!(pool.pooled(backend.addr), 4);
        // Two clients, each one request at a time, more often than the idle timeout: the two
        // most recently used connections take them all, and the other two go idle and are
        // closed (moving busy connections to the back instead would cycle through all four).
        let clients: Vec<_> = (0..2)
            .map(|c| {
                let (pool, addr) = (pool.clone(), backend.addr);
                tokio::spawn(async move {
                    for i in 0..40 {
                        body(pool.send(addr, get(&format!("/light{c}-{i}"))).await.expect("answer")).await;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.expect("task");
        }
        assert_eq!(pool.pooled(backend.addr), 2, "two warm connections left");
        assert_eq!(backend.closed.load(Ordering::SeqCst), 2);
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 4, "no new connection");
    }
}
