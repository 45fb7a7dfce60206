//! Gateway listeners into the mesh: a request a Gateway route sends to a meshed pod rides an
//! HBONE tunnel to that pod's :15008, presenting the node proxy's own identity (its
//! ServiceAccount's SPIFFE ID, which the CA signs for the proxy itself), so ingress traffic is
//! encrypted and authenticated on the node-to-node link like pod-to-pod traffic, and the
//! destination sees who sent it. HTTP, TCP and TLS routes alike; unmeshed endpoints are
//! dialled directly, as before.
//!
//! Dialled from the proxy's own network namespace (the node's), not from a pod's.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use mesh_api::identity::SpiffeId;

use super::MeshTraffic;
use crate::hbone::PORT as HBONE_PORT;
use crate::hbone::client::PoolKey;
use crate::hbone::direct_connector;
use crate::upstream::dial::{Dial, Direct, Io};

/// The pool's name for the gateway's tunnels: they belong to no pod.
const GATEWAY_POOL: &str = "gateway";

/// Dials Gateway routes' endpoints: HBONE to meshed pods, direct to the rest.
struct GatewayDialer {
    mesh: Weak<MeshTraffic>,
    identity: SpiffeId,
}

impl Dial for GatewayDialer {
    fn dial(&self, endpoint: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let (mesh, identity) = (self.mesh.clone(), self.identity.clone());
        Box::pin(async move {
            let mesh = mesh.upgrade().ok_or_else(|| io::Error::other("the proxy is shutting down"))?;
            let index = mesh.index();
            let Some(workload) = index.workload_at(endpoint.ip()).filter(|w| w.meshed).cloned() else {
                return Direct.dial(endpoint).await;
            };
            // Fail closed, as a meshed pod does: a meshed destination is never sent plaintext
            // because the gateway's own certificate could not be had.
            let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
            let destination_identity: SpiffeId = workload
                .identity
                .parse()
                .map_err(|e| refuse(format!("workload {} has a malformed identity: {e}", workload.key)))?;
            let cert = mesh.identities.certificate(&identity).await.map_err(|e| {
                tracing::error!(%identity, %endpoint, error = %e, "no certificate for the gateway: meshed backends are unreachable");
                refuse(e.to_string())
            })?;
            let key = PoolKey {
                source: GATEWAY_POOL.to_string(),
                source_identity: identity,
                destination: SocketAddr::new(endpoint.ip(), HBONE_PORT),
                destination_identity,
            };
            let tunnel = mesh
                .client
                .open(&key, &cert, &direct_connector(), endpoint)
                .await
                .map_err(io::Error::other)?;
            Ok(Box::new(tunnel) as Box<dyn Io>)
        })
    }
}

impl MeshTraffic {
    /// From now on Gateway listeners reach meshed pods over HBONE as `identity` (the proxy's
    /// own, which the CA signs for it). Returns false when they already do.
    pub fn serve_gateways_as(self: &Arc<Self>, identity: SpiffeId) -> bool {
        tracing::info!(%identity, "Gateway routes reach meshed pods over HBONE with this identity");
        let dialer = GatewayDialer { mesh: Arc::downgrade(self), identity };
        self.proxy.dial_gateway_backends_with(Arc::new(dialer))
    }
}
