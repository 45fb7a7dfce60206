//! Connections to backends: one pooled client for HTTP/1.1 keep-alive and one for HTTP/2 with
//! prior knowledge (h2c), both keyed by endpoint address so each endpoint has its own pool,
//! over connections a [`Dial`] makes.

pub mod dial;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_api::model::AppProtocol;

use crate::metrics::UpstreamFailure;
use crate::proxy::ProxyBody;
use dial::{Connector, Dial};

/// Idle keep-alive connections are closed after this: long enough to reuse across bursts,
/// short enough not to hold sockets to endpoints that went away.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

#[derive(Clone)]
pub struct Upstream {
    http1: Client<Connector, ProxyBody>,
    h2c: Client<Connector, ProxyBody>,
}

#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct UpstreamError {
    pub kind: UpstreamFailure,
    pub message: String,
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new(Arc::new(dial::Direct))
    }
}

impl Upstream {
    /// Clients whose connections `dial` makes.
    pub fn new(dial: Arc<dyn Dial>) -> Self {
        let connector = Connector(dial);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            // Requests are only retried when no byte was written (a pooled connection the
            // backend had just closed), which is safe for any method.
            .retry_canceled_requests(true);
        let http1 = builder.build(connector.clone());
        let h2c = builder.clone().http2_only(true).build(connector);
        Upstream { http1, h2c }
    }

    /// Sends `req`, whose URI already names the endpoint, with the protocol the backend speaks.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
        protocol: AppProtocol,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let client = if protocol == AppProtocol::H2c {
            *req.version_mut() = Version::HTTP_2;
            &self.h2c
        } else {
            *req.version_mut() = Version::HTTP_11;
            &self.http1
        };
        client.request(req).await.map_err(|error| {
            let kind = if error.is_connect() { UpstreamFailure::Connect } else { UpstreamFailure::Reset };
            let message = match error.source() {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            };
            UpstreamError { kind, message }
        })
    }
}
