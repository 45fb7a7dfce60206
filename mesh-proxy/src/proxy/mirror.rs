//! RequestMirror: a copy of the request goes to another backend and its answer is dropped.
//!
//! The main request never waits for a mirror. Its body streams to the chosen backend as usual
//! while a tee keeps a copy; only once the last byte has gone through is the copy sent, from a
//! task of its own. What mirrors may cost is bounded: a body over [`MAX_BODY`] is not mirrored
//! at all, and at most [`MAX_IN_FLIGHT`] copies exist at once (waiting for their body or being
//! sent). Beyond either limit the copy is skipped and counted, never queued.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::ProxyBody;
use crate::balance::EndpointSet;
use crate::metrics::{Metrics, MirrorOutcome};
use crate::upstream::Upstream;

/// Largest request body copied to a mirror. Mirrors are for shadowing API traffic, whose bodies
/// are mostly small JSON or protobuf; 64 KiB covers those while keeping the worst case, every
/// copy in flight holding a full buffer, at `MAX_BODY × MAX_IN_FLIGHT` = 16 MiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Most mirror copies in flight at once. A mirror backend that slows down must not make the
/// proxy hoard tasks, sockets and buffers; 256 is far above what a healthy mirror at loopback
/// latency needs for thousands of requests per second.
pub const MAX_IN_FLIGHT: usize = 256;
/// A mirror copy that gets no complete answer within this is abandoned, so a stuck mirror
/// backend gives its slot back. Generous: mirrors are often slower test deployments.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends mirror copies; one per proxy.
pub struct Mirrors {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// The parts of the upstream request a copy repeats.
pub struct Head {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
}

/// One copy to send once the body is known.
struct Copy {
    target: Arc<EndpointSet>,
    _permit: OwnedSemaphorePermit,
}

impl Mirrors {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Mirrors { permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)), metrics }
    }

    /// Starts a copy of the request to each target (`None`: a mirror backend that did not
    /// resolve), sent with `upstream`, and returns the body to send to the main backend: `body`
    /// itself, or a tee of it when a copy needs its bytes.
    pub fn start(
        &self,
        targets: Vec<Option<Arc<EndpointSet>>>,
        head: Head,
        body: ProxyBody,
        upstream: Upstream,
    ) -> ProxyBody {
        let mut copies = Vec::with_capacity(targets.len());
        for target in targets {
            let Some(target) = target else {
                self.metrics.record_mirror(MirrorOutcome::NoBackend);
                continue;
            };
            // A body already known to be too big is not worth a slot.
            if body.size_hint().lower() > MAX_BODY as u64 {
                self.metrics.record_mirror(MirrorOutcome::BodyTooLarge);
                continue;
            }
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => copies.push(Copy { target, _permit: permit }),
                Err(_) => self.metrics.record_mirror(MirrorOutcome::Overloaded),
            }
        }
        if copies.is_empty() {
            return body;
        }
        let (done, copied) = oneshot::channel::<Bytes>();
        let metrics = self.metrics.clone();
        let count = copies.len();
        tokio::spawn(async move {
            // The tee counted why there is no body (too large, aborted).
            let Ok(bytes) = copied.await else { return };
            let sends = copies.into_iter().map(|copy| send(&upstream, &metrics, copy, &head, bytes.clone()));
            futures::future::join_all(sends).await;
        });
        if body.is_end_stream() {
            let _ = done.send(Bytes::new());
            return body;
        }
        Tee {
            inner: body,
            copy: BytesMut::new(),
            done: Some(done),
            copies: count,
            metrics: self.metrics.clone(),
        }
        .boxed()
    }
}

async fn send(upstream: &Upstream, metrics: &Metrics, copy: Copy, head: &Head, body: Bytes) {
    let Some(endpoint) = copy.target.pick() else {
        metrics.record_mirror(MirrorOutcome::NoBackend);
        return;
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(endpoint.addr.to_string())
        .path_and_query(head.path_and_query.clone())
        .build();
    let Ok(uri) = uri else {
        metrics.record_mirror(MirrorOutcome::Failed);
        return;
    };
    let mut req = Request::new(Full::new(body).map_err(|n| match n {}).boxed());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = head.headers.clone();
    let exchange = async {
        let response = upstream.send(req, copy.target.app_protocol).await.ok()?;
        // Read the answer to its end so the connection goes back to the pool.
        response.into_body().collect().await.ok()
    };
    let outcome = match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Some(_)) => MirrorOutcome::Sent,
        Ok(None) | Err(_) => MirrorOutcome::Failed,
    };
    metrics.record_mirror(outcome);
    drop(endpoint);
}

/// The main request's body on its way to the main backend, copied (up to [`MAX_BODY`]) for
/// the mirrors; the copy is released when the body ends.
struct Tee {
    inner: ProxyBody,
    copy: BytesMut,
    /// `None` once the copy was released or given up.
    done: Option<oneshot::Sender<Bytes>>,
    /// Copies waiting for this body, for counting.
    copies: usize,
    metrics: Arc<Metrics>,
}

impl Tee {
    fn give_up(&mut self, outcome: MirrorOutcome) {
        if self.done.take().is_some() {
            for _ in 0..self.copies {
                self.metrics.record_mirror(outcome);
            }
        }
        self.copy = BytesMut::new();
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(std::mem::take(&mut self.copy).freeze());
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && self.done.is_some()
                {
                    if self.copy.len() + data.len() > MAX_BODY {
                        self.give_up(MirrorOutcome::BodyTooLarge);
                    } else {
                        self.copy.extend_from_slice(data);
                    }
                }
                // hyper stops polling a body that says it has ended, so the end may never be
                // seen as `None`.
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.give_up(MirrorOutcome::Aborted),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish();
        } else {
            self.give_up(MirrorOutcome::Aborted);
        }
    }
}
