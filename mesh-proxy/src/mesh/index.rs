//! Lookups the mesh does per connection, compiled once per config snapshot: which Service a
//! destination address is, and which workload an IP belongs to.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mesh_api::model::{AppProtocol, Backend, BackendKey, Config, Endpoint, ObjectKey, Workload};

#[derive(Default)]
pub struct MeshIndex {
    /// `clusterIP:port` → the Service port's backend.
    by_vip: HashMap<SocketAddr, Arc<Backend>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_key: HashMap<ObjectKey, Arc<Workload>>,
}

/// Where a pod's outbound connection goes, as far as the mesh can tell.
#[derive(Debug)]
pub enum Destination {
    /// A Service's frontend: pick one of its endpoints.
    Service(Arc<Backend>),
    /// A pod's own address.
    Workload(Arc<Workload>),
    /// Outside the mesh's knowledge: deliver as is.
    Unknown,
}

impl MeshIndex {
    pub fn build(config: &Config) -> Self {
        let mut by_vip = HashMap::new();
        for service in config.services.values() {
            for port in &service.ports {
                let key = BackendKey { service: service.key.clone(), port: port.port };
                let Some(backend) = config.backends.get(&key.to_string()) else { continue };
                let backend = Arc::new(backend.clone());
                for vip in &service.vips {
                    by_vip.insert(SocketAddr::new(*vip, port.port), backend.clone());
                }
            }
        }
        let mut by_ip = HashMap::new();
        let mut by_key = HashMap::new();
        for workload in config.workloads.values() {
            let workload = Arc::new(workload.clone());
            for ip in &workload.ips {
                by_ip.insert(*ip, workload.clone());
            }
            by_key.insert(workload.key.clone(), workload);
        }
        MeshIndex { by_vip, by_ip, by_key }
    }

    pub fn destination(&self, original_dst: SocketAddr) -> Destination {
        if let Some(backend) = self.by_vip.get(&original_dst) {
            return Destination::Service(backend.clone());
        }
        match self.by_ip.get(&original_dst.ip()) {
            Some(workload) => Destination::Workload(workload.clone()),
            None => Destination::Unknown,
        }
    }

    /// Whether the Service port at `frontend` may be parsed as HTTP: not when it is declared
    /// opaque TCP or TLS.
    pub fn speaks_http(&self, frontend: SocketAddr) -> bool {
        self.by_vip
            .get(&frontend)
            .is_some_and(|backend| !matches!(backend.app_protocol, AppProtocol::Opaque | AppProtocol::Tls))
    }

    pub fn workload_at(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn workload(&self, key: &ObjectKey) -> Option<&Arc<Workload>> {
        self.by_key.get(key)
    }
}

/// A ready endpoint, chosen uniformly at random: L4 connections carry no latency signal to
/// balance on per request, and random spreads long-lived connections evenly.
pub fn pick_endpoint(backend: &Backend) -> Option<&Endpoint> {
    use rand::seq::IndexedRandom as _;
    let ready: Vec<&Endpoint> = backend.endpoints.iter().filter(|e| e.ready).collect();
    ready.choose(&mut rand::rng()).copied()
}
