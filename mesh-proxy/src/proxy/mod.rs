//! One HTTP request through the proxy: route, filter, pick a backend and an endpoint, forward,
//! and turn every failure into the status the Gateway API asks for.

pub mod copy;
pub mod grpc;
pub mod headers;
pub mod mirror;
pub mod session;
pub mod splice;
pub mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use mesh_api::model::{AppProtocol, Filter, HeaderModifier};

use crate::config::{ConfigStore, Snapshot};
use crate::listener::framing::Verdicts;
use crate::metrics::{Metrics, RequestLabels, UpstreamFailure};
use crate::route::cors;
use crate::route::filters::{self, RedirectSource};
use crate::route::matching::RequestView;
use crate::route::{BackendTarget, Selected};
use crate::upstream::dial::Dial;
use crate::upstream::{BodyError, Upstream, UpstreamBody, UpstreamError};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Where a request came in.
#[derive(Clone)]
pub struct Inbound {
    /// The configured address the listener is bound to (its key in the routing table).
    pub bind: SocketAddr,
    pub peer: SocketAddr,
    /// The client spoke TLS to us (an HTTPS listener).
    pub tls: bool,
    /// Which of the connection's HTTP/1 requests had ambiguous framing.
    pub framing: Verdicts,
    /// Set when a meshed pod sent the request to a Service: `bind` is then the Service's
    /// frontend, the routes are its GAMMA routes, and connections are dialled for the pod.
    /// Shared: `Inbound` is cloned for every request, and the pod's clients need not be.
    pub mesh: Option<Arc<MeshClient>>,
    /// `peer`'s address as an `x-forwarded-for` element, made once for the connection.
    pub forwarded_for: Option<HeaderValue>,
}

impl Inbound {
    pub fn new(
        bind: SocketAddr,
        peer: SocketAddr,
        tls: bool,
        framing: Verdicts,
        mesh: Option<Arc<MeshClient>>,
    ) -> Self {
        let forwarded_for = headers::forwarded_for(peer.ip());
        Inbound { bind, peer, tls, framing, mesh, forwarded_for }
    }
}

/// The pod behind a meshed request.
#[derive(Clone)]
pub struct MeshClient {
    /// Whose consumer routes apply.
    pub namespace: Arc<str>,
    /// Dials on the pod's behalf (HBONE to meshed endpoints).
    pub upstream: Upstream,
}

pub struct Proxy {
    store: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    /// Dials Gateway listeners' backends directly, until the mesh sets `mesh_gateway`.
    upstream: Upstream,
    /// With the mesh on: dials them over HBONE when they are meshed pods.
    mesh_gateway: std::sync::OnceLock<GatewayBackends>,
    mirrors: mirror::Mirrors,
    access_log: bool,
    /// The `-` label of a request that found no route or no backend, made once.
    none: Arc<str>,
}

/// How Gateway listeners reach meshed pods once the mesh is on: the HTTP clients for HTTP
/// routes and the bare dialer for TCP and TLS routes, over the same tunnels.
struct GatewayBackends {
    http: Upstream,
    l4: Arc<dyn Dial>,
}

/// What the request turned into, for metrics and the access log. The labels are the config's
/// shared strings: setting them costs no allocation.
struct Outcome {
    /// `None` until a route matched: the bind address, spelled out only for such a request.
    listener: Option<Arc<str>>,
    route: Arc<str>,
    backend: Arc<str>,
}

impl Proxy {
    pub fn new(store: Arc<ConfigStore>, metrics: Arc<Metrics>, access_log: bool) -> Self {
        let upstream = Upstream::default();
        let mirrors = mirror::Mirrors::new(metrics.clone());
        Proxy {
            store,
            metrics,
            upstream,
            mesh_gateway: std::sync::OnceLock::new(),
            mirrors,
            access_log,
            none: "-".into(),
        }
    }

    /// Gateway listeners' backends (HTTP, TCP and TLS routes alike) are dialled with `dial`
    /// from now on (set once, when the mesh starts); false when they already were.
    pub fn dial_gateway_backends_with(&self, dial: Arc<dyn Dial>) -> bool {
        let backends = GatewayBackends { http: Upstream::new(dial.clone()), l4: dial };
        self.mesh_gateway.set(backends).is_ok()
    }

    /// What TCP and TLS routes' connections to their endpoints are dialled with.
    pub fn l4_dialer(&self) -> &dyn Dial {
        match self.mesh_gateway.get() {
            Some(backends) => backends.l4.as_ref(),
            None => &crate::upstream::dial::Direct,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        inbound: Inbound,
        req: Request<Incoming>,
    ) -> Result<Response<ResponseBody>, Infallible> {
        let started = Instant::now();
        // The snapshot of this request, from its first byte to its last.
        let snapshot = self.store.load();
        // Kept for the access log only: a request without one is not copied.
        let logged = self.access_log.then(|| (req.method().clone(), req.uri().clone()));
        let mut outcome = Outcome { listener: None, route: self.none.clone(), backend: self.none.clone() };
        let bind = inbound.bind;
        let peer = inbound.peer;
        let is_grpc = grpc::is_grpc(req.headers());
        let response = self.route(&snapshot, inbound, req, &mut outcome).await;
        let elapsed = started.elapsed();
        let code = response.status().as_u16();
        let response = if is_grpc { grpc::translate(response) } else { response };
        let listener = outcome.listener.unwrap_or_else(|| bind.to_string().into());
        if let Some((method, uri)) = logged {
            tracing::info!(
                target: "weft::access",
                client = %peer,
                %method,
                %uri,
                code,
                listener = %listener,
                route = %outcome.route,
                backend = %outcome.backend,
                micros = elapsed.as_micros() as u64,
            );
        }
        self.metrics.record_request(
            RequestLabels { listener, route: outcome.route, backend: outcome.backend, code },
            elapsed,
        );
        Ok(response)
    }

    async fn route(
        &self,
        snapshot: &Snapshot,
        inbound: Inbound,
        mut req: Request<Incoming>,
        outcome: &mut Outcome,
    ) -> Response<ResponseBody> {
        let http1 = req.version() <= Version::HTTP_11;
        // Both checks: hyper hides `Content-Length` when `Transfer-Encoding` is present, so the
        // byte scanner sees what the headers no longer show.
        if http1 && (inbound.framing.next_is_ambiguous() || headers::has_ambiguous_framing(req.headers())) {
            self.metrics.refused_requests.fetch_add(1, Ordering::Relaxed);
            let mut response = local_answer(StatusCode::BAD_REQUEST, "ambiguous message framing");
            // The rest of the connection cannot be trusted to be framed as we think.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        let upgrade = upgrade::requested(&mut req);
        let scheme = if inbound.tls { "https" } else { "http" };
        let routes = match &inbound.mesh {
            Some(client) => snapshot.routes.mesh(inbound.bind, &client.namespace),
            None => snapshot.routes.listener(&inbound.bind),
        };
        let Some(routes) = routes else {
            return local_answer(StatusCode::NOT_FOUND, "no listener");
        };
        let gateway = self.mesh_gateway.get().map_or(&self.upstream, |backends| &backends.http);
        let upstream = inbound.mesh.as_ref().map_or(gateway, |client| &client.upstream);
        let authority = request_authority(&req);
        let host = authority.as_ref().map_or("", Authority::host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // A copy of the URI (reference-counted, not reallocated) lends the path and query
        // while the request's headers are changed.
        let uri = req.uri().clone();
        let (path, query) = (uri.path(), uri.query());
        let selected = {
            let view = RequestView { method: req.method(), path, query, headers: req.headers() };
            routes.select(host, &view)
        };
        let Some(Selected { rule, matched_prefix, listener }) = selected else {
            return local_answer(StatusCode::NOT_FOUND, "no route");
        };
        outcome.listener = Some(listener.clone());
        outcome.route = rule.route.clone();

        let mut plan = Plan { path: None, host: None, response_headers: Vec::new(), cors: Vec::new() };
        for filter in &rule.filters {
            match filter {
                Filter::RequestRedirect(redirect) => {
                    let src = RedirectSource {
                        scheme,
                        host,
                        listener_port: routes.port,
                        path,
                        query,
                        matched_prefix,
                    };
                    let location = filters::redirect_location(redirect, &src);
                    let status =
                        StatusCode::from_u16(filters::redirect_status(redirect)).unwrap_or(StatusCode::FOUND);
                    let mut response = local_answer(status, "");
                    match HeaderValue::from_str(&location) {
                        Ok(value) => response.headers_mut().insert(header::LOCATION, value),
                        Err(_) => {
                            return local_answer(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "unrepresentable redirect",
                            );
                        }
                    };
                    return response;
                }
                Filter::Cors(policy) if cors::is_preflight(req.method(), req.headers()) => {
                    // The proxy answers preflights itself; an origin that is not allowed gets an
                    // answer without CORS headers, which the browser takes as a refusal.
                    let mut response = local_answer(StatusCode::NO_CONTENT, "");
                    cors::apply(response.headers_mut(), cors::preflight_headers(policy, req.headers()));
                    return response;
                }
                other => plan.add(other, req.headers_mut(), path, matched_prefix),
            }
        }

        // A persistent session goes back to its endpoint while that is one of the rule's. The
        // clock is read only for a rule that has one.
        let persistence = rule.session.as_ref().map(|policy| (policy, std::time::SystemTime::now()));
        let carried = persistence.and_then(|(p, now)| session::carried(p, req.headers(), now));
        let pinned = carried.as_ref().and_then(|c| Some((rule.backend_serving(c.endpoint)?, c.endpoint)));
        let Some(backend) = pinned.map(|(b, _)| b).or_else(|| rule.pick_backend()) else {
            return local_answer(StatusCode::INTERNAL_SERVER_ERROR, "no backend");
        };
        outcome.backend = backend.label.clone();
        let endpoints = match &backend.target {
            BackendTarget::Service(endpoints) => endpoints,
            BackendTarget::Invalid(reason) => {
                tracing::debug!(route = %rule.route, %reason, "invalid backend");
                return local_answer(StatusCode::INTERNAL_SERVER_ERROR, "invalid backend");
            }
        };
        for filter in &backend.filters {
            plan.add(filter, req.headers_mut(), path, matched_prefix);
        }
        // The upstream request: same method, headers and body; the endpoint in the URI (so
        // connections pool per endpoint) and the client's host in `Host`.
        let host_header = match &plan.host {
            Some(rewritten) => HeaderValue::from_str(rewritten).ok(),
            None => req
                .headers()
                .get(header::HOST)
                .cloned()
                .or_else(|| authority.as_ref().and_then(|a| HeaderValue::from_str(a.as_str()).ok())),
        };
        // Unless a filter rewrote the path, the client's path and query go on as they came
        // (`path?query` of them is the same text), shared rather than rebuilt.
        let path_and_query = match (&plan.path, uri.path_and_query()) {
            (None, Some(original)) => original.clone(),
            _ => {
                let new_path = plan.path.as_deref().unwrap_or(path);
                let path_and_query = match query {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path.to_string(),
                };
                let Ok(path_and_query) = PathAndQuery::try_from(path_and_query) else {
                    return local_answer(StatusCode::INTERNAL_SERVER_ERROR, "unrepresentable rewritten path");
                };
                path_and_query
            }
        };
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(upgrade) = &upgrade {
            upgrade.restore(&mut parts.headers);
        }
        headers::add_forwarded(&mut parts.headers, inbound.forwarded_for.as_ref(), scheme);
        match host_header {
            Some(host) => parts.headers.insert(header::HOST, host),
            None => parts.headers.remove(header::HOST),
        };

        // Only a request without a body can be sent again: bodies are streamed, not kept.
        let retry = rule.retry.as_ref().filter(|_| hyper::body::Body::is_end_stream(&body));
        let mirrors: Vec<_> = rule
            .mirrors
            .iter()
            .chain(&backend.mirrors)
            .filter(|m| m.sampled())
            .map(|m| m.target.clone())
            .collect();
        let body = if mirrors.is_empty() {
            // A request whose body is already over (most GETs) is sent with an empty body of
            // no size rather than its own boxed: the same frames and size hint, no allocation.
            if hyper::body::Body::is_end_stream(&body) { empty_body() } else { body.boxed() }
        } else {
            let head = mirror::Head {
                method: parts.method.clone(),
                path_and_query: path_and_query.clone(),
                headers: parts.headers.clone(),
            };
            // Copies are dialled like the request itself (HBONE for a meshed client).
            self.mirrors.start(mirrors, head, body.boxed(), upstream.clone())
        };
        let attempts = 1 + retry.map_or(0, |r| r.attempts);
        // The request timeout and when it started (the clock is read only for a rule with one).
        let request_timeout = rule.timeouts.request_ms.map(|ms| (Duration::from_millis(ms), Instant::now()));
        let attempt_timeout = rule.timeouts.backend_request_ms.map(Duration::from_millis);
        let mut body = Some(body);
        let mut attempt = 0;
        let mut used;
        let mut response = loop {
            attempt += 1;
            let last = attempt >= attempts;
            let sticky = pinned.filter(|_| attempt == 1).and_then(|(_, addr)| endpoints.pick_addr(addr));
            let Some(endpoint) = sticky.or_else(|| endpoints.pick()) else {
                return local_answer(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoint");
            };
            let mut upstream_req = Request::new(body.take().unwrap_or_else(empty_body));
            *upstream_req.method_mut() = parts.method.clone();
            // The path alone: the endpoint is handed to the upstream beside it, so no
            // `http://ip:port` is spelled out and parsed again per request.
            *upstream_req.uri_mut() = Uri::from(path_and_query.clone());
            // The last attempt takes the headers; earlier ones (retries to come) send a copy.
            *upstream_req.headers_mut() =
                if last { std::mem::take(&mut parts.headers) } else { parts.headers.clone() };

            // The request timeout covers every attempt; the backend timeout each one.
            let budget =
                [request_timeout.map(|(t, started)| t.saturating_sub(started.elapsed())), attempt_timeout]
                    .into_iter()
                    .flatten()
                    .min();
            // An upgrade is an HTTP/1.1 handshake whatever the backend speaks otherwise.
            let protocol = if upgrade.is_some() { AppProtocol::Http1 } else { endpoints.app_protocol };
            let send = upstream.send_to(endpoint.addr, upstream_req, protocol);
            let result = match budget {
                Some(budget) => tokio::time::timeout(budget, send).await.unwrap_or_else(|_| {
                    Err(UpstreamError { kind: UpstreamFailure::Timeout, message: "timed out".into() })
                }),
                None => send.await,
            };
            used = Some(endpoint.addr);
            match &result {
                Ok(_) => endpoints.answered(&endpoint),
                Err(error) if error.kind == UpstreamFailure::Connect => {
                    if let Some(ejected_for) = endpoints.connect_failed(&endpoint) {
                        self.metrics.endpoint_ejections.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(endpoint = %endpoint.addr, backend = %outcome.backend, ?ejected_for, "endpoint ejected after consecutive connect failures");
                    }
                }
                Err(_) => endpoints.failed(&endpoint),
            }
            drop(endpoint);
            match result {
                Ok(response)
                    if !last && retry.is_some_and(|r| r.codes.contains(&response.status().as_u16())) =>
                {
                    tracing::debug!(status = %response.status(), attempt, "retrying");
                }
                Ok(response) => break response,
                Err(error) => {
                    self.metrics.record_upstream_failure(error.kind);
                    tracing::debug!(backend = %outcome.backend, %error, attempt, "upstream failed");
                    let expired = request_timeout.is_some_and(|(t, started)| started.elapsed() >= t);
                    if last || expired {
                        return match error.kind {
                            UpstreamFailure::Connect => {
                                local_answer(StatusCode::SERVICE_UNAVAILABLE, "backend unavailable")
                            }
                            UpstreamFailure::Reset => local_answer(StatusCode::BAD_GATEWAY, "backend failed"),
                            UpstreamFailure::Timeout => {
                                local_answer(StatusCode::GATEWAY_TIMEOUT, "backend timed out")
                            }
                        };
                    }
                }
            }
            if let Some(backoff) = retry.and_then(|r| r.backoff_ms) {
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
        };
        let switched = upgrade.is_some_and(|upgrade| upgrade.finish(&mut response));
        let headers = response.headers_mut();
        if !switched {
            headers::strip_hop_by_hop(headers);
        }
        for modifier in &plan.response_headers {
            filters::modify_headers(headers, modifier);
        }
        for extra in plan.cors {
            cors::apply(headers, extra);
        }
        if let (Some((policy, now)), Some(endpoint)) = (persistence, used)
            && let Some((name, value)) = session::response_header(policy, endpoint, carried.as_ref(), now)
        {
            headers.append(name, value);
        }
        let metrics = self.metrics.clone();
        response.map(|body| ResponseBody::Backend(WatchedBody { inner: body, metrics }))
    }
}

/// The body of a response to a client: a backend's, watched, or one the proxy made. Not boxed:
/// a backend's answer, the one nearly every request gets, then costs no allocation of its own.
pub enum ResponseBody {
    Backend(WatchedBody),
    Proxy(ProxyBody),
}

impl From<ProxyBody> for ResponseBody {
    fn from(body: ProxyBody) -> Self {
        ResponseBody::Proxy(body)
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Backend(body) => std::pin::Pin::new(body).poll_frame(cx),
            ResponseBody::Proxy(body) => std::pin::Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Backend(body) => body.is_end_stream(),
            ResponseBody::Proxy(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ResponseBody::Backend(body) => body.size_hint(),
            ResponseBody::Proxy(body) => body.size_hint(),
        }
    }
}

/// A backend's response body that counts the backend failing after its headers were sent:
/// the client's stream is cut (the status is already on the wire), and the failure counted.
pub struct WatchedBody {
    inner: UpstreamBody,
    metrics: Arc<Metrics>,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(error))) = &polled {
            tracing::debug!(%error, "backend failed mid-response");
            self.metrics.record_upstream_failure(UpstreamFailure::Reset);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Filters that change the upstream request or the response, gathered from the rule and the
/// chosen backend.
struct Plan<'a> {
    path: Option<String>,
    host: Option<String>,
    response_headers: Vec<&'a HeaderModifier>,
    /// CORS headers for the response, computed from the request before it is sent on.
    cors: Vec<HeaderMap>,
}

impl<'a> Plan<'a> {
    fn add(&mut self, filter: &'a Filter, request: &mut HeaderMap, path: &str, matched_prefix: Option<&str>) {
        match filter {
            Filter::RequestHeaderModifier(m) => filters::modify_headers(request, m),
            Filter::ResponseHeaderModifier(m) => self.response_headers.push(m),
            Filter::UrlRewrite(rewrite) => {
                if let Some(host) = &rewrite.hostname {
                    self.host = Some(host.clone());
                }
                if let Some(modifier) = &rewrite.path {
                    let base = self.path.as_deref().unwrap_or(path);
                    self.path = Some(filters::rewrite_path(base, modifier, matched_prefix));
                }
            }
            Filter::Cors(policy) => self.cors.push(cors::response_headers(policy, request)),
            // Redirects (and preflights) are answered by the caller; mirrors were compiled with
            // the rule.
            Filter::RequestRedirect(_) | Filter::RequestMirror(_) => {}
        }
    }
}

/// The host the client asked for: `:authority` (HTTP/2, absolute-form) or `Host`.
fn request_authority<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.clone());
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    host.parse().ok()
}

fn empty_body() -> ProxyBody {
    Empty::new().map_err(|n| match n {}).boxed()
}

/// Marks a response the proxy wrote itself, with its message.
#[derive(Clone, Copy, Debug)]
pub struct Local(pub &'static str);

/// [`local`], as the answer to a client.
fn local_answer(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    local(status, body).map(ResponseBody::Proxy)
}

/// A response the proxy writes itself.
pub fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|n| match n {}).boxed());
    *response.status_mut() = status;
    response.extensions_mut().insert(Local(body));
    if !body.is_empty() {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}
