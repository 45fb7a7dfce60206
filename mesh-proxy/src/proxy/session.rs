//! Session persistence (Gateway API `sessionPersistence`): the first answer of a session names
//! the endpoint that served it, in a cookie or a header, and later requests carrying that name go
//! to the same endpoint for as long as it is one of the rule's ready endpoints and the session
//! has not timed out.
//!
//! The value is `<endpoint>.<issued>.<last>`: the endpoint address hex-encoded, and two Unix
//! times in seconds for the absolute and idle timeouts. It is not a secret (Envoy's stateful
//! sessions encode the address the same way) and cannot be abused: it can only select among the
//! rule's own endpoints.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use mesh_api::model::{SessionPersistence, SessionPersistenceKind};

/// Cookie or header name when the route names none. The spec leaves it to implementations.
pub const DEFAULT_NAME: &str = "weft-session";

/// A session a request carried, still valid.
#[derive(Debug, PartialEq, Eq)]
pub struct Carried {
    pub endpoint: SocketAddr,
    issued: u64,
}

fn name(policy: &SessionPersistence) -> &str {
    policy.name.as_deref().filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAME)
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The session `headers` carry for this policy, if it is well-formed and not timed out.
pub fn carried(policy: &SessionPersistence, headers: &HeaderMap, now: SystemTime) -> Option<Carried> {
    let name = name(policy);
    let value = match policy.kind {
        SessionPersistenceKind::Header => headers.get(name)?.to_str().ok()?.trim().to_string(),
        SessionPersistenceKind::Cookie => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.trim().to_string())?,
    };
    let mut parts = value.split('.');
    let endpoint = decode_addr(parts.next()?)?;
    let issued: u64 = parts.next()?.parse().ok()?;
    let last: u64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    let now = unix_secs(now);
    let expired = |since: u64, limit_ms: Option<u64>| {
        limit_ms.is_some_and(|ms| now.saturating_sub(since) >= Duration::from_millis(ms).as_secs())
    };
    if expired(issued, policy.absolute_timeout_ms) || expired(last, policy.idle_timeout_ms) {
        return None;
    }
    Some(Carried { endpoint, issued })
}

/// The header that starts (or, with an idle timeout, refreshes) a session on `endpoint`.
/// `carried` is the session the request came with, kept when it is the same endpoint.
pub fn response_header(
    policy: &SessionPersistence,
    endpoint: SocketAddr,
    carried: Option<&Carried>,
    now: SystemTime,
) -> Option<(HeaderName, HeaderValue)> {
    let same = carried.filter(|c| c.endpoint == endpoint);
    // An unchanged session is only rewritten when its last use matters.
    if same.is_some() && policy.idle_timeout_ms.is_none() {
        return None;
    }
    let now = unix_secs(now);
    let issued = same.map_or(now, |c| c.issued);
    let value = format!("{}.{issued}.{now}", encode_addr(endpoint));
    match policy.kind {
        SessionPersistenceKind::Header => {
            Some((HeaderName::from_bytes(name(policy).as_bytes()).ok()?, HeaderValue::from_str(&value).ok()?))
        }
        SessionPersistenceKind::Cookie => {
            let mut cookie = format!("{}={value}; Path=/; HttpOnly", name(policy));
            // A session cookie (the default) has neither Expires nor Max-Age; a permanent one
            // lives as long as the absolute timeout allows.
            if policy.permanent_cookie
                && let Some(ms) = policy.absolute_timeout_ms
            {
                let _ = write!(cookie, "; Max-Age={}", Duration::from_millis(ms).as_secs());
            }
            Some((header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?))
        }
    }
}

fn encode_addr(addr: SocketAddr) -> String {
    addr.to_string().bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn decode_addr(hex: &str) -> Option<SocketAddr> {
    // An address is at most 47 characters ([v6%scope]:port); anything longer is not one of ours.
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(kind: SessionPersistenceKind) -> SessionPersistence {
        SessionPersistence {
            name: None,
            kind,
            absolute_timeout_ms: None,
            idle_timeout_ms: None,
            permanent_cookie: false,
        }
    }

    fn addr() -> SocketAddr {
        "10.0.0.7:8080".parse().expect("addr")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// The request headers a client sends back after `set`.
    fn echo(set: &(HeaderName, HeaderValue)) -> HeaderMap {
        let mut h = HeaderMap::new();
        if set.0 == header::SET_COOKIE {
            let pair = set.1.to_str().expect("ascii").split(';').next().expect("pair").to_string();
            h.insert(header::COOKIE, HeaderValue::from_str(&format!("other=1; {pair}")).expect("value"));
        } else {
            h.insert(set.0.clone(), set.1.clone());
        }
        h
    }

    #[test]
    fn a_cookie_session_round_trips_without_expiry_attributes() {
        let p = policy(SessionPersistenceKind::Cookie);
        let set = response_header(&p, addr(), None, at(100)).expect("new session");
        assert_eq!(set.0, header::SET_COOKIE);
        let text = set.1.to_str().expect("ascii");
        assert!(text.starts_with("weft-session="), "{text}");
        assert!(!text.contains("Max-Age") && !text.contains("Expires"), "{text}");
        let carried = carried(&p, &echo(&set), at(200)).expect("carried");
        assert_eq!(carried.endpoint, addr());
        assert_eq!(response_header(&p, addr(), Some(&carried), at(200)), None, "nothing to refresh");
    }

    #[test]
    fn a_header_session_uses_the_session_name() {
        let p =
            SessionPersistence { name: Some("x-session".into()), ..policy(SessionPersistenceKind::Header) };
        let set = response_header(&p, addr(), None, at(1)).expect("new");
        assert_eq!(set.0.as_str(), "x-session");
        assert_eq!(carried(&p, &echo(&set), at(2)).map(|c| c.endpoint), Some(addr()));
    }

    #[test]
    fn timeouts_end_sessions_and_use_refreshes_the_idle_one() {
        let p = SessionPersistence {
            absolute_timeout_ms: Some(100_000),
            idle_timeout_ms: Some(10_000),
            permanent_cookie: true,
            ..policy(SessionPersistenceKind::Cookie)
        };
        let set = response_header(&p, addr(), None, at(1000)).expect("new");
        assert!(set.1.to_str().expect("ascii").contains("Max-Age=100"));
        assert!(carried(&p, &echo(&set), at(1009)).is_some());
        assert!(carried(&p, &echo(&set), at(1010)).is_none(), "idle too long");
        // Used at 1009: refreshed, so idle time counts from there, but the absolute limit stays.
        let c = carried(&p, &echo(&set), at(1009)).expect("carried");
        let refreshed = response_header(&p, addr(), Some(&c), at(1009)).expect("refreshed");
        assert!(carried(&p, &echo(&refreshed), at(1015)).is_some());
        let mut last = refreshed;
        for t in (1015..1100).step_by(5) {
            let c = carried(&p, &echo(&last), at(t)).expect("within both limits");
            last = response_header(&p, addr(), Some(&c), at(t)).expect("refreshed");
        }
        assert!(carried(&p, &echo(&last), at(1100)).is_none(), "absolute timeout");
    }

    #[test]
    fn a_session_on_another_endpoint_is_replaced() {
        let p = policy(SessionPersistenceKind::Cookie);
        let c = Carried { endpoint: "10.0.0.8:8080".parse().expect("addr"), issued: 5 };
        let set = response_header(&p, addr(), Some(&c), at(10)).expect("replaced");
        assert_eq!(carried(&p, &echo(&set), at(10)).map(|c| c.endpoint), Some(addr()));
    }

    #[test]
    fn malformed_values_are_no_session() {
        let p = policy(SessionPersistenceKind::Cookie);
        for value in
            ["", "zz.1.1", "31.1.1", "3132372e302e302e313a3830.1", "3132372e302e302e313a3830.a.1", "x.1.1.1"]
        {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, HeaderValue::from_str(&format!("weft-session={value}")).expect("value"));
            assert_eq!(carried(&p, &h, at(2)), None, "{value}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("weft-session=3132372e302e302e313a3830.1.1"));
        assert_eq!(carried(&p, &h, at(2)).map(|c| c.endpoint), Some("127.0.0.1:80".parse().expect("addr")));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(value in "\\PC*") {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("weft-session={value}")) {
                h.insert(header::COOKIE, v);
            }
            let _ = carried(&policy(SessionPersistenceKind::Cookie), &h, at(0));
        }

        #[test]
        fn any_endpoint_round_trips(ip in any::<std::net::IpAddr>(), port in any::<u16>()) {
            let p = policy(SessionPersistenceKind::Header);
            let endpoint = SocketAddr::new(ip, port);
            let set = response_header(&p, endpoint, None, at(1)).expect("new");
            prop_assert_eq!(carried(&p, &echo(&set), at(1)).map(|c| c.endpoint), Some(endpoint));
        }
    }
}
