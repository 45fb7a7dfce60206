//! Enrolling pods that were already running when their namespace joined the mesh, and
//! un-enrolling them when it leaves (or a pod opts out), without restarting them: what
//! istio-cni's node agent does for ambient ("reconcile existing pods").
//!
//! The installer runs this beside its other loops. It watches the Namespaces and this node's
//! Pods (`spec.nodeName` field selector) and, whenever either changes (and every
//! [`RESYNC`] anyway), compares what should be meshed with what is (the state dir's records,
//! which CNI ADD and this agent both write):
//!
//! - a running, non-hostNetwork pod that should be meshed and has no record is **enrolled**:
//!   its netns is found from outside ([`crate::netns_finder`]); the proxy is handed the netns
//!   exactly as ADD does; the same nftables rules as ADD (same annotations, probe sources from
//!   the pod's default gateway, which is what ADD reads from the primary plugin) are installed;
//!   the pod is recorded, so the runtime's DEL and the repair loop treat it like any other.
//!   Unlike ADD, the proxy comes first: for a pod that already serves, a proxy that does not
//!   take it must leave it as it was, not cut off (ADD fails closed instead, because there the
//!   pod has not started).
//! - a recorded pod that should not be meshed is **un-enrolled**: rules removed first (new
//!   connections go direct at once), then the proxy told, then the record dropped.
//!
//! Before acting, the pod and its namespace are read again from the API server, so a stale
//! cache never un-meshes a pod ADD just meshed (or the reverse).
//!
//! Connections: NAT rules apply to a connection's first packet only. A connection the pod
//! opened (or accepted) before enrolment stays direct and plaintext until it closes, as in
//! istio ambient; every new one goes through the proxy. At un-enrolment, removing the pod's NAT
//! table ends the connections that went through the proxy (their conntrack entries go with the
//! table, and the proxy drains the pod); plaintext direct ones are untouched.
//!
//! A pod that cannot be enrolled (no netns found, proxy down or refusing, rules refused) is
//! logged, gets a Warning Event (`EnrolFailed`, kube's event recorder folds repeats into a
//! series) and is retried with exponential backoff, from 1 s to [`MAX_BACKOFF`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _};
use mesh_api::inpod::{PodInfo, Request};

use crate::handoff;
use crate::meshed::Decision;
use crate::netconf::PodFacts;
use crate::netns_finder::NetnsFinder;
use crate::plugin;
use crate::state::{self, PodRecord};

/// Re-checks everything this often even without a watch event (a record written or removed by
/// CNI meanwhile is not an API event).
pub const RESYNC: Duration = Duration::from_secs(30);
/// The longest wait between two attempts at a pod that cannot be enrolled.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Only this node's pods are watched.
    pub node_name: String,
    pub proxy_socket: PathBuf,
    pub state_dir: PathBuf,
    pub finder: NetnsFinder,
    /// How long to wait for each of the proxy's replies.
    pub reply_timeout: Duration,
}

/// What a pod should be, from its namespace's labels and its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Meshed, and running with an address: enrol it if it is not.
    Meshed,
    /// Meshed, but not (yet) running: leave it alone (ADD or a later event takes care).
    NotRunning,
    /// Not meshed: un-enrol it if it is.
    Unmeshed,
    /// Not ours to touch: hostNetwork, terminating (DEL is coming), namespace unknown.
    Ignore,
}

pub fn want(pod: &Pod, namespace: Option<&Namespace>) -> Want {
    let Some(namespace) = namespace else { return Want::Ignore };
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) || pod.metadata.deletion_timestamp.is_some() {
        return Want::Ignore;
    }
    let facts = PodFacts {
        namespace_labels: namespace.metadata.labels.clone().unwrap_or_default(),
        pod_labels: pod.metadata.labels.clone().unwrap_or_default(),
        ..Default::default()
    };
    if !Decision::from_facts(&facts).meshed {
        return Want::Unmeshed;
    }
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    if running && !pod_ips(pod).is_empty() { Want::Meshed } else { Want::NotRunning }
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    ips
}

/// Enrols a running pod (blocking: procfs, setns, nft, the proxy's socket). Returns where its
/// netns was found.
pub fn enrol(pod: &Pod, options: &AgentOptions) -> Result<PathBuf, String> {
    let uid = pod.metadata.uid.clone().ok_or("the pod has no uid")?;
    let ips = pod_ips(pod);
    let found = options
        .finder
        .find(&uid, &ips)
        .map_err(|e| format!("cannot scan {}: {e}", options.finder.proc_dir.display()))?
        .ok_or_else(|| {
            format!(
                "the pod's network namespace was not found: no process under {} has pod{uid} in its cgroup, \
                 and no network namespace there or in {:?} has an address of {ips:?}",
                options.finder.proc_dir.display(),
                options.finder.pinned_dirs
            )
        })?;
    let gateways = crate::netns_finder::default_gateways_in(&found.path)
        .map_err(|e| format!("cannot read the routes of {}: {e}", found.path.display()))?;
    let annotations: BTreeMap<String, String> = pod.metadata.annotations.clone().unwrap_or_default();
    let settings = plugin::settings(&annotations, gateways).map_err(|e| e.to_string())?;
    let info = PodInfo {
        uid: uid.clone(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        service_account: pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        ips,
    };
    let netns = std::fs::File::open(&found.path)
        .map_err(|e| format!("cannot open the pod's netns {}: {e}", found.path.display()))?;
    // The proxy first: if it does not take the pod, the pod goes on as it was.
    handoff::send(
        &options.proxy_socket,
        &Request::AddPod { pod: info.clone() },
        Some(&netns.into()),
        options.reply_timeout,
    )
    .map_err(|e| format!("the node proxy did not take the pod: {e}"))?;
    let release = || {
        let _ = handoff::send(
            &options.proxy_socket,
            &Request::DelPod { uid: uid.clone() },
            None,
            options.reply_timeout,
        );
    };
    match mesh_init::apply_in(&found.path, &settings) {
        Ok(applied) => plugin::warn_without_return_route(applied),
        Err(e) => {
            release();
            return Err(format!("cannot install the interception rules: {e}"));
        }
    }
    plugin::allow_listener_migration(&found.path);
    // No sandbox container ID is known here: the runtime's DEL finds the record by the pod's
    // UID (K8S_POD_UID), which kubelet always passes.
    let record = PodRecord { pod: info, container_id: String::new(), netns: found.path.clone() };
    if let Err(e) = state::save(&options.state_dir, &record) {
        let _ = mesh_init::remove_in(&found.path);
        release();
        return Err(format!("cannot record the pod in {}: {e}", options.state_dir.display()));
    }
    tracing::info!(pod = %format!("{}/{}", record.pod.namespace, record.pod.name), uid, netns = %found.path.display(), by = found.by, "running pod enrolled");
    Ok(found.path)
}

/// Un-enrols a recorded pod (blocking): rules, then the proxy, then the record.
pub fn unenrol(record: &PodRecord, options: &AgentOptions) -> Result<(), String> {
    if record.netns.exists() {
        mesh_init::remove_in(&record.netns)
            .map_err(|e| format!("cannot remove the interception rules: {e}"))?;
    }
    if let Err(error) = handoff::send(
        &options.proxy_socket,
        &Request::DelPod { uid: record.pod.uid.clone() },
        None,
        options.reply_timeout,
    ) {
        // As for DEL: a proxy that is down holds nothing of this pod once it restarts (the
        // record is gone by then).
        tracing::info!(pod = record.pod.uid, %error, "proxy not told of the un-enrolment");
    }
    state::remove(&options.state_dir, &record.pod.uid)
        .map_err(|e| format!("cannot remove the pod's record: {e}"))?;
    tracing::info!(pod = %format!("{}/{}", record.pod.namespace, record.pod.name), uid = record.pod.uid, "pod un-enrolled");
    Ok(())
}

/// The wait after the `failures`-th failed attempt in a row: 1 s, 2 s, 4 s … up to
/// [`MAX_BACKOFF`].
pub fn backoff_delay(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

struct Backoff {
    failures: u32,
    next: Instant,
}

struct Agent {
    client: Client,
    options: Arc<AgentOptions>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    recorder: Recorder,
    backoff: HashMap<String, Backoff>,
}

impl Agent {
    /// The pod and its namespace as the API server has them now, and what the pod should be.
    async fn fresh(&self, pod: &Pod) -> Option<(Pod, Want)> {
        let (namespace, name) = (pod.metadata.namespace.as_deref()?, pod.metadata.name.as_deref()?);
        let ns = Api::<Namespace>::all(self.client.clone()).get_opt(namespace).await.ok().flatten()?;
        let fresh =
            Api::<Pod>::namespaced(self.client.clone(), namespace).get_opt(name).await.ok().flatten()?;
        if fresh.metadata.uid != pod.metadata.uid {
            return None;
        }
        let want = want(&fresh, Some(&ns));
        Some((fresh, want))
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: if reason.starts_with("Enrol") { "Enrol".into() } else { "Unenrol".into() },
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            tracing::debug!(%error, "event not published");
        }
    }

    fn failed(&mut self, uid: &str) -> Duration {
        let entry =
            self.backoff.entry(uid.to_string()).or_insert(Backoff { failures: 0, next: Instant::now() });
        entry.failures += 1;
        let delay = backoff_delay(entry.failures);
        entry.next = Instant::now() + delay;
        delay
    }

    /// One pass; returns when the next retry is due, if any.
    async fn reconcile(&mut self) -> Option<Instant> {
        let records: HashMap<String, PodRecord> = match state::list(&self.options.state_dir) {
            Ok(records) => records.into_iter().map(|r| (r.pod.uid.clone(), r)).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the pod records");
                return Some(Instant::now() + FIRST_BACKOFF);
            }
        };
        let pods = self.pods.state();
        let mut seen = Vec::with_capacity(pods.len());
        for pod in pods {
            let Some(uid) = pod.metadata.uid.clone() else { continue };
            seen.push(uid.clone());
            let namespace = pod
                .metadata
                .namespace
                .as_deref()
                .and_then(|ns| self.namespaces.get(&reflector::ObjectRef::new(ns)));
            let want = want(&pod, namespace.as_deref());
            let recorded = records.get(&uid);
            let action = match (want, recorded) {
                (Want::Meshed, None) => Want::Meshed,
                (Want::Unmeshed, Some(_)) => Want::Unmeshed,
                _ => {
                    self.backoff.remove(&uid);
                    continue;
                }
            };
            if self.backoff.get(&uid).is_some_and(|b| b.next > Instant::now()) {
                continue;
            }
            // Act only if the API server agrees now (the caches may lag behind a CNI ADD).
            let Some((fresh, fresh_want)) = self.fresh(&pod).await else { continue };
            if fresh_want != action {
                continue;
            }
            let options = self.options.clone();
            let name = format!(
                "{}/{}",
                fresh.metadata.namespace.as_deref().unwrap_or(""),
                fresh.metadata.name.as_deref().unwrap_or("")
            );
            let result = match (action, recorded.cloned()) {
                (Want::Unmeshed, Some(record)) => {
                    tokio::task::spawn_blocking(move || unenrol(&record, &options).map(|()| None)).await
                }
                _ => {
                    let pod = fresh.clone();
                    tokio::task::spawn_blocking(move || enrol(&pod, &options).map(Some)).await
                }
            }
            .unwrap_or_else(|e| Err(format!("the enrolment task failed: {e}")));
            match (action, result) {
                (Want::Meshed, Ok(netns)) => {
                    self.backoff.remove(&uid);
                    let note = format!(
                        "weft-cni enrolled the running pod in the mesh (netns {}); connections opened before stay direct",
                        netns.map(|p| p.display().to_string()).unwrap_or_default()
                    );
                    self.event(&fresh, EventType::Normal, "Enrolled", note).await;
                }
                (_, Ok(_)) => {
                    self.backoff.remove(&uid);
                    let note =
                        "weft-cni removed the pod from the mesh: new connections go direct".to_string();
                    self.event(&fresh, EventType::Normal, "Unenrolled", note).await;
                }
                (action, Err(error)) => {
                    let delay = self.failed(&uid);
                    let reason = if action == Want::Meshed { "EnrolFailed" } else { "UnenrolFailed" };
                    tracing::warn!(pod = name, uid, error, retry_in = ?delay, "{reason}");
                    self.event(&fresh, EventType::Warning, reason, format!("{error}; retrying in {delay:?}"))
                        .await;
                }
            }
        }
        self.backoff.retain(|uid, _| seen.contains(uid));
        // Records of pods that are gone (their DEL never came, or raced with an enrolment):
        // tell the proxy, which would otherwise hold the dead netns open.
        for (uid, record) in &records {
            if !seen.contains(uid) && std::fs::File::open(&record.netns).is_err() {
                let (record, options) = (record.clone(), self.options.clone());
                let _ = tokio::task::spawn_blocking(move || unenrol(&record, &options)).await;
            }
        }
        self.backoff.values().map(|b| b.next).min()
    }
}

/// Runs until the task is dropped (aborted).
pub async fn run(client: Client, options: AgentOptions) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let changed = Arc::new(tokio::sync::Notify::new());
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={}", options.node_name));
    let pod_events = watcher(Api::<Pod>::all(client.clone()), on_node).default_backoff().reflect(pod_writer);
    let ns_events = watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(ns_writer);
    for events in [pod_events.map(|e| e.map(drop)).boxed(), ns_events.map(|e| e.map(drop)).boxed()] {
        let changed = changed.clone();
        tokio::spawn(events.for_each(move |event| {
            if let Err(error) = event {
                tracing::warn!(%error, "watch failed; retrying");
            }
            changed.notify_one();
            std::future::ready(())
        }));
    }
    if pods.wait_until_ready().await.is_err() || namespaces.wait_until_ready().await.is_err() {
        return;
    }
    tracing::info!(node = options.node_name, "enrolling running pods whose namespace is meshed");
    let reporter = Reporter { controller: "weft-cni".into(), instance: Some(options.node_name.clone()) };
    let mut agent = Agent {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        options: Arc::new(options),
        pods,
        namespaces,
        backoff: HashMap::new(),
    };
    loop {
        let next = agent.reconcile().await;
        let wait = next.map(|at| at.saturating_duration_since(Instant::now())).unwrap_or(RESYNC).min(RESYNC);
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A client from `kubeconfig`, or the in-cluster / default one when `None`.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: serde_json::Value, host_network: bool, phase: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": labels},
            "spec": {"containers": [], "hostNetwork": host_network},
            "status": {"phase": phase, "podIP": ip},
        }))
        .expect("pod")
    }

    fn ns(labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": "ns", "labels": labels}})).expect("ns")
    }

    #[test]
    fn what_a_pod_should_be() {
        let on = ns(json!({"weft.dev/mesh": "enabled"}));
        let off = ns(json!({}));
        let running = pod(json!({}), false, "Running", Some("10.0.0.5"));
        assert_eq!(want(&running, Some(&on)), Want::Meshed);
        assert_eq!(want(&running, Some(&off)), Want::Unmeshed);
        assert_eq!(want(&running, None), Want::Ignore, "namespace not known yet");
        let opted_out = pod(json!({"weft.dev/mesh": "disabled"}), false, "Running", Some("10.0.0.5"));
        assert_eq!(want(&opted_out, Some(&on)), Want::Unmeshed);
        assert_eq!(want(&pod(json!({}), true, "Running", Some("10.0.0.5")), Some(&on)), Want::Ignore);
        assert_eq!(want(&pod(json!({}), false, "Pending", None), Some(&on)), Want::NotRunning);
        assert_eq!(want(&pod(json!({}), false, "Running", None), Some(&on)), Want::NotRunning);
        let mut terminating = running.clone();
        terminating.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(want(&terminating, Some(&on)), Want::Ignore);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(4), Duration::from_secs(8));
        assert_eq!(backoff_delay(7), MAX_BACKOFF);
        assert_eq!(backoff_delay(u32::MAX), MAX_BACKOFF);
    }
}
