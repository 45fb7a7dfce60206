//! Pods that were already running when their namespace joined the mesh: the installer's
//! enrolment agent (`weft-cni install --node-name`) against a real kube-apiserver
//! (`tests/cluster/control-plane.sh`), a pod attached by the real CNI chain while its namespace
//! is not labelled, the proxy's in-pod server in this process.
//!
//! Unlabelled: the pod's connections go direct. Labelled: the agent finds the pod's netns from
//! its process (`/proc/<pid>/cgroup` names the pod UID), hands it to the proxy and installs the
//! rules; new connections land at the proxy, a connection opened before stays direct. The pod
//! opting out, or the label going away: rules gone, connections direct again. A pod whose netns
//! cannot be found gets a Warning Event.
//!
//! Needs root, nft, the CNI plugins (skipped otherwise unless WEFT_REQUIRE_NETNS=1) and
//! WEFT_TEST_KUBECONFIG (skipped without it unless WEFT_REQUIRE_APISERVER=1).

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node as KubeNode, Pod as KubePod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mesh_proxy::inpod::{InpodConfig, InpodServer};
use serde_json::json;

use support::{
    Installer, PodProcess, PodServer, Recorder, WAIT, client, in_netns, kubeconfig, round_trip, unmeshed,
};

/// A new connection from `netns` to `addr`: one line there and back.
async fn new_connection(netns: PathBuf, addr: SocketAddr) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut conn = in_netns(&netns, move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        round_trip(&mut conn, "hello")
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The test's Node and Namespace objects, deleted on drop (also when the test fails).
struct Cleanup {
    kubeconfig: PathBuf,
    node: String,
    namespace: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (kubeconfig, node, namespace) =
            (self.kubeconfig.clone(), self.node.clone(), self.namespace.clone());
        // Drop cannot await, and the test's runtime is blocked here: a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    let client = client(&kubeconfig).await;
                    let _ = Api::<Namespace>::all(client.clone())
                        .delete(&namespace, &DeleteParams::default())
                        .await;
                    let _ = Api::<KubeNode>::all(client).delete(&node, &DeleteParams::default()).await;
                });
            }
        })
        .join();
    }
}

/// Polls `f` until it is true, or panics after `WAIT`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Pod object bound to `node`, reported Running at `ip` (what kubelet would write).
async fn running_pod(client: &Client, namespace: &str, name: &str, node: &str, ip: &str) -> KubePod {
    let api: Api<KubePod> = Api::namespaced(client.clone(), namespace);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "serviceAccountName": "default", "automountServiceAccountToken": false,
                 // No kubelet heartbeats: the node goes NotReady; keep the pod bound anyway.
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .expect("pod");
    api.create(&PostParams::default(), &pod).await.expect("create pod");
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod status")
}

async fn label(api: &Api<Namespace>, name: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {"weft.dev/mesh": value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("label namespace");
}

async fn pod_label(api: &Api<KubePod>, name: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {"weft.dev/mesh": value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("label pod");
}

/// The reasons of the Events about the pod with `uid`.
async fn event_reasons(client: &Client, namespace: &str, uid: &str) -> Vec<String> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let events = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    events
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_are_enrolled_when_their_namespace_is_labelled_and_unenrolled_when_not() {
    let Some(path) = kubeconfig() else { return };
    if !support::netns_available(&[]) {
        return;
    }
    let client = client(&path).await;
    let node_name = testbed::netns::unique("weft-enrol-node-");
    let nodes: Api<KubeNode> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": node_name}})).expect("node"),
        )
        .await
        .expect("create node");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = testbed::netns::unique("weft-enrol-");
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("create namespace");
    let _cleanup = Cleanup { kubeconfig: path.clone(), node: node_name.clone(), namespace: ns.clone() };
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let _ = accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa"),
        )
        .await;

    // The node, its proxy, and a pod attached while the namespace is not in the mesh.
    let node = support::node("enrol", "10.219.1.0/24");
    let recorder = Arc::new(Recorder::default());
    let config = InpodConfig { socket: node.socket(), drain_deadline: Duration::ZERO, ..Default::default() };
    let proxy = InpodServer::start(config, recorder.clone()).await.expect("in-pod server");
    let pods: Api<KubePod> = Api::namespaced(client.clone(), &ns);
    let server = node.try_add_pod("other", "srv", unmeshed()).expect("server ADD");
    let _echo = PodServer::line_echo(&server.path(), 8080);
    // The app pod: API object (bound to the node, Running at its address) and sandbox.
    // The API server picks the UID, which the runtime passes to CNI (K8S_POD_UID), and the
    // address comes from CNI: object, then ADD, then the status kubelet would report.
    let api_pod = {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": "app"},
            "spec": {"nodeName": node_name, "serviceAccountName": "default", "automountServiceAccountToken": false,
                     "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("create pod")
    };
    let uid = api_pod.metadata.uid.clone().expect("uid");
    let app =
        node.try_add_pod_with_uid(&ns, "app", &uid, unmeshed()).expect("ADD in an unlabelled namespace");
    let status = json!({"status": {"phase": "Running", "podIP": app.ip.to_string(), "podIPs": [{"ip": app.ip.to_string()}]}});
    pods.patch_status("app", &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod status");
    // The sandbox's pause process, in the pod's cgroup as kubelet names it.
    let _pause = PodProcess::spawn(Some(&app.spec.netns.name), Some(&uid));
    let has_rules = || mesh_init::table_exists_in(&app.path()).expect("list rules");
    let record = node.state_dir().join(format!("{uid}.json"));

    let cni = tempfile::tempdir().expect("tempdir");
    let _installer = Installer::start(
        &node,
        &cni.path().join("bin"),
        &cni.path().join("net.d"),
        &["--node-name".as_ref(), node_name.as_ref(), "--agent-kubeconfig".as_ref(), path.as_os_str()],
    );

    // Not in the mesh: direct, and the agent leaves it alone.
    assert_eq!(new_connection(app.path(), server.addr(8080)).await.expect("direct"), "hello");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(proxy.pods().is_empty() && !has_rules() && !record.exists());
    assert!(recorder.seen().is_empty());
    // A connection opened before enrolment.
    let addr = server.addr(8080);
    let mut before = in_netns(&app.path(), move || TcpStream::connect_timeout(&addr, WAIT)).expect("connect");
    before.set_read_timeout(Some(WAIT)).expect("timeout");
    assert_eq!(round_trip(&mut before, "one").expect("before"), "one");

    // Labelled: enrolled without a restart.
    let labelled = Instant::now();
    label(&namespaces, &ns, Some("enabled")).await;
    eventually("the agent to enrol the pod", || {
        let done = proxy.pods() == vec![uid.clone()] && record.exists();
        async move { done }
    })
    .await;
    eventually("the rules", || std::future::ready(has_rules())).await;
    eprintln!("enrolled {:?} after the label", labelled.elapsed());
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("record")).expect("json");
    assert_eq!(saved["netns"], json!(app.path()), "recorded by its pinned path: {saved}");
    assert_eq!(saved["pod"]["namespace"], json!(ns));
    assert_eq!(new_connection(app.path(), server.addr(8080)).await.expect("through the proxy"), "hello");
    assert_eq!(
        recorder.seen(),
        vec![(uid.clone(), "outbound", server.addr(8080))],
        "new connections land at the proxy"
    );
    // The connection from before stays direct (the proxy never saw it) and works.
    let (answer, mut before) =
        tokio::task::spawn_blocking(move || (round_trip(&mut before, "two"), before)).await.expect("join");
    assert_eq!(answer.expect("the open connection survives enrolment"), "two");
    assert_eq!(recorder.seen().len(), 1);
    let (client2, ns2, uid2) = (client.clone(), ns.clone(), uid.clone());
    eventually("an Enrolled event", move || {
        let (c, n, u) = (client2.clone(), ns2.clone(), uid2.clone());
        async move { event_reasons(&c, &n, &u).await.iter().any(|r| r == "Enrolled") }
    })
    .await;

    // A pod whose netns is nowhere: a Warning Event, retried, nothing recorded.
    let ghost = running_pod(&client, &ns, "ghost", &node_name, "10.219.1.250").await;
    let ghost_uid = ghost.metadata.uid.clone().expect("uid");
    let (client2, ns2, g) = (client.clone(), ns.clone(), ghost_uid.clone());
    eventually("an EnrolFailed event", move || {
        let (c, n, u) = (client2.clone(), ns2.clone(), g.clone());
        async move { event_reasons(&c, &n, &u).await.iter().any(|r| r == "EnrolFailed") }
    })
    .await;
    assert!(!node.state_dir().join(format!("{ghost_uid}.json")).exists());
    assert_eq!(proxy.pods(), vec![uid.clone()]);
    pods.delete("ghost", &DeleteParams::default()).await.expect("delete ghost");

    // The pod opts out: un-enrolled; opts back in: enrolled again.
    pod_label(&pods, "app", Some("disabled")).await;
    eventually("the opt-out", || {
        let done = proxy.pods().is_empty() && !record.exists();
        async move { done }
    })
    .await;
    assert!(!has_rules(), "rules removed");
    pod_label(&pods, "app", None).await;
    eventually("the re-enrolment", || {
        let done = proxy.pods() == vec![uid.clone()] && record.exists();
        async move { done }
    })
    .await;
    assert_eq!(new_connection(app.path(), server.addr(8080)).await.expect("through the proxy"), "hello");
    assert_eq!(recorder.seen().len(), 2);

    // Unlabelled: rules gone, proxy told, record gone, connections direct again.
    label(&namespaces, &ns, None).await;
    eventually("the un-enrolment", || {
        let done = proxy.pods().is_empty() && !record.exists();
        async move { done }
    })
    .await;
    assert!(!has_rules());
    assert_eq!(new_connection(app.path(), server.addr(8080)).await.expect("direct again"), "hello");
    assert_eq!(recorder.seen().len(), 2, "the proxy saw nothing more: {:?}", recorder.seen());
    let (answer, _before) =
        tokio::task::spawn_blocking(move || (round_trip(&mut before, "three"), before)).await.expect("join");
    assert_eq!(answer.expect("the direct connection outlives it all"), "three");

    // DEL of the pod works as for any other (nothing recorded now).
    assert!(app.del());
    drop(_installer);
    proxy.shutdown(Duration::ZERO).await;
}
