//! The HTTPRoute filters as pure functions of the request, so they can be tested (and fuzzed)
//! without sockets.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use mesh_api::model::{HeaderModifier, PathModifier, Redirect};

/// Applies set, then add, then remove, as the spec orders them.
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        if let Some((name, value)) = header(name, value) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &m.add {
        if let Some((name, value)) = header(name, value) {
            headers.append(name, value);
        }
    }
    for name in &m.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// Names and values the controller let through but HTTP cannot carry are skipped rather than
/// failing the request.
fn header(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let value = HeaderValue::from_str(value).ok()?;
    Some((name, value))
}

/// The request path after a path modifier. `matched_prefix` is the `PathPrefix` that selected
/// the rule, needed by `ReplacePrefixMatch` (without it the path is left alone).
pub fn rewrite_path(path: &str, modifier: &PathModifier, matched_prefix: Option<&str>) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(full) => {
            if full.starts_with('/') {
                full.clone()
            } else {
                format!("/{full}")
            }
        }
        PathModifier::ReplacePrefixMatch(replacement) => {
            let Some(prefix) = matched_prefix.map(|p| p.trim_end_matches('/')) else {
                return path.to_string();
            };
            let Some(rest) = path.strip_prefix(prefix) else {
                return path.to_string();
            };
            // `rest` is empty or starts with `/` (segment semantics), so trimming the
            // replacement's trailing `/` avoids `//` without losing a separator.
            let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
            if !replacement.starts_with('/') {
                out.push('/');
            }
            out.push_str(replacement.trim_end_matches('/'));
            out.push_str(rest);
            if out.is_empty() {
                out.push('/');
            }
            out
        }
    }
}

/// What the request looked like, for building a redirect.
pub struct RedirectSource<'a> {
    pub scheme: &'a str,
    /// Without any port.
    pub host: &'a str,
    /// The listener's port: what the spec uses when the redirect names no port.
    pub listener_port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub matched_prefix: Option<&'a str>,
}

/// Status codes a RequestRedirect may use; anything else the controller let through becomes
/// the spec's default, 302.
const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

pub fn redirect_status(r: &Redirect) -> u16 {
    if REDIRECT_CODES.contains(&r.status_code) { r.status_code } else { 302 }
}

/// The `Location` of a RequestRedirect.
pub fn redirect_location(r: &Redirect, src: &RedirectSource<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(src.scheme);
    let host = r.hostname.as_deref().unwrap_or(src.host);
    // Without an explicit port: a new scheme brings its well-known port, otherwise the
    // listener's port stays.
    let port = r.port.unwrap_or_else(|| match r.scheme.as_deref() {
        Some(s) => well_known_port(s).unwrap_or(src.listener_port),
        None => src.listener_port,
    });
    let path = match &r.path {
        Some(m) => rewrite_path(src.path, m, src.matched_prefix),
        None => src.path.to_string(),
    };
    let mut location = format!("{scheme}://{}", bracket_ipv6(host));
    if well_known_port(scheme) != Some(port) {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(&path);
    if let Some(q) = src.query.filter(|q| !q.is_empty()) {
        location.push('?');
        location.push_str(q);
    }
    location
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn src<'a>(path: &'a str, prefix: Option<&'a str>) -> RedirectSource<'a> {
        RedirectSource {
            scheme: "http",
            host: "example.com",
            listener_port: 8080,
            path,
            query: Some("a=1"),
            matched_prefix: prefix,
        }
    }

    fn redirect() -> Redirect {
        Redirect { scheme: None, hostname: None, path: None, port: None, status_code: 301 }
    }

    #[test]
    fn replace_prefix_keeps_the_rest_of_the_path() {
        let m = PathModifier::ReplacePrefixMatch("/new".into());
        assert_eq!(rewrite_path("/old/a/b", &m, Some("/old")), "/new/a/b");
        assert_eq!(rewrite_path("/old", &m, Some("/old")), "/new");
        assert_eq!(rewrite_path("/old/", &m, Some("/old/")), "/new/");
        let root = PathModifier::ReplacePrefixMatch("/".into());
        assert_eq!(rewrite_path("/old", &root, Some("/old")), "/");
        assert_eq!(rewrite_path("/old/x", &root, Some("/old")), "/x");
        let full = PathModifier::ReplaceFullPath("/full".into());
        assert_eq!(rewrite_path("/old/x", &full, Some("/old")), "/full");
    }

    #[test]
    fn redirect_keeps_the_listener_port_unless_the_scheme_changes() {
        let r = Redirect { path: Some(PathModifier::ReplaceFullPath("/new".into())), ..redirect() };
        assert_eq!(redirect_location(&r, &src("/old", None)), "http://example.com:8080/new?a=1");
        let https = Redirect { scheme: Some("https".into()), ..redirect() };
        assert_eq!(redirect_location(&https, &src("/p", None)), "https://example.com/p?a=1");
        let port = Redirect { scheme: Some("https".into()), port: Some(8443), ..redirect() };
        assert_eq!(redirect_location(&port, &src("/p", None)), "https://example.com:8443/p?a=1");
        let host80 = Redirect { hostname: Some("other.org".into()), port: Some(80), ..redirect() };
        assert_eq!(redirect_location(&host80, &src("/p", None)), "http://other.org/p?a=1");
    }

    #[test]
    fn redirect_status_defaults_to_302() {
        assert_eq!(redirect_status(&Redirect { status_code: 308, ..redirect() }), 308);
        assert_eq!(redirect_status(&Redirect { status_code: 200, ..redirect() }), 302);
    }

    #[test]
    fn header_modifier_sets_adds_removes() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("old"));
        h.insert("gone", HeaderValue::from_static("x"));
        modify_headers(
            &mut h,
            &HeaderModifier {
                set: vec![("a".into(), "new".into()), ("bad name".into(), "v".into())],
                add: vec![("b".into(), "1".into()), ("b".into(), "2".into())],
                remove: vec!["gone".into()],
            },
        );
        assert_eq!(h.get("a").expect("set"), "new");
        assert_eq!(h.get_all("b").iter().count(), 2);
        assert!(h.get("gone").is_none());
    }

    proptest! {
        #[test]
        fn rewrites_and_redirects_never_panic(
            path in "\\PC*",
            prefix in proptest::option::of("\\PC*"),
            replacement in "\\PC*",
            host in "\\PC*",
            query in proptest::option::of("\\PC*"),
            port in proptest::option::of(any::<u16>()),
            scheme in proptest::option::of("[a-zA-Z]{0,6}"),
        ) {
            for m in [PathModifier::ReplacePrefixMatch(replacement.clone()), PathModifier::ReplaceFullPath(replacement.clone())] {
                let _ = rewrite_path(&path, &m, prefix.as_deref());
                let r = Redirect { scheme: scheme.clone(), hostname: Some(host.clone()), path: Some(m), port, status_code: 0 };
                let s = RedirectSource { scheme: "http", host: &host, listener_port: 1, path: &path, query: query.as_deref(), matched_prefix: prefix.as_deref() };
                let _ = redirect_location(&r, &s);
            }
        }

        #[test]
        fn header_modifiers_never_panic(name in "\\PC*", value in "\\PC*") {
            let mut h = HeaderMap::new();
            let m = HeaderModifier { set: vec![(name.clone(), value.clone())], add: vec![(name.clone(), value)], remove: vec![name] };
            modify_headers(&mut h, &m);
        }
    }
}
