//! Nodes and pods made of network namespaces, attached by the real CNI plugin chain.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::netns::{Netns, run, unique};

/// Where Debian's containernetworking-plugins are.
pub const CNI_BIN: &str = "/usr/lib/cni";

/// A node: a netns holding the pods' bridge, a folder for the plugins' state and the proxy's
/// socket, and the conflist a runtime would read (bridge + host-local, then weft-cni).
pub struct Node {
    pub name: String,
    pub netns: Netns,
    pub dir: tempfile::TempDir,
    pub conflist: Value,
    weft_cni: PathBuf,
}

impl Node {
    /// `subnet` is this node's pod CIDR, e.g. `10.201.1.0/24`; `weft_cni` the built plugin.
    pub fn new(name: &str, subnet: &str, weft_cni: &Path) -> Node {
        let netns = Netns::new(name);
        let dir = tempfile::tempdir().expect("tempdir");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "plugins": [
                {"type": "bridge", "bridge": unique("wb"), "isGateway": true, "isDefaultGateway": true,
                 "ipMasq": false,
                 "ipam": {"type": "host-local", "subnet": subnet, "dataDir": dir.path().join("ipam")}},
                {"type": "weft-cni", "proxySocket": dir.path().join("inpod.sock"),
                 "stateDir": dir.path().join("pods"), "ackTimeoutMs": 5000},
            ],
        });
        Node { name: name.to_string(), netns, dir, conflist, weft_cni: weft_cni.to_path_buf() }
    }

    /// A dual-stack node: host-local gives each pod one address from `subnet` (IPv4, listed
    /// first in the result, so [`Pod::ip`] stays the IPv4 one) and one from `subnet6` (e.g. a
    /// ULA `fd00:201:1::/64`), as a dual-stack cluster's pod CIDRs do.
    pub fn dual_stack(name: &str, subnet: &str, subnet6: &str, weft_cni: &Path) -> Node {
        let mut node = Node::new(name, subnet, weft_cni);
        node.conflist["plugins"][0]["ipam"] = json!({
            "type": "host-local",
            "ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]],
            "dataDir": node.dir.path().join("ipam"),
        });
        node
    }

    /// The unix socket weft-cni hands this node's pods to the proxy on.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("inpod.sock")
    }

    /// Where weft-cni records the pods it handed over.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    /// One plugin invocation, exactly as a runtime does it, inside the node's netns: whether
    /// it succeeded, and what it printed.
    pub fn invoke(
        &self,
        plugin: &str,
        command: &str,
        pod: &PodSpec,
        ifname: &str,
        conf: &Value,
    ) -> (bool, Value) {
        let binary =
            if plugin == "weft-cni" { self.weft_cni.clone() } else { Path::new(CNI_BIN).join(plugin) };
        let mut child = self
            .netns
            .command(binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", pod.netns.path())
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", CNI_BIN)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                    pod.namespace, pod.name, pod.uid
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("plugin output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            eprintln!("{plugin} {command}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        }
        (out.status.success(), value)
    }

    /// The config of plugin `index` of the conflist, as the runtime derives it.
    pub fn plugin_conf(&self, index: usize, prev: Option<&Value>, weft: &Value) -> Value {
        let mut conf = self.conflist["plugins"][index].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        conf["name"] = self.conflist["name"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        if conf["type"] == "weft-cni" {
            conf["runtimeConfig"] = json!({"weft": weft});
        }
        conf
    }

    /// Creates a pod: loopback, then the conflist's chain (bridge, weft-cni). `weft` is what
    /// weft-cni's runtimeConfig says of the pod (labels, annotations, service account).
    pub fn add_pod(&self, namespace: &str, name: &str, weft: Value) -> Pod<'_> {
        self.try_add_pod(namespace, name, weft).unwrap_or_else(|out| panic!("weft-cni ADD: {out}"))
    }

    /// [`add_pod`](Self::add_pod), with weft-cni's error output when its ADD fails (the
    /// loopback and bridge ADDs must succeed).
    pub fn try_add_pod(&self, namespace: &str, name: &str, weft: Value) -> Result<Pod<'_>, Value> {
        self.try_add_pod_with_uid(namespace, name, &unique(&format!("uid-{name}-")), weft)
    }

    /// [`try_add_pod`](Self::try_add_pod) for a pod whose UID is given (K8S_POD_UID), e.g. one
    /// that also exists in an API server.
    pub fn try_add_pod_with_uid(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        weft: Value,
    ) -> Result<Pod<'_>, Value> {
        let spec = PodSpec {
            netns: Netns::new(name),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            container_id: unique("ctr"),
            weft,
        };
        let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
        assert!(self.invoke("loopback", "ADD", &spec, "lo", &lo).0, "loopback ADD");
        let (ok, bridge_result) =
            self.invoke("bridge", "ADD", &spec, "eth0", &self.plugin_conf(0, None, &spec.weft));
        assert!(ok, "bridge ADD: {bridge_result}");
        let pod = Pod { node: self, ip: ip_of(&bridge_result), result: bridge_result.clone(), spec };
        let conf = self.plugin_conf(1, Some(&bridge_result), &pod.spec.weft);
        let (ok, out) = self.invoke("weft-cni", "ADD", &pod.spec, "eth0", &conf);
        if !ok {
            return Err(out);
        }
        assert_eq!(out, bridge_result, "ADD must print prevResult back unchanged");
        Ok(pod)
    }
}

/// Joins two nodes with a veth pair (`10.98.0.1` ↔ `10.98.0.2`) and routes each one's pod
/// CIDR through the other: a two-node cluster network. Returns the interface names (on a, on b).
pub fn link(a: &Node, a_pods: &str, b: &Node, b_pods: &str) -> (String, String) {
    let (va, vb) = (unique("va"), unique("vb"));
    run(
        "ip",
        &[
            "link",
            "add",
            &va,
            "netns",
            &a.netns.name,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &b.netns.name,
        ],
    );
    for (node, iface, addr, peer, peer_pods) in
        [(a, &va, "10.98.0.1/24", "10.98.0.2", b_pods), (b, &vb, "10.98.0.2/24", "10.98.0.1", a_pods)]
    {
        node.netns.ip(&["addr", "add", addr, "dev", iface]);
        node.netns.ip(&["link", "set", iface, "up"]);
        node.netns.ip(&["route", "add", peer_pods, "via", peer]);
        run("ip", &["netns", "exec", &node.netns.name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    }
    (va, vb)
}

/// Adds IPv6 to a [`link`] between `a` and `b` (interfaces `ifaces`, as `link` returned them):
/// `fd98::1` ↔ `fd98::2` (no duplicate-address detection, so they are usable at once), each
/// node's IPv6 pod CIDR routed through the other, IPv6 forwarding on.
pub fn link_v6(a: &Node, a_pods6: &str, b: &Node, b_pods6: &str, ifaces: &(String, String)) {
    for (node, iface, addr, peer, peer_pods) in
        [(a, &ifaces.0, "fd98::1/64", "fd98::2", b_pods6), (b, &ifaces.1, "fd98::2/64", "fd98::1", a_pods6)]
    {
        run(
            "ip",
            &["netns", "exec", &node.netns.name, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"],
        );
        node.netns.ip(&["addr", "add", addr, "dev", iface, "nodad"]);
        node.netns.ip(&["-6", "route", "add", peer_pods, "via", peer]);
    }
}

pub struct PodSpec {
    pub netns: Netns,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container_id: String,
    pub weft: Value,
}

pub struct Pod<'a> {
    pub node: &'a Node,
    pub spec: PodSpec,
    pub ip: IpAddr,
    pub result: Value,
}

fn ip_of(result: &Value) -> IpAddr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

impl Pod<'_> {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    /// The pod's IPv6 address, on a [`Node::dual_stack`] node.
    pub fn ip6(&self) -> Option<IpAddr> {
        self.result["ips"]
            .as_array()?
            .iter()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse::<IpAddr>().ok())
            .find(IpAddr::is_ipv6)
    }

    pub fn path(&self) -> PathBuf {
        self.spec.netns.path()
    }

    /// DEL in reverse chain order, as the runtime does.
    pub fn del(&self) -> bool {
        let weft = self.node.plugin_conf(1, Some(&self.result), &self.spec.weft);
        let (ok, _) = self.node.invoke("weft-cni", "DEL", &self.spec, "eth0", &weft);
        let bridge = self.node.plugin_conf(0, Some(&self.result), &self.spec.weft);
        let (bridge_ok, _) = self.node.invoke("bridge", "DEL", &self.spec, "eth0", &bridge);
        ok && bridge_ok
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let _ = self.del();
    }
}

/// What weft-cni's runtimeConfig says of a pod in a meshed namespace.
pub fn meshed(service_account: &str) -> Value {
    meshed_with(service_account, json!({}))
}

/// [`meshed`], with pod annotations (exclusions).
pub fn meshed_with(service_account: &str, annotations: Value) -> Value {
    json!({"namespaceLabels": {"weft.dev/mesh": "enabled"}, "podAnnotations": annotations, "serviceAccount": service_account})
}

pub fn unmeshed() -> Value {
    json!({"namespaceLabels": {}})
}
