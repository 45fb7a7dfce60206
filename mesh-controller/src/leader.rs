//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! every replica serves config, only the holder of the Lease writes status.
//!
//! Writes are optimistic (the Lease's resourceVersion), so two replicas can never both
//! believe they took the same expired Lease. A leader that cannot renew before its own lease
//! would expire steps down before anyone else can take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal. client-go's default (15 s): long enough to
    /// ride out an API server hiccup, short enough that status resumes quickly after a crash.
    pub duration: Duration,
}

impl LeaseConfig {
    /// Renew at a third of the duration, so two renewals can fail before the Lease lapses.
    fn renew_every(&self) -> Duration {
        self.duration / 3
    }
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Leading,
    Following { holder: String },
}

/// Decides, from the Lease as read, whether `identity` may take or keep it at `now`.
pub fn may_hold(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Result<(), String> {
    let Some(spec) = spec else { return Ok(()) };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return Ok(());
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map_or(0, |t| t.0.as_second());
    if now.as_second() > renewed + duration { Ok(()) } else { Err(holder.to_string()) }
}

/// One acquire-or-renew attempt.
pub async fn try_acquire(api: &Api<Lease>, config: &LeaseConfig) -> kube::Result<Outcome> {
    let now = Timestamp::now();
    let existing = api.get_opt(&config.name).await?;
    let seconds = i32::try_from(config.duration.as_secs()).unwrap_or(15);
    match existing {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    Ok(Outcome::Following { holder: "(another replica)".into() })
                }
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if let Err(holder) = may_hold(lease.spec.as_ref(), &config.identity, now) {
                return Ok(Outcome::Following { holder });
            }
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
                spec.holder_identity = Some(config.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
            match api.replace(&config.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    Ok(Outcome::Following { holder: "(another replica)".into() })
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Runs the election forever; the receiver says whether this replica leads right now.
pub fn spawn(api: Api<Lease>, config: LeaseConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let leading = match try_acquire(&api, &config).await {
                Ok(Outcome::Leading) => {
                    last_renewal = Some(tokio::time::Instant::now());
                    true
                }
                Ok(Outcome::Following { holder }) => {
                    tracing::debug!(%holder, "following");
                    false
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the Lease");
                    // Keep leading only while our last renewal is still comfortably valid.
                    last_renewal.is_some_and(|t| t.elapsed() < config.duration - config.renew_every())
                }
            };
            if *tx.borrow() != leading {
                tracing::info!(identity = %config.identity, leading, "leadership changed");
            }
            tx.send_if_modified(|current| std::mem::replace(current, leading) != leading);
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(config.renew_every()).await;
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).expect("time"))),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected_an_expired_one_taken() {
        let at = |s| Timestamp::from_second(s).expect("time");
        assert_eq!(may_hold(None, "me", at(100)), Ok(()));
        assert_eq!(may_hold(Some(&spec("me", 90)), "me", at(100)), Ok(()));
        assert_eq!(may_hold(Some(&spec("other", 90)), "me", at(100)), Err("other".into()));
        assert_eq!(may_hold(Some(&spec("other", 80)), "me", at(100)), Ok(()), "renewed 20 s ago, valid 15 s");
        assert_eq!(may_hold(Some(&spec("", 99)), "me", at(100)), Ok(()), "released");
    }
}
