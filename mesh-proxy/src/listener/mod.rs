//! The sockets of the Gateway listeners, kept in step with the config: a listener that stays
//! keeps its socket, a new one is bound, a removed one stops accepting.

pub mod framing;
pub mod l4;
pub mod sni;
pub mod tls;
pub mod udp;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_api::model::{Listener, ListenerProtocol, TlsMode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::ConfigStore;
use crate::proxy::{Inbound, Proxy};

/// Largest request head accepted: generous for cookies and tokens, small enough that a client
/// cannot make the proxy buffer much. Beyond it HTTP/1 gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in one HTTP/1 request; hyper's default of 100 is too tight for some
/// browsers behind several proxies.
const MAX_HEADERS: usize = 128;
/// A client must send its whole request head within this (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must finish the TLS handshake within this, for the same reason.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a listener binds: its addresses, or loopback when it names none.
pub fn bind_addresses(listener: &Listener) -> Vec<SocketAddr> {
    if listener.addresses.is_empty() {
        vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listener.port)]
    } else {
        listener.addresses.iter().map(|ip| SocketAddr::new(*ip, listener.port)).collect()
    }
}

/// HTTP listeners, and HTTPS listeners that terminate TLS (TCP and TLS listeners are
/// [`l4`]'s).
pub fn serves_http(listener: &Listener) -> bool {
    match listener.protocol {
        ListenerProtocol::Http => true,
        ListenerProtocol::Https => listener.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Terminate),
        ListenerProtocol::Tls | ListenerProtocol::Tcp | ListenerProtocol::Udp => false,
    }
}

fn wanted(store: &ConfigStore) -> BTreeSet<SocketAddr> {
    let snapshot = store.load();
    snapshot
        .config
        .listeners
        .values()
        .filter(|l| serves_http(l) || crate::route::l4::serves_l4(l))
        .flat_map(bind_addresses)
        .collect()
}

/// Reconciles the bound sockets with every config change, until the task is dropped.
pub async fn run(store: Arc<ConfigStore>, proxy: Arc<Proxy>) {
    let mut changes = store.subscribe();
    let mut bound: HashMap<SocketAddr, AbortOnDrop> = HashMap::new();
    let mut udp_bound: HashMap<SocketAddr, AbortOnDrop> = HashMap::new();
    loop {
        let udp_wanted: BTreeSet<SocketAddr> = store.load().routes.udp_addresses().copied().collect();
        udp_bound.retain(|addr, _| udp_wanted.contains(addr));
        for addr in udp_wanted {
            if udp_bound.contains_key(&addr) {
                continue;
            }
            match tokio::net::UdpSocket::bind(addr).await {
                Ok(socket) => {
                    tracing::info!(%addr, "listening (UDP)");
                    let task = tokio::spawn(udp::serve(socket, addr, store.clone()));
                    udp_bound.insert(addr, AbortOnDrop(task));
                }
                Err(error) => tracing::error!(%addr, %error, "cannot bind UDP listener"),
            }
        }
        let wanted = wanted(&store);
        bound.retain(|addr, _| {
            let keep = wanted.contains(addr);
            if !keep {
                tracing::info!(%addr, "listener closed");
            }
            keep
        });
        for addr in wanted {
            if bound.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(socket) => {
                    tracing::info!(%addr, "listening");
                    let task = tokio::spawn(accept(socket, addr, store.clone(), proxy.clone()));
                    bound.insert(addr, AbortOnDrop(task));
                }
                // Tried again on the next config change.
                Err(error) => tracing::error!(%addr, %error, "cannot bind listener"),
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted proxy must rebind at once, not after TIME_WAIT.
    socket.set_reuseaddr(true)?;
    // A Gateway's address may not be on any interface of this node yet (a pool address the
    // node answers for through a local route, or one still being announced): bind anyway.
    match addr {
        SocketAddr::V4(_) => socket2::SockRef::from(&socket).set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket2::SockRef::from(&socket).set_freebind_v6(true)?,
    }
    socket.bind(addr)?;
    // Backlog: enough for bursts of new connections while the accept loop is busy.
    socket.listen(1024)
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The HTTP/1.1 + h2 server every client connection is served with (Gateway listeners and
/// meshed pods' intercepted connections alike), with the limits that keep a slow or hostile
/// client from holding the proxy's memory.
pub fn http_server() -> auto::Builder<TokioExecutor> {
    let mut server = auto::Builder::new(TokioExecutor::new());
    server
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    server.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    server
}

async fn accept(socket: TcpListener, bind: SocketAddr, store: Arc<ConfigStore>, proxy: Arc<Proxy>) {
    let server = Arc::new(http_server());
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%bind, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let proxy = proxy.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let metrics = store.metrics();
            metrics.active_connections.fetch_add(1, Ordering::Relaxed);
            // TCP and TLS-passthrough connections are spliced; what they leave is HTTP(S).
            let Some(stream) = l4::serve(stream, bind, &store).await else {
                metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
                return;
            };
            // The snapshot current at accept time says whether this address terminates TLS.
            let tls = store.load().routes.tls(&bind);
            let verdicts = framing::Verdicts::default();
            let inbound = Inbound { bind, peer, tls: tls.is_some(), framing: verdicts.clone(), mesh: None };
            let service = service_fn(move |req| proxy.clone().handle(inbound.clone(), req));
            let result = match tls {
                None => {
                    let stream = framing::Scanned::new(stream, verdicts);
                    server.serve_connection_with_upgrades(TokioIo::new(stream), service).await
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let stream = framing::Scanned::new(stream, verdicts);
                            server.serve_connection_with_upgrades(TokioIo::new(stream), service).await
                        }
                        // Garbage or a client that gives up: only this connection closes.
                        Ok(Err(error)) => Err(error.into()),
                        Err(_) => Err("TLS handshake timed out".into()),
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
