//! The controller's modes, wired from the library's parts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config_server::Publisher;
use crate::manifest_source::ManifestSource;

use crate::manifests;
use crate::resolve::{self, Resolution, Settings};

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// `--manifests DIR --once`: statuses to stdout as YAML, a summary to stderr.
pub fn once(dir: &Path, settings: &Settings) -> anyhow::Result<()> {
    let loaded = manifests::load_dir(dir)?;
    let resolution = resolve::resolve(&loaded.store, settings);
    let yaml = resolution.statuses.to_yaml().context("cannot print statuses")?;
    print!("{yaml}");
    eprintln!("{}", summary(&resolution, loaded.files, loaded.objects, &loaded.skipped_kinds));
    Ok(())
}

/// One paragraph saying what a resolve produced.
pub fn summary(r: &Resolution, files: usize, objects: usize, skipped: &[String]) -> String {
    let c = &r.config;
    let mut out = format!(
        "read {objects} objects from {files} files; resolved {} listeners, {} routes, {} services, {} backends \
         ({} endpoints), {} workloads, {} certificates",
        c.listeners.len(),
        c.routes.len(),
        c.services.len(),
        c.backends.len(),
        c.backends.values().map(|b| b.endpoints.len()).sum::<usize>(),
        c.workloads.len(),
        c.certificates.len(),
    );
    if !skipped.is_empty() {
        out.push_str(&format!(
            "; skipped {} objects of kinds Weft does not read ({})",
            skipped.len(),
            skipped.join(", ")
        ));
    }
    out
}

/// `--manifests DIR`: resolve the folder, serve the config stream, re-resolve on change.
pub fn serve_manifests(
    dir: PathBuf,
    settings: Settings,
    addr: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let publisher = Publisher::new();
        let mut source = ManifestSource::new(dir.clone(), settings, publisher.clone());
        // The first read must succeed: there is no last good state to fall back on yet.
        source.reload().with_context(|| format!("cannot start from {}", dir.display()))?;
        tokio::spawn(source.watch());
        spawn_admin(publisher.clone(), admin);
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, "serving the config stream");
        serve(publisher, listener, shutdown_signal()).await
    })
}

/// Serves the config stream on `listener` until `shutdown` completes.
pub async fn serve(
    publisher: Publisher,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(publisher.service())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
        .context("config server failed")
}

/// Where the controller runs in a cluster, for leader election.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub namespace: String,
    pub identity: String,
}

/// In a cluster: watch the API, serve config on every replica, write status while leader.
pub fn serve_cluster(
    settings: Settings,
    cluster: ClusterSettings,
    addr: SocketAddr,
    admin: SocketAddr,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        let publisher = Publisher::new();
        spawn_admin(publisher.clone(), admin);
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), &cluster.namespace);
        let leader = crate::leader::spawn(
            leases,
            crate::leader::LeaseConfig {
                namespace: cluster.namespace.clone(),
                name: "weft-controller".into(),
                identity: cluster.identity.clone(),
                duration: std::time::Duration::from_secs(15),
            },
        );
        let writer = crate::status_writer::StatusWriter::new(client.clone());
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, identity = %cluster.identity, "serving the config stream");
        let watch = crate::kube_source::run(client, settings, publisher.clone(), writer, leader);
        tokio::select! {
            result = watch => result,
            result = serve(publisher, listener, shutdown_signal()) => result,
        }
    })
}

fn spawn_admin(publisher: Publisher, addr: SocketAddr) {
    tokio::spawn(async move {
        if let Err(error) = crate::admin::bind_and_serve(publisher, addr).await {
            tracing::error!(%addr, %error, "admin endpoint failed; metrics and readiness are unavailable");
        }
    });
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
}
