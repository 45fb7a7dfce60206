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

/// One listener's certificates, with the names each is valid for.
#[derive(Debug)]
struct ListenerCerts {
    /// Lower-cased listener hostname (`None`: any).
    hostname: Option<String>,
    /// In the listener's order; the first is the default. Names lower-cased.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ListenerCerts {
    /// The certificate whose names match `sni` most specifically, else the listener's first.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = sni.and_then(|sni| {
            self.certs
                .iter()
                .filter_map(|(names, key)| {
                    names.iter().filter_map(|n| hostname_rank(Some(n), sni)).min().map(|rank| (rank, key))
                })
                .min_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, key)| key.clone())
        });
        by_name.or_else(|| self.certs.first().map(|(_, key)| key.clone()))
    }
}

/// Certificates by the hostname of the listener that names them, then by their own names.
#[derive(Debug)]
struct SniResolver {
    listeners: Vec<ListenerCerts>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let listener = match sni {
            // The most specific listener hostname that matches the requested name.
            Some(sni) => self
                .listeners
                .iter()
                .filter_map(|l| hostname_rank(l.hostname.as_deref(), sni).map(|rank| (rank, l)))
                .min_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, l)| l),
            // No SNI (an IP literal): a listener without hostname, else the first one.
            None => self.listeners.iter().find(|l| l.hostname.is_none()).or(self.listeners.first()),
        };
        listener?.pick(sni)
    }
}

/// The server config for HTTPS listeners that share one address, or `None` when none of their
/// certificates can be used (the socket then refuses handshakes).
pub fn server_config(listeners: &[&Listener], config: &Config) -> Option<Arc<ServerConfig>> {
    let mut resolver = SniResolver { listeners: Vec::new() };
    for listener in listeners {
        let Some(tls) = &listener.tls else { continue };
        let mut certs = Vec::new();
        for key in &tls.certificates {
            let parsed =
                config.certificates.get(key).ok_or_else(|| TlsError::Missing(key.clone())).and_then(|cert| {
                    let names = cert.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
                    certified_key(cert).map(|k| (names, Arc::new(k)))
                });
            match parsed {
                Ok(entry) => certs.push(entry),
                Err(error) => tracing::error!(listener = %listener.key, %error, "certificate not usable"),
            }
        }
        if certs.is_empty() {
            tracing::error!(listener = %listener.key, "listener has no usable certificate");
            continue;
        }
        resolver.listeners.push(ListenerCerts {
            hostname: listener.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
            certs,
        });
    }
    if resolver.listeners.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(Arc::new(server))
}
