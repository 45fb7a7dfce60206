//! Incremental resolve: a change to one object recomputes only what depends on it.
//!
//! [`Resolver`] keeps the last config and statuses, plus reverse indexes of what each output
//! read: the Services and Gateways each route names, the EndpointSlices of each Service. The
//! store's change log then says what to recompute:
//!
//! | change | recomputed |
//! | --- | --- |
//! | a route | that route (and the attachedRoutes of the listeners it left or joined) |
//! | a Service | its frontend and backends, and the routes that name it |
//! | an EndpointSlice | the backends of its Service (before and after the change) |
//! | a Pod | its workload |
//! | a Namespace | its workloads and routes (mesh enrolment, allowedRoutes selectors) |
//! | a ReferenceGrant | the routes that refer into its namespace, and the Gateways |
//! | a GatewayClass, Gateway or Secret | the Gateways; routes on any Gateway that changed |
//!
//! Gateways are few, so they are always recomputed as a whole when any of their inputs
//! changes; what counts is that the thousands of routes, Services and endpoints are not. The
//! result is the same as [`super::resolve`] on the same store, which a property test checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mesh_api::model::{Config, ObjectKey, RouteKey};
use mesh_api::proto::ResourceKind;

use super::exposure::{self, Exposures};
use super::gateways::{self, GatewayState};
use super::routes::{self, References};
use super::{AttachedRoutes, RouteOutcome, Settings, mesh, resolve_route};
use crate::status::Statuses;
use crate::store::{ChangeLog, Kind, Store};

/// Resources of the config one resolve changed, each with whether it existed before the
/// change (so a delta never removes what a proxy was never sent).
pub type Changed = BTreeMap<(ResourceKind, String), bool>;

pub struct Resolver {
    settings: Settings,
    initialized: bool,
    config: Config,
    statuses: Statuses,
    gateways: BTreeMap<ObjectKey, GatewayState>,
    attached: AttachedRoutes,
    outcomes: HashMap<RouteKey, RouteOutcome>,
    references: HashMap<RouteKey, References>,
    routes_by_service: HashMap<ObjectKey, BTreeSet<RouteKey>>,
    routes_by_gateway: HashMap<ObjectKey, BTreeSet<RouteKey>>,
    slices_of_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    owner_of_slice: HashMap<ObjectKey, ObjectKey>,
    backends_of_service: HashMap<ObjectKey, Vec<String>>,
    exposures: Exposures,
    /// The ConfigMaps GatewayClasses and Gateways name as parameters.
    parameter_config_maps: BTreeSet<ObjectKey>,
    /// Routes whose status changed, and whether the Gateway statuses were recomputed, since
    /// [`Resolver::take_status_changes`]: what standalone mode logs, without comparing every
    /// status after each change.
    status_changes: (BTreeSet<RouteKey>, bool),
}

/// Records every upsert and removal that really changes the config.
struct Writer<'a> {
    config: &'a mut Config,
    /// Resources touched this round, with whether each existed when the round began.
    touched: Changed,
}

macro_rules! writer_kind {
    ($put:ident, $del:ident, $field:ident, $kind:expr, $ty:ty) => {
        fn $put(&mut self, value: $ty) {
            let key = value.key.to_string();
            let before = self.config.$field.get(&key);
            // Stored as is or shared (`Arc`), depending on the kind.
            if before.map(std::borrow::Borrow::<$ty>::borrow) != Some(&value) {
                let existed = before.is_some();
                self.touched.entry(($kind, key.clone())).or_insert(existed);
                self.config.$field.insert(key, value.into());
            }
        }
        fn $del(&mut self, key: &str) {
            if self.config.$field.remove(key).is_some() {
                self.touched.entry(($kind, key.to_string())).or_insert(true);
            }
        }
    };
}

impl Writer<'_> {
    /// What changed: touched resources that existed before or exist now (one created and
    /// removed within the round never existed for anyone).
    fn finish(self) -> Changed {
        let config = &*self.config;
        self.touched
            .into_iter()
            .filter(|((kind, key), existed)| *existed || exists(config, *kind, key))
            .collect()
    }

    writer_kind!(put_service, del_service, services, ResourceKind::Service, mesh_api::model::Service);
    writer_kind!(put_backend, del_backend, backends, ResourceKind::Backend, mesh_api::model::Backend);
    writer_kind!(put_workload, del_workload, workloads, ResourceKind::Workload, mesh_api::model::Workload);
    writer_kind!(put_route, del_route, routes, ResourceKind::Route, mesh_api::model::Route);
    writer_kind!(put_listener, del_listener, listeners, ResourceKind::Listener, mesh_api::model::Listener);
    writer_kind!(
        put_certificate,
        del_certificate,
        certificates,
        ResourceKind::Certificate,
        mesh_api::model::Certificate
    );
}

impl Resolver {
    pub fn new(settings: Settings) -> Self {
        Resolver {
            settings,
            initialized: false,
            config: Config::default(),
            statuses: Statuses::default(),
            gateways: BTreeMap::new(),
            attached: AttachedRoutes::new(),
            outcomes: HashMap::new(),
            references: HashMap::new(),
            routes_by_service: HashMap::new(),
            routes_by_gateway: HashMap::new(),
            slices_of_service: HashMap::new(),
            owner_of_slice: HashMap::new(),
            backends_of_service: HashMap::new(),
            exposures: Exposures::new(),
            parameter_config_maps: BTreeSet::new(),
            status_changes: (BTreeSet::new(), false),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn statuses(&self) -> &Statuses {
        &self.statuses
    }

    /// The routes whose status changed (or went) since the last call, and whether the Gateway
    /// statuses were recomputed meanwhile.
    pub fn take_status_changes(&mut self) -> (BTreeSet<RouteKey>, bool) {
        std::mem::take(&mut self.status_changes)
    }

    /// The Services and EndpointSlices that expose the Gateways.
    pub fn exposures(&self) -> &Exposures {
        &self.exposures
    }

    /// Brings the config and statuses up to date with `store`, given what changed since the
    /// last call; returns the config resources that changed. The first call, and any call
    /// after a watch relist, recomputes everything.
    pub fn resolve(&mut self, store: &Store, changes: &ChangeLog) -> Changed {
        let mut config = std::mem::take(&mut self.config);
        let changed = self.resolve_into(store, changes, &mut config);
        self.config = config;
        changed
    }

    /// As [`Resolver::resolve`], but on a config held elsewhere (the publisher's), which must
    /// be the one every earlier call was given. `config()` stays empty in this mode.
    pub fn resolve_into(&mut self, store: &Store, changes: &ChangeLog, config: &mut Config) -> Changed {
        let everything = !self.initialized || !changes.relisted.is_empty();
        self.initialized = true;
        let mut w = Writer { config, touched: Changed::new() };

        let mut dirty_routes: BTreeSet<RouteKey> = BTreeSet::new();
        let mut dirty_services: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut dirty_pods: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut gateways_changed = false;

        if everything {
            self.reset_indexes(store);
            dirty_routes.extend(self.outcomes.keys().cloned());
            dirty_routes.extend(routes::all_keys(store));
            dirty_services.extend(self.backends_of_service.keys().cloned());
            dirty_services.extend(store.services.keys().cloned());
            dirty_pods.extend(w.config.workloads.values().map(|wl| wl.key.clone()));
            dirty_pods.extend(store.pods.keys().cloned());
        } else {
            for (kind, key) in &changes.objects {
                match kind {
                    Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute | Kind::TcpRoute | Kind::UdpRoute => {
                        dirty_routes.insert(RouteKey { kind: route_kind(*kind), object: key.clone() });
                    }
                    Kind::Service => {
                        // A Gateway's own Service: its load-balancer status is its address.
                        gateways_changed |= self.gateway_service(store, key);
                        dirty_services.insert(key.clone());
                        dirty_routes.extend(self.routes_by_service.get(key).into_iter().flatten().cloned());
                    }
                    Kind::EndpointSlice => {
                        let new_owner =
                            store.endpoint_slices.get(key).and_then(|s| mesh::slice_owner(key, s));
                        let old_owner = self.owner_of_slice.remove(key);
                        if let Some(old) = &old_owner
                            && let Some(slices) = self.slices_of_service.get_mut(old)
                        {
                            slices.remove(key);
                        }
                        if let Some(new) = &new_owner {
                            self.owner_of_slice.insert(key.clone(), new.clone());
                            self.slices_of_service.entry(new.clone()).or_default().insert(key.clone());
                        }
                        dirty_services.extend(old_owner.into_iter().chain(new_owner));
                    }
                    Kind::Pod => {
                        // Node proxies: their node addresses serve NodePort Gateways.
                        gateways_changed |= self
                            .settings
                            .gateway_services
                            .as_ref()
                            .is_some_and(|s| s.proxy_namespace == key.namespace);
                        dirty_pods.insert(key.clone());
                    }
                    Kind::ConfigMap => {
                        gateways_changed |= self.parameter_config_maps.contains(key);
                    }
                    Kind::Namespace => {
                        let ns = &key.name;
                        dirty_pods.extend(store.pods.keys().filter(|k| k.namespace == *ns).cloned());
                        dirty_routes
                            .extend(self.outcomes.keys().filter(|r| r.object.namespace == *ns).cloned());
                        gateways_changed = true;
                    }
                    Kind::ReferenceGrant => {
                        for (service, routes) in &self.routes_by_service {
                            if service.namespace == key.namespace {
                                dirty_routes.extend(routes.iter().cloned());
                            }
                        }
                        gateways_changed = true;
                    }
                    Kind::GatewayClass | Kind::Gateway | Kind::Secret => gateways_changed = true,
                }
            }
        }

        if everything || gateways_changed {
            let (classes, class_statuses) = gateways::classes(store);
            self.statuses.gateway_classes = class_statuses;
            let states = gateways::gateways(store, &self.settings, &classes);
            self.parameter_config_maps = exposure::referenced_config_maps(store);
            self.exposures = exposure::desired(store, &states);
            for key in self.gateways.keys().chain(states.keys()) {
                if self.gateways.get(key) != states.get(key) {
                    dirty_routes.extend(self.routes_by_gateway.get(key).into_iter().flatten().cloned());
                }
            }
            self.gateways = states;
            let mut fresh = Config::default();
            gateways::add_listeners(&self.gateways, &mut fresh);
            let stale: Vec<String> =
                w.config.listeners.keys().filter(|k| !fresh.listeners.contains_key(*k)).cloned().collect();
            stale.iter().for_each(|k| w.del_listener(k));
            fresh.listeners.into_values().for_each(|l| w.put_listener(l));
            let stale: Vec<String> = w
                .config
                .certificates
                .keys()
                .filter(|k| !fresh.certificates.contains_key(*k))
                .cloned()
                .collect();
            stale.iter().for_each(|k| w.del_certificate(k));
            fresh.certificates.into_values().for_each(|c| w.put_certificate(c));
        }

        for key in &dirty_services {
            let old = self.backends_of_service.remove(key).unwrap_or_default();
            let outputs = store.services.get(key).and_then(|svc| {
                let slices: Vec<_> = self
                    .slices_of_service
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| store.endpoint_slices.get(s).map(AsRef::as_ref))
                    .collect();
                mesh::service_outputs(&self.settings, key, svc, &slices)
            });
            match outputs {
                None => {
                    w.del_service(&key.to_string());
                    old.iter().for_each(|b| w.del_backend(b));
                }
                Some((service, backends)) => {
                    let keys: Vec<String> = backends.iter().map(|b| b.key.to_string()).collect();
                    old.iter().filter(|b| !keys.contains(b)).for_each(|b| w.del_backend(b));
                    backends.into_iter().for_each(|b| w.put_backend(b));
                    w.put_service(service);
                    self.backends_of_service.insert(key.clone(), keys);
                }
            }
        }

        for key in &dirty_pods {
            match store.pods.get(key).and_then(|pod| mesh::workload(store, &self.settings, key, pod)) {
                Some(workload) => w.put_workload(workload),
                None => w.del_workload(&key.to_string()),
            }
        }

        let mut attachments_changed = everything || gateways_changed;
        for key in &dirty_routes {
            if let Some(old) = self.outcomes.remove(key) {
                attachments_changed |= !old.attached.is_empty();
                for listener in &old.attached {
                    if let Some(n) = self.attached.get_mut(listener) {
                        *n -= 1;
                    }
                }
            }
            if let Some(old) = self.references.remove(key) {
                unindex(&mut self.routes_by_service, &old.services, key);
                unindex(&mut self.routes_by_gateway, &old.gateways, key);
            }
            let Some(spec) = routes::spec_for(store, key) else {
                if self.statuses.routes.remove(key).is_some() {
                    self.status_changes.0.insert(key.clone());
                }
                w.del_route(&key.to_string());
                continue;
            };
            let refs = routes::references(&spec);
            index(&mut self.routes_by_service, &refs.services, key);
            index(&mut self.routes_by_gateway, &refs.gateways, key);
            self.references.insert(key.clone(), refs);
            let outcome = resolve_route(store, &spec, &self.gateways);
            attachments_changed |= !outcome.attached.is_empty();
            for listener in &outcome.attached {
                *self.attached.entry(listener.clone()).or_default() += 1;
            }
            match &outcome.status {
                Some(status) => {
                    if self.statuses.routes.get(key) != Some(status) {
                        self.status_changes.0.insert(key.clone());
                        self.statuses.routes.insert(key.clone(), status.clone());
                    }
                }
                None => {
                    if self.statuses.routes.remove(key).is_some() {
                        self.status_changes.0.insert(key.clone());
                    }
                }
            }
            match &outcome.route {
                Some(route) => w.put_route(route.clone()),
                None => w.del_route(&key.to_string()),
            }
            self.outcomes.insert(key.clone(), outcome);
        }

        if attachments_changed {
            self.status_changes.1 = true;
            self.attached.retain(|_, n| *n > 0);
            self.statuses.gateways = self
                .gateways
                .iter()
                .map(|(key, gw)| (key.clone(), gateways::status(gw, &self.attached)))
                .collect();
        }
        w.finish()
    }

    /// Whether a Service is (or was) one exposing a Gateway.
    fn gateway_service(&self, store: &Store, key: &ObjectKey) -> bool {
        self.settings.gateway_services.is_some()
            && (self.exposures.values().any(|e| {
                e.service.metadata.name.as_deref() == Some(key.name.as_str())
                    && e.service.metadata.namespace.as_deref() == Some(key.namespace.as_str())
            }) || store.services.get(key).is_some_and(|s| exposure::is_ours(&s.metadata)))
    }

    /// Rebuilds the slice index from the store (after a relist, or the first time).
    fn reset_indexes(&mut self, store: &Store) {
        self.slices_of_service.clear();
        self.owner_of_slice.clear();
        for (key, slice) in &store.endpoint_slices {
            if let Some(owner) = mesh::slice_owner(key, slice) {
                self.owner_of_slice.insert(key.clone(), owner.clone());
                self.slices_of_service.entry(owner).or_default().insert(key.clone());
            }
        }
    }
}

/// Whether the config holds a resource.
pub fn exists(config: &Config, kind: ResourceKind, key: &str) -> bool {
    match kind {
        ResourceKind::Service => config.services.contains_key(key),
        ResourceKind::Workload => config.workloads.contains_key(key),
        ResourceKind::Backend => config.backends.contains_key(key),
        ResourceKind::Listener => config.listeners.contains_key(key),
        ResourceKind::Route => config.routes.contains_key(key),
        ResourceKind::Certificate => config.certificates.contains_key(key),
        ResourceKind::Unspecified => false,
    }
}

fn route_kind(kind: Kind) -> mesh_api::model::RouteKind {
    use mesh_api::model::RouteKind;
    match kind {
        Kind::GrpcRoute => RouteKind::Grpc,
        Kind::TlsRoute => RouteKind::Tls,
        Kind::TcpRoute => RouteKind::Tcp,
        Kind::UdpRoute => RouteKind::Udp,
        _ => RouteKind::Http,
    }
}

fn index(map: &mut HashMap<ObjectKey, BTreeSet<RouteKey>>, keys: &[ObjectKey], route: &RouteKey) {
    for k in keys {
        map.entry(k.clone()).or_default().insert(route.clone());
    }
}

fn unindex(map: &mut HashMap<ObjectKey, BTreeSet<RouteKey>>, keys: &[ObjectKey], route: &RouteKey) {
    for k in keys {
        if let Some(set) = map.get_mut(k) {
            set.remove(route);
            if set.is_empty() {
                map.remove(k);
            }
        }
    }
}
