//! TLS termination for HTTPS listeners: one rustls config per bound address, its certificate
//! chosen by SNI among the Gateway listeners sharing that address.
//!
//! The config is part of the snapshot, so a Secret that changes reaches the next handshake
//! without touching the socket.

use std::sync::Arc;

use mesh_api::model::{Certificate, Config, Listener};
use mesh_api::precedence::hostname_rank;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {0} is not in the config")]
    Missing(String),
    #[error("certificate {key}: {message}")]
    Invalid { key: String, message: String },
}

/// Parses a `kubernetes.io/tls` pair into what rustls signs with.
pub fn certified_key(cert: &Certificate) -> Result<CertifiedKey, TlsError> {
    let invalid = |message: String| TlsError::Invalid { key: cert.key.to_string(), message };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("bad certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("no certificate in tls.crt".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| invalid(format!("bad private key PEM: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(format!("unsupported private key: {e}")))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// Certificates by the hostname of the listener that names them.
#[derive(Debug)]
struct SniResolver {
    /// Lower-cased listener hostname (`None`: any), with that listener's first certificate.
    by_hostname: Vec<(Option<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            // The most specific listener hostname that matches the requested name.
            Some(sni) => self
                .by_hostname
                .iter()
                .filter_map(|(pattern, key)| hostname_rank(pattern.as_deref(), sni).map(|rank| (rank, key)))
                .min_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, key)| key.clone()),
            // No SNI (an IP literal): a listener without hostname, else the first one.
            None => self
                .by_hostname
                .iter()
                .find(|(pattern, _)| pattern.is_none())
                .or(self.by_hostname.first())
                .map(|(_, key)| key.clone()),
        }
    }
}

/// The server config for HTTPS listeners that share one address, or `None` when none of their
/// certificates can be used (the socket then refuses handshakes).
pub fn server_config(listeners: &[&Listener], config: &Config) -> Option<Arc<ServerConfig>> {
    let mut by_hostname = Vec::new();
    for listener in listeners {
        let Some(tls) = &listener.tls else { continue };
        // The first certificate is the listener's; more would be told apart by their names,
        // which needs certificate parsing Weft does not do yet.
        let Some(first) = tls.certificates.first() else { continue };
        let parsed = config
            .certificates
            .get(first)
            .ok_or_else(|| TlsError::Missing(first.clone()))
            .and_then(certified_key);
        match parsed {
            Ok(key) => {
                by_hostname.push((listener.hostname.as_ref().map(|h| h.to_ascii_lowercase()), Arc::new(key)))
            }
            Err(error) => {
                tracing::error!(listener = %listener.key, %error, "listener has no usable certificate")
            }
        }
    }
    if by_hostname.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_hostname }));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(Arc::new(server))
}
