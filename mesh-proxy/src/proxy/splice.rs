//! L4 forwarding: a connection taken by a TCPRoute or TLSRoute goes to a backend chosen by
//! weight, an endpoint chosen by the balancer, and bytes are copied both ways until either side
//! closes. Nothing is parsed; a TLS client's handshake crosses untouched (passthrough), or the
//! plaintext does when the listener terminated TLS.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{L4Outcome, Metrics};
use crate::route::BackendTarget;
use crate::route::l4::Target;
use crate::upstream::dial::Dial;

/// A backend that does not accept within this is treated as down: the client's connection is
/// closed and the failure counted towards the endpoint's ejection. The same bound as HTTP
/// upstream connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `dial` makes the connection to the endpoint: from the proxy's namespace, or over HBONE to a
/// meshed pod once the mesh is on.
pub async fn forward(
    mut client: impl AsyncRead + AsyncWrite + Unpin,
    target: &Target,
    dial: &dyn Dial,
    metrics: &Metrics,
) {
    let listener = &*target.listener;
    let Some(backend) = target.rule.pick_backend() else {
        metrics.record_l4(listener, "-", L4Outcome::NoBackend);
        return;
    };
    // An invalid backendRef's share of connections is refused, as the spec asks.
    let BackendTarget::Service(endpoints) = &backend.target else {
        metrics.record_l4(listener, &backend.label, L4Outcome::NoBackend);
        return;
    };
    let Some(endpoint) = endpoints.pick() else {
        metrics.record_l4(listener, &backend.label, L4Outcome::NoBackend);
        return;
    };
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, dial.dial(endpoint.addr)).await;
    let mut server = match connected {
        Ok(Ok(server)) => server,
        Ok(Err(_)) | Err(_) => {
            if endpoints.connect_failed(&endpoint).is_some() {
                metrics.endpoint_ejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(endpoint = %endpoint.addr, backend = %backend.label, "endpoint ejected after consecutive connect failures");
            }
            metrics.record_l4(listener, &backend.label, L4Outcome::ConnectFailed);
            return;
        }
    };
    // At L4 the connect time is the latency there is to measure.
    endpoints.answered(&endpoint);
    metrics.record_l4(listener, &backend.label, L4Outcome::Forwarded);
    match super::copy::bidirectional(&mut client, &mut server).await {
        Ok((up, down)) => tracing::debug!(%listener, up, down, "L4 connection closed"),
        Err(error) => tracing::debug!(%listener, %error, "L4 connection ended with an error"),
    }
    // The endpoint counts as busy for as long as the connection lasts.
    drop(endpoint);
}
