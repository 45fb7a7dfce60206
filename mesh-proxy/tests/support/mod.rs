//! Real servers and clients on loopback for the proxy's tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::model::*;
use mesh_proxy::{Options, Running, Source};
use tokio::net::TcpListener;

/// How a test backend behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    /// Answers 200 with a JSON echo of what it received.
    Echo,
    /// Waits this long before echoing.
    Slow(Duration),
    /// Reads the request head, then closes the connection without answering.
    Reset,
    /// Answers with headers promising 100 bytes, sends 5, then closes.
    Truncate,
    /// Answers the first n requests with 503, then echoes.
    FailFirst(u32),
}

/// A backend on 127.0.0.1:<ephemeral>, running until the test's runtime stops.
pub async fn backend(name: &'static str, behaviour: Behaviour) -> SocketAddr {
    backend_at("127.0.0.1", name, behaviour).await
}

/// A backend on `ip`:<ephemeral> (another loopback address: a pod of another node).
pub async fn backend_at(ip: &str, name: &'static str, behaviour: Behaviour) -> SocketAddr {
    let socket = TcpListener::bind((ip, 0)).await.expect("bind backend");
    let addr = socket.local_addr().expect("addr");
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = socket.accept().await else { return };
            if matches!(behaviour, Behaviour::Reset | Behaviour::Truncate) {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    if behaviour == Behaviour::Truncate {
                        let _ =
                            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort").await;
                        let _ = stream.flush().await;
                    }
                    // Dropping the stream closes it mid-exchange.
                });
                continue;
            }
            let served = served.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let seen = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if let Behaviour::Slow(d) = behaviour {
                            tokio::time::sleep(d).await;
                        }
                        let mut response = echo(name, req).await;
                        if let Behaviour::FailFirst(n) = behaviour
                            && seen < n
                        {
                            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn echo(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_str().unwrap_or("?").to_string())))
        .collect();
    let json = serde_json::json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    response.headers_mut().insert("x-backend", name.parse().expect("name"));
    response.headers_mut().insert("x-remove-me", "1".parse().expect("value"));
    response
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

pub async fn start(config: Config) -> Running {
    start_with(Source::Fixed(config)).await
}

pub async fn start_with(source: Source) -> Running {
    mesh_proxy::start(Options { source, admin: "127.0.0.1:0".parse().expect("addr"), access_log: false })
        .await
        .expect("proxy starts")
}

/// Waits (bounded) until something accepts on `port`.
pub async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens on {port}");
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().expect("backend").to_string()
    }

    pub fn received_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("proxy answered in time")
        .expect("proxy answered");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// GET `path` on the listener's port with `Host: host` and extra headers.
pub async fn get(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    request("GET", port, host, path, headers).await
}

pub async fn request(method: &str, port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req =
        Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::new())).expect("request")).await
}

pub async fn admin_get(running: &Running, path: &str) -> Reply {
    let req = Request::get(format!("http://{}{path}", running.admin))
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(req).await
}

// ---- config builders ----

pub fn gateway_listener(port: u16) -> Listener {
    Listener {
        key: ListenerKey { gateway: ObjectKey::new("infra", "gw"), section: "http".into() },
        addresses: vec!["127.0.0.1".parse().expect("ip")],
        port,
        protocol: ListenerProtocol::Http,
        hostname: None,
        tls: None,
    }
}

/// A TCP or TLS-passthrough listener on 127.0.0.1:`port`.
pub fn l4_listener(section: &str, port: u16, protocol: ListenerProtocol) -> Listener {
    Listener {
        key: ListenerKey { gateway: ObjectKey::new("infra", "gw"), section: section.into() },
        addresses: vec!["127.0.0.1".parse().expect("ip")],
        port,
        protocol,
        hostname: None,
        tls: (protocol == ListenerProtocol::Tls)
            .then(|| ListenerTls { mode: TlsMode::Passthrough, certificates: vec![] }),
    }
}

pub fn l4_route(
    kind: RouteKind,
    name: &str,
    listener: &Listener,
    hostnames: &[&str],
    backends: Vec<WeightedBackend>,
) -> Route {
    let mut r = route(name, 1, hostnames, listener, vec![rule(vec![], backends)]);
    r.key.kind = kind;
    r
}

pub fn service_backend(name: &str, addrs: &[SocketAddr]) -> Backend {
    Backend {
        key: backend_key(name),
        app_protocol: AppProtocol::Http1,
        endpoints: addrs
            .iter()
            .map(|a| Endpoint { address: a.ip(), port: a.port(), ready: true, workload: None, node: None })
            .collect(),
    }
}

pub fn backend_key(name: &str) -> BackendKey {
    BackendKey { service: ObjectKey::new("apps", name), port: 80 }
}

pub fn to(name: &str, weight: u32) -> WeightedBackend {
    WeightedBackend { weight, backend: BackendRef::Service(backend_key(name)), filters: vec![] }
}

pub fn prefix(p: &str) -> RouteMatch {
    RouteMatch::Http(HttpMatch { path: PathMatch::Prefix(p.into()), ..Default::default() })
}

pub fn rule(matches: Vec<RouteMatch>, backends: Vec<WeightedBackend>) -> Rule {
    Rule { matches, backends, ..Default::default() }
}

pub fn route(name: &str, created: i64, hostnames: &[&str], listener: &Listener, rules: Vec<Rule>) -> Route {
    Route {
        key: RouteKey { kind: RouteKind::Http, object: ObjectKey::new("apps", name) },
        created,
        parents: vec![RouteParent {
            target: ParentTarget::Listener(listener.key.clone()),
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
        }],
        rules,
    }
}

/// One listener on a fresh port, the given backends and routes.
pub fn config(listener: &Listener, backends: Vec<Backend>, routes: Vec<Route>) -> Config {
    let mut c = Config::default();
    c.insert_listener(listener.clone());
    for b in backends {
        c.insert_backend(b);
    }
    for r in routes {
        c.insert_route(r);
    }
    c
}
