#!/usr/bin/env bash
# The control-plane test tier: etcd + kube-apiserver + kube-controller-manager +
# kube-scheduler from the binaries build-upstream.sh caches, all bound to
# 127.0.0.1 only, state under ${WEFT_STATE:-/tmp/weft-cluster}.
#
#   control-plane.sh up [--crds]   start (idempotent; cleans up after a crash first),
#                                  wait for /readyz; --crds also installs the Gateway API CRDs
#   control-plane.sh install-crds  apply the Gateway API experimental CRDs, wait Established
#   control-plane.sh status        per-component health; tails the log of unhealthy ones
#   control-plane.sh env           print `export KUBECONFIG=...` and friends (eval it)
#   control-plane.sh down          stop exactly the PIDs `up` started, remove the state dir
#
# Ports (loopback only; override with env before `up`):
#   WEFT_APISERVER_PORT=16443 WEFT_ETCD_PORT=23790 WEFT_ETCD_PEER_PORT=23800
#   WEFT_KCM_PORT=20257 WEFT_SCHEDULER_PORT=20259
# Binaries are not built here: run build-upstream.sh first (smoke.sh does).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "${here}/lib.sh"

COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)
PKI="${WEFT_STATE}/pki"
LOGS="${WEFT_STATE}/logs"
PIDS="${WEFT_STATE}/pids"
KUBECONFIG_PATH="${WEFT_STATE}/admin.kubeconfig"
SERVICE_CIDR="${WEFT_SERVICE_CIDR:-10.96.0.0/16}"
SERVICE_IP="${WEFT_SERVICE_IP:-10.96.0.1}" # first address of SERVICE_CIDR
CLUSTER_CIDR="${WEFT_CLUSTER_CIDR:-10.244.0.0/16}"
SA_ISSUER="https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT="${WEFT_READY_TIMEOUT:-120}"
# Node tier (node.sh): run every component inside this network namespace, with
# the apiserver on WEFT_BIND_IP (an address inside the namespace) instead of 127.0.0.1.
NETNS="${WEFT_NETNS:-}"
BIND_IP="${WEFT_BIND_IP:-127.0.0.1}"
NSEXEC=()
# nsenter --net, not `ip netns exec`: the latter also makes a private mount
# namespace with a fresh /sys (no cgroup mounts), which breaks kubelet and
# hides containerd's mounts from kubelet.
if [[ -n "${NETNS}" ]]; then NSEXEC=(nsenter "--net=/var/run/netns/${NETNS}"); fi

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# Ports: taken from the state dir when a cluster exists, else from env/defaults.
load_ports() {
  if [[ -f "${WEFT_STATE}/ports" ]]; then
    # shellcheck disable=SC1091
    source "${WEFT_STATE}/ports"
  fi
  APISERVER_PORT="${APISERVER_PORT:-${WEFT_APISERVER_PORT:-16443}}"
  ETCD_PORT="${ETCD_PORT:-${WEFT_ETCD_PORT:-23790}}"
  ETCD_PEER_PORT="${ETCD_PEER_PORT:-${WEFT_ETCD_PEER_PORT:-23800}}"
  KCM_PORT="${KCM_PORT:-${WEFT_KCM_PORT:-20257}}"
  SCHEDULER_PORT="${SCHEDULER_PORT:-${WEFT_SCHEDULER_PORT:-20259}}"
  APISERVER_URL="https://${BIND_IP}:${APISERVER_PORT}"
  ETCD_URL="http://127.0.0.1:${ETCD_PORT}"
}

need_bin() {
  local b
  b="$(tool_bin "$1")"
  [[ -x "${b}" ]] || die "$1 not found at ${b}; run tests/cluster/build-upstream.sh first"
  echo "${b}"
}

# --- process bookkeeping ---------------------------------------------------
# pids/<name>.pid holds "PID STARTTIME": the start time (field 22 of
# /proc/PID/stat) guards against killing an unrelated process that reused the PID.

# proc_field PID N -> field N of /proc/PID/stat, counting from the state field (3)
# after the "(comm)" part, which may itself contain spaces.
proc_field() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  awk -v n="$(($2 - 2))" '{ print $n }' <<<"${stat}"
}
proc_starttime() { proc_field "$1" 22; }
# alive PID -> 0 when PID exists and is not a zombie waiting to be reaped
alive() { local st; st="$(proc_field "$1" 3)" && [[ -n "${st}" && "${st}" != Z ]]; }

# our_pid NAME -> prints the PID when the recorded process is still the one we started
our_pid() {
  local f="${PIDS}/$1.pid" pid start
  [[ -f "${f}" ]] || return 1
  read -r pid start <"${f}" || return 1
  [[ -n "${pid}" ]] && alive "${pid}" || return 1
  [[ "$(proc_starttime "${pid}")" == "${start}" ]] || return 1
  echo "${pid}"
}

# start_bg NAME BINARY ARGS... -> runs detached, logs to logs/NAME.log
start_bg() {
  local name="$1" pid
  shift
  mkdir -p "${LOGS}" "${PIDS}"
  # setsid: own session, so a Ctrl-C in the calling shell does not reach it.
  # 8>&-: the state lock must not be inherited by long-running children.
  setsid "${NSEXEC[@]}" "$@" >>"${LOGS}/${name}.log" 2>&1 </dev/null 8>&- &
  pid=$!
  echo "${pid} $(proc_starttime "${pid}")" >"${PIDS}/${name}.pid"
}

stop_one() {
  local name="$1" pid i
  if pid="$(our_pid "${name}")"; then
    kill -TERM "${pid}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      alive "${pid}" || break
      sleep 0.2
    done
    if alive "${pid}"; then
      log "${name} (pid ${pid}) ignored SIGTERM for 20s; sending SIGKILL"
      kill -KILL "${pid}" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        alive "${pid}" || break
        sleep 0.1
      done
    fi
    log "stopped ${name} (pid ${pid})"
  fi
  rm -f "${PIDS}/${name}.pid"
}

port_free_or_die() {
  local port="$1" what="$2" holder
  if holder="$("${NSEXEC[@]}" ss -Hltnp "sport = :${port}" 2>/dev/null)" && [[ -n "${holder}" ]]; then
    die "port ${port} (for ${what}) is already in use, not by a process this script recorded:
${holder}
stop it, or pick another port (WEFT_*_PORT, see --help)"
  fi
}

# --- health ----------------------------------------------------------------

healthy() { # NAME -> 0 when the component answers its health endpoint
  local code
  case "$1" in
    etcd) "${NSEXEC[@]}" curl -fsS --max-time 3 "${ETCD_URL}/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver)
      code="$("${NSEXEC[@]}" curl -sS --max-time 5 -o /dev/null -w '%{http_code}' --cacert "${PKI}/ca.crt" \
        --cert "${PKI}/admin.crt" --key "${PKI}/admin.key" "${APISERVER_URL}/readyz" 2>/dev/null)" || return 1
      [[ "${code}" == 200 ]]
      ;;
    # These serve self-signed certs made at start-up; /healthz is always-allowed.
    kube-controller-manager) "${NSEXEC[@]}" curl -kfsS --max-time 3 "https://127.0.0.1:${KCM_PORT}/healthz" >/dev/null 2>&1 ;;
    kube-scheduler) "${NSEXEC[@]}" curl -kfsS --max-time 3 "https://127.0.0.1:${SCHEDULER_PORT}/healthz" >/dev/null 2>&1 ;;
  esac
}

# wait_healthy NAME TIMEOUT_S -> fails early, with the log tail, if the process dies
wait_healthy() {
  local name="$1" timeout="$2" deadline
  deadline=$((SECONDS + timeout))
  until healthy "${name}"; do
    if ! our_pid "${name}" >/dev/null; then
      tail -n 30 "${LOGS}/${name}.log" >&2 || true
      die "${name} exited during start-up (log: ${LOGS}/${name}.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "${LOGS}/${name}.log" >&2 || true
      die "${name} not healthy after ${timeout}s (log: ${LOGS}/${name}.log)"
    fi
    sleep 0.5
  done
}

all_healthy() {
  local c
  for c in "${COMPONENTS[@]}"; do
    our_pid "${c}" >/dev/null && healthy "${c}" || return 1
  done
}

# --- PKI -------------------------------------------------------------------

# sign NAME SUBJECT EXT_KEY_USAGE [SAN] -> pki/NAME.{key,crt} signed by the CA (EC P-256)
sign() {
  local name="$1" subj="$2" eku="$3" san="${4:-}" ext
  ext="${PKI}/${name}.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=${eku}"
    [[ -n "${san}" ]] && echo "subjectAltName=${san}"
  } >"${ext}"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "${PKI}/${name}.key" -subj "${subj}" -out "${PKI}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 -extfile "${ext}" \
    -out "${PKI}/${name}.crt" 2>/dev/null
  rm -f "${PKI}/${name}.csr" "${ext}"
}

gen_pki() {
  mkdir -p "${PKI}"
  chmod 700 "${PKI}"
  cat >"${PKI}/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = weft-test-ca
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -config "${PKI}/ca.cnf" \
    -keyout "${PKI}/ca.key" -days 3650 -sha256 -out "${PKI}/ca.crt" 2>/dev/null
  sign apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:::1,IP:${BIND_IP},IP:${SERVICE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=weft-admin" clientAuth
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  sign controller-manager "/CN=system:kube-controller-manager" clientAuth
  sign scheduler "/CN=system:kube-scheduler" clientAuth
  # Service-account token signing key pair (RSA: what every verifier accepts).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${PKI}/sa.key" 2>/dev/null
  openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
  # A static bearer token for the same admin identity, for clients that prefer it.
  openssl rand -hex 24 >"${WEFT_STATE}/admin.token"
  echo "$(cat "${WEFT_STATE}/admin.token"),weft-admin-token,weft-admin-token,system:masters" >"${PKI}/tokens.csv"
  chmod 600 "${PKI}"/*.key "${PKI}/tokens.csv" "${WEFT_STATE}/admin.token"
}

# write_kubeconfig FILE USER_CERT_NAME
write_kubeconfig() {
  local file="$1" cert="$2"
  cat >"${file}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weft
  cluster:
    server: ${APISERVER_URL}
    certificate-authority-data: $(base64 -w0 <"${PKI}/ca.crt")
users:
- name: ${cert}
  user:
    client-certificate-data: $(base64 -w0 <"${PKI}/${cert}.crt")
    client-key-data: $(base64 -w0 <"${PKI}/${cert}.key")
contexts:
- name: weft
  context:
    cluster: weft
    user: ${cert}
current-context: weft
EOF
  chmod 600 "${file}"
}

# --- components ------------------------------------------------------------

start_etcd() {
  start_bg etcd "$(need_bin etcd)" \
    --name weft \
    --data-dir "${WEFT_STATE}/etcd" \
    --listen-client-urls "${ETCD_URL}" \
    --advertise-client-urls "${ETCD_URL}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "weft=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster-state new \
    --unsafe-no-fsync \
    --log-level warn
}

start_apiserver() {
  # A loopback advertise address is not a valid Endpoints address.
  local reconciler=lease
  [[ "${BIND_IP}" == 127.* ]] && reconciler=none
  start_bg kube-apiserver "$(need_bin kube-apiserver)" \
    --etcd-servers "${ETCD_URL}" \
    --bind-address "${BIND_IP}" \
    --advertise-address "${BIND_IP}" \
    --secure-port "${APISERVER_PORT}" \
    --endpoint-reconciler-type "${reconciler}" \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --tls-cert-file "${PKI}/apiserver.crt" \
    --tls-private-key-file "${PKI}/apiserver.key" \
    --client-ca-file "${PKI}/ca.crt" \
    --token-auth-file "${PKI}/tokens.csv" \
    --kubelet-client-certificate "${PKI}/apiserver-kubelet-client.crt" \
    --kubelet-client-key "${PKI}/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "${PKI}/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer "${SA_ISSUER}" \
    --service-account-key-file "${PKI}/sa.pub" \
    --service-account-signing-key-file "${PKI}/sa.key" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --allow-privileged=true \
    --profiling=false \
    --v=1
}

start_controller_manager() {
  local kc="${WEFT_STATE}/controller-manager.kubeconfig"
  start_bg kube-controller-manager "$(need_bin kube-controller-manager)" \
    --kubeconfig "${kc}" \
    --authentication-kubeconfig "${kc}" \
    --authorization-kubeconfig "${kc}" \
    --bind-address 127.0.0.1 \
    --secure-port "${KCM_PORT}" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "${PKI}/sa.key" \
    --root-ca-file "${PKI}/ca.crt" \
    --cluster-signing-cert-file "${PKI}/ca.crt" \
    --cluster-signing-key-file "${PKI}/ca.key" \
    --service-cluster-ip-range "${SERVICE_CIDR}" \
    --allocate-node-cidrs=true \
    --cluster-cidr "${CLUSTER_CIDR}" \
    --controllers '*,bootstrapsigner,tokencleaner' \
    --profiling=false \
    --v=1
}

start_scheduler() {
  local kc="${WEFT_STATE}/scheduler.kubeconfig"
  start_bg kube-scheduler "$(need_bin kube-scheduler)" \
    --kubeconfig "${kc}" \
    --authentication-kubeconfig "${kc}" \
    --authorization-kubeconfig "${kc}" \
    --bind-address 127.0.0.1 \
    --secure-port "${SCHEDULER_PORT}" \
    --leader-elect=false \
    --profiling=false \
    --v=1
}

up_etcd() { start_etcd && wait_healthy etcd 30; }
up_apiserver() { start_apiserver && wait_healthy kube-apiserver "${READY_TIMEOUT}"; }
up_controller_manager() { start_controller_manager && wait_healthy kube-controller-manager 60; }
up_scheduler() { start_scheduler && wait_healthy kube-scheduler 60; }

# step NAME CMD... -> runs CMD, prints how long it took
step() {
  local name="$1" start
  shift
  start="$(now_s)"
  "$@"
  log "step ${name}: $(elapsed "${start}")s"
}

# --- subcommands -----------------------------------------------------------

cmd_down() {
  local i f
  load_ports
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_one "${COMPONENTS[i]}"
  done
  # Anything still listed in pids/ (e.g. from a newer script version) is ours too.
  if [[ -d "${PIDS}" ]]; then
    for f in "${PIDS}"/*.pid; do
      [[ -e "${f}" ]] && stop_one "$(basename "${f}" .pid)"
    done
  fi
  if [[ -d "${WEFT_STATE}" ]]; then
    [[ -f "${WEFT_STATE}/.weft-cluster" ]] ||
      die "${WEFT_STATE} exists but was not made by this script (no .weft-cluster marker); not removing it"
    rm -rf "${WEFT_STATE}"
    log "removed ${WEFT_STATE}"
  fi
}

cmd_up() {
  local crds=0 total a
  for a in "$@"; do
    case "${a}" in
      --crds) crds=1 ;;
      *) die "up: unknown argument '${a}'" ;;
    esac
  done
  command -v openssl >/dev/null || die "openssl is needed"
  command -v curl >/dev/null || die "curl is needed"
  command -v ss >/dev/null || die "ss (iproute2) is needed"
  local c
  for c in "${COMPONENTS[@]}" kubectl; do need_bin "${c}" >/dev/null; done

  load_ports
  total="$(now_s)"
  if [[ -f "${WEFT_STATE}/.weft-cluster" ]] && all_healthy; then
    log "control plane already up and healthy at ${APISERVER_URL}"
  else
    if [[ -e "${WEFT_STATE}" ]]; then
      log "found leftovers in ${WEFT_STATE} (crash or partial up): cleaning up first"
      cmd_down
      unset APISERVER_PORT ETCD_PORT ETCD_PEER_PORT KCM_PORT SCHEDULER_PORT
      load_ports
    fi
    port_free_or_die "${ETCD_PORT}" "etcd client"
    port_free_or_die "${ETCD_PEER_PORT}" "etcd peer"
    port_free_or_die "${APISERVER_PORT}" kube-apiserver
    port_free_or_die "${KCM_PORT}" kube-controller-manager
    port_free_or_die "${SCHEDULER_PORT}" kube-scheduler

    mkdir -p "${WEFT_STATE}" "${LOGS}" "${PIDS}"
    touch "${WEFT_STATE}/.weft-cluster"
    cat >"${WEFT_STATE}/ports" <<EOF
APISERVER_PORT=${APISERVER_PORT}
ETCD_PORT=${ETCD_PORT}
ETCD_PEER_PORT=${ETCD_PEER_PORT}
KCM_PORT=${KCM_PORT}
SCHEDULER_PORT=${SCHEDULER_PORT}
EOF
    step pki gen_pki
    write_kubeconfig "${KUBECONFIG_PATH}" admin
    write_kubeconfig "${WEFT_STATE}/controller-manager.kubeconfig" controller-manager
    write_kubeconfig "${WEFT_STATE}/scheduler.kubeconfig" scheduler
    step etcd up_etcd
    step kube-apiserver up_apiserver
    step kube-controller-manager up_controller_manager
    step kube-scheduler up_scheduler
  fi
  if ((crds)); then cmd_install_crds; fi
  log "control plane up in $(elapsed "${total}")s"
  echo "kubeconfig: ${KUBECONFIG_PATH}"
  echo "apiserver:  ${APISERVER_URL}"
  if [[ "${WEFT_STATE}" == /tmp/weft-cluster ]]; then
    echo "use:        eval \"\$(${BASH_SOURCE[0]} env)\""
  else
    echo "use:        eval \"\$(WEFT_STATE=${WEFT_STATE} ${BASH_SOURCE[0]} env)\""
  fi
}

cmd_install_crds() {
  local dir kubectl start names
  load_ports
  [[ -f "${KUBECONFIG_PATH}" ]] || die "no cluster at ${WEFT_STATE}; run '$0 up' first"
  dir="$(gateway_api_crd_dir)"
  compgen -G "${dir}/*.yaml" >/dev/null ||
    die "no Gateway API CRDs in ${dir}; run tests/cluster/build-upstream.sh gateway-api"
  kubectl="$(need_bin kubectl)"
  start="$(now_s)"
  # Server-side apply: the HTTPRoute CRD is too big for the last-applied annotation.
  "${NSEXEC[@]}" "${kubectl}" --kubeconfig "${KUBECONFIG_PATH}" apply --server-side --force-conflicts \
    --field-manager weft-test -f "${dir}" >"${LOGS}/install-crds.log" 2>&1 || {
    cat "${LOGS}/install-crds.log" >&2
    die "applying the Gateway API CRDs from ${dir} failed"
  }
  names="$("${NSEXEC[@]}" "${kubectl}" --kubeconfig "${KUBECONFIG_PATH}" get crd -o name |
    grep -E '\.gateway\.networking\.(x-)?k8s\.io$')" || die "no Gateway API CRDs found after apply"
  # shellcheck disable=SC2086  # one argument per CRD
  "${NSEXEC[@]}" "${kubectl}" --kubeconfig "${KUBECONFIG_PATH}" wait --for condition=Established \
    --timeout 60s ${names} >>"${LOGS}/install-crds.log" 2>&1 || {
    cat "${LOGS}/install-crds.log" >&2
    die "Gateway API CRDs not Established within 60s"
  }
  log "step install-crds: $(wc -l <<<"${names}") Gateway API ${GATEWAY_API_VERSION} CRDs Established in $(elapsed "${start}")s"
}

cmd_status() {
  local c pid bad=0
  load_ports
  if [[ ! -f "${WEFT_STATE}/.weft-cluster" ]]; then
    echo "no control plane at ${WEFT_STATE} (run: $0 up)"
    return 1
  fi
  for c in "${COMPONENTS[@]}"; do
    if ! pid="$(our_pid "${c}")"; then
      printf '%-24s DOWN       (process not running)\n' "${c}"
    elif ! healthy "${c}"; then
      printf '%-24s UNHEALTHY  pid %s\n' "${c}" "${pid}"
    else
      printf '%-24s ok         pid %s\n' "${c}" "${pid}"
      continue
    fi
    bad=1
    echo "--- last 20 lines of ${LOGS}/${c}.log:"
    tail -n 20 "${LOGS}/${c}.log" 2>/dev/null || echo "(no log)"
    echo "---"
  done
  echo "kubeconfig: ${KUBECONFIG_PATH}"
  return "${bad}"
}

cmd_env() {
  load_ports
  cat <<EOF
export KUBECONFIG=${KUBECONFIG_PATH}
export WEFT_KUBECONFIG=${KUBECONFIG_PATH}
export WEFT_APISERVER=${APISERVER_URL}
export WEFT_CA_FILE=${PKI}/ca.crt
export WEFT_ADMIN_TOKEN_FILE=${WEFT_STATE}/admin.token
export WEFT_ETCD_ENDPOINT=${ETCD_URL}
export WEFT_KUBECTL=$(tool_bin kubectl)
EOF
  if [[ -n "${NETNS}" ]]; then
    echo "# the apiserver is inside network namespace ${NETNS}: run clients with 'ip netns exec ${NETNS} ...'"
    echo "export WEFT_NETNS=${NETNS}"
  fi
}

# lock_state: one up/down at a time per state dir (the lock file sits beside it).
lock_state() {
  exec 8>"${WEFT_STATE}.lock"
  flock -w 300 8 || die "another up/down on ${WEFT_STATE} has held ${WEFT_STATE}.lock for 300s"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${cmd}" in
    up)
      lock_state
      cmd_up "$@"
      ;;
    down)
      lock_state
      cmd_down
      ;;
    status) cmd_status ;;
    env) cmd_env ;;
    install-crds) cmd_install_crds ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

# node.sh sources this file for its functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
