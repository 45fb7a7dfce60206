//! ADD, DEL, CHECK and VERSION, as the CNI spec defines them for a chained plugin.
//!
//! ADD for a meshed pod: install the interception rules in the pod's netns, hand the netns to
//! the proxy and wait for its Ack, record the pod. Any failure fails the ADD (fail closed: a
//! meshed pod never runs unmeshed); rules already installed stay, so until the runtime's DEL
//! the pod's TCP goes nowhere rather than around the proxy. A pod not in the mesh gets its
//! `prevResult` back after one lookup and nothing else.

use std::path::Path;

use mesh_api::inpod::{PodInfo, Request};
use mesh_init::{Exclusions, Settings};
use serde_json::{Value, json};

use crate::handoff;
use crate::meshed::{self, Decision};
use crate::netconf::{CniError, Env, NetConf, SUPPORTED_VERSIONS, code};
use crate::state::{self, PodRecord};

/// The per-netns sysctl that migrates a closing listener's queued connections to another
/// listener of its SO_REUSEPORT group.
pub const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// What a successful call prints on stdout (nothing for DEL and CHECK).
pub type Output = Option<Value>;

pub fn run(env: &Env, stdin: &[u8]) -> Result<Output, CniError> {
    match env.command.as_str() {
        "VERSION" => Ok(Some(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}))),
        "ADD" => add(env, &parse(stdin)?),
        "DEL" => del(env, &parse(stdin)?),
        "CHECK" => check(env, &parse(stdin)?),
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "expected ADD, DEL, CHECK or VERSION",
        )),
        other => Err(CniError::new(code::INVALID_ENV, "unknown CNI_COMMAND", other)),
    }
}

fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let conf = NetConf::parse(stdin)?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(code::INCOMPATIBLE_VERSION, "unsupported cniVersion", &conf.cni_version));
    }
    Ok(conf)
}

fn decide(env: &Env, conf: &NetConf) -> Result<Decision, CniError> {
    if let Some(facts) = &conf.runtime_config.weft {
        return Ok(Decision::from_facts(facts));
    }
    let (Some(namespace), Some(name)) = (env.pod_namespace(), env.pod_name()) else {
        // Not a Kubernetes pod (no K8S_POD_* args): not ours to mesh.
        return Ok(Decision::default());
    };
    let Some(kubeconfig) = &conf.kubeconfig else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "weft-cni cannot tell whether the pod is meshed",
            "the plugin config has no kubeconfig and runtimeConfig.weft is absent",
        ));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::MESH_SETUP, "cannot start the lookup", e))?;
    runtime.block_on(meshed::lookup(kubeconfig, namespace, name)).map_err(|e| {
        CniError::new(code::KUBERNETES, format!("cannot look up pod {namespace}/{name}"), format!("{e:#}"))
    })
}

/// The interception rules for a pod with these annotations, whose inbound connections from
/// `probe_sources` (the node, as the pod sees it) skip the proxy.
pub fn settings(
    annotations: &std::collections::BTreeMap<String, String>,
    mut probe_sources: Vec<std::net::IpAddr>,
) -> Result<Settings, CniError> {
    let exclusions = Exclusions::from_annotations(annotations)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, "invalid pod annotation", e))?;
    probe_sources.sort();
    probe_sources.dedup();
    Ok(Settings { exclusions, probe_sources, ..Settings::default() })
}

/// The return route lets the proxy deliver inbound connections from the client's address
/// (`mesh_init::route`). Without it the pod is meshed all the same and the proxy delivers from
/// the pod's own address: worth a warning, not a failed ADD.
pub fn warn_without_return_route(applied: mesh_init::Applied) {
    if let Err(error) = applied.return_route {
        tracing::warn!(%error, "no return route for kept source addresses: the app will see inbound mesh connections coming from its own address");
    }
}

/// During an upgrade, connections queued on the old proxy's listener when it closes move to
/// the new proxy's instead of being reset (mesh-proxy's inpod::handover). Best effort: a
/// kernel before 5.14 has no such setting, and the pod works without it.
pub fn allow_listener_migration(netns: &Path) {
    match mesh_init::nft::in_netns(netns, || Ok(mesh_init::sysctl::set(TCP_MIGRATE_REQ, "1"))) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::info!(%error, "net.ipv4.tcp_migrate_req not set in the pod"),
        Err(error) => tracing::info!(%error, "net.ipv4.tcp_migrate_req not set in the pod"),
    }
}

fn add(env: &Env, conf: &NetConf) -> Result<Output, CniError> {
    let Some(prev) = &conf.prev_result else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "weft-cni must be chained after the primary plugin",
            "the network configuration has no prevResult",
        ));
    };
    let decision = decide(env, conf)?;
    if !decision.meshed {
        return Ok(Some(prev.clone()));
    }
    let netns_path = env.netns.as_deref().ok_or_else(|| {
        CniError::new(code::INVALID_ENV, "CNI_NETNS is not set", "ADD needs the pod's netns")
    })?;
    let mut probe_sources = conf.prev_gateways();
    probe_sources.extend(conf.probe_sources.iter().copied());
    let settings = settings(&decision.annotations, probe_sources)?;
    let applied = mesh_init::apply_in(netns_path, &settings)
        .map_err(|e| CniError::new(code::MESH_SETUP, "cannot install the interception rules", e))?;
    warn_without_return_route(applied);
    allow_listener_migration(netns_path);

    let uid = decision.uid.clone().unwrap_or_else(|| env.pod_key());
    let pod = PodInfo {
        uid,
        namespace: env.pod_namespace().unwrap_or_default().to_string(),
        name: env.pod_name().unwrap_or_default().to_string(),
        service_account: decision.service_account.clone(),
        ips: conf.prev_ips(),
    };
    let netns = std::fs::File::open(netns_path)
        .map_err(|e| CniError::new(code::MESH_SETUP, "cannot open the pod's netns", e))?;
    handoff::send(
        &conf.proxy_socket,
        &Request::AddPod { pod: pod.clone() },
        Some(&netns.into()),
        conf.ack_timeout(),
    )
    .map_err(|e| {
        let code = match e {
            handoff::HandoffError::Refused(_) => code::MESH_SETUP,
            _ => code::TRY_AGAIN_LATER,
        };
        CniError::new(code, "the node proxy did not take the pod (is weft-proxy running with --inpod?)", e)
    })?;
    let record = PodRecord { pod, container_id: env.container_id.clone(), netns: netns_path.to_path_buf() };
    state::save(&conf.state_dir, &record)
        .map_err(|e| CniError::new(code::MESH_SETUP, "cannot record the pod in the state dir", e))?;
    Ok(Some(prev.clone()))
}

/// Best effort at every step: DEL must succeed when the pod, its netns, the proxy or the
/// record are already gone, so the runtime can always finish tearing the sandbox down.
fn del(env: &Env, conf: &NetConf) -> Result<Output, CniError> {
    let record = match env.arg("K8S_POD_UID") {
        Some(uid) => state::load(&conf.state_dir, uid).ok().flatten(),
        None => state::find_by_container(&conf.state_dir, &env.container_id).ok().flatten(),
    };
    let Some(record) = record else {
        // Never meshed, or already deleted. Rules may exist without a record if an ADD failed
        // after installing them.
        if let Some(netns) = env.netns.as_deref().filter(|p| p.exists()) {
            let _ = mesh_init::remove_in(netns);
        }
        return Ok(None);
    };
    let timeout = conf.ack_timeout();
    if let Err(error) =
        handoff::send(&conf.proxy_socket, &Request::DelPod { uid: record.pod.uid.clone() }, None, timeout)
    {
        // A proxy that is down holds nothing for this pod after its restart (the pod will not
        // be in the snapshot), so this is not an error.
        tracing::info!(%error, "proxy not told of DEL");
    }
    let netns = env.netns.clone().unwrap_or(record.netns.clone());
    if netns.exists()
        && let Err(error) = mesh_init::remove_in(&netns)
    {
        tracing::info!(%error, "rules not removed (netns going away)");
    }
    let _ = state::remove(&conf.state_dir, &record.pod.uid);
    Ok(None)
}

fn check(env: &Env, conf: &NetConf) -> Result<Output, CniError> {
    if conf.prev_result.is_none() {
        return Err(CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult", "none given"));
    }
    let decision = decide(env, conf)?;
    if !decision.meshed {
        return Ok(None);
    }
    let key = decision.uid.unwrap_or_else(|| env.pod_key());
    let missing = |what: &str| CniError::new(code::MESH_SETUP, "meshed pod is not set up", what);
    if state::load(&conf.state_dir, &key).ok().flatten().is_none() {
        return Err(missing("no state record"));
    }
    let netns = env.netns.as_deref().ok_or_else(|| missing("CNI_NETNS is not set"))?;
    match mesh_init::table_exists_in(Path::new(netns)) {
        Ok(true) => Ok(None),
        Ok(false) => Err(missing("the interception rules are gone from the pod's netns")),
        Err(e) => Err(CniError::new(code::MESH_SETUP, "cannot read the pod's rules", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Env {
        Env { command: command.into(), container_id: "c".into(), ..Default::default() }
    }

    #[test]
    fn version_lists_supported_versions() {
        let out = run(&env("VERSION"), b"").expect("version").expect("output");
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(out["supportedVersions"].as_array().expect("list").iter().any(|v| v == "1.0.0"));
    }

    #[test]
    fn unmeshed_add_returns_prev_result_unchanged() {
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.2/24"}], "x-extra": [1, 2]});
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "weft-cni", "prevResult": prev,
            "runtimeConfig": {"weft": {"namespaceLabels": {}}}});
        let out = run(&env("ADD"), conf.to_string().as_bytes()).expect("add").expect("output");
        assert_eq!(out, prev);
    }

    #[test]
    fn errors_have_cni_codes() {
        let bad = |command: &str, stdin: &str| run(&env(command), stdin.as_bytes()).expect_err(stdin).code;
        assert_eq!(bad("ADD", "{"), code::DECODING);
        assert_eq!(bad("ADD", r#"{"cniVersion":"9.9.9"}"#), code::INCOMPATIBLE_VERSION);
        assert_eq!(bad("ADD", r#"{"cniVersion":"1.0.0"}"#), code::INVALID_CONFIG);
        assert_eq!(bad("FROB", "{}"), code::INVALID_ENV);
        // Meshed, with an annotation that cannot be honoured: refused before touching anything.
        let conf = json!({"cniVersion": "1.0.0", "prevResult": {}, "runtimeConfig": {"weft": {
            "namespaceLabels": {"weft.dev/mesh": "enabled"},
            "podAnnotations": {"weft.dev/exclude-outbound-ports": "http"}}}});
        let mut e = env("ADD");
        e.netns = Some("/nonexistent".into());
        let err = run(&e, conf.to_string().as_bytes()).expect_err("annotation");
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.details.contains("weft.dev/exclude-outbound-ports"), "{err}");
    }

    #[test]
    fn del_of_an_unknown_pod_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = json!({"cniVersion": "1.0.0", "stateDir": dir.path(), "proxySocket": dir.path().join("none.sock")});
        assert!(run(&env("DEL"), conf.to_string().as_bytes()).expect("del").is_none());
    }
}
