//! The controller's own TLS: a serving certificate for its gRPC port (config stream and
//! certificate authority), signed by the same CA that signs the workloads, short-lived and
//! re-issued at half-life; and the trust bundle (the CA's public roots) proxies verify it with.
//!
//! The key is generated in memory at each issue and never written anywhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::authority::Authority;

/// The serving certificate lives a day; it is re-issued at half-life, so a controller always
/// serves one with at least 12 h left.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// After a failed re-issue, try again this soon (the current one is still valid for hours).
const RETRY: Duration = Duration::from_secs(60);
/// Never re-issue more often than this, even when the CA's own expiry cuts the certificate
/// short (its half-life may then already be past): a floor, not a schedule.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(60);

/// The ConfigMap, in the controller's namespace, that holds the trust bundle (`ca.crt`, public
/// certificates only) for the node proxies to mount.
pub const BUNDLE_CONFIGMAP: &str = "weft-ca-root";
/// Its key.
pub const BUNDLE_KEY: &str = "ca.crt";

/// The names the controller's certificate is valid for: its Service's DNS names, then `extra`.
pub fn service_names(namespace: &str, cluster_domain: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        format!("weft-controller.{namespace}.svc"),
        format!("weft-controller.{namespace}.svc.{}", cluster_domain.trim_end_matches('.')),
    ];
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The current serving certificate, swapped atomically when re-issued; rustls asks it on every
/// handshake.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn issue(
    authority: &Authority,
    names: &[String],
    now: OffsetDateTime,
) -> anyhow::Result<(CertifiedKey, OffsetDateTime, OffsetDateTime)> {
    let issued = authority.issue_serving(names, SERVING_TTL, now)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_pkcs8));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .context("rustls cannot sign with the serving key")?;
    Ok((CertifiedKey::new(issued.chain, signer), issued.not_before, issued.not_after))
}

impl ServingCert {
    /// Issues a first certificate for `names` and keeps it fresh from a background task
    /// (tokio) for as long as the returned value lives anywhere: at half-life, and at once
    /// when the authority is replaced (a rotated root signs the controller from then on).
    pub fn start(
        mut authority: watch::Receiver<Arc<Authority>>,
        names: Vec<String>,
    ) -> anyhow::Result<Arc<Self>> {
        let first = authority.borrow_and_update().clone();
        let (key, not_before, not_after) = issue(&first, &names, OffsetDateTime::now_utc())
            .context("cannot issue the controller's serving certificate")?;
        tracing::info!(names = ?names, %not_after, "issued the controller's serving certificate");
        let cert = Arc::new(ServingCert { current: ArcSwap::from_pointee(key) });
        let weak = Arc::downgrade(&cert);
        tokio::spawn(async move {
            let mut wait = renew_in(not_before, not_after, OffsetDateTime::now_utc());
            // Once nothing can replace the authority any more, only the clock renews.
            let mut replaceable = true;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = authority.changed(), if replaceable => {
                        if changed.is_err() {
                            replaceable = false;
                            continue;
                        }
                    }
                }
                let Some(cert) = weak.upgrade() else { return };
                let signer = authority.borrow_and_update().clone();
                match issue(&signer, &names, OffsetDateTime::now_utc()) {
                    Ok((key, not_before, not_after)) => {
                        cert.current.store(Arc::new(key));
                        tracing::info!(%not_after, "re-issued the controller's serving certificate");
                        wait = renew_in(not_before, not_after, OffsetDateTime::now_utc());
                    }
                    Err(error) => {
                        tracing::error!(
                            error = format!("{error:#}"),
                            "cannot re-issue the controller's serving certificate; retrying"
                        );
                        wait = RETRY;
                    }
                }
            }
        });
        Ok(cert)
    }

    /// rustls server config with this certificate: TLS 1.2+ (ring), ALPN h2, no client certs
    /// (proxies authenticate with their token, on top of the server-authenticated channel).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("rustls protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The leaf currently served (tests, diagnostics).
    pub fn current_leaf(&self) -> Option<rustls_pki_types::CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }
}

fn half_life(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) / 2
}

/// How long until a certificate valid `not_before..not_after` is re-issued: at its half-life,
/// and never sooner than [`MIN_RENEW_INTERVAL`].
fn renew_in(not_before: OffsetDateTime, not_after: OffsetDateTime, now: OffsetDateTime) -> Duration {
    let until = half_life(not_before, not_after) - now;
    if until.is_positive() { until.unsigned_abs().max(MIN_RENEW_INTERVAL) } else { MIN_RENEW_INTERVAL }
}

/// Writes the trust bundle into ConfigMap [`BUNDLE_CONFIGMAP`]: created when absent, updated
/// when its roots differ, untouched otherwise (get, create, update: no patch, so RBAC can name
/// the object). Every replica does it at start; they all hold the same roots (Secret
/// weft-ca), so they agree.
pub async fn publish_bundle(client: kube::Client, namespace: &str, roots_pem: &str) -> anyhow::Result<()> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
    let wanted = BTreeMap::from([(BUNDLE_KEY.to_string(), roots_pem.to_string())]);
    let what = || format!("ConfigMap {BUNDLE_CONFIGMAP} in {namespace}");
    for _ in 0..3 {
        match api.get_opt(BUNDLE_CONFIGMAP).await.with_context(|| format!("cannot read {}", what()))? {
            Some(existing) if existing.data.as_ref() == Some(&wanted) => {
                tracing::info!(%namespace, "the CA trust bundle in ConfigMap {BUNDLE_CONFIGMAP} is current");
                return Ok(());
            }
            Some(mut existing) => {
                existing.data = Some(wanted.clone());
                match api.replace(BUNDLE_CONFIGMAP, &PostParams::default(), &existing).await {
                    Ok(_) => {
                        tracing::info!(%namespace, "updated the CA trust bundle in ConfigMap {BUNDLE_CONFIGMAP}");
                        return Ok(());
                    }
                    // Another replica wrote it meanwhile: look again.
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(e) => return Err(e).with_context(|| format!("cannot update {}", what())),
                }
            }
            None => {
                let configmap = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(BUNDLE_CONFIGMAP.into()),
                        namespace: Some(namespace.into()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".into(),
                            "weft-controller".into(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(wanted.clone()),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &configmap).await {
                    Ok(_) => {
                        tracing::info!(%namespace, "published the CA trust bundle in ConfigMap {BUNDLE_CONFIGMAP}");
                        return Ok(());
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    Err(e) => return Err(e).with_context(|| format!("cannot create {}", what())),
                }
            }
        }
    }
    anyhow::bail!("{} kept changing under us", what())
}

#[cfg(test)]
mod tests {
    use super::super::authority::CaMaterial;
    use super::super::reload::{Reload, Reloader, SigningAuthority};
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    #[test]
    fn service_names_cover_the_service_and_extras_once() {
        assert_eq!(
            service_names(
                "weft-system",
                "cluster.local.",
                &["127.0.0.1".into(), "weft-controller.weft-system.svc".into()]
            ),
            vec![
                "weft-controller.weft-system.svc".to_string(),
                "weft-controller.weft-system.svc.cluster.local".to_string(),
                "127.0.0.1".to_string(),
            ]
        );
    }

    #[test]
    fn renewal_is_at_half_life_and_never_in_a_tight_loop() {
        let start = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("time");
        let day = start + time::Duration::hours(24);
        assert_eq!(half_life(start, day), start + time::Duration::hours(12));
        assert_eq!(renew_in(start, day, start), Duration::from_secs(12 * 3600));
        // A certificate cut short (the CA expires soon): its half-life is past; still a pause.
        let short = start + time::Duration::seconds(30);
        assert_eq!(renew_in(start, short, start + time::Duration::seconds(20)), MIN_RENEW_INTERVAL);
        assert_eq!(renew_in(start, day, start + time::Duration::hours(12)), MIN_RENEW_INTERVAL);
    }

    #[tokio::test]
    async fn the_served_certificate_is_short_lived_and_not_a_ca() {
        let now = OffsetDateTime::now_utc();
        let material = CaMaterial::generate("cluster.local", now).expect("CA");
        let authority =
            SigningAuthority::new(Authority::new("cluster.local", &material, now).expect("authority"));
        let cert = ServingCert::start(authority.subscribe(), vec!["127.0.0.1".into()]).expect("started");
        let leaf = cert.current_leaf().expect("a leaf");
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).expect("parse");
        let lifetime = parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
        assert!(
            lifetime <= (SERVING_TTL + Duration::from_secs(600)).as_secs() as i64,
            "short-lived: {lifetime}s"
        );
        assert!(!parsed.is_ca());
        cert.server_config().expect("a rustls config");
    }

    #[tokio::test]
    async fn a_replaced_authority_signs_the_served_certificate_at_once() {
        let now = OffsetDateTime::now_utc();
        let old = CaMaterial::generate("cluster.local", now).expect("old root");
        let new = CaMaterial::generate("cluster.local", now).expect("new root");
        let signing = SigningAuthority::new(Authority::new("cluster.local", &old, now).expect("authority"));
        let mut reloader = Reloader::new(signing.clone(), old.clone(), Arc::default());
        let cert = ServingCert::start(signing.subscribe(), vec!["127.0.0.1".into()]).expect("started");
        // Whether a client trusting only `material`'s root accepts the served certificate.
        let chains_to = |cert: &ServingCert, material: &CaMaterial| {
            let root = CertificateDer::from_pem_slice(material.bundle_pem.as_bytes()).expect("root PEM");
            let anchor = webpki::anchor_from_trusted_cert(&root).expect("anchor").to_owned();
            let leaf_der = cert.current_leaf().expect("a leaf");
            let leaf = webpki::EndEntityCert::try_from(&leaf_der).expect("leaf parses");
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                rustls_pki_types::UnixTime::now(),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .is_ok()
        };
        let old_leaf = cert.current_leaf();
        assert!(chains_to(&cert, &old) && !chains_to(&cert, &new));

        assert_eq!(reloader.offer(new.clone(), now), Reload::Replaced);
        // Bounded: the re-issue is a task on this runtime, milliseconds away.
        for _ in 0..200 {
            if cert.current_leaf() != old_leaf {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_ne!(cert.current_leaf(), old_leaf, "re-issued after the CA changed");
        assert!(chains_to(&cert, &new), "signed by the new CA");
        assert!(!chains_to(&cert, &old));
    }
}
