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
                let backend = Arc::clone(backend);
                for vip in &service.vips {
                    by_vip.insert(SocketAddr::new(*vip, port.port), backend.clone());
                }
            }
        }
        let mut by_ip = HashMap::new();
        let mut by_key = HashMap::new();
        for workload in config.workloads.values() {
            for ip in &workload.ips {
                by_ip.insert(*ip, Arc::clone(workload));
            }
            by_key.insert(workload.key.clone(), Arc::clone(workload));
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
///
/// On a dual-stack Service, an endpoint of the family of the address the pod called (`vip`)
/// when there is one, as kube-proxy does (it serves each ClusterIP from the EndpointSlices of
/// its own family): the application sees the family it asked for. An endpoint of the other
/// family only when none of this one is ready; over HBONE or a fresh plaintext connection that
/// still works, and refusing would be worse.
pub fn pick_endpoint(backend: &Backend, vip: IpAddr) -> Option<&Endpoint> {
    use rand::seq::IndexedRandom as _;
    let ready = |same_family: bool| -> Vec<&Endpoint> {
        backend
            .endpoints
            .iter()
            .filter(|e| e.ready && (!same_family || e.address.is_ipv6() == vip.is_ipv6()))
            .collect()
    };
    let same = ready(true);
    let candidates = if same.is_empty() { ready(false) } else { same };
    candidates.choose(&mut rand::rng()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, ready: bool) -> Endpoint {
        Endpoint { address: address.parse().expect("ip"), port: 8080, ready, workload: None, node: None }
    }

    fn backend(endpoints: Vec<Endpoint>) -> Backend {
        let key = BackendKey { service: ObjectKey::new("shop", "server"), port: 80 };
        Backend { key, app_protocol: AppProtocol::Opaque, endpoints }
    }

    #[test]
    fn dual_stack_services_answer_in_the_family_that_was_called() {
        let both =
            backend(vec![endpoint("10.0.0.1", true), endpoint("fd00::1", true), endpoint("fd00::2", false)]);
        for _ in 0..50 {
            let v6 = pick_endpoint(&both, "fd00:96::10".parse().expect("ip")).expect("endpoint");
            assert_eq!(v6.address, "fd00::1".parse::<IpAddr>().expect("ip"));
            let v4 = pick_endpoint(&both, "10.96.0.10".parse().expect("ip")).expect("endpoint");
            assert_eq!(v4.address, "10.0.0.1".parse::<IpAddr>().expect("ip"));
        }
        let v4_only = backend(vec![endpoint("10.0.0.1", true)]);
        let other = pick_endpoint(&v4_only, "fd00:96::10".parse().expect("ip")).expect("endpoint");
        assert_eq!(
            other.address,
            "10.0.0.1".parse::<IpAddr>().expect("ip"),
            "the other family rather than none"
        );
        assert!(pick_endpoint(&backend(Vec::new()), "fd00:96::10".parse().expect("ip")).is_none());
    }

    /// The index is built at the first connection after each version: it must point at the
    /// config's backends and workloads, not copy them (100k endpoints are tens of MB and were
    /// copied under the config lock).
    #[test]
    fn the_index_shares_the_configs_backends_and_workloads() {
        use mesh_api::model::{ServicePort, Transport};
        let mut config = Config::default();
        config.insert_service(mesh_api::model::Service {
            key: ObjectKey::new("shop", "server"),
            hostname: "server.shop.svc.cluster.local".into(),
            vips: vec!["10.96.0.10".parse().expect("ip")],
            ports: vec![ServicePort {
                name: None,
                port: 80,
                transport: Transport::Tcp,
                app_protocol: AppProtocol::Opaque,
            }],
        });
        config.insert_backend(backend(vec![endpoint("10.0.0.1", true)]));
        config.insert_workload(Workload {
            key: ObjectKey::new("shop", "server-0"),
            ips: vec!["10.0.0.1".parse().expect("ip")],
            node: "node-b".into(),
            service_account: "server".into(),
            identity: "spiffe://cluster.local/ns/shop/sa/server".into(),
            meshed: true,
            ready: true,
        });
        let index = MeshIndex::build(&config);

        let Destination::Service(found) = index.destination("10.96.0.10:80".parse().expect("addr")) else {
            panic!("the Service's frontend resolves to its backend");
        };
        assert!(Arc::ptr_eq(&found, &config.backends["shop/server:80"]), "shared, not copied");
        let workload = index.workload_at("10.0.0.1".parse().expect("ip")).expect("workload by ip");
        assert!(Arc::ptr_eq(workload, &config.workloads["shop/server-0"]), "shared, not copied");
        let by_key = index.workload(&ObjectKey::new("shop", "server-0")).expect("workload by key");
        assert!(Arc::ptr_eq(by_key, workload));
        assert!(matches!(index.destination("10.0.0.9:80".parse().expect("addr")), Destination::Unknown));
    }
}
