//! HTTP routing: which rule of which route answers a request on a listener.
//!
//! Everything a request needs is compiled when a config snapshot is built (regexes, header
//! names, the precedence order, backend endpoint sets), so the request path only compares.

pub mod cors;
pub mod filters;
pub mod gamma;
pub mod l4;
pub mod matching;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_api::model::{self, BackendRef, Config, Filter, ListenerProtocol, ParentTarget, RouteKind};
use mesh_api::precedence::{MatchOrder, hostname_rank};
use rand::Rng;
use rustls::ServerConfig;

use crate::balance::{EndpointSet, Registry};
use crate::listener::{bind_addresses, serves_http, tls};
use matching::{Matcher, RequestView};

/// Each backend's ready endpoints, by backend key (kept by the config store between
/// snapshots, so a snapshot is compiled without making this map again).
pub type Backends = HashMap<String, Arc<EndpointSet>>;

/// Routes of every HTTP bind address of one config snapshot.
#[derive(Default)]
pub struct RoutingTable {
    listeners: HashMap<SocketAddr, ListenerRoutes>,
    tls: HashMap<SocketAddr, Arc<ServerConfig>>,
    /// TCP and TLS-passthrough addresses.
    l4: HashMap<SocketAddr, l4::L4Routes>,
    /// UDP addresses.
    udp: HashMap<SocketAddr, l4::Target>,
    mesh: gamma::MeshRoutes,
}

impl RoutingTable {
    pub fn build(config: &Config, registry: &Registry) -> Self {
        let backends: Backends =
            config.backends.iter().map(|(key, b)| (key.clone(), Arc::new(registry.endpoints(b)))).collect();
        Self::build_with(config, &backends, &mut RouteCache::default())
    }

    /// [`RoutingTable::build`] with each backend's endpoint set already made and the routes
    /// compiled for an earlier snapshot in `cache` (both kept by the config store, so a delta
    /// compiles again only the backends and routes it touches).
    pub fn build_with(config: &Config, backends: &Backends, cache: &mut RouteCache) -> Self {
        // Several Gateway listeners may share one address and port (told apart by hostname):
        // their routes go into the same table.
        let mut by_addr: HashMap<SocketAddr, ListenerRoutes> = HashMap::new();
        let mut addr_of: HashMap<String, (Vec<SocketAddr>, Option<String>)> = HashMap::new();
        let mut https: HashMap<SocketAddr, Vec<&model::Listener>> = HashMap::new();
        for listener in config.listeners.values().filter(|l| serves_http(l)) {
            let addrs = bind_addresses(listener);
            for addr in &addrs {
                by_addr
                    .entry(*addr)
                    .or_insert_with(|| ListenerRoutes {
                        port: listener.port,
                        listener_hosts: Vec::new(),
                        hosts: Vec::new(),
                    })
                    .listener_hosts
                    .push(listener.hostname.as_ref().map(|h| h.to_ascii_lowercase()));
                if listener.protocol == ListenerProtocol::Https {
                    https.entry(*addr).or_default().push(listener);
                }
            }
            addr_of.insert(listener.key.to_string(), (addrs, listener.hostname.clone()));
        }

        // Keyed by (listener hostname, route hostname): a request is first given to the listener
        // whose hostname matches it best, and only that listener's routes can answer it.
        type BucketKey = (Option<String>, Option<String>);
        let mut buckets: HashMap<SocketAddr, BTreeMap<BucketKey, Vec<Entry>>> = HashMap::new();
        for (route_key, route) in &config.routes {
            if !matches!(route.key.kind, RouteKind::Http | RouteKind::Grpc) {
                continue;
            }
            if !route.parents.iter().any(|p| matches!(p.target, ParentTarget::Listener(_))) {
                continue;
            }
            let compiled = cache.get(route_key, route, backends);
            for parent in &route.parents {
                let ParentTarget::Listener(listener_key) = &parent.target else { continue };
                let listener_name = listener_key.to_string();
                let Some((addrs, listener_hostname)) = addr_of.get(&listener_name) else { continue };
                let listener_name: Arc<str> = listener_name.into();
                let listener_hostname = listener_hostname.as_ref().map(|h| h.to_ascii_lowercase());
                let hostnames: Vec<Option<String>> = if parent.hostnames.is_empty() {
                    vec![listener_hostname.clone()]
                } else {
                    parent.hostnames.iter().map(|h| Some(h.to_ascii_lowercase())).collect()
                };
                for (rule_index, compiled_match) in &compiled.matches {
                    for addr in addrs {
                        for hostname in &hostnames {
                            let key = (listener_hostname.clone(), hostname.clone());
                            buckets.entry(*addr).or_default().entry(key).or_default().push(Entry {
                                compiled: compiled_match.clone(),
                                rule: compiled.rules[*rule_index].clone(),
                                listener: listener_name.clone(),
                            });
                        }
                    }
                }
            }
        }
        for (addr, hosts) in buckets {
            let Some(routes) = by_addr.get_mut(&addr) else { continue };
            for ((listener, pattern), mut entries) in hosts {
                entries.sort_by(|a, b| a.compiled.order.cmp(&b.compiled.order));
                routes.hosts.push(HostBucket { listener, pattern, entries });
            }
        }
        let tls = https
            .into_iter()
            .filter_map(|(addr, ls)| Some((addr, tls::server_config(&ls, config)?)))
            .collect();
        let mesh = gamma::MeshRoutes::build(config, backends, cache);
        let l4 = l4::build(config, backends);
        let udp = l4::build_udp(config, backends);
        RoutingTable { listeners: by_addr, tls, mesh, l4, udp }
    }

    /// The route of a UDP address.
    pub fn udp(&self, addr: &SocketAddr) -> Option<&l4::Target> {
        self.udp.get(addr)
    }

    /// Every UDP address.
    pub fn udp_addresses(&self) -> impl Iterator<Item = &SocketAddr> {
        self.udp.keys()
    }

    /// The L4 routes of a TCP or TLS-passthrough address.
    pub fn l4(&self, addr: &SocketAddr) -> Option<&l4::L4Routes> {
        self.l4.get(addr)
    }

    /// GAMMA routes for a client in `namespace` calling a Service at `frontend`.
    pub fn mesh(&self, frontend: SocketAddr, namespace: &str) -> Option<&ListenerRoutes> {
        self.mesh.for_client(frontend, namespace)
    }

    /// The TLS config of an HTTPS address; `None` for plain HTTP.
    pub fn tls(&self, addr: &SocketAddr) -> Option<Arc<ServerConfig>> {
        self.tls.get(addr).cloned()
    }

    pub fn listener(&self, addr: &SocketAddr) -> Option<&ListenerRoutes> {
        self.listeners.get(addr)
    }

    pub fn addresses(&self) -> impl Iterator<Item = &SocketAddr> {
        self.listeners.keys()
    }
}

/// The routes reachable through one bound address.
pub struct ListenerRoutes {
    pub port: u16,
    /// Hostnames of the listeners sharing this address (`None`: a listener without one). Empty
    /// for mesh routes, which have no listeners.
    listener_hosts: Vec<Option<String>>,
    hosts: Vec<HostBucket>,
}

struct HostBucket {
    /// The hostname of the listener these routes attach through.
    listener: Option<String>,
    /// Lower-cased hostname or `*.` wildcard; `None` is any host.
    pattern: Option<String>,
    /// In precedence order.
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    compiled: Arc<CompiledMatch>,
    rule: Arc<CompiledRule>,
    listener: Arc<str>,
}

/// One match of a route, compiled, with its place in precedence order.
pub struct CompiledMatch {
    order: MatchOrder,
    matcher: Matcher,
}

/// An HTTP or gRPC route compiled: its rules with their backends resolved, and its matches.
pub struct CompiledRoute {
    rules: Vec<Arc<CompiledRule>>,
    /// Each match that compiled, with the index of its rule (one that does not compile is left
    /// out, and logged when the route is compiled).
    matches: Vec<(usize, Arc<CompiledMatch>)>,
    /// Keys of the backends the rules name (mirrors included), found or not: when one of them
    /// changes, the route is compiled again.
    backends: Vec<String>,
}

impl CompiledRoute {
    fn build(route: &model::Route, backends: &Backends) -> Self {
        let rules =
            route.rules.iter().map(|rule| Arc::new(CompiledRule::build(route, rule, backends))).collect();
        let mut matches = Vec::new();
        for (rule_index, rule) in route.rules.iter().enumerate() {
            for (match_index, m) in rule.matches.iter().enumerate() {
                match Matcher::compile(m) {
                    Ok(matcher) => {
                        let order = MatchOrder::new(route, rule_index, match_index, m);
                        matches.push((rule_index, Arc::new(CompiledMatch { order, matcher })));
                    }
                    Err(error) => {
                        tracing::warn!(route = %route.key, rule = rule_index, %error, "match skipped")
                    }
                }
            }
        }
        let mirrored = |filters: &[Filter]| -> Vec<BackendRef> {
            filters
                .iter()
                .filter_map(|f| match f {
                    Filter::RequestMirror(m) => Some(m.backend.clone()),
                    _ => None,
                })
                .collect()
        };
        let mut named: Vec<BackendRef> = Vec::new();
        for rule in &route.rules {
            named.extend(mirrored(&rule.filters));
            for b in &rule.backends {
                named.push(b.backend.clone());
                named.extend(mirrored(&b.filters));
            }
        }
        let mut backends: Vec<String> = named
            .iter()
            .filter_map(|b| match b {
                BackendRef::Service(key) => Some(key.to_string()),
                BackendRef::Invalid { .. } => None,
            })
            .collect();
        // Kept as long as the route: without the room pushes and filtered collects leave (a
        // Vec's first push makes room for four).
        matches.shrink_to_fit();
        backends.shrink_to_fit();
        CompiledRoute { rules, matches, backends }
    }
}

/// Compiled HTTP and gRPC routes by route key, kept between snapshots: a config change
/// compiles again only the routes it changed and those naming a backend it changed. The GAMMA
/// tables are kept too, so a change rebuilds only the Service frontends it touches.
#[derive(Default)]
pub struct RouteCache {
    routes: HashMap<String, Arc<CompiledRoute>>,
    mesh: gamma::MeshCache,
}

/// The compiled form of `route` (stored under `key`), from `routes` or compiled now.
fn compiled(
    routes: &mut HashMap<String, Arc<CompiledRoute>>,
    key: &str,
    route: &model::Route,
    backends: &Backends,
) -> Arc<CompiledRoute> {
    if let Some(compiled) = routes.get(key) {
        return compiled.clone();
    }
    let compiled = Arc::new(CompiledRoute::build(route, backends));
    routes.insert(key.to_string(), compiled.clone());
    compiled
}

impl RouteCache {
    /// The compiled form of `route` (stored under `key`), from the cache or compiled now.
    fn get(&mut self, key: &str, route: &model::Route, backends: &Backends) -> Arc<CompiledRoute> {
        compiled(&mut self.routes, key, route, backends)
    }

    /// Forgets the routes `routes` names (changed or removed) and every route that names one
    /// of `backends`; the GAMMA tables of those routes and of the Services in `services`
    /// (changed or removed) are rebuilt at the next snapshot.
    pub fn forget(
        &mut self,
        routes: &std::collections::HashSet<&str>,
        backends: &std::collections::HashSet<&str>,
        services: &std::collections::HashSet<&str>,
    ) {
        for key in routes {
            self.routes.remove(*key);
            self.mesh.route_changed(key);
        }
        if !backends.is_empty() {
            let mesh = &mut self.mesh;
            self.routes.retain(|key, c| {
                let keep = !c.backends.iter().any(|b| backends.contains(b.as_str()));
                if !keep {
                    mesh.route_changed(key);
                }
                keep
            });
        }
        for key in services {
            self.mesh.service_changed(key);
        }
    }

    pub fn clear(&mut self) {
        self.routes.clear();
        self.mesh = gamma::MeshCache::default();
    }
}

/// The rule that answers a request, and how it was matched.
pub struct Selected<'a> {
    pub rule: &'a Arc<CompiledRule>,
    pub matched_prefix: Option<&'a str>,
    pub listener: &'a Arc<str>,
}

impl ListenerRoutes {
    /// The request goes to the listener whose hostname matches `host` best (listener
    /// isolation: a route on `*.example.com` never answers a host that `foo.example.com`'s
    /// listener takes, even when that listener has no matching route). Among that listener's
    /// routes only the most specific hostname that matches `host` is considered; within it, the
    /// first match in precedence order wins.
    pub fn select(&self, host: &str, req: &RequestView<'_>) -> Option<Selected<'_>> {
        let listener = if self.listener_hosts.is_empty() {
            None
        } else {
            Some(
                self.listener_hosts
                    .iter()
                    .filter_map(|l| hostname_rank(l.as_deref(), host).map(|rank| (rank, l)))
                    .min_by(|a, b| a.0.cmp(&b.0))?
                    .1,
            )
        };
        let bucket = self
            .hosts
            .iter()
            .filter(|b| listener.is_none_or(|l| *l == b.listener))
            .filter_map(|b| hostname_rank(b.pattern.as_deref(), host).map(|rank| (rank, b)))
            .min_by(|a, b| a.0.cmp(&b.0))?
            .1;
        bucket.entries.iter().find(|e| e.compiled.matcher.is_match(req)).map(|e| Selected {
            rule: &e.rule,
            matched_prefix: e.compiled.matcher.matched_prefix(),
            listener: &e.listener,
        })
    }
}

/// A rule with its backends resolved to endpoint sets.
pub struct CompiledRule {
    /// `kind/namespace/name`, for metrics and logs (shared: every request carries it).
    pub route: Arc<str>,
    pub filters: Vec<Filter>,
    /// The rule's RequestMirror filters with their backends resolved.
    pub mirrors: Vec<CompiledMirror>,
    pub timeouts: model::Timeouts,
    pub retry: Option<model::Retry>,
    pub session: Option<model::SessionPersistence>,
    pub backends: Vec<CompiledBackend>,
    total_weight: u64,
}

pub struct CompiledBackend {
    pub weight: u32,
    pub target: BackendTarget,
    pub filters: Vec<Filter>,
    pub mirrors: Vec<CompiledMirror>,
    /// The backend key, or `invalid`, for metrics (shared: every request carries it).
    pub label: Arc<str>,
}

/// A RequestMirror filter, its backend resolved.
pub struct CompiledMirror {
    /// `None` when the mirror's backendRef did not resolve: nothing is sent (and that is counted).
    pub target: Option<Arc<EndpointSet>>,
    /// Share of requests copied, numerator/denominator; `None` is every request.
    pub fraction: Option<(u32, u32)>,
}

impl CompiledMirror {
    fn compile(filters: &[Filter], backends: &Backends) -> Vec<Self> {
        filters
            .iter()
            .filter_map(|f| match f {
                Filter::RequestMirror(m) => Some(CompiledMirror {
                    target: match &m.backend {
                        BackendRef::Service(key) => backends.get(key.to_string().as_str()).cloned(),
                        BackendRef::Invalid { .. } => None,
                    },
                    fraction: m.fraction,
                }),
                _ => None,
            })
            .collect()
    }

    /// Whether this request is one of the share to copy.
    pub fn sampled(&self) -> bool {
        match self.fraction {
            None => true,
            Some((_, 0)) => false,
            Some((numerator, denominator)) => rand::rng().random_range(0..denominator) < numerator,
        }
    }
}

pub enum BackendTarget {
    Service(Arc<EndpointSet>),
    /// The backendRef did not resolve, or names a backend the config does not carry: the
    /// spec's 500.
    Invalid(String),
}

impl CompiledRule {
    fn build(route: &model::Route, rule: &model::Rule, backends: &Backends) -> Self {
        let compiled: Vec<CompiledBackend> = rule
            .backends
            .iter()
            .map(|b| {
                let (target, label) = match &b.backend {
                    BackendRef::Service(key) => {
                        let key = key.to_string();
                        match backends.get(key.as_str()) {
                            Some(set) => (BackendTarget::Service(set.clone()), key),
                            None => {
                                (BackendTarget::Invalid(format!("backend {key} is not in the config")), key)
                            }
                        }
                    }
                    BackendRef::Invalid { reason } => {
                        (BackendTarget::Invalid(reason.clone()), "invalid".into())
                    }
                };
                CompiledBackend {
                    weight: b.weight,
                    target,
                    filters: b.filters.clone(),
                    mirrors: CompiledMirror::compile(&b.filters, backends),
                    label: label.into(),
                }
            })
            .collect();
        CompiledRule {
            route: route.key.to_string().into(),
            filters: rule.filters.clone(),
            mirrors: CompiledMirror::compile(&rule.filters, backends),
            timeouts: rule.timeouts.clone(),
            retry: rule.retry.clone(),
            session: rule.session_persistence.clone(),
            total_weight: compiled.iter().map(|b| u64::from(b.weight)).sum(),
            backends: compiled,
        }
    }

    /// The backend one of whose ready endpoints is `addr` (a persistent session's), if any; a
    /// backend of weight 0 takes no session either.
    pub fn backend_serving(&self, addr: SocketAddr) -> Option<&CompiledBackend> {
        self.backends
            .iter()
            .find(|b| b.weight > 0 && matches!(&b.target, BackendTarget::Service(set) if set.contains(addr)))
    }

    /// A backend drawn by weight; `None` when the rule has no backend with a weight above 0.
    pub fn pick_backend(&self) -> Option<&CompiledBackend> {
        if self.total_weight == 0 {
            return None;
        }
        // One backend (weight above 0, as the total says) takes every request: no draw.
        if let [only] = self.backends.as_slice() {
            return Some(only);
        }
        let mut ticket = rand::rng().random_range(0..self.total_weight);
        for backend in &self.backends {
            let weight = u64::from(backend.weight);
            if ticket < weight {
                return Some(backend);
            }
            ticket -= weight;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};
    use mesh_api::model::*;

    use super::RoutingTable;
    use super::matching::RequestView;
    use crate::balance::Registry;

    const ADDR: &str = "10.250.128.9:80";

    fn listener(config: &mut Config, section: &str, hostname: Option<&str>) {
        config.insert_listener(Listener {
            key: ListenerKey { gateway: ObjectKey::new("infra", "gw"), section: section.into() },
            addresses: vec!["10.250.128.9".parse().expect("ip")],
            port: 80,
            protocol: ListenerProtocol::Http,
            hostname: hostname.map(str::to_owned),
            tls: None,
        });
    }

    /// A rule matching a path prefix, for tests of route selection (its backend is never used).
    pub(super) fn prefix_rule(prefix: &str) -> Rule {
        Rule {
            matches: vec![RouteMatch::Http(HttpMatch {
                path: PathMatch::Prefix(prefix.into()),
                ..Default::default()
            })],
            backends: vec![WeightedBackend {
                weight: 1,
                backend: BackendRef::Invalid { reason: "not needed here".into() },
                filters: vec![],
            }],
            ..Default::default()
        }
    }

    fn route(config: &mut Config, name: &str, section: &str, hostnames: &[&str], path: &str) {
        config.insert_route(Route {
            key: RouteKey { kind: RouteKind::Http, object: ObjectKey::new("infra", name) },
            created: 0,
            parents: vec![RouteParent {
                target: ParentTarget::Listener(ListenerKey {
                    gateway: ObjectKey::new("infra", "gw"),
                    section: section.into(),
                }),
                hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
            }],
            rules: vec![prefix_rule(path)],
        });
    }

    fn chosen(table: &RoutingTable, host: &str, path: &str) -> Option<String> {
        let headers = HeaderMap::new();
        let view = RequestView { method: &Method::GET, path, query: None, headers: &headers };
        let routes = table.listener(&ADDR.parse().expect("addr"))?;
        routes.select(host, &view).map(|s| s.rule.route.to_string())
    }

    /// GatewayHTTPListenerIsolation: the listener with the most specific matching hostname
    /// takes the request, and only its routes may answer it.
    #[test]
    fn a_request_is_answered_only_by_the_routes_of_the_best_matching_listener() {
        let mut config = Config::default();
        listener(&mut config, "any", None);
        listener(&mut config, "wildcard", Some("*.example.com"));
        listener(&mut config, "exact", Some("foo.example.com"));
        // On the hostname-less listener, a route that names hostnames the other listeners take.
        route(&mut config, "everything", "any", &["bar.com", "*.example.com", "foo.example.com"], "/");
        route(&mut config, "wild", "wildcard", &[], "/wild");
        let table = RoutingTable::build(&config, &Registry::default());

        assert_eq!(chosen(&table, "bar.com", "/").as_deref(), Some("HTTPRoute/infra/everything"));
        assert_eq!(chosen(&table, "bar.example.com", "/wild").as_deref(), Some("HTTPRoute/infra/wild"));
        assert_eq!(chosen(&table, "bar.example.com", "/"), None, "the wildcard listener has no route for /");
        assert_eq!(chosen(&table, "foo.example.com", "/wild"), None, "the exact listener has no routes");
        assert_eq!(
            chosen(&table, "example.com", "/"),
            None,
            "bar.com etc. only; no listener or route for it"
        );
    }
}
