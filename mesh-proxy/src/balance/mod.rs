//! Endpoint choice: power of two choices over in-flight requests.
//!
//! Two ready endpoints are drawn at random and the one with fewer requests in flight wins. The
//! counters outlive config snapshots (they live in a [`Registry`] keyed by address), so a config
//! swap mid-traffic does not make a busy endpoint look idle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use mesh_api::model::{self, AppProtocol};
use rand::Rng;

/// In-flight counters shared by every snapshot that names the same endpoint address.
#[derive(Default)]
pub struct Registry {
    counters: Mutex<HashMap<SocketAddr, Weak<AtomicUsize>>>,
}

impl Registry {
    fn counter(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        let Ok(mut counters) = self.counters.lock() else {
            return Arc::default();
        };
        if let Some(existing) = counters.get(&addr).and_then(Weak::upgrade) {
            return existing;
        }
        let fresh = Arc::new(AtomicUsize::new(0));
        counters.insert(addr, Arc::downgrade(&fresh));
        // Forget endpoints no snapshot refers to any more, so churn does not grow the map.
        counters.retain(|_, c| c.strong_count() > 0);
        fresh
    }

    /// The ready endpoints of a backend, as one balancer.
    pub fn endpoints(&self, backend: &model::Backend) -> EndpointSet {
        let endpoints = backend
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .map(|e| {
                let addr = SocketAddr::new(e.address, e.port);
                Endpoint { addr, in_flight: self.counter(addr) }
            })
            .collect();
        EndpointSet { app_protocol: backend.app_protocol, endpoints }
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    in_flight: Arc<AtomicUsize>,
}

#[derive(Debug)]
pub struct EndpointSet {
    pub app_protocol: AppProtocol,
    endpoints: Vec<Endpoint>,
}

/// An endpoint chosen for one request; it counts as in flight until dropped.
#[derive(Debug)]
pub struct InFlight {
    pub addr: SocketAddr,
    counter: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointSet {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Picks an endpoint, or `None` when the backend has no ready endpoint.
    pub fn pick(&self) -> Option<InFlight> {
        let chosen = match self.endpoints.len() {
            0 => return None,
            1 => &self.endpoints[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                // A second index distinct from the first, uniformly.
                let b = (a + rng.random_range(1..n)) % n;
                let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                if eb.in_flight.load(Ordering::Relaxed) < ea.in_flight.load(Ordering::Relaxed) {
                    eb
                } else {
                    ea
                }
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight { addr: chosen.addr, counter: chosen.in_flight.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::model::{BackendKey, Endpoint as ModelEndpoint, ObjectKey};

    fn backend(ports: &[(u16, bool)]) -> model::Backend {
        model::Backend {
            key: BackendKey { service: ObjectKey::new("ns", "svc"), port: 80 },
            app_protocol: AppProtocol::Http1,
            endpoints: ports
                .iter()
                .map(|&(port, ready)| ModelEndpoint {
                    address: "127.0.0.1".parse().expect("ip"),
                    port,
                    ready,
                    workload: None,
                    node: None,
                })
                .collect(),
        }
    }

    #[test]
    fn never_picks_an_unready_endpoint() {
        let registry = Registry::default();
        let set = registry.endpoints(&backend(&[(1, false), (2, true), (3, false)]));
        for _ in 0..50 {
            assert_eq!(set.pick().expect("one ready").addr.port(), 2);
        }
        assert!(registry.endpoints(&backend(&[(1, false)])).pick().is_none());
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let registry = Registry::default();
        let set = registry.endpoints(&backend(&[(1, true), (2, true)]));
        let held: Vec<_> = (0..5).filter_map(|_| set.pick()).filter(|p| p.addr.port() == 1).collect();
        // With 1 busy, every new pick among the two must go to 2 until the loads cross.
        if !held.is_empty() {
            let next = set.pick().expect("ready");
            assert_eq!(next.addr.port(), 2);
        }
    }

    #[test]
    fn counters_survive_a_new_snapshot() {
        let registry = Registry::default();
        let first = registry.endpoints(&backend(&[(7, true)]));
        let _busy = first.pick().expect("ready");
        let second = registry.endpoints(&backend(&[(7, true)]));
        assert_eq!(second.endpoints[0].in_flight.load(Ordering::Relaxed), 1);
    }
}
