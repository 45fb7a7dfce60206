//! The plugin's mesh decision against a real kube-apiserver (`tests/cluster/control-plane.sh`):
//! the namespace label enrols, the pod label opts out, annotations come along, and an unmeshed
//! namespace costs one lookup and returns `prevResult` through the real binary.
//!
//! Named explicitly by `WEFT_TEST_KUBECONFIG`; skipped without it unless
//! `WEFT_REQUIRE_APISERVER=1` (CI).

use std::io::Write as _;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cni_plugin::meshed;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use support::{client, kubeconfig};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A namespace deleted on drop.
struct TestNamespace {
    kubeconfig: PathBuf,
    name: String,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (kubeconfig, name) = (self.kubeconfig.clone(), self.name.clone());
        // Drop cannot await, and the test's client lives on the test's (now blocked) runtime:
        // delete with a client of its own, on a runtime of its own thread.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                let _ = rt.block_on(async {
                    let api: Api<Namespace> = Api::all(client(&kubeconfig).await);
                    api.delete(&name, &DeleteParams::default()).await
                });
            }
        })
        .join();
    }
}

async fn namespace(client: &Client, kubeconfig: &Path, labels: Value) -> TestNamespace {
    let api: Api<Namespace> = Api::all(client.clone());
    let name = unique("weft-cni");
    let ns =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("namespace");
    api.create(&PostParams::default(), &ns).await.expect("create namespace");
    TestNamespace { kubeconfig: kubeconfig.to_path_buf(), name }
}

async fn pod(client: &Client, namespace: &str, name: &str, labels: Value, annotations: Value) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {"serviceAccountName": "default", "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }))
    .expect("pod");
    api.create(&PostParams::default(), &pod).await.expect("create pod")
}

#[tokio::test]
async fn namespace_label_pod_opt_out_and_annotations_from_the_api_server() {
    let Some(path) = kubeconfig() else { return };
    let client = client(&path).await;
    let on = namespace(&client, &path, json!({"weft.dev/mesh": "enabled"})).await;
    // The ServiceAccount admission needs the namespace's default account, which no
    // controller-manager may create here: make it.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &on.name);
    let _ = sa
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa"),
        )
        .await;
    let annotated =
        pod(&client, &on.name, "in", json!({}), json!({"weft.dev/exclude-outbound-ports": "5432"})).await;
    pod(&client, &on.name, "out", json!({"weft.dev/mesh": "disabled"}), json!({})).await;

    let decision = meshed::lookup(&path, &on.name, "in").await.expect("lookup");
    assert!(decision.meshed);
    assert_eq!(decision.uid, annotated.metadata.uid);
    assert_eq!(decision.service_account, "default");
    assert_eq!(decision.annotations["weft.dev/exclude-outbound-ports"], "5432");
    assert!(!meshed::lookup(&path, &on.name, "out").await.expect("lookup").meshed, "pod label opts out");
    assert!(meshed::lookup(&path, &on.name, "missing").await.is_err(), "a pod that is not there is an error");

    let off = namespace(&client, &path, json!({})).await;
    assert!(
        !meshed::lookup(&path, &off.name, "anything").await.expect("lookup").meshed,
        "one lookup suffices"
    );

    // Through the real binary: an unmeshed pod gets prevResult back, untouched.
    let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.9/24"}]});
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "weft-cni", "kubeconfig": path, "prevResult": prev});
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-cni"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/nonexistent")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", format!("K8S_POD_NAMESPACE={};K8S_POD_NAME=anything", off.name))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("weft-cni");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed, prev);
}
