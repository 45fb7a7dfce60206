//! The CNI contract: environment variables, the network configuration on stdin, and errors.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CNI versions whose ADD/DEL/CHECK/VERSION semantics this plugin implements (all of them
/// pass `prevResult` through unchanged, which is all a chained plugin that adds no interface
/// must do).
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0"];

/// How long ADD waits for the proxy to confirm a pod. A healthy proxy answers in a
/// millisecond or two (it opens three listeners); a proxy that has not answered in 5 s is not
/// serving, and the kubelet retries a failed sandbox on its own.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// CNI error codes (spec, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODING: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific codes start at 100.
    pub const MESH_SETUP: u32 = 100;
    pub const KUBERNETES: u32 = 101;
}

#[derive(Debug, Serialize, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl std::fmt::Display) -> Self {
        CniError { cni_version: "1.0.0".into(), code, msg: msg.into(), details: details.to_string() }
    }
}

/// The plugin's entry in the conflist, with the fields every CNI config has.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The previous plugin's result: printed back unchanged by ADD.
    #[serde(default)]
    pub prev_result: Option<Value>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The proxy's in-pod socket.
    #[serde(default = "default_socket")]
    pub proxy_socket: PathBuf,
    /// Where live meshed pods are recorded.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The kubeconfig the installer wrote; without it, `runtimeConfig.weft` must say.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Milliseconds to wait for the proxy's Ack.
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
    /// Sources whose inbound connections skip the proxy (kubelet probes), besides the
    /// gateways of `prevResult`, which on a bridge network are the node's address.
    #[serde(default)]
    pub probe_sources: Vec<IpAddr>,
}

fn default_socket() -> PathBuf {
    mesh_api::inpod::DEFAULT_SOCKET.into()
}

fn default_state_dir() -> PathBuf {
    crate::state::DEFAULT_DIR.into()
}

/// `runtimeConfig.weft`: the pod's mesh facts given directly (standalone tests, or runtimes
/// that know them), used instead of the API server.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub weft: Option<PodFacts>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodFacts {
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub pod_annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub service_account: String,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(code::DECODING, "invalid network configuration", e))
    }

    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout_ms.map(Duration::from_millis).unwrap_or(DEFAULT_ACK_TIMEOUT)
    }

    /// The gateways of the previous result: the node's addresses as the pod sees them.
    pub fn prev_gateways(&self) -> Vec<IpAddr> {
        let ips = self.prev_result.as_ref().and_then(|r| r.get("ips")).and_then(Value::as_array);
        ips.into_iter()
            .flatten()
            .filter_map(|ip| ip.get("gateway").and_then(Value::as_str)?.parse().ok())
            .collect()
    }

    /// The pod's addresses in the previous result (`"10.0.0.2/24"` → `10.0.0.2`).
    pub fn prev_ips(&self) -> Vec<IpAddr> {
        let ips = self.prev_result.as_ref().and_then(|r| r.get("ips")).and_then(Value::as_array);
        ips.into_iter()
            .flatten()
            .filter_map(|ip| ip.get("address").and_then(Value::as_str)?.split('/').next()?.parse().ok())
            .collect()
    }
}

/// The runtime's environment for one call.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS`, `K=V;K=V`.
    pub args: BTreeMap<String, String>,
}

impl Env {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Env {
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        }
    }

    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.get(key).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn pod_namespace(&self) -> Option<&str> {
        self.arg("K8S_POD_NAMESPACE")
    }
    pub fn pod_name(&self) -> Option<&str> {
        self.arg("K8S_POD_NAME")
    }
    /// The pod's UID, or the sandbox's container ID when the runtime does not pass it.
    pub fn pod_key(&self) -> String {
        self.arg("K8S_POD_UID").map(str::to_string).unwrap_or_else(|| self.container_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_env_args_and_prev_result() {
        let vars: BTreeMap<&str, &str> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u-1;junk"),
        ]
        .into_iter()
        .collect();
        let env = Env::from_vars(|k| vars.get(k).map(|v| v.to_string()));
        assert_eq!(
            (env.pod_namespace(), env.pod_name(), env.pod_key().as_str()),
            (Some("ns"), Some("p"), "u-1")
        );
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni","prevResult":{"cniVersion":"1.0.0",
            "ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"}]},
            "runtimeConfig":{"weft":{"namespaceLabels":{"weft.dev/mesh":"enabled"}}}}"#,
        )
        .expect("parse");
        assert_eq!(conf.prev_ips(), vec!["10.1.0.5".parse::<IpAddr>().expect("ip")]);
        assert_eq!(conf.prev_gateways(), vec!["10.1.0.1".parse::<IpAddr>().expect("ip")]);
        assert_eq!(conf.runtime_config.weft.expect("facts").namespace_labels["weft.dev/mesh"], "enabled");
        let err = NetConf::parse(b"{").expect_err("bad json");
        assert_eq!(err.code, code::DECODING);
    }
}
