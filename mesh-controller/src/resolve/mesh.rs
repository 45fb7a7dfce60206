//! The mesh half of the config: every Service's frontend and its backends (endpoints), and
//! every pod as a workload with its identity and whether it is meshed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService, ServicePort as KubeServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::MESH_LABEL;
use mesh_api::model::{
    AppProtocol, Backend, BackendKey, Config, Endpoint, ObjectKey, Service, ServicePort, Transport, Workload,
};

use super::Settings;
use crate::store::Store;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub fn slice_owner(key: &ObjectKey, slice: &EndpointSlice) -> Option<ObjectKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(&key.namespace, service))
}

pub fn add_services(store: &Store, settings: &Settings, config: &mut Config) {
    // EndpointSlices by the Service they belong to, so each Service reads only its own.
    let mut slices: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for (key, slice) in &store.endpoint_slices {
        if let Some(owner) = slice_owner(key, slice) {
            slices.entry(owner).or_default().push(slice);
        }
    }
    for (key, svc) in &store.services {
        let Some((service, backends)) =
            service_outputs(settings, key, svc, slices.get(key).map(Vec::as_slice).unwrap_or_default())
        else {
            continue;
        };
        for backend in backends {
            config.insert_backend(backend);
        }
        config.insert_service(service);
    }
}

/// A Service's frontend and one Backend per port, from the Service and its EndpointSlices.
pub fn service_outputs(
    settings: &Settings,
    key: &ObjectKey,
    svc: &KubeService,
    slices: &[&EndpointSlice],
) -> Option<(Service, Vec<Backend>)> {
    let spec = svc.spec.as_ref()?;
    let vips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .fold(Vec::new(), |mut acc, ip| {
            if !acc.contains(&ip) {
                acc.push(ip);
            }
            acc
        });
    let mut ports = Vec::new();
    let mut backends = Vec::new();
    for kube_port in spec.ports.iter().flatten() {
        let Some(port) = service_port(kube_port) else { continue };
        backends.push(Backend {
            key: BackendKey { service: key.clone(), port: port.port },
            app_protocol: port.app_protocol,
            endpoints: endpoints_for(slices, kube_port),
        });
        ports.push(port);
    }
    let service = Service {
        key: key.clone(),
        hostname: format!("{}.{}.svc.{}", key.name, key.namespace, settings.cluster_domain),
        vips,
        ports,
    };
    Some((service, backends))
}

fn service_port(p: &KubeServicePort) -> Option<ServicePort> {
    let port = u16::try_from(p.port).ok()?;
    let transport = match p.protocol.as_deref() {
        Some("UDP") => Transport::Udp,
        Some("SCTP") => Transport::Sctp,
        _ => Transport::Tcp,
    };
    Some(ServicePort { name: p.name.clone(), port, transport, app_protocol: app_protocol(p) })
}

/// `appProtocol` wins; otherwise the port name's prefix (`http`, `http2`, `grpc`, `tls`, `tcp`),
/// the convention most meshes honour; otherwise the proxy sniffs.
pub fn app_protocol(p: &KubeServicePort) -> AppProtocol {
    let from_name = |name: &str| {
        let prefix = name.split(['-', '_']).next().unwrap_or(name);
        match prefix {
            "http" => Some(AppProtocol::Http1),
            "http2" | "h2c" | "grpc" => Some(AppProtocol::H2c),
            "https" | "tls" => Some(AppProtocol::Tls),
            "tcp" => Some(AppProtocol::Opaque),
            _ => None,
        }
    };
    if let Some(app) = p.app_protocol.as_deref() {
        let known = match app.to_ascii_lowercase().as_str() {
            "http" => Some(AppProtocol::Http1),
            "kubernetes.io/h2c" | "h2c" | "grpc" | "http2" => Some(AppProtocol::H2c),
            "kubernetes.io/ws" => Some(AppProtocol::WebSocket),
            "kubernetes.io/wss" | "https" | "tls" => Some(AppProtocol::Tls),
            "tcp" => Some(AppProtocol::Opaque),
            _ => None,
        };
        if let Some(known) = known {
            return known;
        }
    }
    p.name.as_deref().and_then(from_name).unwrap_or(AppProtocol::Detect)
}

/// Endpoints of one Service port: EndpointSlice ports match by name (the Service port's name,
/// or "" for an unnamed single port), as kube-proxy does.
/// Endpoints of one Service port: EndpointSlice ports match by name (the Service port's name,
/// or "" for an unnamed single port), as kube-proxy does. The node comes from the slice's
/// `nodeName`, which the EndpointSlice controller always sets; reading it from the Pod instead
/// would make every Service depend on every Pod.
fn endpoints_for(slices: &[&EndpointSlice], port: &KubeServicePort) -> Vec<Endpoint> {
    let want_name = port.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for slice in slices {
        let slice_port =
            slice.ports.iter().flatten().find(|p| p.name.clone().unwrap_or_default() == want_name);
        let target = match (slice_port.and_then(|p| p.port), &port.target_port) {
            (Some(p), _) => p,
            (None, Some(IntOrString::Int(p))) => *p,
            (None, _) => port.port,
        };
        let Ok(target) = u16::try_from(target) else { continue };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let workload = ep
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .and_then(|t| Some(ObjectKey::new(t.namespace.clone()?, t.name.clone()?)));
            for address in &ep.addresses {
                if let Ok(address) = address.parse() {
                    out.push(Endpoint {
                        address,
                        port: target,
                        ready,
                        workload: workload.clone(),
                        node: ep.node_name.clone(),
                    });
                }
            }
        }
    }
    out.sort_by_key(|e| (e.address, e.port));
    out.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    out
}

pub fn add_workloads(store: &Store, settings: &Settings, config: &mut Config) {
    for (key, pod) in &store.pods {
        if let Some(w) = workload(store, settings, key, pod) {
            config.insert_workload(w);
        }
    }
}

/// A pod as a workload: addresses, node, identity, whether it is meshed and ready.
pub fn workload(store: &Store, settings: &Settings, key: &ObjectKey, pod: &Pod) -> Option<Workload> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref();
    let ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .chain(status.and_then(|s| s.pod_ip.as_ref()).and_then(|ip| ip.parse().ok()))
        .fold(Vec::new(), |mut acc, ip| {
            if !acc.contains(&ip) {
                acc.push(ip);
            }
            acc
        });
    let service_account = spec.service_account_name.clone().unwrap_or_else(|| "default".to_string());
    Some(Workload {
        key: key.clone(),
        ips,
        node: spec.node_name.clone().unwrap_or_default(),
        identity: format!("spiffe://{}/ns/{}/sa/{}", settings.trust_domain, key.namespace, service_account),
        service_account,
        meshed: is_meshed(store, &key.namespace, pod),
        ready: is_ready(pod),
    })
}

/// In the mesh: the namespace is labelled `weft.dev/mesh=enabled`, the pod has not opted out
/// with `weft.dev/mesh=disabled`, and it does not share the node's network.
pub fn is_meshed(store: &Store, namespace: &str, pod: &Pod) -> bool {
    let namespace_enrolled =
        store.namespace_labels(namespace).and_then(|l| l.get(MESH_LABEL)).is_some_and(|v| v == "enabled");
    let opted_out =
        pod.metadata.labels.as_ref().and_then(|l| l.get(MESH_LABEL)).is_some_and(|v| v == "disabled");
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    namespace_enrolled && !opted_out && !host_network
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A Service's frontend as the store has it (for GAMMA parentRefs).
pub fn service_has_port(service: &KubeService, port: i32) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|ports| ports.iter().any(|p| p.port == port))
}
