//! Applies the Services and EndpointSlices `resolve::exposure` computed for the Gateways, and
//! the load-balancer status of those Weft addresses from its pool; deletes the ones no Gateway
//! needs any more. Leader only, server-side apply with the status writer's field manager.
//!
//! The controller only ever changes or deletes objects that carry its managed-by label and a
//! Gateway owner: a Service of the same name that someone else made is left alone (and
//! reported). Deleting a Gateway deletes its Service through the owner reference (the
//! garbage collector); a Gateway that changes class, stops being exposed, or whose listeners
//! leave no port loses its Service here.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use mesh_api::model::ObjectKey;
use serde_json::{Value, json};

use crate::resolve::exposure::{self, Exposures};
use crate::status_writer::FIELD_MANAGER;
use crate::store::{Store, key_of};

/// What one round wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ServiceReport {
    pub applied: usize,
    pub deleted: usize,
    pub failed: usize,
}

/// The load-balancer ingress Weft wants on a Service, as the API has it: `ipMode: Proxy`
/// tells kube-proxy not to take over traffic to the address (it would send it to the
/// EndpointSlice's addresses); the node proxies receive it on the address itself.
pub fn ingress_status(addresses: &[IpAddr]) -> Value {
    let ingress: Vec<Value> =
        addresses.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "Proxy"})).collect();
    json!({"loadBalancer": {"ingress": ingress}})
}

/// Whether a Service's stored status already says `addresses` (as Weft writes them).
pub fn has_ingress(service: &Service, addresses: &[IpAddr]) -> bool {
    let stored =
        service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    let stored: Vec<(Option<&str>, Option<&str>)> =
        stored.into_iter().flatten().map(|i| (i.ip.as_deref(), i.ip_mode.as_deref())).collect();
    let wanted: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    stored.len() == wanted.len()
        && stored
            .iter()
            .zip(&wanted)
            .all(|((ip, mode), want)| *ip == Some(want.as_str()) && *mode == Some("Proxy"))
}

pub struct ServiceWriter {
    client: Client,
    /// What was last applied, by kind and key: an unchanged object is not applied again on
    /// every resolve. Forgotten when leadership is lost.
    applied: HashMap<(&'static str, ObjectKey), Value>,
}

impl ServiceWriter {
    pub fn new(client: Client) -> Self {
        ServiceWriter { client, applied: HashMap::new() }
    }

    /// Another replica may write while this one follows: apply everything again when leading.
    pub fn forget(&mut self) {
        self.applied.clear();
    }

    pub async fn write(&mut self, store: &Store, exposures: &Exposures) -> ServiceReport {
        let mut report = ServiceReport::default();
        let mut wanted_services = BTreeSet::new();
        let mut wanted_slices = BTreeSet::new();
        for (gateway, exposure) in exposures {
            let service_key = key_of(&exposure.service);
            wanted_services.insert(service_key.clone());
            if let Some(existing) = store.services.get(&service_key)
                && !exposure::is_ours(&existing.metadata)
            {
                // Never take over a Service someone else made.
                tracing::warn!(%gateway, service = %service_key, "a Service of this name exists and is not Weft's; the Gateway is not exposed by it");
                continue;
            }
            let body = with_type("v1", "Service", &exposure.service);
            let present = store.services.contains_key(&service_key);
            if self.apply::<Service>("Service", &service_key, body, present, &mut report).await
                && let Some(addresses) = &exposure.ingress
            {
                let current = store.services.get(&service_key);
                if !current.is_some_and(|s| has_ingress(s, addresses)) {
                    self.apply_status(&service_key, addresses, &mut report).await;
                }
            }
            for slice in &exposure.endpoint_slices {
                let key = key_of(slice);
                wanted_slices.insert(key.clone());
                let body = with_type("discovery.k8s.io/v1", "EndpointSlice", slice);
                let present = store.endpoint_slices.contains_key(&key);
                self.apply::<EndpointSlice>("EndpointSlice", &key, body, present, &mut report).await;
            }
        }
        // Garbage: ours, and no Gateway wants it (it changed class, is no longer exposed, or
        // is gone and the garbage collector has not been by yet).
        for (key, service) in &store.services {
            if exposure::is_ours(&service.metadata) && !wanted_services.contains(key) {
                self.delete::<Service>("Service", key, &mut report).await;
            }
        }
        for (key, slice) in &store.endpoint_slices {
            let managed =
                slice.metadata.labels.as_ref().and_then(|l| l.get(exposure::SLICE_MANAGED_BY_LABEL));
            if managed.map(String::as_str) == Some(exposure::SLICE_MANAGED_BY)
                && exposure::is_ours(&slice.metadata)
                && !wanted_slices.contains(key)
            {
                self.delete::<EndpointSlice>("EndpointSlice", key, &mut report).await;
            }
        }
        if report != ServiceReport::default() {
            tracing::info!(
                applied = report.applied,
                deleted = report.deleted,
                failed = report.failed,
                "Gateway Services applied"
            );
        }
        report
    }

    /// Applies `body` unless it was applied already and the object still exists; returns
    /// whether the object is (now) as wanted.
    async fn apply<K>(
        &mut self,
        kind: &'static str,
        key: &ObjectKey,
        body: Value,
        present: bool,
        report: &mut ServiceReport,
    ) -> bool
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let cache_key = (kind, key.clone());
        if present && self.applied.get(&cache_key) == Some(&body) {
            return true;
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(&key.name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                report.applied += 1;
                self.applied.insert(cache_key, body);
                true
            }
            Err(error) => {
                report.failed += 1;
                self.applied.remove(&cache_key);
                tracing::warn!(kind, object = %key, %error, "cannot apply");
                false
            }
        }
    }

    async fn apply_status(&mut self, key: &ObjectKey, addresses: &[IpAddr], report: &mut ServiceReport) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let body = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": key.name},
            "status": ingress_status(addresses),
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&key.name, &params, &Patch::Apply(&body)).await {
            Ok(_) => report.applied += 1,
            Err(error) => {
                report.failed += 1;
                tracing::warn!(service = %key, %error, "cannot write the load-balancer status");
            }
        }
    }

    async fn delete<K>(&mut self, kind: &'static str, key: &ObjectKey, report: &mut ServiceReport)
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.applied.remove(&(kind, key.clone()));
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => report.deleted += 1,
            // Gone already (the garbage collector, or another round): the watch will say so.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                report.failed += 1;
                tracing::warn!(kind, object = %key, %error, "cannot delete");
            }
        }
    }
}

/// The object as JSON with its apiVersion and kind (k8s-openapi's types leave them out of
/// `Serialize` only when serialized through their own impl; set them explicitly).
fn with_type<T: serde::Serialize>(api_version: &str, kind: &str, object: &T) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
        map.remove("status");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_is_written_with_ip_mode_proxy_and_compared_by_address_and_mode() {
        let ip: IpAddr = "10.250.128.7".parse().expect("ip");
        let status = ingress_status(&[ip]);
        assert_eq!(status, json!({"loadBalancer": {"ingress": [{"ip": "10.250.128.7", "ipMode": "Proxy"}]}}));
        let mut service = Service::default();
        assert!(!has_ingress(&service, &[ip]));
        service.status = serde_json::from_value(status).ok();
        assert!(has_ingress(&service, &[ip]));
        assert!(!has_ingress(&service, &["10.250.128.8".parse().expect("ip")]));
    }
}
