//! The config stream: every node proxy subscribes and receives the full state once, then
//! deltas, each of which it ACKs or NACKs.
//!
//! Each proxy has at most one update in flight. The next delta is computed against the last
//! version that proxy *acknowledged*, so a NACKed update never leaves the controller and the
//! proxy disagreeing about what the proxy holds. While an update is in flight newer snapshots
//! coalesce: a proxy that is slow to ACK gets one delta to the newest state, not a backlog.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use futures::Stream;
use mesh_api::model::Config;
use mesh_api::proto::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use mesh_api::proto::{ConfigUpdate, ProxyMessage, ResourceId, ResourceKind, proxy_message};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ca::authorize::{self, Authenticator, Caller, Refusal};
use crate::resolve::incremental::Changed;

/// Who may follow the config stream. The config holds Gateway private keys (Certificate
/// resources) and every pod's placement: only node proxies get it.
#[derive(Clone)]
pub enum Subscribers {
    /// Node proxies whose bearer token `authenticator` accepts (the same check as the CA's),
    /// each subscribing as its own node only.
    Authenticated(Arc<Authenticator>),
    /// Anyone, as any node: only with `--insecure-plaintext` (local tests and demos).
    Anyone,
}

impl Subscribers {
    /// Decides whether the holder of `token` may subscribe as `node`: `Ok(None)` when
    /// anyone may, else the authenticated caller; a refusal carries its metric reason.
    pub async fn admit(
        &self,
        token: Option<&str>,
        node: &str,
    ) -> Result<Option<Caller>, (&'static str, Status)> {
        let caller = self.authenticate(token).await?;
        if let Some(caller) = &caller {
            authorize::authorize_subscriber(caller, node)
                .map_err(|refusal| ("wrong_node", Status::permission_denied(refusal.to_string())))?;
        }
        Ok(caller)
    }

    async fn authenticate(&self, token: Option<&str>) -> Result<Option<Caller>, (&'static str, Status)> {
        let Subscribers::Authenticated(authenticator) = self else { return Ok(None) };
        let token = token.ok_or(("no_token", Status::unauthenticated(Refusal::NoToken.to_string())))?;
        match authenticator.authenticate(token).await {
            Ok(caller) => Ok(Some(caller)),
            Err(refusal @ Refusal::Unavailable(_)) => {
                Err(("token_review_unavailable", Status::unavailable(refusal.to_string())))
            }
            Err(refusal @ (Refusal::NotTheProxy(..) | Refusal::NoNode(_))) => {
                Err(("not_the_proxy", Status::permission_denied(refusal.to_string())))
            }
            Err(refusal) => Err(("bad_token", Status::unauthenticated(refusal.to_string()))),
        }
    }
}

/// One version of the resolved config.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
}

/// How many versions of change log are kept. A proxy whose last ACK is older than this gets
/// the full state instead of a delta; at one version per coalesced burst of changes, 1024
/// versions cover far longer than any healthy proxy takes to ACK.
const LOG_WINDOW: usize = 1024;

/// The published config and what each recent version changed.
#[derive(Debug, Default)]
struct Published {
    version: u64,
    config: Config,
    /// Oldest first: each version and the resources it changed (with whether each existed
    /// before that version).
    log: VecDeque<(u64, Changed)>,
}

/// Publishes config versions to every subscribed proxy. The config is held once and updated
/// in place; a proxy's delta is built from the change log since the version it ACKed, so its
/// cost follows the size of the change, not the size of the config.
#[derive(Clone)]
pub struct Publisher {
    state: Arc<RwLock<Published>>,
    versions: Arc<watch::Sender<u64>>,
    pub proxies: Arc<ProxyRegistry>,
    /// The size of a full state's parts, for proxies that take it in parts.
    part_bytes: usize,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    pub fn new() -> Self {
        let (versions, _) = watch::channel(0);
        Publisher {
            state: Arc::new(RwLock::new(Published::default())),
            versions: Arc::new(versions),
            proxies: Arc::new(ProxyRegistry::default()),
            part_bytes: mesh_api::delta::FULL_STATE_PART_BYTES,
        }
    }

    /// Sends full states in parts of about `bytes` to proxies that take parts (tests use a
    /// few hundred bytes to see several parts from a small config).
    pub fn with_full_state_part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes.max(1);
        self
    }

    /// Publishes `config` whole (tests; both modes publish through [`Publisher::update`]):
    /// the changes are found by comparing it with the current config. Returns the version now current.
    pub fn publish(&self, config: Config) -> u64 {
        self.update(|current| {
            let changed = changed_between(current, &config);
            *current = config;
            changed
        })
    }

    /// Lets `change` edit the published config in place and report what it changed; an
    /// empty report publishes nothing (except the very first version). Returns the version
    /// now current.
    pub fn update(&self, change: impl FnOnce(&mut Config) -> Changed) -> u64 {
        let Ok(mut state) = self.state.write() else { return 0 };
        let changed = change(&mut state.config);
        if changed.is_empty() && state.version != 0 {
            return state.version;
        }
        state.version += 1;
        let version = state.version;
        state.log.push_back((version, changed));
        while state.log.len() > LOG_WINDOW {
            state.log.pop_front();
        }
        drop(state);
        self.versions.send_replace(version);
        version
    }

    pub fn version(&self) -> u64 {
        *self.versions.borrow()
    }

    /// Runs `f` on the current version and its config, without copying it (the config is 10k
    /// Services and 100k endpoints at scale): /metrics is scraped often, and each certificate
    /// request checks its caller against the config. Publishing waits meanwhile: keep `f` short.
    pub fn with_config<R>(&self, f: impl FnOnce(u64, &Config) -> R) -> R {
        match self.state.read() {
            Ok(state) => f(state.version, &state.config),
            Err(_) => f(0, &Config::default()),
        }
    }

    /// The current version with a copy of its config (for tests; proxies are sent deltas
    /// instead, and everything else looks through [`Publisher::with_config`]).
    pub fn current(&self) -> Snapshot {
        match self.state.read() {
            Ok(state) => Snapshot { version: state.version, config: Arc::new(state.config.clone()) },
            Err(_) => Snapshot::default(),
        }
    }

    /// What takes a proxy that holds version `acked` (or nothing) to the current version, as
    /// the messages to send: one, or a full state's parts when `in_parts` (the proxy said it
    /// takes them); `None` when it is already there or nothing was published yet.
    fn update_since(&self, acked: Option<u64>, in_parts: bool) -> Option<Vec<ConfigUpdate>> {
        let state = self.state.read().ok()?;
        let latest = state.version;
        if latest == 0 || acked == Some(latest) {
            return None;
        }
        let oldest_logged = state.log.front().map_or(u64::MAX, |(v, _)| *v);
        let Some(acked) = acked.filter(|a| a + 1 >= oldest_logged) else {
            return Some(if in_parts {
                state.config.to_full_parts(latest, self.part_bytes)
            } else {
                vec![state.config.to_full_update(latest)]
            });
        };
        // Every resource changed since `acked`, with whether the proxy has it: it existed
        // before the first change after `acked`.
        let mut since: BTreeMap<&(ResourceKind, String), bool> = BTreeMap::new();
        for (_, changed) in state.log.iter().filter(|(v, _)| *v > acked) {
            for (id, existed) in changed {
                since.entry(id).or_insert(*existed);
            }
        }
        let mut update = ConfigUpdate {
            version: latest,
            full_state: false,
            upserts: Vec::new(),
            removals: Vec::new(),
            more: false,
        };
        for ((kind, key), proxy_has_it) in since {
            match state.config.resource(*kind, key) {
                Some(resource) => update.upserts.push(resource),
                None if proxy_has_it => {
                    update.removals.push(ResourceId { kind: *kind as i32, key: key.clone() })
                }
                None => {}
            }
        }
        Some(vec![update])
    }

    /// The gRPC service, admitting `subscribers`.
    pub fn service(&self, subscribers: Subscribers) -> ConfigDiscoveryServer<ConfigService> {
        self.service_with_max_session_age(subscribers, MAX_SESSION_AGE)
    }

    /// [`service`](Self::service) with another bound on how long an authenticated stream
    /// lives (tests use seconds).
    pub fn service_with_max_session_age(
        &self,
        subscribers: Subscribers,
        max_session_age: Duration,
    ) -> ConfigDiscoveryServer<ConfigService> {
        ConfigDiscoveryServer::new(ConfigService { publisher: self.clone(), subscribers, max_session_age })
            .max_encoding_message_size(mesh_api::MAX_CONFIG_MESSAGE_BYTES)
    }
}

/// The resources that differ between two configs, each with whether it existed in `before`.
pub fn changed_between(before: &Config, after: &Config) -> Changed {
    let delta = before.diff(after, 0);
    delta
        .upserts
        .iter()
        .filter_map(|r| r.id.clone())
        .chain(delta.removals)
        .map(|id| {
            let kind = id.kind();
            let existed = crate::resolve::incremental::exists(before, kind, &id.key);
            ((kind, id.key), existed)
        })
        .collect()
}

/// What the controller knows of each connected proxy, for logs and metrics.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    nodes: Mutex<BTreeMap<String, ProxyState>>,
    /// Subscriptions refused, by reason.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Streams the controller ended because their authentication ran out.
    reauthentications: AtomicU64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyState {
    pub connected: bool,
    pub acked_version: Option<u64>,
    pub acks: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

impl ProxyRegistry {
    fn update(&self, node: &str, f: impl FnOnce(&mut ProxyState)) {
        if let Ok(mut nodes) = self.nodes.lock() {
            f(nodes.entry(node.to_string()).or_default());
        }
    }

    fn refuse(&self, reason: &'static str) {
        if let Ok(mut refused) = self.refused.lock() {
            *refused.entry(reason).or_default() += 1;
        }
    }

    /// Streams ended so far because their token or session age ran out.
    pub fn reauthentications(&self) -> u64 {
        self.reauthentications.load(Ordering::Relaxed)
    }

    /// Subscriptions refused so far, by reason.
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn snapshot(&self) -> BTreeMap<String, ProxyState> {
        self.nodes.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Prometheus text for the controller's /metrics.
    pub fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP weft_controller_proxy_acked_version Last config version each proxy acknowledged.\n\
             # TYPE weft_controller_proxy_acked_version gauge\n",
        );
        let nodes = self.snapshot();
        for (node, s) in &nodes {
            out.push_str(&format!(
                "weft_controller_proxy_acked_version{{node=\"{node}\"}} {}\n",
                s.acked_version.unwrap_or(0)
            ));
        }
        out.push_str("# HELP weft_controller_proxy_nacks_total Config versions each proxy refused.\n# TYPE weft_controller_proxy_nacks_total counter\n");
        for (node, s) in &nodes {
            out.push_str(&format!("weft_controller_proxy_nacks_total{{node=\"{node}\"}} {}\n", s.nacks));
        }
        out.push_str("# HELP weft_controller_proxies_connected Proxies with an open config stream.\n# TYPE weft_controller_proxies_connected gauge\n");
        out.push_str(&format!(
            "weft_controller_proxies_connected {}\n",
            nodes.values().filter(|s| s.connected).count()
        ));
        out.push_str(
            "# HELP weft_controller_subscribe_refused_total Config stream subscriptions refused, by reason.\n\
             # TYPE weft_controller_subscribe_refused_total counter\n",
        );
        for (reason, count) in self.refused() {
            out.push_str(&format!(
                "weft_controller_subscribe_refused_total{{reason=\"{reason}\"}} {count}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP weft_controller_stream_reauthentications_total Config streams ended so that the proxy authenticates again (token expiry or session age).\n\
             # TYPE weft_controller_stream_reauthentications_total counter\n\
             weft_controller_stream_reauthentications_total {}\n",
            self.reauthentications()
        ));
        out
    }
}

pub struct ConfigService {
    publisher: Publisher,
    subscribers: Subscribers,
    max_session_age: Duration,
}

/// How long an authenticated config stream lives at most, whatever its token's lifetime. The
/// token is checked when a stream opens; ending the stream makes the proxy reconnect with the
/// token it holds *now* (the kubelet rotates it in place), so a token that stops being valid
/// (expired, or its pod or ServiceAccount deleted) stops being served within this bound. Thirty
/// minutes, as Istio bounds an xDS connection's age: a full resend of the config per proxy per
/// half hour is cheap next to what a stolen token could read for days.
pub const MAX_SESSION_AGE: Duration = Duration::from_secs(30 * 60);
/// The shortest session: a token that the apiserver accepted but whose `exp` looks past (clock
/// skew) must not make the proxy reconnect in a tight loop.
const MIN_SESSION_AGE: Duration = Duration::from_secs(10);

/// How long a stream opened now with a token valid until `token_expiry` may live: until the
/// token expires, at most `max_age`, at least [`MIN_SESSION_AGE`]. `spread` in [0, 1) takes up
/// to a tenth off, so proxies that connected together (a controller restart) do not all
/// reconnect in the same second next time.
pub fn session_age(
    now: SystemTime,
    token_expiry: Option<SystemTime>,
    max_age: Duration,
    spread: f64,
) -> Duration {
    let until_expiry = token_expiry.map_or(max_age, |exp| exp.duration_since(now).unwrap_or(Duration::ZERO));
    let age = until_expiry.min(max_age);
    age.mul_f64(1.0 - 0.1 * spread.clamp(0.0, 1.0)).max(MIN_SESSION_AGE.min(max_age))
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<ConfigUpdate, Status>> + Send>>;

/// Updates queued per stream: one in flight plus room for the error that ends a stream.
const STREAM_QUEUE: usize = 2;

#[tonic::async_trait]
impl ConfigDiscovery for ConfigService {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let token = crate::ca::bearer_token(request.metadata());
        let peer = request.remote_addr();
        // A token that is not a proxy's is refused before anything is read from the stream.
        if let Err((reason, status)) = self.subscribers.authenticate(token.as_deref()).await {
            return Err(self.refused(peer, None, reason, status));
        }
        let mut inbound = request.into_inner();
        let (node, in_parts) = match inbound.next().await {
            Some(Ok(ProxyMessage { message: Some(proxy_message::Message::Subscribe(s)) }))
                if !s.node.is_empty() =>
            {
                (s.node, s.chunked_full_state)
            }
            Some(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message on a config stream must be Subscribe with a node name",
                ));
            }
            Some(Err(status)) => return Err(status),
            None => return Err(Status::cancelled("the proxy closed the stream before subscribing")),
        };
        let caller = match self.subscribers.admit(token.as_deref(), &node).await {
            Ok(caller) => caller,
            Err((reason, status)) => return Err(self.refused(peer, Some(&node), reason, status)),
        };
        // Only an authenticated stream is bounded: with `--insecure-plaintext` there is nothing
        // to check again.
        let reauthenticate_at = caller.map(|caller| {
            let expiry = token.as_deref().and_then(authorize::token_expiry);
            let age = session_age(SystemTime::now(), expiry, self.max_session_age, rand::random::<f64>());
            tracing::debug!(%node, identity = %caller.identity, ?age, "subscriber authenticated");
            Instant::now() + age
        });
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let session = Session {
            node,
            in_parts,
            reauthenticate_at,
            versions: self.publisher.versions.subscribe(),
            publisher: self.publisher.clone(),
            registry: self.publisher.proxies.clone(),
            acked: None,
            in_flight: None,
            refused: None,
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl ConfigService {
    fn refused(
        &self,
        peer: Option<std::net::SocketAddr>,
        node: Option<&str>,
        reason: &'static str,
        status: Status,
    ) -> Status {
        self.publisher.proxies.refuse(reason);
        tracing::warn!(
            ?peer,
            node = node.unwrap_or("(not yet sent)"),
            reason,
            message = status.message(),
            "refused a config subscription"
        );
        status
    }
}

/// One proxy's stream.
struct Session {
    node: String,
    /// The proxy takes a full state in parts (an older one does not say so, and gets it whole).
    in_parts: bool,
    /// When the stream ends so that the proxy authenticates again (None: never).
    reauthenticate_at: Option<Instant>,
    publisher: Publisher,
    versions: watch::Receiver<u64>,
    registry: Arc<ProxyRegistry>,
    /// The version the proxy holds: the last one it ACKed.
    acked: Option<u64>,
    /// The version sent and not yet answered.
    in_flight: Option<u64>,
    /// The last version the proxy refused; not resent until something newer exists.
    refused: Option<u64>,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<ProxyMessage>,
        tx: mpsc::Sender<Result<ConfigUpdate, Status>>,
    ) {
        tracing::info!(node = %self.node, "proxy subscribed");
        self.registry.update(&self.node, |s| s.connected = true);
        self.versions.mark_changed();
        let reauthenticate_at = self.reauthenticate_at;
        let reauthenticate = async move {
            match reauthenticate_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(reauthenticate);
        loop {
            tokio::select! {
                () = &mut reauthenticate => {
                    tracing::info!(node = %self.node, "config stream reached its authentication's end; the proxy reconnects with its current token");
                    self.registry.reauthentications.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(Err(Status::unauthenticated(mesh_api::STREAM_REAUTHENTICATE))).await;
                    break;
                }
                changed = self.versions.changed(), if self.in_flight.is_none() => {
                    if changed.is_err() {
                        break; // the controller is shutting down
                    }
                    if !self.send_next(&tx).await {
                        break;
                    }
                }
                message = inbound.next() => {
                    match message {
                        Some(Ok(m)) => {
                            if let Err(status) = self.answer(m) {
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                            if self.in_flight.is_none() && self.has_newer() && !self.send_next(&tx).await {
                                break;
                            }
                        }
                        Some(Err(status)) => {
                            tracing::info!(node = %self.node, %status, "proxy stream ended with an error");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        tracing::info!(node = %self.node, "proxy disconnected");
        self.registry.update(&self.node, |s| s.connected = false);
    }

    fn has_newer(&self) -> bool {
        let latest = *self.versions.borrow();
        self.acked.is_none_or(|a| a < latest) && self.refused != Some(latest)
    }

    /// Sends what takes the proxy to the newest version. False when the stream is gone.
    async fn send_next(&mut self, tx: &mpsc::Sender<Result<ConfigUpdate, Status>>) -> bool {
        let latest = *self.versions.borrow_and_update();
        if latest == 0 || self.refused == Some(latest) {
            return true; // nothing resolved yet, or the proxy already refused exactly this
        }
        let Some(messages) = self.publisher.update_since(self.acked, self.in_parts) else { return true };
        tracing::debug!(
            node = %self.node,
            version = messages.last().map_or(latest, |m| m.version),
            full = messages.first().is_some_and(|m| m.full_state),
            parts = messages.len(),
            upserts = messages.iter().map(|m| m.upserts.len()).sum::<usize>(),
            removals = messages.iter().map(|m| m.removals.len()).sum::<usize>(),
            "sending config"
        );
        // The proxy answers once, after the last part.
        self.in_flight = messages.last().map(|m| m.version);
        for message in messages {
            if tx.send(Ok(message)).await.is_err() {
                return false;
            }
        }
        true
    }

    fn answer(&mut self, message: ProxyMessage) -> Result<(), Status> {
        let (version, nack) = match message.message {
            Some(proxy_message::Message::Ack(a)) => (a.version, None),
            Some(proxy_message::Message::Nack(n)) => (n.version, Some(n.reason)),
            Some(proxy_message::Message::Subscribe(_)) => {
                return Err(Status::invalid_argument("Subscribe may only be the first message of a stream"));
            }
            None => return Err(Status::invalid_argument("empty message")),
        };
        if self.in_flight != Some(version) {
            tracing::warn!(node = %self.node, version, "answer for a version that is not in flight; ignored");
            return Ok(());
        }
        self.in_flight = None;
        match nack {
            None => {
                self.registry.update(&self.node, |s| {
                    s.acked_version = Some(version);
                    s.acks += 1;
                });
                self.acked = Some(version);
                self.refused = None;
            }
            Some(reason) => {
                tracing::warn!(node = %self.node, version, %reason, "proxy refused config; it keeps its last good version");
                self.registry.update(&self.node, |s| {
                    s.nacks += 1;
                    s.last_nack = Some(reason.clone());
                });
                self.refused = Some(version);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mesh_api::identity::SpiffeId;

    use super::*;

    fn proxy_on(node: &str) -> Caller {
        let identity: SpiffeId = "spiffe://cluster.local/ns/weft-system/sa/weft-proxy".parse().expect("id");
        Caller { node: node.into(), identity }
    }

    fn authenticated() -> Subscribers {
        Subscribers::Authenticated(Arc::new(Authenticator::Static(HashMap::from([
            ("token-a".to_string(), proxy_on("node-a")),
            ("token-b".to_string(), proxy_on("node-b")),
        ]))))
    }

    #[tokio::test]
    async fn a_proxy_with_its_token_subscribes_as_its_node() {
        let admitted = authenticated().admit(Some("token-a"), "node-a").await.expect("admitted");
        assert_eq!(admitted, Some(proxy_on("node-a")));
    }

    #[tokio::test]
    async fn no_token_or_an_unknown_one_is_unauthenticated() {
        for token in [None, Some("guess")] {
            let (reason, status) = authenticated().admit(token, "node-a").await.expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
            assert!(["no_token", "bad_token"].contains(&reason));
        }
    }

    #[tokio::test]
    async fn another_nodes_token_is_permission_denied() {
        let (reason, status) = authenticated().admit(Some("token-b"), "node-a").await.expect_err("refused");
        assert_eq!(reason, "wrong_node");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("node-b") && status.message().contains("node-a"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn anyone_is_admitted_only_when_configured_so() {
        assert_eq!(Subscribers::Anyone.admit(None, "node-x").await.expect("insecure mode"), None);
    }

    #[test]
    fn a_session_lasts_until_its_token_expires_bounded_both_ways() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let max = MAX_SESSION_AGE;
        let in_ = |secs| Some(now + Duration::from_secs(secs));
        // A token valid for an hour: the session age bound applies.
        assert_eq!(session_age(now, in_(3600), max, 0.0), max);
        // A token expiring in 10 minutes ends the stream then.
        assert_eq!(session_age(now, in_(600), max, 0.0), Duration::from_secs(600));
        // No expiry (a static token): the bound.
        assert_eq!(session_age(now, None, max, 0.0), max);
        // Spread takes up to a tenth off, never more.
        assert_eq!(session_age(now, None, max, 0.5), max.mul_f64(0.95));
        assert_eq!(session_age(now, None, max, 7.0), max.mul_f64(0.9));
        // A token the apiserver accepted but whose exp looks past (clock skew), or one about to
        // expire: no reconnect loop faster than the floor.
        assert_eq!(session_age(now, Some(now - Duration::from_secs(5)), max, 0.0), MIN_SESSION_AGE);
        assert_eq!(session_age(now, in_(2), max, 0.0), MIN_SESSION_AGE);
        // A bound below the floor (tests) wins.
        assert_eq!(session_age(now, None, Duration::from_secs(1), 0.0), Duration::from_secs(1));
    }

    #[test]
    fn refusals_are_counted_in_metrics() {
        let registry = ProxyRegistry::default();
        registry.refuse("no_token");
        registry.refuse("no_token");
        assert!(
            registry.metrics().contains("weft_controller_subscribe_refused_total{reason=\"no_token\"} 2")
        );
    }
}
