//! HTTP/1.1 `Upgrade` passthrough (WebSocket and any other protocol): the upgrade request goes
//! to the backend with its `Connection: upgrade` and `Upgrade` intact, and once the backend
//! answers `101 Switching Protocols` the two connections are spliced byte for byte.
//!
//! The proxy does not speak the upgraded protocol; it only keeps the handshake headers that
//! [`super::headers::strip_hop_by_hop`] would otherwise drop, and copies bytes afterwards.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The client's half of an upgrade in progress: what it asked for and its connection, once
/// hyper hands it over.
pub struct Requested {
    protocol: HeaderValue,
    client: OnUpgrade,
}

/// An HTTP/1.1 request asking to switch protocols, or `None`. HTTP/2 has no `Upgrade` (RFC 9113
/// §8.2.2), so only HTTP/1.1 requests qualify.
pub fn requested<B>(req: &mut Request<B>) -> Option<Requested> {
    if req.version() != Version::HTTP_11 || !connection_has_upgrade(req.headers()) {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    Some(Requested { protocol, client: hyper::upgrade::on(req) })
}

fn connection_has_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

impl Requested {
    /// Puts the handshake headers back on the upstream request after the hop-by-hop ones were
    /// stripped.
    pub fn restore(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// When the backend switched protocols: keeps the handshake headers on the client's answer
    /// and splices the two connections from a task of its own. Any other answer is an ordinary
    /// response and the client's connection stays HTTP.
    pub fn finish<B>(self, response: &mut Response<B>) -> bool {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return false;
        }
        let backend = hyper::upgrade::on(&mut *response);
        let protocol = response.headers().get(header::UPGRADE).cloned().unwrap_or(self.protocol);
        let headers = response.headers_mut();
        super::headers::strip_hop_by_hop(headers);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        let client = self.client;
        tokio::spawn(async move {
            let (client, backend) = match tokio::try_join!(client, backend) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(%error, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            match super::copy::bidirectional(&mut client, &mut backend).await {
                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                Err(error) => tracing::debug!(%error, "upgraded connection failed"),
            }
        });
        true
    }
}
