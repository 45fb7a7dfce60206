//! Writes the statuses `resolve` computed to the cluster with server-side apply (field manager
//! `weft-controller`), touching only what this controller owns.
//!
//! The pure half decides what to write: `lastTransitionTime` is kept from the object when a
//! condition's status did not change (and set to now when it did); route `status.parents`
//! entries of other controllers are carried over untouched; an object whose status already
//! says the same (times aside) is not written at all, so a restarted controller does not
//! rewrite the whole cluster.

use std::fmt::Debug;

use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource};
use mesh_api::CONTROLLER_NAME;
use mesh_api::model::{ObjectKey, RouteKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::status::Statuses;
use crate::store::Store;

pub const FIELD_MANAGER: &str = "weft-controller";

/// Copies `lastTransitionTime` from `current` into every condition of `desired` whose type
/// and status are unchanged, and sets `now` on the others. Lists of listeners and route
/// parents are matched by `name` and by `parentRef`.
pub fn stamp_transition_times(desired: &mut Value, current: Option<&Value>, now: &str) {
    match desired {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                let current_value = current.and_then(|c| c.get(key));
                if key == "conditions" {
                    if let Value::Array(conditions) = value {
                        for condition in conditions {
                            let before = current_value.and_then(Value::as_array).and_then(|list| {
                                list.iter().find(|c| c.get("type") == condition.get("type"))
                            });
                            let time = match before {
                                Some(b) if b.get("status") == condition.get("status") => {
                                    b.get("lastTransitionTime").cloned().unwrap_or_else(|| json!(now))
                                }
                                _ => json!(now),
                            };
                            condition["lastTransitionTime"] = time;
                        }
                    }
                } else {
                    stamp_transition_times(value, current_value, now);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                let identity = |v: &Value| v.get("name").or_else(|| v.get("parentRef")).cloned();
                let mine = identity(item);
                let before = current
                    .and_then(Value::as_array)
                    .and_then(|list| list.iter().find(|c| mine.is_some() && identity(c) == mine));
                stamp_transition_times(item, before, now);
            }
        }
        _ => {}
    }
}

/// The value with every `lastTransitionTime` removed, for comparing statuses.
pub fn without_times(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

/// A route's `status.parents`: the other controllers' entries as they are, then ours.
pub fn merge_route_parents(current: Option<&Value>, ours: Vec<Value>) -> Value {
    let others = current
        .and_then(|s| s.get("parents"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned();
    json!({ "parents": others.chain(ours).collect::<Vec<_>>() })
}

/// The status to apply, or `None` when the object already has it.
pub fn plan(current: Option<&Value>, mut desired: Value, now: &str) -> Option<Value> {
    if current.map(without_times) == Some(without_times(&desired)) {
        return None;
    }
    stamp_transition_times(&mut desired, current, now);
    Some(desired)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub written: usize,
    pub unchanged: usize,
    pub failed: usize,
}

#[derive(Clone)]
pub struct StatusWriter {
    client: Client,
}

fn status_of<K: Serialize>(object: &K) -> Option<Value> {
    serde_json::to_value(object).ok().and_then(|v| v.get("status").cloned()).filter(|s| !s.is_null())
}

impl StatusWriter {
    pub fn new(client: Client) -> Self {
        StatusWriter { client }
    }

    pub async fn write(&self, store: &Store, statuses: &Statuses) -> WriteReport {
        let now = Timestamp::now().to_string();
        let mut report = WriteReport::default();
        for (name, status) in &statuses.gateway_classes {
            let key = ObjectKey::new("", name);
            let current = store.gateway_classes.get(&key).and_then(|o| status_of(o.as_ref()));
            let desired = serde_json::to_value(status).unwrap_or_default();
            self.apply::<gateway_api::experimental::gatewayclasses::GatewayClass>(
                &key,
                current,
                desired,
                &now,
                &mut report,
            )
            .await;
        }
        for (key, status) in &statuses.gateways {
            let current = store.gateways.get(key).and_then(|o| status_of(o.as_ref()));
            let desired = serde_json::to_value(status).unwrap_or_default();
            self.apply::<gateway_api::experimental::gateways::Gateway>(
                key,
                current,
                desired,
                &now,
                &mut report,
            )
            .await;
        }
        macro_rules! routes {
            ($field:ident, $kind:expr, $ty:ty) => {
                for (key, object) in &store.$field {
                    let current = status_of(object.as_ref());
                    let route_key = mesh_api::model::RouteKey { kind: $kind, object: key.clone() };
                    let ours: Vec<Value> = statuses
                        .routes
                        .get(&route_key)
                        .map(|s| s.parents.iter().filter_map(|p| serde_json::to_value(p).ok()).collect())
                        .unwrap_or_default();
                    let had_ours = current
                        .as_ref()
                        .and_then(|s| s.get("parents"))
                        .and_then(Value::as_array)
                        .is_some_and(|list| {
                            list.iter().any(|p| {
                                p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                            })
                        });
                    if ours.is_empty() && !had_ours {
                        continue; // nothing of ours to write or to take back
                    }
                    let desired = merge_route_parents(current.as_ref(), ours);
                    self.apply::<$ty>(key, current, desired, &now, &mut report).await;
                }
            };
        }
        routes!(http_routes, RouteKind::Http, gateway_api::experimental::httproutes::HttpRoute);
        routes!(grpc_routes, RouteKind::Grpc, gateway_api::experimental::grpcroutes::GrpcRoute);
        routes!(tls_routes, RouteKind::Tls, gateway_api::experimental::tlsroutes::TlsRoute);
        routes!(tcp_routes, RouteKind::Tcp, gateway_api::experimental::tcproutes::TcpRoute);
        routes!(udp_routes, RouteKind::Udp, gateway_api::experimental::udproutes::UdpRoute);
        if report.written > 0 || report.failed > 0 {
            tracing::info!(
                written = report.written,
                unchanged = report.unchanged,
                failed = report.failed,
                "statuses applied"
            );
        }
        report
    }

    async fn apply<K>(
        &self,
        key: &ObjectKey,
        current: Option<Value>,
        desired: Value,
        now: &str,
        report: &mut WriteReport,
    ) where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        let Some(status) = plan(current.as_ref(), desired, now) else {
            report.unchanged += 1;
            return;
        };
        // One path for namespaced (routes, Gateways) and cluster-scoped (GatewayClass) kinds.
        let resource = ApiResource::erase::<K>(&());
        let api: Api<DynamicObject> = if key.namespace.is_empty() {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), &key.namespace, &resource)
        };
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": { "name": key.name },
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&key.name, &params, &Patch::Apply(&body)).await {
            Ok(_) => report.written += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                // Deleted since the store saw it; the watch will catch up.
                report.unchanged += 1;
            }
            Err(error) => {
                report.failed += 1;
                tracing::warn!(kind = %K::kind(&()), object = %key, %error, "cannot write status");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str, time: Option<&str>) -> Value {
        let mut c = json!({"type": type_, "status": status, "reason": "R", "message": "m"});
        if let Some(t) = time {
            c["lastTransitionTime"] = json!(t);
        }
        c
    }

    #[test]
    fn unchanged_conditions_keep_their_time_changed_ones_get_now() {
        let current = json!({"conditions": [condition("Accepted", "True", Some("then")), condition("Programmed", "False", Some("then"))],
            "listeners": [{"name": "http", "conditions": [condition("Accepted", "True", Some("then"))]}]});
        let desired = json!({"conditions": [condition("Accepted", "True", None), condition("Programmed", "True", None)],
            "listeners": [{"name": "http", "conditions": [condition("Accepted", "True", None)]},
                          {"name": "new", "conditions": [condition("Accepted", "True", None)]}]});
        let planned = plan(Some(&current), desired, "now").expect("something changed");
        assert_eq!(planned["conditions"][0]["lastTransitionTime"], "then");
        assert_eq!(planned["conditions"][1]["lastTransitionTime"], "now");
        assert_eq!(planned["listeners"][0]["conditions"][0]["lastTransitionTime"], "then");
        assert_eq!(planned["listeners"][1]["conditions"][0]["lastTransitionTime"], "now");
    }

    #[test]
    fn an_identical_status_is_not_rewritten() {
        let current = json!({"conditions": [condition("Accepted", "True", Some("then"))]});
        let desired = json!({"conditions": [condition("Accepted", "True", None)]});
        assert_eq!(plan(Some(&current), desired, "now"), None);
    }

    #[test]
    fn other_controllers_route_entries_survive_and_ours_are_replaced() {
        let theirs =
            json!({"parentRef": {"name": "gw"}, "controllerName": "example.com/other", "conditions": []});
        let our_old =
            json!({"parentRef": {"name": "stale"}, "controllerName": CONTROLLER_NAME, "conditions": []});
        let current = json!({"parents": [theirs.clone(), our_old]});
        let our_new =
            json!({"parentRef": {"name": "weft-gw"}, "controllerName": CONTROLLER_NAME, "conditions": []});
        let merged = merge_route_parents(Some(&current), vec![our_new.clone()]);
        assert_eq!(merged, json!({"parents": [theirs.clone(), our_new]}));
        // A route that no longer names any of our parents loses only our entries.
        assert_eq!(merge_route_parents(Some(&current), vec![]), json!({"parents": [theirs]}));
    }
}
