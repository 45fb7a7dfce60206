//! The typed snapshot of every object the controller reads, filled by the Kubernetes
//! reflectors or by the manifest folder, and read by `resolve`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gateway_api::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant, tcproutes::TcpRoute, tlsroutes::TlsRoute, udproutes::UdpRoute,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use mesh_api::model::ObjectKey;

/// One object of any kind the controller reads. Objects pass through this type once on their
/// way into the store, so the size of the largest variant costs nothing worth boxing for.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Object {
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    GrpcRoute(GrpcRoute),
    TlsRoute(TlsRoute),
    TcpRoute(TcpRoute),
    UdpRoute(UdpRoute),
    ReferenceGrant(ReferenceGrant),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    Namespace(Namespace),
    Secret(Secret),
    ConfigMap(ConfigMap),
}

/// Objects of one kind by `namespace/name` (cluster-scoped kinds use an empty namespace).
pub type Objects<K> = BTreeMap<ObjectKey, Arc<K>>;

/// What changed in a [`Store`] since the change log was last taken.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeLog {
    /// Objects inserted, replaced or removed.
    pub objects: BTreeSet<(Kind, ObjectKey)>,
    /// Kinds whose every object was replaced at once (a watch relist).
    pub relisted: BTreeSet<Kind>,
}

impl ChangeLog {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.relisted.is_empty()
    }

    pub fn touches(&self, kind: Kind) -> bool {
        self.relisted.contains(&kind) || self.objects.iter().any(|(k, _)| *k == kind)
    }

    pub fn keys(&self, kind: Kind) -> impl Iterator<Item = &ObjectKey> {
        self.objects.iter().filter(move |(k, _)| *k == kind).map(|(_, key)| key)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Store {
    pub gateway_classes: Objects<GatewayClass>,
    pub gateways: Objects<Gateway>,
    pub http_routes: Objects<HttpRoute>,
    pub grpc_routes: Objects<GrpcRoute>,
    pub tls_routes: Objects<TlsRoute>,
    pub tcp_routes: Objects<TcpRoute>,
    pub udp_routes: Objects<UdpRoute>,
    pub reference_grants: Objects<ReferenceGrant>,
    pub services: Objects<Service>,
    pub endpoint_slices: Objects<EndpointSlice>,
    pub pods: Objects<Pod>,
    pub namespaces: Objects<Namespace>,
    pub secrets: Objects<Secret>,
    /// Only what Gateway parameters can be: the cluster source keeps no other data of them.
    pub config_maps: Objects<ConfigMap>,
    changes: ChangeLog,
}

/// `namespace/name` of any object; cluster-scoped objects get an empty namespace.
pub fn key_of<K: Resource>(object: &K) -> ObjectKey {
    let meta = object.meta();
    ObjectKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// The kinds of object in a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TlsRoute,
    TcpRoute,
    UdpRoute,
    ReferenceGrant,
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    Secret,
    ConfigMap,
}

impl Object {
    /// `namespace/name` (an empty namespace for cluster-scoped kinds).
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::GatewayClass(o) => key_of(o),
            Object::Gateway(o) => key_of(o),
            Object::HttpRoute(o) => key_of(o),
            Object::GrpcRoute(o) => key_of(o),
            Object::TlsRoute(o) => key_of(o),
            Object::TcpRoute(o) => key_of(o),
            Object::UdpRoute(o) => key_of(o),
            Object::ReferenceGrant(o) => key_of(o),
            Object::Service(o) => key_of(o),
            Object::EndpointSlice(o) => key_of(o),
            Object::Pod(o) => key_of(o),
            Object::Namespace(o) => key_of(o),
            Object::Secret(o) => key_of(o),
            Object::ConfigMap(o) => key_of(o),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::TcpRoute(_) => Kind::TcpRoute,
            Object::UdpRoute(_) => Kind::UdpRoute,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Pod(_) => Kind::Pod,
            Object::Namespace(_) => Kind::Namespace,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
        }
    }
}

fn put<K: Resource>(map: &mut Objects<K>, object: K) {
    map.insert(key_of(&object), Arc::new(object));
}

impl Store {
    pub fn insert(&mut self, object: Object) {
        let key = object.key();
        self.changes.objects.insert((object.kind(), key));
        match object {
            Object::GatewayClass(o) => put(&mut self.gateway_classes, o),
            Object::Gateway(o) => put(&mut self.gateways, o),
            Object::HttpRoute(o) => put(&mut self.http_routes, o),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, o),
            Object::TlsRoute(o) => put(&mut self.tls_routes, o),
            Object::TcpRoute(o) => put(&mut self.tcp_routes, o),
            Object::UdpRoute(o) => put(&mut self.udp_routes, o),
            Object::ReferenceGrant(o) => put(&mut self.reference_grants, o),
            Object::Service(o) => put(&mut self.services, o),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, o),
            Object::Pod(o) => put(&mut self.pods, o),
            Object::Namespace(o) => put(&mut self.namespaces, o),
            Object::Secret(o) => put(&mut self.secrets, o),
            Object::ConfigMap(o) => put(&mut self.config_maps, o),
        }
    }

    /// Whether the store holds exactly `object` already (so inserting it changes nothing).
    pub fn holds(&self, object: &Object) -> bool {
        fn same<K: PartialEq>(map: &Objects<K>, key: &ObjectKey, object: &K) -> bool {
            map.get(key).is_some_and(|held| **held == *object)
        }
        let key = object.key();
        match object {
            Object::GatewayClass(o) => same(&self.gateway_classes, &key, o),
            Object::Gateway(o) => same(&self.gateways, &key, o),
            Object::HttpRoute(o) => same(&self.http_routes, &key, o),
            Object::GrpcRoute(o) => same(&self.grpc_routes, &key, o),
            Object::TlsRoute(o) => same(&self.tls_routes, &key, o),
            Object::TcpRoute(o) => same(&self.tcp_routes, &key, o),
            Object::UdpRoute(o) => same(&self.udp_routes, &key, o),
            Object::ReferenceGrant(o) => same(&self.reference_grants, &key, o),
            Object::Service(o) => same(&self.services, &key, o),
            Object::EndpointSlice(o) => same(&self.endpoint_slices, &key, o),
            Object::Pod(o) => same(&self.pods, &key, o),
            Object::Namespace(o) => same(&self.namespaces, &key, o),
            Object::Secret(o) => same(&self.secrets, &key, o),
            Object::ConfigMap(o) => same(&self.config_maps, &key, o),
        }
    }

    pub fn remove(&mut self, kind: Kind, key: &ObjectKey) {
        self.changes.objects.insert((kind, key.clone()));
        match kind {
            Kind::GatewayClass => drop(self.gateway_classes.remove(key)),
            Kind::Gateway => drop(self.gateways.remove(key)),
            Kind::HttpRoute => drop(self.http_routes.remove(key)),
            Kind::GrpcRoute => drop(self.grpc_routes.remove(key)),
            Kind::TlsRoute => drop(self.tls_routes.remove(key)),
            Kind::TcpRoute => drop(self.tcp_routes.remove(key)),
            Kind::UdpRoute => drop(self.udp_routes.remove(key)),
            Kind::ReferenceGrant => drop(self.reference_grants.remove(key)),
            Kind::Service => drop(self.services.remove(key)),
            Kind::EndpointSlice => drop(self.endpoint_slices.remove(key)),
            Kind::Pod => drop(self.pods.remove(key)),
            Kind::Namespace => drop(self.namespaces.remove(key)),
            Kind::Secret => drop(self.secrets.remove(key)),
            Kind::ConfigMap => drop(self.config_maps.remove(key)),
        }
    }

    /// Replaces every object of `kind` (after a watch relist).
    pub fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) {
        self.changes.relisted.insert(kind);
        match kind {
            Kind::GatewayClass => self.gateway_classes.clear(),
            Kind::Gateway => self.gateways.clear(),
            Kind::HttpRoute => self.http_routes.clear(),
            Kind::GrpcRoute => self.grpc_routes.clear(),
            Kind::TlsRoute => self.tls_routes.clear(),
            Kind::TcpRoute => self.tcp_routes.clear(),
            Kind::UdpRoute => self.udp_routes.clear(),
            Kind::ReferenceGrant => self.reference_grants.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.endpoint_slices.clear(),
            Kind::Pod => self.pods.clear(),
            Kind::Namespace => self.namespaces.clear(),
            Kind::Secret => self.secrets.clear(),
            Kind::ConfigMap => self.config_maps.clear(),
        }
        for object in objects.into_iter().filter(|o| o.kind() == kind) {
            self.insert(object);
        }
    }

    /// Everything that changed since the last call, for an incremental resolve.
    pub fn take_changes(&mut self) -> ChangeLog {
        std::mem::take(&mut self.changes)
    }

    /// Labels of a namespace; a namespace the store has not seen has none.
    pub fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(&ObjectKey::new("", namespace)).and_then(|ns| ns.metadata.labels.as_ref())
    }

    pub fn object_count(&self) -> usize {
        self.gateway_classes.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.tls_routes.len()
            + self.tcp_routes.len()
            + self.udp_routes.len()
            + self.reference_grants.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.pods.len()
            + self.namespaces.len()
            + self.secrets.len()
            + self.config_maps.len()
    }
}
