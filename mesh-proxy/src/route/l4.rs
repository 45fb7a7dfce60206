//! L4 routing: which TCPRoute or TLSRoute rule takes a connection on a TCP or TLS listener. A
//! TCP listener has one route; a TLS listener chooses by the SNI of the ClientHello, the most
//! specific hostname first, as HTTP routing chooses by `Host`. A TLS listener in `Terminate`
//! mode (TLSRoute or TCPRoute) has the proxy end TLS with the listener's certificates and splice
//! the plaintext; in `Passthrough` mode the TLS bytes go through untouched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_api::model::{self, Config, ListenerProtocol, ParentTarget, RouteKind, TlsMode};
use mesh_api::precedence::hostname_rank;
use rustls::ServerConfig;

use super::{Backends, CompiledRule};
use crate::listener::{bind_addresses, tls};

/// What a bound address does at L4.
pub enum L4Routes {
    /// Every connection goes to this rule.
    Tcp(Target),
    /// Chosen by SNI; no match, no connection.
    Tls(Vec<(Option<String>, Target)>),
}

/// The rule a connection goes to and the names for metrics.
#[derive(Clone)]
pub struct Target {
    pub listener: Arc<str>,
    pub rule: Arc<CompiledRule>,
    /// Set on a `Terminate` listener: the proxy ends TLS with this before splicing.
    pub terminate: Option<Arc<ServerConfig>>,
}

/// Listeners served at L4: TCP and TLS (either mode).
pub fn serves_l4(listener: &model::Listener) -> bool {
    match listener.protocol {
        ListenerProtocol::Tcp | ListenerProtocol::Tls => true,
        ListenerProtocol::Http | ListenerProtocol::Https | ListenerProtocol::Udp => false,
    }
}

/// The TLS config of a `Terminate` listener: its certificates by SNI, and no ALPN, since the
/// bytes inside are the backend's protocol, not HTTP the proxy would speak.
fn terminate_config(listener: &model::Listener, config: &Config) -> Option<Arc<ServerConfig>> {
    let mut server = (*tls::server_config(&[listener], config)?).clone();
    server.alpn_protocols.clear();
    Some(Arc::new(server))
}

pub fn build(config: &Config, backends: &Backends) -> HashMap<SocketAddr, L4Routes> {
    // Routes attached to each listener, oldest first (the spec's tie-break between routes).
    let mut routes: Vec<&model::Route> =
        config.routes.values().filter(|r| matches!(r.key.kind, RouteKind::Tcp | RouteKind::Tls)).collect();
    routes.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));

    let mut out: HashMap<SocketAddr, L4Routes> = HashMap::new();
    for listener in config.listeners.values().filter(|l| serves_l4(l)) {
        let name: Arc<str> = listener.key.to_string().into();
        let terminating = listener.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Terminate);
        let kinds: &[RouteKind] = match (listener.protocol, terminating) {
            (ListenerProtocol::Tcp, _) => &[RouteKind::Tcp],
            (_, false) => &[RouteKind::Tls],
            (_, true) => &[RouteKind::Tls, RouteKind::Tcp],
        };
        let terminate = if listener.protocol == ListenerProtocol::Tls && terminating {
            match terminate_config(listener, config) {
                Some(server) => Some(server),
                // Without a usable certificate the listener cannot serve anything.
                None => continue,
            }
        } else {
            None
        };
        let mut entries: Vec<(Option<String>, Target)> = Vec::new();
        for route in routes.iter().filter(|r| kinds.contains(&r.key.kind)) {
            // L4 routes have no matches: the first rule with backends takes the connection.
            let Some(rule) = route.rules.first() else { continue };
            for parent in &route.parents {
                if parent.target != ParentTarget::Listener(listener.key.clone()) {
                    continue;
                }
                let target = Target {
                    listener: name.clone(),
                    rule: Arc::new(CompiledRule::build(route, rule, backends)),
                    terminate: terminate.clone(),
                };
                if parent.hostnames.is_empty() {
                    entries.push((listener.hostname.as_ref().map(|h| h.to_ascii_lowercase()), target));
                } else {
                    for hostname in &parent.hostnames {
                        entries.push((Some(hostname.to_ascii_lowercase()), target.clone()));
                    }
                }
            }
        }
        let Some(first) = entries.first() else { continue };
        let routes = match listener.protocol {
            ListenerProtocol::Tcp => L4Routes::Tcp(first.1.clone()),
            _ => L4Routes::Tls(entries),
        };
        for addr in bind_addresses(listener) {
            match (out.get_mut(&addr), &routes) {
                // Several passthrough listeners on one port, told apart by hostname.
                (Some(L4Routes::Tls(existing)), L4Routes::Tls(more)) => existing.extend(more.iter().cloned()),
                (Some(_), _) => {
                    tracing::warn!(%addr, listener = %name, "address already serves another L4 listener")
                }
                (None, L4Routes::Tcp(t)) => {
                    out.insert(addr, L4Routes::Tcp(t.clone()));
                }
                (None, L4Routes::Tls(e)) => {
                    out.insert(addr, L4Routes::Tls(e.clone()));
                }
            }
        }
    }
    out
}

/// The route of each UDP listener address: the oldest UDPRoute attached.
pub fn build_udp(config: &Config, backends: &Backends) -> HashMap<SocketAddr, Target> {
    let mut routes: Vec<&model::Route> =
        config.routes.values().filter(|r| r.key.kind == RouteKind::Udp).collect();
    routes.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
    let mut out = HashMap::new();
    for listener in config.listeners.values().filter(|l| l.protocol == ListenerProtocol::Udp) {
        let wanted = ParentTarget::Listener(listener.key.clone());
        let attached = routes.iter().find_map(|r| {
            let rule = r.rules.first()?;
            r.parents.iter().any(|p| p.target == wanted).then_some((r, rule))
        });
        let Some((route, rule)) = attached else { continue };
        let target = Target {
            listener: listener.key.to_string().into(),
            rule: Arc::new(CompiledRule::build(route, rule, backends)),
            terminate: None,
        };
        for addr in bind_addresses(listener) {
            out.entry(addr).or_insert_with(|| target.clone());
        }
    }
    out
}

impl L4Routes {
    /// The target for a connection that sent `sni` (TLS) — for TCP, always the route.
    /// The most specific matching hostname wins; among equals, the oldest route.
    pub fn select(&self, sni: Option<&str>) -> Option<&Target> {
        match self {
            L4Routes::Tcp(target) => Some(target),
            L4Routes::Tls(entries) => {
                let host = sni.unwrap_or("");
                entries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (pattern, t))| {
                        hostname_rank(pattern.as_deref(), host).map(|rank| ((rank, i), t))
                    })
                    .min_by(|a, b| a.0.cmp(&b.0))
                    .map(|(_, t)| t)
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, L4Routes::Tls(_))
    }
}
