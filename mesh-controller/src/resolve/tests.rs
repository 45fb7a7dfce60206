//! Table tests of `resolve`: each case is a small set of manifests and the statuses and config
//! the spec says they produce.

use std::path::Path;

use mesh_api::model::{BackendRef, Consumers, ListenerKey, ObjectKey, ParentTarget, RouteKey, RouteKind};

use super::*;
use crate::manifests::load_str;
use crate::status::{Condition, GatewayStatus, ListenerStatus, RouteParentStatus};

fn resolve_yaml(yaml: &str) -> Resolution {
    let loaded = load_str(yaml, Path::new("case.yaml")).expect("test manifests parse");
    resolve(&loaded.store, &Settings::default())
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:#?}"))
}

fn assert_condition(conditions: &[Condition], type_: &str, status: &str, reason: &str) {
    let c = condition(conditions, type_);
    assert_eq!((c.status.as_str(), c.reason.as_str()), (status, reason), "{type_}: {}", c.message);
}

fn gateway<'a>(r: &'a Resolution, ns: &str, name: &str) -> &'a GatewayStatus {
    r.statuses
        .gateways
        .get(&ObjectKey::new(ns, name))
        .unwrap_or_else(|| panic!("no status for Gateway {ns}/{name}"))
}

fn listener<'a>(gw: &'a GatewayStatus, name: &str) -> &'a ListenerStatus {
    gw.listeners.iter().find(|l| l.name == name).unwrap_or_else(|| panic!("no listener {name}"))
}

fn http_route_key(ns: &str, name: &str) -> RouteKey {
    RouteKey { kind: RouteKind::Http, object: ObjectKey::new(ns, name) }
}

fn route_parent<'a>(r: &'a Resolution, ns: &str, name: &str, index: usize) -> &'a RouteParentStatus {
    let status = r
        .statuses
        .routes
        .get(&http_route_key(ns, name))
        .unwrap_or_else(|| panic!("no status for HTTPRoute {ns}/{name}"));
    &status.parents[index]
}

const CLASS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weft, generation: 1}
spec: {controllerName: weft.dev/gateway-controller}
"#;

const BACKEND: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 8080, targetPort: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: apps, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
- addresses: [10.0.0.5]
  conditions: {ready: true}
  nodeName: node-a
  targetRef: {kind: Pod, namespace: apps, name: web-1}
"#;

fn with_class(rest: &str) -> String {
    format!("{CLASS}\n---\n{rest}\n{BACKEND}")
}

fn simple_gateway(allowed: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra, generation: 3}}
spec:
  gatewayClassName: weft
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {allowed}
"#
    )
}

fn route_to(parent_ns: &str, route_ns: &str, extra_spec: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: {route_ns}, generation: 2}}
spec:
  parentRefs: [{{name: gw, namespace: {parent_ns}}}]
{extra_spec}
  rules:
  - backendRefs: [{{name: web, namespace: apps, port: 8080}}]
"#
    )
}

const GRANT_ROUTES_TO_APPS: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service}]
"#;

#[test]
fn only_our_gateway_classes_are_accepted_and_others_untouched() {
    let r = resolve_yaml(&format!(
        "{CLASS}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: other}}\n\
         spec: {{controllerName: example.com/other}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n\
         metadata: {{name: params}}\nspec:\n  controllerName: weft.dev/gateway-controller\n  \
         parametersRef: {{group: example.com, kind: Config, name: x}}\n"
    ));
    let weft = &r.statuses.gateway_classes["weft"];
    assert_condition(&weft.conditions, "Accepted", "True", "Accepted");
    assert_condition(&weft.conditions, "SupportedVersion", "True", "SupportedVersion");
    assert_eq!(condition(&weft.conditions, "Accepted").observed_generation, Some(1));
    assert!(
        !r.statuses.gateway_classes.contains_key("other"),
        "another controller's class is not ours to touch"
    );
    assert_condition(
        &r.statuses.gateway_classes["params"].conditions,
        "Accepted",
        "False",
        "InvalidParameters",
    );
}

#[test]
fn a_route_in_the_gateways_namespace_attaches_and_resolves() {
    let r = resolve_yaml(&with_class(
        &(simple_gateway("{}") + &route_to("infra", "infra", "") + GRANT_ROUTES_TO_APPS),
    ));
    let gw = gateway(&r, "infra", "gw");
    assert_condition(&gw.conditions, "Accepted", "True", "Accepted");
    assert_condition(&gw.conditions, "Programmed", "True", "Programmed");
    assert_eq!(gw.addresses[0].value, "127.0.0.1", "standalone default address");
    let http = listener(gw, "http");
    assert_eq!(http.attached_routes, 1);
    assert_eq!(
        http.supported_kinds.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>(),
        vec!["HTTPRoute", "GRPCRoute"]
    );
    for t in ["Accepted", "ResolvedRefs", "Programmed"] {
        assert_condition(&http.conditions, t, "True", t);
    }
    assert_condition(&http.conditions, "Conflicted", "False", "NoConflicts");
    let parent = route_parent(&r, "infra", "r", 0);
    assert_eq!(parent.controller_name, "weft.dev/gateway-controller");
    assert_condition(&parent.conditions, "Accepted", "True", "Accepted");
    assert_condition(&parent.conditions, "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(condition(&parent.conditions, "Accepted").observed_generation, Some(2));

    let route = &r.config.routes["HTTPRoute/infra/r"];
    assert_eq!(
        route.parents[0].target,
        ParentTarget::Listener(ListenerKey {
            gateway: ObjectKey::new("infra", "gw"),
            section: "http".into()
        })
    );
    let BackendRef::Service(key) = &route.rules[0].backends[0].backend else { panic!("backend resolved") };
    let backend = &r.config.backends[&key.to_string()];
    assert_eq!(backend.endpoints[0].port, 9090, "the EndpointSlice's port, not the Service's");
    assert_eq!(backend.endpoints[0].node.as_deref(), Some("node-a"));
    assert!(r.config.listeners.contains_key("infra/gw/http"));
}

#[test]
fn allowed_routes_same_all_and_selector() {
    // Same (the default): a route from another namespace is refused.
    let r = resolve_yaml(&with_class(&(simple_gateway("{}") + &route_to("infra", "apps", ""))));
    assert_condition(
        &route_parent(&r, "apps", "r", 0).conditions,
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
    assert_eq!(listener(gateway(&r, "infra", "gw"), "http").attached_routes, 0);
    assert!(r.config.routes.is_empty());

    // All.
    let r = resolve_yaml(&with_class(
        &(simple_gateway("{namespaces: {from: All}}") + &route_to("infra", "apps", "")),
    ));
    assert_condition(&route_parent(&r, "apps", "r", 0).conditions, "Accepted", "True", "Accepted");

    // Selector: only namespaces whose labels match.
    let selector = "{namespaces: {from: Selector, selector: {matchLabels: {expose: \"yes\"}}}}";
    let ns = |labels: &str| {
        format!("\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: apps, labels: {labels}}}\n")
    };
    let r = resolve_yaml(&with_class(
        &(simple_gateway(selector) + &route_to("infra", "apps", "") + &ns("{expose: \"yes\"}")),
    ));
    assert_condition(&route_parent(&r, "apps", "r", 0).conditions, "Accepted", "True", "Accepted");
    let r = resolve_yaml(&with_class(
        &(simple_gateway(selector) + &route_to("infra", "apps", "") + &ns("{expose: \"no\"}")),
    ));
    assert_condition(
        &route_parent(&r, "apps", "r", 0).conditions,
        "Accepted",
        "False",
        "NotAllowedByListeners",
    );
}

#[test]
fn section_name_and_port_must_name_a_listener() {
    let yaml = with_class(&simple_gateway("{}")).replace(
        "allowedRoutes: {}\n",
        "allowedRoutes: {}\n  - name: other\n    port: 81\n    protocol: HTTP\n",
    );
    for (parent, accepted, reason, attached) in [
        ("{name: gw, namespace: infra, sectionName: nope}", "False", "NoMatchingParent", (0, 0)),
        ("{name: gw, namespace: infra, port: 9999}", "False", "NoMatchingParent", (0, 0)),
        ("{name: gw, namespace: infra, sectionName: other}", "True", "Accepted", (0, 1)),
        ("{name: gw, namespace: infra, port: 80}", "True", "Accepted", (1, 0)),
        ("{name: gw, namespace: infra}", "True", "Accepted", (1, 1)),
    ] {
        let route =
            route_to("infra", "infra", "").replace("[{name: gw, namespace: infra}]", &format!("[{parent}]"));
        let r = resolve_yaml(&(yaml.clone() + &route));
        assert_condition(&route_parent(&r, "infra", "r", 0).conditions, "Accepted", accepted, reason);
        let gw = gateway(&r, "infra", "gw");
        assert_eq!(
            (listener(gw, "http").attached_routes, listener(gw, "other").attached_routes),
            attached,
            "{parent}"
        );
    }
}

#[test]
fn hostnames_intersect_or_the_route_is_refused() {
    let gw =
        simple_gateway("{}").replace("protocol: HTTP\n", "protocol: HTTP\n    hostname: \"*.example.com\"\n");
    let r = resolve_yaml(&with_class(
        &(gw.clone() + &route_to("infra", "infra", "  hostnames: [foo.example.com, foo.org]")),
    ));
    assert_condition(&route_parent(&r, "infra", "r", 0).conditions, "Accepted", "True", "Accepted");
    assert_eq!(
        r.config.routes["HTTPRoute/infra/r"].parents[0].hostnames,
        vec!["foo.example.com".to_string()]
    );

    let r = resolve_yaml(&with_class(&(gw + &route_to("infra", "infra", "  hostnames: [foo.org]"))));
    assert_condition(
        &route_parent(&r, "infra", "r", 0).conditions,
        "Accepted",
        "False",
        "NoMatchingListenerHostname",
    );
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let base = with_class(&(simple_gateway("{}") + &route_to("infra", "infra", "")));
    let r = resolve_yaml(&base);
    let parent = route_parent(&r, "infra", "r", 0);
    assert_condition(&parent.conditions, "Accepted", "True", "Accepted");
    assert_condition(&parent.conditions, "ResolvedRefs", "False", "RefNotPermitted");
    assert!(matches!(
        r.config.routes["HTTPRoute/infra/r"].rules[0].backends[0].backend,
        BackendRef::Invalid { .. }
    ));

    // A grant for another kind does not help.
    let r =
        resolve_yaml(&(base.clone() + &GRANT_ROUTES_TO_APPS.replace("kind: HTTPRoute", "kind: GRPCRoute")));
    assert_condition(
        &route_parent(&r, "infra", "r", 0).conditions,
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );
    // A grant naming another Service does not help either.
    let r = resolve_yaml(
        &(base.clone() + &GRANT_ROUTES_TO_APPS.replace("kind: Service}", "kind: Service, name: other}")),
    );
    assert_condition(
        &route_parent(&r, "infra", "r", 0).conditions,
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );

    let r = resolve_yaml(&(base + GRANT_ROUTES_TO_APPS));
    assert_condition(&route_parent(&r, "infra", "r", 0).conditions, "ResolvedRefs", "True", "ResolvedRefs");
}

#[test]
fn unresolvable_backends_have_their_own_reasons() {
    for (backend, reason) in [
        ("{name: missing, port: 80}", "BackendNotFound"),
        ("{name: web, namespace: apps, port: 1}", "BackendNotFound"),
        ("{name: web, namespace: apps}", "BackendNotFound"),
        ("{group: example.com, kind: Bucket, name: b}", "InvalidKind"),
    ] {
        let route = route_to("infra", "infra", "")
            .replace("[{name: web, namespace: apps, port: 8080}]", &format!("[{backend}]"));
        let r = resolve_yaml(&(with_class(&(simple_gateway("{}") + &route)) + GRANT_ROUTES_TO_APPS));
        let parent = route_parent(&r, "infra", "r", 0);
        assert_condition(&parent.conditions, "Accepted", "True", "Accepted");
        assert_condition(&parent.conditions, "ResolvedRefs", "False", reason);
    }
}

#[test]
fn listener_conflicts_mark_every_listener_involved() {
    let gw = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: weft
  listeners:
  - {name: a, port: 80, protocol: HTTP, hostname: a.example.com}
  - {name: b, port: 80, protocol: HTTP, hostname: a.example.com}
  - {name: c, port: 80, protocol: HTTP, hostname: c.example.com}
  - {name: d, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}]}}
  - {name: e, port: 443, protocol: TCP}
  - {name: f, port: 53, protocol: TCP}
  - {name: g, port: 53, protocol: UDP}
  - {name: h, port: 90, protocol: SCTP}
"#;
    let r = resolve_yaml(&with_class(gw));
    let status = gateway(&r, "infra", "gw");
    assert_condition(&listener(status, "a").conditions, "Conflicted", "True", "HostnameConflict");
    assert_condition(&listener(status, "b").conditions, "Conflicted", "True", "HostnameConflict");
    assert_condition(&listener(status, "c").conditions, "Conflicted", "False", "NoConflicts");
    assert_condition(&listener(status, "d").conditions, "Conflicted", "True", "ProtocolConflict");
    assert_condition(&listener(status, "e").conditions, "Conflicted", "True", "ProtocolConflict");
    assert_condition(&listener(status, "f").conditions, "Conflicted", "False", "NoConflicts");
    assert_condition(&listener(status, "g").conditions, "Conflicted", "False", "NoConflicts");
    assert_condition(&listener(status, "h").conditions, "Accepted", "False", "UnsupportedProtocol");
    assert_condition(&listener(status, "a").conditions, "Programmed", "False", "Invalid");
    assert_condition(&status.conditions, "Accepted", "True", "ListenersNotValid");
    let programmed: Vec<&str> = r.config.listeners.values().map(|l| l.key.section.as_str()).collect();
    assert_eq!(programmed, vec!["c", "f", "g"]);
}

fn tls_secret(ns: &str, name: &str) -> String {
    let cert = rcgen::generate_simple_self_signed(vec!["example.com".to_string()]).expect("self-signed cert");
    let indent = |pem: String| pem.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  \
         tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(cert.cert.pem()),
        indent(cert.signing_key.serialize_pem())
    )
}

#[test]
fn https_certificates_resolve_by_secret_and_reference_grant() {
    let gw = |cert_ref: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: infra}}\nspec:\n  \
             gatewayClassName: weft\n  listeners:\n  - name: https\n    port: 443\n    protocol: HTTPS\n    \
             tls: {{certificateRefs: [{cert_ref}]}}\n"
        )
    };
    let r = resolve_yaml(&(with_class(&gw("{name: cert}")) + &tls_secret("infra", "cert")));
    let https = listener(gateway(&r, "infra", "gw"), "https");
    assert_condition(&https.conditions, "ResolvedRefs", "True", "ResolvedRefs");
    assert_eq!(
        r.config.certificates["infra/cert"].dns_names,
        vec!["example.com".to_string()],
        "from the SAN"
    );
    assert_eq!(
        r.config.listeners["infra/gw/https"].tls.as_ref().map(|t| t.certificates.clone()),
        Some(vec!["infra/cert".into()])
    );

    let r = resolve_yaml(&with_class(&gw("{name: nope}")));
    assert_condition(
        &listener(gateway(&r, "infra", "gw"), "https").conditions,
        "ResolvedRefs",
        "False",
        "InvalidCertificateRef",
    );
    assert!(r.config.listeners.is_empty(), "a listener without its certificate is not programmed");

    let broken = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: infra}\nstringData: {tls.crt: garbage, tls.key: garbage}\n";
    let r = resolve_yaml(&(with_class(&gw("{name: cert}")) + broken));
    assert_condition(
        &listener(gateway(&r, "infra", "gw"), "https").conditions,
        "ResolvedRefs",
        "False",
        "InvalidCertificateRef",
    );

    let cross = gw("{name: cert, namespace: certs}");
    let r = resolve_yaml(&(with_class(&cross) + &tls_secret("certs", "cert")));
    assert_condition(
        &listener(gateway(&r, "infra", "gw"), "https").conditions,
        "ResolvedRefs",
        "False",
        "RefNotPermitted",
    );
    let grant = "\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: certs}\n\
                 spec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]\n  to: [{group: \"\", kind: Secret}]\n";
    let r = resolve_yaml(&(with_class(&cross) + &tls_secret("certs", "cert") + grant));
    assert_condition(
        &listener(gateway(&r, "infra", "gw"), "https").conditions,
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    );
}

#[test]
fn invalid_route_kinds_are_reported_and_dropped() {
    let gw =
        simple_gateway("{kinds: [{kind: HTTPRoute}, {kind: TCPRoute}, {group: example.com, kind: Foo}]}");
    let r = resolve_yaml(&with_class(&gw));
    let http = listener(gateway(&r, "infra", "gw"), "http");
    assert_condition(&http.conditions, "ResolvedRefs", "False", "InvalidRouteKinds");
    assert_eq!(http.supported_kinds.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>(), vec!["HTTPRoute"]);
}

#[test]
fn invalid_rules_are_dropped_and_the_route_is_partially_invalid() {
    let rules = r#"
  rules:
  - matches: [{path: {type: RegularExpression, value: "(unclosed"}}]
    backendRefs: [{name: web, namespace: apps, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /ok}}]
    backendRefs: [{name: web, namespace: apps, port: 8080}]
"#;
    let route = format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: infra}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n{rules}"
    );
    let r = resolve_yaml(&(with_class(&simple_gateway("{}")) + &route + GRANT_ROUTES_TO_APPS));
    let parent = route_parent(&r, "infra", "r", 0);
    assert_condition(&parent.conditions, "Accepted", "True", "Accepted");
    assert_condition(&parent.conditions, "PartiallyInvalid", "True", "UnsupportedValue");
    assert!(condition(&parent.conditions, "PartiallyInvalid").message.contains("rule 0"));
    assert_eq!(r.config.routes["HTTPRoute/infra/r"].rules.len(), 1);

    let all_bad =
        route.replace("value: /ok", "value: \"[\"").replace("type: PathPrefix", "type: RegularExpression");
    let r = resolve_yaml(&(with_class(&simple_gateway("{}")) + &all_bad + GRANT_ROUTES_TO_APPS));
    assert_condition(&route_parent(&r, "infra", "r", 0).conditions, "Accepted", "False", "UnsupportedValue");
    assert!(r.config.routes.is_empty());
}

#[test]
fn routes_for_other_controllers_gateways_get_no_status_from_us() {
    let other = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: infra}\n\
                 spec: {gatewayClassName: someone-else, listeners: [{name: http, port: 80, protocol: HTTP}]}\n";
    let r = resolve_yaml(&(with_class(other) + &route_to("infra", "infra", "")));
    assert!(r.statuses.gateways.is_empty());
    assert!(r.statuses.routes.is_empty());
}

fn mesh_route(route_ns: &str, parent: &str) -> String {
    format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: {route_ns}}}\n\
         spec:\n  parentRefs: [{parent}]\n  rules:\n  - backendRefs: [{{name: web, namespace: apps, port: 8080}}]\n"
    )
}

#[test]
fn gamma_producer_and_consumer_routes() {
    let r =
        resolve_yaml(&with_class(&mesh_route("apps", "{group: \"\", kind: Service, name: web, port: 8080}")));
    assert_condition(&route_parent(&r, "apps", "r", 0).conditions, "Accepted", "True", "Accepted");
    let route = &r.config.routes["HTTPRoute/apps/r"];
    assert_eq!(
        route.parents[0].target,
        ParentTarget::Service {
            service: ObjectKey::new("apps", "web"),
            port: Some(8080),
            consumers: Consumers::All
        }
    );

    let grant = GRANT_ROUTES_TO_APPS.replace("namespace: infra", "namespace: client");
    let r = resolve_yaml(
        &(with_class(&mesh_route("client", "{group: \"\", kind: Service, name: web, namespace: apps}"))
            + &grant),
    );
    let route = &r.config.routes["HTTPRoute/client/r"];
    assert_eq!(
        route.parents[0].target,
        ParentTarget::Service {
            service: ObjectKey::new("apps", "web"),
            port: None,
            consumers: Consumers::Namespace("client".into())
        }
    );

    let r =
        resolve_yaml(&with_class(&mesh_route("apps", "{group: \"\", kind: Service, name: web, port: 1}")));
    assert_condition(&route_parent(&r, "apps", "r", 0).conditions, "Accepted", "False", "NoMatchingParent");
    let r = resolve_yaml(&with_class(&mesh_route("apps", "{group: \"\", kind: Service, name: gone}")));
    assert_condition(&route_parent(&r, "apps", "r", 0).conditions, "Accepted", "False", "NoMatchingParent");
}

#[test]
fn workloads_carry_identity_and_mesh_enrolment() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {weft.dev/mesh: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: apps}
spec: {nodeName: node-a, serviceAccountName: web, containers: [{name: c, image: x}]}
status: {podIP: 10.0.0.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: apps, labels: {weft.dev/mesh: disabled}}
spec: {nodeName: node-a, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: other}
spec: {nodeName: node-b, containers: [{name: c, image: x}]}
"#;
    let r = resolve_yaml(yaml);
    let web = &r.config.workloads["apps/web-1"];
    assert_eq!(web.identity, "spiffe://cluster.local/ns/apps/sa/web");
    assert!(web.meshed && web.ready);
    assert_eq!(web.ips, vec!["10.0.0.5".parse::<std::net::IpAddr>().expect("ip")]);
    assert!(!r.config.workloads["apps/opted-out"].meshed);
    assert!(!r.config.workloads["other/elsewhere"].meshed);
    assert_eq!(r.config.workloads["other/elsewhere"].identity, "spiffe://cluster.local/ns/other/sa/default");
}

#[test]
fn filters_convert_with_their_defaults() {
    let rules = r#"
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}
  - matches: [{path: {type: Exact, value: /exact}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}
  - filters:
    - {type: ExtensionRef, extensionRef: {group: example.com, kind: Magic, name: m}}
    backendRefs: [{name: web, namespace: apps, port: 8080}]
"#;
    let route = format!(
        "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: infra}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n{rules}"
    );
    let r = resolve_yaml(&(with_class(&simple_gateway("{}")) + &route + GRANT_ROUTES_TO_APPS));
    let parent = route_parent(&r, "infra", "r", 0);
    assert_condition(&parent.conditions, "PartiallyInvalid", "True", "UnsupportedValue");
    assert!(condition(&parent.conditions, "PartiallyInvalid").message.contains("ReplacePrefixMatch"));
    assert_condition(&parent.conditions, "ResolvedRefs", "False", "InvalidKind");
    let rules = &r.config.routes["HTTPRoute/infra/r"].rules;
    assert_eq!(rules.len(), 2);
    let mesh_api::model::Filter::RequestRedirect(redirect) = &rules[0].filters[0] else { panic!("redirect") };
    assert_eq!(redirect.status_code, 302, "the spec's default");
    assert!(rules[1].filters.is_empty(), "an unsupported filter is not skipped silently");
    assert!(matches!(
        rules[1].backends[..],
        [mesh_api::model::WeightedBackend { backend: BackendRef::Invalid { .. }, .. }]
    ));
}

#[test]
fn tls_passthrough_and_tcp_routes_resolve_to_l4_rules() {
    let gw = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 1}
spec:
  gatewayClassName: weft
  listeners:
  - name: tls
    port: 443
    protocol: TLS
    hostname: "*.example.com"
    tls: {mode: Passthrough}
  - name: tcp
    port: 5432
    protocol: TCP
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: t, namespace: infra, generation: 1}
spec:
  parentRefs: [{name: gw, sectionName: tls}]
  hostnames: [a.example.com, other.net]
  rules:
  - backendRefs: [{name: web, namespace: apps, port: 8080, weight: 3}, {name: missing, namespace: apps, port: 1}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: c, namespace: infra, generation: 1}
spec:
  parentRefs: [{name: gw, sectionName: tcp}]
  rules:
  - backendRefs: [{name: web, namespace: apps, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow, namespace: apps}
spec:
  from:
  - {group: gateway.networking.k8s.io, kind: TLSRoute, namespace: infra}
  - {group: gateway.networking.k8s.io, kind: TCPRoute, namespace: infra}
  to: [{group: "", kind: Service}]
"#;
    let r = resolve_yaml(&with_class(gw));
    let status = gateway(&r, "infra", "gw");
    assert_eq!(listener(status, "tls").attached_routes, 1);
    assert_eq!(listener(status, "tcp").attached_routes, 1);

    let tls = &r.config.routes["TLSRoute/infra/t"];
    assert_eq!(tls.key.kind, RouteKind::Tls);
    assert_eq!(tls.parents.len(), 1);
    assert_eq!(
        tls.parents[0].hostnames,
        vec!["a.example.com".to_string()],
        "intersected with the listener's"
    );
    let backends = &tls.rules[0].backends;
    assert_eq!(backends.len(), 2);
    assert_eq!(backends[0].weight, 3);
    assert!(matches!(&backends[0].backend, BackendRef::Service(k) if k.to_string() == "apps/web:8080"));
    assert!(matches!(backends[1].backend, BackendRef::Invalid { .. }), "its share of connections is refused");
    assert!(tls.rules[0].matches.is_empty());

    let tcp = &r.config.routes["TCPRoute/infra/c"];
    assert_eq!(tcp.key.kind, RouteKind::Tcp);
    assert!(tcp.parents[0].hostnames.is_empty());
    assert!(matches!(&tcp.rules[0].backends[0].backend, BackendRef::Service(_)));
    let l = &r.config.listeners["infra/gw/tls"];
    assert_eq!(l.protocol, mesh_api::model::ListenerProtocol::Tls);
    assert_eq!(l.tls.as_ref().map(|t| t.mode), Some(mesh_api::model::TlsMode::Passthrough));
}

fn gateway_named(name: &str, addresses: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: infra, generation: 1}}
spec:
  gatewayClassName: weft
  addresses: {addresses}
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
"#
    )
}

fn resolve_with_pool(yaml: &str, pool: &str) -> Resolution {
    let loaded = load_str(yaml, Path::new("case.yaml")).expect("test manifests parse");
    let settings =
        Settings { gateway_address_pool: Some(pool.parse().expect("pool")), ..Settings::default() };
    resolve(&loaded.store, &settings)
}

#[test]
fn with_a_pool_each_gateway_gets_its_own_address_and_listeners_bind_it() {
    let yaml = with_class(
        &(gateway_named("one", "[]")
            + &gateway_named("two", "[]")
            + &gateway_named("pinned", "[{type: IPAddress, value: 10.250.128.7}]")),
    );
    let r = resolve_with_pool(&yaml, "10.250.128.0/24");
    let address = |name: &str| {
        let gw = gateway(&r, "infra", name);
        assert_condition(&gw.conditions, "Programmed", "True", "Programmed");
        assert_eq!(gw.addresses.len(), 1, "{name}: one address");
        gw.addresses[0].value.clone()
    };
    let (one, two, pinned) = (address("one"), address("two"), address("pinned"));
    assert_eq!(pinned, "10.250.128.7", "spec.addresses is honoured");
    assert!(one.starts_with("10.250.128.") && two.starts_with("10.250.128."), "{one} {two}");
    assert!(one != two && one != pinned && two != pinned, "{one} {two} {pinned}");
    // The proxies bind each Gateway's listener on its own address, so all three share port 80.
    let mut bound: Vec<String> = r
        .config
        .listeners
        .values()
        .flat_map(|l| l.addresses.iter().map(move |ip| format!("{ip}:{}", l.port)))
        .collect();
    bound.sort();
    bound.dedup();
    assert_eq!(bound.len(), 3, "{bound:?}");
}

#[test]
fn an_exhausted_pool_leaves_the_gateway_unprogrammed_with_a_reason() {
    let yaml =
        with_class(&(gateway_named("a", "[]") + &gateway_named("b", "[]") + &gateway_named("c", "[]")));
    let r = resolve_with_pool(&yaml, "10.250.128.0/31");
    let unassigned: Vec<&str> =
        ["a", "b", "c"].into_iter().filter(|n| gateway(&r, "infra", n).addresses.is_empty()).collect();
    assert_eq!(unassigned.len(), 1, "a /31 holds two Gateways");
    let gw = gateway(&r, "infra", unassigned[0]);
    assert_condition(&gw.conditions, "Programmed", "False", "AddressNotAssigned");
}

#[test]
fn a_zero_timeout_disables_the_timeout() {
    let route = |timeouts: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: infra, generation: 1}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - timeouts: {timeouts}
    backendRefs: [{{name: web, namespace: apps, port: 8080}}]
"#
        )
    };
    let timeouts_of = |timeouts: &str| {
        let r = resolve_yaml(&with_class(&(simple_gateway("{}") + &route(timeouts) + GRANT_ROUTES_TO_APPS)));
        r.config.routes["HTTPRoute/infra/r"].rules[0].timeouts.clone()
    };
    let disabled = timeouts_of("{request: 0s, backendRequest: 0s}");
    assert_eq!((disabled.request_ms, disabled.backend_request_ms), (None, None));
    let set = timeouts_of("{request: 10s, backendRequest: 0s}");
    assert_eq!((set.request_ms, set.backend_request_ms), (Some(10_000), None));
}

/// GEP-1294: a mesh route may send traffic to Services in any namespace without a
/// ReferenceGrant (MeshConsumerRoute); a Gateway route may not.
#[test]
fn mesh_routes_need_no_reference_grant_for_backends_in_other_namespaces() {
    let consumer = mesh_route("client", "{group: \"\", kind: Service, name: web, namespace: apps}");
    let r = resolve_yaml(&with_class(&consumer));
    let rule = &r.config.routes["HTTPRoute/client/r"].rules[0];
    assert!(
        matches!(rule.backends[0].backend, BackendRef::Service(_)),
        "the backend resolves: {:?}",
        rule.backends[0].backend
    );
    assert_condition(&route_parent(&r, "client", "r", 0).conditions, "ResolvedRefs", "True", "ResolvedRefs");

    // The same route with a Gateway parent too needs the grant.
    let mixed = consumer.replace(
        "parentRefs: [{group: \"\", kind: Service, name: web, namespace: apps}]",
        "parentRefs: [{group: \"\", kind: Service, name: web, namespace: apps}, {name: gw, namespace: infra}]",
    );
    assert_ne!(mixed, consumer);
    let r = resolve_yaml(&with_class(&(simple_gateway("{namespaces: {from: All}}") + &mixed)));
    let rule = &r.config.routes["HTTPRoute/client/r"].rules[0];
    assert!(matches!(rule.backends[0].backend, BackendRef::Invalid { .. }), "{:?}", rule.backends[0].backend);
}

/// GatewayStaticAddresses: an unsupported address type is not accepted; with a pool, an
/// address outside it is accepted but not programmed; one inside it is served.
#[test]
fn static_addresses_are_checked_against_the_pool() {
    let yaml = with_class(
        &(gateway_named("fake", "[{type: test/fake-invalid-type, value: nope}]")
            + &gateway_named("outside", "[{type: IPAddress, value: 203.0.113.7}]")
            + &gateway_named("inside", "[{type: IPAddress, value: 10.250.128.250}]")),
    );
    let r = resolve_with_pool(&yaml, "10.250.128.0/24");
    assert_condition(&gateway(&r, "infra", "fake").conditions, "Accepted", "False", "UnsupportedAddress");
    let outside = gateway(&r, "infra", "outside");
    assert_condition(&outside.conditions, "Accepted", "True", "Accepted");
    assert_condition(&outside.conditions, "Programmed", "False", "AddressNotUsable");
    let inside = gateway(&r, "infra", "inside");
    assert_condition(&inside.conditions, "Programmed", "True", "Programmed");
    assert_eq!(inside.addresses[0].value, "10.250.128.250");
    let bound: Vec<String> =
        r.config.listeners.values().flat_map(|l| l.addresses.iter().map(ToString::to_string)).collect();
    assert!(!bound.contains(&"203.0.113.7".to_owned()), "an unusable address is not bound: {bound:?}");
    let outside_listeners = r.config.listeners.values().filter(|l| l.key.gateway.name == "outside").count();
    assert_eq!(
        outside_listeners, 0,
        "nor is anything else for that Gateway (no fallback to the default address)"
    );
}
