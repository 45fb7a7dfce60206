//! The certificate authority: node proxies send a CSR per workload identity of a pod on their
//! node and get back a short-lived SPIFFE certificate. Keys never leave the proxies.
//!
//! - [`authority`]: CA material and signing (pure).
//! - [`authorize`]: who may have which identity.
//! - [`storage`]: where the root lives (Secret `weft-ca` or a folder).
//! - [`reload`]: following that source, so a changed root signs without a restart.
//! - [`serving`]: the controller's own serving certificate and the published trust bundle.
//! - this module: the `Certificates` gRPC service tying them to the published config.

pub mod authority;
pub mod authorize;
pub mod reload;
pub mod serving;
pub mod storage;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_api::identity::SpiffeId;
use mesh_api::proto::certificates_server::{Certificates, CertificatesServer};
use mesh_api::proto::{SignRequest, SignResponse};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::config_server::Publisher;
use authority::{Authority, CaMaterial};
use authorize::{Authenticator, Refusal};
use reload::{Reloader, SigningAuthority};

/// Counters for `/metrics`.
#[derive(Default)]
pub struct CaMetrics {
    signed: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Changes of the CA's source, by result (`replaced`, `refused`).
    reloads: Mutex<BTreeMap<&'static str, u64>>,
}

impl CaMetrics {
    fn refuse(&self, reason: &'static str) {
        if let Ok(mut refused) = self.refused.lock() {
            *refused.entry(reason).or_default() += 1;
        }
    }

    fn reloaded(&self, result: &'static str) {
        if let Ok(mut reloads) = self.reloads.lock() {
            *reloads.entry(result).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "# HELP weft_ca_signed_total Workload certificates signed.\n\
             # TYPE weft_ca_signed_total counter\nweft_ca_signed_total {}\n\
             # HELP weft_ca_refused_total Certificate requests refused, by reason.\n\
             # TYPE weft_ca_refused_total counter\n",
            self.signed.load(Ordering::Relaxed)
        );
        if let Ok(refused) = self.refused.lock() {
            for (reason, count) in refused.iter() {
                out.push_str(&format!("weft_ca_refused_total{{reason=\"{reason}\"}} {count}\n"));
            }
        }
        out.push_str(
            "# HELP weft_ca_reloads_total Changes of the CA's Secret or folder, by result (replaced, refused).\n\
             # TYPE weft_ca_reloads_total counter\n",
        );
        if let Ok(reloads) = self.reloads.lock() {
            for (result, count) in reloads.iter() {
                out.push_str(&format!("weft_ca_reloads_total{{result=\"{result}\"}} {count}\n"));
            }
        }
        out
    }
}

#[derive(Clone)]
pub struct CertificateService {
    authority: SigningAuthority,
    authenticator: Arc<Authenticator>,
    publisher: Publisher,
    pub metrics: Arc<CaMetrics>,
}

impl CertificateService {
    pub fn new(authority: Authority, authenticator: Authenticator, publisher: Publisher) -> Self {
        Self {
            authority: SigningAuthority::new(authority),
            authenticator: Arc::new(authenticator),
            publisher,
            metrics: Arc::default(),
        }
    }

    /// A CA with a root generated in memory and static node tokens (`(token, node)`), every
    /// node proxy having `proxy_identity`: for tests and throwaway setups, where nothing has
    /// to outlive the process.
    pub fn ephemeral(
        trust_domain: &str,
        tokens: &[(&str, &str)],
        proxy_identity: &SpiffeId,
        publisher: Publisher,
    ) -> Result<Self, authority::CaError> {
        let now = OffsetDateTime::now_utc();
        let authority =
            Authority::new(trust_domain, &authority::CaMaterial::generate(trust_domain, now)?, now)?;
        let tokens = tokens
            .iter()
            .map(|(token, node)| {
                let caller = authorize::Caller { node: node.to_string(), identity: proxy_identity.clone() };
                (token.to_string(), caller)
            })
            .collect();
        Ok(Self::new(authority, Authenticator::Static(tokens), publisher))
    }

    /// The authority signing now.
    pub fn authority(&self) -> Arc<Authority> {
        self.authority.current()
    }

    /// The signing half, shared with the controller's own serving certificate and the trust
    /// bundle's publisher, which follow its replacements.
    pub fn signing(&self) -> SigningAuthority {
        self.authority.clone()
    }

    /// Replaces the authority when its source changes; `material` is what it was made from.
    pub fn reloader(&self, material: CaMaterial) -> Reloader {
        Reloader::new(self.authority.clone(), material, self.metrics.clone())
    }

    /// Who callers are: the config stream authenticates its subscribers with the same one.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.authenticator.clone()
    }

    pub fn server(&self) -> CertificatesServer<Self> {
        CertificatesServer::new(self.clone())
    }

    async fn sign(
        &self,
        token: Option<&str>,
        request: SignRequest,
    ) -> Result<SignResponse, (&'static str, Status)> {
        let token = token.ok_or(("no_token", Status::unauthenticated(Refusal::NoToken.to_string())))?;
        let caller = self.authenticator.authenticate(token).await.map_err(|refusal| match refusal {
            Refusal::Unavailable(_) => ("token_review_unavailable", Status::unavailable(refusal.to_string())),
            _ => ("bad_token", Status::unauthenticated(refusal.to_string())),
        })?;
        let identity: SpiffeId =
            request.identity.parse().map_err(|e: mesh_api::identity::SpiffeIdError| {
                ("bad_identity", Status::invalid_argument(e.to_string()))
            })?;
        self.publisher
            .with_config(|_, config| authorize::authorize(&caller, &identity, config))
            .map_err(|refusal| ("not_on_node", Status::permission_denied(refusal.to_string())))?;
        let ttl = (request.ttl_seconds > 0).then(|| Duration::from_secs(u64::from(request.ttl_seconds)));
        let issued = self
            .authority
            .current()
            .sign(&request.csr_der, &identity, ttl, OffsetDateTime::now_utc())
            .map_err(|e| ("bad_csr", Status::invalid_argument(e.to_string())))?;
        tracing::info!(node = %caller.node, %identity, not_after = %issued.not_after, "signed a workload certificate");
        Ok(SignResponse {
            chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: issued.roots.iter().map(|c| c.to_vec()).collect(),
            not_before: issued.not_before.unix_timestamp(),
            not_after: issued.not_after.unix_timestamp(),
        })
    }
}

/// The bearer token of a request's `authorization` metadata.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

#[tonic::async_trait]
impl Certificates for CertificateService {
    async fn sign(&self, request: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let token = bearer_token(request.metadata());
        let peer = request.remote_addr();
        let wanted = request.get_ref().identity.clone();
        match CertificateService::sign(self, token.as_deref(), request.into_inner()).await {
            Ok(response) => {
                self.metrics.signed.fetch_add(1, Ordering::Relaxed);
                Ok(Response::new(response))
            }
            Err((reason, status)) => {
                self.metrics.refuse(reason);
                tracing::warn!(?peer, identity = %wanted, reason, message = status.message(), "refused a certificate request");
                Err(status)
            }
        }
    }
}
