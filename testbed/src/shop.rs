//! "The shop": the small meshed application the mesh test and the demo run, as the manifests
//! weft-controller reads: a `frontend` calling Service `checkout`, whose two versions a GAMMA
//! HTTPRoute splits 90/10 (and `x-version: v2` pins to v2), and an unmeshed `legacy` pod; for
//! the benches, a gRPC Service in front of the checkout pods with a GAMMA GRPCRoute
//! ([`grpc_manifests`]).

use crate::cni::Pod;

/// Service `checkout`'s ClusterIP (the route's parent).
pub const CHECKOUT_VIP: &str = "10.96.0.10";
/// Weight of v1 in the split rule.
pub const V1_PERCENT: usize = 90;
pub const FRONTEND_IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
pub const CHECKOUT_IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

/// The cluster as the controller reads it, with the addresses the CNI plugins gave the pods:
/// Service `checkout` in front of both versions, `checkout-v1` and `checkout-v2` in front of
/// one each, and a GAMMA HTTPRoute on `checkout` sending `x-version: v2` to v2 and splitting
/// the rest 90/10.
pub fn manifests(frontend: &Pod<'_>, v1: &Pod<'_>, v2: &Pod<'_>, legacy: &Pod<'_>) -> String {
    let pod = |ns: &str, name: &str, node: &str, sa: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{nodeName: {node}, serviceAccountName: {sa}, containers: [{{name: app, image: app}}]}}\n\
             status: {{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}], \
             conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
        )
    };
    let service = |name: &str, vip: &str, pods: &[(&str, &Pod<'_>)]| {
        let endpoints: Vec<String> = pods
            .iter()
            .map(|(pod_name, pod)| {
                format!(
                    "{{addresses: [\"{}\"], conditions: {{ready: true}}, nodeName: {}, \
                     targetRef: {{kind: Pod, name: {pod_name}, namespace: shop}}}}",
                    pod.ip, pod.node.name
                )
            })
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec: {{clusterIP: \"{vip}\", clusterIPs: [\"{vip}\"], \
             ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints: [{}]\n---\n",
            endpoints.join(", ")
        )
    };
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {weft.dev/mesh: enabled}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: legacy}\n---\n",
    );
    yaml += &pod("shop", "frontend", "node-a", "frontend", &frontend.ip.to_string());
    yaml += &pod("shop", "checkout-v1", "node-b", "checkout", &v1.ip.to_string());
    yaml += &pod("shop", "checkout-v2", "node-b", "checkout", &v2.ip.to_string());
    yaml += &pod("legacy", "legacy", "node-b", "default", &legacy.ip.to_string());
    yaml += &service("checkout", CHECKOUT_VIP, &[("checkout-v1", v1), ("checkout-v2", v2)]);
    yaml += &service("checkout-v1", "10.96.0.11", &[("checkout-v1", v1)]);
    yaml += &service("checkout-v2", "10.96.0.12", &[("checkout-v2", v2)]);
    yaml += concat!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n",
        "metadata: {name: checkout-canary, namespace: shop}\n",
        "spec:\n",
        "  parentRefs: [{group: \"\", kind: Service, name: checkout, port: 80}]\n",
        "  rules:\n",
        "  - matches: [{headers: [{name: x-version, value: v2}]}]\n",
        "    backendRefs: [{name: checkout-v2, port: 80}]\n",
        "  - backendRefs: [{name: checkout-v1, port: 80, weight: 90}, {name: checkout-v2, port: 80, weight: 10}]\n",
    );
    yaml
}

/// Service `checkout-grpc`'s ClusterIP: the gRPC face of the checkout pods (the benches' gRPC
/// point, [`crate::grpc::GrpcEcho`] on [`GRPC_PORT`] in each).
pub const CHECKOUT_GRPC_VIP: &str = "10.96.0.20";
pub const GRPC_PORT: u16 = 9090;

/// What [`manifests`] gains for gRPC: Service `checkout-grpc` (port `grpc`, appProtocol
/// `kubernetes.io/h2c`) in front of both checkout versions, and a GAMMA GRPCRoute on it that
/// sends `bench.Echo` calls to it (so the calls are routed at L7, call by call, not spliced).
pub fn grpc_manifests(v1: &Pod<'_>, v2: &Pod<'_>) -> String {
    let endpoint = |name: &str, pod: &Pod<'_>| {
        format!(
            "{{addresses: [\"{}\"], conditions: {{ready: true}}, nodeName: {}, \
             targetRef: {{kind: Pod, name: {name}, namespace: shop}}}}",
            pod.ip, pod.node.name
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: checkout-grpc, namespace: shop}}\n\
         spec: {{clusterIP: \"{CHECKOUT_GRPC_VIP}\", clusterIPs: [\"{CHECKOUT_GRPC_VIP}\"], \
         ports: [{{name: grpc, port: {GRPC_PORT}, targetPort: {GRPC_PORT}, protocol: TCP, appProtocol: kubernetes.io/h2c}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: checkout-grpc-1, namespace: shop, labels: {{kubernetes.io/service-name: checkout-grpc}}}}\n\
         addressType: IPv4\nports: [{{name: grpc, port: {GRPC_PORT}, protocol: TCP}}]\n\
         endpoints: [{}, {}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {{name: checkout-grpc, namespace: shop}}\n\
         spec:\n\
         \x20 parentRefs: [{{group: \"\", kind: Service, name: checkout-grpc, port: {GRPC_PORT}}}]\n\
         \x20 rules:\n\
         \x20 - matches: [{{method: {{service: bench.Echo}}}}]\n\
         \x20   backendRefs: [{{name: checkout-grpc, port: {GRPC_PORT}}}]\n",
        endpoint("checkout-v1", v1),
        endpoint("checkout-v2", v2)
    )
}
