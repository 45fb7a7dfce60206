//! RequestMirror through a real proxy: the mirror backend gets a copy of the request, the client
//! only ever sees the main backend, and a stuck or oversized mirror costs the main request
//! nothing.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::model::*;
use mesh_proxy::metrics::MirrorOutcome;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What a mirror backend received.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    header: Option<String>,
    body: Bytes,
}

/// A backend that reports every request it receives, then answers 200 (or never, when `stuck`).
async fn recorder(stuck: bool) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = socket.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let _ = tx.send(Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.to_string(),
                            header: parts
                                .headers
                                .get("x-custom")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string),
                            body,
                        });
                        if stuck {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"mirror answer"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("mirror reached").expect("open")
}

fn mirror_to(name: &str, fraction: Option<(u32, u32)>) -> Filter {
    Filter::RequestMirror(Mirror { backend: BackendRef::Service(backend_key(name)), fraction })
}

type Body = BoxBody<Bytes, Infallible>;

/// A request body sent in `chunks` chunks of `size` bytes, with no length announced.
fn chunked(chunks: usize, size: usize) -> Body {
    let frames =
        futures::stream::iter((0..chunks).map(move |_| Ok(Frame::data(Bytes::from(vec![b'x'; size])))));
    BodyExt::boxed(StreamBody::new(frames))
}

async fn post(port: u16, path: &str, body: Body) -> (StatusCode, String) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Body>();
    let req = Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("x-custom", "copied")
        .body(body)
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn mirrors_get_a_copy_and_the_client_sees_only_the_main_backend() {
    let main = backend("main", Behaviour::Echo).await;
    let (shadow, mut seen) = recorder(false).await;
    let l = gateway_listener(free_port());
    let mut always = rule(vec![prefix("/always")], vec![to("main", 1)]);
    always.filters = vec![
        Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![("x-custom".into(), "modified".into())],
            ..Default::default()
        }),
        mirror_to("shadow", None),
    ];
    let mut never = rule(vec![prefix("/never")], vec![to("main", 1)]);
    never.filters = vec![mirror_to("shadow", Some((0, 100)))];
    // A mirror on one backendRef only applies when that backend is chosen.
    let mut per_backend = to("main", 1);
    per_backend.filters = vec![mirror_to("shadow", None)];
    let backend_level = rule(vec![prefix("/backend")], vec![per_backend]);
    let mut broken = rule(vec![prefix("/broken")], vec![to("main", 1)]);
    broken.filters = vec![Filter::RequestMirror(Mirror {
        backend: BackendRef::Invalid { reason: "no such Service".into() },
        fraction: None,
    })];
    let cfg = config(
        &l,
        vec![service_backend("main", &[main]), service_backend("shadow", &[shadow])],
        vec![route("r", 1, &[], &l, vec![always, never, backend_level, broken])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;

    let reply = get(l.port, "h", "/always/get?q=1", &[("x-custom", "original")]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.backend(), "main");
    let copy = next(&mut seen).await;
    assert_eq!((copy.method.as_str(), copy.path.as_str()), ("GET", "/always/get?q=1"));
    assert_eq!(copy.header.as_deref(), Some("modified"), "the copy is the filtered request");
    assert!(copy.body.is_empty());

    let (status, body) =
        post(l.port, "/always/post", BodyExt::boxed(Full::new(Bytes::from_static(b"payload")))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"backend\":\"main\""), "{body}");
    assert!(!body.contains("mirror answer"));
    let copy = next(&mut seen).await;
    assert_eq!((copy.method.as_str(), copy.body.as_ref()), ("POST", &b"payload"[..]));

    // A streamed body under the cap is copied whole.
    let (status, _) = post(l.port, "/always/stream", chunked(4, 1000)).await;
    assert_eq!(status, StatusCode::OK);
    let copy = next(&mut seen).await;
    assert_eq!((copy.path.as_str(), copy.body.len()), ("/always/stream", 4000));

    // Fraction 0 is never copied, so the next copy the mirror sees is the backend-level one.
    assert_eq!(get(l.port, "h", "/never", &[]).await.status, StatusCode::OK);
    assert_eq!(get(l.port, "h", "/backend", &[]).await.status, StatusCode::OK);
    assert_eq!(next(&mut seen).await.path, "/backend");

    // A mirror whose backend did not resolve costs the main request nothing.
    assert_eq!(get(l.port, "h", "/broken", &[]).await.status, StatusCode::OK);
    assert_eq!(proxy.metrics.mirrors(MirrorOutcome::NoBackend), 1);

    let metrics = admin_get(&proxy, "/metrics").await.body;
    assert!(metrics.contains("weft_mirror_requests_total{outcome=\"sent\"}"), "{metrics}");
}

#[tokio::test]
async fn a_stuck_or_oversized_mirror_never_holds_up_the_main_request() {
    let main = backend("main", Behaviour::Echo).await;
    let (stuck, mut stuck_seen) = recorder(true).await;
    let (shadow, mut seen) = recorder(false).await;
    let l = gateway_listener(free_port());
    let mut to_stuck = rule(vec![prefix("/stuck")], vec![to("main", 1)]);
    to_stuck.filters = vec![mirror_to("stuck", None)];
    let mut to_shadow = rule(vec![prefix("/big")], vec![to("main", 1)]);
    to_shadow.filters = vec![mirror_to("shadow", None)];
    let cfg = config(
        &l,
        vec![
            service_backend("main", &[main]),
            service_backend("stuck", &[stuck]),
            service_backend("shadow", &[shadow]),
        ],
        vec![route("r", 1, &[], &l, vec![to_stuck, to_shadow])],
    );
    let proxy = start(cfg).await;
    wait_listening(l.port).await;

    // The mirror holds its request forever; the client still gets the main answer.
    for _ in 0..3 {
        let (status, body) =
            post(l.port, "/stuck", BodyExt::boxed(Full::new(Bytes::from_static(b"abc")))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"body\":\"abc\""), "{body}");
    }
    assert_eq!(next(&mut stuck_seen).await.body.as_ref(), b"abc");

    // Over the cap, announced (content-length) or discovered while streaming: the main backend
    // gets every byte, the mirror nothing, and both are counted.
    let cap = mesh_proxy::proxy::mirror::MAX_BODY;
    let (status, body) =
        post(l.port, "/big/sized", BodyExt::boxed(Full::new(Bytes::from(vec![b'y'; cap + 1])))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&"y".repeat(cap + 1)));
    let (status, body) = post(l.port, "/big/streamed", chunked(cap / 1000 + 2, 1000)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(&"x".repeat(cap + 1000)));
    assert_eq!(proxy.metrics.mirrors(MirrorOutcome::BodyTooLarge), 2);
    // The next small request is still mirrored, and it is the first copy the mirror sees.
    let (status, _) = post(l.port, "/big/small", BodyExt::boxed(Full::new(Bytes::from_static(b"s")))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next(&mut seen).await.path, "/big/small");
}
