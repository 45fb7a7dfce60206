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

# Images the Gateway API v1.5.1 conformance manifests name (tests/cluster/images.sh
# builds them; the tags must match the suite's YAML exactly, since nothing is pulled).
ECHO_BASIC_IMAGE="gcr.io/k8s-staging-gateway-api/echo-basic:v20260204-monthly-2026.01-60-g28382302"
# echo-advanced is Istio's test app image gcr.io/istio-release/app:1.21.2
# (docker/Dockerfile.echo-advanced). The module istio.io/istio has no semver
# tags and the proxy refuses the query "1.21.2": pin the tag's commit.
ECHO_ADVANCED_IMAGE="gcr.io/k8s-staging-gateway-api/echo-advanced:v20240412-v1.0.0-394-g40c666fd"
ISTIO_VERSION="1.21.2"
ISTIO_MODULE_VERSION="v0.0.0-20240418224740-ed90e14d3473" # tag 1.21.2 = commit ed90e14d3473bc3fe54f98298eb16664002d14d1
# base/manifests.yaml runs CoreDNS v1.12.2 for the UDPRoute tests; our v1.12.4 binary stands in.
CONFORMANCE_COREDNS_IMAGE="registry.k8s.io/coredns/coredns:v1.12.2"

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

# --- Go builds of upstream modules (build-upstream.sh, images.sh) --------------

SRC_DIR="${UPSTREAM_DIR}/src"        # generated wrapper modules
BUILD_LOG_DIR="${UPSTREAM_DIR}/logs" # go build output of the last build of each binary

# go_env: the environment of every upstream Go build. Caches outside the
# checkout, no cgo, the local toolchain only (never a download of another Go).
go_env() {
  command -v go >/dev/null || die "go is not on PATH (Go >= 1.25 is needed)"
  export GOPATH="${WEFT_CACHE}/go/path"
  export GOMODCACHE="${WEFT_CACHE}/go/mod"
  export GOCACHE="${WEFT_CACHE}/go/cache"
  export GOFLAGS="-buildvcs=false"
  export GOTOOLCHAIN=local
  export CGO_ENABLED=0
  export GO111MODULE=on
  mkdir -p "${GOPATH}" "${GOMODCACHE}" "${GOCACHE}" "${SRC_DIR}" "${BUILD_LOG_DIR}"
}

# json_field FIELD < `go mod download -json` output
json_field() { sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" | head -n1; }

# mod_info MODULE@VERSION -> caches the `go mod download -json` output and prints it
mod_info() {
  local out
  # Run outside any module so the global GOFLAGS apply cleanly.
  out="$(cd / && go mod download -json "$1")" || die "go mod download $1 failed:
${out}"
  if grep -q '"Error"' <<<"${out}"; then
    die "go mod download $1: $(json_field Error <<<"${out}")"
  fi
  printf '%s\n' "${out}"
}

# ensure_wrapper NAME GOMOD_CONTENT -> prints the wrapper module dir. The go.mod
# is (re)written only when the seed changes, so go.sum is kept between runs.
ensure_wrapper() {
  local content="$2" dir="${SRC_DIR}/$1"
  mkdir -p "${dir}"
  if [[ ! -f "${dir}/go.mod.seed" ]] || [[ "$(cat "${dir}/go.mod.seed")" != "${content}" ]]; then
    printf '%s\n' "${content}" >"${dir}/go.mod.seed"
    printf '%s\n' "${content}" >"${dir}/go.mod"
    rm -f "${dir}/go.sum"
    log "wrote wrapper module ${dir}/go.mod"
  fi
  echo "${dir}"
}

# go_build WRAPPER_DIR PACKAGE OUT LDFLAGS
go_build() {
  local wdir="$1" pkg="$2" out="$3" ldflags="$4" tmp logf
  mkdir -p "$(dirname "${out}")"
  tmp="${out}.tmp.$$"
  logf="${BUILD_LOG_DIR}/$(basename "${out}").log"
  if ! (cd "${wdir}" && nice -n 10 go build -mod=mod -trimpath -ldflags "${ldflags}" -o "${tmp}" "${pkg}") >"${logf}" 2>&1; then
    rm -f "${tmp}"
    tail -n 40 "${logf}" >&2
    die "go build ${pkg} failed (full log: ${logf})"
  fi
  mv -f "${tmp}" "${out}"
}

# now_s -> seconds since the epoch with milliseconds
now_s() { date +%s.%3N; }

# elapsed START -> seconds since START, one decimal
elapsed() { awk -v s="$1" -v e="$(now_s)" 'BEGIN { printf "%.1f", e - s }'; }

# oci_image NAME ROOTFS_DIR OUT_TAR ENTRYPOINT_JSON [EXTRA_CONFIG_JSON]
#   -> a single-layer OCI image archive (oci-layout + index.json + blobs) that
#   `ctr images import` names NAME. No tool needed beyond tar and sha256sum; the
#   layer is reproducible (sorted, mtime 0, root-owned), so the same rootfs
#   gives the same digests. EXTRA_CONFIG_JSON adds fields to the image config,
#   e.g. '"User":"1338","WorkingDir":"/"'.
oci_image() {
  local name="$1" rootfs="$2" out="$3" entry="$4" extra="${5:-}" work layer ldig lsize cfg cdig csize man mdig msize
  work="$(mktemp -d "$(dirname "${out}")/.img.XXXXXX")"
  mkdir -p "${work}/blobs/sha256"
  layer="${work}/layer.tar"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${rootfs}" -cf "${layer}" .
  ldig="$(sha256sum "${layer}" | cut -d' ' -f1)"
  lsize="$(stat -c %s "${layer}")"
  mv "${layer}" "${work}/blobs/sha256/${ldig}"
  cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{\"Entrypoint\":${entry},\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"]${extra:+,${extra}}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:${ldig}\"]}}"
  cdig="$(printf '%s' "${cfg}" | sha256sum | cut -d' ' -f1)"
  csize="$(printf '%s' "${cfg}" | wc -c)"
  printf '%s' "${cfg}" >"${work}/blobs/sha256/${cdig}"
  man="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:${cdig}\",\"size\":${csize}},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:${ldig}\",\"size\":${lsize}}]}"
  mdig="$(printf '%s' "${man}" | sha256sum | cut -d' ' -f1)"
  msize="$(printf '%s' "${man}" | wc -c)"
  printf '%s' "${man}" >"${work}/blobs/sha256/${mdig}"
  printf '{"imageLayoutVersion":"1.0.0"}' >"${work}/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${mdig}" "${msize}" "${name}" "${name##*:}" >"${work}/index.json"
  tar -C "${work}" -cf "${out}.tmp" oci-layout index.json blobs
  mv -f "${out}.tmp" "${out}"
  rm -rf "${work}"
}

# ctr_import SOCKET LOGFILE ARCHIVE... -> `ctr -n k8s.io images import` each archive
# into the containerd listening on SOCKET (the node tier's), log in LOGFILE.
ctr_import() {
  local sock="$1" logf="$2" a
  shift 2
  for a in "$@"; do
    ctr --address "${sock}" -n k8s.io images import "${a}" >>"${logf}" 2>&1 || {
      tail -n 20 "${logf}" >&2
      die "ctr images import ${a} failed (containerd ${sock})"
    }
  done
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
