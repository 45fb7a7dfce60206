//! Route rules validated and converted to the model. A rule that cannot be honoured is dropped
//! (and makes the route `PartiallyInvalid`, or not `Accepted` when no rule is left); a reference
//! that does not resolve keeps the rule but sends its share of traffic to a 500, as the spec
//! requires, and makes `ResolvedRefs` false.

use std::str::FromStr;

use gateway_api::experimental::grpcroutes::{
    GrpcRouteRules, GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
};
use gateway_api::experimental::httproutes::{
    HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersType,
    HttpRouteRulesFiltersUrlRewritePathType, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
    HttpRouteRulesSessionPersistenceCookieConfigLifetimeType, HttpRouteRulesSessionPersistenceType,
};
use mesh_api::model::{
    BackendRef, Cors, Filter, GrpcMatch, GrpcMethodMatch, HeaderMatch, HeaderModifier, HttpMatch, Mirror,
    PathMatch, PathModifier, QueryParamMatch, Redirect, Retry, RouteKind, RouteMatch, Rule,
    SessionPersistence, SessionPersistenceKind, StringMatch, Timeouts, UrlRewrite, WeightedBackend,
};

use super::backends::{self, RefProblem};
use super::routes::{self, BackendReference, L4Rule, RouteSpec, Rules};
use crate::store::Store;

/// All rules of one route, converted.
#[derive(Debug, Default)]
pub struct ConvertedRules {
    pub rules: Vec<Rule>,
    /// One message per dropped rule.
    pub dropped: Vec<String>,
    /// References that did not resolve (the rules stay, the traffic gets 500).
    pub ref_problems: Vec<RefProblem>,
}

pub fn convert(store: &Store, route: &RouteSpec<'_>) -> ConvertedRules {
    let mut out = ConvertedRules::default();
    let ctx = Context {
        store,
        kind: route.key.kind,
        namespace: &route.key.object.namespace,
        mesh_only: is_mesh_only(route),
    };
    let results: Vec<(usize, Option<&str>, Result<Rule, String>)> = match &route.rules {
        Rules::Http(rules) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.name.as_deref(), http_rule(&ctx, r, &mut out.ref_problems)))
            .collect(),
        Rules::Grpc(rules) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.name.as_deref(), grpc_rule(&ctx, r, &mut out.ref_problems)))
            .collect(),
        Rules::L4(rules) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.name.as_deref(), Ok(l4_rule(&ctx, r, &mut out.ref_problems))))
            .collect(),
    };
    for (index, name, result) in results {
        match result {
            Ok(rule) => out.rules.push(rule),
            Err(why) => {
                let which = name.map_or_else(|| format!("rule {index}"), |n| format!("rule {index} ({n})"));
                out.dropped.push(format!("{which}: {why}"));
            }
        }
    }
    out
}

struct Context<'a> {
    store: &'a Store,
    kind: RouteKind,
    namespace: &'a str,
    /// Every parent is a Service: a mesh (GAMMA) route.
    mesh_only: bool,
}

/// Mesh routes may send traffic to backends in any namespace without a ReferenceGrant
/// (GEP-1294): they re-route traffic that could already reach those Services, unlike a
/// Gateway route, which exposes them. A route with a Gateway parent among its parents gets no
/// such pass.
fn is_mesh_only(route: &RouteSpec<'_>) -> bool {
    !route.parent_refs.is_empty()
        && route
            .parent_refs
            .iter()
            .all(|p| p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service"))
}

impl Context<'_> {
    fn backend(&self, r: &BackendReference, problems: &mut Vec<RefProblem>) -> BackendRef {
        let grants = if self.mesh_only { backends::Grants::NotNeeded } else { backends::Grants::Required };
        match backends::resolve(self.store, self.kind, self.namespace, r, grants) {
            Ok(key) => BackendRef::Service(key),
            Err(problem) => {
                let reason = problem.message.clone();
                problems.push(problem);
                BackendRef::Invalid { reason }
            }
        }
    }
}

fn weighted(r: &BackendReference) -> Result<u32, String> {
    u32::try_from(r.weight.unwrap_or(1)).map_err(|_| format!("backendRef {} has a negative weight", r.name))
}

fn l4_rule(ctx: &Context<'_>, rule: &L4Rule, problems: &mut Vec<RefProblem>) -> Rule {
    let backends = rule
        .backend_refs
        .iter()
        .map(|r| WeightedBackend {
            weight: weighted(r).unwrap_or(0),
            backend: ctx.backend(r, problems),
            filters: vec![],
        })
        .collect();
    Rule { name: rule.name.clone(), backends, ..Rule::default() }
}

fn http_rule(
    ctx: &Context<'_>,
    rule: &HttpRouteRules,
    problems: &mut Vec<RefProblem>,
) -> Result<Rule, String> {
    let matches: Vec<RouteMatch> = match rule.matches.as_deref() {
        None | Some([]) => vec![RouteMatch::Http(HttpMatch::default())],
        Some(matches) => matches.iter().map(http_match).collect::<Result<_, _>>()?,
    };
    let has_prefix_match =
        matches.iter().all(|m| matches!(m, RouteMatch::Http(HttpMatch { path: PathMatch::Prefix(_), .. })));
    let rule_filters = filters(ctx, rule.filters.as_deref().unwrap_or_default(), has_prefix_match, problems)?;
    let mut unsupported = rule_filters.unsupported;
    let mut backends = Vec::new();
    for r in rule.backend_refs.iter().flatten() {
        let reference: BackendReference =
            routes::reshape(r).ok_or_else(|| format!("backendRef {} is not a valid reference", r.name))?;
        let backend_filters: Vec<HttpRouteRulesFilters> = routes::reshape_all(r.filters.as_ref());
        let backend_filters = self::filters(ctx, &backend_filters, has_prefix_match, problems)?;
        unsupported = unsupported.or(backend_filters.unsupported);
        backends.push(WeightedBackend {
            weight: weighted(&reference)?,
            backend: ctx.backend(&reference, problems),
            filters: backend_filters.list,
        });
    }
    let timeouts = match &rule.timeouts {
        None => Timeouts::default(),
        Some(t) => {
            // "0s" disables a timeout (GEP-1742): no timeout at all, not an immediate one.
            let request_ms = t.request.as_deref().map(duration_ms).transpose()?.filter(|ms| *ms != 0);
            let backend_request_ms =
                t.backend_request.as_deref().map(duration_ms).transpose()?.filter(|ms| *ms != 0);
            if let (Some(request), Some(backend)) = (request_ms, backend_request_ms)
                && backend > request
            {
                return Err(format!(
                    "timeouts.backendRequest ({backend} ms) is longer than timeouts.request ({request} ms)"
                ));
            }
            Timeouts { request_ms, backend_request_ms }
        }
    };
    let retry = match &rule.retry {
        None => None,
        Some(r) => Some(Retry {
            codes: r
                .codes
                .iter()
                .flatten()
                .map(|c| {
                    u16::try_from(*c)
                        .ok()
                        .filter(|c| (400..600).contains(c))
                        .ok_or(format!("retry code {c} is not a 4xx or 5xx status"))
                })
                .collect::<Result<_, _>>()?,
            attempts: u32::try_from(r.attempts.unwrap_or(1))
                .map_err(|_| "retry.attempts is negative".to_string())?,
            backoff_ms: r.backoff.as_deref().map(duration_ms).transpose()?,
        }),
    };
    let session_persistence = match &rule.session_persistence {
        None => None,
        Some(sp) => Some(SessionPersistence {
            name: sp.session_name.clone(),
            kind: match sp.r#type {
                Some(HttpRouteRulesSessionPersistenceType::Header) => SessionPersistenceKind::Header,
                _ => SessionPersistenceKind::Cookie,
            },
            absolute_timeout_ms: sp.absolute_timeout.as_deref().map(duration_ms).transpose()?,
            idle_timeout_ms: sp.idle_timeout.as_deref().map(duration_ms).transpose()?,
            permanent_cookie: matches!(
                sp.cookie_config.as_ref().and_then(|c| c.lifetime_type.as_ref()),
                Some(HttpRouteRulesSessionPersistenceCookieConfigLifetimeType::Permanent)
            ),
        }),
    };
    let mut out = Rule {
        name: rule.name.clone(),
        matches,
        filters: rule_filters.list,
        backends,
        timeouts,
        retry,
        session_persistence,
    };
    if let Some(reason) = unsupported {
        fail_closed(&mut out, reason);
    }
    Ok(out)
}

fn grpc_rule(
    ctx: &Context<'_>,
    rule: &GrpcRouteRules,
    problems: &mut Vec<RefProblem>,
) -> Result<Rule, String> {
    let matches = match rule.matches.as_deref() {
        None | Some([]) => vec![RouteMatch::Grpc(GrpcMatch::default())],
        Some(matches) => matches
            .iter()
            .map(|m| {
                let method = match &m.method {
                    None => None,
                    Some(method) => {
                        let regex =
                            matches!(method.r#type, Some(GrpcRouteRulesMatchesMethodType::RegularExpression));
                        if method.service.is_none() && method.method.is_none() {
                            return Err("a gRPC method match needs a service or a method".to_string());
                        }
                        if regex {
                            for pattern in method.service.iter().chain(method.method.iter()) {
                                compile(pattern)?;
                            }
                        }
                        Some(GrpcMethodMatch {
                            service: method.service.clone(),
                            method: method.method.clone(),
                            regex,
                        })
                    }
                };
                let headers = m
                    .headers
                    .iter()
                    .flatten()
                    .map(|h| {
                        let regex =
                            matches!(h.r#type, Some(GrpcRouteRulesMatchesHeadersType::RegularExpression));
                        header_match(&h.name, &h.value, regex)
                    })
                    .collect::<Result<_, _>>()?;
                Ok(RouteMatch::Grpc(GrpcMatch { method, headers }))
            })
            .collect::<Result<_, _>>()?,
    };
    let rule_filters = filters(ctx, &routes::grpc_filters_as_http(rule.filters.as_ref()), false, problems)?;
    let mut unsupported = rule_filters.unsupported;
    let mut backends = Vec::new();
    for r in rule.backend_refs.iter().flatten() {
        let reference: BackendReference =
            routes::reshape(r).ok_or_else(|| format!("backendRef {} is not a valid reference", r.name))?;
        let backend_filters =
            self::filters(ctx, &routes::grpc_filters_as_http(r.filters.as_ref()), false, problems)?;
        unsupported = unsupported.or(backend_filters.unsupported);
        backends.push(WeightedBackend {
            weight: weighted(&reference)?,
            backend: ctx.backend(&reference, problems),
            filters: backend_filters.list,
        });
    }
    let mut out =
        Rule { name: rule.name.clone(), matches, filters: rule_filters.list, backends, ..Rule::default() };
    if let Some(reason) = unsupported {
        fail_closed(&mut out, reason);
    }
    Ok(out)
}

fn compile(pattern: &str) -> Result<(), String> {
    // The regex crate's message draws a caret under the error over several lines; status
    // messages are one line, so keep its last line ("error: unclosed group").
    regex::Regex::new(pattern).map(drop).map_err(|e| {
        let text = e.to_string();
        let why = text.lines().last().unwrap_or(&text).trim_start_matches("error: ").to_string();
        format!("invalid regular expression {pattern:?}: {why}")
    })
}

fn header_match(name: &str, value: &str, regex: bool) -> Result<HeaderMatch, String> {
    if http_header_name_invalid(name) {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let value = if regex {
        compile(value)?;
        StringMatch::RegularExpression(value.to_string())
    } else {
        StringMatch::Exact(value.to_string())
    };
    Ok(HeaderMatch { name: name.to_ascii_lowercase(), value })
}

fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn http_match(m: &HttpRouteRulesMatches) -> Result<RouteMatch, String> {
    let path = match &m.path {
        None => PathMatch::default(),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".to_string());
            match p.r#type.as_ref().unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix) {
                HttpRouteRulesMatchesPathType::Exact | HttpRouteRulesMatchesPathType::PathPrefix
                    if !value.starts_with('/') =>
                {
                    return Err(format!("path {value:?} must start with '/'"));
                }
                HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value),
                HttpRouteRulesMatchesPathType::PathPrefix => PathMatch::Prefix(value),
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    compile(&value)?;
                    PathMatch::RegularExpression(value)
                }
            }
        }
    };
    let headers = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            header_match(
                &h.name,
                &h.value,
                matches!(h.r#type, Some(HttpRouteRulesMatchesHeadersType::RegularExpression)),
            )
        })
        .collect::<Result<_, _>>()?;
    let query_params = m
        .query_params
        .iter()
        .flatten()
        .map(|q| {
            let value = if matches!(q.r#type, Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)) {
                compile(&q.value)?;
                StringMatch::RegularExpression(q.value.clone())
            } else {
                StringMatch::Exact(q.value.clone())
            };
            Ok(QueryParamMatch { name: q.name.clone(), value })
        })
        .collect::<Result<_, String>>()?;
    let method = m.method.as_ref().map(|method| {
        serde_json::to_value(method).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    });
    Ok(RouteMatch::Http(HttpMatch { path, headers, query_params, method }))
}

/// Converts a rule's (or a backendRef's) filters. `has_prefix_match`: every match of the rule
/// is a path prefix, which `ReplacePrefixMatch` needs.
fn filters(
    ctx: &Context<'_>,
    filters: &[HttpRouteRulesFilters],
    has_prefix_match: bool,
    problems: &mut Vec<RefProblem>,
) -> Result<Filters, String> {
    let mut out = Vec::with_capacity(filters.len());
    let missing = |what: &str| format!("filter of type {what} has no {what} field");
    let mut seen_redirect = false;
    let mut seen_rewrite = false;
    for f in filters {
        let filter = match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                let m = f.request_header_modifier.as_ref().ok_or_else(|| missing("RequestHeaderModifier"))?;
                Filter::RequestHeaderModifier(header_modifier(
                    m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                    m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                    m.remove.as_deref().unwrap_or_default(),
                )?)
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let m =
                    f.response_header_modifier.as_ref().ok_or_else(|| missing("ResponseHeaderModifier"))?;
                Filter::ResponseHeaderModifier(header_modifier(
                    m.set.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                    m.add.iter().flatten().map(|h| (h.name.as_str(), h.value.as_str())),
                    m.remove.as_deref().unwrap_or_default(),
                )?)
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                let r = f.request_redirect.as_ref().ok_or_else(|| missing("RequestRedirect"))?;
                seen_redirect = true;
                let path = r
                    .path
                    .as_ref()
                    .map(|p| {
                        let full = p.r#type == HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath;
                        path_modifier(full, &p.replace_full_path, &p.replace_prefix_match, has_prefix_match)
                    })
                    .transpose()?;
                let status_code = match r.status_code.unwrap_or(302) {
                    c @ (301 | 302 | 303 | 307 | 308) => c as u16,
                    c => {
                        return Err(format!(
                            "redirect status code {c} is not one of 301, 302, 303, 307, 308"
                        ));
                    }
                };
                Filter::RequestRedirect(Redirect {
                    scheme: r.scheme.as_ref().map(|s| {
                        match s {
                            HttpRouteRulesFiltersRequestRedirectScheme::Http => "http",
                            HttpRouteRulesFiltersRequestRedirectScheme::Https => "https",
                        }
                        .to_string()
                    }),
                    hostname: r.hostname.clone(),
                    path,
                    port: r
                        .port
                        .map(|p| u16::try_from(p).map_err(|_| format!("redirect port {p} is out of range")))
                        .transpose()?,
                    status_code,
                })
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                let r = f.url_rewrite.as_ref().ok_or_else(|| missing("URLRewrite"))?;
                seen_rewrite = true;
                let path = r
                    .path
                    .as_ref()
                    .map(|p| {
                        let full = p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath;
                        path_modifier(full, &p.replace_full_path, &p.replace_prefix_match, has_prefix_match)
                    })
                    .transpose()?;
                Filter::UrlRewrite(UrlRewrite { hostname: r.hostname.clone(), path })
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = f.request_mirror.as_ref().ok_or_else(|| missing("RequestMirror"))?;
                let reference: BackendReference = routes::reshape(&m.backend_ref)
                    .ok_or_else(|| "mirror backendRef is not a valid reference".to_string())?;
                let fraction = match (&m.percent, &m.fraction) {
                    (Some(_), Some(_)) => return Err("a mirror takes percent or fraction, not both".into()),
                    (Some(p), None) => {
                        Some((u32::try_from(*p).map_err(|_| "mirror percent is negative")?, 100))
                    }
                    (None, Some(f)) => {
                        let n = u32::try_from(f.numerator)
                            .map_err(|_| "mirror fraction numerator is negative")?;
                        let d = u32::try_from(f.denominator.unwrap_or(100))
                            .map_err(|_| "mirror fraction denominator is negative")?;
                        if d == 0 || n > d {
                            return Err(format!("mirror fraction {n}/{d} is not between 0 and 1"));
                        }
                        Some((n, d))
                    }
                    (None, None) => None,
                };
                Filter::RequestMirror(Mirror { backend: ctx.backend(&reference, problems), fraction })
            }
            HttpRouteRulesFiltersType::Cors => {
                let c = f.cors.as_ref().ok_or_else(|| missing("CORS"))?;
                Filter::Cors(Cors {
                    allow_origins: c.allow_origins.clone().unwrap_or_default(),
                    allow_methods: c.allow_methods.clone().unwrap_or_default(),
                    allow_headers: c.allow_headers.clone().unwrap_or_default(),
                    expose_headers: c.expose_headers.clone().unwrap_or_default(),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    max_age_seconds: c.max_age.and_then(|a| u32::try_from(a).ok()),
                })
            }
            HttpRouteRulesFiltersType::ExtensionRef | HttpRouteRulesFiltersType::ExternalAuth => {
                // The spec: a filter that cannot be honoured must not be skipped; the requests
                // it would have seen get a 500. Weft supports no extension filters yet.
                let what = match (&f.extension_ref, f.r#type == HttpRouteRulesFiltersType::ExternalAuth) {
                    (_, true) => "ExternalAuth".to_string(),
                    (Some(e), false) => format!("ExtensionRef {}/{} {}", e.group, e.kind, e.name),
                    (None, false) => "ExtensionRef".to_string(),
                };
                let message = format!(
                    "{what} filters are not supported by Weft; requests matching this rule get HTTP 500"
                );
                problems.push(RefProblem { reason: "InvalidKind", message: message.clone() });
                return Ok(Filters { list: Vec::new(), unsupported: Some(message) });
            }
        };
        out.push(filter);
    }
    if seen_redirect && seen_rewrite {
        return Err("a rule cannot have both RequestRedirect and URLRewrite".into());
    }
    Ok(Filters { list: out, unsupported: None })
}

/// The path part of a redirect or rewrite (the two filters' generated types differ, their
/// meaning does not). `ReplacePrefixMatch` replaces what a `PathPrefix` match matched, so every
/// match of the rule must be one.
fn path_modifier(
    replace_full_path: bool,
    full: &Option<String>,
    prefix: &Option<String>,
    has_prefix_match: bool,
) -> Result<PathModifier, String> {
    if replace_full_path {
        return Ok(PathModifier::ReplaceFullPath(full.clone().unwrap_or_default()));
    }
    if !has_prefix_match {
        return Err("ReplacePrefixMatch needs every match of the rule to be a PathPrefix".into());
    }
    Ok(PathModifier::ReplacePrefixMatch(prefix.clone().unwrap_or_default()))
}

/// Converted filters, or the reason the rule can only answer 500.
struct Filters {
    list: Vec<Filter>,
    unsupported: Option<String>,
}

/// A rule whose filters cannot be honoured keeps its matches but sends everything to a 500.
fn fail_closed(rule: &mut Rule, reason: String) {
    rule.filters.clear();
    rule.backends =
        vec![WeightedBackend { weight: 1, backend: BackendRef::Invalid { reason }, filters: vec![] }];
}

fn header_modifier<'a>(
    set: impl Iterator<Item = (&'a str, &'a str)>,
    add: impl Iterator<Item = (&'a str, &'a str)>,
    remove: &[String],
) -> Result<HeaderModifier, String> {
    let check = |name: &str| {
        if http_header_name_invalid(name) {
            Err(format!("{name:?} is not a valid header name"))
        } else {
            Ok(name.to_ascii_lowercase())
        }
    };
    let set: Vec<(String, String)> =
        set.map(|(n, v)| Ok((check(n)?, v.to_string()))).collect::<Result<_, String>>()?;
    let add: Vec<(String, String)> =
        add.map(|(n, v)| Ok((check(n)?, v.to_string()))).collect::<Result<_, String>>()?;
    let remove: Vec<String> = remove.iter().map(|n| check(n)).collect::<Result<_, _>>()?;
    for (i, (name, _)) in set.iter().enumerate() {
        if set[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("header {name:?} is set twice"));
        }
    }
    Ok(HeaderModifier { set, add, remove })
}

/// A Gateway API duration (GEP-2257: `1h`, `30s`, `500ms`, combinations) in milliseconds.
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let d = gateway_api::Duration::from_str(text)
        .map_err(|e| format!("{text:?} is not a valid duration: {e}"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_gep_2257() {
        assert_eq!(duration_ms("1h"), Ok(3_600_000));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert!(duration_ms("1.5s").is_err(), "fractions are not allowed");
        assert!(duration_ms("soon").is_err());
    }

    #[test]
    fn header_names_are_validated_and_lowercased() {
        let m = header_match("X-Canary", "1", false).expect("valid");
        assert_eq!(m.name, "x-canary");
        assert!(header_match("bad header", "1", false).is_err());
        assert!(header_match("x", "(", true).is_err(), "a broken regex is refused");
    }
}
