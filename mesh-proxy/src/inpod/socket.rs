//! Sockets created inside a pod's network namespace, marked so the pod's interception rules
//! let them through (ztunnel's InPodSocketFactory).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::netns::PodNetns;

/// The listen backlog of the pod's listeners: the kernel's default `somaxconn` (4096), so a
/// burst of connections from one busy pod is queued rather than refused.
const BACKLOG: i32 = 4096;

#[derive(Clone, Debug)]
pub struct PodSocketFactory {
    netns: Arc<PodNetns>,
    mark: u32,
}

impl PodSocketFactory {
    pub fn new(netns: Arc<PodNetns>, mark: u32) -> Self {
        PodSocketFactory { netns, mark }
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
