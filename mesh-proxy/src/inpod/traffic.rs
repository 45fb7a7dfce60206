//! What happens to a connection intercepted in a pod: the [`PodTraffic`] seam where mesh
//! routing plugs in, and [`Passthrough`], the default that delivers it unchanged.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::future::BoxFuture;
use mesh_api::inpod::PodInfo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::netns::PodNetns;
use super::socket::PodSocketFactory;

/// One adopted pod, as the traffic handlers see it.
#[derive(Debug)]
pub struct PodContext {
    pub info: PodInfo,
    /// Creates sockets inside the pod's netns, marked to pass its rules.
    pub sockets: PodSocketFactory,
    /// The pod's phase ([`super::pod`]): handlers of long-lived connections watch it to wind
    /// down when the pod drains.
    pub(super) phase: tokio::sync::watch::Receiver<super::pod::Phase>,
}

impl PodContext {
    /// Resolves once the pod stops taking new connections: it was deleted, or this proxy is
    /// stopping or handing it over to a successor. Open connections go on until they end or
    /// the drain deadline.
    pub async fn draining(&self) {
        let mut phase = self.phase.clone();
        let _ = phase.wait_for(|p| *p != super::pod::Phase::Running).await;
    }

    pub fn uid(&self) -> &str {
        &self.info.uid
    }
    pub fn netns(&self) -> &Arc<PodNetns> {
        self.sockets.netns()
    }

    /// Connects to `target`, one of this pod's addresses, for an inbound connection from
    /// `client`: from the client's address where the pod's netns allows it, so the app sees who
    /// called ([`PodSocketFactory::connect_as`]), else (or without a usable client address) from
    /// the pod's own address.
    pub async fn deliver(&self, client: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
        match client.map(|c| c.to_canonical()) {
            Some(client) if self.can_keep(client, target) => self.sockets.connect_as(client, target).await,
            _ => self.sockets.connect(target).await,
        }
    }

    /// Whether a delivery to `target` may come from `client`'s address: the target must be the
    /// pod's own (the return route sends everything marked to the pod itself), the client of the
    /// same family and somebody else (a connection from the pod's own address needs nothing).
    fn can_keep(&self, client: IpAddr, target: SocketAddr) -> bool {
        let ips = &self.info.ips;
        client.is_ipv4() == target.is_ipv4()
            && ips.contains(&target.ip())
            && !ips.contains(&client)
            && !(client.is_loopback() || client.is_unspecified() || client.is_multicast())
    }
}

/// Where the proxy's mesh logic receives a pod's intercepted connections. Each call owns its
/// connection and runs as its own task; the future ends when the connection is done.
pub trait PodTraffic: Send + Sync + 'static {
    /// A connection the pod opened (to `original_dst`), taken by the outbound listener (:15001).
    fn outbound(
        &self,
        pod: Arc<PodContext>,
        conn: TcpStream,
        original_dst: SocketAddr,
    ) -> BoxFuture<'static, ()>;
    /// A plaintext connection to the pod (to `original_dst`, one of its addresses), taken by the
    /// inbound listener (:15006).
    fn inbound_plaintext(
        &self,
        pod: Arc<PodContext>,
        conn: TcpStream,
        original_dst: SocketAddr,
    ) -> BoxFuture<'static, ()>;
    /// A connection from another proxy to the pod's HBONE port (:15008).
    fn inbound_hbone(&self, pod: Arc<PodContext>, conn: TcpStream) -> BoxFuture<'static, ()>;
    /// `pod` was released (its DEL, or weft-cni's snapshot no longer names it); `remaining`
    /// are the pods still adopted. What the handler keeps for pods can go if no remaining pod
    /// needs it (the mesh: the workload certificate of an identity no pod here has any more).
    fn pod_removed(&self, _pod: &PodInfo, _remaining: &[PodInfo]) {}
}

/// Delivers every connection to where it was going, from inside the pod's netns, with bytes
/// copied unchanged both ways: interception without policy. HBONE is refused (logged and
/// closed) until the mesh's HBONE handler exists.
#[derive(Clone, Debug, Default)]
pub struct Passthrough;

impl Passthrough {
    /// `direction` "inbound" delivers from the client's address where the pod allows it
    /// ([`PodContext::deliver`]); "outbound" leaves from the pod's own, as the pod would.
    pub async fn splice(
        pod: Arc<PodContext>,
        mut conn: TcpStream,
        original_dst: SocketAddr,
        direction: &'static str,
    ) {
        let connected = if direction == "inbound" {
            pod.deliver(conn.peer_addr().ok().map(|peer| peer.ip()), original_dst).await
        } else {
            pod.sockets.connect(original_dst).await
        };
        let mut upstream = match connected {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::debug!(pod = pod.uid(), %original_dst, direction, %error, "passthrough connect failed");
                // Closing with a reset tells the client the destination refused, as it would
                // have seen without the proxy.
                // (SO_LINGER 0 never blocks: the close sends a reset at once.)
                let _ = socket2::SockRef::from(&conn).set_linger(Some(std::time::Duration::ZERO));
                return;
            }
        };
        // Buffers of 16 KiB per direction (one maximum-size TLS record, for the TLS most mesh
        // traffic is), grown for bulk transfers: see `proxy::copy`.
        match crate::proxy::copy::bidirectional(&mut conn, &mut upstream).await {
            Ok((sent, received)) => {
                tracing::trace!(pod = pod.uid(), %original_dst, direction, sent, received, "passthrough done")
            }
            Err(error) => {
                tracing::debug!(pod = pod.uid(), %original_dst, direction, %error, "passthrough ended")
            }
        }
        let _ = conn.shutdown().await;
    }
}

impl PodTraffic for Passthrough {
    fn outbound(
        &self,
        pod: Arc<PodContext>,
        conn: TcpStream,
        original_dst: SocketAddr,
    ) -> BoxFuture<'static, ()> {
        Box::pin(Self::splice(pod, conn, original_dst, "outbound"))
    }

    fn inbound_plaintext(
        &self,
        pod: Arc<PodContext>,
        conn: TcpStream,
        original_dst: SocketAddr,
    ) -> BoxFuture<'static, ()> {
        Box::pin(Self::splice(pod, conn, original_dst, "inbound"))
    }

    fn inbound_hbone(&self, pod: Arc<PodContext>, conn: TcpStream) -> BoxFuture<'static, ()> {
        let peer = conn.peer_addr().ok();
        tracing::info!(pod = pod.uid(), ?peer, "HBONE connection closed: HBONE is not served yet");
        Box::pin(async move { drop(conn) })
    }
}
