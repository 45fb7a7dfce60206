//! GAMMA: routes whose parent is a Service shape the traffic clients send to that Service's
//! frontend (`clusterIP:port`), wherever the client is.
//!
//! A producer route (in the Service's namespace) applies to every client; a consumer route
//! (in a client's namespace) applies to that namespace's clients only, and for them replaces
//! the producer routes of the same Service, as the GAMMA spec says. Hostnames play no part:
//! the Service's address already picked the routes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_api::model::{Config, Consumers, ParentTarget, RouteKind};

use super::{CompiledRoute, Entry, HostBucket, ListenerRoutes, RouteCache};
use crate::balance::EndpointSet;

/// The GAMMA routes of every Service frontend of one config snapshot.
#[derive(Default)]
pub struct MeshRoutes {
    frontends: HashMap<SocketAddr, ServiceRoutes>,
}

#[derive(Default)]
struct ServiceRoutes {
    producer: Option<ListenerRoutes>,
    consumers: HashMap<String, ListenerRoutes>,
}

impl MeshRoutes {
    pub(super) fn build(
        config: &Config,
        backends: &HashMap<&str, Arc<EndpointSet>>,
        cache: &mut RouteCache,
    ) -> Self {
        let mut entries: BTreeMap<(SocketAddr, Consumers), Vec<Entry>> = BTreeMap::new();
        for (route_key, route) in &config.routes {
            if !matches!(route.key.kind, RouteKind::Http | RouteKind::Grpc) {
                continue;
            }
            let mut compiled: Option<Arc<CompiledRoute>> = None;
            for parent in &route.parents {
                let ParentTarget::Service { service, port, consumers } = &parent.target else { continue };
                let Some(svc) = config.services.get(&service.to_string()) else { continue };
                let frontends: Vec<SocketAddr> = svc
                    .ports
                    .iter()
                    .filter(|p| port.is_none_or(|only| only == p.port))
                    .flat_map(|p| svc.vips.iter().map(move |vip| SocketAddr::new(*vip, p.port)))
                    .collect();
                let compiled = compiled.get_or_insert_with(|| cache.get(route_key, route, backends));
                let label: Arc<str> = format!("{service}").into();
                for (rule_index, compiled_match) in &compiled.matches {
                    for frontend in &frontends {
                        entries.entry((*frontend, consumers.clone())).or_default().push(Entry {
                            compiled: compiled_match.clone(),
                            rule: compiled.rules[*rule_index].clone(),
                            listener: label.clone(),
                        });
                    }
                }
            }
        }
        let mut frontends: HashMap<SocketAddr, ServiceRoutes> = HashMap::new();
        for ((frontend, consumers), mut list) in entries {
            list.sort_by(|a, b| a.compiled.order.cmp(&b.compiled.order));
            let routes = ListenerRoutes {
                listener_hosts: Vec::new(),
                port: frontend.port(),
                hosts: vec![HostBucket { listener: None, pattern: None, entries: list }],
            };
            let service = frontends.entry(frontend).or_default();
            match consumers {
                Consumers::All => service.producer = Some(routes),
                Consumers::Namespace(namespace) => {
                    service.consumers.insert(namespace, routes);
                }
            }
        }
        MeshRoutes { frontends }
    }

    /// The routes for a client in `namespace` calling `frontend`; `None` when the Service has
    /// no GAMMA routes for it (its traffic is plain L4).
    pub fn for_client(&self, frontend: SocketAddr, namespace: &str) -> Option<&ListenerRoutes> {
        let service = self.frontends.get(&frontend)?;
        service.consumers.get(namespace).or(service.producer.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};
    use mesh_api::model::*;

    use crate::balance::Registry;
    use crate::route::RoutingTable;
    use crate::route::matching::RequestView;

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
}
