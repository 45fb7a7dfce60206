# shellcheck shell=bash
# shellcheck disable=SC2034  # the pins are used by the scripts that source this
# Shared pins and paths for tests/cluster/*.sh. Source it; do not execute it.
#
# Every upstream binary lives at
#   ${WEFT_CACHE}/upstream/<tool>-<version>/bin/<tool>
# and the Gateway API CRDs at
#   ${WEFT_CACHE}/upstream/gateway-api-<version>/crds/*.yaml

WEFT_CACHE="${WEFT_CACHE:-${HOME}/.cache/weft}"
WEFT_STATE="${WEFT_STATE:-/tmp/weft-cluster}"

# Pins. Kubernetes must stay within what k8s-openapi's `v1_34` feature covers.
KUBE_VERSION="v1.34.10"
KUBE_STAGING_VERSION="v0.34.10"
ETCD_VERSION="v3.6.16"
COREDNS_VERSION="v1.12.4"
HELM_VERSION="v3.19.0"
GATEWAY_API_VERSION="v1.5.1"

UPSTREAM_DIR="${WEFT_CACHE}/upstream"

# tool_version TOOL -> the pinned version of TOOL
tool_version() {
  case "$1" in
    etcd | etcdctl) echo "${ETCD_VERSION}" ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl | kubelet | kube-proxy)
      echo "${KUBE_VERSION}"
      ;;
    coredns) echo "${COREDNS_VERSION}" ;;
    helm) echo "${HELM_VERSION}" ;;
    gateway-api) echo "${GATEWAY_API_VERSION}" ;;
    *)
      echo "unknown tool: $1" >&2
      return 1
      ;;
  esac
}

# tool_dir TOOL -> ${UPSTREAM_DIR}/<tool>-<version> (etcdctl lives with etcd)
tool_dir() {
  local tool="$1" version
  version="$(tool_version "${tool}")" || return 1
  [[ "${tool}" == etcdctl ]] && tool=etcd
  echo "${UPSTREAM_DIR}/${tool}-${version}"
}

# tool_bin TOOL -> absolute path of the cached binary
tool_bin() {
  local dir
  dir="$(tool_dir "$1")" || return 1
  echo "${dir}/bin/$1"
}

gateway_api_crd_dir() {
  echo "${UPSTREAM_DIR}/gateway-api-${GATEWAY_API_VERSION}/crds"
}

# now_s -> seconds since the epoch with milliseconds
now_s() { date +%s.%3N; }

# elapsed START -> seconds since START, one decimal
elapsed() { awk -v s="$1" -v e="$(now_s)" 'BEGIN { printf "%.1f", e - s }'; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
