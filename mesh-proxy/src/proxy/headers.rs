//! Headers that belong to one connection (RFC 9110 §7.6.1) and the `x-forwarded-*` headers a
//! proxy adds.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// Hop-by-hop fields a proxy must not forward, in addition to those `Connection` names.
/// `proxy-connection` and `keep-alive` are not in HTTP/1.1 proper but are sent by old clients.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the connection-specific headers. gRPC needs `te: trailers` end to end, so that one
/// value of `TE` survives.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these (a client's GET: `Host` and a few more): a look at each
    // name, most of them standard ones compared by their tag, costs less than the eight hashed
    // lookups below.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let wants_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    // The values are copied out (reference-counted, not reallocated) so the map can be changed;
    // one `Connection` field, the usual case, needs no list.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    match (connection.next().cloned(), connection.next().is_some()) {
        (None, _) => {}
        (Some(only), false) => remove_named(headers, &only),
        (Some(_), true) => {
            let all: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
            for value in &all {
                remove_named(headers, value);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Removes the fields a `Connection` value names. Looked up by the names as written: no
/// `HeaderName` is made for each (an allocation for any name outside the standard ones, such
/// as the `keep-alive` most backends name), and a name that is not a valid one finds nothing.
fn remove_named(headers: &mut HeaderMap, connection: &HeaderValue) {
    let Ok(names) = connection.to_str() else { return };
    for name in names.split(',') {
        headers.remove(name.trim());
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The client's address as an `x-forwarded-for` element. Made once per connection (the
/// client's address does not change on it), so a request does not spell the address out again.
pub fn forwarded_for(client: IpAddr) -> Option<HeaderValue> {
    HeaderValue::try_from(client.to_string()).ok()
}

/// Appends the client (`client`, from [`forwarded_for`]) to `x-forwarded-for` and says which
/// scheme it used.
pub fn add_forwarded(headers: &mut HeaderMap, client: Option<&HeaderValue>, scheme: &'static str) {
    if let Some(client) = client {
        let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(existing) if !existing.is_empty() => {
                let mut appended = Vec::with_capacity(existing.len() + 2 + client.len());
                appended.extend_from_slice(existing.as_bytes());
                appended.extend_from_slice(b", ");
                appended.extend_from_slice(client.as_bytes());
                // Made from the vector itself, whose bytes are then not copied again.
                HeaderValue::from_maybe_shared(bytes::Bytes::from(appended)).ok()
            }
            // The connection's value, shared rather than copied.
            _ => Some(client.clone()),
        };
        if let Some(value) = value {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

/// Both `Content-Length` and `Transfer-Encoding` on one HTTP/1 message: the framing is
/// ambiguous and the classic request-smuggling vector (RFC 9112 §6.1), so it is refused.
pub fn has_ambiguous_framing(headers: &HeaderMap) -> bool {
    headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).expect("trailers kept"), "trailers");
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn strips_what_every_connection_field_names_whatever_its_case() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("X-One, ,bad name"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-two"));
        for name in ["x-one", "x-two", "x-three"] {
            h.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-one").is_none() && h.get("x-two").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.len(), 1, "only x-three is left: {h:?}");
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_stripped_and_a_message_without_any_is_left_as_it_is() {
        for name in ["connection", "te", "transfer-encoding", "upgrade", "keep-alive", "proxy-connection"] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("shop.example"));
            h.insert(name, HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} kept: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.append("x-custom", HeaderValue::from_static("1"));
        h.append("x-custom", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let client = forwarded_for("127.0.0.1".parse().expect("ip"));
        add_forwarded(&mut h, client.as_ref(), "http");
        assert_eq!(h.get("x-forwarded-for").expect("set"), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").expect("set"), "http");
    }

    #[test]
    fn forwarded_for_starts_with_the_client_and_spells_ipv6_plainly() {
        let mut h = HeaderMap::new();
        // An empty header counts as none.
        h.insert("x-forwarded-for", HeaderValue::from_static(""));
        let client = forwarded_for("2001:db8::1".parse().expect("ip"));
        add_forwarded(&mut h, client.as_ref(), "https");
        assert_eq!(h.get("x-forwarded-for").expect("set"), "2001:db8::1");
        assert_eq!(h.get("x-forwarded-proto").expect("set"), "https");
        // The same connection's next request gets the same value again.
        let mut next = HeaderMap::new();
        add_forwarded(&mut next, client.as_ref(), "https");
        assert_eq!(next.get("x-forwarded-for").expect("set"), "2001:db8::1");
    }
}
