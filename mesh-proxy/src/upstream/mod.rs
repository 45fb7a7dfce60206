//! Connections to backends: a pool of HTTP/1.1 keep-alive connections ([`pool`]) and a pooled
//! client for HTTP/2 with prior knowledge (h2c), both keyed by endpoint address so each
//! endpoint has its own pool, over connections a [`Dial`] makes.

pub mod dial;
pub mod pool;

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Parts, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_api::model::AppProtocol;

use crate::metrics::UpstreamFailure;
use crate::proxy::ProxyBody;
use dial::{Connector, Dial};

/// Idle h2c connections are closed after this, as HTTP/1.1 ones ([`pool::IDLE_TIMEOUT`]).
const POOL_IDLE_TIMEOUT: Duration = pool::IDLE_TIMEOUT;
/// Idle h2c connections kept per endpoint: one carries any number of concurrent streams, so
/// a few are plenty.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

#[derive(Clone)]
pub struct Upstream {
    http1: Arc<pool::Http1Pool>,
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
        let http1 = Arc::new(pool::Http1Pool::new(dial.clone(), pool::Limits::default()));
        let connector = Connector(dial);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            // Requests are only retried when no byte was written (a pooled connection the
            // backend had just closed), which is safe for any method.
            .retry_canceled_requests(true);
        let h2c = builder.http2_only(true).build(connector);
        Upstream { http1, h2c }
    }

    /// Sends `req`, whose URI already names the endpoint (`http://ip:port/path`), with the
    /// protocol the backend speaks.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        protocol: AppProtocol,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let endpoint = req.uri().authority().and_then(|a| a.as_str().parse().ok());
        let Some(endpoint) = endpoint else {
            return Err(UpstreamError {
                kind: UpstreamFailure::Connect,
                message: format!("{} names no endpoint", req.uri()),
            });
        };
        self.send_to(endpoint, req, protocol).await
    }

    /// Sends `req` (its URI the path and query, or absolute) to `endpoint`, with the protocol
    /// the backend speaks.
    pub async fn send_to(
        &self,
        endpoint: SocketAddr,
        mut req: Request<ProxyBody>,
        protocol: AppProtocol,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if protocol != AppProtocol::H2c {
            *req.version_mut() = Version::HTTP_11;
            return self.http1.send(endpoint, req).await;
        }
        *req.version_mut() = Version::HTTP_2;
        // hyper-util's client pools by the URI's authority and takes `:authority` from it.
        if req.uri().authority().is_none() {
            let mut parts = Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.path_and_query = req.uri().path_and_query().cloned();
            parts.authority = endpoint.to_string().parse().ok();
            match Uri::from_parts(parts) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(error) => {
                    return Err(UpstreamError {
                        kind: UpstreamFailure::Connect,
                        message: format!("no URI for {endpoint}: {error}"),
                    });
                }
            }
        }
        self.h2c.request(req).await.map_err(|error| {
            let kind = if error.is_connect() { UpstreamFailure::Connect } else { UpstreamFailure::Reset };
            let message = match error.source() {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            };
            UpstreamError { kind, message }
        })
    }

    /// HTTP/1.1 connections pooled for `endpoint`, busy or idle.
    pub fn pooled_http1(&self, endpoint: SocketAddr) -> usize {
        self.http1.pooled(endpoint)
    }
}
