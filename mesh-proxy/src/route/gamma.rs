//! GAMMA: routes whose parent is a Service shape the traffic clients send to that Service's
//! frontend (`clusterIP:port`), wherever the client is.
//!
//! A producer route (in the Service's namespace) applies to every client; a consumer route
//! (in a client's namespace) applies to that namespace's clients only, and for them replaces
//! the producer routes of the same Service, as the GAMMA spec says. Hostnames play no part:
//! the Service's address already picked the routes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_api::model::{self, Config, Consumers, ParentTarget, RouteKind};

use super::{Backends, CompiledRoute, Entry, HostBucket, ListenerRoutes, RouteCache};

/// The GAMMA routes of every Service frontend of one config snapshot. Each frontend's table is
/// shared with the snapshots before and after it for as long as no change touches it.
#[derive(Default)]
pub struct MeshRoutes {
    /// Shared with the cache and with the next snapshots until a change touches a frontend:
    /// one copy of the map (10k Services: ~1 MB) instead of one per snapshot.
    frontends: Arc<HashMap<SocketAddr, Arc<ServiceRoutes>>>,
}

#[derive(Default)]
struct ServiceRoutes {
    producer: Option<ListenerRoutes>,
    consumers: HashMap<String, ListenerRoutes>,
}

/// What one GAMMA route puts in the frontends of the Services it names.
struct Contribution {
    /// Its entries for each frontend and set of consumers, in the order they were made.
    targets: Vec<((SocketAddr, Consumers), Vec<Entry>)>,
    /// The Services its parents name, found in the config or not (a Service that appears
    /// later gives the route frontends).
    services: Vec<Arc<str>>,
}

/// Route keys in order, as a sorted `Vec`: most frontends and Services have one or two routes,
/// and a `BTreeSet` of one key costs a ~280-byte node and its own copy of the key, where this
/// costs a pointer to the one copy all the tables share (10k routes: ~5 MB less).
#[derive(Default)]
struct Keys(Vec<Arc<str>>);

impl Keys {
    fn insert(&mut self, key: &Arc<str>) {
        if let Err(at) = self.0.binary_search(key) {
            // The common single key without a Vec's default room for four.
            if self.0.capacity() == 0 {
                self.0.reserve_exact(1);
            }
            self.0.insert(at, key.clone());
        }
    }

    fn remove(&mut self, key: &str) {
        if let Ok(at) = self.0.binary_search_by(|k| (**k).cmp(key)) {
            self.0.remove(at);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }
}

/// The GAMMA tables kept between snapshots (in the [`RouteCache`]), with what a change needs
/// to find the frontends it touches: a delta rebuilds those and shares every other frontend's
/// table with the previous snapshot, so its cost follows its own size, not the config's.
#[derive(Default)]
pub(super) struct MeshCache {
    /// False until the first build (and after a full state): then every route is built.
    built: bool,
    /// Routes changed or removed since the last build, or whose compiled form was dropped.
    dirty_routes: HashSet<String>,
    /// Services changed or removed since the last build.
    dirty_services: HashSet<String>,
    /// By route key; the keys here and in the sets below are one shared copy per route.
    contributions: HashMap<Arc<str>, Contribution>,
    /// The routes with entries in each frontend, by key: the order routes are read in.
    by_frontend: HashMap<SocketAddr, Keys>,
    /// The routes whose parents name each Service.
    by_service: HashMap<Arc<str>, Keys>,
    frontends: Arc<HashMap<SocketAddr, Arc<ServiceRoutes>>>,
}

impl MeshCache {
    pub(super) fn route_changed(&mut self, key: &str) {
        if self.built {
            self.dirty_routes.insert(key.to_string());
        }
    }

    pub(super) fn service_changed(&mut self, key: &str) {
        if self.built {
            self.dirty_services.insert(key.to_string());
        }
    }
}

impl MeshRoutes {
    pub(super) fn build(config: &Config, backends: &Backends, cache: &mut RouteCache) -> Self {
        let RouteCache { routes: compiled, mesh } = cache;
        let dirty: BTreeSet<Arc<str>> = if mesh.built {
            let mut dirty: BTreeSet<Arc<str>> =
                std::mem::take(&mut mesh.dirty_routes).into_iter().map(Arc::from).collect();
            for service in std::mem::take(&mut mesh.dirty_services) {
                if let Some(routes) = mesh.by_service.get(service.as_str()) {
                    dirty.extend(routes.iter().cloned());
                }
            }
            dirty
        } else {
            *mesh = MeshCache { built: true, ..MeshCache::default() };
            config.routes.keys().map(|key| Arc::from(key.as_str())).collect()
        };

        let mut touched: HashSet<SocketAddr> = HashSet::new();
        for key in &dirty {
            if let Some(old) = mesh.contributions.remove(&**key) {
                for ((frontend, _), _) in &old.targets {
                    touched.insert(*frontend);
                    remove_from(&mut mesh.by_frontend, frontend, key);
                }
                for service in &old.services {
                    remove_from(&mut mesh.by_service, service, key);
                }
            }
            let Some(route) = config.routes.get(&**key) else { continue };
            let Some(contribution) = contribute(key, route, config, backends, compiled) else { continue };
            for service in &contribution.services {
                mesh.by_service.entry(service.clone()).or_default().insert(key);
            }
            for ((frontend, _), _) in &contribution.targets {
                touched.insert(*frontend);
                mesh.by_frontend.entry(*frontend).or_default().insert(key);
            }
            mesh.contributions.insert(key.clone(), contribution);
        }
        if !touched.is_empty() {
            // The served snapshot still holds the map: changing it makes this build's own copy
            // (the previous snapshot's goes with it). Nothing touched: nothing copied.
            let assembled: Vec<(SocketAddr, Option<ServiceRoutes>)> =
                touched.into_iter().map(|frontend| (frontend, assemble(mesh, frontend))).collect();
            let frontends = Arc::make_mut(&mut mesh.frontends);
            for (frontend, routes) in assembled {
                match routes {
                    Some(routes) => drop(frontends.insert(frontend, Arc::new(routes))),
                    None => drop(frontends.remove(&frontend)),
                }
            }
        }
        MeshRoutes { frontends: mesh.frontends.clone() }
    }

    /// The routes for a client in `namespace` calling `frontend`; `None` when the Service has
    /// no GAMMA routes for it (its traffic is plain L4).
    pub fn for_client(&self, frontend: SocketAddr, namespace: &str) -> Option<&ListenerRoutes> {
        let service = self.frontends.get(&frontend)?;
        service.consumers.get(namespace).or(service.producer.as_ref())
    }
}

/// `route`'s entries in the frontends of the Services it names; `None` when it is not a GAMMA
/// HTTP or gRPC route.
fn contribute(
    key: &str,
    route: &model::Route,
    config: &Config,
    backends: &Backends,
    routes: &mut HashMap<String, Arc<CompiledRoute>>,
) -> Option<Contribution> {
    if !matches!(route.key.kind, RouteKind::Http | RouteKind::Grpc) {
        return None;
    }
    let mut contribution = Contribution { targets: Vec::new(), services: Vec::new() };
    let mut compiled: Option<Arc<CompiledRoute>> = None;
    for parent in &route.parents {
        let ParentTarget::Service { service, port, consumers } = &parent.target else { continue };
        // One copy of the Service's key, for the route's list and the entries' label.
        let service_key: Arc<str> = service.to_string().into();
        if !contribution.services.contains(&service_key) {
            contribution.services.push(service_key.clone());
        }
        let Some(svc) = config.services.get(&*service_key) else { continue };
        let frontends: Vec<SocketAddr> = svc
            .ports
            .iter()
            .filter(|p| port.is_none_or(|only| only == p.port))
            .flat_map(|p| svc.vips.iter().map(move |vip| SocketAddr::new(*vip, p.port)))
            .collect();
        let compiled = compiled.get_or_insert_with(|| super::compiled(routes, key, route, backends));
        let label = service_key;
        for (rule_index, compiled_match) in &compiled.matches {
            for frontend in &frontends {
                let target = (*frontend, consumers.clone());
                let slot = match contribution.targets.iter().position(|(t, _)| *t == target) {
                    Some(slot) => slot,
                    None => {
                        contribution.targets.push((target, Vec::new()));
                        contribution.targets.len() - 1
                    }
                };
                contribution.targets[slot].1.push(Entry {
                    compiled: compiled_match.clone(),
                    rule: compiled.rules[*rule_index].clone(),
                    listener: label.clone(),
                });
            }
        }
    }
    // Kept until the route changes: without the room left by pushes (a Vec's first push makes
    // room for four; 10k routes kept ~5 MB of it).
    contribution.services.shrink_to_fit();
    contribution.targets.shrink_to_fit();
    for (_, entries) in &mut contribution.targets {
        entries.shrink_to_fit();
    }
    (!contribution.services.is_empty()).then_some(contribution)
}

/// One frontend's tables from the routes that have entries in it; `None` when none has.
fn assemble(mesh: &MeshCache, frontend: SocketAddr) -> Option<ServiceRoutes> {
    let mut lists: BTreeMap<&Consumers, Vec<Entry>> = BTreeMap::new();
    for key in mesh.by_frontend.get(&frontend)?.iter() {
        let Some(contribution) = mesh.contributions.get(key) else { continue };
        for ((at, consumers), entries) in &contribution.targets {
            if *at == frontend {
                lists.entry(consumers).or_default().extend(entries.iter().cloned());
            }
        }
    }
    if lists.is_empty() {
        return None;
    }
    let mut service = ServiceRoutes::default();
    for (consumers, mut list) in lists {
        // Stable: equal precedence keeps the order the routes were read in.
        list.sort_by(|a, b| a.compiled.order.cmp(&b.compiled.order));
        // Served until the frontend changes: without the room `extend` left.
        list.shrink_to_fit();
        let routes = ListenerRoutes {
            listener_hosts: Vec::new(),
            port: frontend.port(),
            hosts: vec![HostBucket { listener: None, pattern: None, entries: list }],
        };
        match consumers {
            Consumers::All => service.producer = Some(routes),
            Consumers::Namespace(namespace) => {
                service.consumers.insert(namespace.clone(), routes);
            }
        }
    }
    Some(service)
}

/// Takes `key` out of `map[at]`, and the set out of the map once it is empty.
fn remove_from<K: Hash + Eq>(map: &mut HashMap<K, Keys>, at: &K, key: &str) {
    if let Some(set) = map.get_mut(at) {
        set.remove(key);
        if set.0.is_empty() {
            map.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};
    use mesh_api::model::*;

    use crate::balance::Registry;
    use crate::route::RoutingTable;
    use crate::route::matching::RequestView;
    use crate::route::tests::prefix_rule;

    fn service(config: &mut Config) {
        config.insert_service(Service {
            key: ObjectKey::new("shop", "checkout"),
            hostname: "checkout.shop.svc.cluster.local".into(),
            vips: vec!["10.96.0.10".parse().expect("ip")],
            ports: [80, 9090]
                .map(|port| ServicePort {
                    name: None,
                    port,
                    transport: Transport::Tcp,
                    app_protocol: AppProtocol::Http1,
                })
                .to_vec(),
        });
    }

    fn route(config: &mut Config, namespace: &str, name: &str, port: Option<u16>, consumers: Consumers) {
        config.insert_route(Route {
            key: RouteKey { kind: RouteKind::Http, object: ObjectKey::new(namespace, name) },
            created: 0,
            parents: vec![RouteParent {
                target: ParentTarget::Service {
                    service: ObjectKey::new("shop", "checkout"),
                    port,
                    consumers,
                },
                hostnames: vec![],
            }],
            rules: vec![Rule {
                matches: vec![RouteMatch::Http(HttpMatch::default())],
                backends: vec![WeightedBackend {
                    weight: 1,
                    backend: BackendRef::Invalid { reason: "not needed here".into() },
                    filters: vec![],
                }],
                ..Default::default()
            }],
        });
    }

    fn chosen(table: &RoutingTable, frontend: &str, namespace: &str) -> Option<String> {
        let headers = HeaderMap::new();
        let view = RequestView { method: &Method::GET, path: "/", query: None, headers: &headers };
        let routes = table.mesh(frontend.parse().expect("addr"), namespace)?;
        routes.select("checkout", &view).map(|s| s.rule.route.to_string())
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
        let mut config = Config::default();
        service(&mut config);
        route(&mut config, "shop", "canary", Some(80), Consumers::All);
        route(&mut config, "beta", "beta-only", None, Consumers::Namespace("beta".into()));
        let table = RoutingTable::build(&config, &Registry::default());

        assert_eq!(chosen(&table, "10.96.0.10:80", "alpha").as_deref(), Some("HTTPRoute/shop/canary"));
        assert_eq!(chosen(&table, "10.96.0.10:80", "shop").as_deref(), Some("HTTPRoute/shop/canary"));
        assert_eq!(chosen(&table, "10.96.0.10:80", "beta").as_deref(), Some("HTTPRoute/beta/beta-only"));
        // The producer route names port 80 only; the consumer route every port.
        assert_eq!(chosen(&table, "10.96.0.10:9090", "alpha"), None);
        assert_eq!(chosen(&table, "10.96.0.10:9090", "beta").as_deref(), Some("HTTPRoute/beta/beta-only"));
        // Another address is not the Service.
        assert_eq!(chosen(&table, "10.96.0.11:80", "alpha"), None);
    }

    fn team(config: &mut Config, i: u8, vip: &str, prefix: &str) {
        let name = format!("svc-{i}");
        config.insert_service(Service {
            key: ObjectKey::new("team", &name),
            hostname: format!("{name}.team.svc.cluster.local"),
            vips: vec![vip.parse().expect("ip")],
            ports: vec![ServicePort {
                name: None,
                port: 80,
                transport: Transport::Tcp,
                app_protocol: AppProtocol::Http1,
            }],
        });
        team_route(config, "team", &name, &name, Consumers::All, prefix);
    }

    fn team_route(
        config: &mut Config,
        ns: &str,
        name: &str,
        service: &str,
        consumers: Consumers,
        prefix: &str,
    ) {
        config.insert_route(Route {
            key: RouteKey { kind: RouteKind::Http, object: ObjectKey::new(ns, name) },
            created: 0,
            parents: vec![RouteParent {
                target: ParentTarget::Service {
                    service: ObjectKey::new("team", service),
                    port: None,
                    consumers,
                },
                hostnames: vec![],
            }],
            rules: vec![prefix_rule(prefix)],
        });
    }

    /// Every frontend's routes, by consumers, in the order they are tried.
    fn describe(table: &RoutingTable) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::new();
        for (addr, service) in table.mesh.frontends.iter() {
            let mut tables: Vec<(String, &super::ListenerRoutes)> =
                service.consumers.iter().map(|(ns, r)| (ns.clone(), r)).collect();
            tables.extend(service.producer.iter().map(|r| ("*".to_string(), r)));
            for (consumers, routes) in tables {
                let entries = routes.hosts.iter().flat_map(|h| &h.entries);
                let names = entries.map(|e| format!("{} {:?}", e.rule.route, e.compiled.matcher)).collect();
                out.insert(format!("{addr} {consumers}"), names);
            }
        }
        out
    }

    #[test]
    fn a_delta_rebuilds_only_the_frontends_it_touches_and_shares_the_others() {
        use std::sync::Arc;

        use crate::config::ConfigStore;

        let store = ConfigStore::new(Arc::new(crate::metrics::Metrics::default()));
        let mut config = Config::default();
        for i in 0..40u8 {
            team(&mut config, i, &format!("10.96.0.{i}"), "/a");
        }
        team_route(&mut config, "beta", "beta-0", "svc-0", Consumers::Namespace("beta".into()), "/beta");
        store.apply(&config.to_full_update(1)).expect("full state");

        let mut version = 1;
        type Edit = Box<dyn Fn(&mut Config)>;
        let edits: Vec<Edit> = vec![
            // One route's match.
            Box::new(|c| team_route(c, "team", "svc-3", "svc-3", Consumers::All, "/b")),
            // One Service's address: its old frontend goes, a new one comes.
            Box::new(|c| team(c, 5, "10.97.0.5", "/a")),
            // A route removed, another added for a Service that had none.
            Box::new(|c| {
                c.routes.remove("HTTPRoute/team/svc-7");
                team_route(c, "beta", "beta-8", "svc-8", Consumers::Namespace("beta".into()), "/c");
            }),
            // A Service removed: its route stays in the config, without a frontend.
            Box::new(|c| drop(c.services.remove("team/svc-9"))),
            // ... and back.
            Box::new(|c| team(c, 9, "10.96.0.9", "/a")),
            // A consumer route removed: the producer's table answers that namespace again.
            Box::new(|c| drop(c.routes.remove("HTTPRoute/beta/beta-0"))),
        ];
        let touched: [&[&str]; 6] = [
            &["10.96.0.3:80"],
            &["10.96.0.5:80", "10.97.0.5:80"],
            &["10.96.0.7:80", "10.96.0.8:80"],
            &["10.96.0.9:80"],
            &["10.96.0.9:80"],
            &["10.96.0.0:80"],
        ];
        for (edit, touched) in edits.iter().zip(touched) {
            let before = store.load();
            let mut next = config.clone();
            edit(&mut next);
            version += 1;
            store.apply(&config.diff(&next, version)).expect("delta applies");
            config = next;
            let after = store.load();
            // The same tables as a build from scratch.
            assert_eq!(
                describe(&after.routes),
                describe(&RoutingTable::build(&config, &Registry::default()))
            );
            for (addr, routes) in after.routes.mesh.frontends.iter() {
                let shared =
                    before.routes.mesh.frontends.get(addr).is_some_and(|old| Arc::ptr_eq(old, routes));
                let was_touched = touched.contains(&addr.to_string().as_str());
                assert_eq!(shared, !was_touched, "{addr} after version {version}");
            }
        }
        // A change that touches no frontend (a workload) shares the whole map, not a copy of it.
        let before = store.load();
        let mut next = config.clone();
        next.insert_workload(Workload {
            key: ObjectKey::new("team", "pod-0"),
            ips: vec!["10.0.0.1".parse().expect("ip")],
            node: "node-a".into(),
            service_account: "default".into(),
            identity: "spiffe://cluster.local/ns/team/sa/default".into(),
            meshed: true,
            ready: true,
        });
        version += 1;
        store.apply(&config.diff(&next, version)).expect("delta applies");
        assert!(Arc::ptr_eq(&before.routes.mesh.frontends, &store.load().routes.mesh.frontends));
        assert_eq!(chosen(&store.load().routes, "10.96.0.0:80", "beta").as_deref(), None, "/ is not /a");
        let headers = HeaderMap::new();
        let view = RequestView { method: &Method::GET, path: "/a/x", query: None, headers: &headers };
        let snapshot = store.load();
        let routes = snapshot.routes.mesh("10.96.0.0:80".parse().expect("addr"), "beta").expect("producer");
        assert_eq!(
            routes.select("svc-0", &view).map(|s| s.rule.route.to_string()).as_deref(),
            Some("HTTPRoute/team/svc-0")
        );
    }
}
