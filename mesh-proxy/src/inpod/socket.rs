//! Sockets created inside a pod's network namespace, marked so the pod's interception rules
//! let them through (ztunnel's InPodSocketFactory).
//!
//! Deliveries to the pod can keep the client's address ([`PodSocketFactory::connect_as`]): an
//! `IP_TRANSPARENT` socket bound to the client's address, with mark
//! [`mesh_api::TRANSPARENT_FWMARK`], which the pod's return route (`mesh_init::route`) needs to
//! bring the app's replies back. Before each such delivery the route is checked; where it or
//! the kernel's permission is missing, the delivery comes from the pod's own address instead.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mesh_api::TRANSPARENT_FWMARK;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::metrics::InpodMetrics;
use super::netns::PodNetns;

/// The port the route check "connects" its UDP socket to: connecting a UDP socket sends
/// nothing, it only looks the route up. (9 is discard, should anything ever be sent.)
const PROBE_PORT: u16 = 9;

/// The listen backlog of the pod's listeners: the kernel's default `somaxconn` (4096), so a
/// burst of connections from one busy pod is queued rather than refused.
const BACKLOG: i32 = 4096;

#[derive(Clone, Debug)]
pub struct PodSocketFactory {
    netns: Arc<PodNetns>,
    mark: u32,
    metrics: Arc<InpodMetrics>,
    /// Whether this pod's first delivery from its own address instead of the client's was
    /// logged as a warning (later ones are counted and logged at debug level only).
    warned: Arc<AtomicBool>,
}

impl PodSocketFactory {
    pub fn new(netns: Arc<PodNetns>, mark: u32, metrics: Arc<InpodMetrics>) -> Self {
        PodSocketFactory { netns, mark, metrics, warned: Arc::default() }
    }

    pub fn netns(&self) -> &Arc<PodNetns> {
        &self.netns
    }

    /// A TCP socket in the pod's namespace carrying the proxy's mark.
    fn socket(&self, addr: &SocketAddr) -> io::Result<Socket> {
        let socket = self
            .netns
            .run_here(|| Socket::new(Domain::for_address(*addr), Type::STREAM, Some(Protocol::TCP)))??;
        socket.set_mark(self.mark)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        Ok(socket)
    }

    /// Connects from inside the pod, as the pod would, but past its interception rules.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = TcpSocket::from_std_stream(self.socket(&addr)?.into());
        socket.connect(addr).await
    }

    /// Connects to `addr`, one of the pod's own addresses, from `client`'s address (same family,
    /// not one of the pod's): the app sees the connection coming from whoever made it, as it
    /// would without the mesh. Where that is not possible (no `CAP_NET_ADMIN`, or the pod's
    /// netns has no return route for that family: a pod meshed by an older weft-cni, or where
    /// `ip` was missing, or IPv6 turned off) connects as [`connect`](Self::connect) does, from
    /// the pod's own address; the first time for this pod with a warning, every time counted
    /// in `weft_inpod_source_address_fallbacks_total`.
    pub async fn connect_as(&self, client: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
        match self.transparent_socket(client, addr) {
            Ok(socket) => {
                InpodMetrics::inc(&self.metrics.source_kept);
                TcpSocket::from_std_stream(socket.into()).connect(addr).await
            }
            Err(error) => {
                InpodMetrics::inc(&self.metrics.source_fallbacks);
                if self.warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(%client, %addr, %error, "delivered from the pod's own address");
                } else {
                    tracing::warn!(%client, %addr, %error, "cannot keep the client's address: the pod sees inbound mesh connections coming from its own address (warned once per pod; counted in weft_inpod_source_address_fallbacks_total)");
                }
                self.connect(addr).await
            }
        }
    }

    /// A TCP socket in the pod's namespace bound to `client`'s address, once the pod's return
    /// route for it is confirmed: a UDP socket with the same mark, connected to the client,
    /// gets its source from the route that the app's replies will take, which is the return
    /// route's (loopback, or for IPv4 the client's address itself) only if the route is there.
    /// Setting `IP_TRANSPARENT` on the probe also checks the permission before anything else.
    fn transparent_socket(&self, client: IpAddr, addr: SocketAddr) -> io::Result<Socket> {
        let domain = Domain::for_address(addr);
        let (probe, socket) = self.netns.run_here(|| -> io::Result<(Socket, Socket)> {
            Ok((
                Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?,
                Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
            ))
        })??;
        for s in [&probe, &socket] {
            if addr.is_ipv4() {
                s.set_ip_transparent_v4(true)?;
            } else {
                s.set_ip_transparent_v6(true)?;
            }
            s.set_mark(TRANSPARENT_FWMARK)?;
        }
        probe.connect(&SocketAddr::new(client, PROBE_PORT).into())?;
        let source = probe.local_addr()?.as_socket().map(|a| a.ip());
        if !source.is_some_and(|s| s == client || s.is_loopback()) {
            return Err(io::Error::other(format!(
                "the pod's netns has no return route for kept source addresses (replies to {client} would leave from {source:?})"
            )));
        }
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.bind(&SocketAddr::new(client, 0).into())?;
        Ok(socket)
    }

    /// A listener bound inside the pod's namespace. Needs a runtime (it registers with it).
    pub fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::from_std(bind_std(self.socket(&addr)?, addr)?)
    }
}

/// Binds and listens a socket already created in the right namespace. `SO_REUSEADDR` lets a
/// restarted proxy bind its ports again while the previous one's connections sit in TIME_WAIT;
/// `SO_REUSEPORT` lets a new proxy listen beside the old one during an upgrade
/// ([`super::handover`]).
pub fn bind_std(socket: Socket, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // One listener per family: an IPv4-mapped connection on an IPv6 socket would need the
        // IPv6 original-destination lookup to answer for an IPv4 redirect, which it does not.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Opens a listener in the current thread's namespace (the caller has entered the pod's).
pub fn listen_here(addr: SocketAddr, mark: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(mark)?;
    bind_std(socket, addr)
}
