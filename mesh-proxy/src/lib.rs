//! weft-proxy: the per-node data plane.
//!
//! Config comes in ([`config`]) as immutable snapshots; [`listener`] keeps the sockets in step
//! with it; each request goes [`proxy`] → [`route`] → [`balance`] → [`upstream`]; [`admin`]
//! exposes readiness, [`metrics`] and the config.

pub mod admin;
pub mod balance;
pub mod config;
pub mod hbone;
pub mod identity;
pub mod inpod;
pub mod listener;
pub mod mesh;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use mesh_api::model::Config;
use tokio::task::JoinHandle;

use config::ConfigStore;
use config::controller::Subscription;
use metrics::Metrics;
use proxy::Proxy;

/// Where config comes from.
pub enum Source {
    /// A folder of Kubernetes YAML, resolved in-process and watched.
    Manifests(PathBuf),
    /// A JSON `Config`, read once.
    File(PathBuf),
    /// The controller's config stream.
    Controller(Subscription),
    /// A config given by the embedding program (tests); more can be installed through
    /// [`Running::store`].
    Fixed(Config),
}

pub struct Options {
    pub source: Source,
    /// Port 0 picks a free port; see [`Running::admin`].
    pub admin: SocketAddr,
    pub access_log: bool,
}

/// A started proxy. Dropping it stops every task it started (connections in flight included).
pub struct Running {
    pub admin: SocketAddr,
    /// Parts of `/metrics` started after the proxy (the mesh) register here.
    pub more_metrics: Arc<admin::MoreMetrics>,
    /// The request path, shared with the mesh's L7 (GAMMA) connections.
    pub proxy: Arc<Proxy>,
    pub store: Arc<ConfigStore>,
    pub metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
    /// The Gateway listeners' task, and how to stop it ([`Running::shutdown`]).
    listeners: Option<JoinHandle<()>>,
    stop_listeners: tokio::sync::watch::Sender<Option<listener::Stop>>,
}

impl Running {
    /// Closes the Gateway listeners — each once a new proxy listens beside it, when
    /// `handover` (see [`inpod::handover`]) — and waits for their open connections to finish,
    /// all by `until`.
    pub async fn shutdown(&mut self, until: std::time::Instant, handover: bool) {
        let _ = self.stop_listeners.send(Some(listener::Stop { until, handover }));
        if let Some(task) = self.listeners.take() {
            let _ = task.await;
        }
        listener::drained(&self.store, until).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.listeners) {
            task.abort();
        }
    }
}

pub async fn start(options: Options) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(ConfigStore::new(metrics.clone()));
    let proxy = Arc::new(Proxy::new(store.clone(), metrics.clone(), options.access_log));
    let admin_socket = match admin::bind(options.admin).await {
        Ok(socket) => Some(socket),
        // An older proxy without SO_REUSEPORT still holds the port (the first upgrade to an
        // overlapping version, see inpod::handover): serve it once that one is gone.
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(admin = %options.admin, "admin port in use by another process; retrying");
            None
        }
        Err(error) => return Err(error).with_context(|| format!("cannot bind admin on {}", options.admin)),
    };
    let admin = match &admin_socket {
        Some(socket) => socket.local_addr()?,
        None => options.admin,
    };
    let more_metrics = Arc::new(admin::MoreMetrics::default());
    let serve_admin = {
        let (store, more_metrics) = (store.clone(), more_metrics.clone());
        async move {
            let socket = match admin_socket {
                Some(socket) => socket,
                None => loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    if let Ok(socket) = admin::bind(admin).await {
                        break socket;
                    }
                },
            };
            tracing::info!(%admin, "admin listening");
            admin::serve(socket, store, more_metrics).await
        }
    };

    let mut tasks = vec![tokio::spawn(serve_admin)];
    let (stop_listeners, stop) = tokio::sync::watch::channel(None);
    let listeners = Some(tokio::spawn(listener::run(store.clone(), proxy.clone(), stop)));
    match options.source {
        Source::Manifests(dir) => tasks.push(tokio::spawn(config::manifests::watch(dir, store.clone()))),
        Source::File(path) => store.install(1, config::file::load(&path)?),
        Source::Controller(sub) => tasks.push(tokio::spawn(config::controller::follow(sub, store.clone()))),
        Source::Fixed(config) => store.install(1, config),
    }
    Ok(Running { admin, more_metrics, proxy, store, metrics, tasks, listeners, stop_listeners })
}
