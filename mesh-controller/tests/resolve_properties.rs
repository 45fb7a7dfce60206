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
            unique.insert((o.kind(), o.key()), o);
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

/// One edit a user or a controller could make.
#[derive(Clone, Debug)]
enum Edit {
    Upsert(Box<Object>),
    Delete(mesh_controller::store::Kind, mesh_api::model::ObjectKey),
}

fn service() -> impl Strategy<Value = Object> {
    (0..3usize, pick(NAMESPACES), prop::sample::select(vec![80, 81])).prop_map(|(n, ns, port)| {
        Object::Service(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc{n}"), "namespace": ns},
                "spec": {"clusterIP": format!("10.96.1.{n}"), "ports": [{"name": "http", "port": port}]}}))
            .expect("service"),
        )
    })
}

fn slice() -> impl Strategy<Value = Object> {
    (0..3usize, 0..3usize, pick(NAMESPACES), 0..3u8).prop_map(|(n, owner, ns, endpoints)| {
        let endpoints: Vec<Value> = (0..endpoints)
            .map(|e| json!({"addresses": [format!("10.1.{n}.{e}")], "nodeName": "node-a"}))
            .collect();
        Object::EndpointSlice(
            serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("slice{n}"), "namespace": ns,
                             "labels": {"kubernetes.io/service-name": format!("svc{owner}")}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}))
            .expect("slice"),
        )
    })
}

fn pod() -> impl Strategy<Value = Object> {
    (0..3usize, pick(NAMESPACES), any::<bool>()).prop_map(|(n, ns, opt_out)| {
        let labels = if opt_out { json!({"weft.dev/mesh": "disabled"}) } else { json!({}) };
        Object::Pod(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("pod{n}"), "namespace": ns, "labels": labels},
                "spec": {"nodeName": "node-a", "containers": [{"name": "c"}]},
                "status": {"podIP": format!("10.1.9.{n}")}}))
            .expect("pod"),
        )
    })
}

fn namespace() -> impl Strategy<Value = Object> {
    (pick(NAMESPACES), pick(&["a", "b", "none"]), any::<bool>()).prop_map(|(ns, team, meshed)| {
        let mut labels = json!({"team": team});
        if meshed {
            labels["weft.dev/mesh"] = json!("enabled");
        }
        Object::Namespace(
            serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
            )
            .expect("namespace"),
        )
    })
}

fn grant() -> impl Strategy<Value = Object> {
    (pick(NAMESPACES), pick(NAMESPACES)).prop_map(|(from, to)| {
        Object::ReferenceGrant(
            serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                "metadata": {"name": "g", "namespace": to},
                "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from}],
                         "to": [{"group": "", "kind": "Service"}]}}))
            .expect("grant"),
        )
    })
}

fn edit() -> impl Strategy<Value = Edit> {
    use mesh_controller::store::Kind;
    let delete = (
        prop::sample::select(vec![
            Kind::Gateway,
            Kind::HttpRoute,
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Pod,
            Kind::ReferenceGrant,
        ]),
        pick(NAMESPACES),
        0..3usize,
    )
        .prop_map(|(kind, ns, n)| {
            let name = match kind {
                Kind::Gateway => format!("gw{}", n % 2),
                Kind::HttpRoute => format!("r{n}"),
                Kind::Service => format!("svc{n}"),
                Kind::EndpointSlice => format!("slice{n}"),
                Kind::Pod => format!("pod{n}"),
                _ => "g".to_string(),
            };
            Edit::Delete(kind, mesh_api::model::ObjectKey::new(ns, name))
        });
    prop_oneof![
        gateway().prop_map(|o| Edit::Upsert(Box::new(o))),
        route().prop_map(|o| Edit::Upsert(Box::new(o))),
        route().prop_map(|o| Edit::Upsert(Box::new(o))),
        service().prop_map(|o| Edit::Upsert(Box::new(o))),
        slice().prop_map(|o| Edit::Upsert(Box::new(o))),
        pod().prop_map(|o| Edit::Upsert(Box::new(o))),
        namespace().prop_map(|o| Edit::Upsert(Box::new(o))),
        grant().prop_map(|o| Edit::Upsert(Box::new(o))),
        delete,
    ]
}

fn changed_ids(
    before: &mesh_api::model::Config,
    after: &mesh_api::model::Config,
) -> std::collections::BTreeSet<(mesh_api::proto::ResourceKind, String)> {
    let delta = before.diff(after, 0);
    delta
        .upserts
        .iter()
        .filter_map(|r| r.id.clone())
        .chain(delta.removals.iter().cloned())
        .map(|id| (id.kind(), id.key))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn incremental_resolve_equals_full_resolve_after_every_edit(
        initial in prop::collection::vec(edit(), 0..6),
        edits in prop::collection::vec(edit(), 1..10),
    ) {
        let settings = Settings::default();
        let mut store = Store::default();
        for o in fixed_objects() {
            store.insert(o);
        }
        let apply = |store: &mut Store, e: Edit| match e {
            Edit::Upsert(o) => store.insert(*o),
            Edit::Delete(kind, key) => store.remove(kind, &key),
        };
        for e in initial {
            apply(&mut store, e);
        }
        let mut resolver = mesh_controller::resolve::incremental::Resolver::new(settings.clone());
        let first = store.take_changes();
        resolver.resolve(&store, &first);
        prop_assert_eq!(resolver.config(), &resolve(&store, &settings).config);
        for e in edits {
            let before = resolver.config().clone();
            apply(&mut store, e.clone());
            let changes = store.take_changes();
            let changed = resolver.resolve(&store, &changes);
            let full = resolve(&store, &settings);
            prop_assert_eq!(resolver.config(), &full.config, "config after {:?}", e);
            prop_assert_eq!(resolver.statuses(), &full.statuses, "statuses after {:?}", e);
            let reported: std::collections::BTreeSet<_> = changed.keys().cloned().collect();
            prop_assert_eq!(reported, changed_ids(&before, &full.config), "reported changes after {:?}", e);
            for ((kind, key), existed) in &changed {
                prop_assert_eq!(*existed, mesh_controller::resolve::incremental::exists(&before, *kind, key));
            }
        }
    }
}
