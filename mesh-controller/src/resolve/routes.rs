//! The five route kinds brought to one shape, so attachment, backend resolution and status are
//! written once. The generated API types repeat identical structures under different names
//! (a parentRef of each route kind, the filters of a rule and of a backendRef); [`reshape`]
//! moves a value between two such identical shapes through their shared serialized form.

use gateway_api::experimental::grpcroutes::GrpcRouteRules;
use gateway_api::experimental::httproutes::{HttpRouteRules, HttpRouteRulesFilters};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::model::{ObjectKey, RouteKey, RouteKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::status::ParentReference;
use crate::store::Store;

/// A `backendRef` (or mirror/L4 backendRef) of any route kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendReference {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<i32>,
    pub weight: Option<i32>,
}

/// One route of any kind.
pub struct RouteSpec<'a> {
    pub key: RouteKey,
    pub generation: Option<i64>,
    pub created: i64,
    pub parent_refs: Vec<ParentReference>,
    pub hostnames: Vec<String>,
    pub rules: Rules<'a>,
}

pub enum Rules<'a> {
    Http(&'a [HttpRouteRules]),
    Grpc(&'a [GrpcRouteRules]),
    /// TLS, TCP and UDP rules: only backends.
    L4(Vec<L4Rule>),
}

pub struct L4Rule {
    pub name: Option<String>,
    pub backend_refs: Vec<BackendReference>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct L4RuleShape {
    name: Option<String>,
    #[serde(default)]
    backend_refs: Vec<BackendReference>,
}

/// Moves a value between two generated types of identical shape. `None` when the shapes
/// differ after all, which the callers treat as an unsupported value.
pub fn reshape<A: Serialize, B: DeserializeOwned>(value: &A) -> Option<B> {
    serde_json::to_value(value).ok().and_then(|v| serde_json::from_value(v).ok())
}

pub fn reshape_all<A: Serialize, B: DeserializeOwned>(values: Option<&Vec<A>>) -> Vec<B> {
    values.into_iter().flatten().filter_map(reshape).collect()
}

/// GRPCRoute filters are a subset of HTTPRoute's with the same shape.
pub fn grpc_filters_as_http<A: Serialize>(filters: Option<&Vec<A>>) -> Vec<HttpRouteRulesFilters> {
    reshape_all(filters)
}

fn created(meta: &ObjectMeta) -> i64 {
    meta.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second())
}

fn spec<'a>(
    kind: RouteKind,
    key: &ObjectKey,
    meta: &ObjectMeta,
    parents: Vec<ParentReference>,
    hostnames: Vec<String>,
    rules: Rules<'a>,
) -> RouteSpec<'a> {
    RouteSpec {
        key: RouteKey { kind, object: key.clone() },
        generation: meta.generation,
        created: created(meta),
        parent_refs: parents,
        hostnames,
        rules,
    }
}

fn l4_rules<A: Serialize>(rules: &[A]) -> Rules<'static> {
    Rules::L4(
        rules
            .iter()
            .filter_map(|r| reshape::<_, L4RuleShape>(r))
            .map(|r| L4Rule { name: r.name, backend_refs: r.backend_refs })
            .collect(),
    )
}

/// Every route in the store, by kind then `namespace/name`.
pub fn all_routes(store: &Store) -> Vec<RouteSpec<'_>> {
    let mut out = Vec::with_capacity(
        store.http_routes.len()
            + store.grpc_routes.len()
            + store.tls_routes.len()
            + store.tcp_routes.len()
            + store.udp_routes.len(),
    );
    for (key, r) in &store.http_routes {
        let s = &r.spec;
        out.push(spec(
            RouteKind::Http,
            key,
            &r.metadata,
            reshape_all(s.parent_refs.as_ref()),
            s.hostnames.clone().unwrap_or_default(),
            Rules::Http(s.rules.as_deref().unwrap_or_default()),
        ));
    }
    for (key, r) in &store.grpc_routes {
        let s = &r.spec;
        out.push(spec(
            RouteKind::Grpc,
            key,
            &r.metadata,
            reshape_all(s.parent_refs.as_ref()),
            s.hostnames.clone().unwrap_or_default(),
            Rules::Grpc(s.rules.as_deref().unwrap_or_default()),
        ));
    }
    for (key, r) in &store.tls_routes {
        let s = &r.spec;
        out.push(spec(
            RouteKind::Tls,
            key,
            &r.metadata,
            reshape_all(s.parent_refs.as_ref()),
            s.hostnames.clone(),
            l4_rules(&s.rules),
        ));
    }
    for (key, r) in &store.tcp_routes {
        let s = &r.spec;
        out.push(spec(
            RouteKind::Tcp,
            key,
            &r.metadata,
            reshape_all(s.parent_refs.as_ref()),
            vec![],
            l4_rules(&s.rules),
        ));
    }
    for (key, r) in &store.udp_routes {
        let s = &r.spec;
        out.push(spec(
            RouteKind::Udp,
            key,
            &r.metadata,
            reshape_all(s.parent_refs.as_ref()),
            vec![],
            l4_rules(&s.rules),
        ));
    }
    out
}
