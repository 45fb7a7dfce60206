//! GatewayClasses this controller owns, their Gateways, and each Gateway's listeners:
//! validated, checked for conflicts, TLS certificates resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gateway_api::experimental::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom, GatewayListenersTlsMode,
};
use k8s_openapi::api::core::v1::Secret;
use mesh_api::CONTROLLER_NAME;
use mesh_api::model::{
    Certificate, Listener, ListenerKey, ListenerProtocol, ListenerTls, ObjectKey, RouteKind, TlsMode,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Settings;
use super::address_pool;
use super::backends::GATEWAY_GROUP;
use super::exposure::{self, Exposed, Parameters, ServiceType};
use super::reference_grants::{self, From, To};
use super::selector::LabelSelector;
use crate::status::{
    Condition, GatewayAddress, GatewayClassStatus, GatewayStatus, ListenerStatus, RouteGroupKind,
};
use crate::store::Store;

/// GatewayClasses whose controllerName is Weft's, each accepted one with its parameters (from
/// the ConfigMap its parametersRef names), and their status. Others are not touched.
pub fn classes(store: &Store) -> (BTreeMap<String, Parameters>, BTreeMap<String, GatewayClassStatus>) {
    let mut accepted = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    for (key, class) in &store.gateway_classes {
        if class.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let generation = class.metadata.generation;
        let accepted_condition = match exposure::class_parameters(store, class) {
            Err(why) => Condition::new("Accepted", false, "InvalidParameters", why, generation),
            Ok(parameters) => {
                accepted.insert(key.name.clone(), parameters);
                Condition::new(
                    "Accepted",
                    true,
                    "Accepted",
                    "Weft manages Gateways of this class",
                    generation,
                )
            }
        };
        statuses.insert(
            key.name.clone(),
            GatewayClassStatus {
                conditions: vec![
                    accepted_condition,
                    Condition::new(
                        "SupportedVersion",
                        true,
                        "SupportedVersion",
                        "Weft supports Gateway API v1.5",
                        generation,
                    ),
                ],
                supported_features: Vec::new(),
            },
        );
    }
    (accepted, statuses)
}

/// Which namespaces may attach routes to a listener.
#[derive(Clone, Debug, PartialEq)]
pub enum AllowedNamespaces {
    Same,
    All,
    Selector(LabelSelector),
}

/// One listener, as far as validation got.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerState {
    pub name: String,
    pub port: u16,
    pub protocol: Option<ListenerProtocol>,
    pub hostname: Option<String>,
    pub namespaces: AllowedNamespaces,
    /// Route kinds that may attach (the valid ones of `allowedRoutes.kinds`, or the protocol's).
    pub kinds: Vec<RouteKind>,
    /// (ok, reason, message) of the listener's Accepted condition.
    pub accepted: (bool, &'static str, String),
    pub conflicted: Option<(&'static str, String)>,
    pub resolved_refs: (bool, &'static str, String),
    pub tls: Option<ListenerTls>,
    pub certificates: Vec<Certificate>,
}

impl ListenerState {
    /// Routes may attach.
    pub fn usable(&self) -> bool {
        self.accepted.0 && self.conflicted.is_none()
    }

    /// The proxy serves it.
    pub fn programmed(&self) -> bool {
        self.usable() && self.resolved_refs.0 && self.protocol.is_some()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GatewayState {
    pub key: ObjectKey,
    pub generation: Option<i64>,
    pub listeners: Vec<ListenerState>,
    pub addresses: Vec<IpAddr>,
    /// Why the Gateway's addresses cannot be used, when they cannot.
    pub address_problem: Option<String>,
    /// Why an address the Gateway asks for cannot be served here (outside the address pool).
    pub address_unusable: Option<String>,
    /// Why its parameters (`spec.infrastructure.parametersRef`) are invalid, when they are.
    pub parameters_problem: Option<String>,
    /// How it is exposed with a Service; `None` where Weft creates no Services (standalone,
    /// or no `--gateway-service-selector`).
    pub exposure: Option<Exposed>,
    /// The addresses its status reports, when they differ from the ones the proxies listen on
    /// (`addresses`): a load-balancer provider's, or the nodes' for NodePort.
    pub status_addresses: Option<Vec<GatewayAddress>>,
    /// What the Gateway waits for while it has no address to report.
    pub address_pending: Option<String>,
}

impl GatewayState {
    pub fn accepted(&self) -> bool {
        self.address_problem.is_none() && self.parameters_problem.is_none()
    }

    /// The addresses its status reports.
    pub fn reported_addresses(&self) -> Vec<GatewayAddress> {
        match &self.status_addresses {
            Some(addresses) => addresses.clone(),
            None => self.addresses.iter().map(|ip| ip_address(*ip)).collect(),
        }
    }
}

fn ip_address(ip: IpAddr) -> GatewayAddress {
    GatewayAddress { type_: "IPAddress".into(), value: ip.to_string() }
}

fn union(a: &[IpAddr], b: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|ip| !a.contains(ip)));
    out
}

pub fn gateways(
    store: &Store,
    settings: &Settings,
    classes: &BTreeMap<String, Parameters>,
) -> BTreeMap<ObjectKey, GatewayState> {
    let ours: Vec<(&ObjectKey, &Gateway)> = store
        .gateways
        .iter()
        .map(|(key, gw)| (key, gw.as_ref()))
        .filter(|(_, gw)| classes.contains_key(&gw.spec.gateway_class_name))
        .collect();
    let mut states: BTreeMap<ObjectKey, GatewayState> = ours
        .iter()
        .map(|(key, gw)| {
            let class = classes.get(&gw.spec.gateway_class_name).cloned().unwrap_or_default();
            ((*key).clone(), gateway(store, settings, &class, key, gw))
        })
        .collect();
    // NodePort Gateways are served on the nodes' addresses, not on one of the pool's.
    let node_port = |key: &ObjectKey| {
        states
            .get(key)
            .and_then(|s| s.exposure.as_ref())
            .is_some_and(|e| e.service_type == ServiceType::NodePort)
    };
    let node_port_keys: BTreeSet<ObjectKey> =
        ours.iter().map(|(k, _)| (*k).clone()).filter(|k| node_port(k)).collect();
    if let Some(pool) = &settings.gateway_address_pool {
        let asks_for_none = |gw: &Gateway| gw.spec.addresses.as_ref().is_none_or(Vec::is_empty);
        let taken = states.values().flat_map(|s| s.addresses.iter().copied()).collect();
        let wanting: Vec<address_pool::Wanting> = ours
            .iter()
            .filter(|(key, gw)| asks_for_none(gw) && !node_port_keys.contains(*key))
            .map(|(key, gw)| address_pool::Wanting { key: (*key).clone(), recorded: recorded_addresses(gw) })
            .collect();
        let assigned = address_pool::assign(pool, taken, &wanting);
        // Where a pool says which addresses the nodes answer for, a static address outside it
        // would be programmed on nothing that receives its traffic.
        for state in states.values_mut().filter(|s| !node_port_keys.contains(&s.key)) {
            let outside: Vec<String> =
                state.addresses.iter().filter(|ip| !pool.contains(*ip)).map(ToString::to_string).collect();
            if !outside.is_empty() {
                state.address_unusable = Some(format!(
                    "{} outside the address pool {pool}; the node proxies cannot receive traffic for it",
                    outside.join(", ")
                ));
                state.addresses.clear();
            }
        }
        for w in &wanting {
            if let Some(state) = states.get_mut(&w.key) {
                state.addresses = assigned.get(&w.key).copied().into_iter().collect();
            }
        }
    }
    if let Some(service_settings) = &settings.gateway_services {
        let nodes = exposure::proxy_node_addresses(store, service_settings);
        for (key, gw) in &ours {
            if let Some(state) = states.get_mut(*key) {
                expose(store, settings, &nodes, key, gw, state);
            }
        }
        refuse_shared_node_ports(&ours, &mut states);
    }
    states
}

/// Gateways served on the nodes' own addresses (NodePort, a provider's load balancer) share
/// them: a port one of them listens on is taken for the others. The oldest Gateway keeps it
/// (then the first by namespace/name); the others' listeners on it are not accepted
/// (`PortUnavailable`) and not served.
fn refuse_shared_node_ports(ours: &[(&ObjectKey, &Gateway)], states: &mut BTreeMap<ObjectKey, GatewayState>) {
    let mut order: Vec<(Option<&k8s_openapi::jiff::Timestamp>, &ObjectKey)> = ours
        .iter()
        .filter(|(key, _)| {
            states.get(*key).and_then(|s| s.exposure.as_ref()).is_some_and(|e| !e.node_addresses.is_empty())
        })
        .map(|(key, gw)| (gw.metadata.creation_timestamp.as_ref().map(|t| &t.0), *key))
        .collect();
    order.sort();
    let mut taken: BTreeMap<(u16, bool), ObjectKey> = BTreeMap::new();
    for (_, key) in order {
        let Some(state) = states.get_mut(key) else { continue };
        let mut claimed = Vec::new();
        for listener in state.listeners.iter_mut().filter(|l| l.accepted.0) {
            let Some(protocol) = listener.protocol else { continue };
            let port = (listener.port, protocol == ListenerProtocol::Udp);
            match taken.get(&port) {
                Some(owner) => {
                    listener.accepted = (
                        false,
                        "PortUnavailable",
                        format!(
                            "port {} is served on the nodes' addresses for Gateway {owner} already",
                            listener.port
                        ),
                    );
                }
                None => claimed.push(port),
            }
        }
        for port in claimed {
            taken.insert(port, key.clone());
        }
    }
}

/// Where an exposed Gateway's traffic arrives, and so which addresses the proxies listen on
/// and its status reports.
fn expose(
    store: &Store,
    settings: &Settings,
    nodes: &[IpAddr],
    key: &ObjectKey,
    gw: &Gateway,
    state: &mut GatewayState,
) {
    let Some(exposed) = state.exposure.as_mut() else { return };
    match exposed.service_type {
        ServiceType::None => {}
        ServiceType::LoadBalancer if settings.gateway_address_pool.is_some() => {
            // Weft is the load-balancer IPAM: the pool address is the Service's too.
            exposed.weft_ipam = true;
        }
        ServiceType::LoadBalancer => {
            // A provider's load balancer delivers to the nodes (their node ports, then the
            // EndpointSlice's node addresses); its address is what clients use.
            exposed.node_addresses = nodes.to_vec();
            let (ips, hostnames) = exposure::provider_ingress(store, key, gw);
            let reported: Vec<IpAddr> = union(&state.addresses, &ips);
            let mut addresses: Vec<GatewayAddress> = reported.iter().map(|ip| ip_address(*ip)).collect();
            addresses
                .extend(hostnames.into_iter().map(|h| GatewayAddress { type_: "Hostname".into(), value: h }));
            if addresses.is_empty() {
                state.address_pending = Some(format!(
                    "waiting for a load-balancer provider to give Service {}/{} an address \
                     (or use --gateway-address-pool, or service.type NodePort)",
                    key.namespace,
                    exposure::service_name(&key.name, &gw.spec.gateway_class_name)
                ));
            }
            state.status_addresses = Some(addresses);
            state.addresses = union(&union(&state.addresses, &ips), nodes);
        }
        ServiceType::NodePort => {
            exposed.node_addresses = nodes.to_vec();
            if nodes.is_empty() {
                state.address_pending =
                    Some("no node proxy is running and ready to serve the node ports".into());
            }
            state.status_addresses = Some(nodes.iter().map(|ip| ip_address(*ip)).collect());
            state.addresses = union(&state.addresses, nodes);
        }
    }
}

/// The IP addresses the Gateway's status holds: what this controller assigned last time.
fn recorded_addresses(gw: &Gateway) -> Vec<IpAddr> {
    let addresses = gw.status.as_ref().and_then(|s| s.addresses.as_ref());
    addresses.into_iter().flatten().filter_map(|a| a.value.parse().ok()).collect()
}

fn gateway(
    store: &Store,
    settings: &Settings,
    class: &Parameters,
    key: &ObjectKey,
    gw: &Gateway,
) -> GatewayState {
    let (parameters, parameters_problem) = match exposure::gateway_parameters(store, key, gw) {
        Ok(own) => (own.over(class), None),
        Err(why) => (class.clone(), Some(why)),
    };
    let exposure = settings
        .gateway_services
        .as_ref()
        .map(|_| Exposed { service_type: parameters.service_type.unwrap_or_default(), ..Default::default() });
    let exposed_by_service = exposure.as_ref().is_some_and(|e| e.service_type != ServiceType::None);
    let mut addresses = Vec::new();
    let mut address_problem = None;
    for a in gw.spec.addresses.iter().flatten() {
        let kind = a.r#type.as_deref().unwrap_or("IPAddress");
        let value = a.value.as_deref().unwrap_or_default();
        match (kind, value.parse::<IpAddr>()) {
            ("IPAddress", Ok(ip)) => addresses.push(ip),
            ("IPAddress", Err(_)) => {
                address_problem = Some(format!("address {value:?} is not an IP address"))
            }
            (other, _) => {
                address_problem = Some(format!("address type {other:?} is not supported; use IPAddress"))
            }
        }
    }
    // With a pool, `gateways` assigns these afterwards, seeing all Gateways at once.
    // Exposed by a Service, the Service's addresses (set afterwards) replace the default.
    if gw.spec.addresses.as_ref().is_none_or(Vec::is_empty)
        && settings.gateway_address_pool.is_none()
        && !exposed_by_service
    {
        addresses = settings.default_gateway_addresses.clone();
    }
    let mut listeners: Vec<ListenerState> =
        gw.spec.listeners.iter().map(|l| listener(store, key, l)).collect();
    // The API server refuses repeated names (listeners are a map keyed by name); a manifest
    // folder does not, so the repeats are refused here and only the first stands.
    for i in 1..listeners.len() {
        if listeners[..i].iter().any(|earlier| earlier.name == listeners[i].name) {
            let message =
                format!("listener name {:?} is used more than once; names must be unique", listeners[i].name);
            listeners[i].accepted = (false, "UnsupportedValue", message);
        }
    }
    mark_conflicts(&mut listeners);
    GatewayState {
        key: key.clone(),
        generation: gw.metadata.generation,
        listeners,
        addresses,
        address_problem,
        address_unusable: None,
        parameters_problem,
        exposure,
        status_addresses: None,
        address_pending: None,
    }
}

fn protocol(name: &str) -> Option<ListenerProtocol> {
    Some(match name {
        "HTTP" => ListenerProtocol::Http,
        "HTTPS" => ListenerProtocol::Https,
        "TLS" => ListenerProtocol::Tls,
        "TCP" => ListenerProtocol::Tcp,
        "UDP" => ListenerProtocol::Udp,
        _ => return None,
    })
}

/// The route kinds a listener of this protocol can carry.
pub fn kinds_for(protocol: ListenerProtocol, tls_mode: TlsMode) -> &'static [RouteKind] {
    match (protocol, tls_mode) {
        (ListenerProtocol::Http | ListenerProtocol::Https, _) => &[RouteKind::Http, RouteKind::Grpc],
        (ListenerProtocol::Tls, TlsMode::Passthrough) => &[RouteKind::Tls],
        (ListenerProtocol::Tls, TlsMode::Terminate) => &[RouteKind::Tls, RouteKind::Tcp],
        (ListenerProtocol::Tcp, _) => &[RouteKind::Tcp],
        (ListenerProtocol::Udp, _) => &[RouteKind::Udp],
    }
}

pub fn route_kind(group: &str, kind: &str) -> Option<RouteKind> {
    if group != GATEWAY_GROUP {
        return None;
    }
    Some(match kind {
        "HTTPRoute" => RouteKind::Http,
        "GRPCRoute" => RouteKind::Grpc,
        "TLSRoute" => RouteKind::Tls,
        "TCPRoute" => RouteKind::Tcp,
        "UDPRoute" => RouteKind::Udp,
        _ => return None,
    })
}

fn listener(store: &Store, gateway: &ObjectKey, l: &GatewayListeners) -> ListenerState {
    let protocol = protocol(&l.protocol);
    let tls_mode = match l.tls.as_ref().and_then(|t| t.mode.as_ref()) {
        Some(GatewayListenersTlsMode::Passthrough) => TlsMode::Passthrough,
        _ => TlsMode::Terminate,
    };
    let allowed = l.allowed_routes.as_ref();
    let namespaces = match allowed.and_then(|a| a.namespaces.as_ref()) {
        None => AllowedNamespaces::Same,
        Some(n) => match n.from.as_ref().unwrap_or(&GatewayListenersAllowedRoutesNamespacesFrom::Same) {
            GatewayListenersAllowedRoutesNamespacesFrom::Same => AllowedNamespaces::Same,
            GatewayListenersAllowedRoutesNamespacesFrom::All => AllowedNamespaces::All,
            GatewayListenersAllowedRoutesNamespacesFrom::Selector => AllowedNamespaces::Selector(
                n.selector.as_ref().and_then(super::routes::reshape).unwrap_or_default(),
            ),
        },
    };
    let mut state = ListenerState {
        name: l.name.clone(),
        port: u16::try_from(l.port).unwrap_or(0),
        protocol,
        hostname: l.hostname.clone().filter(|h| !h.is_empty()),
        namespaces,
        kinds: Vec::new(),
        accepted: (true, "Accepted", "listener is valid".to_string()),
        conflicted: None,
        resolved_refs: (true, "ResolvedRefs", "all references resolved".to_string()),
        tls: None,
        certificates: Vec::new(),
    };
    let Some(protocol) = protocol else {
        state.accepted = (
            false,
            "UnsupportedProtocol",
            format!("protocol {:?} is not supported; use HTTP, HTTPS, TLS, TCP or UDP", l.protocol),
        );
        return state;
    };
    if state.port == 0 {
        state.accepted = (false, "PortUnavailable", format!("port {} is not between 1 and 65535", l.port));
        return state;
    }
    let supported = kinds_for(protocol, tls_mode);
    match allowed.and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty()) {
        None => state.kinds = supported.to_vec(),
        Some(kinds) => {
            let mut invalid = Vec::new();
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                match route_kind(group, &k.kind).filter(|kind| supported.contains(kind)) {
                    Some(kind) if !state.kinds.contains(&kind) => state.kinds.push(kind),
                    Some(_) => {}
                    None => invalid.push(format!("{group}/{}", k.kind)),
                }
            }
            if !invalid.is_empty() {
                state.resolved_refs = (
                    false,
                    "InvalidRouteKinds",
                    format!("route kinds {} cannot attach to a {} listener", invalid.join(", "), l.protocol),
                );
            }
        }
    }
    // TLS: HTTPS terminates; TLS passes through or terminates; the others take no tls block.
    let needs_certificates = match protocol {
        ListenerProtocol::Https => {
            if tls_mode == TlsMode::Passthrough {
                state.accepted = (
                    false,
                    "UnsupportedValue",
                    "an HTTPS listener cannot use TLS mode Passthrough; use a TLS listener".into(),
                );
                return state;
            }
            true
        }
        ListenerProtocol::Tls => tls_mode == TlsMode::Terminate,
        _ => false,
    };
    if matches!(protocol, ListenerProtocol::Https | ListenerProtocol::Tls) {
        let mut certificate_keys = Vec::new();
        if needs_certificates {
            let refs = l.tls.as_ref().and_then(|t| t.certificate_refs.as_deref()).unwrap_or_default();
            if refs.is_empty() {
                state.resolved_refs = (
                    false,
                    "InvalidCertificateRef",
                    "a terminating TLS listener needs at least one certificateRef".into(),
                );
            }
            for r in refs {
                let group = r.group.as_deref().unwrap_or("");
                let kind = r.kind.as_deref().unwrap_or("Secret");
                let namespace = r.namespace.as_deref().unwrap_or(&gateway.namespace);
                let result = if !group.is_empty() || kind != "Secret" {
                    Err((
                        "InvalidCertificateRef",
                        format!("certificateRef {group}/{kind} {}: only core Secrets are supported", r.name),
                    ))
                } else if !reference_grants::permits(
                    store,
                    From { group: GATEWAY_GROUP, kind: "Gateway", namespace: &gateway.namespace },
                    To { group: "", kind: "Secret", namespace, name: &r.name },
                ) {
                    Err((
                        "RefNotPermitted",
                        format!(
                            "certificateRef to Secret {namespace}/{} needs a ReferenceGrant in {namespace}",
                            r.name
                        ),
                    ))
                } else {
                    let key = ObjectKey::new(namespace, &r.name);
                    match store.secrets.get(&key) {
                        None => Err(("InvalidCertificateRef", format!("Secret {key} does not exist"))),
                        Some(secret) => certificate(&key, secret)
                            .map_err(|why| ("InvalidCertificateRef", format!("Secret {key}: {why}"))),
                    }
                };
                match result {
                    Ok(cert) => {
                        certificate_keys.push(cert.key.to_string());
                        state.certificates.push(cert);
                    }
                    Err((reason, message)) => {
                        if state.resolved_refs.0 {
                            state.resolved_refs = (false, reason, message);
                        }
                    }
                }
            }
        }
        state.tls = Some(ListenerTls { mode: tls_mode, certificates: certificate_keys });
    }
    state
}

fn secret_field(secret: &Secret, field: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(field))
        .map(|b| b.0.clone())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(field)).map(|s| s.as_bytes().to_vec()))
}

/// A serving certificate from a Secret's `tls.crt` and `tls.key`, checked to be PEM that a TLS
/// stack can load.
fn certificate(key: &ObjectKey, secret: &Secret) -> Result<Certificate, String> {
    let chain = secret_field(secret, "tls.crt").ok_or("has no tls.crt")?;
    let private = secret_field(secret, "tls.key").ok_or("has no tls.key")?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    PrivateKeyDer::from_pem_slice(&private)
        .map_err(|e| format!("tls.key is not a valid PEM private key: {e}"))?;
    let leaf = webpki::EndEntityCert::try_from(&certs[0])
        .map_err(|e| format!("tls.crt is not a valid X.509 certificate: {e}"))?;
    let dns_names = leaf.valid_dns_names().map(str::to_string).collect();
    Ok(Certificate {
        key: key.clone(),
        chain_pem: String::from_utf8(chain).map_err(|_| "tls.crt is not text")?,
        key_pem: String::from_utf8(private).map_err(|_| "tls.key is not text")?,
        dns_names,
    })
}

/// Listeners on one port must differ in a way the proxy can tell apart: HTTP routes by Host,
/// HTTPS and TLS by SNI, and TCP from UDP by transport. Every listener of a set that cannot
/// be told apart is Conflicted.
fn mark_conflicts(listeners: &mut [ListenerState]) {
    let mut conflicts: Vec<Option<(&'static str, String)>> = vec![None; listeners.len()];
    for i in 0..listeners.len() {
        for j in 0..listeners.len() {
            if i == j
                || !listeners[i].accepted.0
                || !listeners[j].accepted.0
                || listeners[i].port != listeners[j].port
            {
                continue;
            }
            let (Some(a), Some(b)) = (listeners[i].protocol, listeners[j].protocol) else { continue };
            use ListenerProtocol::*;
            let compatible = matches!(
                (a, b),
                (Http, Http)
                    | (Https, Https)
                    | (Tls, Tls)
                    | (Https, Tls)
                    | (Tls, Https)
                    | (Tcp, Udp)
                    | (Udp, Tcp)
            );
            if !compatible || matches!((a, b), (Tcp, Tcp) | (Udp, Udp)) {
                conflicts[i] = Some((
                    "ProtocolConflict",
                    format!(
                        "port {} is also used by listener {:?} with a protocol that cannot share it",
                        listeners[i].port, listeners[j].name
                    ),
                ));
            } else if matches!((a, b), (Tcp, Udp) | (Udp, Tcp)) {
                continue;
            } else if listeners[i].hostname == listeners[j].hostname && conflicts[i].is_none() {
                conflicts[i] = Some((
                    "HostnameConflict",
                    format!(
                        "listener {:?} uses the same port {} and hostname {:?}",
                        listeners[j].name,
                        listeners[i].port,
                        listeners[i].hostname.as_deref().unwrap_or("(any)")
                    ),
                ));
            }
        }
    }
    for (listener, conflict) in listeners.iter_mut().zip(conflicts) {
        listener.conflicted = conflict;
    }
}

/// The model listeners (programmed ones only) and the certificates they use. A Gateway without
/// an address (its pool is full, or its address is outside the pool) gets none: the proxies
/// would otherwise bind their default address for it.
pub fn add_listeners(states: &BTreeMap<ObjectKey, GatewayState>, config: &mut mesh_api::model::Config) {
    for gw in states.values().filter(|g| g.accepted() && !g.addresses.is_empty()) {
        for l in gw.listeners.iter().filter(|l| l.programmed()) {
            let Some(protocol) = l.protocol else { continue };
            config.insert_listener(Listener {
                key: ListenerKey { gateway: gw.key.clone(), section: l.name.clone() },
                addresses: gw.addresses.clone(),
                port: l.port,
                protocol,
                hostname: l.hostname.clone(),
                tls: l.tls.clone(),
            });
            for cert in &l.certificates {
                config.insert_certificate(cert.clone());
            }
        }
    }
}

pub fn status(gw: &GatewayState, attached: &super::AttachedRoutes) -> GatewayStatus {
    let generation = gw.generation;
    let listeners: Vec<ListenerStatus> = gw
        .listeners
        .iter()
        .map(|l| {
            let supported_kinds = l
                .kinds
                .iter()
                .map(|k| RouteGroupKind { group: GATEWAY_GROUP.to_string(), kind: k.as_str().to_string() })
                .collect();
            let mut conditions = vec![Condition::new(
                "Accepted",
                l.accepted.0,
                l.accepted.1,
                l.accepted.2.clone(),
                generation,
            )];
            conditions.push(match &l.conflicted {
                Some((reason, message)) => {
                    Condition::new("Conflicted", true, reason, message.clone(), generation)
                }
                None => Condition::new(
                    "Conflicted",
                    false,
                    "NoConflicts",
                    "no conflicts with other listeners",
                    generation,
                ),
            });
            conditions.push(Condition::new(
                "ResolvedRefs",
                l.resolved_refs.0,
                l.resolved_refs.1,
                l.resolved_refs.2.clone(),
                generation,
            ));
            conditions.push(if l.programmed() && gw.accepted() {
                Condition::new(
                    "Programmed",
                    true,
                    "Programmed",
                    "the node proxies serve this listener",
                    generation,
                )
            } else {
                Condition::new(
                    "Programmed",
                    false,
                    "Invalid",
                    "the listener is not valid; see its other conditions",
                    generation,
                )
            });
            ListenerStatus {
                name: l.name.clone(),
                supported_kinds,
                // Only usable listeners carry routes; a repeated name must not borrow the
                // count of the listener it repeats.
                attached_routes: if l.usable() {
                    let key = ListenerKey { gateway: gw.key.clone(), section: l.name.clone() };
                    attached.get(&key).copied().unwrap_or(0)
                } else {
                    0
                },
                conditions,
            }
        })
        .collect();
    let valid = gw.listeners.iter().filter(|l| l.usable()).count();
    let accepted = match (&gw.parameters_problem, &gw.address_problem) {
        (Some(problem), _) => {
            Condition::new("Accepted", false, "InvalidParameters", problem.clone(), generation)
        }
        (None, Some(problem)) => {
            Condition::new("Accepted", false, "UnsupportedAddress", problem.clone(), generation)
        }
        _ if !gw.listeners.is_empty() && valid == 0 => Condition::new(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid; see the listeners' conditions",
            generation,
        ),
        _ if valid < gw.listeners.len() => Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!(
                "{} of {} listeners are not valid; see their conditions",
                gw.listeners.len() - valid,
                gw.listeners.len()
            ),
            generation,
        ),
        _ => Condition::new("Accepted", true, "Accepted", "the Gateway is valid", generation),
    };
    let programmed_listeners = gw.listeners.iter().filter(|l| l.programmed()).count();
    let reported = gw.reported_addresses();
    let programmed = if !accepted.is_true() {
        Condition::new("Programmed", false, "Invalid", "the Gateway is not accepted", generation)
    } else if let Some(unusable) = &gw.address_unusable {
        Condition::new("Programmed", false, "AddressNotUsable", unusable.clone(), generation)
    } else if gw.addresses.is_empty() || reported.is_empty() {
        Condition::new(
            "Programmed",
            false,
            "AddressNotAssigned",
            gw.address_pending.clone().unwrap_or_else(|| "no address is available for this Gateway".into()),
            generation,
        )
    } else if programmed_listeners == 0 {
        Condition::new("Programmed", false, "Invalid", "no listener could be programmed", generation)
    } else {
        Condition::new("Programmed", true, "Programmed", "the node proxies serve this Gateway", generation)
    };
    GatewayStatus { addresses: reported, conditions: vec![accepted, programmed], listeners }
}
