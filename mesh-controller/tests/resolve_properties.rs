//! Properties of `resolve` over arbitrary combinations of Gateways, routes, Services and grants:
//! it never panics, and the same store always gives byte-identical statuses and config.

use mesh_controller::resolve::{Settings, resolve};
use mesh_controller::store::{Object, Store};
use proptest::prelude::*;
use serde_json::{Value, json};

const NAMESPACES: &[&str] = &["a", "b", "infra"];
const HOSTNAMES: &[&str] = &["", "x.example.com", "*.example.com", "*.x.example.com", "other.org"];
const PROTOCOLS: &[&str] = &["HTTP", "HTTPS", "TLS", "TCP", "UDP", "SCTP"];
const PATHS: &[(&str, &str)] = &[
    ("PathPrefix", "/"),
    ("PathPrefix", "/api"),
    ("Exact", "/api"),
    ("RegularExpression", "/v[0-9]+"),
    ("RegularExpression", "("),
];

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

fn listener() -> impl Strategy<Value = Value> {
    (0..4usize, pick(PROTOCOLS), prop::sample::select(vec![80, 443, 8080]), pick(HOSTNAMES), 0..3usize)
        .prop_map(|(name, protocol, port, hostname, from)| {
            let from = ["Same", "All", "Selector"][from];
            let mut l = json!({"name": format!("l{name}"), "protocol": protocol, "port": port,
                "allowedRoutes": {"namespaces": {"from": from,
                    "selector": {"matchLabels": {"team": "a"}}}}});
            if !hostname.is_empty() {
                l["hostname"] = json!(hostname);
            }
            if protocol == "HTTPS" {
                l["tls"] = json!({"certificateRefs": [{"name": "cert"}]});
            }
            l
        })
}

fn gateway() -> impl Strategy<Value = Object> {
    (0..2usize, pick(NAMESPACES), prop::collection::vec(listener(), 0..4), any::<bool>()).prop_map(
        |(n, ns, listeners, ours)| {
            let class = if ours { "weft" } else { "other" };
            Object::Gateway(
                serde_json::from_value(
                    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": format!("gw{n}"), "namespace": ns},
                "spec": {"gatewayClassName": class, "listeners": listeners}}),
                )
                .expect("valid gateway"),
            )
        },
    )
}

fn parent_ref() -> impl Strategy<Value = Value> {
    (
        0..2usize,
        pick(NAMESPACES),
        prop::option::of(0..4usize),
        prop::option::of(prop::sample::select(vec![80, 443, 9])),
        any::<bool>(),
    )
        .prop_map(|(n, ns, section, port, service)| {
            let mut p = if service {
                json!({"group": "", "kind": "Service", "name": format!("svc{n}"), "namespace": ns})
            } else {
                json!({"name": format!("gw{n}"), "namespace": ns})
            };
            if let Some(s) = section {
                p["sectionName"] = json!(format!("l{s}"));
            }
            if let Some(port) = port {
                p["port"] = json!(port);
            }
            p
        })
}

fn rule() -> impl Strategy<Value = Value> {
    (pick(PATHS), prop::collection::vec((0..2usize, pick(NAMESPACES), 0..3i32, prop::sample::select(vec![80, 81])), 0..3), any::<bool>())
        .prop_map(|((kind, value), backends, redirect)| {
            let refs: Vec<Value> = backends
                .into_iter()
                .map(|(n, ns, weight, port)| json!({"name": format!("svc{n}"), "namespace": ns, "port": port, "weight": weight}))
                .collect();
            let mut r = json!({"matches": [{"path": {"type": kind, "value": value}}], "backendRefs": refs});
            if redirect {
                r["filters"] = json!([{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/x"}}}]);
            }
            r
        })
}

fn route() -> impl Strategy<Value = Object> {
    (0..3usize, pick(NAMESPACES), prop::collection::vec(parent_ref(), 0..3), prop::collection::vec(pick(HOSTNAMES), 0..2), prop::collection::vec(rule(), 0..3))
        .prop_map(|(n, ns, parents, hostnames, rules)| {
            let hostnames: Vec<&str> = hostnames.into_iter().filter(|h| !h.is_empty()).collect();
            Object::HttpRoute(
                serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": format!("r{n}"), "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z"},
                    "spec": {"parentRefs": parents, "hostnames": hostnames, "rules": rules}}))
                .expect("valid route"),
            )
        })
}

fn fixed_objects() -> Vec<Object> {
    let mut out = vec![Object::GatewayClass(
        serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "weft"}, "spec": {"controllerName": "weft.dev/gateway-controller"}}))
        .expect("class"),
    )];
    for ns in NAMESPACES {
        out.push(Object::Namespace(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"team": ns}}}))
            .expect("namespace"),
        ));
        for n in 0..2 {
            out.push(Object::Service(
                serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc{n}"), "namespace": ns},
                    "spec": {"clusterIP": format!("10.96.0.{n}"), "ports": [{"name": "http", "port": 80}]}}))
                .expect("service"),
            ));
        }
    }
    out.push(Object::ReferenceGrant(
        serde_json::from_value(
            json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": "b"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "a"}],
                     "to": [{"group": "", "kind": "Service"}]}}),
        )
        .expect("grant"),
    ));
    out
}

fn identity(o: &Object) -> (String, mesh_api::model::ObjectKey) {
    use mesh_controller::store::key_of;
    match o {
        Object::Gateway(g) => ("Gateway".into(), key_of(g)),
        Object::HttpRoute(r) => ("HTTPRoute".into(), key_of(r)),
        Object::Service(s) => ("Service".into(), key_of(s)),
        Object::Namespace(n) => ("Namespace".into(), key_of(n)),
        Object::GatewayClass(c) => ("GatewayClass".into(), key_of(c)),
        Object::ReferenceGrant(g) => ("ReferenceGrant".into(), key_of(g)),
        other => (format!("{other:?}"), mesh_api::model::ObjectKey::new("", "")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn resolve_never_panics_and_is_deterministic(
        gateways in prop::collection::vec(gateway(), 0..4),
        routes in prop::collection::vec(route(), 0..6),
    ) {
        // One object per kind and name, as in an API server.
        let mut unique = std::collections::BTreeMap::new();
        for o in fixed_objects().into_iter().chain(gateways).chain(routes) {
            unique.insert(identity(&o), o);
        }
        let mut forward = Store::default();
        for o in unique.values().cloned() {
            forward.insert(o);
        }
        // The same objects arriving in the opposite order.
        let mut backward = Store::default();
        for o in unique.into_values().rev() {
            backward.insert(o);
        }
        let settings = Settings::default();
        let a = resolve(&forward, &settings);
        let b = resolve(&backward, &settings);
        prop_assert_eq!(a.statuses.to_yaml().expect("yaml"), b.statuses.to_yaml().expect("yaml"));
        prop_assert_eq!(serde_json::to_string(&a.config).expect("json"), serde_json::to_string(&b.config).expect("json"));

        // Status and config agree on which listeners the proxies serve.
        for (key, gw) in &a.statuses.gateways {
            let programmed: Vec<&str> = gw
                .listeners
                .iter()
                .filter(|l| l.conditions.iter().any(|c| c.type_ == "Programmed" && c.status == "True"))
                .map(|l| l.name.as_str())
                .collect();
            let served: Vec<&str> =
                a.config.listeners.values().filter(|l| l.key.gateway == *key).map(|l| l.key.section.as_str()).collect();
            let mut sorted = programmed.clone();
            sorted.sort();
            prop_assert_eq!(sorted, served);
        }
    }
}
