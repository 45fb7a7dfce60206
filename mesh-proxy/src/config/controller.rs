//! `--controller URL --node NAME`: the config stream from weft-controller, over TLS verified
//! against the controller's CA (see [`connection`](super::connection)), authenticated with the
//! proxy's token (the controller serves a node's config only to that node's proxy).
//!
//! Each update is applied to the last good config as a whole (in place: a delta costs its own
//! size); it is ACKed once it is serving,
//! or NACKed with the reason while the last good config keeps serving. When the stream breaks,
//! the proxy reconnects with capped exponential backoff and serves what it has meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_api::delta::{FullStateParts, Part};
use mesh_api::proto::config_discovery_client::ConfigDiscoveryClient;
use mesh_api::proto::{Ack, ConfigUpdate, Nack, ProxyMessage, Subscribe, proxy_message};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::ConfigStore;
use super::connection::{ControllerEndpoint, bearer};

/// First wait after a failure: short, so a controller restart costs little.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait: a few proxies per node times thousands of nodes must not hammer a controller
/// that is coming back, yet a proxy should not wait long once it is up.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A controller that does not answer a connect within this is treated as away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Outgoing ACK/NACKs queued while the stream is busy; one per update, so a few suffice.
const OUTGOING_QUEUE: usize = 16;

pub struct Subscription {
    pub endpoint: ControllerEndpoint,
    pub node: String,
    /// The proxy's token (a projected ServiceAccount token in a cluster, a static node token
    /// standalone), re-read at each connection; `None` sends none (only an insecure
    /// controller accepts that).
    pub token_file: Option<PathBuf>,
}

/// Follows the controller until the task is dropped.
pub async fn follow(sub: Subscription, store: Arc<ConfigStore>) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        match session(&sub, &store).await {
            Ok(SessionEnd::Reauthenticate) => {
                // Routine: the controller bounds a stream by its token's lifetime.
                tracing::info!(url = %sub.endpoint.url(), "the controller asked for a fresh token; reconnecting");
                backoff = INITIAL_BACKOFF;
            }
            Ok(SessionEnd::Closed { received }) => {
                tracing::warn!(url = %sub.endpoint.url(), "config stream ended; reconnecting");
                if received {
                    backoff = INITIAL_BACKOFF;
                }
            }
            Err(SessionError { received, error }) => {
                tracing::warn!(url = %sub.endpoint.url(), %error, "config stream failed; serving the last good config");
                if received {
                    backoff = INITIAL_BACKOFF;
                }
            }
        }
        // Jitter spreads the reconnects of many proxies that lost the controller together.
        let jitter = rand::rng().random_range(0.5..1.0);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum SessionEnd {
    /// The controller closed the stream.
    Closed {
        /// Whether any update arrived first.
        received: bool,
    },
    /// The controller ended the stream because its token or session age ran out
    /// ([`mesh_api::STREAM_REAUTHENTICATE`]); the next connection sends the current token.
    Reauthenticate,
}

struct SessionError {
    /// The session got at least one update before failing: the controller was healthy.
    received: bool,
    error: anyhow::Error,
}

/// One connection: subscribe, then apply updates until the stream ends.
async fn session(sub: &Subscription, store: &ConfigStore) -> Result<SessionEnd, SessionError> {
    let mut received = false;
    let fail = |received, error: anyhow::Error| SessionError { received, error };
    let channel = sub.endpoint.connect(CONNECT_TIMEOUT).await.map_err(|e| fail(false, e))?;
    let mut client =
        ConfigDiscoveryClient::new(channel).max_decoding_message_size(mesh_api::MAX_CONFIG_MESSAGE_BYTES);

    let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
    let subscribe = proxy_message::Message::Subscribe(Subscribe {
        node: sub.node.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
        // A large full state in parts: neither its message nor the receive buffer holding it
        // is ever the whole state's size.
        chunked_full_state: true,
    });
    tx.send(ProxyMessage { message: Some(subscribe) }).await.map_err(|e| fail(false, e.into()))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token_file) = &sub.token_file {
        request.metadata_mut().insert("authorization", bearer(token_file).map_err(|e| fail(false, e))?);
    }
    let mut updates = client.stream(request).await.map_err(|e| fail(false, refused(e)))?.into_inner();
    tracing::info!(url = %sub.endpoint.url(), node = %sub.node, "subscribed to the controller");

    // A full state's parts gathered so far; a broken stream drops them with the session.
    let mut parts = FullStateParts::default();
    loop {
        let update = match updates.message().await {
            Ok(Some(update)) => update,
            Ok(None) => return Ok(SessionEnd::Closed { received }),
            Err(status)
                if status.code() == tonic::Code::Unauthenticated
                    && status.message() == mesh_api::STREAM_REAUTHENTICATE =>
            {
                return Ok(SessionEnd::Reauthenticate);
            }
            Err(status) => return Err(fail(received, status.into())),
        };
        received = true;
        let Some(reply) = take(&update, &mut parts, store) else { continue };
        if tx.send(ProxyMessage { message: Some(reply) }).await.is_err() {
            return Err(fail(received, anyhow::anyhow!("the controller closed its side of the stream")));
        }
    }
}

/// A refusal by the controller, said plainly: a token or node problem is not a network one.
fn refused(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => anyhow::anyhow!(
            "the controller refused this proxy ({:?}): {} (check the token file and --node)",
            status.code(),
            status.message()
        ),
        _ => status.into(),
    }
}

/// Takes one message of the stream: a part of a full state is gathered (no answer until the
/// last part); a whole update, or the last part, is installed and answered.
fn take(
    update: &ConfigUpdate,
    parts: &mut FullStateParts,
    store: &ConfigStore,
) -> Option<proxy_message::Message> {
    let started = std::time::Instant::now();
    let outcome = match parts.take(update) {
        Ok(Part::Whole) => store.apply(update),
        Ok(Part::Pending) => return None,
        Ok(Part::Complete { version, config }) => {
            store.install(version, config);
            Ok(())
        }
        Err(error) => Err(error),
    };
    Some(answer(update, outcome, started, store))
}

/// The answer to `update`: an ACK, or a NACK with why it was not installed.
fn answer(
    update: &ConfigUpdate,
    outcome: Result<(), mesh_api::delta::DeltaError>,
    started: std::time::Instant,
    store: &ConfigStore,
) -> proxy_message::Message {
    match outcome {
        Ok(()) => {
            tracing::debug!(
                version = update.version,
                full = update.full_state,
                upserts = update.upserts.len(),
                removals = update.removals.len(),
                elapsed = ?started.elapsed(),
                "config update applied"
            );
            proxy_message::Message::Ack(Ack { version: update.version })
        }
        Err(error) => {
            store.metrics().config_nacks.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                version = update.version,
                serving = store.load().version,
                %error,
                "config update refused; keeping the last good config"
            );
            proxy_message::Message::Nack(Nack { version: update.version, reason: error.to_string() })
        }
    }
}
