//! HBONE: TCP streams between proxies as HTTP/2 CONNECT requests inside mutual TLS, the
//! tunnel protocol of Istio ambient, so one TLS connection carries many streams.
//!
//! - [`tls`]: TLS 1.3 configs that check peers by SPIFFE identity.
//! - [`client`]: the source side, pooling connections per (source pod, destination, identity).
//! - [`server`]: the destination side on a pod's :15008, which delivers each stream to the pod.
//! - [`stream`]: one CONNECT stream as a byte stream, for the copy loop.
//!
//! HTTP/2 is the `h2` crate's, used directly (as ztunnel does): each pooled connection has one
//! task that reads and writes its TLS socket, and each stream one task that copies between it
//! and the pod's (or the client's) socket. hyper's CONNECT upgrade added a task and a channel
//! per stream, so every request crossed three tasks on each side; those wake-ups, not the
//! bytes, were most of a small request's cost.
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
//!
//! Throughput of one tunnel is set by how many bytes each step carries (a read, a DATA frame,
//! a syscall); every step has a fixed cost, and a 16 KiB step made a tunnel a quarter as fast
//! as the link under it:
//! - each side accepts DATA frames of up to [`MAX_FRAME_SIZE`], so one large write of the copy
//!   loop ([`crate::proxy::copy`]) is one frame rather than sixteen;
//! - TLS reads its socket through a [`SOCKET_READ_BUFFER`]: rustls asks for 4 KiB at a time;
//! - TLS may hold [`TLS_SEND_BUFFER`] sealed, so a whole frame leaves in one `writev`;
//! - the copy between a stream and its plain socket ([`stream::splice`]) hands the bytes read
//!   to h2 as they are, and writes received frames as they are, with no buffer in between.

pub mod client;
pub mod server;
pub mod stream;
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
/// Largest HTTP/2 frame each side accepts (SETTINGS_MAX_FRAME_SIZE, 16 KiB by default). The
/// copy loop writes up to [`crate::proxy::copy::JUMBO_BUFFER`] at once: with 16 KiB frames h2
/// cut that into sixteen frames, each a 16 KiB + 9-byte write that TLS sealed as two records (a
/// full one and one of 9 bytes) and sent with a syscall of its own. 256 KiB takes a whole write
/// as one frame, which TLS seals as sixteen full records sent together. Not larger: a receiver
/// holds a whole frame before it delivers any of it.
pub const MAX_FRAME_SIZE: u32 = 256 * 1024;
/// How much a TLS connection between proxies reads from its socket at once. rustls reads at
/// most 4 KiB per call, so a full 16 KiB record took four or five read syscalls; reading through
/// a buffer, one syscall takes what the kernel holds, up to four full records. 64 KiB is one
/// TSO/GRO segment (what one wake-up usually finds queued in bulk), and the buffer is per
/// pooled connection, not per stream.
pub const SOCKET_READ_BUFFER: usize = 64 * 1024;
/// How much sealed TLS a connection between proxies may hold unsent. rustls holds 64 KiB by
/// default, so a 256 KiB DATA frame went out in four `writev`s, each waiting for the one before;
/// with room for two frames, one frame is sealed whole and sent in one syscall (the kernel takes
/// what its socket buffer has room for, the rest waits here). Per pooled connection, and only
/// filled while the socket is slower than the streams.
pub const TLS_SEND_BUFFER: usize = 2 * MAX_FRAME_SIZE as usize;

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
