//! A workload's certificate as the proxy holds it: its chain, its private key (generated here,
//! never sent anywhere), the roots its peers are checked against, and the identity in it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_api::identity::SpiffeId;
use mesh_api::proto::SignResponse;
use rcgen::{CertificateParams, KeyPair, SanType, string::Ia5String};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot make a key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the CA answered without a certificate")]
    EmptyChain,
    #[error("the CA answered without a trust bundle")]
    NoRoots,
    #[error("a root of the CA's trust bundle is unusable: {0}")]
    Root(rustls::Error),
    #[error("the signed certificate does not match our key: {0}")]
    Key(rustls::Error),
    #[error("the signed certificate names {got}, not {wanted}")]
    WrongIdentity { wanted: SpiffeId, got: String },
    #[error("the certificate carries no single SPIFFE identity: {0}")]
    Identity(String),
}

/// A key pair and the CSR that asks for `identity` with it.
pub struct Request {
    pub identity: SpiffeId,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub csr_der: Vec<u8>,
}

impl Request {
    /// ECDSA P-256: the fastest handshake rustls with ring offers, and what ztunnel and
    /// Linkerd use for workload certificates.
    pub fn new(identity: &SpiffeId) -> Result<Self, CertificateError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let uri = Ia5String::try_from(identity.to_string())?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr_der = params.serialize_request(&key)?.der().to_vec();
        Ok(Self { identity: identity.clone(), key: PrivatePkcs8KeyDer::from(key.serialize_der()), csr_der })
    }
}

pub struct WorkloadCert {
    pub identity: SpiffeId,
    /// Chain and key, ready for rustls on either side of a handshake.
    pub certified: Arc<CertifiedKey>,
    pub roots: Arc<RootCertStore>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Joins the CA's answer with the key of `request`, checking that they belong together.
    pub fn from_response(request: Request, response: SignResponse) -> Result<Self, CertificateError> {
        let chain: Vec<CertificateDer<'static>> =
            response.chain_der.into_iter().map(CertificateDer::from).collect();
        let leaf = chain.first().ok_or(CertificateError::EmptyChain)?;
        let got = peer_identity(leaf).map_err(CertificateError::Identity)?;
        if got != request.identity {
            return Err(CertificateError::WrongIdentity { wanted: request.identity, got: got.to_string() });
        }
        let mut roots = RootCertStore::empty();
        for root in response.trust_bundle_der {
            roots.add(CertificateDer::from(root)).map_err(CertificateError::Root)?;
        }
        if roots.is_empty() {
            return Err(CertificateError::NoRoots);
        }
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, PrivateKeyDer::Pkcs8(request.key), &provider)
            .map_err(CertificateError::Key)?;
        Ok(Self {
            identity: request.identity,
            certified: Arc::new(certified),
            roots: Arc::new(roots),
            not_before: unix(response.not_before),
            not_after: unix(response.not_after),
        })
    }

    /// When to ask for the next one: at half-life, as the design says, so a CA outage of up to
    /// half a lifetime goes unnoticed by traffic.
    pub fn renew_at(&self) -> SystemTime {
        let life = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + life / 2
    }

    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

fn unix(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// The SPIFFE identity a (peer's) leaf certificate carries: its one URI SAN.
pub fn peer_identity(leaf: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("unparseable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or_else(|| "no subjectAltName".to_string())?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => uri.parse().map_err(|e: mesh_api::identity::SpiffeIdError| e.to_string()),
        other => Err(format!("{} URI SANs, expected exactly one", other.len())),
    }
}
