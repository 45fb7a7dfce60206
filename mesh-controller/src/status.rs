//! The statuses `resolve` computes, shaped exactly as the Gateway API status fields are
//! (camelCase, the same lists), so that one value serves the YAML printout of `--once` and the
//! server-side-apply patch in a cluster.
//!
//! Conditions carry no `lastTransitionTime` here: resolve is pure and deterministic, and the
//! time a condition last changed is known only to the writer, which keeps the time already on
//! the object when the condition did not change.

use std::collections::BTreeMap;

use mesh_api::model::{ObjectKey, RouteKey};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn new(
        type_: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
    ) -> Self {
        Condition {
            type_: type_.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            observed_generation: generation,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_features: Vec<SupportedFeature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SupportedFeature {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteGroupKind {
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteStatus {
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// A route's `parentRef`, echoed back in status as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// Every status this controller owns, after one resolve.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Statuses {
    /// GatewayClasses by name (cluster-scoped).
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    pub gateways: BTreeMap<ObjectKey, GatewayStatus>,
    pub routes: BTreeMap<RouteKey, RouteStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDocument<'a, S: Serialize> {
    api_version: &'a str,
    kind: &'a str,
    metadata: Metadata<'a>,
    status: &'a S,
}

#[derive(Serialize)]
struct Metadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    name: &'a str,
}

const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

impl Statuses {
    /// Every status as a stream of YAML documents, in a stable order: GatewayClasses,
    /// Gateways, then routes by kind, namespace and name.
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut out = String::new();
        let mut push = |doc: String| {
            out.push_str("---\n");
            out.push_str(&doc);
        };
        for (name, status) in &self.gateway_classes {
            push(serde_yaml::to_string(&StatusDocument {
                api_version: GATEWAY_API_VERSION,
                kind: "GatewayClass",
                metadata: Metadata { namespace: None, name },
                status,
            })?);
        }
        for (key, status) in &self.gateways {
            push(serde_yaml::to_string(&StatusDocument {
                api_version: GATEWAY_API_VERSION,
                kind: "Gateway",
                metadata: Metadata { namespace: Some(&key.namespace), name: &key.name },
                status,
            })?);
        }
        for (key, status) in &self.routes {
            let api_version = match key.kind {
                mesh_api::model::RouteKind::Http | mesh_api::model::RouteKind::Grpc => GATEWAY_API_VERSION,
                _ => "gateway.networking.k8s.io/v1alpha2",
            };
            push(serde_yaml::to_string(&StatusDocument {
                api_version,
                kind: key.kind.as_str(),
                metadata: Metadata { namespace: Some(&key.object.namespace), name: &key.object.name },
                status,
            })?);
        }
        Ok(out)
    }
}
