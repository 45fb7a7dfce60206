//! Gateway exposure: the Service (and its EndpointSlices) the controller creates for each
//! Gateway it serves, computed purely from the store; `gateway_services` applies them.
//!
//! How a Gateway is exposed comes from parameters in a ConfigMap, named by its GatewayClass's
//! `spec.parametersRef` and/or its own `spec.infrastructure.parametersRef` (the Gateway's keys
//! win over the class's):
//!
//! | `service.type` | Service | Gateway addresses |
//! | --- | --- | --- |
//! | `LoadBalancer` (default) | type LoadBalancer | with `--gateway-address-pool`: a pool address, which Weft also writes to the Service's `status.loadBalancer.ingress` (Weft is the LB-IPAM, `loadBalancerClass: weft.dev/address-pool`); without one: what the cluster's load-balancer provider writes there |
//! | `NodePort` | type NodePort | the node addresses of the running node proxies |
//! | `None` | none | as without Services: the Gateway's own or a pool address |
//!
//! The node proxies run in the controller's namespace (a DaemonSet), not in the Gateway's, so
//! a selector on a Service in the Gateway's namespace could not select them. The Service has
//! no selector; its EndpointSlices, written by Weft, name the addresses the proxies listen on
//! for this Gateway: its pool address (so the ClusterIP reaches it too), or the proxies' node
//! addresses for NodePort and a provider's load balancer, which deliver to the nodes.
//!
//! Naming follows GEP-1762 (in-cluster Gateway deployments): Service `<gateway>-<class>` in
//! the Gateway's namespace, label `gateway.networking.k8s.io/gateway-name`, owned by the
//! Gateway so that deleting the Gateway deletes it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gateway_api::experimental::gateways::Gateway;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use mesh_api::model::{ListenerProtocol, ObjectKey};

use super::gateways::GatewayState;
use crate::store::Store;

pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
pub const GATEWAY_CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "weft-controller";
/// EndpointSlices whose `endpointslice.kubernetes.io/managed-by` is not the EndpointSlice
/// controller's are left alone by it; ours say so.
pub const SLICE_MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const SLICE_MANAGED_BY: &str = "gateway-controller.weft.dev";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The `spec.loadBalancerClass` of Services Weft addresses from its pool: a cloud provider's
/// load-balancer controller only serves Services without a class (or with its own).
pub const LOAD_BALANCER_CLASS: &str = "weft.dev/address-pool";
/// The one parameter key: how Gateways are exposed.
pub const SERVICE_TYPE_KEY: &str = "service.type";
/// Every parameter key Weft reads; any other key is a mistake worth reporting.
pub const PARAMETER_KEYS: &[&str] = &[SERVICE_TYPE_KEY];

/// How a Gateway is exposed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    /// No Service: the Gateway is served on its own or a pool address only.
    None,
}

impl ServiceType {
    fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "LoadBalancer" => Ok(ServiceType::LoadBalancer),
            "NodePort" => Ok(ServiceType::NodePort),
            "None" => Ok(ServiceType::None),
            other => Err(format!("{SERVICE_TYPE_KEY} {other:?} is not one of LoadBalancer, NodePort, None")),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::None => "None",
        }
    }
}

/// Parameters as one ConfigMap sets them (unset keys inherit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parameters {
    pub service_type: Option<ServiceType>,
}

impl Parameters {
    /// `self` over `defaults`: a Gateway's parameters over its class's.
    pub fn over(&self, defaults: &Parameters) -> Parameters {
        Parameters { service_type: self.service_type.or(defaults.service_type) }
    }
}

/// Where the controller finds the node proxies, to expose Gateways with Services. Cluster mode
/// only: standalone (`--manifests`) there is nothing to create Services in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    /// The namespace the node proxies run in (the controller's).
    pub proxy_namespace: String,
    /// Labels every node proxy Pod has.
    pub proxy_selector: BTreeMap<String, String>,
}

/// Parses `key=value,key=value` (the `--gateway-service-selector` flag).
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        if key.trim().is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    if labels.is_empty() {
        return Err("no labels: the node proxies would not be found".into());
    }
    Ok(labels)
}

/// The parameters a ConfigMap's data sets, or why they are malformed.
pub fn parse_parameters(data: Option<&BTreeMap<String, String>>) -> Result<Parameters, String> {
    let mut parameters = Parameters::default();
    for (key, value) in data.into_iter().flatten() {
        match key.as_str() {
            SERVICE_TYPE_KEY => parameters.service_type = Some(ServiceType::parse(value)?),
            other => {
                return Err(format!("unknown key {other:?}; Weft reads {}", PARAMETER_KEYS.join(", ")));
            }
        }
    }
    Ok(parameters)
}

/// What the cluster source keeps of a ConfigMap: the values of parameter keys only (the other
/// keys stay, emptied, so that a misspelt key is still reported), and no managed fields.
/// ConfigMaps can be large, and only a few are Gateway parameters.
pub fn trim_config_map(mut config_map: ConfigMap) -> ConfigMap {
    config_map.metadata.managed_fields = None;
    config_map.metadata.annotations = None;
    config_map.binary_data = None;
    if let Some(data) = config_map.data.as_mut() {
        for (key, value) in data.iter_mut() {
            if !PARAMETER_KEYS.contains(&key.as_str()) {
                value.clear();
            }
        }
    }
    config_map
}

fn config_map_parameters(store: &Store, namespace: &str, name: &str) -> Result<Parameters, String> {
    let key = ObjectKey::new(namespace, name);
    let config_map = store.config_maps.get(&key).ok_or_else(|| format!("ConfigMap {key} does not exist"))?;
    parse_parameters(config_map.data.as_ref()).map_err(|why| format!("ConfigMap {key}: {why}"))
}

fn is_config_map(group: &str, kind: &str) -> bool {
    (group.is_empty() || group == "core") && kind == "ConfigMap"
}

/// A GatewayClass's parameters: none without a parametersRef, else its ConfigMap's; an error
/// (the class's Accepted=False, InvalidParameters) when the reference or the data is wrong.
pub fn class_parameters(
    store: &Store,
    class: &gateway_api::experimental::gatewayclasses::GatewayClass,
) -> Result<Parameters, String> {
    let Some(p) = &class.spec.parameters_ref else { return Ok(Parameters::default()) };
    if !is_config_map(&p.group, &p.kind) {
        return Err(format!(
            "parametersRef {}/{} {}: Weft reads its parameters from a core ConfigMap",
            p.group, p.kind, p.name
        ));
    }
    let Some(namespace) = p.namespace.as_deref().filter(|n| !n.is_empty()) else {
        return Err(format!("parametersRef ConfigMap {} needs a namespace", p.name));
    };
    config_map_parameters(store, namespace, &p.name)
}

/// A Gateway's own parameters (`spec.infrastructure.parametersRef`, a ConfigMap in its
/// namespace), or why they are invalid.
pub fn gateway_parameters(store: &Store, key: &ObjectKey, gw: &Gateway) -> Result<Parameters, String> {
    let reference = gw.spec.infrastructure.as_ref().and_then(|i| i.parameters_ref.as_ref());
    let Some(p) = reference else { return Ok(Parameters::default()) };
    if !is_config_map(&p.group, &p.kind) {
        return Err(format!(
            "infrastructure.parametersRef {}/{} {}: Weft reads its parameters from a core ConfigMap",
            p.group, p.kind, p.name
        ));
    }
    config_map_parameters(store, &key.namespace, &p.name)
}

/// The ConfigMaps any GatewayClass or Gateway names as parameters (whatever the class's
/// controller): a change to one of them re-resolves the Gateways.
pub fn referenced_config_maps(store: &Store) -> BTreeSet<ObjectKey> {
    let classes =
        store.gateway_classes.values().filter_map(|c| c.spec.parameters_ref.as_ref()).filter_map(|p| {
            let namespace = p.namespace.as_deref()?;
            is_config_map(&p.group, &p.kind).then(|| ObjectKey::new(namespace, &p.name))
        });
    let gateways = store.gateways.iter().filter_map(|(key, gw)| {
        let p = gw.spec.infrastructure.as_ref()?.parameters_ref.as_ref()?;
        is_config_map(&p.group, &p.kind).then(|| ObjectKey::new(&key.namespace, &p.name))
    });
    classes.chain(gateways).collect()
}

/// The node addresses of the node proxies that are running and ready: where NodePort and a
/// provider's load balancer deliver a Gateway's traffic. Sorted, without repeats.
pub fn proxy_node_addresses(store: &Store, settings: &ServiceSettings) -> Vec<IpAddr> {
    let mut addresses = BTreeSet::new();
    for (key, pod) in &store.pods {
        if key.namespace != settings.proxy_namespace || !is_proxy(pod, &settings.proxy_selector) {
            continue;
        }
        let Some(status) = &pod.status else { continue };
        let ready = status.phase.as_deref() == Some("Running")
            && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let listed = status.host_ips.iter().flatten().filter_map(|h| h.ip.parse::<IpAddr>().ok());
        let single = status.host_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok());
        addresses.extend(listed.chain(single));
    }
    addresses.into_iter().collect()
}

fn is_proxy(pod: &Pod, selector: &BTreeMap<String, String>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The Service of a Gateway: `<gateway>-<class>`, made a valid Service name (DNS-1035 label:
/// lowercase letters, digits and `-`, starting with a letter, at most 63 characters; a
/// shortened name ends in a hash of the full one, so two long names do not collide).
pub fn service_name(gateway: &str, class: &str) -> String {
    let full = format!("{gateway}-{class}");
    let mut name: String =
        full.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "gw-");
    }
    shorten(name, &full)
}

/// A label value of at most 63 characters (a long Gateway name is shortened with a hash).
pub fn label_value(value: &str) -> String {
    shorten(value.to_string(), value)
}

fn shorten(mut name: String, full: &str) -> String {
    const MAX: usize = 63;
    if name.len() > MAX {
        name.truncate(MAX - 9);
        name = format!("{}-{:08x}", name.trim_end_matches(['-', '.', '_']), fnv32(full));
    }
    while name.ends_with(['-', '.', '_']) {
        name.pop();
    }
    name
}

/// FNV-1a, 32 bits: stable across builds, so every replica and version names alike.
fn fnv32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// Everything Weft writes to expose one Gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Exposure {
    pub service: Service,
    /// One per address family of the endpoints (an EndpointSlice holds one family).
    pub endpoint_slices: Vec<EndpointSlice>,
    /// `status.loadBalancer.ingress` Weft writes: the pool addresses, when Weft is the
    /// load-balancer IPAM for this Service. `None`: the status belongs to someone else.
    pub ingress: Option<Vec<IpAddr>>,
}

/// The exposure of every Gateway, by Gateway.
pub type Exposures = BTreeMap<ObjectKey, Exposure>;

/// The Services (and EndpointSlices and load-balancer statuses) of the accepted Gateways that
/// are exposed with one. Pure: the same store and states give the same objects.
pub fn desired(store: &Store, states: &BTreeMap<ObjectKey, GatewayState>) -> Exposures {
    let mut exposures = Exposures::new();
    for (key, state) in states {
        let Some(exposed) = &state.exposure else { continue };
        if !state.accepted() || exposed.service_type == ServiceType::None {
            continue;
        }
        let Some(gw) = store.gateways.get(key) else { continue };
        // Without a uid (a Gateway not yet stored by an API server) no owner can be named, and
        // a Service without its owner would outlive the Gateway.
        let Some(uid) = gw.metadata.uid.clone() else { continue };
        let ports = service_ports(state);
        if ports.is_empty() {
            continue; // a LoadBalancer or NodePort Service needs at least one port
        }
        let name = service_name(&key.name, &gw.spec.gateway_class_name);
        let owner = OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            name: key.name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: None,
        };
        let infrastructure = gw.spec.infrastructure.as_ref();
        let mut labels: BTreeMap<String, String> =
            infrastructure.and_then(|i| i.labels.clone()).unwrap_or_default();
        labels.insert(GATEWAY_NAME_LABEL.into(), label_value(&key.name));
        labels.insert(GATEWAY_CLASS_LABEL.into(), label_value(&gw.spec.gateway_class_name));
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let annotations = infrastructure.and_then(|i| i.annotations.clone()).filter(|a| !a.is_empty());
        let weft_ipam = exposed.weft_ipam;
        let service = Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(key.namespace.clone()),
                labels: Some(labels.clone()),
                annotations,
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(exposed.service_type.as_str().into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(port, protocol)| ServicePort {
                            name: Some(port_name(*port, protocol)),
                            port: i32::from(*port),
                            target_port: Some(
                                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
                                    *port,
                                )),
                            ),
                            protocol: Some(protocol.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                load_balancer_class: weft_ipam.then(|| LOAD_BALANCER_CLASS.into()),
                // Traffic to a pool address reaches the proxies directly; node ports would
                // only be a second, unused way in.
                allocate_load_balancer_node_ports: weft_ipam.then_some(false),
                ..Default::default()
            }),
            status: None,
        };
        let endpoints: Vec<IpAddr> =
            if weft_ipam { state.addresses.clone() } else { exposed.node_addresses.clone() };
        let endpoint_slices = slices(key, &name, &labels, &owner, &ports, &endpoints);
        exposures.insert(
            key.clone(),
            Exposure { service, endpoint_slices, ingress: weft_ipam.then(|| state.addresses.clone()) },
        );
    }
    exposures
}

/// One port per distinct listener port and transport: UDP for UDP listeners, TCP otherwise.
fn service_ports(state: &GatewayState) -> Vec<(u16, &'static str)> {
    let ports: BTreeSet<(u16, &'static str)> = state
        .listeners
        .iter()
        .filter(|l| l.accepted.0 && l.port != 0)
        .filter_map(|l| {
            let protocol = match l.protocol? {
                ListenerProtocol::Udp => "UDP",
                _ => "TCP",
            };
            Some((l.port, protocol))
        })
        .collect();
    ports.into_iter().collect()
}

fn port_name(port: u16, protocol: &str) -> String {
    format!("{}-{port}", protocol.to_ascii_lowercase())
}

fn slices(
    gateway: &ObjectKey,
    service: &str,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
    ports: &[(u16, &'static str)],
    endpoints: &[IpAddr],
) -> Vec<EndpointSlice> {
    // The API server refuses loopback, link-local and unspecified endpoint addresses.
    let usable = |ip: &&IpAddr| !(ip.is_loopback() || ip.is_unspecified() || is_link_local(ip));
    let mut out = Vec::new();
    for (family, ipv6) in [("IPv4", false), ("IPv6", true)] {
        let addresses: Vec<&IpAddr> =
            endpoints.iter().filter(usable).filter(|ip| ip.is_ipv6() == ipv6).collect();
        if addresses.is_empty() {
            continue;
        }
        let mut slice_labels = labels.clone();
        slice_labels.insert(SERVICE_NAME_LABEL.into(), service.into());
        slice_labels.insert(SLICE_MANAGED_BY_LABEL.into(), SLICE_MANAGED_BY.into());
        out.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{service}-{}", family.to_ascii_lowercase())),
                namespace: Some(gateway.namespace.clone()),
                labels: Some(slice_labels),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            address_type: family.into(),
            endpoints: addresses
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(port, protocol)| EndpointPort {
                        name: Some(port_name(*port, protocol)),
                        port: Some(i32::from(*port)),
                        protocol: Some(protocol.to_string()),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        });
    }
    out
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// How one Gateway is exposed, as resolve decided (kept on its [`GatewayState`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exposed {
    pub service_type: ServiceType,
    /// Weft addresses the Service from its pool and writes its load-balancer status.
    pub weft_ipam: bool,
    /// The running node proxies' node addresses (NodePort, or a provider's load balancer).
    pub node_addresses: Vec<IpAddr>,
}

/// The addresses a load-balancer provider wrote to the Gateway's Service, if the Service is
/// Weft's: (IP addresses, hostnames).
pub fn provider_ingress(store: &Store, key: &ObjectKey, gw: &Gateway) -> (Vec<IpAddr>, Vec<String>) {
    let name = service_name(&key.name, &gw.spec.gateway_class_name);
    let Some(service) = store.services.get(&ObjectKey::new(&key.namespace, &name)) else {
        return (Vec::new(), Vec::new());
    };
    if !is_ours(&service.metadata) {
        return (Vec::new(), Vec::new());
    }
    let ingress =
        service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    let mut ips = Vec::new();
    let mut hostnames = Vec::new();
    for entry in ingress.into_iter().flatten() {
        if let Some(ip) = entry.ip.as_deref().and_then(|ip| ip.parse().ok()) {
            ips.push(ip);
        } else if let Some(hostname) = entry.hostname.as_deref().filter(|h| !h.is_empty()) {
            hostnames.push(hostname.to_string());
        }
    }
    (ips, hostnames)
}

/// Whether an object carries Weft's managed-by label: only such Services and EndpointSlices
/// are ever changed or deleted by the controller.
pub fn is_ours(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str) == Some(MANAGED_BY)
        && meta.labels.as_ref().is_some_and(|l| l.contains_key(GATEWAY_NAME_LABEL))
        && meta.owner_references.iter().flatten().any(|o| o.kind == "Gateway")
}

#[cfg(test)]
mod tests;
