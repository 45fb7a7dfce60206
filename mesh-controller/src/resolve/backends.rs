//! A route's `backendRef` resolved to a Service port, or to the reason it cannot be.

use mesh_api::model::{BackendKey, ObjectKey, RouteKind};

use super::reference_grants::{self, From, To};
use super::routes::BackendReference;
use crate::store::Store;

/// Why a reference did not resolve: the route's `ResolvedRefs` condition reason and a message
/// that tells the user what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefProblem {
    pub reason: &'static str,
    pub message: String,
}

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Whether a backendRef into another namespace needs a ReferenceGrant there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grants {
    Required,
    /// Mesh routes (see `rules::is_mesh_only`).
    NotNeeded,
}

/// Resolves one backendRef of a route of kind `kind` in namespace `route_namespace`.
pub fn resolve(
    store: &Store,
    kind: RouteKind,
    route_namespace: &str,
    r: &BackendReference,
    grants: Grants,
) -> Result<BackendKey, RefProblem> {
    let group = r.group.as_deref().unwrap_or("");
    let target_kind = r.kind.as_deref().unwrap_or("Service");
    let namespace = r.namespace.as_deref().unwrap_or(route_namespace);
    if !group.is_empty() || target_kind != "Service" {
        return Err(RefProblem {
            reason: "InvalidKind",
            message: format!(
                "backendRef {namespace}/{}: kind {target_kind:?} in group {group:?} is not supported; use a core Service",
                r.name
            ),
        });
    }
    let allowed = grants == Grants::NotNeeded
        || reference_grants::permits(
            store,
            From { group: GATEWAY_GROUP, kind: kind.as_str(), namespace: route_namespace },
            To { group: "", kind: "Service", namespace, name: &r.name },
        );
    if !allowed {
        return Err(RefProblem {
            reason: "RefNotPermitted",
            message: format!(
                "backendRef to Service {namespace}/{} crosses namespaces and no ReferenceGrant in {namespace} allows {} from {route_namespace}",
                r.name,
                kind.as_str()
            ),
        });
    }
    let service_key = ObjectKey::new(namespace, &r.name);
    let Some(service) = store.services.get(&service_key) else {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("Service {service_key} does not exist"),
        });
    };
    let Some(port) = r.port else {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("backendRef to Service {service_key} needs a port"),
        });
    };
    let has_port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|ports| ports.iter().any(|p| p.port == port));
    if !has_port {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("Service {service_key} has no port {port}"),
        });
    }
    let port = u16::try_from(port).map_err(|_| RefProblem {
        reason: "BackendNotFound",
        message: format!("port {port} of Service {service_key} is out of range"),
    })?;
    Ok(BackendKey { service: service_key, port })
}
