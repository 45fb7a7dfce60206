#!/usr/bin/env bash
# The node tier (issue 7 §3): a single-node cluster inside a network namespace
# this script creates. Needs root.
#
#   node.sh up       netns + control plane (control-plane.sh in the netns) +
#                    containerd + kubelet + kube-proxy + CoreDNS; waits until the node is
#                    Ready, CoreDNS answers and a pod reaches a Service by DNS name
#   node.sh status   per-component health, log tails of unhealthy ones
#   node.sh env      exports (clients must run under `ip netns exec $WEFT_NETNS`)
#   node.sh down     stops every recorded PID, removes pod sandboxes, the netns and the state
#
# Inside netns ${WEFT_NETNS:-weft-node}: veth weft0 (peer also in the netns) with the
# node IP 10.250.0.1/24 and the default route (so nothing can leave), bridge cni0 with
# pods in 10.244.0.0/24, services in 10.96.0.0/16, cluster DNS 10.96.0.10.
# Containerd, runc, CNI plugins, nftables, conntrack come from Debian; kubelet,
# kube-proxy, coredns from build-upstream.sh. Images are built locally and
# imported into containerd's k8s.io namespace; nothing is pulled. `up` also
# imports whatever tests/cluster/images.sh has built (`images.sh import` does it
# again later, e.g. after a rebuild of Weft's binaries).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export WEFT_STATE="${WEFT_STATE:-/tmp/weft-node}"
export WEFT_NETNS="${WEFT_NETNS:-weft-node}"
export WEFT_BIND_IP="${WEFT_NODE_IP:-10.250.0.1}"
# shellcheck source=control-plane.sh
source "${here}/control-plane.sh"

NODE_NAME=weft-node
NODE_IP="${WEFT_BIND_IP}"
POD_SUBNET=10.244.0.0/24 # the first /24 the controller-manager allocates from CLUSTER_CIDR
DNS_IP=10.96.0.10
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
COREDNS_IMAGE="registry.k8s.io/coredns/coredns:${COREDNS_VERSION}"
BUSYBOX_IMAGE=weft.local/busybox:1.35
NODE="${WEFT_STATE}/node"
CTRD_SOCK="${NODE}/containerd/containerd.sock"
NODE_COMPONENTS=(containerd kubelet kube-proxy)

nsx() { nsenter "--net=/var/run/netns/${WEFT_NETNS}" "$@"; }
kc() { nsx "$(need_bin kubectl)" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }
ctr_() { ctr --address "${CTRD_SOCK}" -n k8s.io "$@"; }

preflight() {
  ((EUID == 0)) || die "node.sh needs root (network namespace, containerd, kubelet)"
  local c
  for c in ip containerd containerd-shim-runc-v2 runc ctr nft conntrack gcc tar sha256sum busybox; do
    command -v "${c}" >/dev/null || die "'${c}' not found; apt-get install containerd runc containernetworking-plugins nftables conntrack gcc busybox-static"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] ||
    die "CNI plugins missing in /usr/lib/cni; apt-get install containernetworking-plugins"
  for c in kubelet kube-proxy coredns; do need_bin "${c}" >/dev/null; done
}

# --- network namespace -------------------------------------------------------

netns_up() {
  ip netns add "${WEFT_NETNS}"
  nsx ip link set lo up
  # The node's "uplink": a veth pair with both ends inside the netns (this kernel
  # has no dummy device). Its far end has no address, so anything routed there
  # (the default route) is dropped after a failed ARP: nothing ever leaves the netns.
  nsx ip link add weft0 type veth peer name weft0-peer
  nsx ip addr add "${NODE_IP}/24" dev weft0
  nsx ip link set weft0-peer up
  nsx ip link set weft0 up
  nsx ip route add default dev weft0
  nsx sysctl -qw net.ipv4.ip_forward=1
  nsx sysctl -qw net.ipv4.conf.all.route_localnet=1
  if nsx test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
    nsx sysctl -qw net.bridge.bridge-nf-call-iptables=1
  fi
}

# --- images --------------------------------------------------------------------

build_images() {
  local img="${NODE}/images" src r
  mkdir -p "${img}"
  # pause: upstream's pause.c from the k8s.io/kubernetes module, static.
  src="${WEFT_CACHE}/go/mod/k8s.io/kubernetes@${KUBE_VERSION}/build/pause/linux/pause.c"
  [[ -f "${src}" ]] || die "pause.c not found at ${src} (run build-upstream.sh kubelet first)"
  r="${img}/pause-root"
  mkdir -p "${r}"
  gcc -Os -static -DVERSION=v3.10.1-weft -o "${r}/pause" "${src}"
  strip "${r}/pause" 2>/dev/null || true
  oci_image "${PAUSE_IMAGE}" "${r}" "${img}/pause.tar" '["/pause"]'
  # coredns: the cached binary.
  r="${img}/coredns-root"
  mkdir -p "${r}"
  cp "$(need_bin coredns)" "${r}/coredns"
  oci_image "${COREDNS_IMAGE}" "${r}" "${img}/coredns.tar" '["/coredns"]'
  # busybox: Debian's static busybox, for test pods.
  r="${img}/busybox-root"
  mkdir -p "${r}/bin" "${r}/tmp" "${r}/etc"
  cp "$(command -v busybox)" "${r}/bin/busybox"
  for b in sh ls cat echo sleep seq mkdir awk tail printf wget nslookup httpd hostname nc; do ln -sf busybox "${r}/bin/${b}"; done
  oci_image "${BUSYBOX_IMAGE}" "${r}" "${img}/busybox.tar" '["/bin/sh"]'
  rm -rf "${img}"/*-root
  ctr_import "${CTRD_SOCK}" "${LOGS}/images.log" "${img}/pause.tar" "${img}/coredns.tar" "${img}/busybox.tar"
  # Whatever images.sh has built (conformance echo servers, Weft's own images).
  "${here}/images.sh" import --built >>"${LOGS}/images.log" 2>&1 || {
    tail -n 20 "${LOGS}/images.log" >&2
    die "images.sh import failed"
  }
  ctr_ images ls -q >>"${LOGS}/images.log"
}

# --- containerd ------------------------------------------------------------------

start_containerd() {
  local d="${NODE}/containerd"
  mkdir -p "${d}/root" "${d}/state" "${NODE}/cni/net.d" "${NODE}/cni/ipam"
  cat >"${NODE}/cni/net.d/10-weft.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "weft-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${NODE}/cni/ipam",
        "ranges": [[{ "subnet": "${POD_SUBNET}" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  cat >"${d}/config.toml" <<EOF
version = 2
root = "${d}/root"
state = "${d}/state"
[grpc]
  address = "${CTRD_SOCK}"
[ttrpc]
  address = "${CTRD_SOCK}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  # This machine withholds CAP_SYS_RESOURCE even from root, so runc cannot lower
  # oom_score_adj (the sandbox asks for -998: "failed to update
  # /proc/self/oom_score_adj: Permission denied"). Clamp to containerd's own score.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  start_bg containerd containerd --config "${d}/config.toml"
}

containerd_ready() { [[ -S "${CTRD_SOCK}" ]] && ctr --address "${CTRD_SOCK}" version >/dev/null 2>&1; }

# --- kubelet -----------------------------------------------------------------------

start_kubelet() {
  local k="${NODE}/kubelet"
  mkdir -p "${k}/root" "${k}/pod-logs"
  sign kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" clientAuth
  sign kubelet-serving "/O=system:nodes/CN=system:node:${NODE_NAME}" serverAuth "IP:${NODE_IP},DNS:${NODE_NAME}"
  write_kubeconfig "${k}/kubeconfig" kubelet
  # No upstream DNS exists in the netns; pods get the cluster DNS only.
  echo "nameserver ${DNS_IP}" >"${k}/resolv.conf"
  cat >"${k}/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${PKI}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
containerRuntimeEndpoint: unix://${CTRD_SOCK}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# No CAP_SYS_RESOURCE here: keep kubelet's own OOM score instead of -999.
oomScoreAdj: 0
clusterDNS: [${DNS_IP}]
clusterDomain: cluster.local
resolvConf: ${k}/resolv.conf
podLogsDir: ${k}/pod-logs
serializeImagePulls: false
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
  nodefs.inodesFree: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  start_bg kubelet "$(need_bin kubelet)" \
    --config "${k}/config.yaml" \
    --kubeconfig "${k}/kubeconfig" \
    --root-dir "${k}/root" \
    --cert-dir "${k}/pki" \
    --hostname-override "${NODE_NAME}" \
    --node-ip "${NODE_IP}" \
    --v=1
}

kubelet_ready() { nsx curl -fsS --max-time 3 http://127.0.0.1:10248/healthz >/dev/null 2>&1; }

node_ready() {
  [[ "$(kc get node "${NODE_NAME}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

# --- kube-proxy --------------------------------------------------------------------

start_kube_proxy() {
  local p="${NODE}/kube-proxy"
  mkdir -p "${p}"
  sign kube-proxy "/CN=system:kube-proxy" clientAuth
  write_kubeconfig "${p}/kubeconfig" kube-proxy
  cat >"${p}/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ${WEFT_PROXY_MODE:-nftables}
clientConnection: {kubeconfig: ${p}/kubeconfig}
hostnameOverride: ${NODE_NAME}
oomScoreAdj: 0
clusterCIDR: ${CLUSTER_CIDR}
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [${NODE_IP}/32]
# 0 = leave the (partly host-global) conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  start_bg kube-proxy "$(need_bin kube-proxy)" --config "${p}/config.yaml" --v=1
}

kube_proxy_ready() { nsx curl -fsS --max-time 3 http://127.0.0.1:10256/healthz >/dev/null 2>&1; }

# --- CoreDNS and the end-to-end check ---------------------------------------------

apply_coredns() {
  kc apply -f - >>"${LOGS}/coredns-apply.log" 2>&1 <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 1s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        loop
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      containers:
      - name: coredns
        image: ${COREDNS_IMAGE}
        imagePullPolicy: IfNotPresent
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe:
          httpGet: {path: /ready, port: 8181}
          periodSeconds: 2
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: ${DNS_IP}
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

# A busybox httpd behind a Service, and a client pod that fetches it by DNS name.
e2e_check() {
  kc apply -f - >>"${LOGS}/e2e.log" 2>&1 <<EOF
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: default, labels: {app: hello}}
spec:
  containers:
  - name: httpd
    image: ${BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    command: [/bin/sh, -c, "mkdir -p /www && echo hello-from-weft > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
EOF
  kc wait --for condition=Ready --timeout 120s pod/hello >>"${LOGS}/e2e.log" 2>&1 ||
    die "pod hello not Ready in 120s: $(kc describe pod hello 2>&1 | tail -n 15)"
  kc delete pod client --ignore-not-found --wait >>"${LOGS}/e2e.log" 2>&1
  # Resolve with nslookup (CoreDNS via the kube-dns Service), then HTTP over nc
  # to the resolved Service IP (kube-proxy DNAT to the pod). Not wget: Debian's
  # static busybox wget segfaults in a bare rootfs, even for a numeric URL.
  # shellcheck disable=SC2016  # the loop runs in the pod
  kc run client --image "${BUSYBOX_IMAGE}" --image-pull-policy IfNotPresent --restart Never --command -- \
    /bin/sh -c 'for i in $(seq 1 30); do
        ip=$(nslookup hello.default.svc.cluster.local | awk "/^Address: /{print \$2}" | tail -n1)
        echo "hello.default.svc.cluster.local -> ${ip}"
        [ -n "${ip}" ] && printf "GET / HTTP/1.0\r\n\r\n" | nc -w 3 "${ip}" 80 && exit 0
        sleep 1
      done; exit 1' \
    >>"${LOGS}/e2e.log" 2>&1
  local deadline=$((SECONDS + 120)) phase=""
  while ((SECONDS < deadline)); do
    phase="$(kc get pod client -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "${phase}" == Succeeded || "${phase}" == Failed ]] && break
    sleep 1
  done
  cat "${NODE}"/kubelet/pod-logs/default_client_*/client/*.log >>"${LOGS}/e2e.log" 2>/dev/null || true
  [[ "${phase}" == Succeeded ]] || {
    tail -n 20 "${LOGS}/e2e.log" >&2
    die "client pod could not reach Service hello by DNS name (phase '${phase}')"
  }
  grep -q hello-from-weft "${LOGS}/e2e.log" || die "client pod did not get the expected body"
}

wait_until() { # WHAT TIMEOUT FUNC
  local what="$1" timeout="$2" deadline
  deadline=$((SECONDS + timeout))
  until "$3"; do
    ((SECONDS < deadline)) || die "${what} not ready after ${timeout}s (logs: ${LOGS})"
    sleep 1
  done
}

# --- subcommands -------------------------------------------------------------------

node_down() {
  local c
  local ids pod_netns="" deadline
  # Pods first, while kubelet and containerd run, so CRI tears down their
  # sandboxes (CNI DEL, pod netns) the normal way.
  if our_pid kubelet >/dev/null && our_pid containerd >/dev/null; then
    kc delete pods --all -A --grace-period 1 --wait=false >/dev/null 2>&1 || true
    # Bounded: whatever still runs afterwards is killed through containerd below.
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)) && ctr_ tasks ls 2>/dev/null | grep -q RUNNING; do sleep 1; done
  fi
  stop_one kubelet
  # Whatever is left: kill by containerd id; remember the pod netns CRI made.
  if our_pid containerd >/dev/null; then
    ids="$(ctr_ containers ls -q 2>/dev/null || true)"
    for c in ${ids}; do
      pod_netns+=" $(ctr_ containers info "${c}" 2>/dev/null | grep -o '/var/run/netns/cni-[0-9a-f-]*' | head -n1 || true)"
      ctr_ tasks kill -s SIGKILL "${c}" >/dev/null 2>&1 || true
    done
    for c in ${ids}; do
      ctr_ tasks delete -f "${c}" >/dev/null 2>&1 || true
      ctr_ containers delete "${c}" >/dev/null 2>&1 || true
    done
  fi
  for c in kube-proxy kubelet containerd; do stop_one "${c}"; done
  # After a crash of containerd its shims and pods outlive it. They are ours:
  # pods sit in the kubepods cgroups our kubelet made, shims carry our socket path.
  local procs
  procs="$(find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null || true)"
  for c in ${procs}; do kill -KILL "${c}" 2>/dev/null || true; done
  procs="$(pgrep -f "containerd-shim-runc-v2 .*-address ${CTRD_SOCK}( |\$)" || true)"
  for c in ${procs}; do kill -KILL "${c}" 2>/dev/null || true; done
  # Pod netns CRI recorded in containerd's metadata (also found when containerd is dead).
  if [[ -f "${NODE}/containerd/root/io.containerd.metadata.v1.bolt/meta.db" ]]; then
    pod_netns+=" $(grep -aoh '/var/run/netns/cni-[0-9a-f-]*' "${NODE}/containerd/root/io.containerd.metadata.v1.bolt/meta.db" | sort -u | tr '\n' ' ')"
  fi
  sleep 0.5
  # Leftover mounts under the state dir (overlay rootfs, pod volumes, shm).
  if [[ -d "${WEFT_STATE}" ]]; then
    awk -v s="${WEFT_STATE}/" 'index($2, s) == 1 { print $2 }' /proc/self/mounts | sort -r |
      while read -r m; do umount -l "${m}" 2>/dev/null || true; done
  fi
  for c in ${pod_netns}; do
    if [[ -e "${c}" ]]; then ip netns delete "$(basename "${c}")" 2>/dev/null || true; fi
  done
  # The pod cgroups kubelet made (cgroupfs driver), deepest first.
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} \; 2>/dev/null || true
  cmd_down
  if ip netns list | grep -qw "${WEFT_NETNS}"; then
    ip netns delete "${WEFT_NETNS}"
    log "removed netns ${WEFT_NETNS}"
  fi
}


coredns_ready() {
  [[ "$(kc -n kube-system get deployment coredns -o jsonpath='{.status.availableReplicas}' 2>/dev/null)" == 1 ]]
}

up_containerd() { start_containerd && wait_until containerd 30 containerd_ready; }
up_kubelet() { start_kubelet && wait_until kubelet 60 kubelet_ready && wait_until "node Ready" 120 node_ready; }
up_kube_proxy() { start_kube_proxy && wait_until kube-proxy 60 kube_proxy_ready; }
up_coredns() {
  apply_coredns
  kc -n kube-system rollout status deployment/coredns --timeout 120s >>"${LOGS}/coredns-apply.log" 2>&1 ||
    die "CoreDNS not available in 120s (see ${LOGS}/coredns-apply.log and ${LOGS}/kubelet.log)"
}

node_up() {
  local total
  preflight
  load_ports
  total="$(now_s)"
  if [[ -f "${WEFT_STATE}/.weft-node" ]] && all_healthy && our_pid containerd >/dev/null &&
    our_pid kubelet >/dev/null && our_pid kube-proxy >/dev/null && node_ready && coredns_ready; then
    log "node tier already up"
  else
    if [[ -e "${WEFT_STATE}" ]] || ip netns list | grep -qw "${WEFT_NETNS}"; then
      log "found leftovers (${WEFT_STATE} or netns ${WEFT_NETNS}): cleaning up first"
      node_down
    fi
    step netns netns_up
    cmd_up --crds
    touch "${WEFT_STATE}/.weft-node"
    step containerd up_containerd
    step images build_images
    step kubelet up_kubelet
    step kube-proxy up_kube_proxy
    step coredns up_coredns
  fi
  step "pod-to-service-by-DNS" e2e_check
  log "node tier up in $(elapsed "${total}")s"
  echo "kubeconfig: ${KUBECONFIG_PATH}  (netns ${WEFT_NETNS}: ip netns exec ${WEFT_NETNS} kubectl ...)"
}

node_status() {
  local bad=0 c pid
  cmd_status || bad=1
  for c in "${NODE_COMPONENTS[@]}"; do
    if pid="$(our_pid "${c}")"; then
      printf '%-24s running    pid %s\n' "${c}" "${pid}"
    else
      printf '%-24s DOWN\n' "${c}"
      echo "--- last 20 lines of ${LOGS}/${c}.log:"
      tail -n 20 "${LOGS}/${c}.log" 2>/dev/null || echo "(no log)"
      bad=1
    fi
  done
  kc get nodes -o wide 2>&1 || bad=1
  kc get pods -A -o wide 2>&1 || true
  return "${bad}"
}

case "${1:-}" in
  up)
    lock_state
    node_up
    ;;
  down)
    lock_state
    node_down
    ;;
  status) node_status ;;
  env) cmd_env ;;
  *)
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
