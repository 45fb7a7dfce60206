//! The controller's modes, wired from the library's parts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use std::collections::HashMap;

use mesh_api::identity::SpiffeId;

use crate::admin::Sources;
use crate::ca::serving::ServingCert;
use crate::ca::{
    self, CertificateService, authority::Authority, authorize::Authenticator, authorize::Caller,
};
use crate::config_server::{Publisher, Subscribers};
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

/// How the gRPC port (config stream and CA) is protected.
#[derive(Clone, Debug, Default)]
pub struct PortSecurity {
    /// Extra names and IP addresses of the serving certificate (beyond the Service's DNS
    /// names in a cluster, and beyond localhost and the listening address standalone).
    pub serving_names: Vec<String>,
    /// Serve plaintext instead of TLS (and, without a CA, admit any subscriber as any node):
    /// local tests and demos only.
    pub insecure_plaintext: bool,
}

/// How the gRPC port is served.
#[derive(Clone)]
pub enum Transport {
    /// TLS with the controller's serving certificate (signed by its own CA).
    Tls(Arc<rustls::ServerConfig>),
    /// Plaintext: `--insecure-plaintext` only.
    InsecurePlaintext,
}

/// The gRPC port's transport and who may subscribe to the config stream.
#[derive(Clone)]
pub struct GrpcSecurity {
    pub transport: Transport,
    pub subscribers: Subscribers,
    /// How long an authenticated config stream lives before the proxy must authenticate again
    /// ([`crate::config_server::MAX_SESSION_AGE`], shorter only in tests).
    pub max_session_age: std::time::Duration,
}

impl GrpcSecurity {
    /// TLS with a serving certificate for `names` from `certificates`' CA, kept fresh in the
    /// background; subscribers authenticated as the CA authenticates its callers.
    pub fn tls(certificates: &CertificateService, names: Vec<String>) -> anyhow::Result<Self> {
        let serving = ServingCert::start(certificates.signing().subscribe(), names)?;
        Ok(Self {
            transport: Transport::Tls(serving.server_config()?),
            subscribers: Subscribers::Authenticated(certificates.authenticator()),
            max_session_age: crate::config_server::MAX_SESSION_AGE,
        })
    }

    /// The same, with authenticated config streams ended after `age` (tests).
    pub fn with_max_session_age(self, age: std::time::Duration) -> Self {
        Self { max_session_age: age, ..self }
    }

    /// Plaintext, and anyone may subscribe as any node unless there is a CA to authenticate
    /// them with. Logged loudly.
    pub fn insecure(certificates: Option<&CertificateService>) -> Self {
        tracing::warn!(
            "INSECURE: --insecure-plaintext: the config stream and CA are served without TLS{}; \
             never use this outside a local test",
            if certificates.is_some() {
                ""
            } else {
                " and ANY client may subscribe as ANY node (Gateway private keys included)"
            }
        );
        Self {
            transport: Transport::InsecurePlaintext,
            subscribers: match certificates {
                Some(c) => Subscribers::Authenticated(c.authenticator()),
                None => Subscribers::Anyone,
            },
            max_session_age: crate::config_server::MAX_SESSION_AGE,
        }
    }
}

/// Names a standalone controller's certificate holds besides `extra`: localhost, and the
/// listening address unless it is a wildcard.
pub fn standalone_names(addr: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    for name in extra {
        names.push(name.clone());
    }
    names.dedup();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// `--manifests DIR`: resolve the folder, serve the config stream (and, with `ca`, the
/// certificate authority), re-resolve on change.
pub fn serve_manifests(
    dir: PathBuf,
    settings: Settings,
    addr: SocketAddr,
    admin: SocketAddr,
    ca: Option<StandaloneCa>,
    security: PortSecurity,
) -> anyhow::Result<()> {
    if ca.is_none() && !security.insecure_plaintext {
        anyhow::bail!(
            "serving the config stream needs --ca-dir and --node-tokens (TLS with a certificate from \
             the CA, subscribers authenticated by their node token), or --insecure-plaintext for a \
             local test"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let publisher = Publisher::new();
        let certificates = match &ca {
            Some(ca) => Some(standalone_ca(ca, &settings.trust_domain, publisher.clone())?),
            None => None,
        };
        let grpc = match (&certificates, &ca) {
            (Some(certificates), Some(ca)) if !security.insecure_plaintext => {
                publish_bundle_file(&ca.dir, &certificates.authority().roots_pem())?;
                GrpcSecurity::tls(certificates, standalone_names(addr, &security.serving_names))?
            }
            _ => GrpcSecurity::insecure(certificates.as_ref()),
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
        tracing::info!(%addr, ca = certificates.is_some(), tls = matches!(grpc.transport, Transport::Tls(_)), "serving the config stream");
        serve(publisher, certificates, listener, grpc, shutdown_signal()).await
    })
}

/// Standalone, the trust bundle is the CA folder's `ca.crt`: written when absent (a
/// user-supplied CA without one), left alone otherwise.
fn publish_bundle_file(dir: &Path, roots_pem: &str) -> anyhow::Result<()> {
    let path = dir.join("ca.crt");
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim().is_empty() {
        std::fs::write(&path, roots_pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    tracing::info!(bundle = %path.display(), "proxies verify the controller with this trust bundle (--controller-ca-bundle)");
    Ok(())
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
    let service = CertificateService::new(authority, Authenticator::Static(tokens), publisher);
    tokio::spawn(ca::reload::follow_folder(ca.dir.clone(), service.reloader(material)));
    Ok(service)
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
    security: GrpcSecurity,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let router = tonic::transport::Server::builder()
        .add_service(publisher.service_with_max_session_age(security.subscribers, security.max_session_age))
        .add_optional_service(certificates.map(|c| c.server()));
    match security.transport {
        Transport::Tls(config) => router
            .serve_with_incoming_shutdown(tls_incoming(listener, config), shutdown)
            .await
            .context("config server failed"),
        Transport::InsecurePlaintext => router
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
            .await
            .context("config server failed"),
    }
}

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections handshaken and waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Accepts on `listener` and runs each TLS handshake on its own task (a slow or hostile
/// client never holds up the others); yields the connections that completed one.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConnection, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%error, "config server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let info = tonic::transport::server::TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: Some(peer),
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConnection { inner: tls, info })).await;
                    }
                    Ok(Err(error)) => tracing::info!(%peer, %error, "config server: TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "config server: TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A TLS connection to the gRPC port, with the TCP peer's address for tonic.
pub struct TlsConnection {
    inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    info: tonic::transport::server::TcpConnectInfo,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where the controller runs in a cluster, for leader election.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub namespace: String,
    pub identity: String,
    /// The node proxies' ServiceAccount (in `namespace`): only its tokens get certificates.
    pub proxy_service_account: String,
    /// DNS suffix of Service hostnames: the serving certificate's names end in it.
    pub cluster_domain: String,
}

/// In a cluster: watch the API, serve config on every replica, write status while leader.
pub fn serve_cluster(
    settings: Settings,
    cluster: ClusterSettings,
    addr: SocketAddr,
    admin: SocketAddr,
    security: PortSecurity,
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
        tokio::spawn(ca::reload::follow_secret(
            client.clone(),
            cluster.namespace.clone(),
            certificates.reloader(material),
        ));
        let grpc = if security.insecure_plaintext {
            GrpcSecurity::insecure(Some(&certificates))
        } else {
            let names = ca::serving::service_names(
                &cluster.namespace,
                &cluster.cluster_domain,
                &security.serving_names,
            );
            GrpcSecurity::tls(&certificates, names)?
        };
        spawn_bundle_publisher(client.clone(), cluster.namespace.clone(), certificates.signing().subscribe());
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
            result = serve(publisher, Some(certificates), listener, grpc, shutdown_signal()) => result,
        }
    })
}

/// Writes the trust bundle ConfigMap, again whenever the CA is replaced, retrying until the
/// API takes it: node proxies cannot verify the controller without it, so a failure is logged
/// as an error every time.
fn spawn_bundle_publisher(
    client: kube::Client,
    namespace: String,
    mut authority: tokio::sync::watch::Receiver<std::sync::Arc<Authority>>,
) {
    tokio::spawn(async move {
        loop {
            let mut wait = std::time::Duration::from_secs(1);
            // Each attempt publishes the newest roots: a replacement during the retries wins.
            loop {
                let roots_pem = authority.borrow_and_update().roots_pem();
                match ca::serving::publish_bundle(client.clone(), &namespace, &roots_pem).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "cannot publish the CA trust bundle; node proxies cannot verify the controller until it is; retrying"
                        );
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
            if authority.changed().await.is_err() {
                return;
            }
        }
    });
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
