//! Is this pod in the mesh? A namespace labelled `weft.dev/mesh=enabled`, unless the pod's
//! own label says `weft.dev/mesh=disabled`. The facts come from `runtimeConfig.weft` when the
//! runtime gives them, else from the API server: first the namespace (for a namespace not in
//! the mesh, the only call), then the pod.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use mesh_api::MESH_LABEL;

use crate::netconf::PodFacts;

/// How long the API-server lookups may take in all. Kubelet gives a whole sandbox setup a few
/// minutes; an API server that has not answered in 10 s is unavailable, and failing lets the
/// kubelet retry rather than start a meshed pod unmeshed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A pod's mesh decision and what the rest of ADD needs from the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub meshed: bool,
    pub uid: Option<String>,
    pub service_account: String,
    pub annotations: BTreeMap<String, String>,
}

impl Decision {
    pub fn from_facts(facts: &PodFacts) -> Decision {
        let enabled = facts.namespace_labels.get(MESH_LABEL).is_some_and(|v| v == "enabled");
        let opted_out = facts.pod_labels.get(MESH_LABEL).is_some_and(|v| v == "disabled");
        Decision {
            meshed: enabled && !opted_out,
            uid: None,
            service_account: facts.service_account.clone(),
            annotations: facts.pod_annotations.clone(),
        }
    }
}

pub async fn lookup(kubeconfig: &Path, namespace: &str, name: &str) -> anyhow::Result<Decision> {
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup_inner(kubeconfig, namespace, name))
        .await
        .map_err(|_| anyhow::anyhow!("the API server did not answer within {LOOKUP_TIMEOUT:?}"))?
}

async fn lookup_inner(kubeconfig: &Path, namespace: &str, name: &str) -> anyhow::Result<Decision> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;
    let ns = Api::<Namespace>::all(client.clone()).get(namespace).await?;
    let labels = ns.metadata.labels.unwrap_or_default();
    if labels.get(MESH_LABEL).is_none_or(|v| v != "enabled") {
        return Ok(Decision::default());
    }
    let pod = Api::<Pod>::namespaced(client, namespace).get(name).await?;
    let facts = PodFacts {
        namespace_labels: labels,
        pod_labels: pod.metadata.labels.unwrap_or_default(),
        pod_annotations: pod.metadata.annotations.unwrap_or_default(),
        service_account: pod.spec.and_then(|s| s.service_account_name).unwrap_or_default(),
    };
    Ok(Decision { uid: pod.metadata.uid, ..Decision::from_facts(&facts) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(ns: &[(&str, &str)], pod: &[(&str, &str)]) -> PodFacts {
        let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PodFacts { namespace_labels: map(ns), pod_labels: map(pod), ..Default::default() }
    }

    #[test]
    fn namespace_label_enrols_and_pod_label_opts_out() {
        let on = [(MESH_LABEL, "enabled")];
        assert!(Decision::from_facts(&facts(&on, &[])).meshed);
        assert!(!Decision::from_facts(&facts(&on, &[(MESH_LABEL, "disabled")])).meshed);
        assert!(!Decision::from_facts(&facts(&[], &[])).meshed);
        assert!(!Decision::from_facts(&facts(&[(MESH_LABEL, "true")], &[])).meshed);
        // A pod cannot opt itself in: enrolment is the namespace owner's decision.
        assert!(!Decision::from_facts(&facts(&[], &[(MESH_LABEL, "enabled")])).meshed);
    }
}
