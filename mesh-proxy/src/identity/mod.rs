//! Workload certificates for the pods on this node: asked for on demand, cached, renewed at
//! half-life in the background, retried with backoff. Keys are generated here and never leave
//! the proxy; the controller's CA only sees CSRs.
//!
//! A workload whose certificate cannot be had gets none: callers fail its mesh traffic closed
//! (there is no plaintext fallback), with the CA's reason in the log.

pub mod certificate;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh_api::identity::SpiffeId;
use mesh_api::proto::SignRequest;
use mesh_api::proto::certificates_client::CertificatesClient;
use tokio::sync::watch;
use tonic::transport::Channel;

pub use certificate::{WorkloadCert, peer_identity};

/// How long a caller waits for the first certificate of an identity before failing its
/// connection: a CSR round trip is milliseconds; seconds mean the CA is away.
pub const FIRST_CERTIFICATE_WAIT: Duration = Duration::from_secs(5);
/// Retry delays after a failed request double from this…
const RETRY_MIN: Duration = Duration::from_millis(250);
/// …up to this, so a CA that is down for long is asked once a minute per identity.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// One CSR round trip must not hang a rotation task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
#[error("no certificate for {identity}: {reason}")]
pub struct Unavailable {
    pub identity: SpiffeId,
    pub reason: String,
}

/// Where certificates come from.
#[derive(Clone, Debug)]
pub struct CaSettings {
    /// The controller's gRPC port and how to trust it.
    pub endpoint: crate::config::connection::ControllerEndpoint,
    /// This proxy's token: a projected ServiceAccount token in a cluster (re-read for every
    /// request, since the kubelet rotates it), a static node token standalone.
    pub token_file: PathBuf,
    /// Wanted lifetime; `None` takes the CA's default.
    pub ttl: Option<Duration>,
}

#[derive(Clone, Default)]
struct CertState {
    current: Option<Arc<WorkloadCert>>,
    error: Option<String>,
    attempts: u64,
}

struct Slot {
    state: watch::Receiver<CertState>,
    task: tokio::task::AbortHandle,
}

pub struct IdentityManager {
    client: CertificatesClient<Channel>,
    settings: CaSettings,
    slots: Mutex<HashMap<SpiffeId, Slot>>,
    metrics: IdentityMetrics,
}

impl IdentityManager {
    pub fn new(settings: CaSettings) -> anyhow::Result<Arc<Self>> {
        let channel = settings.endpoint.connect_lazy(Duration::from_secs(3))?;
        Ok(Arc::new(Self {
            client: CertificatesClient::new(channel),
            settings,
            slots: Mutex::default(),
            metrics: IdentityMetrics::default(),
        }))
    }

    /// The current certificate of `identity`, waiting up to [`FIRST_CERTIFICATE_WAIT`] for
    /// the first one. From then on it is renewed in the background until [`forget`](Self::forget).
    pub async fn certificate(
        self: &Arc<Self>,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCert>, Unavailable> {
        let mut state = self.watch(identity);
        let waited = tokio::time::timeout(
            FIRST_CERTIFICATE_WAIT,
            state.wait_for(|s| {
                s.current.as_ref().is_some_and(|c| c.is_valid_at(SystemTime::now())) || s.attempts > 0
            }),
        )
        .await
        .map(|_| ());
        let snapshot = state.borrow().clone();
        match snapshot.current {
            Some(cert) if cert.is_valid_at(SystemTime::now()) => Ok(cert),
            _ => {
                let reason = match (waited, snapshot.error) {
                    (_, Some(error)) => error,
                    (Err(_), None) => format!("the CA did not answer within {FIRST_CERTIFICATE_WAIT:?}"),
                    (Ok(_), None) => "the certificate expired and could not be renewed".into(),
                };
                Err(Unavailable { identity: identity.clone(), reason })
            }
        }
    }

    /// Stops renewing `identity` (its last pod on this node is gone).
    pub fn forget(&self, identity: &SpiffeId) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.remove(identity)
        {
            slot.task.abort();
            self.metrics.forget(identity);
        }
    }

    /// The identities whose certificates are kept (asked for, not forgotten), sorted.
    pub fn tracked(&self) -> Vec<SpiffeId> {
        let mut ids: Vec<SpiffeId> =
            self.slots.lock().map(|slots| slots.keys().cloned().collect()).unwrap_or_default();
        ids.sort_by_key(|id| id.to_string());
        ids
    }

    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    fn watch(self: &Arc<Self>, identity: &SpiffeId) -> watch::Receiver<CertState> {
        let Ok(mut slots) = self.slots.lock() else {
            // A poisoned lock means a panic elsewhere; answer "unavailable" rather than panic too.
            let (_, rx) = watch::channel(CertState {
                attempts: 1,
                error: Some("internal error".into()),
                ..Default::default()
            });
            return rx;
        };
        if let Some(slot) = slots.get(identity) {
            return slot.state.clone();
        }
        let (tx, rx) = watch::channel(CertState::default());
        let task = tokio::spawn(Arc::clone(self).rotate(identity.clone(), tx)).abort_handle();
        slots.insert(identity.clone(), Slot { state: rx.clone(), task });
        rx
    }

    /// Keeps one identity's certificate fresh, for as long as the slot exists.
    async fn rotate(self: Arc<Self>, identity: SpiffeId, state: watch::Sender<CertState>) {
        let mut retry = RETRY_MIN;
        loop {
            let attempt = tokio::time::timeout(REQUEST_TIMEOUT, self.request(&identity)).await;
            let result =
                attempt.unwrap_or_else(|_| Err(format!("the CA did not answer within {REQUEST_TIMEOUT:?}")));
            match result {
                Ok(cert) => {
                    retry = RETRY_MIN;
                    let renew_in = cert.renew_at().duration_since(SystemTime::now()).unwrap_or(RETRY_MIN);
                    tracing::info!(%identity, not_after = ?cert.not_after, ?renew_in, "workload certificate issued");
                    self.metrics.issued(&identity, cert.not_after);
                    state.send_modify(|s| {
                        s.current = Some(Arc::new(cert));
                        s.error = None;
                        s.attempts += 1;
                    });
                    tokio::time::sleep(renew_in).await;
                }
                Err(error) => {
                    self.metrics.failed();
                    let still_valid =
                        state.borrow().current.as_ref().is_some_and(|c| c.is_valid_at(SystemTime::now()));
                    if still_valid {
                        tracing::warn!(%identity, %error, ?retry, "cannot renew the workload certificate yet; the current one is still valid");
                    } else {
                        tracing::error!(%identity, %error, ?retry, "no workload certificate: this workload's mesh traffic fails closed");
                    }
                    state.send_modify(|s| {
                        s.error = Some(error);
                        s.attempts += 1;
                    });
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn request(&self, identity: &SpiffeId) -> Result<WorkloadCert, String> {
        let header =
            crate::config::connection::bearer(&self.settings.token_file).map_err(|e| format!("{e:#}"))?;
        let csr = certificate::Request::new(identity).map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(SignRequest {
            identity: identity.to_string(),
            csr_der: csr.csr_der.clone(),
            ttl_seconds: self.settings.ttl.map_or(0, |t| u32::try_from(t.as_secs()).unwrap_or(u32::MAX)),
        });
        request.metadata_mut().insert("authorization", header);
        let response = self
            .client
            .clone()
            .sign(request)
            .await
            .map_err(|status| format!("the CA refused ({:?}): {}", status.code(), status.message()))?;
        WorkloadCert::from_response(csr, response.into_inner()).map_err(|e| e.to_string())
    }
}

/// Certificate expiry per identity and request failures, for `/metrics`.
#[derive(Default)]
struct IdentityMetrics {
    expiry: Mutex<BTreeMap<String, SystemTime>>,
    failures: std::sync::atomic::AtomicU64,
}

impl IdentityMetrics {
    fn issued(&self, identity: &SpiffeId, not_after: SystemTime) {
        if let Ok(mut expiry) = self.expiry.lock() {
            expiry.insert(identity.to_string(), not_after);
        }
    }

    fn forget(&self, identity: &SpiffeId) {
        if let Ok(mut expiry) = self.expiry.lock() {
            expiry.remove(&identity.to_string());
        }
    }

    fn failed(&self) {
        self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP weft_workload_cert_expiry_seconds When each workload certificate expires (Unix time).\n\
             # TYPE weft_workload_cert_expiry_seconds gauge\n",
        );
        if let Ok(expiry) = self.expiry.lock() {
            for (identity, at) in expiry.iter() {
                let seconds = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                out.push_str(&format!(
                    "weft_workload_cert_expiry_seconds{{identity=\"{identity}\"}} {seconds}\n"
                ));
            }
        }
        out.push_str(&format!(
            "# HELP weft_workload_cert_failures_total Certificate requests that failed.\n\
             # TYPE weft_workload_cert_failures_total counter\nweft_workload_cert_failures_total {}\n",
            self.failures.load(std::sync::atomic::Ordering::Relaxed)
        ));
        out
    }
}
