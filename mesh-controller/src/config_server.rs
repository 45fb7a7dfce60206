//! The config stream: every node proxy subscribes and receives the full state once, then
//! deltas, each of which it ACKs or NACKs.
//!
//! Each proxy has at most one update in flight. The next delta is computed against the last
//! version that proxy *acknowledged*, so a NACKed update never leaves the controller and the
//! proxy disagreeing about what the proxy holds. While an update is in flight newer snapshots
//! coalesce: a proxy that is slow to ACK gets one delta to the newest state, not a backlog.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use mesh_api::model::Config;
use mesh_api::proto::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use mesh_api::proto::{ConfigUpdate, ProxyMessage, proxy_message};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// One version of the resolved config.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
}

/// Publishes snapshots to every subscribed proxy.
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<Snapshot>>,
    pub proxies: Arc<ProxyRegistry>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Snapshot::default());
        Publisher { tx: Arc::new(tx), proxies: Arc::new(ProxyRegistry::default()) }
    }

    /// Publishes `config` as the next version if it differs from the current one; returns the
    /// version now current.
    pub fn publish(&self, config: Config) -> u64 {
        let mut version = 0;
        self.tx.send_if_modified(|current| {
            if *current.config == config && current.version != 0 {
                version = current.version;
                return false;
            }
            current.version += 1;
            current.config = Arc::new(config);
            version = current.version;
            true
        });
        version
    }

    pub fn current(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    pub fn service(&self) -> ConfigDiscoveryServer<ConfigService> {
        ConfigDiscoveryServer::new(ConfigService { publisher: self.clone() })
            // A full state of 10k Services with 100k endpoints is tens of MB of JSON.
            .max_encoding_message_size(256 * 1024 * 1024)
    }
}

/// What the controller knows of each connected proxy, for logs and metrics.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    nodes: Mutex<BTreeMap<String, ProxyState>>,
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
        out
    }
}

pub struct ConfigService {
    publisher: Publisher,
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
        let mut inbound = request.into_inner();
        let node = match inbound.next().await {
            Some(Ok(ProxyMessage { message: Some(proxy_message::Message::Subscribe(s)) }))
                if !s.node.is_empty() =>
            {
                s.node
            }
            Some(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message on a config stream must be Subscribe with a node name",
                ));
            }
            Some(Err(status)) => return Err(status),
            None => return Err(Status::cancelled("the proxy closed the stream before subscribing")),
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let session = Session {
            node,
            snapshots: self.publisher.tx.subscribe(),
            registry: self.publisher.proxies.clone(),
            acked: None,
            in_flight: None,
            refused: None,
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One proxy's stream.
struct Session {
    node: String,
    snapshots: watch::Receiver<Snapshot>,
    registry: Arc<ProxyRegistry>,
    /// What the proxy holds: the last snapshot it ACKed.
    acked: Option<Snapshot>,
    /// The update sent and not yet answered.
    in_flight: Option<Snapshot>,
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
        self.snapshots.mark_changed();
        loop {
            tokio::select! {
                changed = self.snapshots.changed(), if self.in_flight.is_none() => {
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
        let latest = self.snapshots.borrow().version;
        self.acked.as_ref().is_none_or(|a| a.version < latest) && self.refused != Some(latest)
    }

    /// Sends the newest snapshot (as a delta from what the proxy holds). False when the stream
    /// is gone.
    async fn send_next(&mut self, tx: &mpsc::Sender<Result<ConfigUpdate, Status>>) -> bool {
        let latest = self.snapshots.borrow_and_update().clone();
        if latest.version == 0 || self.refused == Some(latest.version) {
            return true; // nothing resolved yet, or the proxy already refused exactly this
        }
        let update = match &self.acked {
            None => latest.config.to_full_update(latest.version),
            Some(acked) if acked.version == latest.version => return true,
            Some(acked) => acked.config.diff(&latest.config, latest.version),
        };
        tracing::debug!(
            node = %self.node,
            version = latest.version,
            full = update.full_state,
            upserts = update.upserts.len(),
            removals = update.removals.len(),
            "sending config"
        );
        self.in_flight = Some(latest);
        tx.send(Ok(update)).await.is_ok()
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
        let Some(in_flight) = self.in_flight.take_if(|s| s.version == version) else {
            tracing::warn!(node = %self.node, version, "answer for a version that is not in flight; ignored");
            return Ok(());
        };
        match nack {
            None => {
                self.registry.update(&self.node, |s| {
                    s.acked_version = Some(version);
                    s.acks += 1;
                });
                self.acked = Some(in_flight);
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
