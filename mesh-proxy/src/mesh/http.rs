//! L7 in the mesh: a meshed pod's connection to a Service that has GAMMA routes is served as
//! HTTP by the same proxy core as a Gateway listener (matching, filters, weighted backends,
//! retries, timeouts), keyed by the Service's frontend and the pod's namespace. Each request's
//! endpoint is dialled on the pod's behalf: through an HBONE tunnel with the pod's certificate
//! when the endpoint is meshed, from inside the pod's netns otherwise. A canary split so moves
//! requests, not connections.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mesh_api::identity::SpiffeId;
use tokio::net::TcpStream;

use super::MeshTraffic;
use crate::hbone::PORT as HBONE_PORT;
use crate::hbone::client::PoolKey;
use crate::inpod::PodContext;
use crate::listener::{for_connection, framing, http_server};
use crate::proxy::{Inbound, MeshClient};
use crate::upstream::Upstream;
use crate::upstream::dial::{Dial, Io};

/// Dials a request's endpoint for one pod.
pub(super) struct PodDialer {
    pub mesh: Weak<MeshTraffic>,
    pub pod: Arc<PodContext>,
    /// `None` when the pod has no identity: it can still reach unmeshed endpoints.
    pub source: Option<SpiffeId>,
}

impl Dial for PodDialer {
    fn dial(&self, endpoint: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        let (mesh, pod, source) = (self.mesh.clone(), self.pod.clone(), self.source.clone());
        Box::pin(async move {
            let mesh = mesh.upgrade().ok_or_else(|| io::Error::other("the proxy is shutting down"))?;
            let index = mesh.index();
            let workload = index.workload_at(endpoint.ip()).filter(|w| w.meshed).cloned();
            let Some(workload) = workload else {
                let stream = pod.sockets.connect(endpoint).await?;
                return Ok(Box::new(stream) as Box<dyn Io>);
            };
            let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
            let source =
                source.ok_or_else(|| refuse(format!("pod {} has no workload identity", pod.uid())))?;
            let destination_identity: SpiffeId = workload
                .identity
                .parse()
                .map_err(|e| refuse(format!("workload {} has a malformed identity: {e}", workload.key)))?;
            let cert = mesh.identities.certificate(&source).await.map_err(|e| refuse(e.to_string()))?;
            let key = PoolKey {
                source: pod.uid().to_string(),
                source_identity: source,
                destination: SocketAddr::new(endpoint.ip(), HBONE_PORT),
                destination_identity,
            };
            let tunnel = mesh
                .client
                .open(&key, &cert, &super::pod_connector(&pod), endpoint)
                .await
                .map_err(io::Error::other)?;
            Ok(Box::new(tunnel) as Box<dyn Io>)
        })
    }
}

impl MeshTraffic {
    /// The pod's upstream clients: one pool per pod, so its requests reuse tunnels and
    /// keep-alive connections across its own connections, and never another pod's.
    pub(super) fn upstream_for(
        self: &Arc<Self>,
        pod: &Arc<PodContext>,
        source: Option<SpiffeId>,
    ) -> Upstream {
        let Ok(mut upstreams) = self.upstreams.lock() else {
            return self.new_upstream(pod, source);
        };
        if let Some((_, upstream)) = upstreams.get(pod.uid()) {
            return upstream.clone();
        }
        // A new pod: the moment to forget the pools of pods that are gone, rather than on
        // every connection.
        upstreams.retain(|_, (owner, _)| owner.strong_count() > 0);
        let upstream = self.new_upstream(pod, source);
        upstreams.insert(pod.uid().to_string(), (Arc::downgrade(pod), upstream.clone()));
        upstream
    }

    fn new_upstream(self: &Arc<Self>, pod: &Arc<PodContext>, source: Option<SpiffeId>) -> Upstream {
        Upstream::new(Arc::new(PodDialer { mesh: Arc::downgrade(self), pod: pod.clone(), source }))
    }

    /// Serves an intercepted connection to `frontend` as HTTP through the GAMMA routes.
    pub(super) async fn serve_http(
        self: Arc<Self>,
        pod: Arc<PodContext>,
        conn: TcpStream,
        frontend: SocketAddr,
    ) {
        let index = self.index();
        let source = self.identity_of(&index, &pod.info);
        let peer = conn.peer_addr().unwrap_or(frontend);
        let verdicts = framing::Verdicts::default();
        let mesh = MeshClient {
            namespace: pod.info.namespace.as_str().into(),
            upstream: self.upstream_for(&pod, source),
        };
        let inbound = Inbound::new(frontend, peer, false, verdicts.clone(), Some(Arc::new(mesh)));
        let proxy = self.proxy.clone();
        let service = service_fn(move |req| proxy.clone().handle(inbound.clone(), req));
        let stream = framing::Scanned::new(conn, verdicts);
        if let Err(error) =
            for_connection(&http_server()).serve_connection_with_upgrades(TokioIo::new(stream), service).await
        {
            tracing::debug!(pod = pod.uid(), %frontend, %error, "meshed HTTP connection ended");
        }
    }
}
