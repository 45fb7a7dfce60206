#!/usr/bin/env bash
# Images without a registry (issue 7 §2): every image the Helm chart and the
# Gateway API conformance suite run, built here from sources and binaries and
# imported into the node tier's containerd (namespace k8s.io), so kubelet never
# pulls (pods use imagePullPolicy IfNotPresent).
#
#   images.sh build [IMAGE...]    build or reuse the archives (default: all)
#   images.sh import [IMAGE...]   ctr-import the built archives into the running
#                                 node tier (node.sh up); default: all, each must exist
#   images.sh import --built      import whichever archives exist (what node.sh up runs)
#   images.sh list                each image, its archive, built or not
#
# IMAGE: echo-basic echo-advanced coredns-conformance weft-controller weft-proxy
#        weft-cni, or the groups conformance (the first three) and weft (the last three).
#
# echo-basic and echo-advanced are Go builds of upstream modules, cached with a
# stamp in ${WEFT_CACHE}/upstream/<name>-<version>/ (a second build is instant).
# Weft's images are made from ${CARGO_TARGET_DIR:-target}/<profile>/weft-* every
# time (cargo build when a binary is missing); profile WEFT_BIN_PROFILE (release;
# CI uses debug, the binaries its tests already built); tag WEFT_IMAGE_TAG (dev).
# Import talks to ${WEFT_STATE:-/tmp/weft-node}/node/containerd/containerd.sock.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export WEFT_STATE="${WEFT_STATE:-/tmp/weft-node}"
# shellcheck source=lib.sh
source "${here}/lib.sh"

REPO_ROOT="$(cd "${here}/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
[[ "${TARGET_DIR}" == /* ]] || TARGET_DIR="${REPO_ROOT}/${TARGET_DIR}"
WEFT_IMAGE_TAG="${WEFT_IMAGE_TAG:-dev}"
WEFT_BIN_PROFILE="${WEFT_BIN_PROFILE:-release}"
case "${WEFT_BIN_PROFILE}" in
  release) PROFILE_FLAG=(--release) ;;
  debug) PROFILE_FLAG=() ;;
  *) die "WEFT_BIN_PROFILE must be release or debug, not '${WEFT_BIN_PROFILE}'" ;;
esac
BIN_DIR="${TARGET_DIR}/${WEFT_BIN_PROFILE}"
WEFT_IMAGE_REPO="weft.local"
WEFT_IMAGES_DIR="${TARGET_DIR}/images"
CTRD_SOCK="${WEFT_STATE}/node/containerd/containerd.sock"

ECHO_BASIC_DIR="${UPSTREAM_DIR}/echo-basic-${GATEWAY_API_VERSION}"
ECHO_ADVANCED_DIR="${UPSTREAM_DIR}/echo-advanced-${ISTIO_VERSION}"
ALL_IMAGES=(echo-basic echo-advanced coredns-conformance weft-controller weft-proxy weft-cni)

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# image_name ID -> the reference the manifests use
image_name() {
  case "$1" in
    echo-basic) echo "${ECHO_BASIC_IMAGE}" ;;
    echo-advanced) echo "${ECHO_ADVANCED_IMAGE}" ;;
    coredns-conformance) echo "${CONFORMANCE_COREDNS_IMAGE}" ;;
    weft-controller | weft-proxy | weft-cni) echo "${WEFT_IMAGE_REPO}/$1:${WEFT_IMAGE_TAG}" ;;
    *) die "unknown image '$1' (known: ${ALL_IMAGES[*]})" ;;
  esac
}

# image_archive ID -> the OCI archive `build` writes
image_archive() {
  case "$1" in
    echo-basic) echo "${ECHO_BASIC_DIR}/image.tar" ;;
    echo-advanced) echo "${ECHO_ADVANCED_DIR}/image.tar" ;;
    coredns-conformance) echo "$(tool_dir coredns)/image-${CONFORMANCE_COREDNS_IMAGE##*:}.tar" ;;
    weft-controller | weft-proxy | weft-cni) echo "${WEFT_IMAGES_DIR}/$1.tar" ;;
    *) die "unknown image '$1' (known: ${ALL_IMAGES[*]})" ;;
  esac
}

# archive_names TAR -> the names an archive carries (what ctr import will create)
archive_names() {
  tar -xOf "$1" index.json | grep -o '"io.containerd.image.name":"[^"]*"' | cut -d'"' -f4
}

# ids ARGS... -> image ids, one a line: groups resolved, duplicates dropped
ids() {
  local list
  list="$(expand "$@")" || exit 1
  printf '%s\n' "${list}"
}

expand() {
  local a seen=" "
  local -a out=()
  for a in "$@"; do
    case "${a}" in
      all) out+=("${ALL_IMAGES[@]}") ;;
      conformance) out+=(echo-basic echo-advanced coredns-conformance) ;;
      weft) out+=(weft-controller weft-proxy weft-cni) ;;
      *)
        image_name "${a}" >/dev/null
        out+=("${a}")
        ;;
    esac
  done
  ((${#out[@]} > 0)) || out=("${ALL_IMAGES[@]}")
  for a in "${out[@]}"; do
    [[ "${seen}" == *" ${a} "* ]] && continue
    seen+="${a} "
    echo "${a}"
  done
}

# --- rootfs helpers ---------------------------------------------------------------

# base_rootfs DIR USER UID -> /etc/passwd, /etc/group, /tmp and a home for USER
# (oci_image makes every file root-owned; the images only read their files)
base_rootfs() {
  local r="$1" user="$2" uid="$3"
  mkdir -p "${r}/etc" "${r}/tmp" "${r}/home/${user}"
  chmod 1777 "${r}/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:/home/%s:/sbin/nologin\n' \
    "${user}" "${uid}" "${uid}" "${user}" "${user}" >"${r}/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "${user}" "${uid}" >"${r}/etc/group"
}

# copy_libs BINARY ROOTFS -> the shared libraries ldd lists and the loader, at
# the same paths inside ROOTFS (symlinks resolved)
copy_libs() {
  local bin="$1" r="$2" lib out
  out="$(ldd "${bin}" 2>&1)" || die "ldd ${bin} failed: ${out}"
  [[ "${out}" == *"not a dynamic executable"* ]] && return 0
  while read -r lib; do
    mkdir -p "${r}$(dirname "${lib}")"
    cp -L "${lib}" "${r}${lib}"
  done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"${out}")
}

# --- echo-basic: sigs.k8s.io/gateway-api/conformance/echo-basic ------------------

stamp_line() { # ID VERSION -> the stamp's first line; a change of name or version rebuilds
  echo "$1 $2 $(image_name "$1")"
}

cached() { # ID DIR VERSION -> 0 when DIR holds a built image for VERSION
  [[ -f "$2/image.tar" && -f "$2/stamp" && "$(head -n1 "$2/stamp")" == "$(stamp_line "$1" "$3")" ]]
}

write_image_stamp() { # ID DIR VERSION EXTRA...
  local id="$1" dir="$2" version="$3"
  shift 3
  {
    stamp_line "${id}" "${version}"
    echo "go $(go env GOVERSION)"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '%s\n' "$@"
  } >"${dir}/stamp"
}

build_echo_basic() {
  local content wdir r
  # The conformance module's go.mod replaces sigs.k8s.io/gateway-api with ../,
  # which does not exist for a dependency: the wrapper requires both modules.
  content="// Generated by tests/cluster/images.sh; do not edit.
module weft.local/upstream/echo-basic

go 1.25.0

require (
	sigs.k8s.io/gateway-api ${GATEWAY_API_VERSION}
	sigs.k8s.io/gateway-api/conformance ${GATEWAY_API_VERSION}
)"
  wdir="$(ensure_wrapper "echo-basic-${GATEWAY_API_VERSION}" "${content}")"
  # As docker/Dockerfile.echo-basic: -trimpath -ldflags "-buildid= -s -w".
  go_build "${wdir}" sigs.k8s.io/gateway-api/conformance/echo-basic "${ECHO_BASIC_DIR}/bin/echo-basic" "-buildid= -s -w"
  # Layout of gcr.io/distroless/static:nonroot + the binary at /echo-basic.
  r="${ECHO_BASIC_DIR}/rootfs"
  rm -rf "${r}"
  base_rootfs "${r}" nonroot 65532
  cp "${ECHO_BASIC_DIR}/bin/echo-basic" "${r}/echo-basic"
  oci_image "${ECHO_BASIC_IMAGE}" "${r}" "${ECHO_BASIC_DIR}/image.tar" '["/echo-basic"]' '"User":"65532:65532","WorkingDir":"/"'
  rm -rf "${r}"
  write_image_stamp echo-basic "${ECHO_BASIC_DIR}" "${GATEWAY_API_VERSION}" \
    "modules sigs.k8s.io/gateway-api{,/conformance}@${GATEWAY_API_VERSION}, package sigs.k8s.io/gateway-api/conformance/echo-basic"
}

# --- echo-advanced: Istio's echo app (gcr.io/istio-release/app:1.21.2) -------------

build_echo_advanced() {
  local info gomod moddir replaces content wdir r ldflags commit p
  info="$(mod_info "istio.io/istio@${ISTIO_MODULE_VERSION}")"
  gomod="$(json_field GoMod <<<"${info}")"
  moddir="$(json_field Dir <<<"${info}")"
  [[ -f "${gomod}" && -d "${moddir}" ]] || die "istio.io/istio@${ISTIO_MODULE_VERSION}: no go.mod or source dir"
  commit="$(json_field Hash <<<"${info}")"
  # A dependency's replace directives do not apply; Istio's one-line replaces
  # (github.com/imdario/mergo => v0.3.5, for client-go) are copied into the wrapper.
  replaces="$(sed -n 's/^replace[[:space:]]\{1,\}\(.*=>.*\)$/replace \1/p' "${gomod}")"
  content="// Generated by tests/cluster/images.sh; do not edit.
module weft.local/upstream/istio

go 1.21

require istio.io/istio ${ISTIO_MODULE_VERSION}

${replaces}"
  wdir="$(ensure_wrapper "istio-${ISTIO_VERSION}" "${content}")"
  ldflags="-s -w"
  for p in buildVersion:"${ISTIO_VERSION}" buildTag:"${ISTIO_VERSION}" buildStatus:Clean buildGitRevision:"${commit:-unknown}"; do
    ldflags+=" -X istio.io/istio/pkg/version.${p%%:*}=${p#*:}"
  done
  go_build "${wdir}" istio.io/istio/pkg/test/echo/cmd/server "${ECHO_ADVANCED_DIR}/bin/server" "${ldflags}"
  go_build "${wdir}" istio.io/istio/pkg/test/echo/cmd/client "${ECHO_ADVANCED_DIR}/bin/client" "${ldflags}"
  # Istio's pkg/test/echo/docker/Dockerfile.app: client and server in
  # /usr/local/bin, tests/testdata/certs/cert.{crt,key} at /, user 1338
  # ("application"), entrypoint the server. The suite execs `client` in the pod.
  r="${ECHO_ADVANCED_DIR}/rootfs"
  rm -rf "${r}"
  base_rootfs "${r}" application 1338
  mkdir -p "${r}/usr/local/bin"
  cp "${ECHO_ADVANCED_DIR}/bin/server" "${ECHO_ADVANCED_DIR}/bin/client" "${r}/usr/local/bin/"
  cp "${moddir}/tests/testdata/certs/cert.crt" "${r}/cert.crt"
  cp "${moddir}/tests/testdata/certs/cert.key" "${r}/cert.key"
  chmod 0644 "${r}/cert.crt" "${r}/cert.key"
  oci_image "${ECHO_ADVANCED_IMAGE}" "${r}" "${ECHO_ADVANCED_DIR}/image.tar" '["/usr/local/bin/server"]' '"User":"1338","WorkingDir":"/"'
  rm -rf "${r}"
  write_image_stamp echo-advanced "${ECHO_ADVANCED_DIR}" "${ISTIO_VERSION}" \
    "module istio.io/istio@${ISTIO_MODULE_VERSION} commit=${commit:-unknown}" \
    "packages istio.io/istio/pkg/test/echo/cmd/{server,client}"
}

# --- CoreDNS under the conformance suite's name ------------------------------------

build_coredns_conformance() {
  local bin out r
  bin="$(tool_bin coredns)"
  out="$(image_archive coredns-conformance)"
  r="$(dirname "${out}")/rootfs"
  rm -rf "${r}"
  mkdir -p "${r}"
  cp "${bin}" "${r}/coredns"
  # Same rootfs and config as node.sh's ${COREDNS_VERSION} image: same digests.
  oci_image "${CONFORMANCE_COREDNS_IMAGE}" "${r}" "${out}" '["/coredns"]'
  rm -rf "${r}"
}

# --- Weft's images -------------------------------------------------------------------

ensure_weft_binaries() {
  local b missing=0
  for b in weft-controller weft-proxy weft-cni; do
    [[ -x "${BIN_DIR}/${b}" ]] || missing=1
  done
  ((missing == 0)) && return 0
  command -v cargo >/dev/null || die "weft binaries missing in ${BIN_DIR} and cargo not found"
  log "weft binaries missing in ${BIN_DIR}: cargo build ${PROFILE_FLAG[*]} (release: 10-25 min here)"
  (cd "${REPO_ROOT}" && nice -n 10 cargo build "${PROFILE_FLAG[@]}" -p mesh-controller -p mesh-proxy -p cni-plugin) ||
    die "cargo build ${PROFILE_FLAG[*]} failed"
}

build_weft() { # weft-controller | weft-proxy | weft-cni
  local id="$1" bin out r
  bin="${BIN_DIR}/${id}"
  out="$(image_archive "${id}")"
  mkdir -p "${WEFT_IMAGES_DIR}"
  r="${WEFT_IMAGES_DIR}/${id}-rootfs"
  rm -rf "${r}"
  mkdir -p "${r}/usr/local/bin" "${r}/etc" "${r}/tmp"
  chmod 1777 "${r}/tmp"
  cp "${bin}" "${r}/usr/local/bin/${id}"
  # A debug build carries ~10x its code in DWARF; the image needs none of it (a backtrace still
  # names functions from the symbol table).
  if [[ "${WEFT_BIN_PROFILE}" == debug ]] && command -v objcopy >/dev/null; then
    objcopy --strip-debug "${r}/usr/local/bin/${id}"
  fi
  copy_libs "${bin}" "${r}"
  if [[ "${id}" == weft-cni ]]; then
    # The installer's enrolment agent installs a running pod's rules itself (cni-plugin's
    # agent.rs), with nft as the CNI plugin does on the host (init/src/nft.rs).
    local nft
    nft="$(command -v nft || echo /usr/sbin/nft)"
    [[ -x "${nft}" ]] || die "nft is missing (apt-get install nftables): the weft-cni image needs it"
    mkdir -p "${r}/usr/sbin"
    cp -L "${nft}" "${r}/usr/sbin/nft"
    copy_libs "${nft}" "${r}"
    # And the pod's return route for kept source addresses with ip (init/src/route.rs).
    local ip
    ip="$(command -v ip || echo /usr/sbin/ip)"
    [[ -x "${ip}" ]] || die "ip is missing (apt-get install iproute2): the weft-cni image needs it"
    cp -L "${ip}" "${r}/usr/sbin/ip"
    copy_libs "${ip}" "${r}"
  fi
  oci_image "$(image_name "${id}")" "${r}" "${out}" "[\"/usr/local/bin/${id}\"]"
  rm -rf "${r}"
}

# --- subcommands -----------------------------------------------------------------------

declare -a SUMMARY=()

build_one() {
  local id="$1" start status=built secs
  start="$(now_s)"
  case "${id}" in
    echo-basic)
      if cached echo-basic "${ECHO_BASIC_DIR}" "${GATEWAY_API_VERSION}"; then status=cached; else
        log "echo-basic (gateway-api ${GATEWAY_API_VERSION}): building (log: ${BUILD_LOG_DIR}/echo-basic.log)"
        build_echo_basic
      fi
      ;;
    echo-advanced)
      if cached echo-advanced "${ECHO_ADVANCED_DIR}" "${ISTIO_VERSION}"; then status=cached; else
        log "echo-advanced (istio ${ISTIO_VERSION}): building (logs: ${BUILD_LOG_DIR}/{server,client}.log)"
        build_echo_advanced
      fi
      ;;
    coredns-conformance)
      local out
      out="$(image_archive coredns-conformance)"
      if [[ -f "${out}" && "${out}" -nt "$(tool_bin coredns)" ]] &&
        [[ "$(archive_names "${out}")" == "${CONFORMANCE_COREDNS_IMAGE}" ]]; then status=cached; else
        build_coredns_conformance
      fi
      ;;
    weft-*) build_weft "${id}" ;;
  esac
  secs="$(elapsed "${start}")"
  log "${id}: ${status} in ${secs}s"
  SUMMARY+=("$(printf '%-20s %-7s %7ss  %s' "${id}" "${status}" "${secs}" "$(image_name "${id}")")")
}

cmd_build() {
  local id total
  local -a ids
  local list
  list="$(ids "$@")" || exit 1
  mapfile -t ids <<<"${list}"
  total="$(now_s)"
  # Prerequisites that take their own lock, before ours.
  if [[ " ${ids[*]} " == *" coredns-conformance "* && ! -x "$(tool_bin coredns)" ]]; then
    "${here}/build-upstream.sh" coredns
  fi
  if [[ " ${ids[*]} " == *" weft-"* ]]; then ensure_weft_binaries; fi
  if [[ " ${ids[*]} " == *" echo-"* ]]; then go_env; fi
  mkdir -p "${UPSTREAM_DIR}"
  # One upstream build at a time on this machine (shared with build-upstream.sh).
  exec 9>"${UPSTREAM_DIR}/.build.lock"
  if ! flock -n 9; then
    log "another build holds ${UPSTREAM_DIR}/.build.lock; waiting (max 60 min)"
    flock -w 3600 9 || die "timed out waiting for ${UPSTREAM_DIR}/.build.lock"
  fi
  for id in "${ids[@]}"; do build_one "${id}"; done
  exec 9>&-
  printf '\n%-20s %-7s %8s  %s\n' IMAGE STATUS TIME NAME
  printf '%s\n' "${SUMMARY[@]}"
  printf 'total %ss\n' "$(elapsed "${total}")"
}

cmd_import() {
  local only_built=0 a id logf start list
  local -a args=() archives=()
  for a in "$@"; do
    if [[ "${a}" == --built ]]; then only_built=1; else args+=("${a}"); fi
  done
  list="$(ids "${args[@]}")" || exit 1
  [[ -S "${CTRD_SOCK}" ]] || die "no containerd at ${CTRD_SOCK}: is the node tier up? (tests/cluster/node.sh up)"
  while read -r id; do
    a="$(image_archive "${id}")"
    if [[ -f "${a}" ]]; then
      archives+=("${a}")
    elif ((only_built == 0)); then
      die "${id} is not built (${a}); run tests/cluster/images.sh build ${id}"
    fi
  done <<<"${list}"
  if ((${#archives[@]} == 0)); then
    log "no images built yet (tests/cluster/images.sh build): nothing to import"
    return 0
  fi
  logf="${WEFT_STATE}/logs/images.log"
  [[ -d "${WEFT_STATE}/logs" ]] || logf="$(mktemp /tmp/weft-images-import.XXXXXX)"
  start="$(now_s)"
  for a in "${archives[@]}"; do
    ctr_import "${CTRD_SOCK}" "${logf}" "${a}"
    log "imported $(archive_names "${a}" | tr '\n' ' ')($(du -h "${a}" | cut -f1))"
  done
  log "imported ${#archives[@]} image(s) in $(elapsed "${start}")s"
}

cmd_list() {
  local id a list
  list="$(ids "$@")" || exit 1
  printf '%-20s %-6s %-8s %s\n' IMAGE BUILT SIZE 'NAME (ARCHIVE)'
  while read -r id; do
    a="$(image_archive "${id}")"
    if [[ -f "${a}" ]]; then
      printf '%-20s %-6s %-8s %s (%s)\n' "${id}" yes "$(du -h "${a}" | cut -f1)" "$(archive_names "${a}" | tr '\n' ' ')" "${a}"
    else
      printf '%-20s %-6s %-8s %s (%s)\n' "${id}" no - "$(image_name "${id}")" "${a}"
    fi
  done <<<"${list}"
}

main() {
  local cmd="${1:-}"
  (($# > 0)) && shift
  case "${cmd}" in
    build) cmd_build "$@" ;;
    import)
      ((EUID == 0)) || die "import needs root (the node tier's containerd socket)"
      cmd_import "$@"
      ;;
    list) cmd_list "$@" ;;
    -h | --help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
