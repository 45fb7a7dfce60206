//! The desired Service of a Gateway, from manifests: type from parameters, ports, naming,
//! labels, owner, EndpointSlices, addresses, and the conditions invalid parameters give.

use std::path::Path;

use super::*;
use crate::manifests::load_str;
use crate::resolve::{Resolution, Settings, resolve};
use crate::status::Condition;

const CLASS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: weft, generation: 1}
spec: {controllerName: weft.dev/gateway-controller}
"#;

fn gateway(name: &str, extra_spec: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: infra, generation: 2, uid: uid-{name}}}
spec:
  gatewayClassName: weft
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
  - {{name: http-b, port: 80, protocol: HTTP, hostname: b.example}}
  - {{name: tls, port: 443, protocol: TLS, tls: {{mode: Passthrough}}}}
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
{extra_spec}
"#
    )
}

const PROXIES: &str = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: weft-node-a, namespace: weft-system, labels: {app.kubernetes.io/name: weft-node, app.kubernetes.io/instance: weft}}
spec: {containers: [{name: proxy, image: weft}]}
status:
  phase: Running
  hostIP: 192.168.10.2
  hostIPs: [{ip: 192.168.10.2}, {ip: "fd00:10::2"}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: weft-node-b, namespace: weft-system, labels: {app.kubernetes.io/name: weft-node, app.kubernetes.io/instance: weft}}
spec: {containers: [{name: proxy, image: weft}]}
status:
  phase: Running
  hostIP: 192.168.10.3
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata: {name: not-a-proxy, namespace: weft-system, labels: {app.kubernetes.io/name: other}}
spec: {containers: [{name: x, image: x}]}
status:
  phase: Running
  hostIP: 192.168.10.4
  conditions: [{type: Ready, status: "True"}]
"#;

fn config_map(namespace: &str, name: &str, data: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: {namespace}}}
data: {data}
"#
    )
}

fn services() -> ServiceSettings {
    ServiceSettings {
        proxy_namespace: "weft-system".into(),
        proxy_selector: parse_selector("app.kubernetes.io/name=weft-node,app.kubernetes.io/instance=weft")
            .expect("selector"),
    }
}

fn run(yaml: &str, pool: Option<&str>) -> Resolution {
    let loaded = load_str(yaml, Path::new("case.yaml")).expect("test manifests parse");
    let settings = Settings {
        gateway_address_pool: pool.map(|p| p.parse().expect("pool")),
        gateway_services: Some(services()),
        ..Settings::default()
    };
    resolve(&loaded.store, &settings)
}

fn exposure<'a>(r: &'a Resolution, name: &str) -> &'a Exposure {
    r.exposures.get(&ObjectKey::new("infra", name)).unwrap_or_else(|| panic!("no Service for Gateway {name}"))
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} in {conditions:#?}"))
}

fn gateway_condition(r: &Resolution, name: &str, type_: &str) -> (String, String, String) {
    let status = &r.statuses.gateways[&ObjectKey::new("infra", name)];
    let c = condition(&status.conditions, type_);
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn addresses(r: &Resolution, name: &str) -> Vec<String> {
    r.statuses.gateways[&ObjectKey::new("infra", name)].addresses.iter().map(|a| a.value.clone()).collect()
}

fn spec(e: &Exposure) -> &ServiceSpec {
    e.service.spec.as_ref().expect("a spec")
}

#[test]
fn a_load_balancer_service_per_gateway_with_one_port_per_listener_port_and_transport() {
    let r = run(&format!("{CLASS}{}", gateway("edge", "")), Some("10.250.128.0/24"));
    let e = exposure(&r, "edge");
    let meta = &e.service.metadata;
    assert_eq!(meta.name.as_deref(), Some("edge-weft"), "GEP-1762: <gateway>-<class>");
    assert_eq!(meta.namespace.as_deref(), Some("infra"));
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(labels[GATEWAY_NAME_LABEL], "edge");
    assert_eq!(labels[GATEWAY_CLASS_LABEL], "weft");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    let owner = &meta.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.controller),
        ("Gateway", "edge", "uid-edge", Some(true))
    );
    let spec = spec(e);
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.selector, None, "the proxies live in another namespace; Weft writes the endpoints");
    let ports: Vec<(String, i32, String, String)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => t.to_string(),
                other => format!("{other:?}"),
            };
            (p.name.clone().unwrap_or_default(), p.port, target, p.protocol.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("tcp-53".into(), 53, "53".into(), "TCP".into()),
            ("udp-53".into(), 53, "53".into(), "UDP".into()),
            ("tcp-80".into(), 80, "80".into(), "TCP".into()),
            ("tcp-443".into(), 443, "443".into(), "TCP".into()),
        ],
        "two HTTP listeners on 80 share a port; 53 is there once per transport"
    );
}

#[test]
fn with_a_pool_weft_is_the_load_balancer_ipam_and_the_pool_address_is_everywhere() {
    let r = run(&format!("{CLASS}{}", gateway("edge", "")), Some("10.250.128.0/24"));
    let e = exposure(&r, "edge");
    let spec = spec(e);
    assert_eq!(spec.load_balancer_class.as_deref(), Some(LOAD_BALANCER_CLASS));
    assert_eq!(spec.allocate_load_balancer_node_ports, Some(false));
    let gateway_addresses = addresses(&r, "edge");
    assert_eq!(gateway_addresses.len(), 1);
    assert!(gateway_addresses[0].starts_with("10.250.128."), "{gateway_addresses:?}");
    let ingress: Vec<String> =
        e.ingress.as_ref().expect("Weft writes the LB status").iter().map(ToString::to_string).collect();
    assert_eq!(ingress, gateway_addresses, "the Service's load-balancer address is the Gateway's");
    assert_eq!(e.endpoint_slices.len(), 1);
    let slice = &e.endpoint_slices[0];
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(slice.endpoints[0].addresses, gateway_addresses, "the ClusterIP leads to the pool address");
    let slice_labels = slice.metadata.labels.as_ref().expect("labels");
    assert_eq!(slice_labels[SERVICE_NAME_LABEL], "edge-weft");
    assert_eq!(slice_labels[SLICE_MANAGED_BY_LABEL], SLICE_MANAGED_BY);
    // Label values: at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends (no `/`).
    let valid = |v: &str| {
        v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    for (key, value) in slice_labels.iter().chain(e.service.metadata.labels.iter().flatten()) {
        assert!(valid(value), "label {key}: {value:?} is not a valid label value");
    }
    assert_eq!(gateway_condition(&r, "edge", "Programmed").1, "Programmed");
    // The proxies still bind the pool address alone, as before Services existed.
    let bound: BTreeSet<IpAddr> = r.config.listeners.values().flat_map(|l| l.addresses.clone()).collect();
    assert_eq!(bound.iter().map(ToString::to_string).collect::<Vec<_>>(), gateway_addresses);
}

#[test]
fn node_port_from_the_class_parameters_serves_on_the_ready_proxies_node_addresses() {
    let class = CLASS.replace(
        "spec: {controllerName: weft.dev/gateway-controller}",
        "spec: {controllerName: weft.dev/gateway-controller, parametersRef: {group: \"\", kind: ConfigMap, namespace: weft-system, name: params}}",
    );
    let yaml = format!(
        "{class}{}{PROXIES}{}",
        gateway("edge", ""),
        config_map("weft-system", "params", "{service.type: NodePort}")
    );
    let r = run(&yaml, Some("10.250.128.0/24"));
    assert_eq!(r.statuses.gateway_classes["weft"].conditions[0].reason, "Accepted");
    let e = exposure(&r, "edge");
    let spec = spec(e);
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.load_balancer_class, None);
    assert_eq!(e.ingress, None, "a NodePort Service has no load-balancer status of Weft's");
    // Only the ready proxy counts; the not-ready one and the other Pod do not.
    assert_eq!(addresses(&r, "edge"), vec!["192.168.10.2", "fd00:10::2"]);
    let families: Vec<&str> = e.endpoint_slices.iter().map(|s| s.address_type.as_str()).collect();
    assert_eq!(families, vec!["IPv4", "IPv6"], "one EndpointSlice per family");
    assert_eq!(e.endpoint_slices[0].metadata.name.as_deref(), Some("edge-weft-ipv4"));
    let bound: BTreeSet<String> =
        r.config.listeners.values().flat_map(|l| l.addresses.iter().map(ToString::to_string)).collect();
    assert_eq!(bound, BTreeSet::from(["192.168.10.2".to_string(), "fd00:10::2".to_string()]));
    assert_eq!(gateway_condition(&r, "edge", "Programmed").1, "Programmed");
}

#[test]
fn node_port_without_a_running_proxy_has_no_address_yet() {
    let yaml = format!(
        "{CLASS}{}{}",
        gateway("edge", "  infrastructure: {parametersRef: {group: \"\", kind: ConfigMap, name: np}}"),
        config_map("infra", "np", "{service.type: NodePort}")
    );
    let r = run(&yaml, None);
    assert_eq!(spec(exposure(&r, "edge")).type_.as_deref(), Some("NodePort"));
    let (status, reason, message) = gateway_condition(&r, "edge", "Programmed");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AddressNotAssigned"), "{message}");
    assert!(message.contains("node proxy"), "{message}");
}

#[test]
fn the_gateways_parameters_win_over_the_class_and_none_means_no_service() {
    let class = CLASS.replace(
        "spec: {controllerName: weft.dev/gateway-controller}",
        "spec: {controllerName: weft.dev/gateway-controller, parametersRef: {group: \"\", kind: ConfigMap, namespace: weft-system, name: params}}",
    );
    let yaml = format!(
        "{class}{}{}{}{}",
        gateway("plain", ""),
        gateway(
            "hidden",
            "  infrastructure: {parametersRef: {group: \"\", kind: ConfigMap, name: no-service}}"
        ),
        config_map("weft-system", "params", "{service.type: NodePort}"),
        config_map("infra", "no-service", "{service.type: None}")
    );
    let r = run(&yaml, Some("10.250.128.0/24"));
    assert_eq!(spec(exposure(&r, "plain")).type_.as_deref(), Some("NodePort"), "the class's default");
    assert!(!r.exposures.contains_key(&ObjectKey::new("infra", "hidden")), "service.type None: no Service");
    let hidden = addresses(&r, "hidden");
    assert!(
        hidden.len() == 1 && hidden[0].starts_with("10.250.128."),
        "a pool address as before: {hidden:?}"
    );
}

#[test]
fn invalid_class_parameters_make_the_class_not_accepted() {
    let with_ref = |r: &str| {
        CLASS.replace(
            "spec: {controllerName: weft.dev/gateway-controller}",
            &format!("spec: {{controllerName: weft.dev/gateway-controller, parametersRef: {r}}}"),
        )
    };
    let cases = [
        (with_ref("{group: \"\", kind: ConfigMap, namespace: weft-system, name: missing}"), "does not exist"),
        (with_ref("{group: \"\", kind: ConfigMap, name: params}"), "needs a namespace"),
        (with_ref("{group: example.com, kind: Params, name: params}"), "ConfigMap"),
        (with_ref("{group: \"\", kind: ConfigMap, namespace: weft-system, name: bad}"), "not one of"),
        (with_ref("{group: \"\", kind: ConfigMap, namespace: weft-system, name: typo}"), "unknown key"),
    ];
    for (class, expected) in cases {
        let yaml = format!(
            "{class}{}{}{}",
            gateway("edge", ""),
            config_map("weft-system", "bad", "{service.type: ClusterIP}"),
            config_map("weft-system", "typo", "{service.tpye: NodePort}")
        );
        let r = run(&yaml, None);
        let c = &r.statuses.gateway_classes["weft"].conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidParameters"), "{}", c.message);
        assert!(c.message.contains(expected), "{expected:?} in {:?}", c.message);
        assert!(r.statuses.gateways.is_empty(), "Gateways of a class not accepted are not served");
        assert!(r.exposures.is_empty());
    }
}

#[test]
fn invalid_gateway_parameters_make_the_gateway_not_accepted_and_take_its_service_away() {
    let yaml = format!(
        "{CLASS}{}{}",
        gateway("edge", "  infrastructure: {parametersRef: {group: \"\", kind: ConfigMap, name: bad}}"),
        config_map("infra", "bad", "{service.type: Ingress}")
    );
    let r = run(&yaml, Some("10.250.128.0/24"));
    let (status, reason, message) = gateway_condition(&r, "edge", "Accepted");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidParameters"), "{message}");
    assert!(message.contains("ConfigMap infra/bad"), "{message}");
    assert_eq!(gateway_condition(&r, "edge", "Programmed").0, "False");
    assert!(r.exposures.is_empty(), "no Service for a Gateway that is not accepted");
    assert!(r.config.listeners.is_empty());
}

#[test]
fn without_a_pool_the_providers_address_is_the_gateways_and_the_proxies_also_serve_node_addresses() {
    let provider_service = r#"
---
apiVersion: v1
kind: Service
metadata:
  name: edge-weft
  namespace: infra
  labels: {gateway.networking.k8s.io/gateway-name: edge, app.kubernetes.io/managed-by: weft-controller}
  ownerReferences: [{apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, name: edge, uid: uid-edge}]
spec: {type: LoadBalancer, ports: [{port: 80}]}
status:
  loadBalancer:
    ingress: [{ip: 203.0.113.9}, {hostname: edge.lb.example}]
"#;
    let before = run(&format!("{CLASS}{}{PROXIES}", gateway("edge", "")), None);
    let (status, reason, message) = gateway_condition(&before, "edge", "Programmed");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AddressNotAssigned"), "{message}");
    assert!(message.contains("infra/edge-weft"), "{message}");
    let e = exposure(&before, "edge");
    assert_eq!(spec(e).load_balancer_class, None, "the provider's to serve");
    assert_eq!(e.ingress, None, "the provider writes the load-balancer status");
    assert_eq!(e.endpoint_slices[0].endpoints[0].addresses, vec!["192.168.10.2"]);

    let after = run(&format!("{CLASS}{}{PROXIES}{provider_service}", gateway("edge", "")), None);
    let status = &after.statuses.gateways[&ObjectKey::new("infra", "edge")];
    let reported: Vec<(&str, &str)> =
        status.addresses.iter().map(|a| (a.type_.as_str(), a.value.as_str())).collect();
    assert_eq!(reported, vec![("IPAddress", "203.0.113.9"), ("Hostname", "edge.lb.example")]);
    assert_eq!(gateway_condition(&after, "edge", "Programmed").1, "Programmed");
    let bound: BTreeSet<String> =
        after.config.listeners.values().flat_map(|l| l.addresses.iter().map(ToString::to_string)).collect();
    assert!(bound.contains("192.168.10.2") && bound.contains("203.0.113.9"), "{bound:?}");
}

#[test]
fn no_services_without_the_setting_and_none_without_a_uid() {
    let loaded = load_str(&format!("{CLASS}{}", gateway("edge", "")), Path::new("case.yaml")).expect("parse");
    let r = resolve(&loaded.store, &Settings::default());
    assert!(r.exposures.is_empty(), "standalone: no Services");
    assert_eq!(addresses(&r, "edge"), vec!["127.0.0.1"], "the default address, as before");
    let no_uid = gateway("edge", "").replace(", uid: uid-edge", "");
    let r = run(&format!("{CLASS}{no_uid}"), Some("10.250.128.0/24"));
    assert!(r.exposures.is_empty(), "no owner to name");
}

#[test]
fn names_are_valid_service_names_and_label_values() {
    assert_eq!(service_name("edge", "weft"), "edge-weft");
    assert_eq!(service_name("my.gw", "weft"), "my-gw-weft");
    assert_eq!(service_name("1st", "weft"), "gw-1st-weft");
    let long = "a".repeat(70);
    let name = service_name(&long, "weft");
    assert!(name.len() <= 63, "{name}");
    assert_ne!(name, service_name(&"a".repeat(71), "weft"), "shortened names keep a hash of the full one");
    assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    assert!(label_value(&long).len() <= 63);
    assert_eq!(label_value("edge"), "edge");
}

#[test]
fn parameters_and_selectors_parse_strictly() {
    let data = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    assert_eq!(
        parse_parameters(Some(&data(SERVICE_TYPE_KEY, "NodePort"))),
        Ok(Parameters { service_type: Some(ServiceType::NodePort) })
    );
    assert_eq!(parse_parameters(None), Ok(Parameters::default()));
    assert!(parse_parameters(Some(&data(SERVICE_TYPE_KEY, "ClusterIP"))).is_err());
    assert!(parse_parameters(Some(&data("other", "x"))).is_err());
    assert!(parse_selector("a=b,c=d").is_ok_and(|s| s.len() == 2));
    assert!(parse_selector("").is_err());
    assert!(parse_selector("novalue").is_err());
    // Trimmed for the store: parameter values kept, other values emptied, keys kept.
    let mut cm = ConfigMap { data: Some(data("big", &"x".repeat(1000))), ..Default::default() };
    cm.data.as_mut().expect("data").insert(SERVICE_TYPE_KEY.into(), "NodePort".into());
    let trimmed = trim_config_map(cm);
    let kept = trimmed.data.expect("data");
    assert_eq!(kept["big"], "");
    assert_eq!(kept[SERVICE_TYPE_KEY], "NodePort");
}

#[test]
fn gateways_on_node_addresses_cannot_share_a_port_the_oldest_keeps_it() {
    let node_port = "  infrastructure: {parametersRef: {group: \"\", kind: ConfigMap, name: np}}";
    let older = gateway("older", node_port)
        .replace("generation: 2,", "generation: 2, creationTimestamp: \"2026-01-01T00:00:00Z\",");
    let newer = gateway("a-newer", node_port)
        .replace("generation: 2,", "generation: 2, creationTimestamp: \"2026-02-01T00:00:00Z\",")
        .replace("- {name: dns-tcp, port: 53, protocol: TCP}", "- {name: other, port: 8080, protocol: HTTP}");
    let pooled = gateway("pooled", "");
    let yaml = format!(
        "{CLASS}{older}{newer}{pooled}{PROXIES}{}",
        config_map("infra", "np", "{service.type: NodePort}")
    );
    let r = run(&yaml, Some("10.250.128.0/24"));
    let listener_accepted = |gw: &str, name: &str| {
        let status = &r.statuses.gateways[&ObjectKey::new("infra", gw)];
        let l = status.listeners.iter().find(|l| l.name == name).expect("listener");
        let c = condition(&l.conditions, "Accepted");
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(listener_accepted("older", "http"), ("True".into(), "Accepted".into()));
    assert_eq!(listener_accepted("a-newer", "http"), ("False".into(), "PortUnavailable".into()));
    assert_eq!(
        listener_accepted("a-newer", "other"),
        ("True".into(), "Accepted".into()),
        "a free port is served"
    );
    assert_eq!(listener_accepted("pooled", "http"), ("True".into(), "Accepted".into()), "on its own address");
    let ports: Vec<i32> = spec(exposure(&r, "a-newer")).ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, vec![8080], "only the port it serves is on its Service");
}
