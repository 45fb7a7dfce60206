//! `resolve`: the pure function from the store to the proxies' config and every status.
//!
//! ```text
//! GatewayClasses → Gateways → listeners (valid? conflicted? certificates?)
//! routes → rules (valid? backends?) → each parentRef: a listener set or a Service (GAMMA)
//!        → attached? → model Route + per-parent status; listeners count attachedRoutes
//! Services, EndpointSlices, Pods → Services, Backends, Workloads
//! ```
//!
//! Same store in, byte-identical output out: everything iterates ordered maps.

mod address_pool;
mod backends;
pub mod exposure;
pub mod gateways;
pub mod hostnames;
pub mod incremental;
mod mesh;
mod reference_grants;
mod routes;
mod rules;
pub mod selector;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use mesh_api::CONTROLLER_NAME;
use mesh_api::model::{
    Config, Consumers, ListenerKey, ObjectKey, ParentTarget, Route, RouteKind, RouteParent,
};

use self::gateways::{AllowedNamespaces, GatewayState};
use self::routes::RouteSpec;
use crate::status::{Condition, ParentReference, RouteParentStatus, RouteStatus, Statuses};
use crate::store::Store;

pub use self::rules::duration_ms;

/// What resolve needs that is not in the store.
#[derive(Clone, Debug)]
pub struct Settings {
    pub trust_domain: String,
    pub cluster_domain: String,
    /// Where a Gateway without `spec.addresses` is served, when there is no pool.
    pub default_gateway_addresses: Vec<IpAddr>,
    /// Each Gateway without `spec.addresses` gets an address of its own from here.
    pub gateway_address_pool: Option<ipnet::IpNet>,
    /// Expose each Gateway with a Service (cluster mode): where the node proxies are.
    pub gateway_services: Option<exposure::ServiceSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            default_gateway_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            gateway_address_pool: None,
            gateway_services: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolution {
    pub config: Config,
    pub statuses: Statuses,
    /// The Services (and EndpointSlices) that expose the Gateways.
    pub exposures: exposure::Exposures,
}

pub fn resolve(store: &Store, settings: &Settings) -> Resolution {
    let mut config = Config::default();
    let mut statuses = Statuses::default();

    let (classes, class_statuses) = gateways::classes(store);
    statuses.gateway_classes = class_statuses;
    let gateway_states = gateways::gateways(store, settings, &classes);

    mesh::add_services(store, settings, &mut config);
    mesh::add_workloads(store, settings, &mut config);

    let mut attached = AttachedRoutes::new();
    for route in routes::all_routes(store) {
        let outcome = resolve_route(store, &route, &gateway_states);
        for listener in &outcome.attached {
            *attached.entry(listener.clone()).or_default() += 1;
        }
        if let Some(status) = outcome.status {
            statuses.routes.insert(route.key.clone(), status);
        }
        if let Some(r) = outcome.route {
            config.insert_route(r);
        }
    }

    gateways::add_listeners(&gateway_states, &mut config);
    for (key, gw) in &gateway_states {
        statuses.gateways.insert(key.clone(), gateways::status(gw, &attached));
    }
    let exposures = exposure::desired(store, &gateway_states);
    Resolution { config, statuses, exposures }
}

/// How many routes each listener carries (its `attachedRoutes`).
pub type AttachedRoutes = std::collections::HashMap<ListenerKey, i32>;

/// What one route resolved to: its status, its config, and the listeners it attached to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteOutcome {
    pub status: Option<RouteStatus>,
    pub route: Option<Route>,
    pub attached: Vec<ListenerKey>,
}

/// Where one parentRef led.
enum Attachment {
    /// Not a parent this controller manages (another implementation's Gateway, a kind Weft
    /// does not serve): no status entry, no config.
    NotOurs,
    Rejected {
        reason: &'static str,
        message: String,
    },
    Attached(Vec<RouteParent>),
}

/// Resolves one route against the Gateways as they stand. Pure: the same inputs give the same
/// outcome, whichever other routes exist.
pub fn resolve_route(
    store: &Store,
    route: &RouteSpec<'_>,
    gateway_states: &BTreeMap<ObjectKey, GatewayState>,
) -> RouteOutcome {
    let converted = rules::convert(store, route);
    let generation = route.generation;
    let mut parents = Vec::new();
    let mut parent_statuses = Vec::new();
    for parent_ref in &route.parent_refs {
        let attachment = attach(store, route, parent_ref, gateway_states);
        let accepted = match attachment {
            Attachment::NotOurs => continue,
            Attachment::Rejected { reason, message } => {
                Condition::new("Accepted", false, reason, message, generation)
            }
            Attachment::Attached(targets) => {
                if converted.rules.is_empty() && !converted.dropped.is_empty() {
                    Condition::new(
                        "Accepted",
                        false,
                        "UnsupportedValue",
                        format!("no rule is valid: {}", converted.dropped.join("; ")),
                        generation,
                    )
                } else {
                    parents.extend(targets);
                    Condition::new("Accepted", true, "Accepted", "the route is attached", generation)
                }
            }
        };
        let mut conditions = vec![accepted];
        conditions.push(match converted.ref_problems.first() {
            None => {
                Condition::new("ResolvedRefs", true, "ResolvedRefs", "all references resolved", generation)
            }
            Some(first) => Condition::new(
                "ResolvedRefs",
                false,
                first.reason,
                converted.ref_problems.iter().map(|p| p.message.as_str()).collect::<Vec<_>>().join("; "),
                generation,
            ),
        });
        if !converted.dropped.is_empty() && !converted.rules.is_empty() {
            conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                format!("dropped invalid rules: {}", converted.dropped.join("; ")),
                generation,
            ));
        }
        parent_statuses.push(RouteParentStatus {
            parent_ref: parent_ref.clone(),
            controller_name: CONTROLLER_NAME.to_string(),
            conditions,
        });
    }
    let attached = parents
        .iter()
        .filter_map(|p| match &p.target {
            ParentTarget::Listener(key) => Some(key.clone()),
            ParentTarget::Service { .. } => None,
        })
        .collect();
    RouteOutcome {
        status: (!parent_statuses.is_empty()).then_some(RouteStatus { parents: parent_statuses }),
        route: (!parents.is_empty()).then(|| Route {
            key: route.key.clone(),
            created: route.created,
            parents,
            rules: converted.rules,
        }),
        attached,
    }
}

fn attach(
    store: &Store,
    route: &RouteSpec<'_>,
    parent: &ParentReference,
    gateway_states: &BTreeMap<ObjectKey, GatewayState>,
) -> Attachment {
    let group = parent.group.as_deref().unwrap_or(backends::GATEWAY_GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    let namespace = parent.namespace.clone().unwrap_or_else(|| route.key.object.namespace.clone());
    match (group, kind) {
        (backends::GATEWAY_GROUP, "Gateway") => {
            let key = ObjectKey::new(namespace, &parent.name);
            match gateway_states.get(&key) {
                None => Attachment::NotOurs,
                Some(gw) => attach_to_gateway(store, route, parent, gw),
            }
        }
        ("", "Service") => attach_to_service(store, route, parent, namespace),
        _ => Attachment::NotOurs,
    }
}

fn attach_to_gateway(
    store: &Store,
    route: &RouteSpec<'_>,
    parent: &ParentReference,
    gw: &GatewayState,
) -> Attachment {
    if !gw.accepted() {
        return Attachment::Rejected {
            reason: "NoMatchingParent",
            message: format!("Gateway {} is not accepted", gw.key),
        };
    }
    let route_namespace = &route.key.object.namespace;
    let namespace_labels = store.namespace_labels(route_namespace);
    let mut targets = Vec::new();
    let mut candidates = 0;
    let mut hostname_mismatch = false;
    let mut refusals = Vec::new();
    for listener in &gw.listeners {
        if parent.section_name.as_deref().is_some_and(|s| s != listener.name) {
            continue;
        }
        if parent.port.is_some_and(|p| p != i32::from(listener.port)) {
            continue;
        }
        candidates += 1;
        if !listener.usable() {
            refusals.push(format!("listener {:?} is not valid", listener.name));
            continue;
        }
        if !listener.kinds.contains(&route.key.kind) {
            refusals.push(format!("listener {:?} does not allow {}", listener.name, route.key.kind));
            continue;
        }
        let namespace_allowed = match &listener.namespaces {
            AllowedNamespaces::Same => *route_namespace == gw.key.namespace,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(selector) => selector.matches(namespace_labels).unwrap_or(false),
        };
        if !namespace_allowed {
            refusals.push(format!(
                "listener {:?} does not allow routes from namespace {route_namespace}",
                listener.name
            ));
            continue;
        }
        let hostnames = if matches!(route.key.kind, RouteKind::Http | RouteKind::Grpc | RouteKind::Tls) {
            match hostnames::intersect(listener.hostname.as_deref(), &route.hostnames) {
                Some(h) => h,
                None => {
                    hostname_mismatch = true;
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        targets.push(RouteParent {
            target: ParentTarget::Listener(ListenerKey {
                gateway: gw.key.clone(),
                section: listener.name.clone(),
            }),
            hostnames,
        });
    }
    if !targets.is_empty() {
        return Attachment::Attached(targets);
    }
    if candidates == 0 {
        let which = match (&parent.section_name, parent.port) {
            (Some(s), Some(p)) => format!("named {s:?} on port {p}"),
            (Some(s), None) => format!("named {s:?}"),
            (None, Some(p)) => format!("on port {p}"),
            (None, None) => "at all".to_string(),
        };
        return Attachment::Rejected {
            reason: "NoMatchingParent",
            message: format!("Gateway {} has no listener {which}", gw.key),
        };
    }
    if hostname_mismatch && refusals.is_empty() {
        return Attachment::Rejected {
            reason: "NoMatchingListenerHostname",
            message: format!("no hostname of the route intersects a listener hostname of Gateway {}", gw.key),
        };
    }
    if hostname_mismatch {
        refusals.push("the other listeners' hostnames do not intersect the route's".to_string());
    }
    Attachment::Rejected { reason: "NotAllowedByListeners", message: refusals.join("; ") }
}

/// GAMMA: a route whose parent is a Service shapes traffic sent to that Service. In the
/// Service's namespace it is a producer route (every client); elsewhere a consumer route
/// (clients in the route's namespace only).
fn attach_to_service(
    store: &Store,
    route: &RouteSpec<'_>,
    parent: &ParentReference,
    namespace: String,
) -> Attachment {
    if !matches!(route.key.kind, RouteKind::Http | RouteKind::Grpc | RouteKind::Tcp | RouteKind::Tls) {
        return Attachment::Rejected {
            reason: "NotAllowedByListeners",
            message: format!("{} cannot attach to a Service", route.key.kind),
        };
    }
    let key = ObjectKey::new(namespace, &parent.name);
    let Some(service) = store.services.get(&key) else {
        return Attachment::Rejected {
            reason: "NoMatchingParent",
            message: format!("Service {key} does not exist"),
        };
    };
    let port = match parent.port {
        None => None,
        Some(p) if mesh::service_has_port(service, p) => u16::try_from(p).ok(),
        Some(p) => {
            return Attachment::Rejected {
                reason: "NoMatchingParent",
                message: format!("Service {key} has no port {p}"),
            };
        }
    };
    let consumers = if route.key.object.namespace == key.namespace {
        Consumers::All
    } else {
        Consumers::Namespace(route.key.object.namespace.clone())
    };
    Attachment::Attached(vec![RouteParent {
        target: ParentTarget::Service { service: key, port, consumers },
        hostnames: vec![],
    }])
}

#[cfg(test)]
mod tests;
