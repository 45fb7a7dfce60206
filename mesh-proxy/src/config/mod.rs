//! The config being served: an immutable snapshot swapped atomically.
//!
//! A request loads the current snapshot once and uses it to the end, so a swap never changes
//! the routes, filters or backends of a request already in flight.

pub mod connection;
pub mod controller;
pub mod file;
pub mod manifests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use mesh_api::model::Config;
use tokio::sync::watch;

use crate::balance::Registry;
use crate::metrics::Metrics;
use crate::route::RoutingTable;

/// One version of the config with everything compiled that requests need.
pub struct Snapshot {
    /// 0 before any config arrived.
    pub version: u64,
    pub config: Arc<Config>,
    pub routes: RoutingTable,
}

pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// Tells the listeners to reconcile; carries the version just installed.
    changes: watch::Sender<u64>,
    ready: AtomicBool,
    registry: Registry,
    metrics: Arc<Metrics>,
}

impl ConfigStore {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let empty = Snapshot { version: 0, config: Arc::default(), routes: RoutingTable::default() };
        ConfigStore {
            current: ArcSwap::from_pointee(empty),
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
        let routes = RoutingTable::build(&config, &self.registry);
        self.current.store(Arc::new(Snapshot { version, config: Arc::new(config), routes }));
        self.ready.store(true, Ordering::Release);
        self.metrics.config_version.store(version, Ordering::Relaxed);
        self.changes.send_replace(version);
        tracing::info!(version, "config installed");
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
