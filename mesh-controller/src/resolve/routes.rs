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

/// One route of the store as a [`RouteSpec`], if it exists.
pub fn spec_for<'a>(store: &'a Store, key: &RouteKey) -> Option<RouteSpec<'a>> {
    let k = &key.object;
    Some(match key.kind {
        RouteKind::Http => {
            let r = store.http_routes.get(k)?;
            let s = &r.spec;
            spec(
                RouteKind::Http,
                k,
                &r.metadata,
                reshape_all(s.parent_refs.as_ref()),
                s.hostnames.clone().unwrap_or_default(),
                Rules::Http(s.rules.as_deref().unwrap_or_default()),
            )
        }
        RouteKind::Grpc => {
            let r = store.grpc_routes.get(k)?;
            let s = &r.spec;
            spec(
                RouteKind::Grpc,
                k,
                &r.metadata,
                reshape_all(s.parent_refs.as_ref()),
                s.hostnames.clone().unwrap_or_default(),
                Rules::Grpc(s.rules.as_deref().unwrap_or_default()),
            )
        }
        RouteKind::Tls => {
            let r = store.tls_routes.get(k)?;
            let s = &r.spec;
            spec(
                RouteKind::Tls,
                k,
                &r.metadata,
                reshape_all(s.parent_refs.as_ref()),
                s.hostnames.clone(),
                l4_rules(&s.rules),
            )
        }
        RouteKind::Tcp => {
            let r = store.tcp_routes.get(k)?;
            let s = &r.spec;
            spec(
                RouteKind::Tcp,
                k,
                &r.metadata,
                reshape_all(s.parent_refs.as_ref()),
                vec![],
                l4_rules(&s.rules),
            )
        }
        RouteKind::Udp => {
            let r = store.udp_routes.get(k)?;
            let s = &r.spec;
            spec(
                RouteKind::Udp,
                k,
                &r.metadata,
                reshape_all(s.parent_refs.as_ref()),
                vec![],
                l4_rules(&s.rules),
            )
        }
    })
}

/// Keys of every route in the store, by kind then `namespace/name`.
pub fn all_keys(store: &Store) -> Vec<RouteKey> {
    let keys = |kind: RouteKind, objects: Vec<&ObjectKey>| {
        objects.into_iter().map(move |o| RouteKey { kind, object: o.clone() }).collect::<Vec<_>>()
    };
    let mut out = keys(RouteKind::Http, store.http_routes.keys().collect());
    out.extend(keys(RouteKind::Grpc, store.grpc_routes.keys().collect()));
    out.extend(keys(RouteKind::Tls, store.tls_routes.keys().collect()));
    out.extend(keys(RouteKind::Tcp, store.tcp_routes.keys().collect()));
    out.extend(keys(RouteKind::Udp, store.udp_routes.keys().collect()));
    out
}

/// Every route in the store, by kind then `namespace/name`.
pub fn all_routes(store: &Store) -> Vec<RouteSpec<'_>> {
    all_keys(store).iter().filter_map(|key| spec_for(store, key)).collect()
}

/// What a route's resolution reads besides the route itself: the Services it names (as
/// backends, mirrors or GAMMA parents, whether or not they exist) and the Gateways it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub services: Vec<ObjectKey>,
    pub gateways: Vec<ObjectKey>,
}

pub fn references(route: &RouteSpec<'_>) -> References {
    let ns = &route.key.object.namespace;
    let mut out = References::default();
    for p in &route.parent_refs {
        let key = ObjectKey::new(p.namespace.clone().unwrap_or_else(|| ns.clone()), &p.name);
        match (
            p.group.as_deref().unwrap_or(super::backends::GATEWAY_GROUP),
            p.kind.as_deref().unwrap_or("Gateway"),
        ) {
            ("", "Service") => out.services.push(key),
            (super::backends::GATEWAY_GROUP, "Gateway") => out.gateways.push(key),
            _ => {}
        }
    }
    let mut backend = |r: BackendReference| {
        out.services.push(ObjectKey::new(r.namespace.unwrap_or_else(|| ns.clone()), r.name));
    };
    let from_filters = |filters: &[HttpRouteRulesFilters], backend: &mut dyn FnMut(BackendReference)| {
        for f in filters {
            if let Some(m) = &f.request_mirror
                && let Some(r) = reshape(&m.backend_ref)
            {
                backend(r);
            }
        }
    };
    match &route.rules {
        Rules::Http(rules) => {
            for rule in rules.iter() {
                from_filters(rule.filters.as_deref().unwrap_or_default(), &mut backend);
                for r in rule.backend_refs.iter().flatten() {
                    if let Some(r) = reshape(r) {
                        backend(r);
                    }
                    from_filters(&reshape_all::<_, HttpRouteRulesFilters>(r.filters.as_ref()), &mut backend);
                }
            }
        }
        Rules::Grpc(rules) => {
            for rule in rules.iter() {
                from_filters(&grpc_filters_as_http(rule.filters.as_ref()), &mut backend);
                for r in rule.backend_refs.iter().flatten() {
                    if let Some(r) = reshape(r) {
                        backend(r);
                    }
                    from_filters(&grpc_filters_as_http(r.filters.as_ref()), &mut backend);
                }
            }
        }
        Rules::L4(rules) => {
            for rule in rules {
                for r in &rule.backend_refs {
                    backend(r.clone());
                }
            }
        }
    }
    out.services.sort();
    out.services.dedup();
    out.gateways.sort();
    out.gateways.dedup();
    out
}
