//! The typed snapshot of every object the controller reads, filled by the Kubernetes
//! reflectors or by the manifest folder, and read by `resolve`.

use std::collections::BTreeMap;
use std::sync::Arc;

use gateway_api::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant, tcproutes::TcpRoute, tlsroutes::TlsRoute, udproutes::UdpRoute,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use mesh_api::model::ObjectKey;

/// One object of any kind the controller reads. Objects pass through this type once on their
/// way into the store, so the size of the largest variant costs nothing worth boxing for.
#[derive(Clone, Debug)]
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
}

/// Objects of one kind by `namespace/name` (cluster-scoped kinds use an empty namespace).
pub type Objects<K> = BTreeMap<ObjectKey, Arc<K>>;

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
}

/// `namespace/name` of any object; cluster-scoped objects get an empty namespace.
pub fn key_of<K: Resource>(object: &K) -> ObjectKey {
    let meta = object.meta();
    ObjectKey::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn put<K: Resource>(map: &mut Objects<K>, object: K) {
    map.insert(key_of(&object), Arc::new(object));
}

impl Store {
    pub fn insert(&mut self, object: Object) {
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
        }
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
    }
}
