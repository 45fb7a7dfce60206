//! The sockets of the Gateway listeners, kept in step with the config: a listener that stays
//! keeps its socket, a new one is bound, a removed one stops accepting.

pub mod first_request;
pub mod framing;
pub mod head_timer;
pub mod l4;
pub mod sni;
pub mod tls;
pub mod udp;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use mesh_api::model::{Listener, ListenerProtocol, TlsMode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ConfigStore;
use crate::inpod;
use crate::inpod::handover::Proto;
use crate::proxy::{Inbound, Proxy};
use first_request::{FIRST_REQUEST_GRACE, FirstRequest};

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

/// How often binds that failed are tried again (besides at every config change).
const RETRY_BIND: Duration = Duration::from_secs(1);

/// How many TCP and UDP addresses the config asks for.
fn wanted_count(store: &ConfigStore) -> usize {
    wanted(store).len() + store.load().routes.udp_addresses().collect::<BTreeSet<_>>().len()
}

fn wanted(store: &ConfigStore) -> BTreeSet<SocketAddr> {
    store.read_config(|_, config| {
        config
            .listeners
            .values()
            .filter(|l| serves_http(l) || crate::route::l4::serves_l4(l))
            .flat_map(bind_addresses)
            .collect()
    })
}

/// How the Gateway listeners stop ([`run`]'s `stop`).
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    /// Everything (the hand-over and the open connections) is over by then.
    pub until: Instant,
    /// A new proxy has started: keep each listener until it listens on the same address.
    /// Also assumed when, at the stop, another socket already listens on one of ours.
    pub handover: bool,
}

/// One bound address.
struct Bound {
    task: AbortOnDrop,
    /// The socket's inode, to tell it from a successor's in the kernel's tables.
    inode: u64,
    /// Tells the accept loop to take what is queued and close (TCP).
    close: watch::Sender<bool>,
}

/// Reconciles the bound sockets with every config change until `stop` says otherwise, then
/// closes them (after a hand-over, see [`Stop`]) and returns. Connections already accepted run
/// on in their own tasks; [`drained`] waits for them.
pub async fn run(store: Arc<ConfigStore>, proxy: Arc<Proxy>, mut stop: watch::Receiver<Option<Stop>>) {
    enable_migration();
    let mut changes = store.subscribe();
    let mut bound: HashMap<SocketAddr, Bound> = HashMap::new();
    let mut udp_bound: HashMap<SocketAddr, Bound> = HashMap::new();
    let how = loop {
        let udp_wanted: BTreeSet<SocketAddr> = store.load().routes.udp_addresses().copied().collect();
        udp_bound.retain(|addr, _| udp_wanted.contains(addr));
        for addr in udp_wanted {
            if udp_bound.contains_key(&addr) {
                continue;
            }
            match bind_udp(addr) {
                Ok(socket) => {
                    tracing::info!(%addr, "listening (UDP)");
                    let inode = inpod::handover::inode(&socket).unwrap_or_default();
                    let task = tokio::spawn(udp::serve(socket, addr, store.clone()));
                    udp_bound.insert(
                        addr,
                        Bound { task: AbortOnDrop(task), inode, close: watch::Sender::new(false) },
                    );
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
                    let inode = inpod::handover::inode(&socket).unwrap_or_default();
                    let (close, closing) = watch::channel(false);
                    let task = tokio::spawn(accept(socket, addr, store.clone(), proxy.clone(), closing));
                    bound.insert(addr, Bound { task: AbortOnDrop(task), inode, close });
                }
                // Tried again on the next config change.
                Err(error) => tracing::error!(%addr, %error, "cannot bind listener"),
            }
        }
        // An address another process holds (an older proxy without SO_REUSEPORT, during the
        // first upgrade to an overlapping version) is tried again every so often.
        let failed = wanted_count(&store) > bound.len() + udp_bound.len();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY_BIND), if failed => {}
            how = stop.wait_for(Option::is_some) => match how {
                Ok(how) => break *how,
                Err(_) => return,
            },
        }
    };
    let Some(Stop { until, handover }) = how else { return };
    close_all(bound, udp_bound, until, handover).await;
}

/// Closes every listener, each once a successor listens on its address when there is one.
async fn close_all(
    bound: HashMap<SocketAddr, Bound>,
    udp_bound: HashMap<SocketAddr, Bound>,
    until: Instant,
    handover: bool,
) {
    let ours: HashSet<u64> = bound.values().chain(udp_bound.values()).map(|b| b.inode).collect();
    let tables = |proto| inpod::handover::SocketTables::open_here(proto);
    let handover = handover || {
        // A new proxy that serves no pods (a standalone gateway) is seen by its sockets.
        let mut tcp = tables(Proto::Tcp).ok();
        bound
            .keys()
            .any(|addr| tcp.as_mut().is_some_and(|t| t.someone_else_on(*addr, &ours).unwrap_or(false)))
    };
    let all = bound.into_iter().map(|(addr, b)| (addr, b, Proto::Tcp));
    let all = all.chain(udp_bound.into_iter().map(|(addr, b)| (addr, b, Proto::Udp)));
    futures::future::join_all(all.map(|(addr, bound, proto)| {
        let ours = &ours;
        async move {
            if handover {
                let what = addr.to_string();
                let mut table = tables(proto);
                let taken = inpod::handover::wait_until_taken(&what, until, || match &mut table {
                    Ok(table) => table.someone_else_on(addr, ours),
                    Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
                });
                if taken.await {
                    tracing::info!(%addr, "listener taken over by the new proxy");
                }
            }
            let _ = bound.close.send(true);
            if proto == Proto::Tcp {
                // The accept loop takes what is queued, then ends (closing the socket).
                let _ = tokio::time::timeout(Duration::from_secs(1), bound.task.wait()).await;
            }
            tracing::info!(%addr, "listener closed");
        }
    }))
    .await;
}

/// Waits until no accepted Gateway connection is open, or `until`.
pub async fn drained(store: &ConfigStore, until: Instant) {
    let metrics = store.metrics();
    while metrics.active_connections.load(Ordering::Relaxed) > 0 {
        if Instant::now() >= until {
            tracing::info!("drain deadline passed; closing open Gateway connections");
            return;
        }
        tokio::time::sleep(inpod::handover::POLL).await;
    }
}

/// Gateway listeners hand over to a new proxy like pods' listeners do ([`inpod::handover`]):
/// when the old proxy closes its listener, the connections the kernel had already queued on it
/// move to the new proxy's listener only if `net.ipv4.tcp_migrate_req` is 1 in this network
/// namespace; otherwise they are reset, and a client sees its connection dropped during an
/// upgrade. Set here, best effort (a read-only /proc/sys leaves the kernel's default), and said
/// in the log when this proxy changed it: it affects every `SO_REUSEPORT` group of the netns
/// (for the better: a closing listener's queue moves to its group instead of being reset).
fn enable_migration() {
    match inpod::handover::migration_enabled_here() {
        Ok(true) => {}
        Ok(false) => match inpod::handover::enable_migration_here() {
            Ok(()) => tracing::info!(
                "set net.ipv4.tcp_migrate_req=1: connections queued on a listener closed after an upgrade's hand-over move to the new proxy instead of being reset"
            ),
            Err(error) => tracing::warn!(
                %error,
                "cannot set net.ipv4.tcp_migrate_req=1: during an upgrade, connections queued on the old proxy's Gateway listeners when it closes them are reset"
            ),
        },
        Err(error) => tracing::debug!(%error, "net.ipv4.tcp_migrate_req not readable"),
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted proxy must rebind at once, not after TIME_WAIT.
    socket.set_reuseaddr(true)?;
    // A new proxy listens beside the old one during an upgrade (inpod::handover).
    socket.set_reuseport(true)?;
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

/// A UDP listener socket, shareable with a new proxy during an upgrade like [`bind`]'s.
fn bind_udp(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    async fn wait(mut self) {
        let _ = (&mut self.0).await;
    }
}

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
        .max_headers(MAX_HEADERS)
        // A response head and a small body go out as one buffer in one send(), not a writev() of
        // two (as the backend connections do, upstream::pool): measured +1.7 % requests per core.
        // Bodies are copied into that buffer, up to the buffer's limit, before being written:
        // that costs large bodies ~9 % per core (1 MiB responses, 2026-11-25). A wrapper that
        // gathered small writes and passed big ones to writev() won that back but measured worse
        // p99 at 5k and 10k req/s in 6 of 6 paired runs, the latency the issue targets.
        .writev(false);
    server.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEADER_BYTES as u32);
    server
}

/// [`http_server`]'s `server` for one connection: the same, with a request-head timer of the
/// connection's own ([`head_timer`]).
pub fn for_connection(server: &auto::Builder<TokioExecutor>) -> auto::Builder<TokioExecutor> {
    let mut server = server.clone();
    server.http1().timer(head_timer::HeadTimer::default());
    server
}

async fn accept(
    socket: TcpListener,
    bind: SocketAddr,
    store: Arc<ConfigStore>,
    proxy: Arc<Proxy>,
    mut close: watch::Receiver<bool>,
) {
    let server = Arc::new(http_server());
    loop {
        let accepted = tokio::select! {
            _ = close.wait_for(|c| *c) => break,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer, bind, &store, &proxy, &server, &close),
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%bind, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Connections the kernel already queued would be reset by the close: take them first.
    let Ok(queued) = socket2::SockRef::from(&socket).try_clone() else { return };
    let queued: std::net::TcpListener = queued.into();
    if queued.set_nonblocking(true).is_err() {
        return;
    }
    while let Ok((stream, peer)) = queued.accept() {
        if let Ok(stream) =
            stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream))
        {
            serve(stream, peer, bind, &store, &proxy, &server, &close);
        }
    }
}

/// Serves one accepted connection in its own task. Once `closing` (the listener was handed
/// over), HTTP connections finish their request in progress, or their first one if it is still
/// on its way ([`first_request`]), and close, so keep-alive clients reconnect to the new proxy.
fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    bind: SocketAddr,
    store: &Arc<ConfigStore>,
    proxy: &Arc<Proxy>,
    server: &Arc<auto::Builder<TokioExecutor>>,
    closing: &watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let server = for_connection(server);
    let proxy = proxy.clone();
    let store = store.clone();
    let mut closing = closing.clone();
    // Counted before the task runs, so a drain never sees zero while one is about to start.
    store.metrics().active_connections.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let metrics = store.metrics();
        // TCP and TLS-passthrough connections are spliced; what they leave is HTTP(S).
        let Some(stream) = l4::serve(stream, bind, &store, proxy.l4_dialer()).await else {
            metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        // The snapshot current at accept time says whether this address terminates TLS.
        let tls = store.load().routes.tls(&bind);
        let verdicts = framing::Verdicts::default();
        let inbound = Inbound::new(bind, peer, tls.is_some(), verdicts.clone(), None);
        let first_request = Arc::new(FirstRequest::default());
        let service = {
            let first_request = first_request.clone();
            service_fn(move |req| {
                first_request.arrived();
                proxy.clone().handle(inbound.clone(), req)
            })
        };
        macro_rules! serve_until_closed {
            ($io:expr) => {{
                let mut conn = std::pin::pin!(server.serve_connection_with_upgrades($io, service));
                tokio::select! {
                    result = conn.as_mut() => result,
                    Ok(()) = async { closing.wait_for(|c| *c).await.map(drop) } => {
                        let ended = tokio::select! {
                            result = conn.as_mut() => Some(result),
                            () = first_request.wait(FIRST_REQUEST_GRACE) => None,
                        };
                        match ended {
                            Some(result) => result,
                            None => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        }
                    }
                }
            }};
        }
        let result = match tls {
            None => serve_until_closed!(TokioIo::new(framing::Scanned::new(stream, verdicts))),
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        serve_until_closed!(TokioIo::new(framing::Scanned::new(stream, verdicts)))
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
