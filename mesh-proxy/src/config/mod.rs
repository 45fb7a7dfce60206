//! The config being served: an immutable snapshot swapped atomically.
//!
//! A request loads the current snapshot once and uses it to the end, so a swap never changes
//! the routes, filters or backends of a request already in flight.
//!
//! The [`Config`] the snapshots are compiled from is held once, outside them: a delta from the
//! controller is applied to it in place (its cost is the delta's size, not the config's), and
//! each backend's endpoint set is kept between snapshots, so only the backends a delta names
//! are compiled again.

pub mod connection;
pub mod controller;
pub mod file;
pub mod manifests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use mesh_api::delta::DeltaError;
use mesh_api::model::Config;
use mesh_api::proto::{ConfigUpdate, ResourceKind};
use tokio::sync::watch;

use crate::balance::{EndpointSet, Registry};
use crate::metrics::Metrics;
use crate::route::{RouteCache, RoutingTable};

/// One version of the config with everything compiled that requests need.
pub struct Snapshot {
    /// 0 before any config arrived.
    pub version: u64,
    pub routes: RoutingTable,
}

/// The config the current snapshot was compiled from, and what is kept between compilations.
#[derive(Default)]
struct Held {
    version: u64,
    config: Config,
    /// Each backend's ready endpoints, by backend key.
    endpoint_sets: HashMap<String, Arc<EndpointSet>>,
    /// Compiled HTTP and gRPC routes.
    routes: RouteCache,
}

pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// Locked while a version is applied and compiled, so the held config and the current
    /// snapshot are always of the same version when it is free.
    held: Mutex<Held>,
    /// Tells the listeners to reconcile; carries the version just installed.
    changes: watch::Sender<u64>,
    ready: AtomicBool,
    registry: Registry,
    metrics: Arc<Metrics>,
}

impl ConfigStore {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let empty = Snapshot { version: 0, routes: RoutingTable::default() };
        ConfigStore {
            current: ArcSwap::from_pointee(empty),
            held: Mutex::default(),
            changes: watch::Sender::new(0),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
            metrics,
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Compiles `config` and makes it the one new requests see.
    pub fn install(&self, version: u64, config: Config) {
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        held.config = config;
        held.version = version;
        held.endpoint_sets.clear();
        held.routes.clear();
        let Held { config, endpoint_sets, .. } = &mut *held;
        for (key, backend) in &config.backends {
            endpoint_sets.insert(key.clone(), Arc::new(self.registry.endpoints(backend)));
        }
        self.publish(&mut held);
        drop(held);
        release_free_memory();
    }

    /// Applies an update from the controller on top of the held config and serves the result;
    /// an update that does not apply whole changes nothing and says why.
    pub fn apply(&self, update: &ConfigUpdate) -> Result<(), DeltaError> {
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = held.config.apply_in_place(update)?;
        held.version = update.version;
        let Held { config, endpoint_sets, routes, .. } = &mut *held;
        if update.full_state {
            endpoint_sets.clear();
            routes.clear();
        } else {
            let of_kind = |wanted: ResourceKind| -> std::collections::HashSet<&str> {
                changed.iter().filter(|(kind, _)| *kind == wanted).map(|(_, key)| key.as_str()).collect()
            };
            routes.forget(
                &of_kind(ResourceKind::Route),
                &of_kind(ResourceKind::Backend),
                &of_kind(ResourceKind::Service),
            );
        }
        for (_, key) in changed.iter().filter(|(kind, _)| *kind == ResourceKind::Backend) {
            match config.backends.get(key) {
                Some(backend) => {
                    drop(endpoint_sets.insert(key.clone(), Arc::new(self.registry.endpoints(backend))))
                }
                None => drop(endpoint_sets.remove(key)),
            }
        }
        self.publish(&mut held);
        drop(held);
        if update.full_state {
            release_free_memory();
        }
        Ok(())
    }

    /// Compiles the held config and makes it the one new requests see.
    fn publish(&self, held: &mut Held) {
        let routes = RoutingTable::build_with(&held.config, &held.endpoint_sets, &mut held.routes);
        let version = held.version;
        // The previous snapshot is freed here, or by the last request still using it.
        self.current.store(Arc::new(Snapshot { version, routes }));
        self.ready.store(true, Ordering::Release);
        self.metrics.config_version.store(version, Ordering::Relaxed);
        self.changes.send_replace(version);
        tracing::info!(version, "config installed");
    }

    /// Runs `f` on the config being served and its version (the admin dump, the mesh's
    /// indexes). Holds off the next update meanwhile: keep `f` short.
    pub fn read_config<R>(&self, f: impl FnOnce(u64, &Config) -> R) -> R {
        let held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(held.version, &held.config)
    }

    /// True once a first config has been installed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Hands the heap's free pages back to the kernel. A full state passes through the proxy as
/// several transient copies (the message as received, decoded, the config built from it), each
/// tens of megabytes at 100k endpoints; glibc keeps what they leave free, so the proxy's RSS
/// would stay at that peak for good. Called after full states only: it walks the heap.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns memory that no allocation holds; it takes malloc's own
    // locks, so it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
