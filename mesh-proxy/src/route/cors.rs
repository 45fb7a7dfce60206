//! The CORS filter (Gateway API HTTPCORSFilter) as pure functions of the request's headers.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the
//! proxy itself; any other request from an allowed origin gets the response headers added to
//! the backend's answer. An origin that is not allowed gets no CORS header at all, which is how
//! a browser learns it is refused.
//!
//! The allowed origin is always echoed, never answered with `*`: a `*` answer is invalid on a
//! request with credentials, and echoing is valid for every request (Envoy does the same), so one
//! rule serves both. For the same reason a `*` in allowMethods or allowHeaders echoes what the
//! preflight asked for.

use http::Method;
use http::header::{self, HeaderMap, HeaderValue};
use mesh_api::model::Cors;

/// Whether the request is a CORS preflight (Fetch standard, "CORS-preflight request").
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The headers of the proxy's answer to a preflight: empty when the origin is not allowed.
pub fn preflight_headers(cors: &Cors, request: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let Some(origin) = allowed_origin(cors, request) else { return out };
    common(cors, origin, &mut out);
    let methods = if cors.allow_methods.iter().any(|m| m == "*") {
        request.get(header::ACCESS_CONTROL_REQUEST_METHOD).cloned()
    } else {
        joined(&cors.allow_methods)
    };
    if let Some(methods) = methods {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    }
    let headers = if cors.allow_headers.iter().any(|h| h == "*") {
        request.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned()
    } else {
        joined(&cors.allow_headers)
    };
    if let Some(headers) = headers {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, headers);
    }
    if let Some(age) = cors.max_age_seconds {
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
    }
    out
}

/// The headers added to the backend's answer to an actual request: empty when the request has
/// no `Origin` or one that is not allowed.
pub fn response_headers(cors: &Cors, request: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    if let Some(origin) = allowed_origin(cors, request) {
        common(cors, origin, &mut out);
    }
    out
}

/// Headers both answers carry.
fn common(cors: &Cors, origin: HeaderValue, out: &mut HeaderMap) {
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // The answer depends on the origin: caches must not serve it to another one.
    out.insert(header::VARY, HeaderValue::from_static("origin"));
    if cors.allow_credentials {
        out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if let Some(expose) = joined(&cors.expose_headers) {
        out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
    }
}

/// Adds `extra` to a response's headers; `Vary` is appended to, not replaced.
pub fn apply(response: &mut HeaderMap, extra: HeaderMap) {
    for (name, value) in extra {
        let Some(name) = name else { continue };
        if name == header::VARY {
            response.append(name, value);
        } else {
            response.insert(name, value);
        }
    }
}

/// The request's `Origin`, when the filter allows it.
fn allowed_origin(cors: &Cors, request: &HeaderMap) -> Option<HeaderValue> {
    let value = request.get(header::ORIGIN)?;
    let origin = value.to_str().ok()?;
    cors.allow_origins.iter().any(|pattern| origin_matches(pattern, origin)).then(|| value.clone())
}

/// `Vec` of names or methods as one comma-separated value; `None` when empty or when the
/// controller let through something a header cannot carry.
fn joined(items: &[String]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

/// Whether `origin` (`scheme://host[:port]`, as browsers send it) is allowed by `pattern`: `*`,
/// an exact origin, or one whose host starts with a `*.` label wildcard that stands for one or
/// more labels. Scheme and host compare case-insensitively; a missing port is the scheme's
/// default, so `https://a.com` and `https://a.com:443` are the same origin.
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (Some(p), Some(o)) = (Origin::parse(pattern), Origin::parse(origin)) else {
        return false;
    };
    if p.scheme != o.scheme || p.port != o.port {
        return false;
    }
    match p.host.strip_prefix('*') {
        // `suffix` is `.bar.com`: at least one more label must precede it.
        Some(suffix) if suffix.starts_with('.') => o.host.len() > suffix.len() && o.host.ends_with(suffix),
        _ => p.host == o.host,
    }
}

struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.split_once("://")?;
        if scheme.is_empty() || rest.is_empty() || rest.contains('/') {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        // An IPv6 host is bracketed, and its colons are not the port's.
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(rest[i + 1..].parse::<u16>().ok()?)),
            _ => (rest, None),
        };
        if host.is_empty() {
            return None;
        }
        let port = port.or(match scheme.as_str() {
            "http" => Some(80),
            "https" => Some(443),
            _ => None,
        });
        Some(Origin { scheme, host: host.to_ascii_lowercase(), port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;
    use proptest::prelude::*;

    fn filter() -> Cors {
        Cors {
            allow_origins: vec!["https://www.foo.com".into(), "https://*.bar.com".into()],
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into(), "x-header-2".into()],
            expose_headers: vec!["x-header-3".into(), "x-header-4".into()],
            allow_credentials: true,
            max_age_seconds: Some(3600),
        }
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn origins_match_exactly_by_wildcard_label_or_star() {
        assert!(origin_matches("https://www.foo.com", "https://www.foo.com"));
        assert!(origin_matches("https://www.foo.com", "HTTPS://WWW.FOO.COM:443"));
        assert!(!origin_matches("https://www.foo.com", "http://www.foo.com"));
        assert!(!origin_matches("https://www.foo.com", "https://www.foo.com:8443"));
        assert!(origin_matches("https://*.bar.com", "https://www.bar.com"));
        assert!(origin_matches("https://*.bar.com", "https://xpto.www.bar.com"));
        assert!(!origin_matches("https://*.bar.com", "https://bar.com"));
        assert!(!origin_matches("https://*.bar.com", "https://foobar.com"));
        assert!(!origin_matches("https://*.bar.com", "https://www.bar.com.evil.net"));
        assert!(origin_matches("*", "https://foobar.com:12345"));
        assert!(origin_matches("*", "null"));
        assert!(origin_matches("http://[::1]:8080", "http://[::1]:8080"));
        assert!(!origin_matches("http://[::1]", "http://[::1]:8080"));
        assert!(!origin_matches("https://www.foo.com", "null"));
        assert!(!origin_matches("https://www.foo.com", "https://www.foo.com/path"));
    }

    #[test]
    fn preflight_from_an_allowed_origin_gets_every_header() {
        let req = request(&[
            ("origin", "https://xpto.www.bar.com"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-header-1, x-header-2"),
        ]);
        let h = preflight_headers(&filter(), &req);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://xpto.www.bar.com"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET, OPTIONS"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-header-1, x-header-2"));
        assert_eq!(get(&h, "access-control-expose-headers"), Some("x-header-3, x-header-4"));
        assert_eq!(get(&h, "access-control-max-age"), Some("3600"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "vary"), Some("origin"));
    }

    #[test]
    fn an_origin_not_allowed_gets_no_cors_header() {
        let req = request(&[("origin", "https://foobar.com"), ("access-control-request-method", "GET")]);
        assert!(preflight_headers(&filter(), &req).is_empty());
        assert!(response_headers(&filter(), &req).is_empty());
        assert!(response_headers(&filter(), &HeaderMap::new()).is_empty());
    }

    #[test]
    fn wildcards_echo_what_was_asked_and_credentials_only_when_allowed() {
        let star = Cors {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            ..Default::default()
        };
        let req = request(&[
            ("origin", "https://other.foo.com"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-header-1, x-header-2"),
        ]);
        let h = preflight_headers(&star, &req);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("https://other.foo.com"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-header-1, x-header-2"));
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
        assert_eq!(get(&h, "access-control-max-age"), None);
        let h = response_headers(&Cors { allow_credentials: true, ..star }, &req);
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "access-control-allow-methods"), None, "only preflights list methods");
    }

    #[test]
    fn only_options_with_origin_and_a_requested_method_is_a_preflight() {
        let full = request(&[("origin", "https://a.com"), ("access-control-request-method", "GET")]);
        assert!(is_preflight(&Method::OPTIONS, &full));
        assert!(!is_preflight(&Method::GET, &full));
        assert!(!is_preflight(&Method::OPTIONS, &request(&[("origin", "https://a.com")])));
    }

    #[test]
    fn vary_is_appended_to_the_backends() {
        let mut response = request(&[("vary", "accept-encoding")]);
        apply(&mut response, response_headers(&filter(), &request(&[("origin", "https://www.foo.com")])));
        let vary: Vec<_> = response.get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);
    }

    proptest! {
        #[test]
        fn matching_never_panics_and_star_allows_all(pattern in "\\PC*", origin in "\\PC*") {
            let _ = origin_matches(&pattern, &origin);
            prop_assert!(origin_matches("*", &origin));
        }

        #[test]
        fn an_origin_always_matches_itself(scheme in "https?", host in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{1,5}){0,3}", port in proptest::option::of(1u16..)) {
            let origin = match port { Some(p) => format!("{scheme}://{host}:{p}"), None => format!("{scheme}://{host}") };
            prop_assert!(origin_matches(&origin, &origin));
            let wildcard = format!("{scheme}://*.{host}");
            prop_assert!(!origin_matches(&wildcard, &origin));
        }
    }
}
