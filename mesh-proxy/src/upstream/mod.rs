//! Connections to backends: a pool of HTTP/1.1 keep-alive connections ([`pool`]) and one of
//! HTTP/2 connections with prior knowledge ([`h2c`]), both keyed by endpoint address so each
//! endpoint has its own pool, over connections a [`Dial`] makes.

pub mod dial;
pub mod h2c;
pub mod pool;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use mesh_api::model::AppProtocol;

use crate::metrics::UpstreamFailure;
use crate::proxy::ProxyBody;
use dial::Dial;

#[derive(Clone)]
pub struct Upstream {
    http1: Arc<pool::Http1Pool>,
    h2c: Arc<h2c::H2cPool>,
}

/// A backend's response body, as the protocol it spoke delivers it.
pub enum UpstreamBody {
    Http1(Incoming),
    H2c(h2c::H2Body),
}

/// Why a backend's body failed (hyper's or h2's error).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H2c(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::H2c(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::H2c(body) => body.size_hint(),
        }
    }
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
        // Idle h2c connections close after the same time as HTTP/1.1 ones.
        let h2c = Arc::new(h2c::H2cPool::new(dial, pool::IDLE_TIMEOUT));
        Upstream { http1, h2c }
    }

    /// Sends `req`, whose URI already names the endpoint (`http://ip:port/path`), with the
    /// protocol the backend speaks.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        protocol: AppProtocol,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
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
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if protocol != AppProtocol::H2c {
            *req.version_mut() = Version::HTTP_11;
            return Ok(self.http1.send(endpoint, req).await?.map(UpstreamBody::Http1));
        }
        *req.version_mut() = Version::HTTP_2;
        Ok(self.h2c.send(endpoint, req).await?.map(UpstreamBody::H2c))
    }

    /// HTTP/1.1 connections pooled for `endpoint`, busy or idle.
    pub fn pooled_http1(&self, endpoint: SocketAddr) -> usize {
        self.http1.pooled(endpoint)
    }
}
