//! How upstream connections are made. A gateway listener dials endpoints from the proxy's own
//! network namespace; a meshed pod's requests are dialled on that pod's behalf (through an
//! HBONE tunnel to a meshed endpoint, or from inside the pod's netns to an unmeshed one). The
//! HTTP clients and their pools are the same either way; only the [`Dial`] differs.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A backend that does not accept a connection within this is treated as down (503) rather
/// than left to the request timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A byte stream to an endpoint: a TCP socket or a tunnel.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens connections to endpoints.
pub trait Dial: Send + Sync + 'static {
    fn dial(&self, endpoint: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Io>>>;
}

/// From the proxy's own network namespace, with Nagle off (requests are small and latency
/// is what a proxy adds).
pub struct Direct;

impl Dial for Direct {
    fn dial(&self, endpoint: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Io>>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(endpoint).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }
}

/// The hyper-util connector over a [`Dial`]: the endpoint comes from the request URI, which
/// always names it as `ip:port`.
#[derive(Clone)]
pub struct Connector(pub Arc<dyn Dial>);

impl tower::Service<Uri> for Connector {
    type Response = Dialed;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dial = self.0.clone();
        Box::pin(async move {
            let endpoint: SocketAddr =
                uri.authority().and_then(|a| a.as_str().parse().ok()).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} names no endpoint"))
                })?;
            let io = tokio::time::timeout(CONNECT_TIMEOUT, dial.dial(endpoint)).await.map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("connect to {endpoint} timed out"))
            })??;
            Ok(Dialed(TokioIo::new(io)))
        })
    }
}

/// A dialled connection as hyper's client sees it.
pub struct Dialed(TokioIo<Box<dyn Io>>);

impl Connection for Dialed {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Dialed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Dialed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
