//! How upstream connections are made. A gateway listener dials endpoints from the proxy's own
//! network namespace; a meshed pod's requests are dialled on that pod's behalf (through an
//! HBONE tunnel to a meshed endpoint, or from inside the pod's netns to an unmeshed one). The
//! HTTP clients and their pools are the same either way; only the [`Dial`] differs.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
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
