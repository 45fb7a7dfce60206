#!/usr/bin/env bash
# CI smoke test of the control-plane tier: build (or reuse) the upstream
# binaries, bring etcd + kube-apiserver + controller-manager + scheduler up,
# install the Gateway API CRDs, create a namespace and an HTTPRoute with kubectl,
# read it back, check that CRD validation rejects a bad route, tear down.
# Exits non-zero on any failure (after printing `control-plane.sh status`).
#
# Uses its own state dir and ports so it never touches a developer's
# `control-plane.sh up` cluster: WEFT_STATE=/tmp/weft-smoke, apiserver :16543.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export WEFT_STATE="${WEFT_STATE:-/tmp/weft-smoke}"
export WEFT_APISERVER_PORT="${WEFT_APISERVER_PORT:-16543}"
export WEFT_ETCD_PORT="${WEFT_ETCD_PORT:-23890}"
export WEFT_ETCD_PEER_PORT="${WEFT_ETCD_PEER_PORT:-23900}"
export WEFT_KCM_PORT="${WEFT_KCM_PORT:-20357}"
export WEFT_SCHEDULER_PORT="${WEFT_SCHEDULER_PORT:-20359}"
# shellcheck source=lib.sh
source "${here}/lib.sh"

CP="${here}/control-plane.sh"
NS=weft-smoke
total="$(now_s)"

on_exit() {
  local rc=$?
  if ((rc != 0)); then
    echo "smoke: FAILED (exit ${rc}); control-plane status:" >&2
    "${CP}" status >&2 || true
  fi
  "${CP}" down >&2 || echo "smoke: teardown failed" >&2
  if ((rc == 0)); then
    echo "smoke: PASSED in $(elapsed "${total}")s"
  fi
  exit "${rc}"
}

start="$(now_s)"
"${here}/build-upstream.sh"
log "smoke: build-upstream $(elapsed "${start}")s"

trap on_exit EXIT
"${CP}" up --crds
eval "$("${CP}" env)"
k() { "${WEFT_KUBECTL}" "$@"; }

start="$(now_s)"
k version
k create namespace "${NS}"

# The controller-manager's serviceaccount controller must fill the namespace.
deadline=$((SECONDS + 60))
until k -n "${NS}" get serviceaccount default >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "no default ServiceAccount in ${NS} after 60s: kube-controller-manager is not working"
  sleep 0.5
done
log "smoke: controller-manager created ${NS}/default ServiceAccount"

k apply -f - <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: smoke
  namespace: ${NS}
spec:
  parentRefs:
  - name: weft-gateway
  hostnames:
  - smoke.weft.test
  rules:
  - matches:
    - path:
        value: /api
    backendRefs:
    - name: echo
      port: 8080
EOF

got="$(k -n "${NS}" get httproute smoke -o jsonpath='{.spec.hostnames[0]} {.spec.rules[0].matches[0].path.type} {.spec.rules[0].backendRefs[0].port}')"
echo "read back: ${got}"
# path.type is defaulted by the CRD schema, so this also proves the schema is live.
[[ "${got}" == "smoke.weft.test PathPrefix 8080" ]] ||
  die "HTTPRoute read back as '${got}', expected 'smoke.weft.test PathPrefix 8080'"
k -n "${NS}" get httproute smoke

# CEL validation from the CRD must reject a relative path.
if out="$(k apply --dry-run=server -f - 2>&1 <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: smoke-bad
  namespace: ${NS}
spec:
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: relative
EOF
)"; then
  die "an HTTPRoute with a relative path was accepted: ${out}"
fi
echo "rejected as expected: ${out}"
log "smoke: kubectl checks $(elapsed "${start}")s"
