//! HBONE: TCP streams between proxies as HTTP/2 CONNECT requests inside mutual TLS, the
//! tunnel protocol of Istio ambient, so one TLS connection carries many streams.
//!
//! - [`tls`]: TLS 1.3 configs that check peers by SPIFFE identity.
//! - [`client`]: the source side, pooling connections per (source pod, destination, identity).
//! - [`server`]: the destination side on a pod's :15008, which delivers each stream to the pod.
//!
//! Flow control is sized so that no stream can stall another (no head-of-line blocking across
//! streams) while memory stays bounded:
//! - each stream may have [`STREAM_WINDOW`] bytes in flight: 1 MiB is the bandwidth-delay
//!   product of 10 Gbit/s at 0.8 ms, well above what a node-to-node hop inside a cluster needs;
//! - the connection window is [`MAX_STREAMS_PER_CONNECTION`] × [`STREAM_WINDOW`]: even with
//!   every stream's reader stalled and its window full, the connection still has room for the
//!   others, so a slow reader only ever blocks itself;
//! - a connection carries at most [`MAX_STREAMS_PER_CONNECTION`] streams (100, the floor RFC 9113
//!   recommends for SETTINGS_MAX_CONCURRENT_STREAMS): that caps a stalled connection's buffers
//!   at 100 MiB and the streams one lost connection takes down with it; the pool opens another
//!   connection beyond that.

pub mod client;
pub mod server;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::net::TcpStream;

/// HBONE's port on every meshed pod.
pub const PORT: u16 = 15008;
pub const STREAM_WINDOW: u32 = 1024 * 1024;
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
pub const CONNECTION_WINDOW: u32 = STREAM_WINDOW * MAX_STREAMS_PER_CONNECTION;

/// Opens a TCP connection from the right place: inside a pod's network namespace, with the
/// proxy's mark, in the mesh; anywhere in tests.
pub type Connector = Arc<dyn Fn(SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> + Send + Sync>;

/// A connector that dials from the proxy's own network namespace.
pub fn direct_connector() -> Connector {
    Arc::new(|addr| {
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    })
}
