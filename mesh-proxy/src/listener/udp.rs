//! UDP listeners (UDPRoute): datagrams relayed to a weighted backend, per client flow.
//!
//! UDP has no connections, so the proxy makes flows: the first datagram from a client address
//! picks a backend and endpoint and opens a socket connected to it; later datagrams from that
//! client go through the same socket, and whatever the endpoint sends back is relayed to the
//! client from the listener's socket. A flow whose endpoint has sent nothing back for [`IDLE`]
//! is closed; the client's next datagram opens a new one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::config::ConfigStore;
use crate::metrics::L4Outcome;
use crate::route::BackendTarget;

/// Largest datagram relayed: the largest UDP payload there is, so nothing is ever truncated.
const MAX_DATAGRAM: usize = 65_535;
/// A flow with no answer from its endpoint for this long is closed. Shorter than conntrack's
/// 120 s for UDP streams so the proxy never holds a flow the kernel has forgotten, long enough
/// for request/response protocols (DNS, QUIC keep-alives every 15-30 s).
const IDLE: Duration = Duration::from_secs(60);
/// Most flows per listener: each holds a socket (a file descriptor) and a task. Beyond it new
/// clients' datagrams are dropped, as a full conntrack table would.
const MAX_FLOWS: usize = 4096;

struct Flow {
    upstream: Arc<UdpSocket>,
    relay: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// Relays datagrams on `socket` until the task is dropped.
pub async fn serve(socket: UdpSocket, bind: SocketAddr, store: Arc<ConfigStore>) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            // An ICMP error for an earlier send surfaces here on some systems: not fatal.
            Err(error) => {
                tracing::debug!(%bind, %error, "UDP receive failed");
                continue;
            }
        };
        if flows.get(&client).is_some_and(|f| f.relay.is_finished()) {
            flows.remove(&client);
        }
        if !flows.contains_key(&client) {
            if flows.len() >= MAX_FLOWS {
                flows.retain(|_, f| !f.relay.is_finished());
            }
            if flows.len() >= MAX_FLOWS {
                tracing::debug!(%bind, %client, "too many UDP flows; datagram dropped");
                continue;
            }
            match open(&socket, bind, client, &store).await {
                Some(flow) => {
                    flows.insert(client, flow);
                }
                None => continue,
            }
        }
        if let Some(flow) = flows.get(&client)
            && let Err(error) = flow.upstream.send(&buf[..n]).await
        {
            tracing::debug!(%client, %error, "UDP send to the backend failed");
        }
    }
}

/// A new flow for `client`: backend and endpoint chosen, socket connected, relay started.
async fn open(
    socket: &Arc<UdpSocket>,
    bind: SocketAddr,
    client: SocketAddr,
    store: &ConfigStore,
) -> Option<Flow> {
    let snapshot = store.load();
    let target = snapshot.routes.udp(&bind)?;
    let metrics = store.metrics();
    let listener = &*target.listener;
    let Some(backend) = target.rule.pick_backend() else {
        metrics.record_l4(listener, "-", L4Outcome::NoBackend);
        return None;
    };
    let BackendTarget::Service(endpoints) = &backend.target else {
        metrics.record_l4(listener, &backend.label, L4Outcome::NoBackend);
        return None;
    };
    let Some(endpoint) = endpoints.pick() else {
        metrics.record_l4(listener, &backend.label, L4Outcome::NoBackend);
        return None;
    };
    let local = match endpoint.addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let upstream = match UdpSocket::bind(local).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(%error, "cannot open a UDP socket for a flow");
            return None;
        }
    };
    if upstream.connect(endpoint.addr).await.is_err() {
        metrics.record_l4(listener, &backend.label, L4Outcome::ConnectFailed);
        return None;
    }
    metrics.record_l4(listener, &backend.label, L4Outcome::Forwarded);
    let upstream = Arc::new(upstream);
    let (back, socket) = (upstream.clone(), socket.clone());
    let relay = tokio::spawn(async move {
        // The endpoint counts as busy while its flow lives.
        let _endpoint = endpoint;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            match tokio::time::timeout(IDLE, back.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let _ = socket.send_to(&buf[..n], client).await;
                }
                // Nothing back for a whole idle period: the flow is over.
                Err(_) => return,
                // Port unreachable and the like: the endpoint is not there.
                Ok(Err(_)) => return,
            }
        }
    });
    Some(Flow { upstream, relay })
}
