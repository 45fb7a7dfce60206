//! The order in which route matches are tried, as the HTTPRoute and GRPCRoute specs define it.
//!
//! Within one host, every (route, rule, match) that may apply is sorted by [`MatchOrder`] and
//! the first that matches the request wins. Keys sort ascending: smaller is tried first.

use std::cmp::Reverse;

use crate::model::{GrpcMatch, HttpMatch, PathMatch, Route, RouteMatch};

/// How specific one match is, from the spec's criteria; the route-level tie-breakers follow in
/// [`MatchOrder`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Specificity {
    /// HTTPRoute: an Exact path first, then the longest prefix; then a method match, then the
    /// most header matches, then the most query-parameter matches. Regular-expression paths
    /// are "implementation-specific": Weft tries them after Exact and before any prefix,
    /// longest pattern first, because a regex is almost always written to be narrower than a
    /// prefix that covers it.
    Http {
        path_kind: u8,
        path_len: Reverse<usize>,
        method: Reverse<bool>,
        headers: Reverse<usize>,
        query_params: Reverse<usize>,
    },
    /// GRPCRoute: the most characters in a matching service, then method, then the most
    /// header matches. Exact method matches precede regular-expression ones.
    Grpc { regex: bool, service_len: Reverse<usize>, method_len: Reverse<usize>, headers: Reverse<usize> },
}

pub fn specificity(m: &RouteMatch) -> Specificity {
    match m {
        RouteMatch::Http(m) => http_specificity(m),
        RouteMatch::Grpc(m) => grpc_specificity(m),
    }
}

fn http_specificity(m: &HttpMatch) -> Specificity {
    let (path_kind, path_len) = match &m.path {
        PathMatch::Exact(p) => (0, p.len()),
        PathMatch::RegularExpression(p) => (1, p.len()),
        PathMatch::Prefix(p) => (2, p.trim_end_matches('/').len()),
    };
    Specificity::Http {
        path_kind,
        path_len: Reverse(path_len),
        method: Reverse(m.method.is_some()),
        headers: Reverse(m.headers.len()),
        query_params: Reverse(m.query_params.len()),
    }
}

fn grpc_specificity(m: &GrpcMatch) -> Specificity {
    let (regex, service_len, method_len) = match &m.method {
        Some(method) => (
            method.regex,
            method.service.as_ref().map_or(0, String::len),
            method.method.as_ref().map_or(0, String::len),
        ),
        None => (false, 0, 0),
    };
    Specificity::Grpc {
        regex,
        service_len: Reverse(service_len),
        method_len: Reverse(method_len),
        headers: Reverse(m.headers.len()),
    }
}

/// The full order of one match among all matches of all routes on one host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchOrder {
    pub specificity: Specificity,
    /// Older routes win ties.
    pub created: i64,
    /// Then `namespace/name` in alphabetical order.
    pub namespace: String,
    pub name: String,
    /// Then the first rule, and the first match in it.
    pub rule: usize,
    pub index: usize,
}

impl MatchOrder {
    pub fn new(route: &Route, rule: usize, index: usize, m: &RouteMatch) -> Self {
        Self {
            specificity: specificity(m),
            created: route.created,
            namespace: route.key.object.namespace.clone(),
            name: route.key.object.name.clone(),
            rule,
            index,
        }
    }
}

/// Orders hostnames from most to least specific for one request host: an exact name before
/// any wildcard, a longer wildcard before a shorter one, and "any host" last. Returns `None`
/// when `pattern` does not match `host` at all.
pub fn hostname_rank(pattern: Option<&str>, host: &str) -> Option<(u8, Reverse<usize>)> {
    let host = host.trim_end_matches('.');
    match pattern {
        None => Some((2, Reverse(0))),
        Some(p) => {
            if let Some(suffix) = p.strip_prefix('*') {
                // `*.example.com` matches `a.example.com` and `a.b.example.com`, never
                // `example.com` itself.
                let matches = host.len() > suffix.len()
                    && host.get(host.len() - suffix.len()..).is_some_and(|s| s.eq_ignore_ascii_case(suffix));
                matches.then_some((1, Reverse(p.len())))
            } else {
                p.eq_ignore_ascii_case(host).then_some((0, Reverse(p.len())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn route(ns: &str, name: &str, created: i64) -> Route {
        Route {
            key: RouteKey { kind: RouteKind::Http, object: ObjectKey::new(ns, name) },
            created,
            parents: vec![],
            rules: vec![],
        }
    }

    fn http(path: PathMatch, method: bool, headers: usize, query: usize) -> RouteMatch {
        RouteMatch::Http(HttpMatch {
            path,
            headers: (0..headers)
                .map(|i| HeaderMatch { name: format!("h{i}"), value: StringMatch::Exact("v".into()) })
                .collect(),
            query_params: (0..query)
                .map(|i| QueryParamMatch { name: format!("q{i}"), value: StringMatch::Exact("v".into()) })
                .collect(),
            method: method.then(|| "GET".to_string()),
        })
    }

    #[test]
    fn http_matches_follow_the_spec_order() {
        let r = route("default", "r", 0);
        let exact = MatchOrder::new(&r, 0, 0, &http(PathMatch::Exact("/a".into()), false, 0, 0));
        let long_prefix = MatchOrder::new(&r, 0, 0, &http(PathMatch::Prefix("/a/b".into()), false, 0, 0));
        let short_prefix = MatchOrder::new(&r, 0, 0, &http(PathMatch::Prefix("/a".into()), false, 0, 0));
        let with_method = MatchOrder::new(&r, 0, 0, &http(PathMatch::Prefix("/a".into()), true, 0, 0));
        let with_headers = MatchOrder::new(&r, 0, 0, &http(PathMatch::Prefix("/a".into()), false, 2, 0));
        let with_query = MatchOrder::new(&r, 0, 0, &http(PathMatch::Prefix("/a".into()), false, 0, 3));
        let mut all = vec![
            short_prefix.clone(),
            with_query.clone(),
            with_headers.clone(),
            with_method.clone(),
            long_prefix.clone(),
            exact.clone(),
        ];
        all.sort();
        assert_eq!(all, vec![exact, long_prefix, with_method, with_headers, with_query, short_prefix]);
    }

    #[test]
    fn ties_go_to_the_oldest_route_then_by_name_then_rule_order() {
        let m = http(PathMatch::Prefix("/".into()), false, 0, 0);
        let old = MatchOrder::new(&route("b", "z", 10), 0, 0, &m);
        let young_a = MatchOrder::new(&route("a", "b", 20), 0, 0, &m);
        let young_b = MatchOrder::new(&route("a", "c", 20), 0, 0, &m);
        let young_b_rule1 = MatchOrder::new(&route("a", "c", 20), 1, 0, &m);
        let mut all = vec![young_b_rule1.clone(), young_b.clone(), young_a.clone(), old.clone()];
        all.sort();
        assert_eq!(all, vec![old, young_a, young_b, young_b_rule1]);
    }

    #[test]
    fn trailing_slash_does_not_lengthen_a_prefix() {
        let a = specificity(&http(PathMatch::Prefix("/foo/".into()), false, 0, 0));
        let b = specificity(&http(PathMatch::Prefix("/foo".into()), false, 0, 0));
        assert_eq!(a, b);
    }

    #[test]
    fn hostnames_rank_exact_then_longest_wildcard_then_any() {
        let host = "a.b.example.com";
        let exact = hostname_rank(Some("a.b.example.com"), host).expect("matches");
        let long_wild = hostname_rank(Some("*.b.example.com"), host).expect("matches");
        let short_wild = hostname_rank(Some("*.example.com"), host).expect("matches");
        let any = hostname_rank(None, host).expect("matches");
        assert!(exact < long_wild && long_wild < short_wild && short_wild < any);
        assert_eq!(hostname_rank(Some("*.example.com"), "example.com"), None);
        assert_eq!(hostname_rank(Some("other.com"), host), None);
        assert!(
            hostname_rank(Some("A.B.EXAMPLE.COM"), host).is_some(),
            "hostnames compare case-insensitively"
        );
    }
}
