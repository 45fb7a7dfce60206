//! The controller's modes, wired from the library's parts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use std::collections::HashMap;

use mesh_api::identity::SpiffeId;

use crate::admin::Sources;
use crate::ca::{
    self, CertificateService, authority::Authority, authorize::Authenticator, authorize::Caller,
};
use crate::config_server::Publisher;
use crate::manifest_source::ManifestSource;

use crate::manifests;
use crate::resolve::{self, Resolution, Settings};

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `kubectl logs` would show the escape codes as text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
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

/// The certificate authority in standalone mode.
#[derive(Clone, Debug)]
pub struct StandaloneCa {
    /// Holds `tls.crt`, `tls.key` and `ca.crt`; a root is generated there if it is empty.
    pub dir: PathBuf,
    /// Lines of `<node> <token>`: the static tokens node proxies authenticate with.
    pub node_tokens: PathBuf,
    /// The identity every node proxy has (its ServiceAccount's).
    pub proxy_identity: SpiffeId,
}

/// `--manifests DIR`: resolve the folder, serve the config stream (and, with `ca`, the
/// certificate authority), re-resolve on change.
pub fn serve_manifests(
    dir: PathBuf,
    settings: Settings,
    addr: SocketAddr,
    admin: SocketAddr,
    ca: Option<StandaloneCa>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let publisher = Publisher::new();
        let certificates = match ca {
            Some(ca) => Some(standalone_ca(&ca, &settings.trust_domain, publisher.clone())?),
            None => None,
        };
        let mut source = ManifestSource::new(dir.clone(), settings, publisher.clone());
        // The first read must succeed: there is no last good state to fall back on yet.
        source.reload().with_context(|| format!("cannot start from {}", dir.display()))?;
        tokio::spawn(source.watch());
        spawn_admin(
            Sources { publisher: publisher.clone(), ca: certificates.as_ref().map(|c| c.metrics.clone()) },
            admin,
        );
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(%addr, ca = certificates.is_some(), "serving the config stream");
        serve(publisher, certificates, listener, shutdown_signal()).await
    })
}

fn standalone_ca(
    ca: &StandaloneCa,
    trust_domain: &str,
    publisher: Publisher,
) -> anyhow::Result<CertificateService> {
    let material = ca::storage::load_or_create_dir(&ca.dir, trust_domain)?;
    let authority = Authority::new(trust_domain, &material, time::OffsetDateTime::now_utc())
        .with_context(|| format!("the CA in {} cannot sign", ca.dir.display()))?;
    let text = std::fs::read_to_string(&ca.node_tokens)
        .with_context(|| format!("cannot read node tokens from {}", ca.node_tokens.display()))?;
    let tokens = parse_node_tokens(&text, &ca.proxy_identity)
        .with_context(|| format!("in {}", ca.node_tokens.display()))?;
    tracing::info!(nodes = tokens.len(), "standalone CA: static node tokens loaded");
    Ok(CertificateService::new(authority, Authenticator::Static(tokens), publisher))
}

/// `<node> <token>` per line; `#` starts a comment.
pub fn parse_node_tokens(text: &str, proxy_identity: &SpiffeId) -> anyhow::Result<HashMap<String, Caller>> {
    let mut tokens = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(node), Some(token), None) = (fields.next(), fields.next(), fields.next()) else {
            anyhow::bail!("line {}: expected `<node> <token>`", number + 1);
        };
        let caller = Caller { node: node.to_string(), identity: proxy_identity.clone() };
        if tokens.insert(token.to_string(), caller).is_some() {
            anyhow::bail!("line {}: this token is already given to another node", number + 1);
        }
    }
    Ok(tokens)
}

/// Serves the config stream (and the certificate authority, when there is one) on `listener`
/// until `shutdown` completes.
pub async fn serve(
    publisher: Publisher,
    certificates: Option<CertificateService>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(publisher.service())
        .add_optional_service(certificates.map(|c| c.server()))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
        .context("config server failed")
}

/// Where the controller runs in a cluster, for leader election.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub namespace: String,
    pub identity: String,
    /// The node proxies' ServiceAccount (in `namespace`): only its tokens get certificates.
    pub proxy_service_account: String,
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
        let material =
            ca::storage::load_or_create_secret(client.clone(), &cluster.namespace, &settings.trust_domain)
                .await?;
        let authority = Authority::new(&settings.trust_domain, &material, time::OffsetDateTime::now_utc())
            .context("the CA in Secret weft-ca cannot sign")?;
        let authenticator = Authenticator::TokenReview {
            client: client.clone(),
            proxy_username: format!(
                "system:serviceaccount:{}:{}",
                cluster.namespace, cluster.proxy_service_account
            ),
            trust_domain: settings.trust_domain.clone(),
        };
        let certificates = CertificateService::new(authority, authenticator, publisher.clone());
        spawn_admin(Sources { publisher: publisher.clone(), ca: Some(certificates.metrics.clone()) }, admin);
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
            result = serve(publisher, Some(certificates), listener, shutdown_signal()) => result,
        }
    })
}

fn spawn_admin(sources: Sources, addr: SocketAddr) {
    tokio::spawn(async move {
        if let Err(error) = crate::admin::bind_and_serve(sources, addr).await {
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
