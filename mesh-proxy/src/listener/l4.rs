//! Connections on TCP and TLS listeners: which route takes them, decided before any byte is
//! consumed. A TCP listener's route takes every connection; a TLS listener peeks the
//! ClientHello for its SNI ([`super::sni`]), then passes the TLS through or terminates it. What is left (a name no passthrough route
//! serves, on a port that also terminates HTTPS) goes back to the HTTP(S) server.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::sni::{self, Hello};
use crate::config::ConfigStore;
use crate::metrics::L4Outcome;
use crate::proxy::splice;
use crate::upstream::dial::Dial;
use std::net::SocketAddr;

/// A client must send its whole ClientHello within this: the same bound as a TLS handshake on
/// a terminating listener (slowloris).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between peeks while a ClientHello is incomplete. Peeking does not consume, so the socket
/// stays readable and a new peek would return the same bytes at once: without a pause the task
/// would spin. Hellos split across segments are rare and the pause is far below a round trip
/// over anything but loopback.
const PEEK_RETRY: Duration = Duration::from_millis(5);

/// Serves `stream` at L4 when its address is a TCP or passthrough listener; returns it untouched
/// when it is the HTTP(S) server's.
pub async fn serve(
    stream: TcpStream,
    bind: SocketAddr,
    store: &Arc<ConfigStore>,
    dial: &dyn Dial,
) -> Option<TcpStream> {
    let snapshot = store.load();
    let Some(routes) = snapshot.routes.l4(&bind) else { return Some(stream) };
    let https = snapshot.routes.tls(&bind).is_some();
    let metrics = store.metrics();
    let sni = if routes.is_tls() {
        match tokio::time::timeout(HELLO_TIMEOUT, peek_hello(&stream)).await {
            Ok(Hello::Parsed(name)) => name,
            // Not TLS, or a client gone or too slow to say hello: rustls judges it when the port
            // also terminates HTTPS; otherwise only this connection closes.
            outcome => {
                if https {
                    return Some(stream);
                }
                if matches!(outcome, Ok(Hello::Invalid)) {
                    metrics.record_l4(&bind.to_string(), "-", L4Outcome::InvalidHello);
                }
                return None;
            }
        }
    } else {
        None
    };
    let Some(target) = routes.select(sni.as_deref()) else {
        if https {
            return Some(stream);
        }
        tracing::debug!(%bind, ?sni, "no TLS route for this server name");
        metrics.record_l4(&bind.to_string(), "-", L4Outcome::NoRoute);
        return None;
    };
    match &target.terminate {
        None => splice::forward(stream, target, dial, metrics).await,
        Some(server) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
            match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => splice::forward(tls, target, dial, metrics).await,
                Ok(Err(error)) => tracing::debug!(%bind, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%bind, "TLS handshake timed out"),
            }
        }
    }
    None
}

/// Peeks until the socket's first bytes hold a whole ClientHello (or cannot be one).
async fn peek_hello(stream: &TcpStream) -> Hello {
    let mut buf = vec![0u8; sni::MAX_HELLO];
    let mut seen = 0;
    loop {
        let n = match stream.peek(&mut buf).await {
            // Gone before a whole hello: nothing to judge.
            Ok(0) | Err(_) => return Hello::Incomplete,
            Ok(n) => n,
        };
        match sni::client_hello(&buf[..n]) {
            Hello::Incomplete if n < buf.len() => {
                if n == seen {
                    tokio::time::sleep(PEEK_RETRY).await;
                }
                seen = n;
            }
            Hello::Incomplete => return Hello::Invalid,
            done => return done,
        }
    }
}
