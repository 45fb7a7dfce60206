//! How the proxy reaches the controller's gRPC port (config stream and certificate
//! authority): TLS (rustls, ring) verified against the controller's trust bundle
//! (`--controller-ca-bundle`) and the host of the `--controller` URL, and the proxy's bearer
//! token on every call. Plaintext only when `--controller-insecure-plaintext` says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Channel, Endpoint, Uri};

/// Where the controller is and how to trust it.
#[derive(Clone, Debug)]
pub struct ControllerEndpoint {
    /// As given, for logs.
    url: String,
    host: String,
    port: u16,
    tls: Option<Tls>,
}

#[derive(Clone, Debug)]
struct Tls {
    /// Re-read at every connection: the bundle a ConfigMap volume holds follows the CA.
    bundle: PathBuf,
    server_name: ServerName<'static>,
}

impl ControllerEndpoint {
    /// `https://host:port` verified with the certificates in `ca_bundle` for the name `host`;
    /// `http://host:port` only with `insecure_plaintext`.
    pub fn new(url: &str, ca_bundle: Option<PathBuf>, insecure_plaintext: bool) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("the controller URL {url:?} is not a URL"))?;
        let host = uri
            .host()
            .with_context(|| format!("the controller URL {url} names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let (tls, default_port) = match (uri.scheme_str(), ca_bundle, insecure_plaintext) {
            (Some("https"), Some(bundle), _) => {
                let server_name = ServerName::try_from(host.clone())
                    .with_context(|| format!("{host} is not a DNS name or IP address"))?;
                (Some(Tls { bundle, server_name }), 443)
            }
            (Some("https"), None, _) => anyhow::bail!(
                "--controller {url} needs --controller-ca-bundle FILE (the controller's CA: ConfigMap \
                 weft-ca-root in a cluster, the CA folder's ca.crt standalone)"
            ),
            (Some("http"), _, true) => {
                tracing::warn!(%url, "INSECURE: --controller-insecure-plaintext: the config stream and the CA are reached without TLS");
                (None, 80)
            }
            (Some("http"), _, false) => anyhow::bail!(
                "--controller {url} is plaintext: use https:// with --controller-ca-bundle, or \
                 --controller-insecure-plaintext for a local test"
            ),
            (other, _, _) => {
                anyhow::bail!("the controller URL {url} must be https:// (got scheme {other:?})")
            }
        };
        let port = uri.port_u16().unwrap_or(default_port);
        Ok(Self { url: url.to_string(), host, port, tls })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn endpoint(&self, connect_timeout: Duration) -> anyhow::Result<Endpoint> {
        // tonic sees a plain http URI; TLS, when wanted, is done by our connector, so tonic's
        // own TLS features play no part.
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        Ok(Endpoint::from_shared(format!("http://{host}:{}", self.port))
            .with_context(|| format!("the controller URL {}", self.url))?
            .connect_timeout(connect_timeout))
    }

    /// Connects now (the handshake, certificate check included, happens here).
    pub async fn connect(&self, connect_timeout: Duration) -> anyhow::Result<Channel> {
        let endpoint = self.endpoint(connect_timeout)?;
        let channel = match &self.tls {
            Some(tls) => endpoint.connect_with_connector(connector(tls.clone())).await,
            None => endpoint.connect().await,
        };
        channel.with_context(|| format!("cannot connect to the controller at {}", self.url))
    }

    /// A channel that connects on first use and reconnects as needed.
    pub fn connect_lazy(&self, connect_timeout: Duration) -> anyhow::Result<Channel> {
        let endpoint = self.endpoint(connect_timeout)?;
        Ok(match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(connector(tls.clone())),
            None => endpoint.connect_lazy(),
        })
    }
}

fn connector(
    tls: Tls,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = ConnectError,
    Future = impl Send,
> + Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move { connect_tls(&uri, &tls).await.map_err(ConnectError) }
    })
}

/// A failed connection to the controller, with its causes.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct ConnectError(anyhow::Error);

async fn connect_tls(
    uri: &Uri,
    tls: &Tls,
) -> anyhow::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
    let config = client_config(&tls.bundle)?;
    let host = uri.host().context("no host")?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().context("no port")?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot reach {host}:{port}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(tls.server_name.clone(), tcp)
        .await
        .with_context(|| {
            format!(
                "TLS with the controller failed (is its certificate signed by the CA in {} and valid for {}?)",
                tls.bundle.display(),
                tls.server_name.to_str()
            )
        })?;
    Ok(TokioIo::new(stream))
}

/// A rustls client config trusting exactly the certificates of `bundle`.
pub fn client_config(bundle: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(bundle)
        .with_context(|| format!("cannot read the controller's CA bundle {}", bundle.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("{} is not PEM certificates", bundle.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: a certificate rustls cannot trust", bundle.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("the controller's CA bundle {} holds no certificate", bundle.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// `authorization: Bearer <token>` from `token_file`, re-read every time: the kubelet rotates a
/// projected token in place.
pub fn bearer(token_file: &Path) -> anyhow::Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the proxy token {}", token_file.display()))?;
    format!("Bearer {}", token.trim()).parse().map_err(|_| {
        anyhow::anyhow!("the proxy token in {} holds characters a header cannot carry", token_file.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_needs_a_bundle_and_http_needs_the_insecure_flag() {
        let tls = ControllerEndpoint::new(
            "https://weft-controller.weft-system.svc.cluster.local:15010",
            Some("/ca.crt".into()),
            false,
        )
        .expect("tls");
        assert!(tls.is_tls());
        assert_eq!(tls.port, 15010);
        assert_eq!(
            tls.tls.as_ref().map(|t| t.server_name.to_str().into_owned()),
            Some("weft-controller.weft-system.svc.cluster.local".to_string())
        );
        let ip = ControllerEndpoint::new("https://[::1]:15010", Some("/ca.crt".into()), false).expect("ipv6");
        assert_eq!(ip.tls.as_ref().map(|t| t.server_name.to_str().into_owned()), Some("::1".to_string()));
        assert!(ControllerEndpoint::new("https://10.0.0.1:15010", None, false).is_err());
        assert!(ControllerEndpoint::new("http://10.0.0.1:15010", Some("/ca.crt".into()), false).is_err());
        let plain = ControllerEndpoint::new("http://10.0.0.1:15010", None, true).expect("insecure");
        assert!(!plain.is_tls());
        assert!(ControllerEndpoint::new("ftp://10.0.0.1", None, true).is_err());
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "").expect("write");
        assert!(client_config(&path).is_err());
        assert!(client_config(&dir.path().join("missing")).is_err());
    }
}
