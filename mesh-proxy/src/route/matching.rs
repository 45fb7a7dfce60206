//! One route match, compiled once per config snapshot and tested against each request.

use http::{HeaderMap, Method};
use mesh_api::model::{
    GrpcMatch, HeaderMatch, HttpMatch, PathMatch, QueryParamMatch, RouteMatch, StringMatch,
};
use regex::Regex;

/// A regular expression the whole input must match, as the Gateway API means it.
#[derive(Clone, Debug)]
pub struct FullRegex(Regex);

impl FullRegex {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$")).map(FullRegex)
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.0.is_match(s)
    }
}

#[derive(Clone, Debug)]
pub enum ValueMatcher {
    Exact(String),
    Regex(FullRegex),
}

impl ValueMatcher {
    fn compile(m: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match m {
            StringMatch::Exact(v) => ValueMatcher::Exact(v.clone()),
            StringMatch::RegularExpression(r) => ValueMatcher::Regex(FullRegex::new(r)?),
        })
    }

    fn is_match(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => v == value,
            ValueMatcher::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Clone, Debug)]
pub enum PathMatcher {
    Exact(String),
    /// Stored without its trailing `/`, so `/foo` and `/foo/` are the same prefix.
    Prefix(String),
    Regex(FullRegex),
}

impl PathMatcher {
    fn compile(m: &PathMatch) -> Result<Self, regex::Error> {
        Ok(match m {
            PathMatch::Exact(p) => PathMatcher::Exact(p.clone()),
            PathMatch::Prefix(p) => PathMatcher::Prefix(p.trim_end_matches('/').to_string()),
            PathMatch::RegularExpression(r) => PathMatcher::Regex(FullRegex::new(r)?),
        })
    }

    pub fn is_match(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => p == path,
            PathMatcher::Prefix(p) => prefix_matches(p, path),
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

/// Segment-wise prefix: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, never `/foobar`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The parts of a request that matches look at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Clone, Debug)]
struct HeaderMatcher {
    name: http::HeaderName,
    value: ValueMatcher,
}

#[derive(Clone, Debug)]
struct QueryMatcher {
    name: String,
    value: ValueMatcher,
}

#[derive(Clone, Debug)]
enum Kind {
    Http { path: PathMatcher, query: Vec<QueryMatcher>, method: Option<Method> },
    Grpc { service: Option<ValueMatcher>, method: Option<ValueMatcher> },
}

#[derive(Clone, Debug)]
pub struct Matcher {
    kind: Kind,
    headers: Vec<HeaderMatcher>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("invalid regular expression: {0}")]
    Regex(#[from] regex::Error),
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid method {0:?}")]
    Method(String),
}

impl Matcher {
    pub fn compile(m: &RouteMatch) -> Result<Self, CompileError> {
        match m {
            RouteMatch::Http(m) => compile_http(m),
            RouteMatch::Grpc(m) => compile_grpc(m),
        }
    }

    /// The path prefix this match matched, for `ReplacePrefixMatch`.
    pub fn matched_prefix(&self) -> Option<&str> {
        match &self.kind {
            Kind::Http { path: PathMatcher::Prefix(p), .. } => Some(p),
            _ => None,
        }
    }

    pub fn is_match(&self, req: &RequestView<'_>) -> bool {
        let kind_matches = match &self.kind {
            Kind::Http { path, query, method } => {
                path.is_match(req.path)
                    && method.as_ref().is_none_or(|m| m == req.method)
                    && query
                        .iter()
                        .all(|q| query_value(req.query, &q.name).is_some_and(|v| q.value.is_match(v)))
            }
            Kind::Grpc { service, method } => grpc_matches(req.path, service.as_ref(), method.as_ref()),
        };
        kind_matches && self.headers.iter().all(|h| header_matches(req.headers, h))
    }
}

fn compile_headers(headers: &[HeaderMatch]) -> Result<Vec<HeaderMatcher>, CompileError> {
    headers
        .iter()
        .map(|h| {
            let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                .map_err(|_| CompileError::HeaderName(h.name.clone()))?;
            Ok(HeaderMatcher { name, value: ValueMatcher::compile(&h.value)? })
        })
        .collect::<Result<Vec<_>, _>>()
        // Collecting through a Result does not know the length: a Vec of one header kept room
        // for four, ~190 bytes a match kept for as long as its route.
        .map(|mut matchers| {
            matchers.shrink_to_fit();
            matchers
        })
}

fn compile_http(m: &HttpMatch) -> Result<Matcher, CompileError> {
    let method = match &m.method {
        Some(name) => {
            Some(Method::from_bytes(name.as_bytes()).map_err(|_| CompileError::Method(name.clone()))?)
        }
        None => None,
    };
    let query = m
        .query_params
        .iter()
        .map(|q: &QueryParamMatch| {
            Ok(QueryMatcher { name: q.name.clone(), value: ValueMatcher::compile(&q.value)? })
        })
        .collect::<Result<_, CompileError>>()?;
    Ok(Matcher {
        kind: Kind::Http { path: PathMatcher::compile(&m.path)?, query, method },
        headers: compile_headers(&m.headers)?,
    })
}

fn compile_grpc(m: &GrpcMatch) -> Result<Matcher, CompileError> {
    let (service, method) = match &m.method {
        Some(mm) => {
            let compile = |s: &Option<String>| -> Result<Option<ValueMatcher>, CompileError> {
                Ok(match s {
                    Some(s) if mm.regex => Some(ValueMatcher::Regex(FullRegex::new(s)?)),
                    Some(s) => Some(ValueMatcher::Exact(s.clone())),
                    None => None,
                })
            };
            (compile(&mm.service)?, compile(&mm.method)?)
        }
        None => (None, None),
    };
    Ok(Matcher { kind: Kind::Grpc { service, method }, headers: compile_headers(&m.headers)? })
}

/// gRPC paths are `/package.Service/Method`.
fn grpc_matches(path: &str, service: Option<&ValueMatcher>, method: Option<&ValueMatcher>) -> bool {
    let Some((svc, meth)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return false;
    };
    if svc.is_empty() || meth.is_empty() || meth.contains('/') {
        return false;
    }
    service.is_none_or(|s| s.is_match(svc)) && method.is_none_or(|m| m.is_match(meth))
}

fn header_matches(headers: &HeaderMap, m: &HeaderMatcher) -> bool {
    let mut values = headers.get_all(&m.name).iter().filter_map(|v| v.to_str().ok());
    let Some(first) = values.next() else {
        return false;
    };
    match values.next() {
        None => m.value.is_match(first),
        // A repeated header means the same as its values joined with commas (RFC 9110 §5.3).
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for v in values {
                joined.push(',');
                joined.push_str(v);
            }
            m.value.is_match(&joined)
        }
    }
}

/// The first value of query parameter `name` (names compare exactly).
pub fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::model::GrpcMethodMatch;

    fn view<'a>(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView { method, path, query, headers }
    }

    fn http(m: HttpMatch) -> Matcher {
        Matcher::compile(&RouteMatch::Http(m)).expect("compiles")
    }

    #[test]
    fn prefix_matches_whole_segments_only() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(prefix_matches("/foo/", "/foo"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("", "/"));
    }

    #[test]
    fn exact_and_regex_paths() {
        let h = HeaderMap::new();
        let get = Method::GET;
        let exact = http(HttpMatch { path: PathMatch::Exact("/a".into()), ..Default::default() });
        assert!(exact.is_match(&view(&get, "/a", None, &h)));
        assert!(!exact.is_match(&view(&get, "/a/", None, &h)));
        let regex =
            http(HttpMatch { path: PathMatch::RegularExpression("/v[0-9]+".into()), ..Default::default() });
        assert!(regex.is_match(&view(&get, "/v12", None, &h)));
        assert!(!regex.is_match(&view(&get, "/v12/x", None, &h)), "a regex must match the whole path");
    }

    #[test]
    fn headers_query_and_method() {
        let m = http(HttpMatch {
            path: PathMatch::Prefix("/".into()),
            headers: vec![HeaderMatch { name: "X-Canary".into(), value: StringMatch::Exact("1".into()) }],
            query_params: vec![QueryParamMatch {
                name: "tier".into(),
                value: StringMatch::RegularExpression("gold|silver".into()),
            }],
            method: Some("POST".into()),
        });
        let mut h = HeaderMap::new();
        h.insert("x-canary", "1".parse().expect("value"));
        assert!(m.is_match(&view(&Method::POST, "/x", Some("a=b&tier=gold"), &h)));
        assert!(!m.is_match(&view(&Method::GET, "/x", Some("tier=gold"), &h)), "method");
        assert!(
            !m.is_match(&view(&Method::POST, "/x", Some("Tier=gold"), &h)),
            "query names are case-sensitive"
        );
        assert!(!m.is_match(&view(&Method::POST, "/x", Some("tier=bronze"), &h)));
        assert!(!m.is_match(&view(&Method::POST, "/x", Some("tier=gold"), &HeaderMap::new())), "header");
    }

    #[test]
    fn grpc_service_and_method() {
        let m = Matcher::compile(&RouteMatch::Grpc(GrpcMatch {
            method: Some(GrpcMethodMatch { service: Some("pkg.Echo".into()), method: None, regex: false }),
            headers: vec![],
        }))
        .expect("compiles");
        let h = HeaderMap::new();
        assert!(m.is_match(&view(&Method::POST, "/pkg.Echo/Say", None, &h)));
        assert!(!m.is_match(&view(&Method::POST, "/pkg.Other/Say", None, &h)));
        assert!(!m.is_match(&view(&Method::POST, "/pkg.Echo", None, &h)));
    }

    proptest::proptest! {
        #[test]
        fn matching_never_panics(
            path in "\\PC*",
            query in proptest::option::of("\\PC*"),
            header_value in "[ -~]*",
            pattern in "\\PC{0,12}",
            prefix in "\\PC*",
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&header_value) {
                h.append("x-h", v.clone());
                h.append("x-h", v);
            }
            let string = |s: &str| [StringMatch::Exact(s.to_string()), StringMatch::RegularExpression(s.to_string())];
            for value in string(&pattern) {
                for path_match in [PathMatch::Exact(prefix.clone()), PathMatch::Prefix(prefix.clone()), PathMatch::RegularExpression(pattern.clone())] {
                    let m = RouteMatch::Http(HttpMatch {
                        path: path_match,
                        headers: vec![HeaderMatch { name: "x-h".into(), value: value.clone() }],
                        query_params: vec![QueryParamMatch { name: pattern.clone(), value: value.clone() }],
                        method: None,
                    });
                    if let Ok(m) = Matcher::compile(&m) {
                        let _ = m.is_match(&view(&Method::GET, &path, query.as_deref(), &h));
                    }
                }
                let g = RouteMatch::Grpc(GrpcMatch {
                    method: Some(GrpcMethodMatch { service: Some(pattern.clone()), method: Some(pattern.clone()), regex: matches!(value, StringMatch::RegularExpression(_)) }),
                    headers: vec![],
                });
                if let Ok(m) = Matcher::compile(&g) {
                    let _ = m.is_match(&view(&Method::POST, &path, None, &h));
                }
            }
        }
    }

    #[test]
    fn bad_regex_is_a_compile_error() {
        let r = Matcher::compile(&RouteMatch::Http(HttpMatch {
            path: PathMatch::RegularExpression("(".into()),
            ..Default::default()
        }));
        assert!(r.is_err());
    }
}
