//! One adopted pod: its three listeners, opened inside its netns, the accept loops that hand
//! connections to [`PodTraffic`], and draining.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use mesh_api::inpod::PodInfo;
use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::handover::{Proto, SocketTables};
use super::metrics::InpodMetrics;
use super::netns::PodNetns;
use super::socket::{PodSocketFactory, listen_here};
use super::traffic::{PodContext, PodTraffic};

/// The proxy's ports inside every pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub inbound_hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { outbound: 15001, inbound_plaintext: 15006, inbound_hbone: 15008 }
    }
}

/// After a failed accept (out of file descriptors, mostly), wait this long before the next:
/// long enough not to spin on a condition that persists, short enough to be unnoticeable once
/// connections close and free descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepting new connections.
    Running,
    /// Listeners closed; open connections finish on their own.
    Draining,
    /// Every connection still open is cut.
    Closed,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Outbound,
    Inbound,
    Hbone,
}

pub struct AdoptedPod {
    pub context: Arc<PodContext>,
    /// Where this pod's listeners are bound, and their sockets' inodes: what a successor
    /// proxy must listen on too before this one lets go ([`super::handover`]).
    bound: Vec<SocketAddr>,
    inodes: HashSet<u64>,
    phase: watch::Sender<Phase>,
    /// Closed (all senders dropped) once every accept loop and connection has finished.
    finished: mpsc::Receiver<()>,
    accept_loops: Vec<JoinHandle<()>>,
}

/// The listeners of one pod, opened on a thread inside its netns.
struct Listeners {
    listeners: Vec<(Kind, std::net::TcpListener)>,
}

fn open_listeners(ports: Ports, mark: u32) -> io::Result<Listeners> {
    if let Err(error) = super::handover::enable_migration_here() {
        tracing::debug!(%error, "tcp_migrate_req not set in the pod");
    }
    let mut listeners = Vec::new();
    // Outbound arrives by `redirect` in the output hook, which rewrites the destination to
    // loopback; listening there only keeps the port unreachable from outside the pod.
    listeners
        .push((Kind::Outbound, listen_here(SocketAddr::from((Ipv4Addr::LOCALHOST, ports.outbound)), mark)?));
    listeners.push((
        Kind::Inbound,
        listen_here(SocketAddr::from((Ipv4Addr::UNSPECIFIED, ports.inbound_plaintext)), mark)?,
    ));
    listeners.push((
        Kind::Hbone,
        listen_here(SocketAddr::from((Ipv4Addr::UNSPECIFIED, ports.inbound_hbone)), mark)?,
    ));
    // IPv6 (dual-stack and IPv6 pods): a second socket per port, IPv6 only, beside the IPv4
    // one, with the same mark and SO_REUSEPORT ([`listen_here`]). Not one `[::]` socket for
    // both families: IPv4 would arrive as IPv4-mapped addresses, whose original destination
    // `IP6T_SO_ORIGINAL_DST` cannot give (conntrack holds it as IPv4), and a netns with IPv6
    // off could then not be served at all.
    //
    // Only where the pod has IPv6: a kernel without it refuses the socket (EAFNOSUPPORT), a
    // netns with `disable_ipv6=1` has no `::1` (EADDRNOTAVAIL); such a pod is complete with
    // IPv4. Any other failure (a port taken) fails the adoption like an IPv4 one would, rather
    // than leave the pod's IPv6 connections without a listener.
    for (kind, addr) in [
        (Kind::Outbound, SocketAddr::from((Ipv6Addr::LOCALHOST, ports.outbound))),
        (Kind::Inbound, SocketAddr::from((Ipv6Addr::UNSPECIFIED, ports.inbound_plaintext))),
        (Kind::Hbone, SocketAddr::from((Ipv6Addr::UNSPECIFIED, ports.inbound_hbone))),
    ] {
        match listen_here(addr, mark) {
            Ok(listener) => listeners.push((kind, listener)),
            Err(error) if no_ipv6(&error) => tracing::debug!(%addr, %error, "no IPv6 listener in this pod"),
            Err(error) => {
                return Err(io::Error::new(error.kind(), format!("listen on {addr} in the pod: {error}")));
            }
        }
    }
    Ok(Listeners { listeners })
}

/// Whether a failed IPv6 socket or bind means the pod's netns has no IPv6 to serve.
fn no_ipv6(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc_errno::EAFNOSUPPORT | libc_errno::EADDRNOTAVAIL | libc_errno::EPROTONOSUPPORT)
    )
}

/// The errno values [`no_ipv6`] accepts, from nix (the proxy has no direct libc dependency).
mod libc_errno {
    use nix::errno::Errno;
    pub const EAFNOSUPPORT: i32 = Errno::EAFNOSUPPORT as i32;
    pub const EADDRNOTAVAIL: i32 = Errno::EADDRNOTAVAIL as i32;
    pub const EPROTONOSUPPORT: i32 = Errno::EPROTONOSUPPORT as i32;
}

/// The destination the pod's connection had before the `redirect` rule rewrote it, from
/// conntrack (`SO_ORIGINAL_DST`, or its IPv6 twin).
pub fn original_dst(conn: &TcpStream) -> io::Result<SocketAddr> {
    match conn.local_addr()? {
        SocketAddr::V4(_) => {
            let sin = getsockopt(conn, sockopt::OriginalDst).map_err(io::Error::from)?;
            Ok(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )
            .into())
        }
        SocketAddr::V6(_) => {
            let sin6 = getsockopt(conn, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
            Ok(SocketAddrV6::new(Ipv6Addr::from(sin6.sin6_addr.s6_addr), u16::from_be(sin6.sin6_port), 0, 0)
                .into())
        }
    }
}

impl AdoptedPod {
    /// Opens the pod's listeners inside `netns` (on a dedicated thread) and starts accepting.
    /// Blocking: call from a blocking context, with a runtime handle for the accept loops.
    pub fn adopt(
        info: PodInfo,
        netns: PodNetns,
        ports: Ports,
        mark: u32,
        traffic: Arc<dyn PodTraffic>,
        metrics: Arc<InpodMetrics>,
        runtime: &tokio::runtime::Handle,
    ) -> io::Result<AdoptedPod> {
        let netns = Arc::new(netns);
        let Listeners { listeners } = netns.run_on_thread(move || open_listeners(ports, mark))??;
        let mut bound = Vec::new();
        let mut inodes = HashSet::new();
        for (_, listener) in &listeners {
            bound.push(listener.local_addr()?);
            inodes.insert(super::handover::inode(listener)?);
        }
        let (phase, _) = watch::channel(Phase::Running);
        let context = Arc::new(PodContext {
            info,
            sockets: PodSocketFactory::new(netns, mark, metrics.clone()),
            phase: phase.subscribe(),
        });
        let (done, finished) = mpsc::channel(1);
        let _guard = runtime.enter();
        let mut accept_loops = Vec::new();
        for (kind, listener) in listeners {
            let listener = TcpListener::from_std(listener)?;
            accept_loops.push(runtime.spawn(accept_loop(AcceptLoop {
                listener,
                kind,
                ports,
                pod: context.clone(),
                traffic: traffic.clone(),
                metrics: metrics.clone(),
                phase: phase.subscribe(),
                done: done.clone(),
            })));
        }
        Ok(AdoptedPod { context, bound, inodes, phase, finished, accept_loops })
    }

    /// Whether another proxy listens on every address this pod's listeners are bound to, in
    /// the pod's netns: a successor has adopted the pod.
    pub fn taken_over(&self) -> io::Result<bool> {
        let mut tables = self.context.netns().run_here(|| SocketTables::open_here(Proto::Tcp))??;
        for addr in &self.bound {
            if !tables.someone_else_on(*addr, &self.inodes)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether `netns` is the namespace this pod was adopted with.
    pub fn same_netns(&self, id: (u64, u64)) -> bool {
        self.context.netns().id() == id
    }

    /// Stops accepting at once (the listeners close), lets open connections finish for up to
    /// `deadline`, then cuts the rest. Returns when all of the pod's tasks are gone.
    pub async fn drain(mut self, deadline: Duration) {
        let _ = self.phase.send(Phase::Draining);
        for task in self.accept_loops.drain(..) {
            let _ = task.await;
        }
        if tokio::time::timeout(deadline, self.finished.recv()).await.is_err() {
            tracing::info!(
                pod = self.context.uid(),
                ?deadline,
                "drain deadline passed; closing open connections"
            );
        }
        let _ = self.phase.send(Phase::Closed);
        // Cut connections notice Closed at their next poll; wait for them to be gone.
        let _ = self.finished.recv().await;
    }
}

impl Drop for AdoptedPod {
    fn drop(&mut self) {
        let _ = self.phase.send(Phase::Closed);
        for task in &self.accept_loops {
            task.abort();
        }
    }
}

struct AcceptLoop {
    listener: TcpListener,
    kind: Kind,
    ports: Ports,
    pod: Arc<PodContext>,
    traffic: Arc<dyn PodTraffic>,
    metrics: Arc<InpodMetrics>,
    phase: watch::Receiver<Phase>,
    /// Held by the loop and by every connection it starts; see [`AdoptedPod::finished`].
    done: mpsc::Sender<()>,
}

async fn accept_loop(mut l: AcceptLoop) {
    loop {
        let accepted = tokio::select! {
            _ = l.phase.wait_for(|p| *p != Phase::Running) => break,
            accepted = l.listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, _peer)) => l.serve(conn),
            Err(error) => {
                tracing::warn!(pod = l.pod.uid(), kind = ?l.kind, %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // Connections the kernel has already queued on this listener would be reset when it
    // closes: take them first. (During a hand-over the successor's listener gets every new
    // connection that arrives after the close.)
    let Ok(listener) = listener_std(&l.listener) else { return };
    while let Ok((conn, _)) = listener.accept() {
        match conn.set_nonblocking(true).and_then(|()| TcpStream::from_std(conn)) {
            Ok(conn) => l.serve(conn),
            Err(error) => tracing::debug!(pod = l.pod.uid(), %error, "queued connection dropped"),
        }
    }
}

/// A second handle on the tokio listener's socket, non-blocking, for the final accepts.
fn listener_std(listener: &TcpListener) -> io::Result<std::net::TcpListener> {
    let socket = socket2::SockRef::from(listener);
    let dup = socket.try_clone()?;
    dup.set_nonblocking(true)?;
    Ok(dup.into())
}

impl AcceptLoop {
    /// Hands one accepted connection to the pod's traffic handler.
    fn serve(&self, conn: TcpStream) {
        let l = self;
        let _ = conn.set_nodelay(true);
        let pod = l.pod.clone();
        let handler = match l.kind {
            Kind::Hbone => {
                InpodMetrics::inc(&l.metrics.hbone_connections);
                l.traffic.inbound_hbone(pod, conn)
            }
            Kind::Outbound | Kind::Inbound => {
                let (counter, own_port) = match l.kind {
                    Kind::Outbound => (&l.metrics.outbound_connections, l.ports.outbound),
                    _ => (&l.metrics.inbound_connections, l.ports.inbound_plaintext),
                };
                let dst = match original_dst(&conn) {
                    // A connection made straight to the listener was never redirected: passing
                    // it "through" would connect the proxy to itself.
                    Ok(dst) if dst.port() == own_port => {
                        tracing::debug!(pod = l.pod.uid(), %dst, "connection to the proxy port itself refused");
                        return;
                    }
                    Ok(dst) => dst,
                    Err(error) => {
                        InpodMetrics::inc(&l.metrics.original_dst_failures);
                        tracing::warn!(pod = l.pod.uid(), %error, "no original destination; connection dropped");
                        return;
                    }
                };
                InpodMetrics::inc(counter);
                match l.kind {
                    Kind::Outbound => l.traffic.outbound(pod, conn, dst),
                    _ => l.traffic.inbound_plaintext(pod, conn, dst),
                }
            }
        };
        let mut phase = l.phase.clone();
        let done = l.done.clone();
        tokio::spawn(async move {
            let _done = done;
            tokio::select! {
                _ = handler => {}
                _ = phase.wait_for(|p| *p == Phase::Closed) => {}
            }
        });
    }
}
