#!/usr/bin/env bash
# charts/weft/test.sh: the chart's CI check. helm lint --strict, then helm template with the
# defaults, with every optional part on (ci/all-on-values.yaml) and with the optional parts off,
# and plain grep/awk asserts on what must (and must not) render. No cluster needed.
#   HELM=/path/to/helm charts/weft/test.sh     (default: helm from $WEFT_CACHE, else PATH)
set -euo pipefail

chart="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${WEFT_CACHE:-$HOME/.cache/weft}"
HELM="${HELM:-}"
if [[ -z "${HELM}" ]]; then
  if [[ -x "${cache}/upstream/helm-v3.19.0/bin/helm" ]]; then
    HELM="${cache}/upstream/helm-v3.19.0/bin/helm"
  else
    HELM="$(command -v helm)" || { echo "chart test: no helm (set HELM, or tests/cluster/build-upstream.sh helm)" >&2; exit 1; }
  fi
fi

out="$(mktemp -d)"
trap 'rm -rf "${out}"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

# doc FILE KIND NAME: the one rendered document of that kind and name.
doc() {
  awk -v kind="$2" -v name="$3" '
    function flush() { if (k == kind && n == name) printf "%s", buf; buf = ""; k = ""; n = ""; meta = 0 }
    /^---/ { flush(); next }
    { buf = buf $0 "\n" }
    /^kind: / { k = $2 }
    /^metadata:/ { meta = 1; next }
    meta && /^  name: / && n == "" { n = $2 }
    /^[a-z]/ && !/^metadata:/ { meta = 0 }
    END { flush() }
  ' "$1"
}
has() { # has FILE PATTERN WHAT
  if grep -qE -- "$2" "$1"; then pass "$3"; else fail "$3 (no /$2/)"; fi
}
hasnt() {
  if grep -qE -- "$2" "$1"; then fail "$3 (found /$2/: $(grep -nE -- "$2" "$1" | head -n3 | tr '\n' ' '))"; else pass "$3"; fi
}
count() { # count FILE PATTERN N WHAT
  local c
  c="$(grep -cE -- "$2" "$1" || true)"
  if [[ "${c}" == "$3" ]]; then pass "$4"; else fail "$4 (${c} times /$2/, want $3)"; fi
}

echo "== helm lint --strict ($("${HELM}" version --short))"
"${HELM}" lint --strict "${chart}"
"${HELM}" lint --strict "${chart}" -f "${chart}/ci/all-on-values.yaml"
"${HELM}" lint --strict "${chart}" -f "${chart}/ci/node-tier-values.yaml"

render() { # render NAME [helm args...]
  local name="$1"
  shift
  "${HELM}" template weft "${chart}" --namespace weft-system "$@" >"${out}/${name}.yaml"
}

echo "== defaults"
render default
d="${out}/default.yaml"
count "${d}" '^kind: Deployment$' 1 "one Deployment"
count "${d}" '^kind: DaemonSet$' 1 "one DaemonSet"
count "${d}" '^kind: PodDisruptionBudget$' 1 "one PodDisruptionBudget"
count "${d}" '^kind: GatewayClass$' 1 "one GatewayClass"
count "${d}" '^kind: CustomResourceDefinition$' 0 "no CRDs by default"
count "${d}" '^kind: ServiceMonitor$' 0 "no ServiceMonitor by default"
has "${d}" '^  controllerName: weft\.dev/gateway-controller$' "GatewayClass controllerName"
doc "${d}" GatewayClass weft >"${out}/gc"
has "${out}/gc" '^  name: weft$' "GatewayClass is named weft"
hasnt "${out}/gc" 'helm.sh/hook' "GatewayClass is an ordinary release object"
for image in weft-controller weft-proxy weft-cni; do
  has "${d}" "image: weft\.local/${image}:dev$" "image ${image}"
done
has "${d}" 'imagePullPolicy: IfNotPresent' "pull policy"

doc "${d}" Deployment weft-controller >"${out}/deploy"
has "${out}/deploy" '^  replicas: 2$' "controller: 2 replicas"
has "${out}/deploy" '--config-addr=0\.0\.0\.0:15010' "controller: config stream on 0.0.0.0:15010"
has "${out}/deploy" '--admin-addr=0\.0\.0\.0:15014' "controller: admin on 0.0.0.0:15014"
has "${out}/deploy" '--proxy-service-account=weft-proxy' "controller: CA trusts SA weft-proxy"
hasnt "${out}/deploy" '--insecure-plaintext' "controller: config port is TLS"
hasnt "${out}/deploy" '--serving-name' "controller: no extra serving names by default"
hasnt "${out}/deploy" '--gateway-address-pool' "controller: no address pool by default"
has "${out}/deploy" '--gateway-service-selector=app\.kubernetes\.io/name=weft-node,app\.kubernetes\.io/instance=weft$' "controller: Gateways get Services; the node proxies' labels"
has "${out}/deploy" 'fieldPath: metadata.namespace' "controller: POD_NAMESPACE"
has "${out}/deploy" 'fieldPath: metadata.name' "controller: POD_NAME"
has "${out}/deploy" 'path: /ready' "controller: readiness on /ready"
has "${out}/deploy" 'livenessProbe:' "controller: liveness probe"
has "${out}/deploy" 'runAsNonRoot: true' "controller: non-root"
has "${out}/deploy" 'readOnlyRootFilesystem: true' "controller: read-only root"
has "${out}/deploy" '^ *- ALL$' "controller: drops ALL capabilities"
hasnt "${out}/deploy" '^ *add:' "controller: adds no capability"
has "${out}/deploy" 'memory: ' "controller: resources"

doc "${d}" Service weft-controller >"${out}/svc"
has "${out}/svc" 'type: ClusterIP' "controller Service: ClusterIP"
has "${out}/svc" 'port: 15010' "controller Service: :15010"
hasnt "${out}/svc" 'h2c' "controller Service: the config port is not announced as cleartext h2c"

doc "${d}" DaemonSet weft-node >"${out}/ds"
has "${out}/ds" 'serviceAccountName: weft-proxy$' "node: ServiceAccount weft-proxy"
has "${out}/ds" 'hostNetwork: true' "node: host network"
has "${out}/ds" 'dnsPolicy: ClusterFirstWithHostNet' "node: cluster DNS on the host network"
has "${out}/ds" '^ *- operator: Exists$' "node: tolerates every taint"
has "${out}/ds" '--controller=https://weft-controller\.weft-system\.svc\.cluster\.local:15010' "proxy: controller URL (TLS)"
has "${out}/ds" '--controller-ca-bundle=/var/run/secrets/weft/controller-ca/ca\.crt' "proxy: verifies the controller with its CA bundle"
has "${out}/ds" '--controller-token-file=/var/run/secrets/weft/ca-token/token' "proxy: token on the config stream"
hasnt "${out}/ds" 'insecure' "proxy: no insecure flag"
has "${out}/ds" 'mountPath: /var/run/secrets/weft/controller-ca$' "proxy: CA bundle mounted"
grep -A6 -- '- name: controller-ca$' "${out}/ds" >"${out}/ds-ca"
has "${out}/ds-ca" 'name: weft-ca-root$' "proxy: the bundle is ConfigMap weft-ca-root"
has "${out}/ds-ca" 'key: ca\.crt$' "proxy: only the public ca.crt"
has "${out}/ds" '--inpod$' "proxy: --inpod"
has "${out}/ds" '--inpod-socket=/var/run/weft/inpod\.sock' "proxy: in-pod socket"
has "${out}/ds" '--ca-token-file=/var/run/secrets/weft/ca-token/token' "proxy: CA token"
has "${out}/ds" '--gateway-identity=spiffe://cluster.local/ns/weft-system/sa/weft-proxy' "proxy: Gateway routes into the mesh as its own identity"
has "${out}/ds" 'fieldPath: spec\.nodeName' "proxy: NODE_NAME"
has "${out}/ds" '^ *- install$' "cni: installer"
has "${out}/ds" '--cni-bin-dir=/host/cni/bin' "cni: bin dir mount"
has "${out}/ds" 'path: /opt/cni/bin$' "cni: host bin dir /opt/cni/bin"
has "${out}/ds" 'path: /etc/cni/net.d$' "cni: host conf dir /etc/cni/net.d"
has "${out}/ds" '--kubeconfig=/var/lib/kubelet/pods/\$\(POD_UID\)/volumes/kubernetes\.io~projected/cni-kubeconfig/kubeconfig' "cni: kubeconfig host path"
has "${out}/ds" 'fieldPath: metadata\.uid' "cni: POD_UID"
has "${out}/ds" 'path: /run/netns$' "cni: host netns dir (re-handing pods to a restarted proxy)"
has "${out}/ds" 'mountPropagation: HostToContainer' "cni: sees netns mounted after it started"
hasnt "${out}/ds" 'mountPropagation: Bidirectional' "no bidirectional mount propagation"
has "${out}/ds" 'automountServiceAccountToken: false' "node: no default token"
has "${out}/ds" 'maxSurge: 1$' "node: the new pod starts before the old one stops (upgrades overlap)"
has "${out}/ds" 'maxUnavailable: 0$' "node: never a node without a proxy during an update"
hasnt "${out}/ds" 'containerPort|hostPort' "node: no (host) ports declared: they would forbid the surge"
hasnt "${out}/ds" 'privileged: true' "node: not privileged"
hasnt "${out}/ds" 'hostPID|hostIPC' "node: no host PID/IPC"
hasnt "${out}/ds" 'allowPrivilegeEscalation: true' "node: no privilege escalation"
# Exactly NET_ADMIN, SYS_ADMIN, NET_BIND_SERVICE added to the proxy, and NET_ADMIN,
# SYS_ADMIN, SYS_PTRACE to the installer (its enrolment agent), nothing else.
caps_of() { # DS CONTAINER: its added capabilities, sorted, on one line
  awk -v c="$2" '/^ *- name: / && /^        - name: / { in_c = ($3 == c) } in_c' "$1" |
    grep -A4 '^ *add:$' | grep -E '^ *- [A-Z_]+$' | tr -d ' -' | sort | tr '\n' ' '
}
if [[ "$(caps_of "${out}/ds" proxy)" == "NET_ADMIN NET_BIND_SERVICE SYS_ADMIN " ]]; then
  pass "proxy capabilities: NET_ADMIN NET_BIND_SERVICE SYS_ADMIN"
else
  fail "proxy capabilities: $(caps_of "${out}/ds" proxy)"
fi
if [[ "$(caps_of "${out}/ds" cni)" == "NET_ADMIN SYS_ADMIN SYS_PTRACE " ]]; then
  pass "installer capabilities (enrolment agent): NET_ADMIN SYS_ADMIN SYS_PTRACE"
else
  fail "installer capabilities: $(caps_of "${out}/ds" cni)"
fi
has "${out}/ds" 'path: /proc$' "installer: the host's /proc (read-only mount) for the enrolment agent"
count "${out}/ds" '^ *- ALL$' 2 "both node containers drop ALL"

doc "${d}" ConfigMap weft-cni-kubeconfig >"${out}/kc"
has "${out}/kc" 'server: https://10\.96\.0\.1:443' "cni kubeconfig: offline fallback server"
has "${out}/kc" 'certificate-authority: ca\.crt' "cni kubeconfig: relative CA"
has "${out}/kc" 'tokenFile: token' "cni kubeconfig: relative token file"

echo "== RBAC"
doc "${d}" ClusterRole weft-controller >"${out}/cr"
has "${out}/cr" 'resources: \[gatewayclasses, gateways, httproutes, grpcroutes, tlsroutes, tcproutes, udproutes, referencegrants\]' "controller reads the Gateway API kinds"
has "${out}/cr" '^ *- httproutes/status$' "controller writes route status"
has "${out}/cr" '^ *- gatewayclasses/status$' "controller writes GatewayClass status"
has "${out}/cr" 'verbs: \[patch\]' "status: patch (server-side apply) only"
has "${out}/cr" 'resources: \[services, pods, namespaces, secrets\]' "controller reads Services, Pods, Namespaces, Secrets"
has "${out}/cr" 'resources: \[endpointslices\]' "controller reads EndpointSlices"
has "${out}/cr" 'resources: \[tokenreviews\]' "controller creates TokenReviews"
has "${out}/cr" 'resources: \[configmaps\]' "controller reads ConfigMaps (Gateway parameters)"
# Verbs of the ClusterRole: list/watch everywhere, patch on */status, create only on
# tokenreviews, and create/patch/delete only on the Services and EndpointSlices exposing Gateways.
awk '/resources:/ { r = $0 } /verbs:/ { print r " => " $0 }' "${out}/cr" >"${out}/cr-verbs"
hasnt "${out}/cr-verbs" '(get|update|deletecollection|\*)' "ClusterRole: no get/update/deletecollection/*"
hasnt "${out}/cr-verbs" 'secrets.*(create|patch|update|delete)' "ClusterRole: Secrets read-only"
hasnt "${out}/cr-verbs" 'configmaps.*(create|patch|update|delete)' "ClusterRole: ConfigMaps read-only"
# Writes other than status patches (the multi-line status list prints as "resources: =>").
grep -E '(create|patch|delete)' "${out}/cr-verbs" | grep -vE 'resources: =>|/status\]' | tr -s ' ' >"${out}/cr-writes" || true
if [[ "$(tr '\n' ';' <"${out}/cr-writes")" == " resources: [services] => verbs: [create, patch, delete]; resources: [endpointslices] => verbs: [create, patch, delete]; resources: [tokenreviews] => verbs: [create];" ]]; then
  pass "ClusterRole writes: Services and EndpointSlices (create/patch/delete), TokenReviews (create), statuses (patch)"
else
  fail "ClusterRole writes: $(tr '\n' ';' <"${out}/cr-writes")"
fi
has "${out}/cr" '^ *resources: \[services/status\]$' "controller writes the load-balancer status of Gateway Services"
count "${out}/cr" 'verbs: \[create\]' 1 "ClusterRole: one create alone (TokenReviews)"
doc "${d}" Role weft-controller >"${out}/role"
has "${out}/role" 'resourceNames: \[weft-controller\]' "Role: the Lease by name"
has "${out}/role" 'resourceNames: \[weft-ca\]' "Role: the CA Secret by name"
has "${out}/role" 'resourceNames: \[weft-ca-root\]' "Role: the trust bundle ConfigMap by name"
awk '/resources:/ { r = $0 } /resourceNames:/ { n = $0 } /verbs:/ { print r " " n " => " $0; n = "" }' "${out}/role" >"${out}/role-verbs"
has "${out}/role-verbs" 'configmaps.*weft-ca-root.*verbs: \[get, update\]' "Role: get/update of weft-ca-root only"
hasnt "${out}/role-verbs" 'secrets.*update' "Role: the CA Secret is never updated"
hasnt "${out}/role" '(delete|patch|list|watch|\*)' "Role: no delete/patch/list/watch"
doc "${d}" ClusterRole weft-cni >"${out}/cni-cr"
has "${out}/cni-cr" 'resources: \[namespaces, pods\]' "weft-cni reads namespaces and pods"
has "${out}/cni-cr" 'verbs: \[get, list, watch\]' "weft-cni: get, and list/watch for the enrolment agent"
has "${out}/cni-cr" 'resources: \[events\]' "weft-cni: Events on pods it enrols"
hasnt "${out}/cni-cr" '(delete|update)' "weft-cni: no delete/update"
hasnt "${d}" '"\*"|\[\*\]|- "?\*"?$' "no wildcard anywhere"

echo "== every optional part on (ci/all-on-values.yaml)"
render all -f "${chart}/ci/all-on-values.yaml"
a="${out}/all.yaml"
count "${a}" '^kind: CustomResourceDefinition$' 12 "12 Gateway API CRDs"
count "${a}" 'helm.sh/resource-policy: keep' 12 "every CRD kept on uninstall"
count "${a}" 'gateway.networking.k8s.io/bundle-version: v1\.5\.1' 12 "CRDs are v1.5.1"
count "${a}" 'gateway.networking.k8s.io/channel: experimental' 12 "CRDs are the experimental channel"
has "${a}" 'name: httproutes\.gateway\.networking\.k8s\.io' "HTTPRoute CRD"
count "${a}" '^kind: ServiceMonitor$' 1 "ServiceMonitor"
has "${a}" 'release: prometheus' "ServiceMonitor labels"
has "${a}" 'name: weft-node-metrics' "headless Service for proxy metrics"
has "${a}" '--gateway-address-pool=10\.250\.100\.0/24' "address pool passed to the controller"
has "${a}" '--access-log' "proxy access log"
has "${a}" '--serving-name=weft-controller\.example\.internal' "extra serving names of the controller's certificate"
has "${a}" 'server: https://10\.96\.0\.1:443' "cni.apiServer"
has "${a}" 'name: regcred' "image pull secrets"
doc "${a}" GatewayClass weft >"${out}/gc-hook"
has "${out}/gc-hook" 'helm.sh/hook: post-install' "GatewayClass is a post-install hook when its CRD comes with the release"
has "${out}/gc-hook" 'meta.helm.sh/release-name: weft' "the hook GatewayClass carries release ownership (adopted on upgrade)"
render served -f "${chart}/ci/all-on-values.yaml" --api-versions gateway.networking.k8s.io/v1/GatewayClass
doc "${out}/served.yaml" GatewayClass weft >"${out}/gc-served"
hasnt "${out}/gc-served" 'helm.sh/hook' "GatewayClass is an ordinary object once the API is served"

echo "== optional parts off"
render off --set cni.enabled=false --set proxy.mesh=false --set gatewayClass.create=false \
  --set controller.podDisruptionBudget.enabled=false --set gateway.services=false
o="${out}/off.yaml"
hasnt "${o}" '--gateway-service-selector' "no Gateway Services"
doc "${o}" ClusterRole weft-controller >"${out}/cr-off"
hasnt "${out}/cr-off" 'services/status|verbs: \[create, patch, delete\]' "no Gateway Services: no write access to Services or EndpointSlices"
count "${o}" '^kind: GatewayClass$' 0 "no GatewayClass"
count "${o}" '^kind: PodDisruptionBudget$' 0 "no PodDisruptionBudget"
hasnt "${o}" 'weft-cni:dev|weft-cni-kubeconfig|name: weft-cni$' "no CNI installer, kubeconfig or RBAC"
hasnt "${o}" '--ca-token-file' "no CA token without the mesh"
hasnt "${o}" '--gateway-identity' "no gateway identity without the mesh"
has "${o}" '--controller-token-file=/var/run/secrets/weft/ca-token/token' "the config stream is authenticated without the mesh too"
has "${o}" '--controller-ca-bundle=' "the controller is verified without the mesh too"

echo "== GatewayClass parameters (gateway.serviceType)"
render params --set gateway.serviceType=NodePort
doc "${out}/params.yaml" GatewayClass weft >"${out}/gc-params"
has "${out}/gc-params" '^    kind: ConfigMap$' "the class's parametersRef is a ConfigMap"
has "${out}/gc-params" '^    namespace: weft-system$' "in the release namespace"
has "${out}/gc-params" '^    name: weft-gateway-parameters$' "named weft-gateway-parameters"
doc "${out}/params.yaml" ConfigMap weft-gateway-parameters >"${out}/cm-params"
has "${out}/cm-params" '^  service.type: NodePort$' "the parameters ConfigMap says service.type"
hasnt "${d}" 'weft-gateway-parameters' "no parameters by default"
if "${HELM}" template weft "${chart}" --set gateway.serviceType=ClusterIP >/dev/null 2>&1; then
  fail "gateway.serviceType=ClusterIP is refused"
else
  pass "gateway.serviceType=ClusterIP is refused"
fi

echo "== node-tier values (ci/node-tier-values.yaml)"
render node -f "${chart}/ci/node-tier-values.yaml"
n="${out}/node.yaml"
has "${n}" 'path: /usr/lib/cni$' "settable CNI bin dir"
has "${n}" 'path: /tmp/weft-node/node/cni/net.d$' "settable CNI conf dir"
has "${n}" '--kubeconfig=/tmp/weft-node/node/kubelet/root/pods/' "settable kubelet root dir"
has "${n}" '--inpod-socket=/tmp/weft-node/weft-run/inpod\.sock' "settable run dir"

if ((failures > 0)); then
  echo "chart test: ${failures} check(s) failed" >&2
  exit 1
fi
echo "chart test: all checks passed"
