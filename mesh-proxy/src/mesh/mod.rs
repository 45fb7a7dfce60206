//! The mesh: what the node proxy does with the connections of the pods it was handed.
//!
//! Outbound, a pod's connection goes to a Service or straight to a pod. A Service with GAMMA
//! routes for the pod's namespace gets its HTTP routed per request ([`http`]); otherwise one
//! of its endpoints is picked for the whole connection. When the destination pod is meshed, the connection rides an HBONE tunnel to the
//! pod's :15008, with the source pod's own certificate; otherwise it leaves in plaintext, as
//! the pod would have sent it. Inbound, HBONE streams are checked and delivered to the pod,
//! and plaintext from unmeshed clients is delivered unchanged.
//!
//! A meshed source whose certificate cannot be had sends nothing to meshed destinations: its
//! connection is reset and the reason logged (fail closed, never a plaintext fallback).

mod gateway;
mod http;
pub mod index;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use mesh_api::identity::SpiffeId;
use mesh_api::inpod::PodInfo;
use mesh_api::model::Workload;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use crate::config::ConfigStore;
use crate::hbone::client::{HboneClient, PoolKey};
use crate::hbone::server::{Deliver, Destination as HboneDestination, HboneServer};
use crate::hbone::{self, Connector};
use crate::identity::{IdentityManager, WorkloadCert};
use crate::inpod::{Passthrough, PodContext, PodTraffic};
use crate::proxy::Proxy;
use crate::upstream::Upstream;
use index::{Destination, MeshIndex, pick_endpoint};

pub struct MeshTraffic {
    store: Arc<ConfigStore>,
    proxy: Arc<Proxy>,
    /// Each pod's upstream clients, by pod UID (dropped once the pod is).
    upstreams: Mutex<HashMap<String, (Weak<PodContext>, Upstream)>>,
    identities: Arc<IdentityManager>,
    trust_domain: String,
    index: ArcSwap<(u64, Arc<MeshIndex>)>,
    pub client: HboneClient,
    pub server: Arc<HboneServer>,
    /// The TLS config each local identity's :15008 serves with, rebuilt when its certificate
    /// is renewed.
    server_configs: Mutex<HashMap<SpiffeId, ServerTls>>,
}

/// A server TLS config and the certificate it was built with.
type ServerTls = (Arc<WorkloadCert>, Arc<ServerConfig>);

/// Where an outbound connection is sent.
enum Plan {
    Tunnel { target: SocketAddr, workload: Arc<Workload> },
    Plaintext(SocketAddr),
}

impl MeshTraffic {
    pub fn new(
        store: Arc<ConfigStore>,
        proxy: Arc<Proxy>,
        identities: Arc<IdentityManager>,
        trust_domain: String,
        access_log: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            proxy,
            upstreams: Mutex::default(),
            identities,
            trust_domain,
            index: ArcSwap::from_pointee((u64::MAX, Arc::default())),
            client: HboneClient::default(),
            server: Arc::new(HboneServer::new(access_log)),
            server_configs: Mutex::default(),
        })
    }

    pub fn render_metrics(&self) -> String {
        let mut out = self.server.render_metrics();
        out.push_str(&format!(
            "# HELP weft_hbone_outbound_connections_total HBONE connections opened to other proxies.\n\
             # TYPE weft_hbone_outbound_connections_total counter\nweft_hbone_outbound_connections_total {}\n\
             # HELP weft_hbone_outbound_streams_total Connections tunnelled over HBONE.\n\
             # TYPE weft_hbone_outbound_streams_total counter\nweft_hbone_outbound_streams_total {}\n",
            self.client.connections_opened.load(std::sync::atomic::Ordering::Relaxed),
            self.client.streams_opened.load(std::sync::atomic::Ordering::Relaxed),
        ));
        out.push_str(&self.identities.render_metrics());
        out
    }

    /// The index of the current config, built at most once per version.
    fn index(&self) -> Arc<MeshIndex> {
        let snapshot = self.store.load();
        let cached = self.index.load();
        if cached.0 == snapshot.version {
            return cached.1.clone();
        }
        // Built from the held config, tagged with its version (the snapshot's, or newer).
        let (version, built) =
            self.store.read_config(|version, config| (version, Arc::new(MeshIndex::build(config))));
        self.index.store(Arc::new((version, built.clone())));
        built
    }

    /// A pod's identity: the controller's record of it, else what the CNI plugin told us.
    fn identity_of(&self, index: &MeshIndex, pod: &PodInfo) -> Option<SpiffeId> {
        let key = mesh_api::model::ObjectKey::new(&pod.namespace, &pod.name);
        if let Some(workload) = index.workload(&key) {
            return workload.identity.parse().ok();
        }
        SpiffeId::new(&self.trust_domain, &pod.namespace, &pod.service_account).ok()
    }

    /// `removed` is gone from this node: if no `remaining` pod has its identity, stop renewing
    /// that identity's certificate (it would otherwise be renewed for as long as the proxy
    /// runs) and drop the TLS config built on it. Returns the identity forgotten, if any.
    pub fn forget_unused_identity(&self, removed: &PodInfo, remaining: &[PodInfo]) -> Option<SpiffeId> {
        let index = self.index();
        let identity = self.identity_of(&index, removed)?;
        if remaining.iter().any(|pod| self.identity_of(&index, pod).as_ref() == Some(&identity)) {
            return None;
        }
        self.identities.forget(&identity);
        if let Ok(mut configs) = self.server_configs.lock() {
            configs.remove(&identity);
        }
        tracing::info!(%identity, "no pod of this identity left on the node: its certificate is no longer renewed");
        Some(identity)
    }

    fn plan(index: &MeshIndex, original_dst: SocketAddr) -> Plan {
        let (target, workload) = match index.destination(original_dst) {
            Destination::Service(backend) => match pick_endpoint(&backend, original_dst.ip()) {
                Some(endpoint) => {
                    let target = SocketAddr::new(endpoint.address, endpoint.port);
                    (target, index.workload_at(endpoint.address).cloned())
                }
                // No ready endpoint: let the connection fail as it would without the mesh.
                None => (original_dst, None),
            },
            Destination::Workload(workload) => (original_dst, Some(workload)),
            Destination::Unknown => (original_dst, None),
        };
        match workload {
            Some(workload) if workload.meshed => Plan::Tunnel { target, workload },
            _ => Plan::Plaintext(target),
        }
    }

    async fn outbound(self: Arc<Self>, pod: Arc<PodContext>, conn: TcpStream, original_dst: SocketAddr) {
        // Whatever the proxy writes back (spliced bytes, HTTP answers) goes out at once.
        let _ = conn.set_nodelay(true);
        let index = self.index();
        if index.speaks_http(original_dst)
            && self.store.load().routes.mesh(original_dst, &pod.info.namespace).is_some()
        {
            return self.serve_http(pod, conn, original_dst).await;
        }
        let (target, workload) = match Self::plan(&index, original_dst) {
            Plan::Plaintext(target) => return Passthrough::splice(pod, conn, target, "outbound").await,
            Plan::Tunnel { target, workload } => (target, workload),
        };
        let Some(source) = self.identity_of(&index, &pod.info) else {
            tracing::error!(pod = pod.uid(), %original_dst, "the pod has no workload identity: connection refused");
            return reset(conn);
        };
        let Ok(destination_identity) = workload.identity.parse::<SpiffeId>() else {
            tracing::error!(workload = %workload.key, identity = %workload.identity, "the destination's identity is malformed: connection refused");
            return reset(conn);
        };
        let cert = match self.identities.certificate(&source).await {
            Ok(cert) => cert,
            Err(error) => {
                tracing::error!(pod = pod.uid(), %original_dst, %error, "no certificate: mesh traffic fails closed");
                return reset(conn);
            }
        };
        let key = PoolKey {
            source: pod.uid().to_string(),
            source_identity: source,
            destination: SocketAddr::new(target.ip(), hbone::PORT),
            destination_identity,
        };
        match self.client.open(&key, &cert, &pod_connector(&pod), target).await {
            Ok(tunnel) => {
                let mut conn = conn;
                if let Err(error) = tunnel.splice(&mut conn).await {
                    tracing::debug!(pod = pod.uid(), %target, %error, "tunnelled connection ended");
                }
            }
            Err(error) => {
                tracing::warn!(pod = pod.uid(), %original_dst, %target, %error, "cannot open the HBONE tunnel");
                reset(conn);
            }
        }
    }

    async fn inbound_hbone(self: Arc<Self>, pod: Arc<PodContext>, conn: TcpStream) {
        let index = self.index();
        let Some(identity) = self.identity_of(&index, &pod.info) else {
            tracing::error!(pod = pod.uid(), "HBONE refused: the pod has no workload identity");
            return;
        };
        let tls = match self.server_config(&identity).await {
            Ok(tls) => tls,
            Err(error) => {
                tracing::error!(pod = pod.uid(), %error, "HBONE refused: no certificate for the pod");
                return;
            }
        };
        let destination = Arc::new(HboneDestination {
            pod: format!("{}/{}", pod.info.namespace, pod.info.name),
            addresses: pod.info.ips.clone(),
            connect: pod_deliver(&pod),
        });
        // When the pod drains (deleted, or this proxy stops or hands over), peers are told to
        // take new streams elsewhere (GOAWAY); streams in flight finish.
        let drain = {
            let pod = pod.clone();
            async move { pod.draining().await }
        };
        self.server.clone().serve_until(conn, tls, destination, drain).await;
    }

    async fn server_config(&self, identity: &SpiffeId) -> Result<Arc<ServerConfig>, String> {
        let cert = self.identities.certificate(identity).await.map_err(|e| e.to_string())?;
        if let Ok(configs) = self.server_configs.lock()
            && let Some((built_for, config)) = configs.get(identity)
            && Arc::ptr_eq(built_for, &cert)
        {
            return Ok(config.clone());
        }
        let config = hbone::tls::server_config(&cert).map_err(|e| e.to_string())?;
        if let Ok(mut configs) = self.server_configs.lock() {
            configs.insert(identity.clone(), (cert, config.clone()));
        }
        Ok(config)
    }
}

/// Dials from inside the pod, past its interception rules.
fn pod_connector(pod: &Arc<PodContext>) -> Connector {
    let sockets = pod.sockets.clone();
    Arc::new(move |addr| {
        let sockets = sockets.clone();
        Box::pin(async move { sockets.connect(addr).await })
    })
}

/// Delivers a tunnelled stream to the pod, from the client's address where the pod allows it.
fn pod_deliver(pod: &Arc<PodContext>) -> Deliver {
    let pod = pod.clone();
    Arc::new(move |client, target| {
        let pod = pod.clone();
        Box::pin(async move { pod.deliver(client, target).await })
    })
}

/// Closes with a reset, so the client sees a refused connection rather than an empty answer.
fn reset(conn: TcpStream) {
    // SO_LINGER 0 never blocks: the close sends the reset at once.
    let _ = socket2::SockRef::from(&conn).set_linger(Some(std::time::Duration::ZERO));
}

impl PodTraffic for Arc<MeshTraffic> {
    fn outbound(
        &self,
        pod: Arc<PodContext>,
        conn: TcpStream,
        original_dst: SocketAddr,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.clone().outbound(pod, conn, original_dst))
    }

    fn inbound_plaintext(
        &self,
        pod: Arc<PodContext>,
        conn: TcpStream,
        original_dst: SocketAddr,
    ) -> BoxFuture<'static, ()> {
        Box::pin(Passthrough::splice(pod, conn, original_dst, "inbound"))
    }

    fn inbound_hbone(&self, pod: Arc<PodContext>, conn: TcpStream) -> BoxFuture<'static, ()> {
        Box::pin(self.clone().inbound_hbone(pod, conn))
    }

    fn pod_removed(&self, pod: &PodInfo, remaining: &[PodInfo]) {
        self.forget_unused_identity(pod, remaining);
    }
}
