//! Whether a client connection has sent its first request yet, so that closing a listener does
//! not drop a request that is on its way.
//!
//! When a listener closes (an upgrade's hand-over, or a stop), every connection it accepted is
//! shut down gracefully: the request in progress finishes, then the connection closes, and a
//! keep-alive client reconnects to the new proxy. But a connection accepted just before the
//! close, or taken from the listener's queue as it closed, has usually not sent its request
//! yet: hyper then sees it idle (or still sniffing HTTP/1 against HTTP/2) and closes it at once,
//! and the client, whose request was already sent, reads an empty answer. Such a connection is
//! given [`FIRST_REQUEST_GRACE`] to deliver its first request, which is then served, with
//! `connection: close`, before it closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How long a connection that has sent nothing yet is waited for once its listener closes. A
/// client sends its request right after the handshake, one round trip behind at most; a second
/// covers any round trip a client of this proxy has, and a client that only opened a connection
/// ahead of need (a browser's preconnect) is closed after it having sent nothing, which is safe
/// for it to retry elsewhere.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct FirstRequest {
    arrived: AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    /// Called for every request the connection delivers: a plain load after the first, since
    /// it runs on the request path.
    pub fn arrived(&self) {
        if !self.arrived.load(Ordering::Relaxed) {
            self.arrived.store(true, Ordering::Relaxed);
            // A permit stays stored when nobody waits yet, so a later `wait` sees it.
            self.notify.notify_one();
        }
    }

    /// Returns once the first request arrived (at once if it had), or after `grace`.
    pub async fn wait(&self, grace: Duration) {
        if self.arrived.load(Ordering::Relaxed) {
            return;
        }
        let _ = tokio::time::timeout(grace, self.notify.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sent_nothing_is_waited_for_until_the_grace_ends() {
        let first = FirstRequest::default();
        let started = tokio::time::Instant::now();
        first.wait(FIRST_REQUEST_GRACE).await;
        assert_eq!(started.elapsed(), FIRST_REQUEST_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_when_the_first_request_arrives() {
        let first = Arc::new(FirstRequest::default());
        let started = tokio::time::Instant::now();
        let arrives = tokio::spawn({
            let first = first.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                first.arrived();
            }
        });
        first.wait(FIRST_REQUEST_GRACE).await;
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        arrives.await.expect("task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_already_sent_a_request_is_not_waited_for() {
        let first = FirstRequest::default();
        first.arrived();
        first.arrived();
        let started = tokio::time::Instant::now();
        first.wait(FIRST_REQUEST_GRACE).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
