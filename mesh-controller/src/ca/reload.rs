//! Following the CA's source after start: a changed Secret `weft-ca` (or CA folder) replaces
//! the signing authority in place, so each step of a root rotation is one edit, not one
//! rollout. What reads the authority (signing, the serving certificate, the published trust
//! bundle) subscribes to [`SigningAuthority`] and acts on the change itself.
//!
//! A change that cannot sign (bad PEM, a key that is not the certificate's, an expired or
//! non-CA certificate, a half-written folder) is refused: the last good authority keeps
//! signing, and the refusal is logged as an error and counted. Deleting the Secret is not a
//! change either: the controller keeps what it has.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt as _, watcher};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::CaMetrics;
use super::authority::{Authority, CaMaterial};
use super::storage;

/// How often a CA folder is re-read. A Secret mounted by kubelet changes a minute or so after
/// its edit anyway, and a rotation step waits hours for certificates to renew: ten seconds is
/// prompt and costs three small reads.
pub const FOLDER_POLL: Duration = Duration::from_secs(10);

/// The authority that signs now, and a way to hear when it is replaced.
#[derive(Clone)]
pub struct SigningAuthority {
    current: Arc<watch::Sender<Arc<Authority>>>,
}

impl SigningAuthority {
    pub fn new(authority: Authority) -> Self {
        Self { current: Arc::new(watch::Sender::new(Arc::new(authority))) }
    }

    pub fn current(&self) -> Arc<Authority> {
        self.current.borrow().clone()
    }

    /// Sees the current authority and every replacement after it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Authority>> {
        self.current.subscribe()
    }

    fn replace(&self, authority: Authority) {
        self.current.send_replace(Arc::new(authority));
    }
}

/// What became of a CA read from its source.
#[derive(Debug, PartialEq)]
pub enum Reload {
    /// The same material as the authority that signs now.
    Unchanged,
    Replaced,
    /// It cannot sign; the current authority stays.
    Refused(String),
}

/// Turns material read from the CA's source into a replaced authority, or a refusal.
pub struct Reloader {
    trust_domain: String,
    signing: SigningAuthority,
    /// What the current authority was made from: re-reads of the same bytes change nothing.
    material: CaMaterial,
    metrics: Arc<CaMetrics>,
}

impl Reloader {
    /// `material` is what `signing`'s current authority was made from; its replacements keep
    /// its trust domain.
    pub fn new(signing: SigningAuthority, material: CaMaterial, metrics: Arc<CaMetrics>) -> Self {
        let trust_domain = signing.current().trust_domain().to_string();
        Self { trust_domain, signing, material, metrics }
    }

    pub fn offer(&mut self, material: CaMaterial, now: OffsetDateTime) -> Reload {
        if material == self.material {
            return Reload::Unchanged;
        }
        match Authority::new(&self.trust_domain, &material, now) {
            // Same key, chain and roots in other bytes (e.g. the `ca.crt` a standalone
            // controller writes beside a user's CA that had none): nothing to redo.
            Ok(authority)
                if material.chain_pem == self.material.chain_pem
                    && material.key_pem == self.material.key_pem
                    && authority.roots() == self.signing.current().roots() =>
            {
                self.material = material;
                Reload::Unchanged
            }
            Ok(authority) => {
                let roots = authority.roots().len();
                self.signing.replace(authority);
                self.material = material;
                self.metrics.reloaded("replaced");
                tracing::info!(
                    roots,
                    "the CA changed: new certificates come from it, and its roots are published"
                );
                Reload::Replaced
            }
            Err(error) => self.refuse(error.to_string()),
        }
    }

    /// The source changed into something that is not a CA at all (e.g. a Secret without
    /// `tls.key`).
    pub fn refuse(&mut self, reason: String) -> Reload {
        self.metrics.reloaded("refused");
        tracing::error!(%reason, "the CA's source changed but cannot sign; the previous CA keeps signing");
        Reload::Refused(reason)
    }
}

/// Re-reads the CA folder every [`FOLDER_POLL`] for as long as the process runs.
pub async fn follow_folder(dir: PathBuf, mut reloader: Reloader) {
    let mut tick = tokio::time::interval(FOLDER_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        reload_folder(&dir, &mut reloader);
    }
}

fn reload_folder(dir: &Path, reloader: &mut Reloader) -> Reload {
    match storage::read_dir(dir) {
        Ok(Some(material)) => reloader.offer(material, OffsetDateTime::now_utc()),
        // Gone (being replaced, or removed): keep signing with what we have.
        Ok(None) => Reload::Unchanged,
        Err(error) => reloader.refuse(format!("{error:#}")),
    }
}

/// Watches Secret `weft-ca` in `namespace` for as long as the process runs (the watch restarts
/// with backoff after API errors).
pub async fn follow_secret(client: kube::Client, namespace: String, mut reloader: Reloader) {
    let api: kube::Api<Secret> = kube::Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", storage::SECRET_NAME));
    let mut secrets = watcher(api, config).default_backoff().applied_objects().boxed();
    while let Some(event) = secrets.next().await {
        match event {
            Ok(secret) => {
                match storage::from_secret(&secret) {
                    Ok(material) => reloader.offer(material, OffsetDateTime::now_utc()),
                    Err(error) => reloader.refuse(format!("{error:#}")),
                };
            }
            Err(error) => {
                tracing::warn!(%namespace, %error, "watching Secret weft-ca failed; retrying (the CA keeps signing)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn started(material: &CaMaterial) -> (SigningAuthority, Reloader, Arc<CaMetrics>) {
        let signing =
            SigningAuthority::new(Authority::new("cluster.local", material, now()).expect("authority"));
        let metrics = Arc::new(CaMetrics::default());
        let reloader = Reloader::new(signing.clone(), material.clone(), metrics.clone());
        (signing, reloader, metrics)
    }

    #[test]
    fn a_new_root_replaces_the_authority_and_subscribers_see_it() {
        let old = CaMaterial::generate("cluster.local", now()).expect("old root");
        let new = CaMaterial::generate("cluster.local", now()).expect("new root");
        let (signing, mut reloader, metrics) = started(&old);
        let mut updates = signing.subscribe();
        let before = signing.current().roots_pem();

        assert_eq!(reloader.offer(old.clone(), now()), Reload::Unchanged);
        assert!(!updates.has_changed().expect("sender alive"), "the same bytes are not a change");

        assert_eq!(reloader.offer(new.clone(), now()), Reload::Replaced);
        assert!(updates.has_changed().expect("sender alive"));
        let after = updates.borrow_and_update().roots_pem();
        assert_ne!(before, after);
        assert_eq!(after, signing.current().roots_pem());
        let new_root = CertificateDer::from_pem_slice(new.bundle_pem.as_bytes()).expect("root PEM");
        assert_eq!(signing.current().roots(), [new_root], "the new root is what is trusted now");
        assert!(
            metrics.render().contains("weft_ca_reloads_total{result=\"replaced\"} 1"),
            "{}",
            metrics.render()
        );
    }

    #[test]
    fn material_that_cannot_sign_is_refused_and_the_last_good_authority_stays() {
        let good = CaMaterial::generate("cluster.local", now()).expect("root");
        let other = CaMaterial::generate("cluster.local", now()).expect("another root");
        let (signing, mut reloader, metrics) = started(&good);
        let before = signing.current().roots_pem();

        let mismatched = CaMaterial { key_pem: other.key_pem.clone(), ..good.clone() };
        let garbage =
            CaMaterial { chain_pem: "-----BEGIN CERTIFICATE-----\nnot base64\n".into(), ..good.clone() };
        for bad in [mismatched, garbage] {
            assert!(matches!(reloader.offer(bad, now()), Reload::Refused(_)));
            assert_eq!(signing.current().roots_pem(), before, "the previous CA keeps signing");
        }
        assert!(
            metrics.render().contains("weft_ca_reloads_total{result=\"refused\"} 2"),
            "{}",
            metrics.render()
        );

        // Fixed again: taken.
        assert_eq!(reloader.offer(other, now()), Reload::Replaced);
    }

    #[test]
    fn a_folder_edit_is_picked_up_and_a_half_written_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = storage::load_or_create_dir(dir.path(), "cluster.local").expect("generated");
        let (signing, mut reloader, _metrics) = started(&first);
        assert_eq!(reload_folder(dir.path(), &mut reloader), Reload::Unchanged);

        // Rotation step 1: a second root beside the first in ca.crt.
        let next = CaMaterial::generate("cluster.local", now()).expect("next root");
        let both = format!("{}{}", first.bundle_pem, next.bundle_pem);
        std::fs::write(dir.path().join("ca.crt"), &both).expect("write ca.crt");
        assert_eq!(reload_folder(dir.path(), &mut reloader), Reload::Replaced);
        assert_eq!(signing.current().roots().len(), 2, "both roots are trusted now");

        // A key being rewritten (empty for a moment) is refused, not half-applied.
        std::fs::write(dir.path().join("tls.key"), "").expect("truncate tls.key");
        assert!(matches!(reload_folder(dir.path(), &mut reloader), Reload::Refused(_)));
        assert_eq!(signing.current().roots().len(), 2);
    }
}
