//! The resolved configuration: what the controller computes from the user's Gateway API objects
//! and what a proxy needs to carry traffic. Nothing here refers to Kubernetes API types; every
//! reference between resources is by key, so one user change is one small delta.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The whole resolved state, keyed per kind. `BTreeMap` keeps iteration (and so every output
/// built from it) deterministic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub services: BTreeMap<String, Service>,
    /// Shared (`Arc`): the proxy's per-connection indexes point at the same workloads and
    /// backends instead of copying them (100k endpoints are tens of MB) at every version.
    #[serde(with = "shared_map")]
    pub workloads: BTreeMap<String, Arc<Workload>>,
    #[serde(with = "shared_map")]
    pub backends: BTreeMap<String, Arc<Backend>>,
    pub listeners: BTreeMap<String, Listener>,
    pub routes: BTreeMap<String, Route>,
    pub certificates: BTreeMap<String, Certificate>,
}

/// (De)serializes a map of shared values as the plain map it stands for, without serde's `rc`
/// feature (turning that on would rebuild every crate that uses serde, kube's among them).
mod shared_map {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        map: &BTreeMap<String, Arc<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(map.iter().map(|(key, value)| (key, &**value)))
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Arc<T>>, D::Error> {
        let map = BTreeMap::<String, T>::deserialize(deserializer)?;
        Ok(map.into_iter().map(|(key, value)| (key, Arc::new(value))).collect())
    }
}

/// Deserializes a list into a `Vec` of exactly its length. A `Vec` built while parsing grows by
/// doubling (JSON does not say a list's length up front), and a proxy keeps what it decodes for
/// as long as the config lasts: 100k endpoints in lists of ten kept room for 160k, ~6 MB.
/// Only the in-memory form changes; the wire form is the same list.
fn exact<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    let mut list = Vec::<T>::deserialize(deserializer)?;
    list.shrink_to_fit();
    Ok(list)
}

// ---------------------------------------------------------------------------------------------
// Services and workloads (the mesh)

/// A Kubernetes Service's frontend: the names and addresses clients dial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub key: ObjectKey,
    /// `name.namespace.svc.<cluster domain>`.
    pub hostname: String,
    #[serde(deserialize_with = "exact")]
    pub vips: Vec<IpAddr>,
    #[serde(deserialize_with = "exact")]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub transport: Transport,
    pub app_protocol: AppProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Tcp,
    Udp,
    Sctp,
}

/// What speaks on a port, from the port's `appProtocol` or, failing that, its name prefix
/// (`http-`, `grpc-`, …). `Detect` asks the proxy to sniff the first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (`kubernetes.io/h2c`, gRPC).
    H2c,
    WebSocket,
    Tls,
    Opaque,
    Detect,
}

/// A pod, as far as the mesh cares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub key: ObjectKey,
    #[serde(deserialize_with = "exact")]
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub service_account: String,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
    pub identity: String,
    /// In a namespace labelled `weft.dev/mesh=enabled` and not opted out by its own label.
    pub meshed: bool,
    pub ready: bool,
}

/// One Service port resolved to the endpoints that serve it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub key: BackendKey,
    pub app_protocol: AppProtocol,
    #[serde(deserialize_with = "exact")]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendKey {
    pub service: ObjectKey,
    pub port: u16,
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    /// The port on the endpoint (the Service's targetPort, resolved).
    pub port: u16,
    pub ready: bool,
    /// The pod behind the endpoint, when there is one; the proxy uses it to find the
    /// destination node and whether to tunnel.
    pub workload: Option<ObjectKey>,
    pub node: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Gateways (north-south)

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListenerKey {
    pub gateway: ObjectKey,
    pub section: String,
}

impl fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.gateway, self.section)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    pub key: ListenerKey,
    /// Where to bind. Empty: the proxy's default (127.0.0.1 standalone, the node in a cluster).
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub hostname: Option<String>,
    pub tls: Option<ListenerTls>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerProtocol {
    Http,
    Https,
    Tls,
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerTls {
    pub mode: TlsMode,
    /// Keys of `Certificate` resources, in the listener's order (the first is the default).
    pub certificates: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsMode {
    Terminate,
    Passthrough,
}

/// A serving certificate from a `kubernetes.io/tls` Secret.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub key: ObjectKey,
    pub chain_pem: String,
    pub key_pem: String,
    /// The DNS names (possibly `*.` wildcards) the leaf certificate is valid for, from its
    /// subject alternative names: how a listener with several certificates picks one by SNI.
    #[serde(default)]
    pub dns_names: Vec<String>,
}

impl fmt::Debug for Certificate {
    // Never print private keys, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("key", &self.key)
            .field("chain_pem_bytes", &self.chain_pem.len())
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RouteKind {
    #[serde(rename = "HTTPRoute")]
    Http,
    #[serde(rename = "GRPCRoute")]
    Grpc,
    #[serde(rename = "TLSRoute")]
    Tls,
    #[serde(rename = "TCPRoute")]
    Tcp,
    #[serde(rename = "UDPRoute")]
    Udp,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteKey {
    pub kind: RouteKind,
    pub object: ObjectKey,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.object)
    }
}

/// A route as accepted by at least one parent. Only the parents that accepted it are listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub key: RouteKey,
    /// `metadata.creationTimestamp` in seconds since the epoch: the spec's tie-breaker between
    /// routes with equally specific matches (older wins, then `namespace/name`).
    pub created: i64,
    #[serde(deserialize_with = "exact")]
    pub parents: Vec<RouteParent>,
    /// Valid rules only, in the route's order; invalid rules are dropped (and reported in
    /// status), as the spec allows.
    #[serde(deserialize_with = "exact")]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteParent {
    pub target: ParentTarget,
    /// The hostnames this route serves on this parent: the intersection of the route's and
    /// the listener's. Empty means any host.
    #[serde(deserialize_with = "exact")]
    pub hostnames: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ParentTarget {
    Listener(ListenerKey),
    /// A GAMMA route: it applies to traffic sent to this Service's frontend.
    Service {
        service: ObjectKey,
        /// Only this port of the Service, or every port.
        port: Option<u16>,
        consumers: Consumers,
    },
}

/// Whose traffic a GAMMA route shapes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Consumers {
    /// A producer route (in the Service's own namespace): every client, except those whose
    /// namespace has consumer routes of its own for the Service.
    All,
    /// A consumer route: only clients in this namespace.
    Namespace(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: Option<String>,
    /// Any one must match. Never empty for HTTP and gRPC: a rule without matches is given the
    /// spec's default (path prefix `/`, or any gRPC method).
    #[serde(deserialize_with = "exact")]
    pub matches: Vec<RouteMatch>,
    #[serde(deserialize_with = "exact")]
    pub filters: Vec<Filter>,
    #[serde(deserialize_with = "exact")]
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Timeouts,
    pub retry: Option<Retry>,
    pub session_persistence: Option<SessionPersistence>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RouteMatch {
    Http(HttpMatch),
    Grpc(GrpcMatch),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpMatch {
    pub path: PathMatch,
    #[serde(deserialize_with = "exact")]
    pub headers: Vec<HeaderMatch>,
    #[serde(deserialize_with = "exact")]
    pub query_params: Vec<QueryParamMatch>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    Exact(String),
    /// Matches whole path segments: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    RegularExpression(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StringMatch {
    Exact(String),
    RegularExpression(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    /// Lower-cased: header names compare case-insensitively.
    pub name: String,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryParamMatch {
    /// Query parameter names compare exactly (case-sensitive), as the spec says.
    pub name: String,
    pub value: StringMatch,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrpcMatch {
    pub method: Option<GrpcMethodMatch>,
    #[serde(deserialize_with = "exact")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpcMethodMatch {
    pub service: Option<String>,
    pub method: Option<String>,
    /// Service and method are regular expressions rather than exact names.
    pub regex: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(Mirror),
    Cors(Cors),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status_code: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path that the rule's `PathPrefix` match matched.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub backend: BackendRef,
    /// Share of requests mirrored, as numerator/denominator (`percent` p is p/100).
    pub fraction: Option<(u32, u32)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_seconds: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedBackend {
    pub weight: u32,
    pub backend: BackendRef,
    #[serde(deserialize_with = "exact")]
    pub filters: Vec<Filter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendRef {
    /// Key of a `Backend` resource.
    Service(BackendKey),
    /// A backendRef that did not resolve (missing Service, not permitted by a ReferenceGrant,
    /// unsupported kind). Its share of the traffic gets HTTP 500, as the spec requires.
    Invalid { reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
/// `None`: no timeout (a route's "0s" arrives as `None` too).
pub struct Timeouts {
    pub request_ms: Option<u64>,
    pub backend_request_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub codes: Vec<u16>,
    pub attempts: u32,
    pub backoff_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPersistence {
    pub name: Option<String>,
    pub kind: SessionPersistenceKind,
    pub absolute_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub permanent_cookie: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionPersistenceKind {
    Cookie,
    Header,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded config is kept for as long as it is served: its lists hold exactly their
    /// items, and the wire form is the same JSON a plain list gives.
    #[test]
    fn decoded_lists_hold_no_spare_room_and_encode_as_before() {
        let endpoint = |i: u8| Endpoint {
            address: IpAddr::from([10, 0, 0, i]),
            port: 8080,
            ready: true,
            workload: None,
            node: Some(format!("node-{}", i % 3)),
        };
        let backend = Backend {
            key: BackendKey { service: ObjectKey::new("shop", "server"), port: 80 },
            app_protocol: AppProtocol::Http1,
            endpoints: (1..=10).map(endpoint).collect(),
        };
        let json = serde_json::to_string(&backend).expect("encodes");
        let decoded: Backend = serde_json::from_str(&json).expect("decodes");
        assert_eq!(decoded, backend);
        assert_eq!((decoded.endpoints.len(), decoded.endpoints.capacity()), (10, 10));
        assert_eq!(serde_json::to_string(&decoded).expect("encodes"), json);
        // The same bytes as the list alone would give: nothing changed on the wire.
        let list = serde_json::to_string(&backend.endpoints).expect("encodes");
        assert!(json.contains(&format!("\"endpoints\":{list}")), "{json}");

        let rule = Rule {
            matches: vec![RouteMatch::Http(HttpMatch {
                headers: vec![HeaderMatch { name: "x-canary".into(), value: StringMatch::Exact("1".into()) }],
                ..HttpMatch::default()
            })],
            ..Rule::default()
        };
        let route = Route {
            key: RouteKey { kind: RouteKind::Http, object: ObjectKey::new("shop", "canary") },
            created: 0,
            parents: vec![],
            rules: vec![rule.clone(), rule],
        };
        let decoded: Route =
            serde_json::from_str(&serde_json::to_string(&route).expect("encodes")).expect("decodes");
        assert_eq!(decoded, route);
        assert_eq!(decoded.rules.capacity(), 2);
        let RouteMatch::Http(m) = &decoded.rules[0].matches[0] else { panic!("an HTTP match") };
        assert_eq!((decoded.rules[0].matches.capacity(), m.headers.capacity()), (1, 1));
    }
}
