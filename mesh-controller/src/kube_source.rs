//! Cluster source: one kube-runtime watcher per kind, all feeding one task that owns the
//! [`Store`], resolves, publishes config and (when leader) writes status.
//!
//! Nothing is published until every watched kind has finished its first list: a config built
//! from half the objects would drop routes the proxies are serving.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use gateway_api::experimental::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant, tcproutes::TcpRoute, tlsroutes::TlsRoute, udproutes::UdpRoute,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use mesh_api::model::ObjectKey;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::config_server::Publisher;
use crate::gateway_services::ServiceWriter;
use crate::resolve::Settings;
use crate::resolve::incremental::Resolver;
use crate::status_writer::StatusWriter;
use crate::store::{Kind, Object, Store, key_of};

/// One change to the store.
#[derive(Debug)]
pub enum Change {
    /// Boxed: changes queue in a channel, whose slots are as large as the largest variant.
    Upsert(Box<Object>),
    Delete(Kind, ObjectKey),
    /// The watcher (re)listed every object of a kind.
    Relisted(Kind, Vec<Object>),
}

/// Changes that arrive within this window are resolved together: a `kubectl apply` of a
/// folder, or an EndpointSlice update storm, costs one resolve, not hundreds.
const COALESCE: Duration = Duration::from_millis(25);

/// How soon a round whose status or Service writes failed is retried.
const WRITE_RETRY: Duration = Duration::from_secs(5);

/// Room for bursts (a relist of thousands of Pods arrives as one `Relisted`, not as many).
const CHANGE_QUEUE: usize = 1024;

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: mpsc::Sender<Change>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut relist: Option<Vec<Object>> = None;
        while let Some(event) = stream.next().await {
            let change = match event {
                Ok(watcher::Event::Apply(o)) => Change::Upsert(Box::new(wrap(o))),
                Ok(watcher::Event::Delete(o)) => Change::Delete(kind, key_of(&o)),
                Ok(watcher::Event::Init) => {
                    relist = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    relist.get_or_insert_with(Vec::new).push(wrap(o));
                    continue;
                }
                Ok(watcher::Event::InitDone) => Change::Relisted(kind, relist.take().unwrap_or_default()),
                Err(error) => {
                    tracing::warn!(?kind, %error, "watch failed; retrying with backoff");
                    continue;
                }
            };
            if tx.send(change).await.is_err() {
                return; // the controller is shutting down
            }
        }
    });
}

/// Which Gateway API kinds the API server serves; a kind whose CRD is not installed is
/// treated as having no objects, and a warning says so. Kinds come with the version served.
async fn served_gateway_kinds(client: &Client) -> BTreeSet<(String, String)> {
    let mut served = BTreeSet::new();
    let discovery = kube::Discovery::new(client.clone()).filter(&["gateway.networking.k8s.io"]).run().await;
    match discovery {
        Ok(d) => {
            // Every served version, not only the group's preferred one: TCPRoute and UDPRoute
            // exist only as v1alpha2 while the group prefers v1.
            for group in d.groups() {
                for version in group.versions() {
                    for (resource, _) in group.versioned_resources(version) {
                        served.insert((resource.kind, resource.version));
                    }
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot discover the Gateway API; is its CRD bundle installed?"),
    }
    served
}

/// Starts every watcher; returns the kinds it watches.
pub async fn start_watches(client: &Client, tx: mpsc::Sender<Change>) -> BTreeSet<Kind> {
    let served = served_gateway_kinds(client).await;
    let mut watched = BTreeSet::new();
    let all = watcher::Config::default;
    macro_rules! gateway_kind {
        ($ty:ty, $name:literal, $kind:expr, $variant:path) => {
            let version = <$ty as kube::Resource>::version(&()).into_owned();
            if served.contains(&($name.to_owned(), version.clone())) {
                spawn_watch(Api::<$ty>::all(client.clone()), all(), $kind, $variant, tx.clone());
                watched.insert($kind);
            } else {
                tracing::warn!(kind = $name, %version, "not served by the API server; treating as empty");
            }
        };
    }
    gateway_kind!(GatewayClass, "GatewayClass", Kind::GatewayClass, Object::GatewayClass);
    gateway_kind!(Gateway, "Gateway", Kind::Gateway, Object::Gateway);
    gateway_kind!(HttpRoute, "HTTPRoute", Kind::HttpRoute, Object::HttpRoute);
    gateway_kind!(GrpcRoute, "GRPCRoute", Kind::GrpcRoute, Object::GrpcRoute);
    gateway_kind!(TlsRoute, "TLSRoute", Kind::TlsRoute, Object::TlsRoute);
    gateway_kind!(TcpRoute, "TCPRoute", Kind::TcpRoute, Object::TcpRoute);
    gateway_kind!(UdpRoute, "UDPRoute", Kind::UdpRoute, Object::UdpRoute);
    gateway_kind!(ReferenceGrant, "ReferenceGrant", Kind::ReferenceGrant, Object::ReferenceGrant);
    spawn_watch(Api::<Service>::all(client.clone()), all(), Kind::Service, Object::Service, tx.clone());
    spawn_watch(
        Api::<EndpointSlice>::all(client.clone()),
        all(),
        Kind::EndpointSlice,
        Object::EndpointSlice,
        tx.clone(),
    );
    spawn_watch(Api::<Pod>::all(client.clone()), all(), Kind::Pod, Object::Pod, tx.clone());
    spawn_watch(Api::<Namespace>::all(client.clone()), all(), Kind::Namespace, Object::Namespace, tx.clone());
    // Only TLS Secrets can be listener certificates; watching no others keeps every other
    // credential in the cluster out of the controller's memory.
    let tls_secrets = watcher::Config::default().fields("type=kubernetes.io/tls");
    spawn_watch(Api::<Secret>::all(client.clone()), tls_secrets, Kind::Secret, Object::Secret, tx.clone());
    // Gateway parameters. Only the parameter keys' values are kept (see `trim_config_map`).
    spawn_watch(
        Api::<ConfigMap>::all(client.clone()),
        all(),
        Kind::ConfigMap,
        |c| Object::ConfigMap(crate::resolve::exposure::trim_config_map(c)),
        tx,
    );
    watched.extend([
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Namespace,
        Kind::Secret,
        Kind::ConfigMap,
    ]);
    watched
}

/// Owns the store: applies changes, resolves, publishes, writes status while leader.
pub async fn run(
    client: Client,
    settings: Settings,
    publisher: Publisher,
    writer: StatusWriter,
    mut leader: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel(CHANGE_QUEUE);
    let watched = start_watches(&client, tx).await;
    let mut synced: BTreeSet<Kind> = BTreeSet::new();
    let mut store = Store::default();
    // Services expose Gateways only where the node proxies can be found.
    let mut services = settings.gateway_services.is_some().then(|| ServiceWriter::new(client.clone()));
    let mut resolver = Resolver::new(settings);
    // After a failed write, the next round comes at the latest this much later, even if
    // nothing changes: a write refused by a passing API server error is not lost.
    let mut retry: Option<tokio::time::Instant> = None;
    loop {
        let retry_at = retry.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep_until(retry_at), if retry.is_some() => {
                retry = None;
            }
            change = rx.recv() => {
                let Some(change) = change else { anyhow::bail!("every watch ended") };
                apply(&mut store, &mut synced, change);
                // Take whatever else arrives within the coalescing window.
                let deadline = tokio::time::sleep(COALESCE);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        more = rx.recv() => match more {
                            Some(change) => apply(&mut store, &mut synced, change),
                            None => break,
                        },
                        _ = &mut deadline => break,
                    }
                }
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                }
                // Falls through to a resolve: a new leader writes every status once.
            }
        }
        if !watched.is_subset(&synced) {
            continue;
        }
        let changes = store.take_changes();
        let started = std::time::Instant::now();
        let version = publisher.update(|config| resolver.resolve_into(&store, &changes, config));
        // The status writer compares every status with what the API holds itself.
        drop(resolver.take_status_changes());
        tracing::debug!(version, objects = store.object_count(), elapsed = ?started.elapsed(), "resolved");
        if *leader.borrow() {
            let mut failed = writer.write(&store, resolver.statuses()).await.failed;
            if let Some(services) = services.as_mut() {
                failed += services.write(&store, resolver.exposures()).await.failed;
            }
            if failed > 0 && retry.is_none() {
                retry = Some(tokio::time::Instant::now() + WRITE_RETRY);
            }
        } else if let Some(services) = services.as_mut() {
            services.forget();
        }
    }
}

fn apply(store: &mut Store, synced: &mut BTreeSet<Kind>, change: Change) {
    match change {
        Change::Upsert(o) => store.insert(*o),
        Change::Delete(kind, key) => store.remove(kind, &key),
        Change::Relisted(kind, objects) => {
            store.replace_kind(kind, objects);
            if synced.insert(kind) {
                tracing::info!(?kind, "initial list complete");
            }
        }
    }
}
