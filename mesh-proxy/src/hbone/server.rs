//! The destination side of HBONE, on a meshed pod's :15008: mutual TLS with the source
//! workload's certificate, then one CONNECT per tunnelled connection, each delivered to the pod
//! from the source pod's address where the pod's netns allows it ([`Deliver`]), so the app sees
//! its real caller.
//!
//! The source's SPIFFE identity is known for every stream (logged, counted per identity), so
//! an allow-list of identities is a check in [`accept_stream`] away.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use mesh_api::identity::SpiffeId;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::stream::H2Stream;
use super::{
    CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_STREAMS_PER_CONNECTION, SOCKET_READ_BUFFER, STREAM_WINDOW,
    TLS_SEND_BUFFER,
};
use crate::identity::peer_identity;

/// A peer that has not finished its handshake by then is cut off: it holds a socket and
/// memory, and a real proxy needs milliseconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a pod's :15008 delivers.
pub struct Destination {
    /// `namespace/name`, for logs.
    pub pod: String,
    /// The pod's addresses: the only targets a CONNECT may name.
    pub addresses: Vec<IpAddr>,
    /// Dials the target from inside the pod (its netns, marked to pass its rules), keeping the
    /// client's address where the pod allows it.
    pub connect: Deliver,
}

/// Dials the pod for one stream: `(client, target)`, where `client` is the address the HBONE
/// connection came from. That is the source pod's own address (its proxy dials from inside the
/// source pod's netns), which the app should see as its caller's, as without the mesh.
pub type Deliver =
    Arc<dyn Fn(Option<IpAddr>, SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> + Send + Sync>;

/// A [`Deliver`] that dials from the proxy's own netns and address, whoever the client.
pub fn deliver_direct() -> Deliver {
    let connect = super::direct_connector();
    Arc::new(move |_client, target| connect(target))
}

#[derive(Default)]
pub struct HboneServer {
    /// Streams accepted, per source identity.
    streams: Mutex<BTreeMap<String, u64>>,
    pub handshake_failures: AtomicU64,
    pub refused_streams: AtomicU64,
    /// Connections told to go away (GOAWAY) because their pod drained.
    pub goaways: AtomicU64,
    pub access_log: bool,
}

impl HboneServer {
    pub fn new(access_log: bool) -> Self {
        Self { access_log, ..Default::default() }
    }

    /// Serves one connection from a peer proxy until it closes. Garbage, a bad certificate or
    /// a peer that stalls ends this connection only.
    pub async fn serve(
        self: Arc<Self>,
        conn: TcpStream,
        tls: Arc<ServerConfig>,
        destination: Arc<Destination>,
    ) {
        self.serve_until(conn, tls, destination, std::future::pending()).await
    }

    /// [`serve`](Self::serve), and once `drain` resolves (the pod drains: it was deleted, or
    /// this proxy is stopping or handing over), sends HTTP/2 GOAWAY: the peer's pool opens no
    /// new stream on this connection and connects again (to the proxy that takes over), while
    /// the streams in flight go on until they end; the connection closes after the last.
    pub async fn serve_until(
        self: Arc<Self>,
        conn: TcpStream,
        tls: Arc<ServerConfig>,
        destination: Arc<Destination>,
        drain: impl std::future::Future<Output = ()> + Send,
    ) {
        let client = conn.peer_addr().ok();
        // h2 writes a response's HEADERS and DATA frames separately; with Nagle on, the second
        // would wait for the peer's delayed ACK.
        let _ = conn.set_nodelay(true);
        let conn = tokio::io::BufReader::with_capacity(SOCKET_READ_BUFFER, conn);
        let accepted =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio_rustls::TlsAcceptor::from(tls).accept(conn)).await;
        let mut stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                self.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?client, pod = %destination.pod, %error, "HBONE handshake refused");
                return;
            }
            Err(_) => {
                self.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?client, pod = %destination.pod, "HBONE handshake timed out");
                return;
            }
        };
        let peer = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
            Some(leaf) => peer_identity(leaf),
            None => Err("no client certificate".to_string()),
        };
        let peer = match peer {
            Ok(peer) => peer,
            Err(error) => {
                self.handshake_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?client, pod = %destination.pod, %error, "HBONE peer has no workload identity");
                return;
            }
        };
        tracing::debug!(?client, %peer, pod = %destination.pod, "HBONE connection accepted");
        stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
        let peer = Arc::new(peer);
        let pod = destination.pod.clone();
        let source = client.map(|c| c.ip());
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            // As on the client: a stream queues at most what its window lets it have in flight.
            .max_send_buffer_size(STREAM_WINDOW as usize)
            .handshake::<_, Bytes>(stream);
        let mut connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                tracing::debug!(?client, %peer, %pod, %error, "HBONE connection ended before HTTP/2 began");
                return;
            }
            Err(_) => {
                tracing::debug!(?client, %peer, %pod, "HBONE peer did not begin HTTP/2 in time");
                return;
            }
        };
        let mut drain = std::pin::pin!(drain);
        let mut draining = false;
        // This task drives the connection (its TLS reads and writes, for every stream) while it
        // waits for the next stream; each stream gets one task, which answers and then copies.
        loop {
            tokio::select! {
                accepted = connection.accept() => match accepted {
                    Some(Ok((request, respond))) => {
                        let (server, destination, peer) = (self.clone(), destination.clone(), peer.clone());
                        tokio::spawn(async move {
                            server.accept_stream(request, respond, &destination, &peer, source).await
                        });
                    }
                    Some(Err(error)) => {
                        tracing::debug!(?client, %error, "HBONE connection ended");
                        break;
                    }
                    // Closed, after the last stream when draining.
                    None => break,
                },
                () = drain.as_mut(), if !draining => {
                    draining = true;
                    self.goaways.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?client, %pod, "HBONE connection draining: GOAWAY sent");
                    // Streams the peer opened before it saw the GOAWAY are still accepted.
                    connection.graceful_shutdown();
                }
            }
        }
    }

    /// One CONNECT: checked, dialled, answered, then copied both ways until both sides end.
    async fn accept_stream(
        self: Arc<Self>,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        destination: &Destination,
        peer: &Arc<SpiffeId>,
        client: Option<IpAddr>,
    ) {
        let mut refuse = |status: StatusCode, why: &str| {
            self.refused_streams.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, pod = %destination.pod, authority = ?req.uri().authority(), %status, why, "HBONE stream refused");
            if let Err(error) = respond.send_response(answer(status), true) {
                tracing::debug!(%peer, %error, "the refusal could not be sent");
            }
        };
        if req.method() != Method::CONNECT {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "only CONNECT is spoken here");
        }
        let Some(target) = req.uri().authority().and_then(|a| a.as_str().parse::<SocketAddr>().ok()) else {
            return refuse(StatusCode::BAD_REQUEST, "the authority is not an IP:port");
        };
        if !destination.addresses.contains(&target.ip()) {
            return refuse(StatusCode::FORBIDDEN, "the target is not this pod");
        }
        let upstream = match (destination.connect)(client, target).await {
            Ok(upstream) => upstream,
            Err(error) => {
                let why = format!("the pod does not accept the connection: {error}");
                return refuse(StatusCode::SERVICE_UNAVAILABLE, &why);
            }
        };
        if let Ok(mut streams) = self.streams.lock() {
            *streams.entry(peer.to_string()).or_default() += 1;
        }
        let pod = &destination.pod;
        let mut upstream = upstream;
        let result = match respond.send_response(answer(StatusCode::OK), false) {
            Ok(send) => {
                let mut tunnel = H2Stream::new(send, req.into_body());
                // (to the pod, from it) is (tunnel → plain side, plain side → tunnel).
                super::stream::splice(&mut upstream, &mut tunnel).await.map(|(up, down)| (down, up))
            }
            Err(error) => Err(io::Error::other(error)),
        };
        match result {
            Ok((sent, received)) if self.access_log => {
                tracing::info!(target: "weft::access", source = %peer, %pod, %target, sent, received, "hbone")
            }
            Ok((sent, received)) => {
                tracing::debug!(source = %peer, %pod, %target, sent, received, "HBONE stream done")
            }
            Err(error) => tracing::debug!(source = %peer, %pod, %target, %error, "HBONE stream failed"),
        }
    }

    /// Prometheus text: streams by source identity, refusals.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP weft_hbone_inbound_streams_total Tunnelled connections accepted, by source identity.\n\
             # TYPE weft_hbone_inbound_streams_total counter\n",
        );
        if let Ok(streams) = self.streams.lock() {
            for (identity, count) in streams.iter() {
                out.push_str(&format!(
                    "weft_hbone_inbound_streams_total{{source_identity=\"{identity}\"}} {count}\n"
                ));
            }
        }
        out.push_str(&format!(
            "# HELP weft_hbone_handshake_failures_total HBONE connections refused at the TLS handshake.\n\
             # TYPE weft_hbone_handshake_failures_total counter\nweft_hbone_handshake_failures_total {}\n\
             # HELP weft_hbone_refused_streams_total CONNECT requests refused.\n\
             # TYPE weft_hbone_refused_streams_total counter\nweft_hbone_refused_streams_total {}\n\
             # HELP weft_hbone_goaways_total Inbound HBONE connections sent GOAWAY because their pod drained.\n\
             # TYPE weft_hbone_goaways_total counter\nweft_hbone_goaways_total {}\n",
            self.handshake_failures.load(Ordering::Relaxed),
            self.refused_streams.load(Ordering::Relaxed),
            self.goaways.load(Ordering::Relaxed)
        ));
        out
    }

    /// Streams accepted from `identity`.
    pub fn streams_from(&self, identity: &str) -> u64 {
        self.streams.lock().map(|s| s.get(identity).copied().unwrap_or(0)).unwrap_or(0)
    }
}

fn answer(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// Copies both ways until both sides are done; returns (bytes to the pod, bytes from it).
/// The buffers grow for bulk transfers ([`crate::proxy::copy`]), so a busy tunnel moves up to
/// 256 KiB per DATA frame.
pub async fn splice<A, B>(mut a: A, mut b: B) -> io::Result<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    crate::proxy::copy::bidirectional(&mut a, &mut b).await
}
