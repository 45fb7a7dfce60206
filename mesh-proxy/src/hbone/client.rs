//! The source side of HBONE: a pool of mTLS HTTP/2 connections to destination pods' :15008,
//! and one CONNECT stream per tunnelled TCP connection.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode, Version};
use mesh_api::identity::SpiffeId;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::H2Stream;
use super::{
    CONNECTION_WINDOW, Connector, MAX_FRAME_SIZE, MAX_STREAMS_PER_CONNECTION, SOCKET_READ_BUFFER,
    STREAM_WINDOW, TLS_SEND_BUFFER, tls,
};
use crate::identity::WorkloadCert;

/// A TLS handshake with a peer proxy that takes longer than this is abandoned: inside a
/// cluster it takes a millisecond or two.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are pinged this often, so a peer that vanished (node gone, netns
/// deleted) is noticed before the next stream is sent into the void.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which connections may carry a stream: they leave from the same pod (its netns and source
/// address), present the same certificate, and reach the same peer expecting the same identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The source pod's UID.
    pub source: String,
    pub source_identity: SpiffeId,
    /// The destination pod's HBONE address (`podIP:15008`).
    pub destination: SocketAddr,
    pub destination_identity: SpiffeId,
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(SocketAddr, io::Error),
    #[error("TLS with {0} did not finish within {HANDSHAKE_TIMEOUT:?}")]
    Timeout(SocketAddr),
    #[error("{0} did not agree to HTTP/2")]
    NoH2(SocketAddr),
    #[error("cannot build the TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("HTTP/2 with {0} failed: {1}")]
    H2(SocketAddr, h2::Error),
    #[error("{peer} refused the tunnel to {target}: {status}")]
    Refused { peer: SocketAddr, target: SocketAddr, status: StatusCode },
}

#[derive(Clone)]
struct Pooled {
    sender: SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
    /// Set when a stream could not be opened on it: never offered again.
    retired: Arc<AtomicBool>,
}

impl Pooled {
    /// Whether new streams may go here. A peer that drains sends GOAWAY: h2 then refuses new
    /// streams on the connection (`poll_ready` fails) while the streams in flight go on; a
    /// connection that ended (the peer vanished, keepalive gave up) fails the same way.
    fn usable(&self) -> bool {
        if self.retired.load(Ordering::Acquire) {
            return false;
        }
        // Only asks: a fresh clone has no stream pending, so this never waits or wakes.
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.sender.clone().poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

#[derive(Default)]
pub struct HboneClient {
    pool: Mutex<HashMap<PoolKey, Vec<Pooled>>>,
    pub connections_opened: AtomicU64,
    pub streams_opened: AtomicU64,
}

impl HboneClient {
    /// A tunnel to `target` (a pod's address and port) through the pod's :15008 at
    /// `key.destination`, over a pooled connection when one has room.
    ///
    /// A pooled connection can go away between being picked and carrying the stream (the
    /// peer drained and sent GOAWAY, or it vanished): the stream was then never served, so it
    /// is retried once on a new connection and the old one leaves the pool.
    pub async fn open(
        &self,
        key: &PoolKey,
        cert: &WorkloadCert,
        connect: &Connector,
        target: SocketAddr,
    ) -> Result<Tunnel, HboneError> {
        if let Some(pooled) = self.reserve(key) {
            let retired = pooled.retired.clone();
            match self.stream(key, pooled, target).await {
                Err(Unsent(error)) => {
                    retired.store(true, Ordering::Release);
                    tracing::debug!(peer = %key.destination, %error, "pooled HBONE connection unusable; opening another");
                }
                done => return done.map_err(HboneError::from),
            }
        }
        let pooled = self.connect(key, cert, connect).await?;
        pooled.streams.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut pool) = self.pool.lock() {
            pool.entry(key.clone()).or_default().push(pooled.clone());
        }
        self.stream(key, pooled, target).await.map_err(HboneError::from)
    }

    /// One CONNECT on `pooled`, whose stream slot the caller has taken.
    async fn stream(&self, key: &PoolKey, pooled: Pooled, target: SocketAddr) -> Result<Tunnel, StreamError> {
        let guard = StreamGuard(pooled.streams.clone());
        let mut sender = pooled.sender;
        let peer = key.destination;
        // Authority form (`podIP:port`): h2 sends a CONNECT with `:authority` alone.
        let request = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri(target.to_string())
            .body(())
            .map_err(|e| HboneError::Connect(peer, io::Error::other(e)))?;
        // Failing here, the request never got an answer: nothing was served.
        poll_fn(|cx| sender.poll_ready(cx)).await.map_err(|e| Unsent(HboneError::H2(peer, e)))?;
        let (response, send) =
            sender.send_request(request, false).map_err(|e| Unsent(HboneError::H2(peer, e)))?;
        let response = response.await.map_err(|e| Unsent(HboneError::H2(peer, e)))?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Refused { peer, target, status: response.status() }.into());
        }
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Tunnel { io: H2Stream::new(send, response.into_body()), _guard: guard })
    }

    /// A live pooled connection with a free stream, counted as taken.
    fn reserve(&self, key: &PoolKey) -> Option<Pooled> {
        let mut pool = self.pool.lock().ok()?;
        let connections = pool.get_mut(key)?;
        connections.retain(Pooled::usable);
        let cap = MAX_STREAMS_PER_CONNECTION as usize;
        let free = connections.iter().find(|c| c.streams.load(Ordering::Acquire) < cap)?;
        free.streams.fetch_add(1, Ordering::AcqRel);
        Some(free.clone())
    }

    async fn connect(
        &self,
        key: &PoolKey,
        cert: &WorkloadCert,
        connect: &Connector,
    ) -> Result<Pooled, HboneError> {
        let peer = key.destination;
        let config = tls::client_config(cert, key.destination_identity.clone())?;
        let tcp = connect(peer).await.map_err(|e| HboneError::Connect(peer, e))?;
        // The name is not checked (the verifier compares SPIFFE identities); it only has to be
        // a valid ServerName, and an IP address sends no SNI.
        let name = ServerName::IpAddress(peer.ip().into());
        let mut tls = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, tcp)),
        )
        .await
        .map_err(|_| HboneError::Timeout(peer))?
        .map_err(|e| HboneError::Tls(peer, e))?;
        if tls.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
            return Err(HboneError::NoH2(peer));
        }
        tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            // Until the peer's SETTINGS say otherwise: what a destination proxy allows.
            .initial_max_send_streams(MAX_STREAMS_PER_CONNECTION as usize)
            // A stream may queue as much as the peer lets it have in flight, so a bulk
            // direction never waits for the buffer while the window is open, and never holds
            // more than its window.
            .max_send_buffer_size(STREAM_WINDOW as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| HboneError::H2(peer, e))?;
        let ping = connection.ping_pong();
        let source = key.source_identity.clone();
        // The connection's only task: it reads and writes the TLS socket for every stream.
        tokio::spawn(async move {
            let keepalive = async {
                match ping {
                    Some(ping) => keepalive(ping).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = connection => match ended {
                    Ok(()) => tracing::debug!(%peer, %source, "HBONE connection ended"),
                    Err(error) => tracing::debug!(%peer, %source, %error, "HBONE connection ended"),
                },
                // Dropping the connection fails its streams and takes it out of the pool.
                why = keepalive => tracing::debug!(%peer, %source, %why, "HBONE connection lost: closed"),
            }
        });
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, identity = %key.destination_identity, "HBONE connection opened");
        Ok(Pooled { sender, streams: Arc::new(AtomicUsize::new(0)), retired: Arc::default() })
    }

    /// Open pooled connections (live ones only), for metrics and tests.
    pub fn connections(&self) -> usize {
        self.pool.lock().map(|pool| pool.values().flatten().filter(|c| c.usable()).count()).unwrap_or(0)
    }
}

/// Pings the peer every [`KEEPALIVE_INTERVAL`]; returns why the peer is taken for gone when a
/// pong does not come back within [`KEEPALIVE_TIMEOUT`].
async fn keepalive(mut ping: h2::PingPong) -> String {
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return format!("keepalive ping failed: {error}"),
            Err(_) => return format!("no keepalive pong within {KEEPALIVE_TIMEOUT:?}"),
        }
    }
}

/// Why a stream could not be had: [`Unsent`] when the connection failed before the peer
/// answered (safe to retry elsewhere), else the error as it is.
enum StreamError {
    Unsent(HboneError),
    Failed(HboneError),
}
use StreamError::Unsent;

impl From<HboneError> for StreamError {
    fn from(error: HboneError) -> Self {
        StreamError::Failed(error)
    }
}

impl From<StreamError> for HboneError {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::Unsent(e) | StreamError::Failed(e) => e,
        }
    }
}

/// Gives a connection's stream slot back when the tunnel closes.
struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One tunnelled TCP connection: bytes written here come out of the destination pod's socket.
pub struct Tunnel {
    io: H2Stream,
    _guard: StreamGuard,
}

impl Tunnel {
    /// Copies between `io` and the tunnel until both directions end, with no copy of the bytes
    /// in between ([`super::stream::splice`]); returns (bytes `io` → tunnel, tunnel → `io`).
    pub async fn splice<S>(mut self, io: &mut S) -> io::Result<(u64, u64)>
    where
        S: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        super::stream::splice(io, &mut self.io).await
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
